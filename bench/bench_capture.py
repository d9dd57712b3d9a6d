"""Captured training step (fastbp.compile) against the eager step, PyTorch and JAX jit, each framework ALONE in
its own process in the default environment, processes alternated over several rounds.

    python bench/bench_capture.py [--rounds 3] [--only mlp64,lenet64] [--frameworks eager,captured,torch,jax]

Workloads (real MNIST digits from fastbp.data.load_mnist_5k(), the same batches for every framework, float32):
  mlp1 / mlp64 / mlp256: 784-256-128-10 ReLU MLP, cross-entropy, SGD momentum 0.9, batch 1 / 64 / 256
  lenet64: LeNet-5 (conv5x5(6, pad 2)-relu-maxpool-conv5x5(16)-relu-maxpool-120-84-10), Adam, batch 64
Frameworks: fastbp eager, fastbp captured (fastbp.compile; captured_nofuse, not run by default:
fastbp.compile(fn, fuse=False), to measure the fusions), PyTorch (if installed), JAX jit (if installed:
`pip install jax`; forward, loss, grad and the optimizer update in one jitted function, block_until_ready).
Each process warms up, then times 7 blocks of steps and reports its median ms per step; the table gives, per
configuration, the median and range of those medians over the rounds, and the captured step's ratio to the
best of PyTorch and JAX (per round, then the median and range). Targets (issue 13): captured MLP <= 0.9x the best at every
batch, LeNet <= 0.7x. The machine may be shared: say so with any figure (load average is printed)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKLOADS = ("mlp1", "mlp64", "mlp256", "lenet64")
FRAMEWORKS = ("eager", "captured", "torch", "jax")


def batches(workload, n=16):
    import numpy as np
    import fastbp
    X, y = fastbp.data.load_mnist_5k()
    batch = int(workload[3:] if workload.startswith("mlp") else workload[5:])
    if workload.startswith("mlp"):
        X = X.reshape(len(X), 784)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    n = min(n, len(X) // batch)
    return [(np.ascontiguousarray(X[order[i * batch:(i + 1) * batch]]),
             np.ascontiguousarray(y[order[i * batch:(i + 1) * batch]])) for i in range(n)]


def fastbp_step(workload, data, captured, fuse=True):
    import fastbp
    from fastbp import nn, optim
    fastbp.manual_seed(0)
    if workload.startswith("mlp"):
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                              nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(),
                              nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
        opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    run = fastbp.compile(step, fuse=fuse) if captured else step
    tensors = [(fastbp.tensor(x), fastbp.tensor(y)) for x, y in data]
    state = [0]

    def one():
        i = state[0] = (state[0] + 1) % len(tensors)
        run(*tensors[i])
    return one


def torch_step(workload, data):
    import torch
    torch.manual_seed(0)
    nn = torch.nn
    if workload.startswith("mlp"):
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                              nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(),
                              nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    tensors = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]
    state = [0]

    def one():
        i = state[0] = (state[0] + 1) % len(tensors)
        x, y = tensors[i]
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return one


def jax_step(workload, data):
    import jax
    import jax.numpy as jnp
    import numpy as np
    rng = np.random.default_rng(0)

    def dense(i, o):
        b = 1 / np.sqrt(i)
        return [jnp.asarray(rng.uniform(-b, b, (i, o)).astype(np.float32)),
                jnp.asarray(rng.uniform(-b, b, o).astype(np.float32))]

    def conv(c, o, k):
        b = 1 / np.sqrt(c * k * k)
        return [jnp.asarray(rng.uniform(-b, b, (o, c, k, k)).astype(np.float32)),
                jnp.asarray(rng.uniform(-b, b, o).astype(np.float32))]

    def xent(logits, y):
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def pool(h):
        return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def cv(h, w, b, pad):
        h = jax.lax.conv_general_dilated(h, w, (1, 1), [(pad, pad), (pad, pad)],
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return h + b[None, :, None, None]

    if workload.startswith("mlp"):
        params = dense(784, 256) + dense(256, 128) + dense(128, 10)

        def forward(p, x):
            h = jax.nn.relu(x @ p[0] + p[1])
            h = jax.nn.relu(h @ p[2] + p[3])
            return h @ p[4] + p[5]
        state = [jnp.zeros_like(q) for q in params]

        @jax.jit
        def step(params, state, x, y):
            loss, g = jax.value_and_grad(lambda p: xent(forward(p, x), y))(params)
            state = [0.9 * m + gi for m, gi in zip(state, g)]
            params = [q - 0.01 * m for q, m in zip(params, state)]
            return params, state, loss
    else:
        params = conv(1, 6, 5) + conv(6, 16, 5) + dense(400, 120) + dense(120, 84) + dense(84, 10)

        def forward(p, x):
            h = pool(jax.nn.relu(cv(x, p[0], p[1], 2)))
            h = pool(jax.nn.relu(cv(h, p[2], p[3], 0)))
            h = h.reshape(h.shape[0], -1)
            h = jax.nn.relu(h @ p[4] + p[5])
            h = jax.nn.relu(h @ p[6] + p[7])
            return h @ p[8] + p[9]
        state = ([jnp.zeros_like(q) for q in params], [jnp.zeros_like(q) for q in params], jnp.zeros((), jnp.int32))

        @jax.jit
        def step(params, state, x, y):
            loss, g = jax.value_and_grad(lambda p: xent(forward(p, x), y))(params)
            m, v, t = state
            t = t + 1
            m = [0.9 * a + 0.1 * gi for a, gi in zip(m, g)]
            v = [0.999 * a + 0.001 * gi * gi for a, gi in zip(v, g)]
            c1 = 1 - 0.9 ** t
            c2 = 1 - 0.999 ** t
            params = [q - 1e-3 * (a / c1) / (jnp.sqrt(b / c2) + 1e-8) for q, a, b in zip(params, m, v)]
            return params, (m, v, t), loss
    dev = [(jnp.asarray(x), jnp.asarray(y)) for x, y in data]
    box = [params, state, 0]

    def one():
        i = box[2] = (box[2] + 1) % len(dev)
        box[0], box[1], loss = step(box[0], box[1], *dev[i])
        loss.block_until_ready()
    return one


def worker(workload, framework):
    data = batches(workload)
    if framework in ("eager", "captured", "captured_nofuse"):
        one = fastbp_step(workload, data, framework != "eager", fuse=framework != "captured_nofuse")
    elif framework == "torch":
        one = torch_step(workload, data)
    else:
        one = jax_step(workload, data)
    n = {"mlp1": 400, "mlp64": 100, "mlp256": 40, "lenet64": 30}[workload]
    for _ in range(max(20, n // 4)):
        one()
    blocks = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(n):
            one()
        blocks.append((time.perf_counter() - t) / n * 1e3)
    print(json.dumps({"median_ms": statistics.median(blocks), "min_ms": min(blocks)}))


def available(framework):
    mod = {"torch": "torch", "jax": "jax"}.get(framework)
    if mod is None:
        return True
    return subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True).returncode == 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    ap.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "FRAMEWORK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return
    workloads = [w for w in args.only.split(",") if w]
    frameworks = [f for f in args.frameworks.split(",") if f and available(f)]
    here = os.path.abspath(__file__)
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(here))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    res = {(w, f): [] for w in workloads for f in frameworks}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for r in range(args.rounds):
        order = frameworks if r % 2 == 0 else frameworks[::-1]
        for w in workloads:
            for f in order:
                p = subprocess.run([sys.executable, here, "--worker", w, f], capture_output=True, text=True,
                                   env=env, timeout=900)
                if p.returncode != 0:
                    print(f"{w} {f}: failed\n{p.stderr[-2000:]}", file=sys.stderr)
                    continue
                res[(w, f)].append(json.loads(p.stdout.strip().splitlines()[-1])["median_ms"])
        print(f"round {r + 1}/{args.rounds} done, load average {os.getloadavg()}", flush=True)
    print("\n| workload | " + " | ".join(frameworks) + " | captured / eager | captured / best(torch, jax) |")
    print("|---" * (len(frameworks) + 3) + "|")
    for w in workloads:
        cells = []
        for f in frameworks:
            v = res[(w, f)]
            cells.append(f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" if v else "-")
        ratio_e = ratio_b = "-"
        cap = res.get((w, "captured"), [])
        if cap and res.get((w, "eager")):
            rs = [c / e for c, e in zip(cap, res[(w, "eager")])]
            ratio_e = f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})"
        others = [f for f in ("torch", "jax") if res.get((w, f))]
        if cap and others:
            rs = [c / min(res[(w, f)][i] for f in others if i < len(res[(w, f)]))
                  for i, c in enumerate(cap)]
            ratio_b = f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})"
        print(f"| {w} (ms/step) | " + " | ".join(cells) + f" | {ratio_e} | {ratio_b} |")
    print(f"\nload average at end: {os.getloadavg()}")
    os.makedirs(os.path.join(os.path.dirname(here), "results"), exist_ok=True)
    out = os.path.join(os.path.dirname(here), "results", "capture.json")
    with open(out, "w") as f:
        json.dump({f"{w} {fw}": v for (w, fw), v in res.items()}, f, indent=1)
    print(f"per-round medians (ms): {out}")


if __name__ == "__main__":
    main()
