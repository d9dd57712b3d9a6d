"""Convolution, pooling and LeNet-5 training: fastbp compiled vs fastbp reference vs PyTorch CPU, in one run.

    python bench/bench_conv.py               # 2 threads (FASTBP_BENCH_THREADS), float32
    python bench/bench_conv.py --rounds 5    # more rounds when the machine is busy

Workloads (targets are fastbp compiled / PyTorch time):
  conv_fwd_bwd   conv2d forward + backward (dx, dweight, dbias), N=32, 16->32 channels, 32x32, 3x3, pad 1  <= 1.0
  conv_fwd       the same conv2d, forward only (no graph recorded)                                       <= 1.0
  maxpool_fwd_bwd  max_pool2d 2x2 forward + backward, N=32, C=32, 32x32                                 <= 0.5
  lenet_step     LeNet-5 training step (forward, cross-entropy, backward, Adam), batch 64, 1x28x28      <= 0.9
and compiled vs reference speedup (target >= 5x on the conv and pool steps).

Each workload is timed in several rounds; within a round the frameworks run one after another, so a burst
of load from other processes hits them alike. Reported times are the median over rounds of per-round
medians, and each ratio is the median of the per-round ratios. The script also measures the peak NumPy
memory (tracemalloc) of one conv training step at the benchmark shape, against the size of its input."""
import argparse
import os
import statistics
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import numpy as np  # noqa: E402

import fastbp  # noqa: E402
from fastbp import nn  # noqa: E402
from fastbp.nn import functional as F  # noqa: E402

TARGETS = {"conv_fwd_bwd": 1.0, "conv_fwd": 1.0, "maxpool_fwd_bwd": 0.5, "lenet_step": 0.9}
SPEEDUP_TARGET = 5.0
CONV = dict(N=32, C=16, O=32, H=32, W=32, k=3, pad=1)


def conv_data(rng):
    c = CONV
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
    w = (rng.standard_normal((c["O"], c["C"], c["k"], c["k"])) * 0.1).astype(np.float32)
    b = rng.standard_normal(c["O"]).astype(np.float32)
    g = rng.standard_normal((c["N"], c["O"], c["H"], c["W"])).astype(np.float32)
    return x, w, b, g


# ----- fastbp workloads (run on whichever backend is current) ---------------------------------------------
def fastbp_conv(x, w, b, g, backward=True):
    if not backward:
        def fwd():
            with fastbp.no_grad():
                F.conv2d(fastbp.tensor(x), fastbp.tensor(w), fastbp.tensor(b), padding=CONV["pad"])
        return fwd

    def step():
        tx = fastbp.tensor(x, requires_grad=True)
        tw = fastbp.tensor(w, requires_grad=True)
        tb = fastbp.tensor(b, requires_grad=True)
        F.conv2d(tx, tw, tb, padding=CONV["pad"]).backward(g)
    return step


def fastbp_pool(x, g):
    def step():
        tx = fastbp.tensor(x, requires_grad=True)
        F.max_pool2d(tx, 2).backward(g)
    return step


def fastbp_lenet():
    fastbp.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    opt = fastbp.optim.Adam(model.parameters(), lr=1e-3) if hasattr(fastbp.optim, "Adam") else \
        fastbp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 64)

    def step():
        opt.zero_grad()
        loss = loss_fn(model(fastbp.tensor(x)), y)
        loss.backward()
        opt.step()
    return step


# ----- PyTorch workloads --------------------------------------------------------------------------------
def torch_conv(torch, x, w, b, g, backward=True):
    tF = torch.nn.functional
    tx, tw, tb, tg = (torch.from_numpy(a) for a in (x, w, b, g))
    if not backward:
        def fwd():
            with torch.no_grad():
                tF.conv2d(tx, tw, tb, padding=CONV["pad"])
        return fwd

    def step():
        ax, aw, ab = (t.detach().requires_grad_() for t in (tx, tw, tb))
        tF.conv2d(ax, aw, ab, padding=CONV["pad"]).backward(tg)
    return step


def torch_pool(torch, x, g):
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)

    def step():
        ax = tx.detach().requires_grad_()
        torch.nn.functional.max_pool2d(ax, 2).backward(tg)
    return step


def torch_lenet(torch):
    tnn = torch.nn
    torch.manual_seed(0)
    model = tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
        tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3) if hasattr(fastbp.optim, "Adam") else \
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = tnn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((64, 1, 28, 28)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 64))

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return step


def on_backend(name, fn):
    def run():
        with fastbp.backend(name):
            fn()
    return run


# ----- peak memory ----------------------------------------------------------------------------------------
def peak_memory(x, w, b, g):
    """Peak bytes NumPy allocates (tracemalloc) during one conv training step, with the arrays it starts
    from (x, w, b, g) already allocated; the output, gradients and the im2col workspace are counted."""
    step = fastbp_conv(x, w, b, g)
    step()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    step()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=20, help="timed calls per round (at least 0.2 s)")
    args = ap.parse_args(argv)
    torch = _common.setup_threads()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rng = np.random.default_rng(0)
    x, w, b, g = conv_data(rng)
    px = rng.standard_normal((32, 32, 32, 32)).astype(np.float32)
    pg = rng.standard_normal((32, 32, 16, 16)).astype(np.float32)

    workloads = {
        "conv_fwd_bwd": (fastbp_conv(x, w, b, g), lambda: torch_conv(torch, x, w, b, g)),
        "conv_fwd": (fastbp_conv(x, w, b, g, backward=False), lambda: torch_conv(torch, x, w, b, g, backward=False)),
        "maxpool_fwd_bwd": (fastbp_pool(px, pg), lambda: torch_pool(torch, px, pg)),
        "lenet_step": (None, lambda: torch_lenet(torch)),
    }
    rows = []
    for name, (fb, make_torch) in workloads.items():
        fns = {"compiled": on_backend("compiled", fb if fb is not None else fastbp_lenet()),
               "reference": on_backend("reference", fb if fb is not None else fastbp_lenet())}
        if torch is not None:
            fns["torch"] = make_torch()
        times = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, fn in fns.items():
                # the reference is slow and only needs to be known within a few percent
                rep = max(3, args.repeat // 4) if k == "reference" else args.repeat
                times[k].append(_common.time_fn(fn, repeat=rep, warmup=2))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"workload": name, "compiled_ms": med["compiled"], "reference_ms": med["reference"],
               "speedup_vs_ref": statistics.median(r / c for r, c in zip(times["reference"], times["compiled"])),
               "compiled_spread_ms": f"{min(times['compiled']):.2f}-{max(times['compiled']):.2f}"}
        if torch is not None:
            ratios = [c / t for c, t in zip(times["compiled"], times["torch"])]
            row.update({"torch_ms": med["torch"], "fastbp/torch": statistics.median(ratios),
                        "target": TARGETS[name],
                        "met": "met" if statistics.median(ratios) <= TARGETS[name] else "MISSED"})
        rows.append(row)
    cols = ["workload", "compiled_ms", "reference_ms", "torch_ms", "fastbp/torch", "target", "met",
            "speedup_vs_ref", "compiled_spread_ms"]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"fastbp {fastbp.__version__}, {_common.THREADS} threads, float32, {args.rounds} rounds; "
          f"torch {torch.__version__ if torch is not None else 'not installed'}; "
          f"load average before/after: {load_before} / {load}")
    _common.report("conv", rows, cols, targets=TARGETS)
    for r in rows:
        if r["workload"] != "conv_fwd" and r["speedup_vs_ref"] < SPEEDUP_TARGET:
            print(f"  {r['workload']}: compiled is {r['speedup_vs_ref']:.1f}x the reference (target >= {SPEEDUP_TARGET}x)")

    conv_kernels = dict(zip(fastbp._backend.FAMILIES, fastbp._backend.compiled_modules))["conv"]
    plan = conv_kernels._plan_info(x.shape, w.shape, padding=CONV["pad"])
    peak = peak_memory(x, w, b, g)
    kept = conv_kernels._cached_workspace_bytes()
    mib = 1 / 2 ** 20
    print(f"\npeak memory of one conv training step (x {x.shape}, float32, input {x.nbytes * mib:.2f} MiB): "
          f"{peak * mib:.2f} MiB of new NumPy arrays (tracemalloc: y, dx, dweight, dbias and the backward's "
          f"temporaries) + {kept * mib:.2f} MiB conv workspace kept between "
          f"calls = {(peak + kept) * mib:.2f} MiB, {(peak + kept) / x.nbytes:.2f} x the input")
    print(f"  workspace plan: {plan['layout']} layout, chunks of {plan['chunk']} sample(s), "
          f"{plan['workspace_bytes'] * mib:.2f} MiB (limit {conv_kernels._get_workspace_limit() * mib:.0f} MiB); "
          f"an unchunked im2col of the batch would take "
          f"{x.shape[0] * CONV['C'] * CONV['k'] ** 2 * CONV['H'] * CONV['W'] * 4 * mib:.1f} MiB")
    big, big_g = np.concatenate([x] * 8), np.concatenate([g] * 8)
    peak_big = peak_memory(big, w, b, big_g) + conv_kernels._cached_workspace_bytes()
    print(f"  batch {big.shape[0]}: {peak_big * mib:.1f} MiB = {peak_big / big.nbytes:.2f} x the input "
          f"({big.nbytes * mib:.1f} MiB); an unchunked im2col alone would take "
          f"{8 * x.shape[0] * CONV['C'] * CONV['k'] ** 2 * CONV['H'] * CONV['W'] * 4 * mib:.0f} MiB")

if __name__ == "__main__":
    main()
