#!/usr/bin/env python3
"""PyTorch reference for `r38-bench --vs-torch`: the same ResNet-38 in PyTorch, same weights.

Our own code (not derived from any other port): pre-activation residual units
(BN -> ReLU -> conv per branch; projection shortcut from the first branch's pre-activation),
the authors' "same" padding, eval-mode BN, then bn7 + ReLU and either global-average-pool +
linear<C> or the segmentation head (conv6a + ReLU, linear<C>, 3x3 dilation 12, with bias).

The network is described by `net.json` (written by r38-bench from the built Rust modules),
the weights come from `weights.bin` + `weights.json` (f32 values back to back, and per
checkpoint name, e.g. res4b3_branch2a_weight, its offset and shape), the input
from `input.npy`. Driven by r38-bench through tools/bench_worker.py (one repetition per `rep`
line, interleaved with the other engines'); on `end` it writes `out_torch.npy` and prints one
line `TORCH-RESULT {json}` with the times and the process's peak RSS (ru_maxrss).

With `--train`, each repetition is one training step instead: forward, mean softmax
cross-entropy over the pixels of `labels.npy` other than 255, backward to every weight except
the BN statistics (frozen, eval-mode BN); `out_torch.npy` is then the gradient of
`conv1a_weight` and the result also carries the loss.

With `--export-onnx PATH` it only writes the network as ONNX (for tools/ort_reference.py).

Usage: python tools/torch_reference.py --dir DIR [--warmup 1] [--threads 2] [--train]
       [--export-onnx PATH]
"""

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench_worker import serve, result_line


def bn_relu(x, w, name, eps):
    return F.relu(
        F.batch_norm(
            x,
            w[name + "_moving_mean"],
            w[name + "_moving_var"],
            w[name + "_gamma"],
            w[name + "_beta"],
            training=False,
            eps=eps,
        )
    )


def conv(x, w, name, c, bias=False):
    return F.conv2d(
        x,
        w[name + "_weight"],
        w[name + "_bias"] if bias else None,
        stride=c.get("stride", 1),
        padding=c["padding"],
        dilation=c.get("dilation", 1),
    )


class Net(torch.nn.Module):
    def __init__(self, desc, weights):
        super().__init__()
        self.desc = desc
        self.w = weights
        self.eps = desc["bn_eps"]
        if any(level["pool"] for level in desc["levels"]):
            raise SystemExit("torch_reference.py: pooled variants (Model A/A2) are not supported")

    def unit(self, x, u):
        w, eps = self.w, self.eps
        t = x
        pre = None
        for i, c in enumerate(u["convs"]):
            a = bn_relu(t, w, "bn%s_%s" % (u["name"], c["branch"]), eps)
            if i == 0:
                pre = a
            t = conv(a, w, "res%s_%s" % (u["name"], c["branch"]), c)
        if u["projection"]:
            sc = {"stride": u["stride"], "padding": 0}
            return conv(pre, w, "res%s_branch1" % u["name"], sc) + t
        return x + t

    def forward(self, x, times=None):
        w = self.w
        t0 = time.perf_counter()
        x = conv(x, w, "conv1a", self.desc["stem"])
        if times is not None:
            times.append(("conv1a", time.perf_counter() - t0))
        for level in self.desc["levels"]:
            t0 = time.perf_counter()
            for u in level["units"]:
                x = self.unit(x, u)
            if times is not None:
                times.append(("level%d" % level["level"], time.perf_counter() - t0))
        t0 = time.perf_counter()
        x = bn_relu(x, w, "bn7", self.eps)
        head = self.desc["head"]
        if "Classifier" in head:
            classes = head["Classifier"]["classes"]
            name = "linear%d" % classes
            x = F.linear(x.mean(dim=(2, 3)), w[name + "_weight"], w[name + "_bias"])
        else:
            h = head["Segmentation"]
            spec = {"dilation": h["dilation"], "padding": ((h["kernel"] - 1) * h["dilation"] + 1) // 2}
            if h["hidden"] is not None:
                x = F.relu(conv(x, w, "conv6a", spec, bias=True))
            x = conv(x, w, "linear%d" % h["classes"], spec, bias=True)
        if times is not None:
            times.append(("head", time.perf_counter() - t0))
        return x


def load(a):
    """The network, its weights by name and the input from the files r38-bench wrote."""
    with open(os.path.join(a.dir, "net.json")) as f:
        desc = json.load(f)
    with open(os.path.join(a.dir, "weights.json")) as f:
        index = json.load(f)
    flat = np.fromfile(os.path.join(a.dir, "weights.bin"), dtype="<f4")
    weights = {}
    for name, e in index.items():
        n = int(np.prod(e["shape"])) if e["shape"] else 1
        weights[name] = torch.from_numpy(flat[e["offset"] : e["offset"] + n].reshape(e["shape"]))
    x = torch.from_numpy(np.load(os.path.join(a.dir, "input.npy")))
    return Net(desc, weights).eval(), weights, x


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--train", action="store_true")
    p.add_argument("--export-onnx", metavar="PATH")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(a.train)
    net, weights, x = load(a)
    if a.export_onnx:
        return export_onnx(net, x, a.export_onnx)
    if a.train:
        return train_steps(a, net, weights, x)

    with torch.inference_mode():
        for _ in range(a.warmup):
            net(x)
        state = {}

        def once():
            times = []
            state["y"] = net(x, times)
            return dict(times)

        def finish(totals, parts):
            report(a, totals, parts, state["y"])

        serve(once, finish)


def export_onnx(net, x, path):
    """The same network as ONNX (the TorchScript exporter: the dynamo one needs onnxscript),
    its weights as initializers, for tools/ort_reference.py."""
    with torch.no_grad():
        torch.onnx.export(
            net,
            (x,),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
        )


def report(a, totals, parts, out, **extra):
    """Writes `out` as out_torch.npy and prints the TORCH-RESULT line r38-bench reads."""
    np.save(os.path.join(a.dir, "out_torch.npy"), out.numpy())
    result_line(
        "TORCH-RESULT",
        totals,
        parts,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        output_shape=list(out.shape),
        **extra,
    )


def train_steps(a, net, weights, x):
    labels = torch.from_numpy(np.load(os.path.join(a.dir, "labels.npy")).astype(np.int64))
    params = [t.requires_grad_(True) for n, t in weights.items() if "_moving_" not in n]
    state = {}

    def step():
        for t in params:
            t.grad = None
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), labels, ignore_index=255)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        state["loss"] = loss.item()
        return {"forward + loss": t1 - t0, "backward": t2 - t1}

    for _ in range(a.warmup):
        step()

    def finish(totals, parts):
        report(a, totals, parts, weights["conv1a_weight"].grad, loss=state["loss"])

    serve(step, finish)


if __name__ == "__main__":
    main()
