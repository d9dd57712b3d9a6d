"""DataLoader overhead: one training epoch of a 784-256-128-10 ReLU MLP (SGD momentum 0.9, float32, batch 64,
MNIST 5k flattened, shuffled every epoch) fed by fastbp's DataLoader vs a hand-written loop that permutes and
slices the arrays itself. Target: the loader costs <= 5% of the epoch.

    python bench/bench_loader.py [--rounds 8] [--batch 64]

Two figures:
- epoch ratio: median over alternating rounds of (loader epoch time / hand-written epoch time) - 1, in wall
  time and in process CPU time. Direct, but on a shared machine it moves by several percent either way.
- iteration share: the time to iterate the epoch's batches alone (no training), loader minus hand-written,
  as a share of the training epoch. The difference the loader makes, measured where noise is small.
Writes bench/results/loader.json."""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (sets thread environment before numpy/fastbp load BLAS)

import numpy as np  # noqa: E402

import fastbp  # noqa: E402
from fastbp import nn, optim  # noqa: E402
from fastbp.data import DataLoader, TensorDataset  # noqa: E402


def make_model():
    fastbp.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
    return model, optim.SGD(model.parameters(), lr=0.01, momentum=0.9), nn.CrossEntropyLoss()


def hand_batches(X, y, batch, rng):
    order = rng.permutation(len(X))
    for i in range(0, len(X), batch):
        idx = order[i:i + batch]
        yield fastbp.tensor(X[idx]), y[idx]


def train_epoch(batches, model, opt, loss_fn):
    """(wall seconds, CPU seconds of the process) of one epoch."""
    t0, c0 = time.perf_counter(), time.process_time()
    for xb, yb in batches:
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, time.process_time() - c0


def iterate(batches):
    t0 = time.perf_counter()
    for xb, yb in batches:
        pass
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    _common.setup_threads()
    X, y = fastbp.data.load_mnist_5k()
    X = np.ascontiguousarray(X.reshape(len(X), 784))
    loader = DataLoader(TensorDataset(X, y), batch_size=args.batch, shuffle=True, seed=0)
    rng = np.random.default_rng(0)
    model, opt, loss_fn = make_model()
    for _ in range(1):  # warm-up
        train_epoch(loader, model, opt, loss_fn)
        train_epoch(hand_batches(X, y, args.batch, rng), model, opt, loss_fn)
    t_loader, t_hand, it_loader, it_hand, c_loader, c_hand = [], [], [], [], [], []
    for r in range(args.rounds):
        pair = [("loader", lambda: loader), ("hand", lambda: hand_batches(X, y, args.batch, rng))]
        if r % 2:
            pair.reverse()
        for name, make in pair:
            t, c = train_epoch(make(), model, opt, loss_fn)
            (t_loader if name == "loader" else t_hand).append(t)
            (c_loader if name == "loader" else c_hand).append(c)
        for name, make in pair:
            t = min(iterate(make()) for _ in range(3))
            (it_loader if name == "loader" else it_hand).append(t)
    ratios = [a / b - 1 for a, b in zip(t_loader, t_hand)]
    cpu_ratios = [a / b - 1 for a, b in zip(c_loader, c_hand)]
    epoch = statistics.median(t_hand)
    shares = [(a - b) / epoch for a, b in zip(it_loader, it_hand)]
    res = {
        "batch": args.batch, "rounds": args.rounds, "threads": _common.THREADS,
        "epoch_hand_ms_median": 1e3 * epoch, "epoch_loader_ms_median": 1e3 * statistics.median(t_loader),
        "epoch_ratio_minus_1": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "epoch_cpu_hand_ms_median": 1e3 * statistics.median(c_hand),
        "epoch_cpu_ratio_minus_1": {"median": statistics.median(cpu_ratios), "min": min(cpu_ratios),
                                    "max": max(cpu_ratios)},
        "iterate_hand_ms_median": 1e3 * statistics.median(it_hand),
        "iterate_loader_ms_median": 1e3 * statistics.median(it_loader),
        "iteration_share_of_epoch": {"median": statistics.median(shares), "min": min(shares), "max": max(shares)},
    }
    print(f"MLP 784-256-128-10, batch {args.batch}, {len(X)} samples, {_common.THREADS} threads, {args.rounds} "
          f"alternating rounds")
    print(f"training epoch: hand-written slicing {res['epoch_hand_ms_median']:.1f} ms, DataLoader "
          f"{res['epoch_loader_ms_median']:.1f} ms (medians)")
    e = res["epoch_ratio_minus_1"]
    print(f"epoch ratio - 1: median {100 * e['median']:+.1f}%  (range {100 * e['min']:+.1f}% .. {100 * e['max']:+.1f}%)")
    e = res["epoch_cpu_ratio_minus_1"]
    print(f"same in process CPU time (epoch {res['epoch_cpu_hand_ms_median']:.1f} ms): median "
          f"{100 * e['median']:+.1f}%  (range {100 * e['min']:+.1f}% .. {100 * e['max']:+.1f}%)")
    s = res["iteration_share_of_epoch"]
    print(f"batches alone: hand-written {res['iterate_hand_ms_median']:.2f} ms, DataLoader "
          f"{res['iterate_loader_ms_median']:.2f} ms per epoch; the difference is {100 * s['median']:+.2f}% of the "
          f"training epoch (range {100 * s['min']:+.2f}% .. {100 * s['max']:+.2f}%)")
    os.makedirs(_common.RESULTS_DIR, exist_ok=True)
    import json
    with open(os.path.join(_common.RESULTS_DIR, "loader.json"), "w") as f:
        json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
