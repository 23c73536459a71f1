#!/usr/bin/env python3
"""Generate the Pillow reference fixtures used by the tests of `crates/r38-data`.

Usage (from the repository root):

    /work/venvs/mx/bin/python tools/pillow_fixtures.py            # writes tests/fixtures/pillow/
    /work/venvs/mx/bin/python tools/pillow_fixtures.py --sweep DIR --cases 400
        # many random resize cases (not committed) for the ignored test
        # `R38_PILLOW_SWEEP=DIR cargo test -p r38-data --test pillow_sweep -- --ignored`

Needs Pillow and numpy. Everything is deterministic (fixed seeds, integer formulas), so running
the script again with the same Pillow reproduces the same files.

Pass order. Pillow <= 12 always runs the horizontal pass of a two-axis resize first and the
vertical pass second, rounding to 8 bits in between; that is what the authors of ResNet-38 ran
(2016-2017) and what `r38_data::resample` reproduces. Pillow 13 (python-pillow/Pillow#9549)
runs the vertical pass first when the height shrinks much more than the width, which changes a
few 8-bit values. The reference is therefore computed as two single-axis Pillow resizes
(`resize((dst_w, src_h))` then `resize((dst_w, dst_h))`), which is the classic order in every
Pillow version; with Pillow <= 12 the script also checks that a single `resize` call gives the
same bytes. The manifest records the Pillow version and how many cases a single call of this
Pillow would change. (Checked: Pillow 12.3.0 and 13.0.0 write byte-identical fixture files, and a
1000-case `--sweep` under Pillow 12.3.0 passes with single `resize` calls.)

The authors' test protocol (util/transformer.py `Scale`, `CenterCrop`, `ColorScale`,
`ColorNormalize`; iclass/ilsvrc.py) is re-expressed below with PIL + numpy for the
`classify` fixtures; it is a re-statement of the published procedure, not their code.
"""

import argparse
import os
import struct
import sys
import zlib

import numpy as np
import PIL
from PIL import Image

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
MEAN = np.array([0.485, 0.456, 0.406]).reshape((1, 1, 3))
STD = np.array([0.229, 0.224, 0.225]).reshape((1, 1, 3))
PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def resize_classic(im, size, filt):
    """Pillow resize with the classic pass order (horizontal, then vertical)."""
    w, h = im.size
    dw, dh = size
    if filt == Image.Resampling.NEAREST or dw == w or dh == h:
        return im.resize(size, filt)
    return im.resize((dw, h), filt).resize((dw, dh), filt)


class Counter:
    single_call_differs = 0
    cases = 0


def checked_resize(im, size, filt):
    out = resize_classic(im, size, filt)
    single = im.resize(size, filt)
    Counter.cases += 1
    same = np.array_equal(np.array(out), np.array(single))
    if not same:
        Counter.single_call_differs += 1
        if PILLOW_MAJOR <= 12:
            raise AssertionError(f"Pillow {PIL.__version__}: two-pass emulation differs for {im.size}->{size}")
    return out


def adaptive_filter(src, dst):
    """The authors' get_interp_method with choose_interpolation_method enabled."""
    (sw, sh), (dw, dh) = src, dst
    if dw < sw and dh < sh:
        return Image.Resampling.LANCZOS  # Image.ANTIALIAS
    if dw > sw and dh > sh:
        return Image.Resampling.BICUBIC
    return Image.Resampling.BILINEAR


def procedural_rgb(w, h):
    """Integer test pattern, reproduced bit for bit by the Rust tests."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    out = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        out[:, :, c] = (x * x * 3 + y * 7 + c * 85 + (x * y) // 3 + ((x ^ y) & 15) * 4) % 256
    return out


def procedural_f32(w, h):
    """Float map in [0, 1], reproduced bit for bit by the Rust tests."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    v = (x * 37 + y * 91 + ((x * y) % 13) * 7) % 256
    return v.astype(np.float32) / np.float32(255.0)


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def classify_reference(im, scale, crop, adaptive):
    """Shorter side -> scale, centre crop, /255, mean/std; returns (u8 crop, (1,3,crop,crop) f32)."""
    w, h = im.size
    if min(w, h) != scale:
        if w <= h:  # the authors test `min(h, w) == w`
            nw, nh = scale, int(np.round(1.0 * scale * h / w))
        else:
            nw, nh = int(np.round(1.0 * scale * w / h)), scale
        filt = adaptive_filter((w, h), (nw, nh)) if adaptive else Image.Resampling.BICUBIC
        im = checked_resize(im, (nw, nh), filt)
    a = np.array(im, np.uint8)
    hh, ww = a.shape[:2]
    y0 = int(np.ceil((hh - crop) / 2.0))
    x0 = int(np.ceil((ww - crop) / 2.0))
    a = a[y0:y0 + crop, x0:x0 + crop]
    d = a.astype(np.single) * np.single(1.0 / 255)
    d = d.astype(np.float64)
    d -= MEAN
    d /= STD
    return a, np.ascontiguousarray(d.transpose(2, 0, 1)[np.newaxis].astype(np.float32))


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_raw_png(path, width, height, bit_depth, color_type, rows):
    """Minimal PNG writer for sample layouts Pillow cannot write (16-bit colour, 2-bit grey)."""
    raw = b"".join(b"\x00" + r for r in rows)
    data = b"\x89PNG\r\n\x1a\n"
    data += png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    data += png_chunk(b"IDAT", zlib.compress(raw, 9))
    data += png_chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------------------------
# committed fixtures
# --------------------------------------------------------------------------------------------
def make_fixtures(out):
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if name.endswith((".png", ".npy", ".jpg", ".tsv")):
            os.remove(os.path.join(out, name))
    rng = np.random.default_rng(20161130)
    lines = []

    # 23x17 RGB gradient + noise, 19x13 grey
    y, x = np.mgrid[0:17, 0:23]
    rgb = np.stack([x * 11, y * 15, (x + y) * 6], axis=2) + rng.integers(-40, 41, (17, 23, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    rgb[5:9, 7:12] = [250, 10, 30]  # a hard-edged block: ringing and clamping at both ends
    rgb[12:, 15:] = 0
    Image.fromarray(rgb, "RGB").save(os.path.join(out, "src_rgb.png"))
    grey = np.clip(np.mgrid[0:13, 0:19][1] * 13 + rng.integers(-30, 31, (13, 19)), 0, 255).astype(np.uint8)
    grey[3:6, 4:9] = 255
    Image.fromarray(grey, "L").save(os.path.join(out, "src_l.png"))

    rgb_sizes = [(41, 29), (11, 8), (31, 9), (7, 30), (23, 40), (46, 34), (16, 17), (1, 1)]
    for fname, filt in FILTERS.items():
        for dw, dh in rgb_sizes:
            im = checked_resize(Image.open(os.path.join(out, "src_rgb.png")), (dw, dh), filt)
            name = f"rgb_{fname}_{dw}x{dh}.png"
            im.save(os.path.join(out, name))
            lines.append(f"resize\tsrc_rgb.png\t{fname}\t{dw}\t{dh}\t{name}")
        for dw, dh in [(37, 21), (8, 6), (5, 27)]:
            im = checked_resize(Image.open(os.path.join(out, "src_l.png")), (dw, dh), filt)
            name = f"l_{fname}_{dw}x{dh}.png"
            im.save(os.path.join(out, name))
            lines.append(f"resize\tsrc_l.png\t{fname}\t{dw}\t{dh}\t{name}")

    # 40x31 float map in 0..1 (smooth "probability" plus noise), mode F
    y, x = np.mgrid[0:31, 0:40]
    fmap = 0.5 + 0.4 * np.sin(x / 4.0) * np.cos(y / 5.0) + rng.uniform(-0.1, 0.1, (31, 40))
    fmap = np.clip(fmap, 0, 1).astype(np.float32)
    fmap[10:14, 20:26] = 1.0
    fmap[20:, :6] = 0.0
    np.save(os.path.join(out, "src_f.npy"), fmap)
    for fname, filt in FILTERS.items():
        for dw, dh in [(61, 47), (17, 12), (55, 20)]:
            res = np.array(checked_resize(Image.fromarray(fmap, "F"), (dw, dh), filt), np.float32)
            name = f"f_{fname}_{dw}x{dh}.npy"
            np.save(os.path.join(out, name), res)
            lines.append(f"resize\tsrc_f.npy\t{fname}\t{dw}\t{dh}\t{name}")
    # the segmentation use: a 12x9 probability map upsampled by the stride 8, bicubic
    small = np.ascontiguousarray(fmap[::3, ::4][:9, :12])
    np.save(os.path.join(out, "src_f_small.npy"), small)
    res = np.array(checked_resize(Image.fromarray(small, "F"), (96, 72), Image.Resampling.BICUBIC), np.float32)
    np.save(os.path.join(out, "f_bicubic_96x72.npy"), res)
    lines.append("resize\tsrc_f_small.npy\tbicubic\t96\t72\tf_bicubic_96x72.npy")

    # procedural full-size cases: hashes of Pillow's bytes
    for (sw, sh), (dw, dh), fname in [
        ((500, 375), (427, 320), "bicubic"),
        ((500, 375), (427, 320), "lanczos"),
        ((375, 500), (320, 427), "lanczos"),
        ((333, 250), (504, 378), "bicubic"),
        ((500, 375), (504, 381), "bilinear"),
        ((640, 480), (213, 160), "nearest"),
    ]:
        im = checked_resize(Image.fromarray(procedural_rgb(sw, sh), "RGB"), (dw, dh), FILTERS[fname])
        lines.append(f"proc_resize\t{sw}\t{sh}\t{fname}\t{dw}\t{dh}\t{fnv1a64(np.array(im).tobytes())}")
    # probability-map upsampling at segmentation size: 63x63 -> 504x504 bicubic, every 7th pixel
    pm = procedural_f32(63, 63)
    res = np.array(checked_resize(Image.fromarray(pm, "F"), (504, 504), Image.Resampling.BICUBIC), np.float32)
    np.save(os.path.join(out, "proc_f_bicubic_504x504_s7.npy"), np.ascontiguousarray(res[::7, ::7]))
    lines.append("proc_resize_f32\t63\t63\tbicubic\t504\t504\t7\tproc_f_bicubic_504x504_s7.npy")

    # the authors' ImageNet test transform
    cls = np.clip(
        np.stack([x[:29, :37] * 7, y[:29, :37] * 9, 255 - x[:29, :37] * 5], axis=2)
        + rng.integers(-25, 26, (29, 37, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(cls, "RGB").save(os.path.join(out, "classify_src.png"))
    for scale, crop, adaptive in [(24, 20, False), (24, 20, True), (40, 36, False), (40, 36, True), (29, 29, False)]:
        _, t = classify_reference(Image.open(os.path.join(out, "classify_src.png")).convert("RGB"), scale, crop, adaptive)
        interp = "adaptive" if adaptive else "bicubic"
        name = f"classify_{scale}_{crop}_{interp}.npy"
        np.save(os.path.join(out, name), t)
        lines.append(f"classify\tclassify_src.png\t{scale}\t{crop}\t{interp}\t{name}")
    for (sw, sh), interp in [((500, 375), "bicubic"), ((375, 500), "bicubic"), ((500, 375), "adaptive"),
                             ((213, 160), "adaptive"), ((320, 320), "bicubic")]:
        a, t = classify_reference(Image.fromarray(procedural_rgb(sw, sh), "RGB"), 320, 320, interp == "adaptive")
        lines.append(f"proc_classify\t{sw}\t{sh}\t320\t320\t{interp}\t{fnv1a64(a.tobytes())}\t{fnv1a64(t.tobytes())}")

    # decoding: what PIL's Image.open(path).convert('RGB') gives
    dec = []
    base = procedural_rgb(7, 5)
    Image.fromarray(np.dstack([base, (np.arange(35).reshape(5, 7) * 7).astype(np.uint8)]), "RGBA").save(
        os.path.join(out, "dec_rgba.png"))
    Image.fromarray(np.dstack([base[:, :, 0], base[:, :, 1]]), "LA").save(os.path.join(out, "dec_la.png"))
    pal = Image.fromarray(base, "RGB").quantize(colors=6)
    pal.save(os.path.join(out, "dec_palette.png"), transparency=2)
    Image.fromarray(base[:, :, 0] > 128).save(os.path.join(out, "dec_bilevel.png"))
    Image.fromarray(base[:, :, 1], "L").save(os.path.join(out, "dec_grey.png"))
    g16 = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1871) ^ 0x00F0
    g16[0, :4] = [0, 100, 255, 256]
    Image.fromarray(g16).save(os.path.join(out, "dec_grey16.png"))  # mode I;16
    v16 = procedural_rgb(7, 5).astype(np.uint16) * 257 + (np.arange(35 * 3, dtype=np.uint16).reshape(5, 7, 3) % 251)
    write_raw_png(os.path.join(out, "dec_rgb16.png"), 7, 5, 16, 2, [r.astype(">u2").tobytes() for r in v16])
    rgba16 = np.dstack([v16, v16[:, :, :1]])
    write_raw_png(os.path.join(out, "dec_rgba16.png"), 7, 5, 16, 6, [r.astype(">u2").tobytes() for r in rgba16])
    la16 = np.dstack([v16[:, :, 1], v16[:, :, 2]])
    write_raw_png(os.path.join(out, "dec_la16.png"), 7, 5, 16, 4, [r.astype(">u2").tobytes() for r in la16])
    g2 = (np.arange(35).reshape(5, 7) % 4).astype(np.uint8)
    g2rows = []
    for r in np.pad(g2, ((0, 0), (0, 1))):
        g2rows.append(bytes((r[i] << 6) | (r[i + 1] << 4) | (r[i + 2] << 2) | r[i + 3] for i in (0, 4)))
    write_raw_png(os.path.join(out, "dec_grey2.png"), 7, 5, 2, 0, g2rows)
    photo = procedural_rgb(64, 48)
    photo = np.clip(photo.astype(np.int64) // 2 + 60, 0, 255).astype(np.uint8)
    Image.fromarray(photo, "RGB").save(os.path.join(out, "dec_rgb.jpg"), quality=90)
    Image.fromarray(photo, "RGB").save(os.path.join(out, "dec_rgb444.jpg"), quality=95, subsampling=0)
    Image.fromarray(photo[:, :, 0], "L").save(os.path.join(out, "dec_grey.jpg"), quality=90)
    Image.fromarray(photo, "RGB").convert("CMYK").save(os.path.join(out, "dec_cmyk.jpg"), quality=95)
    for name, tol in [("dec_rgba.png", 0), ("dec_la.png", 0), ("dec_palette.png", 0), ("dec_bilevel.png", 0),
                      ("dec_grey.png", 0), ("dec_grey16.png", 0), ("dec_rgb16.png", 0), ("dec_rgba16.png", 0),
                      ("dec_la16.png", 0), ("dec_grey2.png", 0), ("dec_rgb.jpg", -1), ("dec_rgb444.jpg", -1),
                      ("dec_grey.jpg", -1), ("dec_cmyk.jpg", -1)]:
        src = Image.open(os.path.join(out, name))
        exp = name.replace(".", "_") + "_pil_rgb.png"
        # via numpy, so that no transparency key is carried into the expected PNG
        Image.fromarray(np.array(src.convert("RGB"), np.uint8), "RGB").save(os.path.join(out, exp))
        dec.append(f"decode\t{name}\t{src.mode}\t{exp}\t{tol}")
    lines += dec

    header = [
        f"# Generated by tools/pillow_fixtures.py with Pillow {PIL.__version__} and numpy {np.__version__}.",
        "# Reference resizes use the classic pass order (horizontal then vertical, as Pillow <= 12).",
        f"# A single resize call of this Pillow gives different bytes in {Counter.single_call_differs} of "
        f"{Counter.cases} cases.",
        "# decode rows: source, PIL mode, expected PIL convert('RGB') output, tolerance (-1: report only).",
        f"meta\tpillow\t{PIL.__version__}",
        f"meta\tnumpy\t{np.__version__}",
    ]
    with open(os.path.join(out, "manifest.tsv"), "w") as f:
        f.write("\n".join(header + lines) + "\n")
    total = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
    print(f"wrote {len(lines)} fixtures, {total} bytes, into {out}; Pillow {PIL.__version__}; "
          f"single-call differs {Counter.single_call_differs}/{Counter.cases}")


# --------------------------------------------------------------------------------------------
# random sweep (not committed)
# --------------------------------------------------------------------------------------------
def make_sweep(out, cases, seed):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = [f"meta\tpillow\t{PIL.__version__}"]
    for i in range(cases):
        w, h = (int(v) for v in rng.integers(1, 70, 2))
        dw, dh = (int(v) for v in rng.integers(1, 140, 2))
        fname = list(FILTERS)[i % 4]
        ch = [1, 3][int(rng.integers(2))]
        a = rng.integers(0, 256, (h, w, ch), dtype=np.uint8)
        if i % 3 == 0:  # smoother content, closer to photos
            a = np.clip(np.cumsum(rng.integers(-9, 10, (h, w, ch)), axis=1) + 128, 0, 255).astype(np.uint8)
        im = Image.fromarray(a[:, :, 0] if ch == 1 else a, "L" if ch == 1 else "RGB")
        res = np.array(checked_resize(im, (dw, dh), FILTERS[fname]), np.uint8).reshape(dh, dw, ch)
        np.save(os.path.join(out, f"u8_{i}_src.npy"), a)
        np.save(os.path.join(out, f"u8_{i}_dst.npy"), res)
        lines.append(f"u8\t{i}\t{fname}\t{w}\t{h}\t{ch}\t{dw}\t{dh}")
        f = rng.random((h, w)).astype(np.float32)
        res = np.array(checked_resize(Image.fromarray(f, "F"), (dw, dh), FILTERS[fname]), np.float32)
        np.save(os.path.join(out, f"f32_{i}_src.npy"), f)
        np.save(os.path.join(out, f"f32_{i}_dst.npy"), res)
        lines.append(f"f32\t{i}\t{fname}\t{w}\t{h}\t1\t{dw}\t{dh}")
    with open(os.path.join(out, "sweep.tsv"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {cases} u8 + {cases} f32 cases into {out}; single-call differs "
          f"{Counter.single_call_differs}/{Counter.cases}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "pillow"))
    ap.add_argument("--sweep", help="write a random sweep into this directory instead")
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.sweep:
        make_sweep(args.sweep, args.cases, args.seed)
    else:
        make_fixtures(args.out)


if __name__ == "__main__":
    sys.exit(main())
