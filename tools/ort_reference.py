#!/usr/bin/env python3
"""onnxruntime reference for `r38-bench --vs-ort`: the network tools/torch_reference.py
exported as ONNX (`model.onnx`, same weights), run by onnxruntime on the CPU.

Reads `model.onnx` and `input.npy` from `--dir`; one session with `--threads` intra-op
threads, one inter-op thread, sequential execution, every graph optimisation. Driven by
r38-bench through tools/bench_worker.py; on `end` it writes `out_ort.npy` and prints one line
`ORT-RESULT {json}` with the times and the process's peak RSS (ru_maxrss). It never imports
torch, so that its RSS is onnxruntime's own.

Usage: python tools/ort_reference.py --dir DIR [--warmup 1] [--threads 2]
"""

import argparse
import os

import numpy as np
import onnxruntime as ort

from bench_worker import serve, result_line


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        os.path.join(a.dir, "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )
    x = np.load(os.path.join(a.dir, "input.npy"))
    feed = {session.get_inputs()[0].name: x}
    for _ in range(a.warmup):
        session.run(None, feed)
    state = {}

    def once():
        state["y"] = session.run(None, feed)[0]
        return {}

    def finish(totals, parts):
        np.save(os.path.join(a.dir, "out_ort.npy"), state["y"])
        result_line(
            "ORT-RESULT",
            totals,
            parts,
            onnxruntime=ort.__version__,
            threads=a.threads,
            output_shape=list(state["y"].shape),
        )

    serve(once, finish)


if __name__ == "__main__":
    main()
