#!/usr/bin/env python3
"""Reference for psa's weakly-supervised protocol: class activation maps (CAMs) and one
multi-label fine-tuning step, in PyTorch, on seeded weights.

Our own code, written from the protocol as described in docs/weakly-supervised.md (psa's
`infer_cls.py`, `train_cls.py`, `network/resnet38_cls.py`); nothing of psa is vendored. It is
checked once against psa's original code (`check-psa`, which runs psa's own `infer_cls.py` from a
fetched copy outside this repository), and writes the committed reduced-width fixtures that
`cargo test` matches (`fixtures`).

Usage (torch venv, see tools/README.md):

    PY=/work/venvs/torch/bin/python
    $PY tools/psa_reference.py fixtures --out tests/fixtures/psa
    $PY tools/psa_reference.py check-psa --psa /tmp/psa [--divisor 1] [--size 64x48]
    $PY tools/psa_reference.py eps-effect          # how much eps 1e-5 vs 1.001e-5 moves relu7

The network is psa's "resnet38d" (Model A1 at output stride 8) with every width divided by
`--divisor`; state-dict keys follow psa (`b4_3.bn_branch2a.running_var`, `fc8.weight`, ...).
"""
import argparse
import io
import json
import os
import pickle
import runpy
import shutil
import sys
import tempfile
import types

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

TORCH_EPS = 1e-5      # torch.nn.BatchNorm2d's default, what psa trains and tests with
MXNET_EPS = 1.001e-5  # the authors' MXNet value
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SCALES = (1.0, 0.5, 1.5, 2.0)   # infer_cls.py's order (the sum does not depend on it)
BG_THRESHOLD = 0.2              # infer_cls.py's --out_cam_pred background score

# ---- the network: (module, kind, in, widths, stride, first dilation, dilation) --------------


def layout(divisor):
    d = lambda c: max(1, c // divisor)  # noqa: E731
    units = []

    def level(lv, count, kind, widths, stride, first_dil, dil):
        for i in range(count):
            name = "b%d" % lv if i == 0 else "b%d_%d" % (lv, i)
            units.append((name, kind, [d(w) for w in widths],
                          stride if i == 0 else 1, first_dil if i == 0 else dil, dil, i == 0))

    level(2, 3, "basic", [128, 128], 2, 1, 1)
    level(3, 3, "basic", [256, 256], 2, 1, 1)
    level(4, 6, "basic", [512, 512], 2, 1, 1)
    # res5a: first 3x3 at dilation 1, then dilation 2 (output stride 8)
    level(5, 3, "basic", [512, 1024], 1, 1, 2)
    level(6, 1, "bottleneck", [512, 1024, 2048], 1, 4, 4)
    level(7, 1, "bottleneck", [1024, 2048, 4096], 1, 4, 4)
    return d(64), units


BN_KEYS = ("weight", "bias", "running_mean", "running_var")


class ResNet38d:
    """Functional resnet38d over a psa-keyed state dict `p` (torch tensors)."""

    def __init__(self, divisor, p, eps=TORCH_EPS):
        self.stem, self.units = layout(divisor)
        self.p = p
        self.eps = eps
        self.calibrate = None

    def bn(self, x, key):
        if self.calibrate is not None:
            self.calibrate(x, key)
        p = self.p
        return F.batch_norm(x, p[key + ".running_mean"], p[key + ".running_var"],
                            p[key + ".weight"], p[key + ".bias"], False, 0.0, self.eps)

    def conv(self, x, key, stride=1, dilation=1):
        w = self.p[key + ".weight"]
        k = w.shape[-1]
        pad = dilation * (k - 1) // 2
        return F.conv2d(x, w, stride=stride, padding=pad, dilation=dilation)

    def features(self, x):
        x = self.conv(x, "conv1a")
        for name, kind, widths, stride, d1, d, proj in self.units:
            t = F.relu(self.bn(x, name + ".bn_branch2a"))
            short = self.conv(t, name + ".conv_branch1", stride) if proj else x
            if kind == "basic":
                y = self.conv(t, name + ".conv_branch2a", stride, d1)
                y = F.relu(self.bn(y, name + ".bn_branch2b1"))
                y = self.conv(y, name + ".conv_branch2b1", 1, d)
            else:
                y = self.conv(t, name + ".conv_branch2a", stride)
                y = F.relu(self.bn(y, name + ".bn_branch2b1"))
                y = self.conv(y, name + ".conv_branch2b1", 1, d)
                y = F.relu(self.bn(y, name + ".bn_branch2b2"))
                y = self.conv(y, name + ".conv_branch2b2")
            x = short + y
        return F.relu(self.bn(x, "bn7"))

    def scores(self, x):
        f = self.features(x)
        return F.conv2d(f.mean((2, 3), keepdim=True), self.p["fc8.weight"]).flatten(1)

    def cams(self, x):
        return F.relu(F.conv2d(self.features(x), self.p["fc8.weight"]))


def conv_shapes(divisor, classes):
    """(key, shape) of every conv weight, in psa's module order."""
    stem, units = layout(divisor)
    out = [("conv1a", (stem, 3, 3, 3))]
    c = stem
    for name, kind, widths, stride, d1, d, proj in units:
        if kind == "basic":
            out.append((name + ".conv_branch2a", (widths[0], c, 3, 3)))
            out.append((name + ".conv_branch2b1", (widths[1], widths[0], 3, 3)))
        else:
            out.append((name + ".conv_branch2a", (widths[0], c, 1, 1)))
            out.append((name + ".conv_branch2b1", (widths[1], widths[0], 3, 3)))
            out.append((name + ".conv_branch2b2", (widths[2], widths[1], 1, 1)))
        if proj:
            out.append((name + ".conv_branch1", (widths[-1], c, 1, 1)))
        c = widths[-1]
    return out, c


def seeded_state_dict(divisor, classes, seed, calib_input, var_scale=1e-2):
    """Seeded weights whose BN running statistics are calibrated on `calib_input` (so that the
    activations stay O(1)) with the BN inputs scaled to a standard deviation of about
    `var_scale`: running variances near var_scale^2, small enough that eps 1e-5 vs 1.001e-5 shows.
    """
    rng = np.random.default_rng(seed)
    convs, feat = conv_shapes(divisor, classes)
    p = {}
    for key, shape in convs:
        fan_in = shape[1] * shape[2] * shape[3]
        w = rng.standard_normal(shape) * np.sqrt(1.0 / fan_in) * var_scale
        p[key + ".weight"] = torch.from_numpy(w.astype(np.float16).astype(np.float32))
    fc8 = rng.standard_normal((classes, feat, 1, 1)) * np.sqrt(2.0 / feat)
    p["fc8.weight"] = torch.from_numpy(fc8.astype(np.float16).astype(np.float32))
    net = ResNet38d(divisor, p)

    def calibrate(x, key):
        if key + ".running_mean" in p:
            return
        c = x.shape[1]
        mean = x.mean((0, 2, 3)).double().numpy()
        var = x.var((0, 2, 3), unbiased=False).double().numpy()
        std = np.sqrt(var)
        p[key + ".running_mean"] = torch.from_numpy(
            (mean + rng.uniform(-0.2, 0.2, c) * std).astype(np.float32))
        p[key + ".running_var"] = torch.from_numpy(
            (var * rng.uniform(0.7, 1.4, c) + 1e-12).astype(np.float32))
        p[key + ".weight"] = torch.from_numpy(rng.uniform(0.8, 1.2, c).astype(np.float32))
        p[key + ".bias"] = torch.from_numpy((rng.standard_normal(c) * 0.1).astype(np.float32))

    net.calibrate = calibrate
    with torch.no_grad():
        net.features(calib_input)
    net.calibrate = None
    return p


def psa_ordered(p):
    """The state dict in psa's key order, with `num_batches_tracked` as torch writes it."""
    import collections
    out = collections.OrderedDict()
    keys = list(p.keys())
    bns = sorted({k.rsplit(".", 1)[0] for k in keys if k.endswith(".running_var")})
    for k in keys:
        if k.endswith(".weight") and k.rsplit(".", 1)[0] in bns:
            continue
        if not any(k.endswith("." + b) for b in BN_KEYS[2:]):
            out[k] = p[k]
    for bn in bns:
        for b in BN_KEYS:
            out[bn + "." + b] = p[bn + "." + b]
        out[bn + ".num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)
    return out


# ---- psa's CAM protocol ------------------------------------------------------------------


def normalize(img):
    """psa's Normalize: (RGB / 255 - mean) / std in float64, stored as float32; HWC -> CHW."""
    a = np.asarray(img)
    out = np.empty(a.shape, np.float32)
    for c in range(3):
        out[..., c] = (a[..., c] / 255. - MEAN[c]) / STD[c]
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def scaled_size(size, s):
    # Python's round(): half to even, as infer_cls.py's dataset computes it.
    return (round(size[0] * s), round(size[1] * s))


def cam_protocol(net, img, labels=None, scales=SCALES):
    """infer_cls.py: CAMs at every scale and its flip, upsampled (bilinear, align_corners=False)
    to the image, masked by the labels, summed, each class divided by (its maximum + 1e-5).

    `labels`: 20 floats (0/1), or None to use the predicted classes (score > 0 at scale 1).
    Returns (norm_cam (C,H,W) float32, labels used, scores at scale 1)."""
    w, h = img.size
    total = None
    scores = None
    with torch.no_grad():
        for s in scales:
            im = img.resize(scaled_size((w, h), s), resample=PIL.Image.BICUBIC)
            x = normalize(im)
            for flip in (False, True):
                xi = np.flip(x, -1).copy() if flip else x
                t = torch.from_numpy(xi)[None]
                f = net.features(t)
                if s == 1.0 and not flip:
                    scores = F.conv2d(f.mean((2, 3), keepdim=True), net.p["fc8.weight"]).flatten()
                cam = F.relu(F.conv2d(f, net.p["fc8.weight"]))
                cam = F.interpolate(cam, (h, w), mode="bilinear", align_corners=False)[0].numpy()
                if flip:
                    cam = np.flip(cam, -1)
                total = cam if total is None else total + cam
    if labels is None:
        labels = (scores.numpy() > 0).astype(np.float32)
        if labels.sum() == 0:
            labels[int(scores.argmax())] = 1.0
    total = total * labels[:, None, None]
    norm = total / (np.max(total, (1, 2), keepdims=True) + 1e-5)
    return norm.astype(np.float32), labels, scores.numpy()


def cam_pred(norm_cam, threshold=BG_THRESHOLD):
    """--out_cam_pred: argmax over [background = threshold, the 20 normalised CAMs]."""
    bg = np.full((1,) + norm_cam.shape[1:], threshold, np.float32)
    return np.argmax(np.concatenate((bg, norm_cam)), 0).astype(np.uint8)


# ---- psa's fine-tuning step --------------------------------------------------------------

FROZEN_PREFIXES = ("conv1a", "b2.", "b2_1.", "b2_2.")  # resnet38_cls.not_training


def train_steps(divisor, p, x, labels, lr, max_step, steps, weight_decay=5e-4):
    """train_cls.py with resnet38_cls: BN in eval mode and frozen (gamma, beta, statistics),
    conv1a and b2* frozen, fc8 at 10x the rate; multilabel soft-margin loss; psa's PolyOptimizer
    (lr * (1 - step / max_step) ** 0.9, torch SGD whose third positional argument makes the
    momentum equal to the weight decay, 5e-4). Dropout is off (p = 0), so that the step is
    deterministic. Returns per step (loss, grads, params after the update)."""
    params = {k: v.clone() for k, v in p.items()}
    trainable = [k for k, v in params.items()
                 if k.endswith(".weight") and v.dim() == 4
                 and not k.startswith(FROZEN_PREFIXES)]
    for k in trainable:
        params[k].requires_grad_(True)
    groups = [
        {"params": [params[k] for k in trainable if k != "fc8.weight"], "lr": lr,
         "weight_decay": weight_decay},
        {"params": [params["fc8.weight"]], "lr": 10 * lr, "weight_decay": weight_decay},
    ]
    # psa: PolyOptimizer(..., lr, weight_decay) -> torch.optim.SGD(params, lr, weight_decay),
    # i.e. momentum = weight_decay.
    opt = torch.optim.SGD(groups, lr, weight_decay)
    initial = [g["lr"] for g in opt.param_groups]
    net = ResNet38d(divisor, params)
    out = []
    for step in range(steps):
        mult = (1 - step / max_step) ** 0.9
        for g, lr0 in zip(opt.param_groups, initial):
            g["lr"] = lr0 * mult
        opt.zero_grad()
        scores = net.scores(x)
        loss = F.multilabel_soft_margin_loss(scores, labels)
        loss.backward()
        grads = {k: params[k].grad.detach().clone() for k in trainable}
        opt.step()
        after = {k: params[k].detach().clone() for k in trainable}
        out.append((loss.item(), scores.detach().numpy(), grads, after))
    return trainable, out


# ---- fixtures ----------------------------------------------------------------------------


def synthetic_image(w, h, seed):
    """Smooth colour blobs plus noise: something for the bicubic resizes to work on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for _ in range(5):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.2, 0.5) * max(h, w)
        colour = rng.uniform(0, 255, 3)
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += g[..., None] * colour
    img = img / img.max() * 220 + rng.uniform(0, 35, (h, w, 3))
    return PIL.Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def save_npy(path, a):
    np.save(path, np.ascontiguousarray(a))


def cmd_fixtures(args):
    out = args.out
    os.makedirs(out, exist_ok=True)
    divisor, classes, seed = 32, 20, 15
    img = synthetic_image(45, 34, seed)
    img.save(os.path.join(out, "image.png"))
    x1 = torch.from_numpy(normalize(img))[None]
    p = seeded_state_dict(divisor, classes, seed, x1)
    torch.save(psa_ordered(p), os.path.join(out, "cls.pth"))
    net = ResNet38d(divisor, p)
    with torch.no_grad():
        relu7 = net.features(x1).numpy()
        relu7_mx = ResNet38d(divisor, p, MXNET_EPS).features(x1).numpy()
    save_npy(os.path.join(out, "input.npy"), x1.numpy())
    save_npy(os.path.join(out, "relu7.npy"), relu7)
    eps_effect = float(np.abs(relu7 - relu7_mx).max() / np.abs(relu7).max())

    labels = np.zeros(classes, np.float32)
    labels[[2, 11, 14]] = 1.0
    norm, _, scores = cam_protocol(net, img, labels)
    keys = [int(i) for i in np.nonzero(labels)[0]]
    save_npy(os.path.join(out, "scores.npy"), scores[None])
    save_npy(os.path.join(out, "cams.npy"), norm[keys])
    save_npy(os.path.join(out, "cam_pred.npy"), cam_pred(norm))
    pred_norm, pred_labels, _ = cam_protocol(net, img, None)
    pred_keys = [int(i) for i in np.nonzero(pred_labels)[0]]
    save_npy(os.path.join(out, "cams_predicted.npy"), pred_norm[pred_keys])

    # one fine-tuning batch: two 24x24 crops of the image, two label vectors
    os.makedirs(os.path.join(out, "train"), exist_ok=True)
    crops = np.stack([normalize(img)[:, 0:24, 0:24], normalize(img)[:, 10:34, 21:45]])
    tlabels = np.zeros((2, classes), np.float32)
    tlabels[0, [2, 11]] = 1
    tlabels[1, [14]] = 1
    # O(1) running variances here: with the CAM weights' tiny ones a step of 0.01 would be huge.
    p_train = seeded_state_dict(divisor, classes, seed + 1, torch.from_numpy(crops), 1.0)
    torch.save(psa_ordered(p_train), os.path.join(out, "train", "cls.pth"))
    trainable, steps = train_steps(divisor, p_train, torch.from_numpy(crops),
                                   torch.from_numpy(tlabels), lr=0.01, max_step=10, steps=2)
    tdir = os.path.join(out, "train")
    os.makedirs(tdir, exist_ok=True)
    save_npy(os.path.join(tdir, "input.npy"), crops)
    save_npy(os.path.join(tdir, "labels.npy"), tlabels)
    checked = ["fc8.weight", "b7.conv_branch2b2.weight", "b5_1.conv_branch2a.weight",
               "b3.conv_branch1.weight"]
    losses = []
    for i, (loss, sc, grads, after) in enumerate(steps):
        losses.append(loss)
        save_npy(os.path.join(tdir, "scores%d.npy" % i), sc)
        for k in checked:
            base = k.replace(".", "_")
            save_npy(os.path.join(tdir, "grad%d_%s.npy" % (i, base)), grads[k].numpy())
            save_npy(os.path.join(tdir, "after%d_%s.npy" % (i, base)), after[k].numpy())
    # SEAM's and 1-stage-wseg's checkpoints (every width / 64): the resnet38d backbone plus
    # SEAM's 21-channel fc8 (channel 0 = background) and PCM convs f8_3, f8_4, f9; and plus a
    # subset of 1-stage-wseg's SoftMaxAE decoder, saved through DataParallel ("module." keys).
    small = 64
    d = lambda c: max(1, c // small)  # noqa: E731
    rng = np.random.default_rng(seed + 2)
    extra_w = lambda *shape: torch.from_numpy(  # noqa: E731
        rng.standard_normal(shape).astype(np.float32) * 0.1)
    seam = seeded_state_dict(small, 21, seed + 2, x1)
    seam.update({"f8_3.weight": extra_w(d(64), d(512), 1, 1),
                 "f8_4.weight": extra_w(d(128), d(1024), 1, 1),
                 "f9.weight": extra_w(d(192), d(192) + 3, 1, 1)})
    torch.save(psa_ordered(seam), os.path.join(out, "seam.pth"))
    with torch.no_grad():
        save_npy(os.path.join(out, "seam_relu7.npy"), ResNet38d(small, seam).features(x1).numpy())
    wseg = seeded_state_dict(small, 20, seed + 3, x1)
    del wseg["fc8.weight"]
    bn = lambda c: {"weight": torch.ones(c), "bias": torch.zeros(c),  # noqa: E731
                    "running_mean": torch.zeros(c), "running_var": torch.ones(c),
                    "num_batches_tracked": torch.tensor(0)}
    feat = d(4096)
    decoder = {"aspp.aspp1.atrous_conv.weight": extra_w(d(256), feat, 1, 1),
               "aspp.conv1.weight": extra_w(d(256), d(1280), 1, 1),
               "fc8_skip.0.weight": extra_w(d(48), d(256), 1, 1),
               "fc8_x.0.weight": extra_w(d(256), d(304), 3, 3),
               "last_conv.8.weight": extra_w(20, d(256), 1, 1),
               "last_conv.8.bias": extra_w(20),
               "shallow_mask.fc_deep.0.weight": extra_w(d(512), d(256), 1, 1)}
    for k, v in bn(d(256)).items():
        decoder["aspp.aspp1.bn." + k] = v
    wseg_sd = psa_ordered(wseg)
    wseg_sd.update(decoder)
    torch.save({"module." + k: v for k, v in wseg_sd.items()}, os.path.join(out, "wseg.pth"))
    with torch.no_grad():
        save_npy(os.path.join(out, "wseg_relu7.npy"), ResNet38d(small, wseg).features(x1).numpy())

    # psa-style cls_labels.npy: protocol 2 as psa's own file, and protocol 3 as np.save today
    cls = {"2007_000032": np.eye(20, dtype=np.float32)[0] + np.eye(20, dtype=np.float32)[14],
           "2008_000002": np.eye(20, dtype=np.float32)[19],
           "2011_003276": np.zeros(20, np.float32)}
    for proto, name in ((2, "cls_labels.npy"), (3, "cls_labels_protocol3.npy")):
        holder = np.empty((), object)
        holder[()] = cls
        with open(os.path.join(out, name), "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|O", "fortran_order": False, "shape": ()})
            pickle.dump(holder, f, protocol=proto)
        assert np.load(os.path.join(out, name), allow_pickle=True).item().keys() == cls.keys()
    meta = {
        "generator": "tools/psa_reference.py fixtures",
        "torch": torch.__version__,
        "divisor": divisor, "classes": classes, "seed": seed,
        "bn_eps": TORCH_EPS,
        "relu7_rel_change_with_mxnet_eps": eps_effect,
        "scales": list(SCALES),
        "labels": keys,
        "predicted": pred_keys,
        "bg_threshold": BG_THRESHOLD,
        "train": {"lr": 0.01, "max_step": 10, "steps": 2, "weight_decay": 5e-4,
                  "momentum": 5e-4, "poly_power": 0.9, "fc8_lr_mult": 10,
                  "frozen": list(FROZEN_PREFIXES), "losses": losses, "checked": checked},
    }
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps({k: meta[k] for k in ("relu7_rel_change_with_mxnet_eps", "labels",
                                           "predicted")}))
    print("losses", losses)


def cmd_eps_effect(args):
    img = synthetic_image(45, 34, 15)
    x = torch.from_numpy(normalize(img))[None]
    p = seeded_state_dict(args.divisor, 20, 15, x, var_scale=args.var_scale)
    with torch.no_grad():
        a = ResNet38d(args.divisor, p, TORCH_EPS).features(x).numpy()
        b = ResNet38d(args.divisor, p, MXNET_EPS).features(x).numpy()
    print("relu7 max |diff| / max |relu7| = %.3e" % (np.abs(a - b).max() / np.abs(a).max()))


# ---- one-time check against psa's own infer_cls.py ----------------------------------------


def _shim_modules():
    """Stand-ins for what infer_cls.py imports but the CPU check does not need: scipy.misc
    (gone from scipy) and torchvision (only transforms.Compose)."""
    scipy_misc = types.ModuleType("scipy.misc")
    scipy_misc.imsave = lambda path, arr: PIL.Image.fromarray(arr).save(path)
    scipy = types.ModuleType("scipy")
    scipy.misc = scipy_misc
    tv = types.ModuleType("torchvision")
    tv_t = types.ModuleType("torchvision.transforms")

    class Compose:
        def __init__(self, fs):
            self.fs = fs

        def __call__(self, x):
            for f in self.fs:
                x = f(x)
            return x

    tv_t.Compose = Compose
    # Pillow 10 dropped the CUBIC alias psa's dataset uses; it always meant BICUBIC.
    PIL.Image.CUBIC = PIL.Image.BICUBIC
    tv.transforms = tv_t
    sys.modules.update({"scipy": scipy, "scipy.misc": scipy_misc, "torchvision": tv,
                        "torchvision.transforms": tv_t})


def _cpu_only():
    """infer_cls.py asks for CUDA; make every CUDA call a no-op on the CPU."""
    import contextlib
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.device_count = lambda: 1
    torch.cuda.device = lambda i: contextlib.nullcontext()
    torch.nn.parallel.replicate = lambda model, devices: [model]
    _load = np.load
    np.load = lambda *a, **k: _load(*a, **{"allow_pickle": True, **k})  # cls_labels.npy


def cmd_check_psa(args):
    """Run psa's infer_cls.py (from a fetched copy) on seeded weights and compare its --out_cam
    and --out_cam_pred with cam_protocol()."""
    psa = os.path.abspath(args.psa)
    work = tempfile.mkdtemp(prefix="psa_check_")
    w, h = (int(v) for v in args.size.split("x"))
    name = "2007_000032"  # any image of psa's cls_labels.npy: its labels are used
    root = os.path.join(work, "VOC2012")
    os.makedirs(os.path.join(root, "JPEGImages"))
    img = synthetic_image(w, h, 7)
    img.save(os.path.join(root, "JPEGImages", name + ".jpg"), quality=95)
    img = PIL.Image.open(os.path.join(root, "JPEGImages", name + ".jpg")).convert("RGB")
    x1 = torch.from_numpy(normalize(img))[None]
    p = seeded_state_dict(args.divisor, 20, 7, x1)
    weights = os.path.join(work, "cls.pth")
    torch.save(psa_ordered(p), weights)
    with open(os.path.join(work, "list.txt"), "w") as f:
        f.write("/JPEGImages/%s.jpg\n" % name)
    for d in ("cam", "pred", "la_crf", "ha_crf"):
        os.makedirs(os.path.join(work, d))

    _shim_modules()
    _cpu_only()
    sys.path.insert(0, psa)
    cwd = os.getcwd()
    os.chdir(psa)
    sys.argv = ["infer_cls.py", "--weights", weights, "--network", "network.resnet38_cls",
                "--infer_list", os.path.join(work, "list.txt"), "--num_workers", "1",
                "--voc12_root", root, "--out_cam", os.path.join(work, "cam"),
                "--out_cam_pred", os.path.join(work, "pred")]
    if args.crf:  # needs pydensecrf (pip install pydensecrf2)
        sys.argv += ["--out_la_crf", os.path.join(work, "la_crf"),
                     "--out_ha_crf", os.path.join(work, "ha_crf")]
    if args.divisor != 1:
        # psa's network has fixed widths; narrow it by patching the constructors' widths.
        sys.exit("check-psa runs psa's full-width network: use --divisor 1")
    runpy.run_path(os.path.join(psa, "infer_cls.py"), run_name="__main__")
    os.chdir(cwd)
    theirs = np.load(os.path.join(work, "cam", name + ".npy"), allow_pickle=True).item()
    their_pred = np.asarray(PIL.Image.open(os.path.join(work, "pred", name + ".png")))
    labels_all = np.load(os.path.join(psa, "voc12", "cls_labels.npy"), allow_pickle=True).item()
    labels = labels_all[name].astype(np.float32)
    ours, _, _ = cam_protocol(ResNet38d(1, p), img, labels)
    worst = 0.0
    for k, v in theirs.items():
        worst = max(worst, float(np.abs(v - ours[k]).max()))
    agree = float((their_pred == cam_pred(ours)).mean())
    print("classes %s: max |ours - psa's infer_cls.py| = %.3e over %dx%d CAMs; "
          "cam_pred pixels agreeing: %.4f" % (sorted(theirs), worst, h, w, agree))
    if args.r38:
        # r38 on the same pixels (the JPEG as Pillow decoded it) and weights.
        import subprocess
        img.save(os.path.join(work, "decoded.png"))
        keys = ",".join(str(k) for k in sorted(theirs))
        subprocess.run([args.r38, "cam", "--weights", weights, os.path.join(work, "decoded.png"),
                        "--out-dir", os.path.join(work, "r38"), "--labels", keys]
                       + (["--crf"] if args.crf else []), check=True)
        r38_cams = np.load(os.path.join(work, "r38", "decoded.npy"), allow_pickle=True).item()
        assert sorted(r38_cams) == sorted(theirs), (sorted(r38_cams), sorted(theirs))
        worst_r38 = max(float(np.abs(r38_cams[k] - theirs[k]).max()) for k in theirs)
        r38_pred = np.asarray(PIL.Image.open(os.path.join(work, "r38", "decoded_cam_pred.png")))
        print("r38 cam: max |r38 - psa's infer_cls.py| = %.3e; cam_pred pixels agreeing: %.4f"
              % (worst_r38, float((r38_pred == their_pred).mean())))
        for kind in ("la_crf", "ha_crf") if args.crf else ():
            t = np.load(os.path.join(work, kind, name + ".npy"), allow_pickle=True).item()
            o = np.load(os.path.join(work, "r38", "decoded_%s.npy" % kind),
                        allow_pickle=True).item()
            assert sorted(t) == sorted(o), (sorted(t), sorted(o))
            diff = max(float(np.abs(t[k] - o[k]).max()) for k in t)
            agree = float((np.argmax(np.stack([t[k] for k in sorted(t)]), 0)
                           == np.argmax(np.stack([o[k] for k in sorted(o)]), 0)).mean())
            print("r38 cam --crf %s: max |r38 - psa| = %.3e; argmax pixels agreeing: %.4f"
                  % (kind, diff, agree))
    if not args.keep:
        shutil.rmtree(work)
    else:
        print("kept", work)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixtures")
    f.add_argument("--out", default="tests/fixtures/psa")
    c = sub.add_parser("check-psa")
    c.add_argument("--psa", required=True, help="a checkout of jiwoon-ahn/psa")
    c.add_argument("--divisor", type=int, default=1)
    c.add_argument("--size", default="64x48", help="WxH of the synthetic image")
    c.add_argument("--keep", action="store_true")
    c.add_argument("--r38", help="also run this r38 binary's `cam` and compare it with psa's")
    c.add_argument("--crf", action="store_true",
                   help="also compare psa's --out_la_crf/--out_ha_crf (needs pydensecrf)")
    e = sub.add_parser("eps-effect")
    e.add_argument("--divisor", type=int, default=32)
    e.add_argument("--var-scale", type=float, default=1e-2)
    args = ap.parse_args()
    {"fixtures": cmd_fixtures, "check-psa": cmd_check_psa, "eps-effect": cmd_eps_effect}[
        args.cmd](args)


if __name__ == "__main__":
    main()
