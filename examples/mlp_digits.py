"""Train a 64-128-64-10 ReLU MLP on scikit-learn's bundled 8x8 handwritten digits (shipped inside the
scikit-learn package; nothing is downloaded).

    python examples/mlp_digits.py                      # compiled Cython kernels
    python examples/mlp_digits.py --backend reference  # the same run on the NumPy references

With the same seed both backends print the same losses and accuracies: in float64 (--dtype float64) to
about 12 digits; in float32, rounding differences grow over the epochs and the last digits can differ."""
import argparse
import time

import numpy as np

import fastbp
from fastbp import nn, optim


def build_model():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def accuracy(model, X, y, batch=512):
    correct = 0
    with fastbp.no_grad():
        for i in range(0, len(X), batch):
            correct += int((model(fastbp.tensor(X[i:i + batch])).data.argmax(axis=1) == y[i:i + batch]).sum())
    return correct / len(X)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["compiled", "reference"], default="compiled")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args(argv)

    fastbp.set_backend(args.backend)
    fastbp.manual_seed(args.seed)
    X, y = fastbp.data.load_digits(dtype=np.dtype(args.dtype))
    X_train, X_test, y_train, y_test = fastbp.data.train_test_split(X, y, test_size=0.2, seed=args.seed)
    print(f"digits: {len(X_train)} train / {len(X_test)} test, backend={fastbp.get_backend()}")

    model = build_model().to(args.dtype)
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    batch_rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        total, n = 0.0, 0
        for xb, yb in fastbp.data.batches(X_train, y_train, args.batch_size, rng=batch_rng):
            opt.zero_grad()
            loss = loss_fn(model(fastbp.tensor(xb)), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
            n += len(xb)
        model.eval()
        print(f"epoch {epoch:3d}  loss {total / n:.6f}  train acc {accuracy(model, X_train, y_train):.4f}  "
              f"test acc {accuracy(model, X_test, y_test):.4f}")
    acc = accuracy(model, X_test, y_test)
    print(f"final held-out accuracy: {acc:.4f}  ({time.perf_counter() - start:.2f} s)")
    return acc


if __name__ == "__main__":
    main()
