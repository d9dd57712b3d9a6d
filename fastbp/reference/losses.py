"""NumPy references for csrc/losses.pyx: each loss written as PyTorch defines it, in float64, then cast.

Kink rules: sign(0) = 0 for |d| and the L1 penalty; the hinge max(0, z) has gradient 0 at z = 0."""

import numpy as np

from ._util import (as_float_array, check_labels, check_reduction, check_same_dtype, finite_scalar,
                    with_out)

BCE_LOG_MIN = -100.0   # PyTorch clamps log(p) and log(1 - p) at -100
BCE_GRAD_EPS = 1e-12   # and divides the BCE gradient by max(p (1 - p), 1e-12)


def _reduction(reduction):
    if not isinstance(reduction, str):
        raise TypeError(f"reduction must be 'mean', 'sum' or 'none', got {type(reduction).__name__}")
    check_reduction(reduction)


def _reduce(values, reduction, denom, dtype):
    """Reduce float64 per-row / per-element values: "none" keeps them, "sum" adds, "mean" divides by denom."""
    if reduction == "none":
        return np.asarray(values.astype(dtype))  # 0-d values stay a 0-d array
    total = values.sum()
    if reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            total = np.float64(total) / np.float64(denom)
    return np.array(total, dtype=dtype)


def _scale(grad_out, reduction, shape, denom, dtype):
    """The incoming gradient: as given for "none", else a scalar (divided by denom for "mean")."""
    g = np.asarray(grad_out, dtype=dtype)
    if reduction == "none":
        if g.shape != shape:
            raise ValueError(f"grad_out must have shape {shape} for reduction='none', got {g.shape}")
        return g.astype(np.float64)
    if g.size != 1:
        raise ValueError(f"grad_out must be a scalar for reduction={reduction!r}, got shape {g.shape}")
    g = float(g.reshape(()))
    if reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.float64(g) / np.float64(denom)
    return np.float64(g)


def _check_rows(x, labels, what, xname):
    as_float_array(x, xname, 2)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what}: {xname} must be non-empty (N, C), got shape {x.shape}")
    return check_labels(labels, x.shape[0], x.shape[1])


def _class_weight(weight, x, what):
    """Class weights as float64 (C,), ones when None."""
    if weight is None:
        return np.ones(x.shape[1])
    as_float_array(weight, "weight", 1)
    check_same_dtype(x, what, weight, "weight")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight has shape {weight.shape} but {what} has shape {x.shape}; "
                         f"weight must have shape ({x.shape[1]},)")
    return weight.astype(np.float64)


# ----- softmax cross-entropy -------------------------------------------------------------------------
def _ce_prepare(logits, labels, weight, label_smoothing):
    labels = _check_rows(logits, labels, "cross_entropy", "logits")
    w = _class_weight(weight, logits, "logits")
    eps = finite_scalar(label_smoothing, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {eps}")
    return labels, w, eps


def _log_softmax64(x):
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    ls = np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    return (x - m) - ls, (m + ls)[:, 0]


@np.errstate(invalid="ignore")  # non-finite inputs: NaN where PyTorch has NaN, no warning
def cross_entropy_forward(logits, labels, reduction="mean", weight=None, label_smoothing=0.0):
    """l_n = (1 - eps) w_{y_n} (-log p_{n, y_n}) + eps / C sum_c w_c (-log p_{n, c}), p = softmax(x_n);
    mean = sum_n l_n / sum_n w_{y_n}, each of the two terms reduced on its own as PyTorch does (a zero
    total weight makes the mean NaN). Returns (reduced loss, per-row logsumexp)."""
    _reduction(reduction)
    labels, w, eps = _ce_prepare(logits, labels, weight, label_smoothing)
    n, c = logits.shape
    logp, lse = _log_softmax64(logits)
    rows = np.arange(n)
    nll = w[labels] * -logp[rows, labels]
    if eps == 0:  # without smoothing the other classes' terms are absent, not 0 * (-log p) (NaN at p = 0)
        return _reduce(nll, reduction, w[labels].sum(), logits.dtype), lse.astype(logits.dtype)
    smooth = (-logp * w).sum(axis=1)
    if reduction == "none":
        return np.asarray(((1 - eps) * nll + eps / c * smooth).astype(logits.dtype)), lse.astype(logits.dtype)
    total = (1 - eps) * _reduce(nll, reduction, w[labels].sum(), np.float64) \
        + eps / c * _reduce(smooth, reduction, w[labels].sum(), np.float64)
    return np.array(total, dtype=logits.dtype), lse.astype(logits.dtype)


@with_out
@np.errstate(invalid="ignore")
def cross_entropy_backward(grad_out, logits, labels, lse, reduction="mean", weight=None, label_smoothing=0.0):
    """PyTorch's chain: the gradient w.r.t. log p is gl_k = -(eps/C) g w_k - (1 - eps) g w_y [k == y]
    (g the incoming gradient, divided by sum_n w_{y_n} for the mean; the smoothing term only when
    eps > 0), and dl/dx_k = gl_k - p_k sum_j gl_j. Equal to
    g (p_k ((1 - eps) w_y + eps/C sum_c w_c) - (1 - eps) w_y [k == y] - eps/C w_k), and with it NaN and
    infinity fall where PyTorch's do (an infinite g or weight)."""
    _reduction(reduction)
    labels, w, eps = _ce_prepare(logits, labels, weight, label_smoothing)
    as_float_array(lse, "lse", 1)
    check_same_dtype(logits, "logits", lse, "lse")
    n, c = logits.shape
    if lse.shape[0] != n:
        raise ValueError(f"lse has shape {lse.shape}, expected ({n},)")
    g = _scale(grad_out, reduction, (n,), w[labels].sum(), logits.dtype)
    g = np.broadcast_to(np.asarray(g, dtype=np.float64), (n,))[:, None]
    p = np.exp(logits.astype(np.float64) - lse.astype(np.float64)[:, None])
    rows = np.arange(n)
    gl = np.zeros((n, c))
    if eps != 0:
        gl = -(eps / c * g) * w[None, :]
    gl[rows, labels] += w[labels] * -((1 - eps) * g[:, 0])
    return (gl - p * gl.sum(axis=1, keepdims=True)).astype(logits.dtype)


@with_out
def cross_entropy_fused(logits, labels, grad_out=1.0, reduction="mean", weight=None, label_smoothing=0.0):
    """Forward and backward together: (loss, lse, dx) with (loss, lse) = cross_entropy_forward(logits, labels,
    reduction, weight, label_smoothing) and dx = cross_entropy_backward(grad_out, logits, labels, lse,
    reduction, weight, label_smoothing); grad_out a scalar for "mean"/"sum", shape (N,) for "none"."""
    loss, lse = cross_entropy_forward(logits, labels, reduction, weight, label_smoothing)
    return loss, lse, cross_entropy_backward(grad_out, logits, labels, lse, reduction, weight, label_smoothing)


# ----- negative log-likelihood ------------------------------------------------------------------------
def nll_forward(log_probs, labels, reduction="mean", weight=None):
    """l_n = -w_{y_n} x_{n, y_n}; mean = sum_n l_n / sum_n w_{y_n}."""
    _reduction(reduction)
    labels = _check_rows(log_probs, labels, "nll", "log_probs")
    w = _class_weight(weight, log_probs, "log_probs")
    per_row = -w[labels] * log_probs[np.arange(len(labels)), labels].astype(np.float64)
    return _reduce(per_row, reduction, w[labels].sum(), log_probs.dtype)


def nll_backward(grad_out, log_probs, labels, reduction="mean", weight=None):
    """dl_n/dx_{n, k} = -w_{y_n} [k == y_n]."""
    _reduction(reduction)
    labels = _check_rows(log_probs, labels, "nll", "log_probs")
    w = _class_weight(weight, log_probs, "log_probs")
    n = log_probs.shape[0]
    g = _scale(grad_out, reduction, (n,), w[labels].sum(), log_probs.dtype)
    d = np.zeros(log_probs.shape)
    d[np.arange(n), labels] = -w[labels] * g
    return d.astype(log_probs.dtype)


# ----- multiclass hinge -------------------------------------------------------------------------------
def _mm_prepare(scores, labels, p, margin, weight, normalization):
    labels = _check_rows(scores, labels, "multi_margin", "scores")
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    margin = finite_scalar(margin, "margin")
    w = _class_weight(weight, scores, "scores")
    if normalization == "classes":
        norm = float(scores.shape[1])
    elif normalization == "sum":
        norm = 1.0
    else:
        raise ValueError(f"normalization must be 'classes' (PyTorch's MultiMarginLoss: divide by C) or "
                         f"'sum' (the plain sum over classes), got {normalization!r}")
    return labels, int(p), margin, w, norm


@np.errstate(invalid="ignore")  # non-finite inputs: NaN where PyTorch has NaN, no warning
def _margins(scores, labels, margin):
    """z_{n, j} = margin - s_{n, y_n} + s_{n, j}, with the j = y_n entries masked out (set to 0)."""
    s = scores.astype(np.float64)
    rows = np.arange(len(labels))
    z = margin - s[rows, labels][:, None] + s
    z[rows, labels] = 0.0
    return z


def multi_margin_forward(scores, labels, reduction="mean", p=1, margin=1.0, weight=None, normalization="classes"):
    """l_n = w_{y_n} sum_{j != y_n} max(0, margin - s_{n, y_n} + s_{n, j})^p / D, D = C ("classes",
    PyTorch's MultiMarginLoss) or 1 ("sum", the multiclass SVM loss); mean over the N rows."""
    _reduction(reduction)
    labels, p, margin, w, norm = _mm_prepare(scores, labels, p, margin, weight, normalization)
    z = _margins(scores, labels, margin)
    # a term counts only where z > 0 (PyTorch's rule): a NaN score contributes nothing, as in the kernel;
    # PyTorch weights each active term, so a row without one is 0 even for a non-finite weight
    active = z > 0
    active[np.arange(len(labels)), labels] = False
    with np.errstate(invalid="ignore"):
        per_row = np.where(active.any(axis=1), w[labels] * (np.where(active, z, 0.0) ** p).sum(axis=1) / norm, 0.0)
    return _reduce(per_row, reduction, scores.shape[0], scores.dtype)


def multi_margin_backward(grad_out, scores, labels, reduction="mean", p=1, margin=1.0, weight=None,
                          normalization="classes"):
    """For each j != y with z_j > 0: dl/ds_j = w_y / D (p = 1) or 2 z_j w_y / D (p = 2), and
    dl/ds_y = -sum_j dl/ds_j. At z_j == 0 the hinge's gradient is 0."""
    _reduction(reduction)
    labels, p, margin, w, norm = _mm_prepare(scores, labels, p, margin, weight, normalization)
    n = scores.shape[0]
    g = _scale(grad_out, reduction, (n,), n, scores.dtype)
    z = _margins(scores, labels, margin)
    active = z > 0
    active[np.arange(n), labels] = False
    with np.errstate(invalid="ignore"):
        # PyTorch's order: 0 where inactive (even for a non-finite weight), then times the incoming gradient,
        # so a NaN or infinite gradient reaches every entry of its row
        h = np.where(active, (1.0 if p == 1 else 2 * z) * (w[labels] / norm)[:, None], 0.0)
        h[np.arange(n), labels] = -h.sum(axis=1)
    scale = g[:, None] if reduction == "none" else g
    with np.errstate(invalid="ignore"):
        return (h * scale).astype(scores.dtype)


# ----- elementwise losses -----------------------------------------------------------------------------
def _check_elementwise(pred, target, what, pname):
    as_float_array(pred, pname)
    as_float_array(target, "target")
    check_same_dtype(pred, pname, target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"{what}: {pname} has shape {pred.shape} but target has shape {target.shape}")
    if pred.size == 0:
        raise ValueError(f"{what}: empty input of shape {pred.shape}")


def _check_unit(arr, name, what):
    bad = np.flatnonzero(~((arr >= 0) & (arr <= 1)))
    if bad.size:
        idx = tuple(int(k) for k in np.unravel_index(bad[0], arr.shape))
        raise ValueError(f"{what}: all elements of {name} must lie in [0, 1]; element {idx} is {arr[idx]}")


def _broadcast_weight(weight, x, name):
    """Elementwise weight as float64 of x's shape, ones when None."""
    if weight is None:
        return np.ones(x.shape)
    as_float_array(weight, name)
    check_same_dtype(x, "input", weight, name)
    try:
        return np.broadcast_to(weight, x.shape).astype(np.float64)
    except ValueError:
        raise ValueError(f"{name} of shape {weight.shape} cannot be broadcast to the input shape {x.shape}") from None


def mse_forward(pred, target, reduction="mean"):
    """(pred - target)^2, reduced."""
    _reduction(reduction)
    _check_elementwise(pred, target, "mse", "pred")
    d = pred.astype(np.float64) - target
    return _reduce(d * d, reduction, pred.size, pred.dtype)


def mse_backward(grad_out, pred, target, reduction="mean"):
    """dL/dpred = 2 (pred - target) * g (divided by numel for the mean)."""
    _reduction(reduction)
    _check_elementwise(pred, target, "mse", "pred")
    g = _scale(grad_out, reduction, pred.shape, pred.size, pred.dtype)
    return np.asarray((2 * (pred.astype(np.float64) - target) * g).astype(pred.dtype))


def l1_forward(pred, target, reduction="mean"):
    """|pred - target|, reduced."""
    _reduction(reduction)
    _check_elementwise(pred, target, "l1", "pred")
    return _reduce(np.abs(pred.astype(np.float64) - target), reduction, pred.size, pred.dtype)


def l1_backward(grad_out, pred, target, reduction="mean"):
    """dL/dpred = sign(pred - target) * g, sign(0) = 0 (divided by numel for the mean)."""
    _reduction(reduction)
    _check_elementwise(pred, target, "l1", "pred")
    g = _scale(grad_out, reduction, pred.shape, pred.size, pred.dtype)
    return np.asarray((np.sign(pred.astype(np.float64) - target) * g).astype(pred.dtype))


def bce_forward(probs, target, reduction="mean", weight=None):
    """l = -w (t max(log p, -100) + (1 - t) max(log(1 - p), -100)), p and t in [0, 1]."""
    _reduction(reduction)
    _check_elementwise(probs, target, "binary_cross_entropy", "probs")
    _check_unit(probs, "probs", "binary_cross_entropy")
    _check_unit(target, "target", "binary_cross_entropy")
    w = _broadcast_weight(weight, probs, "weight")
    p, t = probs.astype(np.float64), target.astype(np.float64)
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p), BCE_LOG_MIN)
        log_1mp = np.maximum(np.log1p(-p), BCE_LOG_MIN)
    return _reduce(-w * (t * log_p + (1 - t) * log_1mp), reduction, probs.size, probs.dtype)


def bce_backward(grad_out, probs, target, reduction="mean", weight=None):
    """dl/dp = w (p - t) / max(p (1 - p), 1e-12) (PyTorch's formula, finite at p = 0 and 1)."""
    _reduction(reduction)
    _check_elementwise(probs, target, "binary_cross_entropy", "probs")
    _check_unit(probs, "probs", "binary_cross_entropy")
    _check_unit(target, "target", "binary_cross_entropy")
    w = _broadcast_weight(weight, probs, "weight")
    g = _scale(grad_out, reduction, probs.shape, probs.size, probs.dtype)
    p, t = probs.astype(np.float64), target.astype(np.float64)
    return np.asarray((w * (p - t) / np.maximum(p * (1 - p), BCE_GRAD_EPS) * g).astype(probs.dtype))


def _softplus(z):
    """log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|)), finite for every finite z."""
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def _sigmoid(z):
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


@np.errstate(invalid="ignore")  # non-finite inputs: NaN where PyTorch has NaN, no warning
def bce_with_logits_forward(logits, target, reduction="mean", weight=None, pos_weight=None):
    """l = -w (pw t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))) = w (pw t softplus(-x) + (1 - t) softplus(x));
    an infinite or NaN logit takes PyTorch's form w ((1 - t) x + (1 + (pw - 1) t) softplus(-x)), so that it
    gives PyTorch's values (x = +inf, t < 1: +inf; a 0 multiplying an infinity: NaN)."""
    _reduction(reduction)
    _check_elementwise(logits, target, "binary_cross_entropy_with_logits", "logits")
    w = _broadcast_weight(weight, logits, "weight")
    pw = _broadcast_weight(pos_weight, logits, "pos_weight")
    x, t = logits.astype(np.float64), target.astype(np.float64)
    finite = np.isfinite(x)
    xf = np.where(finite, x, 0.0)
    value = np.where(finite, pw * t * _softplus(-xf) + (1 - t) * _softplus(xf),
                     (1 - t) * x + (1 + (pw - 1) * t) * np.maximum(-x, 0))  # infinite or NaN logits
    return _reduce(w * value, reduction, logits.size, logits.dtype)


def bce_with_logits_backward(grad_out, logits, target, reduction="mean", weight=None, pos_weight=None):
    """dl/dx = w (sigmoid(x) (1 - t + pw t) - pw t)."""
    _reduction(reduction)
    _check_elementwise(logits, target, "binary_cross_entropy_with_logits", "logits")
    w = _broadcast_weight(weight, logits, "weight")
    pw = _broadcast_weight(pos_weight, logits, "pos_weight")
    g = _scale(grad_out, reduction, logits.shape, logits.size, logits.dtype)
    x, t = logits.astype(np.float64), target.astype(np.float64)
    return np.asarray((w * (_sigmoid(x) * (1 - t + pw * t) - pw * t) * g).astype(logits.dtype))


# ----- L1 / L2 penalties --------------------------------------------------------------------------------
def _penalty_coeffs(l1, l2):
    a, b = finite_scalar(l1, "l1"), finite_scalar(l2, "l2")
    if a < 0 or b < 0:
        raise ValueError(f"penalty coefficients must be >= 0, got l1={a}, l2={b}")
    return a, b


def norm_penalty_forward(param, l1=0.0, l2=0.0):
    """l1 sum |p| + l2 sum p^2."""
    a, b = _penalty_coeffs(l1, l2)
    as_float_array(param, "param")
    p = param.astype(np.float64)
    return np.array(a * np.abs(p).sum() + b * (p * p).sum(), dtype=param.dtype)


def norm_penalty_backward(grad_out, param, l1=0.0, l2=0.0):
    """d/dp = g (l1 sign(p) + 2 l2 p), sign(0) = 0."""
    a, b = _penalty_coeffs(l1, l2)
    as_float_array(param, "param")
    g = np.asarray(grad_out, dtype=param.dtype)
    if g.size != 1:
        raise ValueError(f"grad_out must be a scalar, got shape {g.shape}")
    p = param.astype(np.float64)
    return np.asarray((float(g.reshape(())) * (a * np.sign(p) + 2 * b * p)).astype(param.dtype))
