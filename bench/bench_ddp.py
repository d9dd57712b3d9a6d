"""Data-parallel training on this machine: 1 rank x 2 threads against 2 ranks x 1 thread, and what the
gradient allreduce costs.

    pip install ".[examples,mpi]"
    python bench/bench_ddp.py                 # alternating runs of every configuration, ranges reported
    python bench/bench_ddp.py --rounds 3 --epochs 2
    python bench/bench_ddp.py --model mlp --train-size 1024   # 11 MiB of gradients: does overlap pay?

Every configuration trains LeNet-5 (examples/lenet_mnist.py's model; or with --model mlp a 784-1024x3-10 MLP,
many parameters for little compute), Adam, on the first --train-size images of the MNIST subset with a global
batch of 64 (2 ranks: 32 each) in its own process(es), and reports the median epoch time after one warm-up
epoch. Configurations, run alternately:
  1 rank x 2 threads   plain `python`, 2 OpenMP/BLAS threads, no MPI
  2 ranks x 1 thread   `mpiexec -n 2`, DistributedDataParallel; epoch by epoch it cycles through 25 MiB
                       buckets (one per step) and small ones (LeNet-5: 64 KiB, three per step; MLP: 1 MiB),
                       each reduced during the backward pass (overlap) or after it, so the four settings
                       are compared under the same load
For the 2-rank runs: allreduce bytes and calls per step; the time a step waits after its backward pass for
the reductions ("exposed": the transfer plus waiting for the slower rank); the compute of a step alone (the
same steps under no_sync); and an Allreduce of all the gradients timed alone, each call started with both
ranks ready (median of 40: the transfer's cost if nothing overlapped it). From those, an estimate for 8 and 64 ranks over a 10 Gb/s network (estimate()).

Results go to bench/results/ddp_<model>.json. The machine is shared: read the ranges, not one figure."""
import argparse
import json
import math
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
# the 2-rank job cycles through these DistributedDataParallel settings epoch by epoch, so that they are
# compared under the same load: (name, bucket_cap_mb, overlap)
def mlp():
    """784-1024-1024-1024-10: 2.9 million parameters (11 MiB of gradients) for little compute."""
    from fastbp import nn
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


# per model: the small bucket size the 2-rank job compares with one 25 MiB bucket
SMALL_BUCKET = {"lenet5": ("64 KiB", 0.0625), "mlp": ("1 MiB", 1.0)}


def settings_for(model):
    label, mb = SMALL_BUCKET[model]
    return [("25 MiB, overlap", 25.0, True), ("25 MiB, after bwd", 25.0, False),
            (f"{label}, overlap", mb, True), (f"{label}, after bwd", mb, False)]


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
    X, y = X[:args.train_size], y[:args.train_size]
    model = lenet5() if args.model == "lenet5" else mlp()
    if use_mpi:
        model = dist.DistributedDataParallel(model)
    opt = make_optimizer("adam", model.parameters(), 1e-3)
    loss_fn = nn.CrossEntropyLoss()
    per_rank = GLOBAL_BATCH // world
    if use_mpi:
        sampler = dist.DistributedSampler(len(X), shuffle=True, seed=0)

    def step(b):
        opt.zero_grad()
        loss_fn(model(fastbp.tensor(X[b])), y[b]).backward()
        opt.step()

    settings = settings_for(args.model) if use_mpi else [("", None, None)]
    times = {name: [] for name, *_ in settings}
    stats = {name: [] for name, *_ in settings}
    plan = [settings[0]] + [st for _ in range(args.epochs) for st in settings]  # first epoch warms up
    for epoch, (name, cap, overlap) in enumerate(plan):
        if use_mpi:
            object.__setattr__(model, "overlap", overlap)
            object.__setattr__(model, "bucket_cap_mb", cap)
            object.__setattr__(model, "_buckets", model._make_buckets())
            object.__setattr__(model, "_bucket_of", {id(p): bk for bk in model._buckets for p in bk.params})
            sampler.set_epoch(epoch)
            idx = sampler.indices()
            dist.barrier()
            model.stats.update(allreduce_calls=0, allreduce_bytes=0, wait_seconds=0.0)
        else:
            idx = np.random.default_rng(epoch).permutation(len(X))
        t0 = time.perf_counter()
        steps = 0
        for i in range(0, len(idx), per_rank):
            step(idx[i:i + per_rank])
            steps += 1
        dt = time.perf_counter() - t0
        if use_mpi:
            dt = dist.all_reduce(dt, op="max")
        if epoch:
            times[name].append(dt)
            if use_mpi:
                st = model.stats
                stats[name].append({"bytes": st["allreduce_bytes"] / steps, "calls": st["allreduce_calls"] / steps,
                                    "exposed_ms": 1e3 * dist.all_reduce(st["wait_seconds"], op="max") / steps})
    out = {"steps": steps, "threads": fastbp.get_num_threads(),
           "settings": {name: {"epoch_s": statistics.median(times[name]),
                               **({k: statistics.median(d[k] for d in stats[name]) for k in stats[name][0]}
                                  if use_mpi else {})} for name, *_ in settings}}
    if use_mpi:
        # compute alone: the same steps with no communication (no_sync), per rank, the faster rank's median
        per = []
        with model.no_sync():
            for i in range(0, min(len(idx), 40 * per_rank), per_rank):
                t0 = time.perf_counter()
                step(idx[i:i + per_rank])
                per.append(time.perf_counter() - t0)
        out["compute_ms_per_step"] = 1e3 * dist.all_reduce(statistics.median(per), op="min")
        out["compute_ms_quietest"] = 1e3 * dist.all_reduce(min(per), op="min")  # closest to an idle machine
        # the bytes of one step reduced alone, blocking: the communication's cost with nothing overlapping it
        buf = np.zeros(sum(p.data.size for p in model.parameters()), dtype=np.float32)
        for _ in range(5):
            dist.all_reduce(buf)
        calls = []
        for _ in range(40):  # each call starts with both ranks ready (after a barrier): the transfer itself
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            calls.append(time.perf_counter() - t0)
        out["allreduce_alone_ms"] = 1e3 * dist.all_reduce(statistics.median(calls), op="max")
        out["params"] = buf.size
    if rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


# ----- the driver ----------------------------------------------------------------------------------------
CONFIGS = [("1 rank x 2 threads", 1, 2), ("2 ranks x 1 thread", 2, 1)]


def run(ranks, threads, args):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--ranks", str(ranks), "--epochs", str(args.epochs),
           "--model", args.model, "--train-size", str(args.train_size)]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
        # Open MPI pins each of up to 2 ranks to its own core by default; keep that (1 thread per rank)
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return json.loads(line[7:])


def estimate(bytes_per_step, compute_ms, ranks, gbit=10.0, latency_us=30.0):
    """Communication per step for an allreduce of `bytes_per_step` over `ranks` machines on a `gbit` Gb/s
    network: every algorithm moves 2 (N-1)/N of the bytes through each machine's link; a ring needs 2 (N-1)
    message latencies, recursive halving/doubling (Rabenseifner) 2 log2 N (TCP on 10 GbE: ~20-50 us each).
    Returns {algorithm: (communication ms, its share of a step of compute_ms compute with no overlap)}."""
    bw_ms = 1e3 * 2 * (ranks - 1) / ranks * bytes_per_step / (gbit * 1e9 / 8)
    out = {}
    for name, messages in (("ring", 2 * (ranks - 1)), ("halving-doubling", 2 * math.log2(ranks))):
        comm_ms = bw_ms + messages * latency_us * 1e-3
        out[name] = (comm_ms, comm_ms / (comm_ms + compute_ms))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per setting and run (after a warm-up)")
    ap.add_argument("--model", choices=["lenet5", "mlp"], default="lenet5",
                    help="LeNet-5 (61,706 parameters) or a 784-1024x3-10 MLP (2.9 M parameters, little compute)")
    ap.add_argument("--train-size", type=int, default=4000, help="images per epoch")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two configurations")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    runs = {name: [] for name, *_ in CONFIGS}
    for k in range(args.rounds):
        for name, ranks, threads in CONFIGS:
            res = run(ranks, threads, args)
            runs[name].append(res)
            for sname, st in res["settings"].items():
                extra = (f", exposed allreduce {st['exposed_ms']:.2f} ms/step ({st['calls']:.0f} calls, "
                         f"{st['bytes'] / 1024:.1f} KiB)" if ranks > 1 else "")
                print(f"round {k + 1}: {name} {sname:18s} epoch {st['epoch_s']:.3f} s{extra}", flush=True)
            if ranks > 1:
                print(f"round {k + 1}: {name} compute alone {res['compute_ms_per_step']:.2f} ms/step, "
                      f"allreduce of the {res['params']} gradients alone {res['allreduce_alone_ms']:.3f} ms",
                      flush=True)
    print(f"\n{args.model}, {args.train_size} MNIST images, global batch {GLOBAL_BATCH}, Adam; {args.rounds} alternating rounds, "
          f"{args.epochs} timed epochs per setting (median per run), ranges over rounds. Shared 2-core machine, "
          f"load average {load} at the start.")
    rows = []
    for name, ranks, threads in CONFIGS:
        for sname in runs[name][0]["settings"]:
            ep = [r["settings"][sname]["epoch_s"] for r in runs[name]]
            row = {"config": name, "setting": sname, "epoch_s_min": min(ep), "epoch_s_median": statistics.median(ep),
                   "epoch_s_max": max(ep), "steps_per_epoch": runs[name][0]["steps"]}
            line = f"{name} {sname:18s} epoch {min(ep):.2f}-{max(ep):.2f} s (median {statistics.median(ep):.2f})"
            if ranks > 1:
                exp = [r["settings"][sname]["exposed_ms"] for r in runs[name]]
                row.update(exposed_ms_min=min(exp), exposed_ms_max=max(exp),
                           bytes_per_step=runs[name][0]["settings"][sname]["bytes"],
                           calls_per_step=runs[name][0]["settings"][sname]["calls"])
                line += (f"; {row['calls_per_step']:.0f} allreduce(s), {row['bytes_per_step'] / 1024:.1f} KiB "
                         f"per step, exposed wait {min(exp):.2f}-{max(exp):.2f} ms/step")
            rows.append(row)
            print(line)
    two = runs["2 ranks x 1 thread"]
    comp = [r["compute_ms_per_step"] for r in two]
    alone = [r["allreduce_alone_ms"] for r in two]
    print(f"2 ranks: compute {min(comp):.2f}-{max(comp):.2f} ms per step (32 images, no communication); "
          f"allreduce of the gradients alone {min(alone):.3f}-{max(alone):.3f} ms")
    one = statistics.median(r["settings"][""]["epoch_s"] for r in runs["1 rank x 2 threads"])
    first = settings_for(args.model)[0][0]
    dd = statistics.median(r["settings"][first]["epoch_s"] for r in two)
    print(f"2 ranks x 1 thread ({first}) vs 1 rank x 2 threads: {one / dd:.2f}x the speed (median epochs)")
    bytes_per_step = 4 * two[0]["params"]
    est = []
    # compute per step: as measured here (under whatever load), and the quietest step of the run's ranks
    quiet = min(r["compute_ms_quietest"] for r in two)
    for label, compute_ms in (("median step", statistics.median(comp)), ("quietest step", quiet)):
        for n in (8, 64):
            for algo, (comm_ms, share) in estimate(bytes_per_step, compute_ms, n).items():
                est.append({"ranks": n, "algorithm": algo, "compute": label, "compute_ms": compute_ms,
                            "comm_ms_per_step": comm_ms, "share_of_step": share})
                print(f"estimate, {n:2d} ranks over 10 Gb/s, {algo:16s}: {comm_ms:.2f} ms of communication per "
                      f"step ({bytes_per_step / 1024:.0f} KiB) vs {compute_ms:.1f} ms compute ({label}, batch 32 "
                      f"per rank) -> {100 * share:.0f}% of the step without overlap")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"ddp_{args.model}.json")
    with open(path, "w") as f:
        json.dump({"benchmark": "ddp", "load_average": load, "rows": rows, "runs": runs, "estimate": est}, f,
                  indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
