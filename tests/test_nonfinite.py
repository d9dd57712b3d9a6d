"""NaN and infinity: both backends follow PyTorch's values on the registry's "nonfinite" samples of the
losses whose rules were chosen by comparing with PyTorch (cross_entropy, multi_margin,
binary_cross_entropy_with_logits); the registry's generated tests hold the two backends to each other on
every "nonfinite" sample."""
import numpy as np
import pytest

from fastbp import _backend
from fastbp.registry import by_name

torch = pytest.importorskip("torch")
F = torch.nn.functional
C, R = _backend.compiled, _backend.reference


def _samples(name):
    return [c for c in by_name(name).samples(np.random.default_rng(0), np.dtype(np.float64))
            if c.id.startswith("nonfinite")]


def _torch_loss_and_grad(fn, x, *args, **kw):
    tx = torch.tensor(x, requires_grad=True)
    loss = fn(tx, *args, **kw)
    loss.sum().backward()
    return loss.detach().numpy(), tx.grad.numpy()


def _check(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)  # equal_nan: NaN in the same places


@pytest.mark.parametrize("B", [C, R], ids=["compiled", "reference"])
def test_cross_entropy_nonfinite_follows_pytorch(B):
    for case in _samples("cross_entropy"):
        x, labels = case.inputs
        ls = case.params["label_smoothing"]
        want, want_g = _torch_loss_and_grad(F.cross_entropy, x, torch.tensor(labels), reduction="none",
                                            label_smoothing=ls)
        loss, lse = B.cross_entropy_forward(x, labels, reduction="none", label_smoothing=ls)
        _check(loss, want)
        _check(B.cross_entropy_backward(np.ones(len(labels)), x, labels, lse, reduction="none", label_smoothing=ls),
               want_g)
    assert np.isinf(B.cross_entropy_forward(np.array([[-np.inf, 1.0]]), np.array([0]))[0])  # mean too


@pytest.mark.parametrize("B", [C, R], ids=["compiled", "reference"])
def test_multi_margin_nonfinite_follows_pytorch(B):
    (case,) = _samples("multi_margin")
    x, labels = case.inputs
    want, want_g = _torch_loss_and_grad(F.multi_margin_loss, x, torch.tensor(labels), reduction="none")
    _check(B.multi_margin_forward(x, labels, reduction="none"), want)
    _check(B.multi_margin_backward(np.ones(len(labels)), x, labels, reduction="none"), want_g)


@pytest.mark.parametrize("B", [C, R], ids=["compiled", "reference"])
def test_bce_with_logits_nonfinite_follows_pytorch(B):
    for case in _samples("bce_with_logits"):
        x, t = case.inputs
        pw = case.params.get("pos_weight")
        kw = {} if pw is None else {"pos_weight": torch.tensor(pw)}
        want, want_g = _torch_loss_and_grad(F.binary_cross_entropy_with_logits, x, torch.tensor(t), reduction="none",
                                            **kw)
        _check(B.bce_with_logits_forward(x, t, reduction="none", pos_weight=pw), want)
        _check(B.bce_with_logits_backward(np.ones(len(x)), x, t, reduction="none", pos_weight=pw), want_g)
    # finite logits keep their values (the formula changed form, not meaning)
    x = np.linspace(-30, 30, 13)
    t = np.linspace(0, 1, 13)
    want, _ = _torch_loss_and_grad(F.binary_cross_entropy_with_logits, x, torch.tensor(t), reduction="none")
    np.testing.assert_allclose(B.bce_with_logits_forward(x, t, reduction="none"), want, rtol=1e-12, atol=1e-14)


def _torch_with_grad(fn, x, labels, g, weight, **kw):
    tx = torch.tensor(x, requires_grad=True)
    loss = fn(tx, torch.tensor(labels), weight=None if weight is None else torch.tensor(weight), **kw)
    loss.backward(torch.tensor(g))
    return loss.detach().numpy(), tx.grad.numpy()


def _random_cases(seed, count):
    """Small (N, C) cases with NaN/+-inf in the scores, the incoming gradient and the class weights, zero
    weights (a zero total weight for the mean), C = 1 and all three reductions."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n, c = rng.integers(1, 5, size=2)
        x, y = rng.uniform(-3, 3, (n, c)), rng.integers(0, c, n)
        red = str(rng.choice(["none", "mean", "sum"]))
        w = rng.uniform(0, 2, c) if rng.random() < 0.5 else None
        if w is not None and rng.random() < 0.3:
            w[rng.integers(c)] = 0
        if w is not None and rng.random() < 0.2:
            w[:] = 0
        g = rng.uniform(-2, 2, n) if red == "none" else np.array(rng.uniform(-2, 2))
        for a, p in ((x, 0.7), (g, 0.4), (w, 0.3)):
            if a is not None and rng.random() < p:
                a.flat[rng.integers(a.size)] = rng.choice([np.nan, np.inf, -np.inf])
        yield x, y, red, w, g, rng


def _same(got, want):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-9, atol=1e-12)  # NaN/inf in place


@pytest.mark.parametrize("B", [C, R], ids=["compiled", "reference"])
def test_cross_entropy_nonfinite_gradient_weight_and_mean_follow_pytorch(B):
    # an infinite or NaN incoming gradient or class weight: PyTorch forms gl - p sum(gl) (gl the gradient
    # w.r.t. log-softmax), so e.g. an infinite g gives NaN on the target, not -inf; a zero total weight
    # with label smoothing makes the mean NaN (each term is reduced on its own), not inf
    checked = 0
    for x, y, red, w, g, rng in _random_cases(1, 300):
        eps = float(rng.choice([0.0, 0.1]))
        want, want_g = _torch_with_grad(F.cross_entropy, x, y, g, w, reduction=red, label_smoothing=eps)
        loss, lse = B.cross_entropy_forward(x, y, reduction=red, weight=w, label_smoothing=eps)
        _same(loss, want)
        _same(B.cross_entropy_backward(g, x, y, lse, reduction=red, weight=w, label_smoothing=eps), want_g)
        checked += not np.isfinite(want_g).all()
    assert checked > 50  # the non-finite patterns were reached
    x, y, w = np.array([[0.5, 1.0], [2.0, -1.0]]), np.array([1, 1]), np.array([1.0, 0.0])
    assert np.isnan(B.cross_entropy_forward(x, y, weight=w, label_smoothing=0.1)[0])


@pytest.mark.parametrize("B", [C, R], ids=["compiled", "reference"])
def test_multi_margin_nonfinite_gradient_and_weight_follow_pytorch(B):
    # PyTorch multiplies by the incoming gradient last (a NaN/inf g reaches the inactive entries and the
    # target, 0 * NaN = NaN, also for C = 1) and weights only active terms (a row without one is 0 for any
    # weight)
    checked = 0
    for x, y, red, w, g, rng in _random_cases(2, 300):
        p, margin = int(rng.choice([1, 2])), float(rng.choice([1.0, 0.5]))
        want, want_g = _torch_with_grad(F.multi_margin_loss, x, y, g, w, p=p, margin=margin, reduction=red)
        _same(B.multi_margin_forward(x, y, reduction=red, p=p, margin=margin, weight=w), want)
        _same(B.multi_margin_backward(g, x, y, reduction=red, p=p, margin=margin, weight=w), want_g)
        checked += not np.isfinite(want_g).all()
    assert checked > 50
    dx = B.multi_margin_backward(np.array([np.nan]), np.array([[0.3]]), np.array([0]), reduction="none")
    assert np.isnan(dx).all()


def test_large_nonfinite_rows_agree_across_backends():
    # large enough for the kernels' OpenMP branches: the per-row PyTorch-order path for a non-finite
    # incoming gradient or weight runs inside the parallel loop
    rng = np.random.default_rng(5)
    for dt, rtol in ((np.float32, 1e-4), (np.float64, 1e-10)):
        n, c = 4000, 50
        x, y = rng.standard_normal((n, c)).astype(dt), rng.integers(0, c, n)
        w = rng.uniform(0, 2, c).astype(dt)
        w[3], w[7] = np.inf, 0
        g = rng.standard_normal(n).astype(dt)
        g[::7], g[::11] = np.inf, np.nan
        x.flat[rng.integers(0, x.size, 300)] = -np.inf
        x.flat[rng.integers(0, x.size, 30)] = np.nan
        for ww in (None, w):
            for eps in (0.0, 0.1):
                got = []
                for B in (C, R):
                    loss, lse = B.cross_entropy_forward(x, y, reduction="none", weight=ww, label_smoothing=eps)
                    got.append((loss, B.cross_entropy_backward(g, x, y, lse, reduction="none", weight=ww,
                                                               label_smoothing=eps)))
                np.testing.assert_allclose(got[0][0], got[1][0], rtol=rtol)
                np.testing.assert_allclose(got[0][1], got[1][1], rtol=rtol, atol=1e-6)
            for p in (1, 2):
                for fn in ("forward", "backward"):
                    args = (x, y) if fn == "forward" else (g, x, y)
                    a, b = (getattr(B, "multi_margin_" + fn)(*args, reduction="none", p=p, weight=ww) for B in (C, R))
                    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)
