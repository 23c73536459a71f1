#!/usr/bin/env python3
"""One-time check: tools/mxnet_reference.py's network vs the authors' own symbol code.

The authors' code (itijyou/ademxapp, util/symbol/*.py, Python 2) is NOT part of
this repository.  Convert a private copy to Python 3 outside the repo and pass
its directory:

    mkdir -p /tmp/ademx/ademx_sym && cd /tmp/ademx/ademx_sym
    for f in __init__ symbol resnet_v1 resnet_v2 layer; do
        git -C <ademxapp git dir> show HEAD:util/symbol/$f.py > $f.py; done
    python3.11 -m lib2to3 -w -n .
    /work/venvs/mx/bin/python tools/check_against_authors.py /tmp/ademx/ademx_sym

For each model it builds the authors' symbol and ours at FULL width, checks that
the parameter (arg + aux) name sets and shapes are identical, fills the same
seeded random weights into both, runs the same input and compares, bit for bit
(np.array_equal), the pre-softmax scores (the authors' internal output
`linear<C>_output`, i.e. the input of their SoftmaxOutput) and every other
internal output both graphs share by name (ReLUs, BNs, convs, pools, FC; the
auto-named `_plusN` sums are checked through their consumers).

By default MXNet runs unfused operators (MXNET_SUBGRAPH_BACKEND=NONE, as
tools/mxnet_reference.py sets it).  --fused uses this build's default MKLDNN
subgraph backend instead and compares only the scores (each bound alone: with
that backend, binding several internal outputs at once is unreliable).
"""
import argparse
import importlib
import os
import sys
import time

import numpy as np

if "--fused" in sys.argv:
    # MXNet's default on this build: the MKLDNN subgraph (fusion) backend
    os.environ["MXNET_SUBGRAPH_BACKEND"] = "MKLDNN"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxnet_reference as ref  # noqa: E402


def import_authors(path):
    path = os.path.abspath(path)
    parent, pkg = os.path.dirname(path), os.path.basename(path)
    sys.path.insert(0, parent)
    sym_mod = importlib.import_module(pkg + ".symbol")
    rv2 = importlib.import_module(pkg + ".resnet_v2")
    return sym_mod, rv2


def _quiet(fn, *a, **k):
    # the authors' builders print shapes while building; keep the log short
    devnull = open(os.devnull, "w")
    old = sys.stdout
    sys.stdout = devnull
    try:
        return fn(*a, **k)
    finally:
        sys.stdout = old
        devnull.close()


def shapes(sym, input_shape):
    arg_shapes, _, aux_shapes = sym.infer_shape(data=tuple(input_shape))
    args = {n: tuple(s) for n, s in zip(sym.list_arguments(), arg_shapes)
            if n not in ("data", "softmax_label")}
    aux = {n: tuple(s) for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    return args, aux


def internal_names(sym):
    return [n for n in sym.get_internals().list_outputs() if n.endswith("_output")]


def check_model(label, theirs_full, score_name, ours, input_shape, seed, all_internals):
    t0 = time.time()
    theirs = theirs_full.get_internals()[score_name]
    ta, tx = shapes(theirs, input_shape)
    oa, ox = shapes(ours, input_shape)
    names_equal = set(ta) == set(oa) and set(tx) == set(ox)
    shapes_equal = names_equal and ta == oa and tx == ox
    res = {"model": label, "input": list(input_shape), "param_names_equal": names_equal,
           "param_shapes_equal": shapes_equal, "n_arg": len(oa), "n_aux": len(ox)}
    if not names_equal:
        res["only_theirs"] = sorted((set(ta) | set(tx)) - (set(oa) | set(ox)))
        res["only_ours"] = sorted((set(oa) | set(ox)) - (set(ta) | set(tx)))
        return res
    args, aux = ref.gen_params(ours, input_shape, seed)
    x = ref.gen_input(input_shape, seed)

    if all_internals:
        common = sorted(set(internal_names(theirs)) & set(internal_names(ours)))
        common = [n for n in common if n != score_name] + [score_name]
    else:
        common = [score_name]
    ti = theirs.get_internals()
    oi = ours.get_internals()
    t_out = ref.forward([ti[n] for n in common], args, aux, x)
    o_out = ref.forward([oi[n] for n in common], args, aux, x)
    mismatched = []
    for n, a, b in zip(common, t_out, o_out):
        if a.shape != b.shape or not np.array_equal(a, b):
            mismatched.append(n)
    a, b = t_out[-1], o_out[-1]
    res.update({
        "score": score_name,
        "score_shape": list(a.shape),
        "equal": a.shape == b.shape and bool(np.array_equal(a, b)),
        "max_abs_diff": float(np.abs(a - b).max()) if a.shape == b.shape else None,
        "score_absmax": float(np.abs(a).max()),
        "internals_compared": len(common),
        "internals_mismatched": mismatched,
        "seconds": round(time.time() - t0, 1),
    })
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("authors_dir", help="directory of the converted authors' util/symbol package")
    ap.add_argument("--size", type=int, default=64, help="square input size for all models")
    ap.add_argument("--a1-224", action="store_true", help="also A1 classifier at 1x3x224x224")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--fused", action="store_true",
                    help="MKLDNN subgraph backend (MXNet's default), scores only")
    ap.add_argument("--only", help="comma list of a1,fcrna_a1,a_same,a_caffe,a_s16 (models at --size)")
    a = ap.parse_args()

    sym_mod, rv2 = import_authors(a.authors_dir)
    sym_mod.cfg.clear()
    sym_mod.cfg["bn_use_global_stats"] = True  # inference, like ours
    s = (1, 3, a.size, a.size)
    only = set(a.only.split(",")) if a.only else None

    def run(key, label, build_theirs, score, ours_cfg, head, classes, seg_hidden, shape,
            pool_style=None, all_internals=True):
        if only and key is not None and key not in only:
            return
        if pool_style:
            sym_mod.cfg["pool_top_infer_style"] = pool_style
        else:
            sym_mod.cfg.pop("pool_top_infer_style", None)
        theirs = _quiet(build_theirs)
        ours, _, _ = ref.build_network(ours_cfg, head, classes, seg_hidden)
        r = check_model(label, theirs, score, ours, shape, a.seed, all_internals and not a.fused)
        r["subgraph_backend"] = ref.SUBGRAPH_BACKEND
        print(r, flush=True)

    p = ref.preset_config
    run("a1", "rna_model_a1(1000)", lambda: rv2.rna_model_a1(1000), "linear1000_output",
        p("a1", 32), "cls", 1000, None, s)
    run("fcrna_a1", "fcrna_model_a1(21) [s8, 2-conv head, no bootstrapping]",
        lambda: rv2.fcrna_model_a1(21), "linear21_output",
        p("a1", 8, dropout={6: 0.3, 7: 0.5}), "seg", 21, 512, s)
    run("a_same", "rna_model_a(1000) [default pool pad 1]", lambda: rv2.rna_model_a(1000),
        "linear1000_output", p("a", 32, pool_padding="same"), "cls", 1000, None, s)
    run("a_caffe", "rna_model_a(1000) [pool_top_infer_style=caffe]",
        lambda: rv2.rna_model_a(1000), "linear1000_output",
        p("a", 32, pool_padding="caffe"), "cls", 1000, None, s, pool_style="caffe")
    run("a_s16", "rna_feat_a(16) + rn_top [Model A s16]",
        lambda: rv2.rn_top(rv2.rna_feat_a(16), "linear1000", 1000), "linear1000_output",
        p("a", 16), "cls", 1000, None, s)
    if a.a1_224:
        sym_mod.cfg.pop("pool_top_infer_style", None)
        run(None, "rna_model_a1(1000) @224", lambda: rv2.rna_model_a1(1000),
            "linear1000_output", p("a1", 32), "cls", 1000, None, (1, 3, 224, 224),
            all_internals=True)


if __name__ == "__main__":
    main()
