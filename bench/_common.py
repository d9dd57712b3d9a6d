"""Shared benchmark plumbing: thread setup, timing, PyTorch detection, table and JSON output.

Benchmarks are never run by the test suite. Each script measures fastbp compiled, fastbp reference and
(when installed) PyTorch's CPU build in the same run and reports medians and ratios."""
import json
import os
import platform
import statistics
import sys
import time

# Allocator: every workload allocates its outputs and temporaries (MBs each) anew per call. With glibc's
# defaults, whether such a block comes back from the heap or is mapped afresh (a page fault per 4 KiB) depends
# on what ran before: PyTorch's conv forward at the benchmark shape took 2528 page faults per call in one
# process and none in another, 1.3 vs 3.5 ms. So the harness runs with glibc's thresholds fixed (read at
# process start: the script re-executes itself with them set): blocks up to 1 GiB come from the heap and
# freed memory is kept, the steady state of a training loop (a LeNet-5 loop measured 0 page faults per step
# with the defaults too). It applies to every framework in the process. FASTBP_BENCH_SYSTEM_MALLOC=1 keeps
# glibc's defaults.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
                 "MALLOC_TOP_PAD_": str(64 << 20)}
if (sys.platform.startswith("linux") and os.environ.get("FASTBP_BENCH_SYSTEM_MALLOC") != "1"
        and any(os.environ.get(k) != v for k, v in STEADY_MALLOC.items())):
    os.environ.update(STEADY_MALLOC)
    os.execv(sys.executable, [sys.executable] + sys.argv)
ALLOCATOR = ("glibc, blocks <= 1 GiB from the heap, freed memory kept (" +
             ", ".join(f"{k}={os.environ[k]}" for k in STEADY_MALLOC) + ")"
             if all(os.environ.get(k) == v for k, v in STEADY_MALLOC.items()) else "system default")

THREADS = int(os.environ.get("FASTBP_BENCH_THREADS", "2"))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
# Before NumPy loads its own OpenBLAS: the reference backend's matrix products would otherwise leave NumPy's
# BLAS workers spinning for a while after each round, slowing whichever framework runs next (fastbp sets
# this for scipy's OpenBLAS itself, but NumPy is already loaded when fastbp is imported).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import fastbp  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def setup_threads(n=THREADS):
    fastbp.set_num_threads(n)
    torch = import_torch()
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
    """Median wall time of fn() in milliseconds over `repeat` timed calls (at least `min_time` s)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) > 20 * repeat:
            break
    return statistics.median(times)


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
