"""BatchNorm2d forward+backward and a ResNet training step, fastbp vs PyTorch, each framework alone in its own
process.

    python bench/bench_resnet.py                       # driver: alternates fastbp / torch subprocesses
    python bench/bench_resnet.py --rounds 5 --threads 2,1
    python bench/bench_resnet.py --framework fastbp --case bn --threads 2   # one measurement (JSON line)

Cases (float32, training mode):
  * bn:     nn.BatchNorm2d(32) on (32, 32, 32, 32): y = bn(x); y.backward(g) (input, weight, bias grads).
  * resnet: one SGD step (momentum 0.9) of examples/resnet_mnist.py's ResNet (width 16, BasicBlocks with
            BatchNorm, 1x1 projection shortcuts, global average pooling) on a batch of 64 1x28x28 images:
            zero_grad, forward, cross-entropy, backward, step.
  * resnet_captured: the same step, fastbp's run through fastbp.compile (PyTorch's stays eager: the
            issue's target compares fastbp's captured step with PyTorch's step).
The driver runs, per round and thread count, one process per (framework, case), alternating the order, in
the default environment except OMP_NUM_THREADS (each worker also sets the framework's thread count), and
prints every round's medians and the range of the fastbp / PyTorch ratio over the rounds. Benchmarks are never
run by the test suite."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CASES = ("bn", "resnet", "resnet_captured")


def _median_ms(fn, repeat, warmup, min_time=1.0):
    """(median wall ms, median process CPU ms, calls): CPU time (all threads, user + system) is the figure
    to trust on a loaded machine, where wall time also counts the time other processes hold the cores."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
        if len(times) >= 10 * repeat:
            break
    return statistics.median(times), statistics.median(cpu), len(times)


def _resnet_module(framework):
    """examples/resnet_mnist.py's model classes, built on fastbp or (import lines swapped) on torch."""
    src = open(os.path.join(ROOT, "examples", "resnet_mnist.py")).read()
    if framework == "torch":
        src = (src.replace("import fastbp\n", "import torch as fastbp\n")
               .replace("from fastbp import nn, optim", "from torch import nn, optim")
               .replace("import fastbp.nn.functional as F", "import torch.nn.functional as F"))
    mod = types.ModuleType(f"resnet_{framework}")
    mod.__file__ = os.path.join(ROOT, "examples", "resnet_mnist.py")
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def worker(framework, case, threads, repeat):
    import numpy as np
    rng = np.random.default_rng(0)
    if framework == "fastbp":
        sys.path.insert(0, ROOT)
        import fastbp as fw
        from fastbp import nn, optim
        fw.set_num_threads(threads)
        tensor = fw.tensor

        def leaf(a):
            return fw.tensor(a, requires_grad=True)
    else:
        import torch as fw
        from torch import nn, optim
        fw.set_num_threads(threads)
        tensor = fw.from_numpy

        def leaf(a):
            return fw.from_numpy(a).requires_grad_()
    fw.manual_seed(0)
    if case == "bn":
        bn = nn.BatchNorm2d(32)
        x = leaf(rng.standard_normal((32, 32, 32, 32)).astype(np.float32))
        g = tensor(rng.standard_normal((32, 32, 32, 32)).astype(np.float32))

        def step():
            x.grad = None
            bn.weight.grad = bn.bias.grad = None
            bn(x).backward(g)
    else:  # resnet, resnet_captured
        mod = _resnet_module(framework)
        model = mod.ResNet(width=16)
        model.train()
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        xb = tensor(rng.standard_normal((64, 1, 28, 28)).astype(np.float32))
        yb = rng.integers(0, 10, 64)
        yb = fw.tensor(yb) if framework == "fastbp" else fw.from_numpy(yb)

        def train_step(x, y):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss
        run = fw.compile(train_step) if case == "resnet_captured" and framework == "fastbp" else train_step

        def step():
            run(xb, yb)
    ms, cpu_ms, n = _median_ms(step, repeat, warmup=3)
    print(json.dumps({"framework": framework, "case": case, "threads": threads, "median_ms": ms,
                      "median_cpu_ms": cpu_ms, "calls": n}))


def driver(rounds, thread_counts, cases, repeat):
    results = {}
    print(f"bench_resnet: {rounds} rounds, threads {thread_counts}, cases {cases}; each measurement is its own "
          f"process (default environment, OMP_NUM_THREADS set)", flush=True)
    for r in range(rounds):
        for threads in thread_counts:
            for case in cases:
                order = ("fastbp", "torch") if r % 2 == 0 else ("torch", "fastbp")
                row, cpu = {}, {}
                for fw in order:
                    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
                    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--framework", fw, "--case", case,
                                          "--threads", str(threads), "--repeat", str(repeat)],
                                         env=env, capture_output=True, text=True)
                    if out.returncode != 0:
                        raise SystemExit(f"{fw} {case} failed:\n{out.stderr}")
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    row[fw], cpu[fw] = res["median_ms"], res["median_cpu_ms"]
                ratio = row["fastbp"] / row["torch"]
                cratio = cpu["fastbp"] / cpu["torch"]
                results.setdefault((case, threads), []).append((ratio, cratio))
                print(f"round {r + 1}  {case:6s} {threads} thr  wall: fastbp {row['fastbp']:8.2f} ms  torch "
                      f"{row['torch']:8.2f} ms  ratio {ratio:.2f} | CPU: fastbp {cpu['fastbp']:8.2f} ms  torch "
                      f"{cpu['torch']:8.2f} ms  ratio {cratio:.2f}", flush=True)
    print("\nfastbp / PyTorch ratio over rounds (min - median - max), wall time | process CPU time:")
    for (case, threads), pairs in results.items():
        w = [p[0] for p in pairs]
        c = [p[1] for p in pairs]
        print(f"  {case:6s} {threads} thread(s): wall {min(w):.2f} - {statistics.median(w):.2f} - {max(w):.2f}"
              f" | CPU {min(c):.2f} - {statistics.median(c):.2f} - {max(c):.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--framework", choices=["fastbp", "torch"])
    ap.add_argument("--case", choices=CASES)
    ap.add_argument("--threads", default="2,1", help="thread count(s), comma-separated in driver mode")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    if args.framework:
        worker(args.framework, args.case or "bn", int(args.threads.split(",")[0]), args.repeat)
    else:
        driver(args.rounds, [int(t) for t in args.threads.split(",")], args.cases.split(","), args.repeat)


if __name__ == "__main__":
    main()
