"""Shared benchmark plumbing: thread setup, timing, PyTorch detection, table and JSON output.

Benchmarks are never run by the test suite. Each script here measures fastbp compiled, fastbp reference and
(when installed) PyTorch's CPU build in the same process and reports medians and ratios -- a secondary view:
the headline figures come from bench/bench_separate.py (each framework alone in its own process)."""
import json
import os
import platform
import statistics
import sys

# Default environment: the harness sets no environment variable (allocator thresholds, OpenMP wait policy,
# OpenBLAS thread timeout, thread counts) -- users run with the defaults, and so do the figures. These
# in-process rounds are the secondary view; bench/bench_separate.py runs each framework alone in its own
# process (the headline figures). FASTBP_BENCH_THREADS only sets the thread counts through the frameworks'
# own APIs (fastbp.set_num_threads, torch.set_num_threads) when given.
ALLOCATOR = "system default"
THREADS = int(os.environ.get("FASTBP_BENCH_THREADS", os.cpu_count() or 1))

import numpy as np  # noqa: E402

import fastbp  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def setup_threads(n=None):
    """Thread counts through the frameworks' APIs, only if FASTBP_BENCH_THREADS asks for one."""
    torch = import_torch()
    if n is None and "FASTBP_BENCH_THREADS" not in os.environ:
        return torch
    n = n or THREADS
    fastbp.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    return torch


def import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def time_fn(fn, repeat=30, warmup=5, min_time=0.2):
    """Median wall time of fn() in milliseconds over `repeat` timed calls (at least `min_time` s): the
    median of workloads.time_fn's per-call times (bench/workloads.py, the separate-process harness)."""
    from workloads import time_fn as wall_times
    return statistics.median(wall_times(fn, repeat=repeat, warmup=warmup, min_time=min_time))


def machine_info():
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "threads": THREADS,
            "numpy": np.__version__, "fastbp": fastbp.__version__, "allocator": ALLOCATOR}
    torch = import_torch()
    if torch is not None:
        info["torch"] = torch.__version__
    return info


def report(name, rows, columns, targets=None):
    """Print a table of rows (dicts) and write bench/results/<name>.json.

    `targets` maps a row key to the maximum allowed fastbp/torch ratio; it is printed next to the ratio
    (met / MISSED) but never asserted."""
    targets = targets or {}
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"benchmark": name, "machine": machine_info(), "rows": rows, "targets": targets}, f, indent=2)
    print(f"\nallocator: {ALLOCATOR}\nwrote {path}")
    return path


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)
