"""PyTorch scripts run on fastbp by changing their imports.

* PyTorch's MNIST example (pytorch/examples, mnist/main.py): its Net, train() and test() written as there,
  with `fastbp` in place of `torch`, run a few Adadelta + StepLR steps on real MNIST digits.
* A CIFAR-style BasicBlock ResNet (BatchNorm, skip connections, 1x1 projection shortcuts, global average
  pooling), written once and built with fastbp and with PyTorch (when installed): from the same weights,
  outputs, gradients and running statistics agree to 1e-10 in float64, in training and evaluation mode,
  across optimizer steps, and state_dicts round-trip both ways (keys, shapes and dtypes identical)."""
import numpy as np
import pytest

import fastbp
import fastbp.nn as nn
import fastbp.nn.functional as F
import fastbp.optim as optim
from fastbp.optim.lr_scheduler import StepLR

torch = fastbp  # the script below is PyTorch's, with fastbp in place of torch


# ----- pytorch/examples mnist/main.py, as written there -------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def train(args, model, device, train_loader, optimizer, epoch):
    model.train()
    losses = []
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if args["dry_run"]:
            break
    return losses


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction='sum').item()  # sum up batch loss
            pred = output.argmax(dim=1, keepdim=True)  # get the index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()

    test_loss /= len(test_loader.dataset)
    return test_loss, correct / len(test_loader.dataset)


test.__test__ = False  # the example's evaluation function, not a pytest test


class _Loader:
    """A stand-in for torch.utils.data.DataLoader over in-memory arrays (batches of Tensors, .dataset)."""

    def __init__(self, X, y, batch_size):
        self.dataset, self.X, self.y, self.batch_size = X, X, y, batch_size

    def __iter__(self):
        for i in range(0, len(self.X), self.batch_size):
            yield fastbp.tensor(self.X[i:i + self.batch_size]), fastbp.tensor(self.y[i:i + self.batch_size])


def test_pytorch_mnist_example_runs():
    X, y = fastbp.data.load_mnist_5k()  # sorted by digit: take a shuffled split
    X = ((X - 0.1307) / 0.3081).astype(np.float32)  # the example's Normalize((0.1307,), (0.3081,))
    X_train, X_test, y_train, y_test = fastbp.data.train_test_split(X, y.astype(np.int64), test_size=128, seed=0)
    train_loader = _Loader(X_train[:256], y_train[:256], 32)
    test_loader = _Loader(X_test, y_test, 64)
    args = {"dry_run": False, "lr": 1.0, "gamma": 0.7}
    torch.manual_seed(1)
    device = torch.device("cpu")
    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=args["lr"])
    scheduler = StepLR(optimizer, step_size=1, gamma=args["gamma"])
    loss0, acc0 = test(model, device, test_loader)
    history = []
    for epoch in range(1, 3):
        history += train(args, model, device, train_loader, optimizer, epoch)
        test_loss, acc = test(model, device, test_loader)
        scheduler.step()
    assert len(history) == 16 and all(np.isfinite(history))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.7 ** 2)
    assert test_loss < loss0 and acc > acc0 and acc > 0.5, (loss0, acc0, test_loss, acc)


# ----- a BasicBlock ResNet, one definition for both frameworks -----------------------------------------------
def resnet_classes(nn, F):
    class BasicBlock(nn.Module):
        def __init__(self, in_planes, planes, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes, momentum=None)  # cumulative average, for coverage
            self.shortcut = nn.Identity()
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(planes))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out = out + self.shortcut(x)
            return F.relu(out)

    class ResNet(nn.Module):
        def __init__(self, width=4, blocks=(2, 1, 1), num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            layers, in_planes = [], width
            for i, n in enumerate(blocks):
                planes = width * 2 ** i
                for k in range(n):
                    layers.append(BasicBlock(in_planes, planes, 2 if (i > 0 and k == 0) else 1))
                    in_planes = planes
            self.layers = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(0.0)
            self.fc = nn.Linear(in_planes, num_classes)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.pool(self.layers(out))
            return self.fc(self.dropout(out.reshape(out.shape[0], -1)))

    return ResNet


def _close(a, b, what):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=what)


def _compare_state(ours, theirs):
    sd_o, sd_t = ours.state_dict(), theirs.state_dict()
    assert list(sd_o) == list(sd_t)
    for k in sd_t:
        t = sd_t[k].numpy()
        assert sd_o[k].shape == t.shape and sd_o[k].dtype == t.dtype, k
        _close(sd_o[k], t, k)


def test_resnet_matches_pytorch_train_eval_and_state_dict_round_trip():
    torch_ = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    torch_.manual_seed(0)
    theirs = resnet_classes(torch_.nn, torch_.nn.functional)().double()
    ours = resnet_classes(nn, F)().double()
    # PyTorch -> NumPy -> fastbp: every key (buffers included) is known, with the same shape
    res = ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert any(k.endswith("num_batches_tracked") for k in ours.state_dict())
    _compare_state(ours, theirs)
    opt_o = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt_t = torch_.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for step in range(3):
        x = rng.standard_normal((6, 1, 12, 12)) + step
        labels = rng.integers(0, 10, 6)
        out_o = ours(fastbp.tensor(x))
        out_t = theirs(torch_.tensor(x))
        _close(out_o.data, out_t.detach().numpy(), f"train-mode output, step {step}")
        loss_o = nn.CrossEntropyLoss()(out_o, labels)
        loss_t = torch_.nn.CrossEntropyLoss()(out_t, torch_.tensor(labels))
        opt_o.zero_grad()
        opt_t.zero_grad()
        loss_o.backward()
        loss_t.backward()
        grads_t = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            _close(p.grad, grads_t[name].grad.numpy(), f"gradient of {name}, step {step}")
        _compare_state(ours, theirs)  # running statistics and num_batches_tracked
        opt_o.step()
        opt_t.step()
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((5, 1, 12, 12))
    xo = fastbp.tensor(x, requires_grad=True)
    xt = torch_.tensor(x, requires_grad=True)
    out_o, out_t = ours(xo), theirs(xt)
    _close(out_o.data, out_t.detach().numpy(), "eval-mode output")
    g = rng.standard_normal(out_o.shape)
    out_o.backward(g)
    out_t.backward(torch_.tensor(g))
    _close(xo.grad, xt.grad.numpy(), "eval-mode input gradient")
    # fastbp -> NumPy -> PyTorch, into a freshly initialised model
    fresh = resnet_classes(torch_.nn, torch_.nn.functional)().double()
    fresh.load_state_dict({k: torch_.from_numpy(v) for k, v in ours.state_dict().items()}, strict=True)
    _compare_state(ours, fresh)
    fresh.eval()
    _close(fresh(torch_.tensor(x)).detach().numpy(), out_o.data, "PyTorch model loaded from fastbp")
