"""BatchNorm followed by ReLU: the fused kernels captured steps use against the separate ones.

    python bench/bench_bn_fused.py                 # 2 threads, the BatchNorm shapes of examples/resnet_mnist.py
    python bench/bench_bn_fused.py --threads 1 --rounds 7

One process, compiled kernels only, float32, training mode, every output into a preallocated buffer (as a
replayed step calls them). Per shape:
  forward   batch_norm_forward(out=y), then relu_forward(y, out=r)   vs   batch_norm_forward(activation="relu")
  backward  relu_backward(g, r, out=g'), then batch_norm_backward(g')  vs   batch_norm_backward(relu_output=r)
each warm (the same arrays again and again, in cache) and cold (a 64 MB array is rewritten before every call,
as inside a training step, where the previous layers' arrays have pushed these out of the caches). The
table gives the median over rounds of each round's median. Nothing here sets an environment variable; the
thread count is fastbp.set_num_threads(--threads)."""
import argparse
import statistics
import time

import numpy as np

import fastbp
from fastbp import _backend

C = _backend.compiled
SHAPES = [(64, 16, 28, 28), (64, 32, 14, 14), (64, 64, 7, 7)]


def _median_ms(fn, cold, flush, calls=30):
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        if cold:
            flush += 1
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    fastbp.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    flush = np.ones(16_000_000, np.float32)
    print(f"BatchNorm + ReLU, float32, {args.threads} thread(s), ms, median over {args.rounds} rounds")
    print(f"{'shape':20s} {'caches':6s} {'fwd separate':>13s} {'fwd fused':>10s} {'bwd separate':>13s} "
          f"{'bwd fused':>10s}")
    for shape in SHAPES:
        c = shape[1]
        x = rng.standard_normal(shape).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
        y, r, gp, dx = (np.empty_like(x) for _ in range(4))
        dw, db = np.empty(c, np.float32), np.empty(c, np.float32)
        _, m, s, _ = C.batch_norm_forward(x, w, b, None, None, True, out=y, activation="relu", activation_out=r)
        configs = {
            "fwd separate": lambda: (C.batch_norm_forward(x, w, b, None, None, True, out=y),
                                     C.relu_forward(y, out=r)),
            "fwd fused": lambda: C.batch_norm_forward(x, w, b, None, None, True, activation="relu",
                                                      activation_out=r),
            "bwd separate": lambda: (C.relu_backward(g, r, out=gp),
                                     C.batch_norm_backward(gp, x, w, m, s, True, out=(dx, dw, db))),
            "bwd fused": lambda: C.batch_norm_backward(g, x, w, m, s, True, relu_output=r, out=(dx, dw, db)),
        }
        for cold in (False, True):
            per = {k: [] for k in configs}
            for rnd in range(args.rounds):
                names = list(configs)
                names = names[rnd % len(names):] + names[:rnd % len(names)]  # rotate the order
                for k in names:
                    per[k].append(_median_ms(configs[k], cold, flush))
            row = " ".join(f"{statistics.median(per[k]):>{len(k) if len(k) > 10 else 10}.3f}" for k in configs)
            print(f"{str(shape):20s} {'cold' if cold else 'warm':6s} {row}")


if __name__ == "__main__":
    main()
