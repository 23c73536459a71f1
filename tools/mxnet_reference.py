#!/usr/bin/env python3
"""MXNet reference generator for the ResNet-38 ("Wider or Deeper") family.

Builds the network from a BackboneConfig JSON (the same schema the Rust crate
r38_model deserialises) with MXNet's own symbolic operators, fills seeded
random weights, runs an inference forward pass and writes a "case directory"
that the Rust tests compare against.

Run with the MXNet venv (MXNet 1.9.1, numpy 1.23.5), see tools/README.md.

Subcommands:
  case      one case from a config JSON (or a preset)
  fixtures  regenerate every committed fixture under tests/fixtures/
  full      full-size parity cases (not committed), e.g. for `cargo xtask parity`
  preset    print a preset config JSON
  verify    re-run case directories from their own files, every weights*.params
  selftest  check the .params writers against mx.nd.save / mx.nd.load and
            max-pooling against a numpy reference
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxparams  # noqa: E402

# MXNet 1.9.1 (CPU, oneDNN build) runs bound symbols through the MKLDNN
# subgraph backend by default, which fuses ops (conv+sum, bn+relu, ...).  With
# several outputs bound at once that fusion gives WRONG values (asking for a BN
# output as well changes the logits ~15x) or fails to bind (conv outputs); see
# tools/README.md.  We therefore run plain, unfused operators unless the caller
# sets MXNET_SUBGRAPH_BACKEND explicitly (forward() then binds each output alone).
os.environ.setdefault("MXNET_SUBGRAPH_BACKEND", "NONE")
SUBGRAPH_BACKEND = os.environ["MXNET_SUBGRAPH_BACKEND"]
import mxnet as mx  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_DIR = os.path.join(REPO_ROOT, "tests", "fixtures")
SEG_DILATION = 12
UNIT_KERNELS = {"basic": [3, 3], "bottleneck": [1, 3, 1]}

# Full-width level table: (level, unit type, units, widths)
LEVELS_FULL = [
    (2, "basic", 3, [128, 128]),
    (3, "basic", 3, [256, 256]),
    (4, "basic", 6, [512, 512]),
    (5, "basic", 3, [512, 1024]),
    (6, "bottleneck", 1, [512, 1024, 2048]),
    (7, "bottleneck", 1, [1024, 2048, 4096]),
]


# --------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------

def preset_config(model, stride=32, divisor=1, pool_padding="same", dropout=None,
                  bn_eps=1.001e-5):
    """Model A / A1 / A2 at output stride 32, 16 or 8, widths divided by `divisor`.

    dropout: dict level -> p (e.g. {6: 0.3, 7: 0.5} as in the segmentation model).
    """
    model = model.lower()
    assert model in ("a", "a1", "a2"), model
    assert stride in (8, 16, 32), stride
    dropout = dropout or {}

    def ds(level):
        if level == 7:
            return "none"
        if model == "a":
            return "max_pool"
        if model == "a1":
            return "strided_unit"
        return "max_pool" if level in (2, 3) else "strided_unit"

    dilated = {32: (), 16: (6,), 8: (5, 6)}[stride]

    def div(c):
        assert c % divisor == 0, (c, divisor)
        return c // divisor

    levels = []
    for level, unit, units, widths in LEVELS_FULL:
        levels.append({
            "level": level,
            "unit": unit,
            "units": units,
            "widths": [div(w) for w in widths],
            "downsample": ds(level),
            "dilate": level in dilated,
            "dropout": float(dropout.get(level, 0.0)),
        })
    return {
        "stem": {"channels": div(64), "kernel": 3},
        "levels": levels,
        "pool_padding": pool_padding,
        "bn_eps": bn_eps,
    }


# --------------------------------------------------------------------------
# network (MXNet symbols)
# --------------------------------------------------------------------------

def _conv(x, name, filters, kernel, stride=1, dilate=1, bias=False):
    if kernel == 1:
        dilate = 1
    pad = ((kernel - 1) * dilate + 1) // 2
    return mx.sym.Convolution(x, name=name, num_filter=filters,
                              kernel=(kernel, kernel), stride=(stride, stride),
                              dilate=(dilate, dilate), pad=(pad, pad),
                              no_bias=not bias)


def _bn(x, name, eps):
    return mx.sym.BatchNorm(x, name=name, eps=eps, fix_gamma=False,
                            use_global_stats=True)


def _relu(x, name):
    return mx.sym.Activation(x, name=name, act_type="relu")


def _max_pool(x, name, stride, pad, dilation=1):
    if dilation == 1:
        return mx.sym.Pooling(x, name=name, kernel=(3, 3), stride=(stride, stride),
                              pad=(pad, pad), pool_type="max")
    # MXNet 1.x Pooling has no dilation parameter; no preset needs this (the
    # authors' code also only ever dilates a pool at dilation 1), but the
    # config schema allows it: max of the 9 dilated taps of a -inf padded map.
    assert stride == 1 and pad == dilation
    p = mx.sym.pad(x, mode="constant", constant_value=float("-inf"),
                   pad_width=(0, 0, 0, 0, pad, pad, pad, pad))
    out = None
    for i in range(3):
        for j in range(3):
            tap = mx.sym.slice(p, begin=(None, None, i * dilation, j * dilation),
                               end=(None, None, None, None))
            tap = mx.sym.slice_like(tap, x, axes=(2, 3))
            out = tap if out is None else mx.sym.maximum(out, tap)
    return mx.sym.identity(out, name=name)


def _unit(x, uid, widths, kernels, eps, stride=1, dil_first=1, dil_rest=1,
          projection=False, dropout=0.0):
    """Pre-activation residual unit. Returns (output, ReLU(bn{uid}_branch2a(x)))."""
    h = x
    first = None
    n = len(widths)
    for i, (w, k) in enumerate(zip(widths, kernels)):
        br = "branch2a" if i == 0 else "branch2b%d" % i
        a = _relu(_bn(h, "bn%s_%s" % (uid, br), eps), "res%s_%s_relu" % (uid, br))
        if i == 0:
            first = a
        if dropout > 0.0 and i == n - 1:
            a = mx.sym.Dropout(a, name="res%s_%s_do" % (uid, br), p=dropout)
        h = _conv(a, "res%s_%s" % (uid, br), w, k,
                  stride=stride if i == 0 else 1,
                  dilate=dil_first if i == 0 else dil_rest)
    if projection:
        shortcut = _conv(first, "res%s_branch1" % uid, widths[-1], 1, stride=stride)
        return shortcut + h, first
    return x + h, first


def build_network(cfg, head="cls", classes=1000, seg_hidden=512,
                  seg_dilation=SEG_DILATION):
    """Returns (output symbol, {level: feature symbol}, relu7 symbol)."""
    eps = float(cfg["bn_eps"])
    pool_pad_plain = {"same": 1, "caffe": 0}[cfg["pool_padding"]]
    data = mx.sym.Variable("data")
    x = _conv(data, "conv1a", cfg["stem"]["channels"], cfg["stem"]["kernel"])
    d = 1
    feats = {}
    prev_level = None
    for lv in cfg["levels"]:
        L = int(lv["level"])
        unit = lv["unit"]
        kernels = UNIT_KERNELS[unit]
        widths = list(lv["widths"])
        assert len(widths) == len(kernels), (L, widths)
        ds = lv["downsample"]
        dilate = bool(lv["dilate"])
        p = float(lv.get("dropout", 0.0))
        assert ds in ("max_pool", "strided_unit", "none"), ds
        assert not (dilate and ds == "none"), "dilate needs a downsample"

        if ds == "max_pool":
            name = "pool%d" % (L - 1)
            if dilate:
                x = _max_pool(x, name, stride=1, pad=d, dilation=d)
                d *= 2
            else:
                x = _max_pool(x, name, stride=2, pad=pool_pad_plain)

        # first unit: projection shortcut
        uid = "%da" % L
        if ds == "strided_unit" and not dilate:
            x, first = _unit(x, uid, widths, kernels, eps, stride=2, dil_first=d,
                             dil_rest=d, projection=True, dropout=p)
        elif ds == "strided_unit" and dilate:
            x, first = _unit(x, uid, widths, kernels, eps, stride=1, dil_first=d,
                             dil_rest=2 * d, projection=True, dropout=p)
            d *= 2
        else:
            x, first = _unit(x, uid, widths, kernels, eps, stride=1, dil_first=d,
                             dil_rest=d, projection=True, dropout=p)
        if prev_level is not None:
            feats[prev_level] = first
        for i in range(1, int(lv["units"])):
            x, _ = _unit(x, "%db%d" % (L, i), widths, kernels, eps, stride=1,
                         dil_first=d, dil_rest=d, projection=False, dropout=p)
        prev_level = L

    relu7 = _relu(_bn(x, "bn7", eps), "relu7")
    feats[prev_level] = relu7
    if head == "cls":
        pooled = mx.sym.Pooling(relu7, name="pool7", kernel=(1, 1), pool_type="avg",
                                global_pool=True)
        out = mx.sym.FullyConnected(pooled, name="linear%d" % classes,
                                    num_hidden=classes)
    elif head == "seg":
        h = _relu(_conv(relu7, "conv6a", seg_hidden, 3, dilate=seg_dilation, bias=True),
                  "conv6a_relu")
        out = _conv(h, "linear%d" % classes, classes, 3, dilate=seg_dilation, bias=True)
    elif head == "none":
        out = relu7
    else:
        raise ValueError(head)
    return out, feats, relu7


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------

# Extra gain on the He-normal std of the LAST conv of every residual branch and
# of the projection shortcuts.  With moving statistics that do not match the
# real activations, a plain He init lets the residual stream grow ~2x in
# variance per unit (relu7 std ~500 at full width, logits std ~470); 0.5 keeps
# every level's features at std ~0.4-1 and the logits at std ~0.5.
RESIDUAL_GAIN = 0.5


def _sub_seed(seed, name):
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def _is_residual_out(name, last_branch):
    if name.endswith("_branch1_weight"):
        return True
    base = name[:-len("_weight")]
    return last_branch.get(base, False)


def gen_params(sym, input_shape, seed):
    """Seeded random weights for every argument/aux of `sym`, rounded through f16.

    Each tensor is drawn from its own generator seeded by (seed, crc32(name)),
    so a tensor's values depend only on the seed, its name and its shape.
    Returns (arg_params, aux_params) as ordered dicts name -> float32 ndarray.
    """
    arg_shapes, _, aux_shapes = sym.infer_shape(data=tuple(input_shape))
    arg_names = sym.list_arguments()
    aux_names = sym.list_auxiliary_states()
    # which conv is the last one of its residual branch
    last_branch = {}
    convs = [n[:-len("_weight")] for n in arg_names if n.startswith("res") and n.endswith("_weight")]
    for c in convs:
        unit, br = c.split("_", 1)
        if br == "branch1":
            continue
        siblings = [o.split("_", 1)[1] for o in convs if o.split("_", 1)[0] == unit
                    and o.split("_", 1)[1] != "branch1"]
        last_branch[c] = br == sorted(siblings)[-1]

    def draw(name, shape):
        rng = _sub_seed(seed, name)
        if name.endswith("_weight"):
            if len(shape) == 4:
                fan_in = int(np.prod(shape[1:]))
                std = np.sqrt(2.0 / fan_in)
                if _is_residual_out(name, last_branch):
                    std *= RESIDUAL_GAIN
            else:  # FullyConnected [C, F]
                std = 1.0 / np.sqrt(shape[1])
            v = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        elif name.endswith("_bias"):
            v = rng.normal(0.0, 0.1, shape)
        elif name.endswith("_gamma"):
            v = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("_beta"):
            v = rng.normal(0.0, 0.1, shape)
        elif name.endswith("_moving_mean"):
            v = rng.normal(0.0, 0.1, shape)
        elif name.endswith("_moving_var"):
            v = rng.uniform(0.5, 1.5, shape)
        else:
            raise ValueError("no init rule for %s" % name)
        return np.asarray(v).astype(np.float16).astype(np.float32)

    args, aux = {}, {}
    for n, s in zip(arg_names, arg_shapes):
        if n == "data":
            continue
        args[n] = draw(n, s)
    for n, s in zip(aux_names, aux_shapes):
        aux[n] = draw(n, s)
    return args, aux


def gen_input(shape, seed):
    rng = _sub_seed(seed, "input")
    return rng.standard_normal(tuple(shape), dtype=np.float32)


# --------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------

def forward(outputs, args, aux, x, isolate=None):
    """Inference forward of a list of symbols sharing one graph.

    isolate: bind every output on its own (default: only when a fusing subgraph
    backend is active, where multi-output binds are unreliable).
    """
    if isolate is None:
        isolate = SUBGRAPH_BACKEND.upper() != "NONE"
    if isolate and len(outputs) > 1:
        return [forward([o], args, aux, x, isolate=False)[0] for o in outputs]
    group = mx.sym.Group(outputs) if len(outputs) > 1 else outputs[0]
    needed_args = set(group.list_arguments())
    needed_aux = set(group.list_auxiliary_states())
    nd_args = {k: mx.nd.array(v) for k, v in args.items() if k in needed_args}
    nd_args["data"] = mx.nd.array(x)
    nd_aux = {k: mx.nd.array(v) for k, v in aux.items() if k in needed_aux}
    exe = group.bind(mx.cpu(), args=nd_args, aux_states=nd_aux, grad_req="null")
    exe.forward(is_train=False)
    return [o.asnumpy() for o in exe.outputs]


# --------------------------------------------------------------------------
# case directories
# --------------------------------------------------------------------------

def named_weights(args, aux, dtype=np.float32):
    items = [("arg:" + k, v.astype(dtype)) for k, v in args.items()]
    items += [("aux:" + k, v.astype(dtype)) for k, v in aux.items()]
    return items


def _check_loads_back(path, items):
    loaded = mx.nd.load(path)
    assert list(loaded.keys()) == [k for k, _ in items], path
    for k, v in items:
        got = loaded[k].asnumpy()
        assert got.dtype == v.dtype and got.shape == v.shape and np.array_equal(got, v), (path, k)


def _stats(a):
    return "mean %.4g std %.4g absmax %.4g frac>0 %.3f" % (
        a.mean(), a.std(), np.abs(a).max(), (a > 0).mean())


def make_case(out_dir, cfg, head, classes, input_shape, seed, seg_hidden=None,
              headers=("v2",), features=False, quiet=False):
    if head == "seg" and seg_hidden is None:
        raise ValueError("seg head needs seg_hidden")
    os.makedirs(out_dir, exist_ok=True)
    out, feats, _ = build_network(cfg, head, classes, seg_hidden or 0)
    args, aux = gen_params(out, input_shape, seed)
    x = gen_input(input_shape, seed)
    levels = sorted(feats)
    syms = [out] + ([feats[L] for L in levels] if features else [])
    results = forward(syms, args, aux, x)
    y = results[0]
    assert np.isfinite(y).all(), "non-finite output"
    assert np.abs(y).max() > 0, "all-zero output"

    outputs = {"input.npy": "input, NCHW float32 ~N(0,1)"}
    np.save(os.path.join(out_dir, "input.npy"), x.astype(np.float32))
    desc = {
        "cls": "logits before softmax, (N, classes)",
        "seg": "score map before softmax, (N, classes, h, w)",
        "none": "relu7 = ReLU(bn7(last level)), (N, C, h, w)",
    }[head]
    np.save(os.path.join(out_dir, "output.npy"), y.astype(np.float32))
    outputs["output.npy"] = desc + ", shape %s" % (list(y.shape),)
    if not quiet:
        print("  output %s: %s" % (list(y.shape), _stats(y)))
    if features:
        for L, f in zip(levels, results[1:]):
            fn = "features_level%d.npy" % L
            np.save(os.path.join(out_dir, fn), f.astype(np.float32))
            if L == levels[-1]:
                what = "relu7 (last level)"
            else:
                what = "ReLU(bn%da_branch2a(input of unit %da)) = res%da_branch2a_relu" % (L + 1, L + 1, L + 1)
            outputs[fn] = "level %d features: %s, shape %s" % (L, what, list(f.shape))
            if not quiet:
                print("  level %d %s: %s" % (L, list(f.shape), _stats(f)))

    items = named_weights(args, aux)
    path = os.path.join(out_dir, "weights.params")
    mx.nd.save(path, {k: mx.nd.array(v) for k, v in items})
    outputs["weights.params"] = ("mx.nd.save (MXNet 1.9.1, V2 array headers 0xF993FAC9), "
                                 "float32, keys arg:/aux:")
    for h in headers:
        if h == "v2":
            continue
        if h in ("legacy", "v1"):
            p = os.path.join(out_dir, "weights_%s.params" % h)
            mxparams.save(p, items, form=h)
            _check_loads_back(p, items)
            outputs["weights_%s.params" % h] = (
                "same tensors, float32, %s array headers (written by tools/mxparams.py, "
                "read back identically by mx.nd.load)" % {"legacy": "legacy (no magic, u32 dims)",
                                                           "v1": "V1 (0xF993FAC8, i64 dims)"}[h])
        elif h == "f16":
            p = os.path.join(out_dir, "weights_f16.params")
            items16 = named_weights(args, aux, np.float16)
            mx.nd.save(p, {k: mx.nd.array(v, dtype=np.float16) for k, v in items16})
            _check_loads_back(p, items16)
            outputs["weights_f16.params"] = ("same tensors stored as float16 (dtype code 2), "
                                             "mx.nd.save V2; exact since all weights are f16-rounded")
        else:
            raise ValueError("unknown header variant %r" % h)

    meta = {
        "config": cfg,
        "head": head,
        "classes": classes if head != "none" else None,
        "seg_hidden": seg_hidden if head == "seg" else None,
        "seg_dilation": SEG_DILATION,
        "input_shape": list(input_shape),
        "seed": seed,
        "mxnet": mx.__version__,
        "mxnet_subgraph_backend": SUBGRAPH_BACKEND,
        "outputs": outputs,
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return meta


# --------------------------------------------------------------------------
# committed fixtures
# --------------------------------------------------------------------------

FIXTURES = [
    dict(name="a1_cls", cfg=dict(model="a1", stride=32, divisor=32), head="cls",
         classes=10, input_shape=[2, 3, 64, 48], seed=1,
         headers=["v2", "legacy", "v1", "f16"], features=True, pth=True),
    # 110x60 -> score map 14x8: > 12 rows, so the d12 head taps at +-12 really
    # touch data (at <= 12x12 a 3x3/d12 conv degenerates to its centre tap),
    # and 110, 60 are not multiples of 8 (strided convs round up).
    dict(name="a1_s8_seg", cfg=dict(model="a1", stride=8, divisor=32, dropout={6: 0.3, 7: 0.5}),
         head="seg", classes=5, seg_hidden=512 // 32, input_shape=[1, 3, 110, 60], seed=2,
         features=True),
    dict(name="a_pool_same", cfg=dict(model="a", stride=32, divisor=32, pool_padding="same"),
         head="cls", classes=10, input_shape=[1, 3, 45, 37], seed=3, features=True),
    # pad-0 pooling needs >= 63 px to survive five 3x3/2 pools (MXNet refuses a
    # kernel larger than the padded input); 97x95 ends at 2x2.
    dict(name="a_pool_caffe", cfg=dict(model="a", stride=32, divisor=32, pool_padding="caffe"),
         head="cls", classes=10, input_shape=[1, 3, 97, 95], seed=4, features=True),
    dict(name="a_s16", cfg=dict(model="a", stride=16, divisor=32), head="none", classes=None,
         input_shape=[1, 3, 48, 40], seed=5, features=True),
    # 50x106 -> score map 7x14: > 12 columns for the d12 head taps.
    dict(name="a2_s8_seg", cfg=dict(model="a2", stride=8, divisor=32), head="seg", classes=4,
         seg_hidden=512 // 32, input_shape=[1, 3, 50, 106], seed=6, features=True),
]


def run_pth(case_dir, torch_python):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pth_fixture.py")
    subprocess.check_call([torch_python, script, case_dir])


def cmd_fixtures(a):
    only = set(a.only.split(",")) if a.only else None
    for fx in FIXTURES:
        if only and fx["name"] not in only:
            continue
        d = os.path.join(a.out, fx["name"])
        if os.path.isdir(d):
            shutil.rmtree(d)
        print("%s:" % fx["name"])
        cfg = preset_config(**fx["cfg"])
        make_case(d, cfg, fx["head"], fx["classes"], fx["input_shape"], fx["seed"],
                  seg_hidden=fx.get("seg_hidden"), headers=fx.get("headers", ["v2"]),
                  features=fx.get("features", False))
        if fx.get("pth"):
            run_pth(d, a.torch_python)


FULL_CASES = [
    dict(name="a1_cls224", cfg=dict(model="a1", stride=32), head="cls", classes=1000,
         input_shape=[1, 3, 224, 224], seed=11),
    dict(name="a1_s8_seg", cfg=dict(model="a1", stride=8, dropout={6: 0.3, 7: 0.5}), head="seg",
         classes=21, seg_hidden=512, input_shape=[1, 3, 120, 96], seed=12),
]


def cmd_full(a):
    only = set(a.only.split(",")) if a.only else None
    for fx in FULL_CASES:
        if only and fx["name"] not in only:
            continue
        d = os.path.join(a.out, fx["name"])
        print("%s:" % fx["name"])
        make_case(d, preset_config(**fx["cfg"]), fx["head"], fx["classes"], fx["input_shape"],
                  fx["seed"], seg_hidden=fx.get("seg_hidden"),
                  headers=a.headers.split(",") if a.headers else ["v2"],
                  features=a.features)
        if a.pth:
            run_pth(d, a.torch_python)


def cmd_case(a):
    if a.config:
        with open(a.config) as f:
            cfg = json.load(f)
    else:
        cfg = preset_config(a.preset, a.stride, a.divisor, a.pool_padding)
    shape = [int(v) for v in a.input_shape.split(",")]
    seg_hidden = a.seg_hidden if a.head == "seg" else None
    make_case(a.out, cfg, a.head, a.classes, shape, a.seed, seg_hidden=seg_hidden,
              headers=a.headers.split(","), features=a.features)
    if a.pth:
        run_pth(a.out, a.torch_python)


def cmd_preset(a):
    dropout = {6: 0.3, 7: 0.5} if a.seg_dropout else None
    print(json.dumps(preset_config(a.model, a.stride, a.divisor, a.pool_padding, dropout)))


def cmd_verify(a):
    """Re-run every case from its own files: meta.json + each weights*.params + input.npy."""
    ok = True
    for d in a.case_dirs:
        if not os.path.exists(os.path.join(d, "meta.json")):
            print("%s: no meta.json, skipped" % d)
            continue
        with open(os.path.join(d, "meta.json")) as f:
            meta = json.load(f)
        out, feats, _ = build_network(meta["config"], meta["head"], meta["classes"] or 0,
                                      meta["seg_hidden"] or 0, meta["seg_dilation"])
        levels = sorted(feats)
        feat_files = [os.path.join(d, "features_level%d.npy" % L) for L in levels]
        have_feats = all(os.path.exists(p) for p in feat_files)
        syms = [out] + ([feats[L] for L in levels] if have_feats else [])
        expected = [np.load(os.path.join(d, "output.npy"))]
        expected += [np.load(p) for p in feat_files] if have_feats else []
        x = np.load(os.path.join(d, "input.npy"))
        for fn in sorted(os.listdir(d)):
            if not (fn.startswith("weights") and fn.endswith(".params")):
                continue
            loaded = mx.nd.load(os.path.join(d, fn))
            args = {k[4:]: v.asnumpy().astype(np.float32) for k, v in loaded.items() if k.startswith("arg:")}
            aux = {k[4:]: v.asnumpy().astype(np.float32) for k, v in loaded.items() if k.startswith("aux:")}
            got = forward(syms, args, aux, x)
            same = all(g.shape == e.shape and np.array_equal(g, e) for g, e in zip(got, expected))
            _, forms = mxparams.load(os.path.join(d, fn))
            diff = max(float(np.abs(g - e).max() / max(np.abs(e).max(), 1e-30))
                       if g.shape == e.shape else float("inf") for g, e in zip(got, expected))
            print("%s/%s [%s]: %d outputs %s" % (
                os.path.basename(d.rstrip("/")), fn, ",".join(sorted(forms)), len(got),
                "identical" if same else "DIFFER (max |diff| / max |expected| = %.3g)" % diff))
            ok &= same
    if not ok:
        sys.exit(1)


def _np_max_pool(x, k, s, p, d=1):
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * p, w + 2 * p), -np.inf, dtype=x.dtype)
    xp[:, :, p:p + h, p:p + w] = x
    ext = (k - 1) * d + 1
    oh = (h + 2 * p - ext) // s + 1
    ow = (w + 2 * p - ext) // s + 1
    out = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, xp[:, :, i * d:i * d + s * (oh - 1) + 1:s,
                                     j * d:j * d + s * (ow - 1) + 1:s])
    return out


def cmd_selftest(a):
    rng = np.random.default_rng(0)
    items = [("arg:w", rng.standard_normal((3, 2, 3, 3)).astype(np.float32)),
             ("aux:v", rng.standard_normal((5,)).astype(np.float32)),
             ("arg:h", rng.standard_normal((2, 3)).astype(np.float16))]
    tmp = a.tmp
    os.makedirs(tmp, exist_ok=True)
    ref = os.path.join(tmp, "mx.params")
    mx.nd.save(ref, {k: mx.nd.array(v, dtype=v.dtype) for k, v in items})
    with open(ref, "rb") as f:
        ref_bytes = f.read()
    assert mxparams.dumps(items, "v2") == ref_bytes, "V2 writer differs from mx.nd.save"
    print("mx.nd.save bytes == mxparams V2 writer: OK")
    for form in mxparams.FORMATS:
        p = os.path.join(tmp, form + ".params")
        mxparams.save(p, items, form)
        _check_loads_back(p, items)
        back, forms = mxparams.load(p)
        assert forms == {form} and all(np.array_equal(v, w) for (_, v), (_, w) in zip(items, back))
        print("%s: mx.nd.load reads it back identically; mxparams.load too" % form)
    # pooling conventions vs numpy
    for (h, w) in [(45, 37), (44, 36), (23, 19), (7, 6), (3, 3)]:
        x = rng.standard_normal((1, 2, h, w)).astype(np.float32)
        for pad in (0, 1):
            got = forward([_max_pool(mx.sym.Variable("data"), "p", 2, pad)], {}, {}, x)[0]
            exp = _np_max_pool(x, 3, 2, pad)
            assert got.shape == exp.shape and np.array_equal(got, exp), (h, w, pad, got.shape, exp.shape)
        for dd in (1, 2, 4):
            got = forward([_max_pool(mx.sym.Variable("data"), "p", 1, dd, dd)], {}, {}, x)[0]
            exp = _np_max_pool(x, 3, 1, dd, dd)
            assert got.shape == exp.shape and np.array_equal(got, exp), (h, w, dd)
    print("max pool (stride 2 pad 0/1 floor; stride 1 dilated) == numpy reference: OK")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("case", help="one case directory")
    c.add_argument("--config", help="BackboneConfig JSON file (else --preset)")
    c.add_argument("--preset", default="a1", choices=["a", "a1", "a2"])
    c.add_argument("--stride", type=int, default=32)
    c.add_argument("--divisor", type=int, default=1)
    c.add_argument("--pool-padding", default="same", choices=["same", "caffe"])
    c.add_argument("--head", required=True, choices=["cls", "seg", "none"])
    c.add_argument("--classes", type=int, default=1000)
    c.add_argument("--seg-hidden", type=int, default=512)
    c.add_argument("--input-shape", required=True, help="N,C,H,W")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", required=True)
    c.add_argument("--headers", default="v2", help="comma list of v2,legacy,v1,f16")
    c.add_argument("--features", action="store_true")
    c.add_argument("--pth", action="store_true", help="also weights.pth via tools/pth_fixture.py")
    c.add_argument("--torch-python", default="/work/venvs/torch/bin/python")
    c.set_defaults(fn=cmd_case)

    f = sub.add_parser("fixtures", help="regenerate tests/fixtures/*")
    f.add_argument("--out", default=FIXTURE_DIR)
    f.add_argument("--only", help="comma list of fixture names")
    f.add_argument("--torch-python", default="/work/venvs/torch/bin/python")
    f.set_defaults(fn=cmd_fixtures)

    u = sub.add_parser("full", help="full-size parity cases (not committed)")
    u.add_argument("--out", required=True)
    u.add_argument("--only", help="comma list of: " + ",".join(x["name"] for x in FULL_CASES))
    u.add_argument("--headers", default="v2")
    u.add_argument("--features", action="store_true")
    u.add_argument("--pth", action="store_true", help="also weights.pth (a1_cls224 only makes sense)")
    u.add_argument("--torch-python", default="/work/venvs/torch/bin/python")
    u.set_defaults(fn=cmd_full)

    p = sub.add_parser("preset", help="print a preset config")
    p.add_argument("model", choices=["a", "a1", "a2"])
    p.add_argument("--stride", type=int, default=32)
    p.add_argument("--divisor", type=int, default=1)
    p.add_argument("--pool-padding", default="same", choices=["same", "caffe"])
    p.add_argument("--seg-dropout", action="store_true", help="dropout 0.3/0.5 on levels 6/7")
    p.set_defaults(fn=cmd_preset)

    v = sub.add_parser("verify", help="re-run case dirs from their files (all weights*.params)")
    v.add_argument("case_dirs", nargs="+")
    v.set_defaults(fn=cmd_verify)

    s = sub.add_parser("selftest", help="check .params writers and pooling")
    s.add_argument("--tmp", default="/tmp/r38_mxparams_selftest")
    s.set_defaults(fn=cmd_selftest)

    a = ap.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main()
