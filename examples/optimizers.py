"""Train the same small network with each optimizer and a few learning-rate schedules, and compare the
loss curves side by side. Data: scikit-learn's bundled 8x8 handwritten digits (nothing is downloaded).

    python examples/optimizers.py                     # table of training loss per epoch
    python examples/optimizers.py --png curves.png    # also plot the curves (needs matplotlib)
    python examples/optimizers.py --epochs 30 --backend reference

Every run starts from the same initial weights (fastbp.manual_seed) and sees the mini-batches in the
same order, so the curves differ only by the optimizer and schedule. L-BFGS is full-batch: one "epoch"
is one `step(closure)` of up to 5 iterations with a strong-Wolfe line search."""
import argparse
import time

import numpy as np

import fastbp
from fastbp import nn, optim
from fastbp.nn.utils import clip_grad_norm_
from fastbp.optim import lr_scheduler as sched


def build_model():
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def steps_per_epoch(n, batch_size):
    return -(-n // batch_size)


# name -> (make optimizer, make per-iteration scheduler or None, clip max_norm or None)
def runs(spe, epochs):
    total = spe * epochs
    return {
        "SGD": (lambda ps: optim.SGD(ps, lr=0.05), None, None),
        "SGD+Nesterov": (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True), None, None),
        "SGD+mom+StepLR": (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                           lambda o: sched.StepLR(o, step_size=max(1, total // 3), gamma=0.3), None),
        "SGD+mom+clip": (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), None, 1.0),
        "Adagrad": (lambda ps: optim.Adagrad(ps, lr=0.05), None, None),
        "RMSprop": (lambda ps: optim.RMSprop(ps, lr=1e-3), None, None),
        "RMSprop+ctr+mom": (lambda ps: optim.RMSprop(ps, lr=3e-4, momentum=0.9, centered=True), None, None),
        "Adam": (lambda ps: optim.Adam(ps, lr=1e-3), None, None),
        "AdamW": (lambda ps: optim.AdamW(ps, lr=1e-3, weight_decay=1e-2), None, None),
        "Adam+warmup+cos": (lambda ps: optim.Adam(ps, lr=3e-3),
                            lambda o: sched.LinearWarmup(o, spe, after=sched.CosineAnnealingLR(o, total - spe)),
                            None),
        "Adam+warmup+isqrt": (lambda ps: optim.Adam(ps, lr=3e-3),
                              lambda o: sched.LinearWarmup(o, spe, after=sched.InverseSqrtLR(o, spe)), None),
        "L-BFGS": (lambda ps: optim.LBFGS(ps, lr=1.0, max_iter=5, history_size=10, line_search_fn="strong_wolfe"),
                   None, None),
    }


def full_loss(model, X, y):
    with fastbp.no_grad():
        return nn.CrossEntropyLoss()(model(fastbp.tensor(X)), y).item()


def accuracy(model, X, y):
    with fastbp.no_grad():
        return float((model(fastbp.tensor(X)).data.argmax(axis=1) == y).mean())


def train(name, make_opt, make_sched, clip, data, args):
    X_train, X_test, y_train, y_test = data
    fastbp.manual_seed(args.seed)
    model = build_model()
    opt = make_opt(model.parameters())
    scheduler = make_sched(opt) if make_sched else None
    loss_fn = nn.CrossEntropyLoss()
    curve = [full_loss(model, X_train, y_train)]
    batch_rng = np.random.default_rng(args.seed)
    Xt = fastbp.tensor(X_train)

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(Xt), y_train)
        loss.backward()
        return loss

    for _ in range(args.epochs):
        if isinstance(opt, optim.LBFGS):
            opt.step(closure)
        else:
            for xb, yb in fastbp.data.batches(X_train, y_train, args.batch_size, rng=batch_rng):
                opt.zero_grad()
                loss_fn(model(fastbp.tensor(xb)), yb).backward()
                if clip is not None:
                    clip_grad_norm_(model.parameters(), clip)
                opt.step()
                if scheduler is not None:
                    scheduler.step()  # per iteration
        curve.append(full_loss(model, X_train, y_train))
    return curve, accuracy(model, X_test, y_test)


def print_table(names, curves, accs, every):
    widths = [max(6, len(n)) for n in names]
    print("training loss (whole training set) after each epoch; last row: held-out accuracy")
    print("epoch  " + "  ".join(n.rjust(w) for n, w in zip(names, widths)))
    n_epochs = len(curves[names[0]]) - 1
    for e in range(n_epochs + 1):
        if e % every and e != n_epochs:
            continue
        print(f"{e:5d}  " + "  ".join(f"{curves[n][e]:{w}.4f}" for n, w in zip(names, widths)))
    print("test   " + "  ".join(f"{accs[n]:{w}.4f}" for n, w in zip(names, widths)))


def plot(names, curves, path):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5.5))
    palette = [plt.cm.tab20(i) for i in list(range(0, 20, 2)) + list(range(1, 20, 2))]
    for i, n in enumerate(names):
        ax.plot(range(len(curves[n])), curves[n], label=n, color=palette[i % len(palette)],
                linestyle="--" if "+" in n else "-")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training cross-entropy")
    ax.set_title("fastbp optimizers on digits (64-64-10 MLP, same init and batch order)")
    ax.legend(ncol=2, fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=["compiled", "reference"], default="compiled")
    ap.add_argument("--only", nargs="*", help="run only these (names as in the table)")
    ap.add_argument("--every", type=int, default=2, help="print every n-th epoch")
    ap.add_argument("--png", help="write the loss curves to this PNG file (needs matplotlib)")
    args = ap.parse_args(argv)

    fastbp.set_backend(args.backend)
    X, y = fastbp.data.load_digits()
    data = fastbp.data.train_test_split(X, y, test_size=0.2, seed=args.seed)
    spe = steps_per_epoch(len(data[0]), args.batch_size)
    table = runs(spe, args.epochs)
    names = args.only or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        ap.error(f"unknown run(s) {unknown}; choose from {list(table)}")
    print(f"digits: {len(data[0])} train / {len(data[1])} test, batch {args.batch_size} ({spe} steps per epoch), "
          f"{args.epochs} epochs, backend={fastbp.get_backend()}")
    curves, accs = {}, {}
    start = time.perf_counter()
    for n in names:
        curves[n], accs[n] = train(n, *table[n], data, args)
    print_table(names, curves, accs, args.every)
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.png:
        plot(names, curves, args.png)
    return curves, accs


if __name__ == "__main__":
    main()
