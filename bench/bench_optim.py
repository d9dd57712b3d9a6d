"""One optimizer step over 1,000,000 float32 parameters (one 1000x1000 tensor with its gradient) on 2
threads: fastbp compiled, fastbp reference and PyTorch (when installed), in one run. Prints median
milliseconds and ratios; writes bench/results/optim_step.json.

    python bench/bench_optim.py [--rounds 5] [--repeat 30]

PyTorch settings: `torch_ms` is torch.optim.<Opt>(params, lr=...) with its defaults (foreach=None,
fused=None), which for CPU tensors runs the single-tensor implementation -- what a user gets without
asking for more. The target (fastbp / PyTorch <= 1.0, for Adam) is measured against that. For
reference we also time foreach=True and, where PyTorch supports it on CPU, fused=True (a single
vectorised pass, the closest thing to fastbp's kernel).

Each variant is timed in `--rounds` interleaved rounds (median of `--repeat` calls each) and the median
over rounds is reported; other processes on a 2-core machine make single rounds noisy."""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (sets thread environment before numpy/fastbp load BLAS)

import numpy as np  # noqa: E402

import fastbp  # noqa: E402
from fastbp import nn, optim  # noqa: E402

SHAPE = (1000, 1000)
# name: (fastbp class, torch class name, keyword arguments shared by both, torch supports fused on CPU)
OPTIMIZERS = {
    "Adam": (optim.Adam, "Adam", dict(lr=1e-3), True),
    "AdamW": (optim.AdamW, "AdamW", dict(lr=1e-3, weight_decay=1e-2), True),
    "SGD-momentum": (optim.SGD, "SGD", dict(lr=1e-3, momentum=0.9), True),
    "RMSprop": (optim.RMSprop, "RMSprop", dict(lr=1e-3), False),
    "Adagrad": (optim.Adagrad, "Adagrad", dict(lr=1e-3), True),
}
TARGETS = {"Adam": 1.0}


def fastbp_step(backend, name, p0, g0):
    fastbp.set_backend(backend)
    cls, _, kw, _ = OPTIMIZERS[name]
    p = nn.Parameter(p0.copy())
    p.grad = g0.copy()
    opt = cls([p], **kw)
    return opt.step


def torch_step(torch, name, p0, g0, **flags):
    _, tname, kw, _ = OPTIMIZERS[name]
    p = torch.tensor(p0.copy(), requires_grad=True)
    p.grad = torch.tensor(g0.copy())
    opt = getattr(torch.optim, tname)([p], **kw, **flags)
    return opt.step


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--only", nargs="*", choices=list(OPTIMIZERS), help="benchmark only these optimizers")
    args = ap.parse_args(argv)
    torch = _common.setup_threads()
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(SHAPE).astype(np.float32)
    g0 = (rng.standard_normal(SHAPE) * 1e-2).astype(np.float32)
    rows = []
    for name in args.only or OPTIMIZERS:
        variants = {"compiled_ms": lambda: fastbp_step("compiled", name, p0, g0),
                    "reference_ms": lambda: fastbp_step("reference", name, p0, g0)}
        if torch is not None:
            variants["torch_ms"] = lambda: torch_step(torch, name, p0, g0)
            variants["torch_foreach_ms"] = lambda: torch_step(torch, name, p0, g0, foreach=True)
            if OPTIMIZERS[name][3]:
                variants["torch_fused_ms"] = lambda: torch_step(torch, name, p0, g0, fused=True)
        steps = {k: make() for k, make in variants.items()}  # build every optimizer once, then interleave
        fastbp.set_backend("compiled")
        times = {k: [] for k in steps}
        for _ in range(args.rounds):
            for k, fn in steps.items():
                # the backend is read at each step() call, so select it for the fastbp variants
                fastbp.set_backend("reference" if k == "reference_ms" else "compiled")
                times[k].append(_common.time_fn(fn, repeat=args.repeat))
        fastbp.set_backend("compiled")
        row = {"optimizer": name}
        row.update({k: statistics.median(v) for k, v in times.items()})
        row["rounds"] = {k: [round(x, 4) for x in v] for k, v in times.items()}
        row["speedup_vs_reference"] = row["reference_ms"] / row["compiled_ms"]
        if torch is not None:
            row["ratio_vs_torch"] = row["compiled_ms"] / row["torch_ms"]
            if "torch_fused_ms" in row:
                row["ratio_vs_torch_fused"] = row["compiled_ms"] / row["torch_fused_ms"]
            if name in TARGETS:
                row["target"] = TARGETS[name]
                row["met"] = "yes" if row["ratio_vs_torch"] <= TARGETS[name] else "MISSED"
        rows.append(row)
    if torch is None:
        print("PyTorch not installed (pip install torch==2.13.0): torch columns omitted")
    print(f"{SHAPE[0]}x{SHAPE[1]} float32, {_common.THREADS} threads, median of {args.rounds} rounds "
          f"(each the median of >= {args.repeat} steps)")
    _common.report("optim_step", rows,
                   ["optimizer", "compiled_ms", "reference_ms", "torch_ms", "torch_foreach_ms", "torch_fused_ms",
                    "speedup_vs_reference", "ratio_vs_torch", "ratio_vs_torch_fused", "target", "met"],
                   {k: v for k, v in TARGETS.items()})


if __name__ == "__main__":
    main()
