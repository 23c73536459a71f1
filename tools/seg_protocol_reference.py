#!/usr/bin/env python3
"""Reference for the segmentation test protocol (`r38_seg::test_time`).

Runs the committed reduced-width segmentation network `tests/fixtures/a1_s8_seg` (A1, output
stride 8, 2-conv head, 5 classes) in MXNet 1.9.1 through the authors' single-scale test protocol,
re-expressed here with PIL + numpy (our own code, written from reading `issegm/voc.py`
`_val_impl` / `interp_preds_as`, `util/transformer.py` `Scale` and `util/util.py`
`get_interp_method`; reference doc section 5.2), and writes the results that
`crates/r38-seg/tests/protocol_parity.rs` compares against to `tests/fixtures/seg_protocol/`.

Usage (from the repository root):

    /work/venvs/mx/bin/python tools/seg_protocol_reference.py [--out DIR]

The protocol, step by step (what the authors' evaluation does):

1. Scale: the longer side becomes `scale` unless it already is; the other side is
   `round(scale * other / longer)` (numpy round, half to even). 8-bit RGB resize with the
   adaptive filter: Lanczos (`ANTIALIAS`) if both sides shrink, bicubic if both grow, else
   bilinear.
2. Normalise: `u8 * float32(1/255)` in float32, then minus the ImageNet mean and divided by the
   std in float64, stored as float32.
3. Canvas: `(Hc, Wc)` zeros, Hc = Wc = ceil8(scale) (VOC / ADE20K), or ceil8 of the scaled image
   size (Cityscapes, `ident_size`).
4. Shifts (`--test-steps k`, pred_stride = 8 // k): for each (iy, ix) in k x k, the canvas holds
   the image moved by (dy, dx) = (pred_stride // 2 + i * pred_stride - 4) pixels backwards, i.e.
   canvas[r, c] = image[r + dy, c + dx] (zero outside the image), filled only inside
   [0, imh) x [0, imw).  k = 1: dy = dx = 0; k = 2: -2, +2; k = 4: -3, -1, +1, +3.
5. Net -> softmax probabilities (their OhemSoftmax forward: softmax in float64, stored float32).
6. Flip: the WHOLE canvas (padding included) is mirrored left-right, run, its probability map
   mirrored back over the whole output width and averaged: 0.5 * (p + flip(p_flipped)), float32.
7. Interleave: fine[:, iy::k, ix::k] = run(iy, ix), a map at stride pred_stride.
8. Upsample: each class plane (mode F) -> PIL bicubic to (pred_w * pred_stride, pred_h *
   pred_stride) = the canvas size; crop to the scaled image [:imh, :imw]; if the image was
   rescaled, resize to the original size with the adaptive filter (from the scaled to the
   original size).
9. Labels: argmax over classes (first index on ties).

Resizes use the classic Pillow pass order (horizontal then vertical, as two single-axis
resizes), which is what the authors' Pillow (3-4) did and what `r38_data::resample` implements;
Pillow 13 may reorder the passes of a single call (see tools/pillow_fixtures.py).
"""

import argparse
import json
import os
import sys

import numpy as np
import PIL
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxnet_reference as mref  # noqa: E402  (sets MXNET_SUBGRAPH_BACKEND=NONE)
import mxnet as mx  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "a1_s8_seg")
OUT_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "seg_protocol")
STRIDE = 8
MEAN = np.array([0.485, 0.456, 0.406]).reshape((1, 1, 3))
STD = np.array([0.229, 0.224, 0.225]).reshape((1, 1, 3))

# name, source (w, h), test scale, canvas ("square" | "fit"), flip, test steps
CASES = [
    # unchanged size (longer side == scale), 100 not a multiple of 8, square canvas 104
    dict(name="native_flip", src=(100, 40), scale=100, canvas="square", flip=True, steps=1),
    # shrunk to 100x40 (Lanczos), probabilities enlarged back (bicubic); shift-and-stitch k=2
    dict(name="down_flip_steps2", src=(120, 48), scale=100, canvas="square", flip=True, steps=2),
    # enlarged to 100x40 (bicubic), probabilities shrunk back (Lanczos)
    dict(name="up_flip", src=(75, 30), scale=100, canvas="square", flip=True, steps=1),
    # shift-and-stitch without flipping
    dict(name="steps2", src=(100, 40), scale=100, canvas="square", flip=False, steps=2),
    # Cityscapes-style canvas: the image size rounded up to a multiple of 8 (104x48)
    dict(name="fit_flip", src=(98, 42), scale=98, canvas="fit", flip=True, steps=1),
    # portrait, k=4 (16 shifted runs, 32 with flipping), canvas 112 -> 14x14 score map
    dict(name="tall_flip_steps4", src=(44, 110), scale=110, canvas="square", flip=True, steps=4),
]


def resize_classic(im, size, filt):
    """Pillow resize in the classic pass order (horizontal, then vertical)."""
    w, h = im.size
    dw, dh = size
    if (w, h) == (dw, dh):
        return im.copy()
    if filt == Image.Resampling.NEAREST or dw == w or dh == h:
        return im.resize(size, filt)
    return im.resize((dw, h), filt).resize((dw, dh), filt)


def adaptive_filter(src, dst):
    """`get_interp_method` with adaptive choice on (src, dst are (w, h))."""
    (sw, sh), (dw, dh) = src, dst
    if dw < sw and dh < sh:
        return Image.Resampling.LANCZOS
    if dw > sw and dh > sh:
        return Image.Resampling.BICUBIC
    return Image.Resampling.BILINEAR


def synthetic_rgb(w, h, seed):
    """A smooth-ish image with edges and some noise, deterministic."""
    rng = np.random.default_rng([seed, w, h])
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 90 * np.sin(x / 9.0 + y / 13.0)
    g = 128 + 90 * np.cos(x / 17.0 - y / 7.0)
    b = np.where(((x // 23) + (y // 17)) % 2 == 0, 200.0, 40.0)
    disc = (x - 0.6 * w) ** 2 + (y - 0.4 * h) ** 2 < (0.25 * min(w, h)) ** 2
    r = np.where(disc, 240.0, r)
    img = np.stack([r, g, b], axis=2) + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def scaled_size(w, h, size):
    """The authors' Scale(size, shorter_side=False) target size (w, h)."""
    if max(h, w) == size:
        return w, h
    if max(h, w) == w:
        return size, int(np.round(1.0 * size * h / w))
    return int(np.round(1.0 * size * w / h)), size


def normalise(a):
    d = a.astype(np.single) * np.single(1.0 / 255)
    d = d.astype(np.float64)
    d -= MEAN
    d /= STD
    return d.astype(np.float32).transpose(2, 0, 1)  # (3, h, w)


def softmax_f64(scores):
    """Their OhemSoftmax forward: float64 softmax over axis 1, stored float32."""
    x = scores.astype(np.float64)
    y = np.exp(x - x.max(axis=1, keepdims=True))
    y /= y.sum(axis=1, keepdims=True)
    return y.astype(np.float32)


class Net:
    def __init__(self, case_dir):
        with open(os.path.join(case_dir, "meta.json")) as f:
            self.meta = json.load(f)
        m = self.meta
        self.sym, _, _ = mref.build_network(m["config"], m["head"], m["classes"],
                                            m["seg_hidden"], m["seg_dilation"])
        loaded = mx.nd.load(os.path.join(case_dir, "weights.params"))
        self.args = {k[4:]: v.asnumpy() for k, v in loaded.items() if k.startswith("arg:")}
        self.aux = {k[4:]: v.asnumpy() for k, v in loaded.items() if k.startswith("aux:")}
        self.classes = m["classes"]
        self.runs = 0

    def probs(self, canvas):
        """(1, 3, H, W) float32 -> (C, H/8, W/8) softmax probabilities, float32."""
        self.runs += 1
        scores = mref.forward([self.sym], self.args, self.aux, canvas)[0]
        return softmax_f64(scores)[0]


def run_protocol(net, rgb, scale, canvas_mode, flip, steps):
    h0, w0 = rgb.shape[:2]
    sw, sh = scaled_size(w0, h0, scale)
    im = Image.fromarray(rgb)
    if (sw, sh) != (w0, h0):
        im = resize_classic(im, (sw, sh), adaptive_filter((w0, h0), (sw, sh)))
    scaled = np.array(im, np.uint8)
    imh, imw = scaled.shape[:2]
    data = normalise(scaled)

    ceil8 = lambda v: int(np.ceil(float(v) / STRIDE) * STRIDE)  # noqa: E731
    if canvas_mode == "square":
        ch = cw = ceil8(scale)
    else:
        ch, cw = ceil8(imh), ceil8(imw)
    assert STRIDE % steps == 0
    pred_stride = STRIDE // steps
    lh, lw = ch // STRIDE, cw // STRIDE
    ph, pw = lh * steps, lw * steps

    # the image with a zero margin of STRIDE // 2 on every side
    margin = STRIDE // 2
    padded = np.zeros((3, imh + STRIDE, imw + STRIDE), np.float32)
    padded[:, margin:margin + imh, margin:margin + imw] = data
    offsets = pred_stride // 2 + np.arange(steps) * pred_stride

    fine = np.zeros((net.classes, ph, pw), np.float32)
    for iy in range(steps):
        for ix in range(steps):
            canvas = np.zeros((1, 3, ch, cw), np.float32)
            oy, ox = offsets[iy], offsets[ix]
            canvas[0, :, :imh, :imw] = padded[:, oy:oy + imh, ox:ox + imw]
            p = net.probs(canvas)
            assert p.shape == (net.classes, lh, lw), p.shape
            if flip:
                pf = net.probs(np.ascontiguousarray(canvas[:, :, :, ::-1]))
                p = np.float32(0.5) * (p + pf[:, :, ::-1])
            fine[:, iy::steps, ix::steps] = p

    planes = []
    for c in range(net.classes):
        m = Image.fromarray(fine[c], mode="F")
        up = resize_classic(m, (pw * pred_stride, ph * pred_stride), Image.Resampling.BICUBIC)
        up = np.array(up, np.float32)[:imh, :imw]
        if (imh, imw) != (h0, w0):
            filt = adaptive_filter((imw, imh), (w0, h0))
            up = np.array(resize_classic(Image.fromarray(np.ascontiguousarray(up), mode="F"),
                                         (w0, h0), filt), np.float32)
        planes.append(up)
    probs = np.stack(planes).astype(np.float32)
    labels = probs.argmax(0).astype(np.uint8)
    info = dict(scaled=[imw, imh], canvas_size=[cw, ch], pred=[pw, ph], pred_stride=pred_stride,
                offsets=[int(o) - margin for o in offsets])
    return scaled, fine, probs, labels, info


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=OUT_DIR)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    net = Net(NET_DIR)
    manifest = {
        "network": "tests/fixtures/a1_s8_seg",
        "generator": "tools/seg_protocol_reference.py",
        "mxnet": mx.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "mxnet_subgraph_backend": mref.SUBGRAPH_BACKEND,
        "files": {
            "<name>_input.png": "source image, 8-bit RGB",
            "<name>_scaled.png": "the image after the test-scale resize (8-bit RGB); only "
                                 "when the size changed",
            "<name>_net.npy": "(C, pred_h, pred_w) float32: flip-averaged, interleaved "
                              "softmax probabilities at stride pred_stride (their net_preds)",
            "<name>_probs.npy": "(C, H, W) float32 probabilities at the original size",
            "<name>_labels.npy": "(H, W) uint8 argmax labels",
        },
        "cases": [],
    }
    for i, case in enumerate(CASES):
        w, h = case["src"]
        rgb = synthetic_rgb(w, h, seed=100 + i)
        runs0 = net.runs
        scaled, fine, probs, labels, info = run_protocol(
            net, rgb, case["scale"], case["canvas"], case["flip"], case["steps"])
        n = case["name"]
        Image.fromarray(rgb).save(os.path.join(a.out, n + "_input.png"))
        if scaled.shape != rgb.shape:
            Image.fromarray(scaled).save(os.path.join(a.out, n + "_scaled.png"))
        np.save(os.path.join(a.out, n + "_net.npy"), fine)
        np.save(os.path.join(a.out, n + "_probs.npy"), probs)
        np.save(os.path.join(a.out, n + "_labels.npy"), labels)
        entry = dict(case)
        entry["src"] = list(case["src"])
        entry.update(info)
        entry["net_runs"] = net.runs - runs0
        entry["label_histogram"] = np.bincount(labels.ravel(), minlength=net.classes).tolist()
        entry["prob_range"] = [float(probs.min()), float(probs.max())]
        manifest["cases"].append(entry)
        print("%s: src %dx%d scaled %s canvas %s pred %s stride %d offsets %s runs %d labels %s"
              % (n, w, h, info["scaled"], info["canvas_size"], info["pred"], info["pred_stride"],
                 info["offsets"], entry["net_runs"], entry["label_histogram"]))
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
