"""Data-parallel LeNet-5 on this machine: 1 rank x 2 threads against 2 ranks x 1 thread, and what the
gradient allreduce costs.

    pip install ".[examples,mpi]"
    python bench/bench_ddp.py                 # alternating runs of every configuration, ranges reported
    python bench/bench_ddp.py --rounds 3 --epochs 2

Every configuration trains LeNet-5 (examples/lenet_mnist.py's model, Adam) on the 4,000 training images of
the MNIST subset with a global batch of 64 (2 ranks: 32 each) in its own process(es), and reports the
median epoch time after one warm-up epoch. Configurations:
  1x2          plain `python`, 2 OpenMP/BLAS threads, no MPI
  2x1          `mpiexec -n 2`, 1 thread per rank, DistributedDataParallel (one 25 MiB bucket, overlap on)
  2x1 no-ovl   the same, gradients reduced only after the backward pass
  2x1 buckets  the same with 64 KiB buckets (several reductions per step, started during the backward pass)
For the 2-rank runs: allreduce bytes and calls per step, the time a step spends waiting for the reduction
after its backward pass ("exposed"), and an Allreduce of the same bytes timed alone (the communication's
cost if nothing overlapped it). From those and the measured compute per step, an estimate for 8 and 64
ranks over a 10 Gb/s network (see estimate()).

Results go to bench/results/ddp.json. The machine is shared: read the ranges, not one figure."""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GLOBAL_BATCH = 64


# ----- one training run (the worker) ---------------------------------------------------------------------
def worker(args):
    import numpy as np

    import fastbp
    from fastbp import nn
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from lenet_mnist import lenet5, make_optimizer

    use_mpi = args.ranks > 1
    if use_mpi:
        import fastbp.distributed as dist
        dist.init()
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    fastbp.manual_seed(0)
    X, y = fastbp.data.load_mnist_5k()
    X, y = X[:4000], y[:4000]
    model = lenet5()
    if use_mpi:
        model = dist.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb, overlap=not args.no_overlap)
    opt = make_optimizer("adam", model.parameters(), 1e-3)
    loss_fn = nn.CrossEntropyLoss()
    per_rank = GLOBAL_BATCH // world
    if use_mpi:
        sampler = dist.DistributedSampler(len(X), shuffle=True, seed=0)
    epoch_times, steps = [], 0
    for epoch in range(args.epochs + 1):  # epoch 0 warms up
        if use_mpi:
            sampler.set_epoch(epoch)
            idx = sampler.indices()
            dist.barrier()
            model.stats.update(allreduce_calls=0, allreduce_bytes=0, wait_seconds=0.0)
        else:
            idx = np.random.default_rng(epoch).permutation(len(X))
        t0 = time.perf_counter()
        steps = 0
        for i in range(0, len(idx), per_rank):
            b = idx[i:i + per_rank]
            opt.zero_grad()
            loss_fn(model(fastbp.tensor(X[b])), y[b]).backward()
            opt.step()
            steps += 1
        dt = time.perf_counter() - t0
        if use_mpi:
            dt = dist.all_reduce(dt, op="max")
        if epoch:
            epoch_times.append(dt)
    out = {"epoch_s": statistics.median(epoch_times), "steps": steps, "threads": fastbp.get_num_threads()}
    if use_mpi:
        s = model.stats  # of the last epoch
        out.update(bytes_per_step=s["allreduce_bytes"] / steps, calls_per_step=s["allreduce_calls"] / steps,
                   exposed_ms_per_step=1e3 * dist.all_reduce(s["wait_seconds"], op="max") / steps)
        # the same bytes reduced alone, blocking: what the communication costs without any overlap
        buf = np.zeros(s["allreduce_bytes"] // s["allreduce_calls"] // 4, dtype=np.float32)  # bytes of one call
        reps = 200
        for _ in range(20):
            dist.all_reduce(buf)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            dist.all_reduce(buf)
        out["allreduce_alone_ms"] = 1e3 * (time.perf_counter() - t0) / reps * out["calls_per_step"]
        out["params"] = sum(p.data.size for p in model.parameters())
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


# ----- the driver ----------------------------------------------------------------------------------------
CONFIGS = [
    ("1x2", 1, 2, []),
    ("2x1", 2, 1, []),
    ("2x1 no-ovl", 2, 1, ["--no-overlap"]),
    ("2x1 buckets", 2, 1, ["--bucket-mb", "0.0625"]),
]


def run(ranks, threads, extra, epochs):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--ranks", str(ranks), "--epochs", str(epochs),
           *extra]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
        # Open MPI pins each of up to 2 ranks to its own core by default; keep that (1 thread per rank)
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(line[7:])


def estimate(bytes_per_step, compute_ms, ranks, gbit=10.0, latency_us=30.0):
    """Ring allreduce over `ranks` machines: each sends and receives 2 (N-1)/N of the bytes, in 2 (N-1)
    messages of latency `latency_us` (TCP on 10 GbE: ~20-50 us). Returns (communication ms, its share of a
    step whose compute, per rank, takes compute_ms with no overlap)."""
    bw = gbit * 1e9 / 8
    comm_ms = 1e3 * (2 * (ranks - 1) / ranks * bytes_per_step / bw + 2 * (ranks - 1) * latency_us * 1e-6)
    return comm_ms, comm_ms / (comm_ms + compute_ms)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--bucket-mb", type=float, default=25.0, help=argparse.SUPPRESS)
    ap.add_argument("--no-overlap", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per run (after one warm-up epoch)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds over all configurations")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    results = {name: [] for name, *_ in CONFIGS}
    for k in range(args.rounds):
        for name, ranks, threads, extra in CONFIGS:
            res = run(ranks, threads, extra, args.epochs)
            results[name].append(res)
            print(f"round {k + 1}: {name:12s} epoch {res['epoch_s']:.3f} s" +
                  (f", exposed allreduce {res['exposed_ms_per_step']:.3f} ms/step, {res['calls_per_step']:.0f} "
                   f"calls, {res['bytes_per_step'] / 1024:.1f} KiB/step, alone {res['allreduce_alone_ms']:.3f} ms"
                   if ranks > 1 else ""), flush=True)
    print(f"\nLeNet-5, 4000 MNIST images, global batch {GLOBAL_BATCH}, Adam; {args.rounds} alternating rounds, "
          f"{args.epochs} timed epochs each (median per run); ranges over rounds. Shared 2-core machine.")
    rows = []
    for name, ranks, threads, _ in CONFIGS:
        rs = results[name]
        ep = [r["epoch_s"] for r in rs]
        row = {"config": name, "ranks": ranks, "threads_per_rank": threads,
               "epoch_s_min": min(ep), "epoch_s_median": statistics.median(ep), "epoch_s_max": max(ep),
               "steps_per_epoch": rs[0]["steps"]}
        if ranks > 1:
            step_ms = [1e3 * r["epoch_s"] / r["steps"] for r in rs]
            exposed = [r["exposed_ms_per_step"] for r in rs]
            alone = [r["allreduce_alone_ms"] for r in rs]
            row.update(bytes_per_step=rs[0]["bytes_per_step"], calls_per_step=rs[0]["calls_per_step"],
                       step_ms_median=statistics.median(step_ms),
                       exposed_ms_min=min(exposed), exposed_ms_max=max(exposed),
                       exposed_share_median=statistics.median(e / s for e, s in zip(exposed, step_ms)),
                       allreduce_alone_ms_min=min(alone), allreduce_alone_ms_max=max(alone),
                       params=rs[0]["params"])
        rows.append(row)
        line = f"{name:12s} epoch {min(ep):.2f}-{max(ep):.2f} s (median {statistics.median(ep):.2f})"
        if ranks > 1:
            line += (f"; {row['bytes_per_step'] / 1024:.1f} KiB in {row['calls_per_step']:.0f} allreduce(s) per "
                     f"step; exposed {row['exposed_ms_min']:.2f}-{row['exposed_ms_max']:.2f} ms of a "
                     f"{row['step_ms_median']:.1f} ms step ({100 * row['exposed_share_median']:.1f}%); the same "
                     f"bytes alone {row['allreduce_alone_ms_min']:.2f}-{row['allreduce_alone_ms_max']:.2f} ms")
        print(line)
    base = next(r for r in rows if r["config"] == "2x1")
    one = next(r for r in rows if r["config"] == "1x2")
    print(f"\n2 ranks x 1 thread vs 1 rank x 2 threads: {one['epoch_s_median'] / base['epoch_s_median']:.2f}x "
          f"the speed (median epochs)")
    # compute per step for one rank doing 32 images: the 2-rank step minus what it waited for the reduction
    compute_ms = base["step_ms_median"] - base["exposed_ms_min"]
    est = []
    for n in (8, 64):
        comm_ms, share = estimate(base["bytes_per_step"], compute_ms, n)
        est.append({"ranks": n, "comm_ms_per_step": comm_ms, "share_of_step": share})
        print(f"estimate, {n} ranks over 10 Gb/s (ring, 30 us per message): {comm_ms:.2f} ms of communication "
              f"per step vs {compute_ms:.1f} ms compute (batch 32 per rank) -> {100 * share:.0f}% of the step "
              f"without overlap")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", "ddp.json")
    with open(path, "w") as f:
        json.dump({"benchmark": "ddp", "rows": rows, "runs": results, "estimate": est}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
