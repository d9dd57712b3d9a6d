"""Run under `mpiexec -n 2`: data-parallel training (2 ranks, batch B each) against one process with batch 2B.

Rank 0 also trains the single-process reference in the same run and prints one JSON line: for each dtype and
optimizer, the largest relative difference of any parameter tensor (max |a - b| / max |b|), a digest of the
final parameters, and whether every rank ended with the same bits. Options: --steps N, --bucket-mb MB, --no-overlap."""
import argparse
import hashlib
import json

import numpy as np

import fastbp
import fastbp.distributed as dist
from fastbp import nn, optim

B = 8


def small_lenet(dtype):
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU(),
                      nn.Flatten(), nn.Linear(6 * 3 * 3, 24), nn.Tanh(), nn.Linear(24, 5))
    return m.to(dtype)


def make_opt(name, params):
    if name == "sgd":
        return optim.SGD(params, lr=0.05, momentum=0.9)
    return optim.Adam(params, lr=1e-3)


def digest(model):
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(np.ascontiguousarray(p.data).tobytes())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--bucket-mb", type=float, default=0.004)  # a few KiB: several buckets
    ap.add_argument("--no-overlap", action="store_true", help="reduce after the backward pass instead of during it")
    args = ap.parse_args()
    dist.init(timeout=60)
    rank, world = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.steps * world * B, 1, 10, 10))
    y = rng.integers(0, 5, len(X))
    loss_fn = nn.CrossEntropyLoss()
    out = {}
    for dtype in ("float32", "float64"):
        Xd = X.astype(dtype)
        for name in ("sgd", "adam"):
            fastbp.manual_seed(100 + rank)  # a different start on each rank: the wrap must broadcast rank 0's
            model = small_lenet(dtype)
            ddp = dist.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb, overlap=not args.no_overlap)
            opt = make_opt(name, ddp.parameters())
            if rank == 0:
                fastbp.manual_seed(100)
                ref = small_lenet(dtype)
                ref_opt = make_opt(name, ref.parameters())
            for step in range(args.steps):
                lo = step * world * B
                xs, ys = Xd[lo + rank * B:lo + (rank + 1) * B], y[lo + rank * B:lo + (rank + 1) * B]
                opt.zero_grad()
                loss_fn(ddp(fastbp.tensor(xs)), ys).backward()
                opt.step()
                if rank == 0:
                    ref_opt.zero_grad()
                    loss_fn(ref(fastbp.tensor(Xd[lo:lo + world * B])), y[lo:lo + world * B]).backward()
                    ref_opt.step()
            d = digest(model)
            try:
                dist.check_same(d, "final parameters")
                same = True
            except ValueError:
                same = False
            if rank == 0:
                rel = max(float(np.abs(p.data - q.data).max() / np.abs(q.data).max())
                          for p, q in zip(model.parameters(), ref.parameters()))
                out[f"{dtype}/{name}"] = {"rel": rel, "digest": d, "ranks_identical": same,
                                          "buckets": len(ddp._buckets)}
    if rank == 0:
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
