"""Pick a hyperparameter by 5-fold stratified cross-validation, then measure the choice on held-out data.

The procedure from the lecture notes, on scikit-learn's 8x8 digits:
1. hold out a test set (20%, stratified) and do not look at it until the end;
2. on the rest, for each weight-decay value, 5-fold stratified CV of an MLP: train on four folds, validate
   on the fifth, rotate, and average the validation scores (mean +- std over folds);
3. pick the value with the best mean validation accuracy, retrain on all of train+val, report test accuracy.

    python examples/cross_validation.py
    python examples/cross_validation.py --weight-decays 0 1e-3 1e-2 --epochs 40
"""
import argparse
import time

import numpy as np

import fastbp
from fastbp import nn, optim
from fastbp.data import DataLoader, TensorDataset, load_digits, train_test_split
from fastbp.train import cross_validate, evaluate, fit


def mlp():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weight-decays", type=float, nargs="+", default=[0.0, 1e-3, 1e-2])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    fastbp.manual_seed(args.seed)
    X, y = load_digits()
    X_dev, X_test, y_dev, y_test = train_test_split(X, y, test_size=0.2, stratify=True, seed=args.seed)
    print(f"digits: {len(X_dev)} for cross-validation (train+val), {len(X_test)} held out for the test; "
          f"{args.folds}-fold stratified CV, Adam lr={args.lr}, {args.epochs} epochs, batch {args.batch_size}")

    results = {}
    for wd in args.weight_decays:
        t0 = time.perf_counter()
        res = cross_validate(mlp, X_dev, y_dev, cv=args.folds, stratified=True, seed=args.seed,
                             loss_fn=nn.CrossEntropyLoss(),
                             optimizer=lambda params, wd=wd: optim.Adam(params, lr=args.lr, weight_decay=wd),
                             epochs=args.epochs, batch_size=args.batch_size, progress=False)
        results[wd] = res
        print(f"\nweight_decay={wd:g}  ({time.perf_counter() - t0:.1f} s)")
        print(res.table())

    print("\nsummary (validation accuracy over folds)")
    print(f"{'weight_decay':>12}  {'mean':>7}  {'std':>7}  {'val_loss':>8}")
    for wd, res in results.items():
        print(f"{wd:>12g}  {res.mean['val_accuracy']:7.4f}  {res.std['val_accuracy']:7.4f}  "
              f"{res.mean['val_loss']:8.4f}")
    best = max(results, key=lambda wd: (results[wd].mean["val_accuracy"], -results[wd].mean["val_loss"]))
    print(f"best: weight_decay={best:g} (mean validation accuracy {results[best].mean['val_accuracy']:.4f} "
          f"+- {results[best].std['val_accuracy']:.4f})")

    fastbp.manual_seed(args.seed)
    model = mlp()
    opt = optim.Adam(model.parameters(), lr=args.lr, weight_decay=best)
    fit(model, nn.CrossEntropyLoss(), opt, DataLoader(TensorDataset(X_dev, y_dev), batch_size=args.batch_size,
                                                      shuffle=True), epochs=args.epochs, progress=False)
    test = evaluate(model, (X_test, y_test), nn.CrossEntropyLoss())
    print(f"retrained on all {len(X_dev)} train+val samples with weight_decay={best:g}: held-out test accuracy "
          f"{test['accuracy']:.4f} (loss {test['loss']:.4f}, {len(X_test)} samples)")
    return best, test["accuracy"]


if __name__ == "__main__":
    main()
