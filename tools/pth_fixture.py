#!/usr/bin/env python3
"""Write weights.pth for a case directory, with the PSA "resnet38d" key scheme.

Usage (torch venv, see tools/README.md):

    /work/venvs/torch/bin/python tools/pth_fixture.py CASE_DIR [--out FILE]

Reads CASE_DIR/weights.params (with tools/mxparams.py, no MXNet needed) and
saves a PyTorch state dict with torch.save's default (zip) serialisation:

    arg:conv1a_weight                 -> conv1a.weight
    arg:bn<U>_<br>_gamma / _beta      -> b<M>.bn_<br>.weight / .bias
    aux:bn<U>_<br>_moving_mean / _var -> b<M>.bn_<br>.running_mean / .running_var
                                         (+ b<M>.bn_<br>.num_batches_tracked, int64 0-d, 0)
    arg:res<U>_<br>_weight            -> b<M>.conv_<br>.weight   (br incl. branch1)
    bn7_*                             -> bn7.{weight,bias,running_mean,running_var,num_batches_tracked}
    linear*_*, conv6a_*               -> dropped (the port has no head)

where unit U = "<L>a" gives module M = "<L>" and U = "<L>b<i>" gives "<L>_<i>"
(res4b3 -> b4_3).  Tensors are float32, same values as the .params file.
"""
import argparse
import collections
import json
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxparams  # noqa: E402

BN_MAP = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
          "moving_var": "running_var"}
BN_ORDER = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
BRANCH_ORDER = ["bn_branch2a", "conv_branch2a", "bn_branch2b1", "conv_branch2b1",
                "bn_branch2b2", "conv_branch2b2", "conv_branch1"]
UNIT_RE = re.compile(r"^(\d+)(a|b(\d+))$")


def module_name(unit):
    m = UNIT_RE.match(unit)
    if not m:
        raise ValueError("bad unit id %r" % unit)
    level, _, idx = m.groups()
    return "b%s" % level if idx is None else "b%s_%s" % (level, idx)


def map_key(key):
    """MXNet 'arg:/aux:' key -> (module, submodule or None, param) or None to drop."""
    name = key.split(":", 1)[1]
    if name == "conv1a_weight":
        return ("conv1a", None, "weight")
    if name.startswith("linear") or name.startswith("conv6a"):
        return None
    if name.startswith("bn7_"):
        return ("bn7", None, BN_MAP[name[len("bn7_"):]])
    m = re.match(r"^(bn|res)(\d+[ab]\d*)_(branch\w+?)_(weight|gamma|beta|moving_mean|moving_var)$", name)
    if not m:
        raise ValueError("unmapped key %r" % key)
    kind, unit, branch, p = m.groups()
    mod = module_name(unit)
    if kind == "res":
        assert p == "weight", key
        return (mod, "conv_" + branch, "weight")
    return (mod, "bn_" + branch, BN_MAP[p])


def convert(items):
    groups = collections.OrderedDict()  # module -> {(sub, param): tensor}
    for key, arr in items:
        t = map_key(key)
        if t is None:
            continue
        mod, sub, p = t
        groups.setdefault(mod, {})[(sub, p)] = torch.from_numpy(np.array(arr, dtype=np.float32))
    # BN modules get num_batches_tracked like a current torch BatchNorm2d
    for mod, entries in groups.items():
        for sub in {s for (s, p) in entries if p == "running_mean"}:
            entries[(sub, "num_batches_tracked")] = torch.tensor(0, dtype=torch.int64)

    def sort_key(item):
        (sub, p), _ = item
        return (BRANCH_ORDER.index(sub) if sub else -1, BN_ORDER.index(p) if p in BN_ORDER else -1)

    state = collections.OrderedDict()
    for mod, entries in groups.items():
        for (sub, p), t in sorted(entries.items(), key=sort_key):
            state[".".join(x for x in (mod, sub, p) if x)] = t
    return state


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case_dir")
    ap.add_argument("--out", help="default CASE_DIR/weights.pth")
    a = ap.parse_args()
    items, _ = mxparams.load(os.path.join(a.case_dir, "weights.params"))
    state = convert(items)
    out = a.out or os.path.join(a.case_dir, "weights.pth")
    torch.save(state, out)
    back = torch.load(out, weights_only=True)
    assert list(back.keys()) == list(state.keys())
    for k in state:
        assert back[k].dtype == state[k].dtype and torch.equal(back[k], state[k]), k
    print("  weights.pth: %d tensors (torch %s)" % (len(state), torch.__version__))
    meta_path = os.path.join(a.case_dir, "meta.json")
    if a.out is None and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        meta["outputs"]["weights.pth"] = (
            "torch.save zip state dict (torch %s), PSA resnet38d keys "
            "(b<L>[_<i>].bn_<br>.*, .conv_<br>.weight, conv1a.weight, bn7.*, "
            "num_batches_tracked int64 0-d = 0); head tensors dropped; float32"
            % torch.__version__.split("+")[0])
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
