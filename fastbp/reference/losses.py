"""NumPy references for csrc/losses.pyx."""
import numpy as np

from ._util import as_float_array, check_labels, check_reduction, check_same_dtype, reduce


def _check_ce(logits, labels):
    as_float_array(logits, "logits", 2)
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"cross_entropy: logits must be non-empty (N, C), got shape {logits.shape}")
    return check_labels(labels, logits.shape[0], logits.shape[1])


def _scale(grad_out, reduction, shape, count, dtype):
    g = np.asarray(grad_out, dtype=dtype)
    if reduction == "none":
        if g.shape != shape:
            raise ValueError(f"grad_out must have shape {shape} for reduction='none', got {g.shape}")
        return g
    if g.size != 1:
        raise ValueError(f"grad_out must be a scalar for reduction={reduction!r}, got shape {g.shape}")
    return g.reshape(()) / count if reduction == "mean" else g.reshape(())


def cross_entropy_forward(logits, labels, reduction="mean"):
    """loss_n = logsumexp(x_n) - x_n[y_n]; returns (reduced loss, per-row logsumexp)."""
    check_reduction(reduction)
    labels = _check_ce(logits, labels)
    m = logits.max(axis=1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
    per_row = lse - logits[np.arange(len(labels)), labels]
    return reduce(per_row, reduction, logits.dtype), lse.astype(logits.dtype)


def cross_entropy_backward(grad_out, logits, labels, lse, reduction="mean"):
    """dL/dx_n = (softmax(x_n) - onehot(y_n)) * g (divided by N for the mean)."""
    check_reduction(reduction)
    labels = _check_ce(logits, labels)
    as_float_array(lse, "lse", 1)
    check_same_dtype(logits, "logits", lse, "lse")
    n = logits.shape[0]
    if lse.shape[0] != n:
        raise ValueError(f"lse has shape {lse.shape}, expected ({n},)")
    g = _scale(grad_out, reduction, (n,), n, logits.dtype)
    onehot = np.zeros_like(logits)
    onehot[np.arange(n), labels] = 1
    scale = g[:, None] if reduction == "none" else g
    return ((np.exp(logits - lse[:, None]) - onehot) * scale).astype(logits.dtype)


def _check_mse(pred, target):
    as_float_array(pred, "pred")
    as_float_array(target, "target")
    check_same_dtype(pred, "pred", target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"mse: pred has shape {pred.shape} but target has shape {target.shape}")
    if pred.size == 0:
        raise ValueError(f"mse: empty input of shape {pred.shape}")


def mse_forward(pred, target, reduction="mean"):
    """(pred - target)^2, reduced."""
    check_reduction(reduction)
    _check_mse(pred, target)
    return reduce((pred - target) ** 2, reduction, pred.dtype)


def mse_backward(grad_out, pred, target, reduction="mean"):
    """dL/dpred = 2 (pred - target) * g (divided by numel for the mean)."""
    check_reduction(reduction)
    _check_mse(pred, target)
    g = _scale(grad_out, reduction, pred.shape, pred.size, pred.dtype)
    return (2 * (pred - target) * g).astype(pred.dtype)
