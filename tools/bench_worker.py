"""The worker side of r38-bench's interleaved timing (crates/r38-bench/src/worker.rs).

After building and warming up, a worker prints `READY`; then, for every `rep` line on its
stdin, it times one repetition and prints `REP {json}`; on `end` it writes its output and
prints its result line. Each engine thus keeps its own process (and peak RSS) while the
repetitions of all engines alternate.
"""

import json
import resource
import statistics
import sys
import time


def serve(run_once, finish):
    """run_once() -> dict of part name -> seconds (may be empty); finish(totals, parts)."""
    print("READY", flush=True)
    totals, parts = [], {}
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "rep":
            t0 = time.perf_counter()
            times = run_once()
            total = (time.perf_counter() - t0) * 1e3
            totals.append(total)
            for name, s in times.items():
                parts.setdefault(name, []).append(s * 1e3)
            print("REP " + json.dumps({"total_ms": total}), flush=True)
        elif cmd == "end":
            return finish(totals, parts)
        else:
            raise SystemExit("bench_worker: unexpected command %r" % cmd)
    raise SystemExit("bench_worker: stdin closed before `end`")


def result_line(tag, totals, parts, **extra):
    """The final line r38-bench reads: times, median, peak RSS (ru_maxrss) and `extra`."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "reps": len(totals),
        "times_ms": totals,
        "median_ms": statistics.median(totals) if totals else float("nan"),
        "peak_rss_mib": rss_kib / 1024.0,
        "levels": [{"name": k, "median_ms": statistics.median(v)} for k, v in parts.items()],
        **extra,
    }
    print(tag + " " + json.dumps(result), flush=True)
