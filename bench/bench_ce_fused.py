"""Softmax cross-entropy: the fused forward+backward kernel against the separate forward and backward.

    python bench/bench_ce_fused.py                  # float32, shapes (1, 10) (64, 10) (256, 10) (256, 1000)
    python bench/bench_ce_fused.py --rounds 9 --dtype float64

One process, compiled kernels only, mean reduction, incoming gradient 1. Per shape four ways to get
(loss, lse, dx):
  separate      cross_entropy_forward, then cross_entropy_backward (dx allocated)
  separate out  the same, dx into a preallocated buffer (how a captured step calls them today)
  fused         cross_entropy_fused (results allocated)
  fused out     cross_entropy_fused with out=(loss, lse, dx) buffers (what a replayed step can do)
Each round times every configuration in an order that rotates from round to round (per configuration the
median of many batched calls); the table gives the median over rounds and the range (min-max of the
per-round medians). Nothing here sets an environment variable or a thread count. Results:
bench/results/ce_fused.json."""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import report  # noqa: E402

import numpy as np  # noqa: E402

import fastbp  # noqa: E402
from fastbp import _backend  # noqa: E402

C = _backend.compiled
SHAPES = [(1, 10), (64, 10), (256, 10), (256, 1000)]


def _median_us(fn, min_time=0.05, samples=15):
    """Median over `samples` batches of the time per call in microseconds (a batch lasts ~min_time/samples)."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    k = max(1, int(min_time / samples / one))
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        times.append((time.perf_counter() - t0) / k * 1e6)
    return statistics.median(times)


def _configs(x, y):
    n, c = x.shape
    dx_buf = np.empty_like(x)
    outs = (np.empty((), x.dtype), np.empty(n, x.dtype), np.empty_like(x))

    def separate():
        loss, lse = C.cross_entropy_forward(x, y)
        return loss, lse, C.cross_entropy_backward(1.0, x, y, lse)

    def separate_out():
        loss, lse = C.cross_entropy_forward(x, y)
        return loss, lse, C.cross_entropy_backward(1.0, x, y, lse, out=dx_buf)

    return {"separate": separate, "separate out": separate_out,
            "fused": lambda: C.cross_entropy_fused(x, y),
            "fused out": lambda: C.cross_entropy_fused(x, y, out=outs)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    cases = []
    for n, c in SHAPES:
        x = rng.standard_normal((n, c)).astype(args.dtype)
        y = rng.integers(0, c, n)
        cfg = _configs(x, y)
        ref = cfg["separate"]()
        for name, fn in cfg.items():  # every configuration gives the same bits
            assert all(a.tobytes() == b.tobytes() for a, b in zip(fn(), ref)), name
        cases.append(((n, c), cfg))
    names = list(cases[0][1])
    per_round = {(shape, name): [] for shape, cfg in cases for name in cfg}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for shape, cfg in cases:
            for name in order:
                per_round[(shape, name)].append(_median_us(cfg[name]))
    rows = []
    for shape, cfg in cases:
        med = {name: statistics.median(per_round[(shape, name)]) for name in names}
        for name in names:
            t = per_round[(shape, name)]
            rows.append({"shape": f"{shape[0]}x{shape[1]}", "config": name, "median_us": med[name],
                         "min_us": min(t), "max_us": max(t),
                         "vs_separate_out": med[name] / med["separate out"]})
    print(f"cross-entropy (mean) forward+backward, {args.dtype}, {args.rounds} rounds, "
          f"fastbp threads {fastbp.get_num_threads()}, load average {os.getloadavg()}")
    report("ce_fused", rows, ["shape", "config", "median_us", "min_us", "max_us", "vs_separate_out"])


if __name__ == "__main__":
    main()
