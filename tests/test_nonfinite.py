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
