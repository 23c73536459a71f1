#!/usr/bin/env python3
"""MXNet reference for training: loss, parameter gradients and SGD updates.

Writes tests/fixtures/training/<case>/ for the Rust crate r38-train:

* the network is the narrow A1 output-stride-8 segmentation net of
  tests/fixtures/a1_s8_seg (its meta.json config and weights.params), with
  dropout set to 0 and BN on its stored statistics (use_global_stats=True,
  the authors' fine-tuning mode);
* the loss is MXNet's SoftmaxOutput(multi_output=True, use_ignore=True,
  ignore_label=255, normalization='valid') on labels at 1/8 resolution that
  contain some 255 pixels;
* the gradients of a set of parameters are recorded, then three steps of
  MXNet's SGD (momentum 0.9, wd 5e-4, lr 0.01; "alex" multipliers: biases and
  BN betas lr x2 wd x0, the rest lr x1 wd x1) are run on those (fixed)
  gradients and the weights after each step are recorded.

Cases:
  even_rem  input 1x3x56x48: every strided conv sees H and W with the same
            remainder mod 2;
  mixed_rem input 1x3x56x44: the level-4 strided convs see 14x11 (remainders
            0 and 1), the case candle 0.11's conv2d backward gets wrong.

Run with the MXNet venv (see tools/README.md):
  /work/venvs/mx/bin/python tools/mxnet_training_reference.py [--out DIR]

Our own code; nothing of the authors' is used.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxnet_reference as ref  # noqa: E402  (sets MXNET_SUBGRAPH_BACKEND=NONE)
import mxparams  # noqa: E402,F401
import mxnet as mx  # noqa: E402

SOURCE = os.path.join(ref.FIXTURE_DIR, "a1_s8_seg")
OUT = os.path.join(ref.FIXTURE_DIR, "training")

PARAMS = [
    "conv1a_weight",
    "res4a_branch2a_weight",  # strided 3x3 on 14x11 in mixed_rem
    "res4a_branch1_weight",  # strided 1x1 shortcut
    "res4b2_branch2a_weight",
    "bn4b2_branch2a_gamma",
    "bn4b2_branch2a_beta",
    "bn7_gamma",
    "conv6a_weight",
    "conv6a_bias",
    "linear5_weight",
    "linear5_bias",
]

CASES = [("even_rem", (1, 3, 56, 48), 11), ("mixed_rem", (1, 3, 56, 44), 12)]

LR = 0.01
MOMENTUM = 0.9
WD = 5e-4
STEPS = 3


def alex_mults(name):
    """(lr_mult, wd_mult) of the authors' "alex" rule."""
    if name.endswith("_bias") or name.endswith("_beta"):
        return 2.0, 0.0
    return 1.0, 1.0


VARIANT_PARAMS = [
    "res4b2_branch2a_weight",
    "bn4b2_branch2a_gamma",
    "bn4b2_branch2a_beta",
    "conv6a_bias",
    "linear5_bias",
]


def run_variants(d, grads, args):
    """Optimizer variants on a few parameters: rescaled and clipped gradients, a poly
    schedule, and MXNet's NAG.

    MXNet's nag_mom_update keeps lr inside the momentum buffer (m = mu*m - lr*d;
    w += mu*m - lr*d) while the authors' Torch-style Nesterov keeps it outside
    (M = mu*M + d; w -= lr*(d + mu*M)). The two agree exactly only at a constant
    learning rate, so the NAG variant uses poly power 0 (constant lr)."""
    g = {p: grads[p].asnumpy() for p in VARIANT_PARAMS}
    out = {}
    specs = [
        ("sgd_rescale_clip_poly2", "sgd", 0.5, 2.0, 1.0, 5e-4),
        ("nag_rescale_clip_const", "nag", 0.25, 0.0, 0.5, 1e-4),
    ]
    for vname, opt_name, rescale, power, lr, wd in specs:
        mags = np.concatenate([np.abs(v).ravel() * rescale for v in g.values()])
        clip = float(np.percentile(mags, 70))
        sched = mx.lr_scheduler.PolyScheduler(max_update=10, base_lr=lr, pwr=power,
                                              final_lr=0.0)
        idx2name = dict(enumerate(VARIANT_PARAMS))
        opt = mx.optimizer.create(opt_name, learning_rate=lr, momentum=MOMENTUM, wd=wd,
                                  rescale_grad=rescale, clip_gradient=clip,
                                  lr_scheduler=sched, param_idx2name=idx2name)
        opt.set_lr_mult({p: alex_mults(p)[0] for p in VARIANT_PARAMS})
        opt.set_wd_mult({p: alex_mults(p)[1] for p in VARIANT_PARAMS})
        updater = mx.optimizer.get_updater(opt)
        weights = {p: mx.nd.array(args[p]) for p in VARIANT_PARAMS}
        vd = os.path.join(d, vname)
        os.makedirs(vd, exist_ok=True)
        for step in range(1, STEPS + 1):
            for i, p in enumerate(VARIANT_PARAMS):
                updater(i, mx.nd.array(g[p]), weights[p])
            for p in VARIANT_PARAMS:
                np.save(os.path.join(vd, "step%d_%s.npy" % (step, p)), weights[p].asnumpy())
        out[vname] = {"optimizer": opt_name, "rescale_grad": rescale, "clip_gradient": clip,
                      "momentum": MOMENTUM, "wd": wd,
                      "schedule": {"type": "poly (mx.lr_scheduler.PolyScheduler)", "base": lr,
                                   "power": power, "max_update": 10, "final_lr": 0.0},
                      "params": VARIANT_PARAMS, "steps": STEPS,
                      "files": vname + "/step<k>_<param>.npy"}
    return out


def make_case(name, shape, seed, meta, args, aux, out_root):
    cfg = json.loads(json.dumps(meta["config"]))
    for lv in cfg["levels"]:
        lv["dropout"] = 0.0
    classes = meta["classes"]
    out, _, _ = ref.build_network(cfg, head="seg", classes=classes,
                                  seg_hidden=meta["seg_hidden"],
                                  seg_dilation=meta["seg_dilation"])
    label = mx.sym.Variable("softmax_label")
    loss = mx.sym.SoftmaxOutput(out, label, name="softmax", multi_output=True,
                                use_ignore=True, ignore_label=255,
                                normalization="valid")
    group = mx.sym.Group([loss, mx.sym.BlockGrad(out)])

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    _, oshape, _ = out.infer_shape(data=shape)
    n, c, h, w = oshape[0]
    y = rng.integers(0, classes, size=(n, h, w)).astype(np.float32)
    y[rng.random((n, h, w)) < 0.25] = 255.0

    arg_names = group.list_arguments()
    nd_args = {k: mx.nd.array(args[k]) for k in arg_names if k in args}
    nd_args["data"] = mx.nd.array(x)
    nd_args["softmax_label"] = mx.nd.array(y)
    grads = {k: mx.nd.zeros(v.shape) for k, v in nd_args.items()
             if k not in ("data", "softmax_label")}
    nd_aux = {k: mx.nd.array(aux[k]) for k in group.list_auxiliary_states()}
    exe = group.bind(mx.cpu(), args=nd_args, args_grad=grads, grad_req="write",
                     aux_states=nd_aux)
    exe.forward(is_train=True)
    exe.backward()
    prob = exe.outputs[0].asnumpy().astype(np.float64)
    scores = exe.outputs[1].asnumpy()
    valid = y != 255
    lab = np.where(valid, y, 0).astype(np.int64)
    p_true = np.take_along_axis(prob, lab[:, None], axis=1)[:, 0]
    loss_value = float(-np.log(p_true[valid]).sum() / max(1, valid.sum()))

    d = os.path.join(out_root, name)
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "input.npy"), x)
    np.save(os.path.join(d, "labels.npy"), y.astype(np.float32))
    np.save(os.path.join(d, "scores.npy"), scores)
    for p in PARAMS:
        np.save(os.path.join(d, "grad_%s.npy" % p), grads[p].asnumpy())

    # SGD: MXNet's own optimizer (sgd_mom_update), multipliers by name.
    idx2name = dict(enumerate(PARAMS))
    opt = mx.optimizer.SGD(learning_rate=LR, momentum=MOMENTUM, wd=WD,
                           rescale_grad=1.0, param_idx2name=idx2name)
    opt.set_lr_mult({p: alex_mults(p)[0] for p in PARAMS})
    opt.set_wd_mult({p: alex_mults(p)[1] for p in PARAMS})
    updater = mx.optimizer.get_updater(opt)
    weights = {p: mx.nd.array(args[p]) for p in PARAMS}
    for step in range(1, STEPS + 1):
        for i, p in enumerate(PARAMS):
            updater(i, grads[p], weights[p])
        for p in PARAMS:
            np.save(os.path.join(d, "step%d_%s.npy" % (step, p)),
                    weights[p].asnumpy())

    variants = run_variants(d, grads, args) if name == "even_rem" else None

    case_meta = {
        "source": "tests/fixtures/a1_s8_seg (config with dropout 0, weights.params)",
        "mxnet": mx.__version__,
        "mxnet_subgraph_backend": ref.SUBGRAPH_BACKEND,
        "input_shape": list(shape),
        "score_shape": [n, c, h, w],
        "classes": classes,
        "valid_pixels": int(valid.sum()),
        "loss": loss_value,
        "loss_op": "SoftmaxOutput(multi_output=True, use_ignore=True, ignore_label=255, "
                   "normalization='valid'); loss = mean -log p[label] over valid pixels",
        "bn": "use_global_stats=True",
        "params": PARAMS,
        "optimizer": {"type": "sgd (mx.optimizer.SGD, sgd_mom_update)", "lr": LR,
                      "momentum": MOMENTUM, "wd": WD, "rescale_grad": 1.0,
                      "steps": STEPS, "gradient": "the recorded gradient at every step",
                      "multipliers": {p: list(alex_mults(p)) for p in PARAMS}},
        "variants": variants,
        "files": "input.npy, labels.npy (N,h,w float32, 255 = ignore), scores.npy "
                 "(pre-softmax), grad_<param>.npy, step<k>_<param>.npy (weights after "
                 "update k)",
    }
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(case_meta, f, indent=1)
    print(name, "loss", loss_value, "valid", int(valid.sum()), "scores", scores.shape)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args(argv)
    with open(os.path.join(SOURCE, "meta.json")) as f:
        meta = json.load(f)
    loaded = mx.nd.load(os.path.join(SOURCE, "weights.params"))
    args = {k[4:]: v.asnumpy() for k, v in loaded.items() if k.startswith("arg:")}
    aux = {k[4:]: v.asnumpy() for k, v in loaded.items() if k.startswith("aux:")}
    for name, shape, seed in CASES:
        make_case(name, shape, seed, meta, args, aux, a.out)


if __name__ == "__main__":
    main()
