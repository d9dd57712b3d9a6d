# Design: losses over a batch of N rows. Softmax cross-entropy takes logits (N, C) and integer labels
# (N,); the forward saves only the per-row log-sum-exp (N values) and the backward produces the logits
# gradient softmax(x) - onehot(y), scaled by the incoming gradient, in one pass. Mean squared error is
# over all elements. Reductions: "mean" (default), "sum", "none" (per-row / per-element values).
# Labels are range-checked in a validation loop before any compute loop touches the logits.
cimport numpy as cnp
from libc.math cimport exp, expf, log, logf
from _common cimport real, as_float_array, check_same_dtype

import numpy as np

cnp.import_array()

cdef enum:
    RED_NONE = 0
    RED_MEAN = 1
    RED_SUM = 2


cdef int _reduction_code(object reduction) except -1:
    if reduction == "mean":
        return RED_MEAN
    if reduction == "sum":
        return RED_SUM
    if reduction == "none":
        return RED_NONE
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


cdef object _check_labels(object labels, Py_ssize_t n, Py_ssize_t c):
    if not isinstance(labels, np.ndarray):
        labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match logits with {n} rows, got {labels.shape}")
    labels = np.ascontiguousarray(labels, dtype=np.intp)
    cdef const Py_ssize_t[::1] lv = labels
    cdef Py_ssize_t i, bad = -1
    with nogil:
        for i in range(n):
            if lv[i] < 0 or lv[i] >= c:
                bad = i
                break
    if bad >= 0:
        raise ValueError(f"label {labels[bad]} at position {bad} is out of range for {c} classes")
    return labels


cdef tuple _check_ce(object logits, object labels):
    logits = as_float_array(logits, "logits", 2)
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"cross_entropy: logits must be non-empty (N, C), got shape {logits.shape}")
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    return logits, labels


cdef double _ce_forward(const real[:, ::1] x, const Py_ssize_t[::1] y, real[::1] lse,
                        real[::1] per_row) noexcept nogil:
    cdef Py_ssize_t i, j, n = x.shape[0], c = x.shape[1]
    cdef real m
    cdef double s, total = 0
    for i in range(n):
        m = x[i, 0]
        for j in range(1, c):
            if x[i, j] > m:
                m = x[i, j]
        s = 0
        for j in range(c):
            if real is float:
                s += expf(x[i, j] - m)
            else:
                s += exp(x[i, j] - m)
        lse[i] = <real>(m + log(s))
        per_row[i] = lse[i] - x[i, y[i]]
        total += per_row[i]
    return total


cdef void _ce_backward(const real[::1] scale, bint per_row_scale, const real[:, ::1] x,
                       const Py_ssize_t[::1] y, const real[::1] lse, real[:, ::1] dx) noexcept nogil:
    cdef Py_ssize_t i, j, n = x.shape[0], c = x.shape[1]
    cdef real s
    for i in range(n):
        s = scale[i] if per_row_scale else scale[0]
        for j in range(c):
            if real is float:
                dx[i, j] = expf(x[i, j] - lse[i]) * s
            else:
                dx[i, j] = exp(x[i, j] - lse[i]) * s
        dx[i, y[i]] -= s


def cross_entropy_forward(logits, labels, reduction="mean"):
    """Softmax cross-entropy of logits (N, C) against integer labels (N,).

    Returns (loss, lse): loss is a 0-d array ("mean"/"sum") or (N,) array ("none"); lse (N,) is the
    per-row log-sum-exp that cross_entropy_backward needs."""
    cdef int red = _reduction_code(reduction)
    logits, labels = _check_ce(logits, labels)
    n = logits.shape[0]
    lse = np.empty(n, dtype=logits.dtype)
    per_row = np.empty(n, dtype=logits.dtype)
    if logits.dtype == np.float32:
        total = _ce_forward[float](logits, labels, lse, per_row)
    else:
        total = _ce_forward[double](logits, labels, lse, per_row)
    if red == RED_NONE:
        return per_row, lse
    if red == RED_MEAN:
        total /= n
    return np.array(total, dtype=logits.dtype), lse


def cross_entropy_backward(grad_out, logits, labels, lse, reduction="mean"):
    """Gradient w.r.t. logits: (softmax(logits) - onehot(labels)) * grad_out (/ N for "mean")."""
    cdef int red = _reduction_code(reduction)
    logits, labels = _check_ce(logits, labels)
    n = logits.shape[0]
    lse = as_float_array(lse, "lse", 1)
    check_same_dtype(logits, "logits", lse, "lse")
    if lse.shape[0] != n:
        raise ValueError(f"lse has shape {lse.shape}, expected ({n},)")
    g = np.asarray(grad_out, dtype=logits.dtype)
    if red == RED_NONE:
        if g.shape != (n,):
            raise ValueError(f"grad_out must have shape ({n},) for reduction='none', got {g.shape}")
        scale = np.ascontiguousarray(g)
    else:
        if g.size != 1:
            raise ValueError(f"grad_out must be a scalar for reduction={reduction!r}, got shape {g.shape}")
        scale = g.reshape(1) / n if red == RED_MEAN else g.reshape(1).copy()
    dx = np.empty_like(logits)
    if logits.dtype == np.float32:
        _ce_backward[float](scale, red == RED_NONE, logits, labels, lse, dx)
    else:
        _ce_backward[double](scale, red == RED_NONE, logits, labels, lse, dx)
    return dx


cdef double _mse_forward(const real[::1] p, const real[::1] t, real[::1] out, bint keep) noexcept nogil:
    cdef Py_ssize_t i, n = p.shape[0]
    cdef double total = 0
    cdef real d
    for i in range(n):
        d = p[i] - t[i]
        if keep:
            out[i] = d * d
        total += d * d
    return total


cdef void _mse_backward(const real[::1] g, bint per_elem, const real[::1] p, const real[::1] t,
                        real[::1] dp) noexcept nogil:
    cdef Py_ssize_t i, n = p.shape[0]
    for i in range(n):
        dp[i] = 2 * (p[i] - t[i]) * (g[i] if per_elem else g[0])


cdef tuple _check_mse(object pred, object target):
    pred = as_float_array(pred, "pred")
    target = as_float_array(target, "target")
    check_same_dtype(pred, "pred", target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"mse: pred has shape {pred.shape} but target has shape {target.shape}")
    if pred.size == 0:
        raise ValueError(f"mse: empty input of shape {pred.shape}")
    return pred, target


def mse_forward(pred, target, reduction="mean"):
    """(pred - target)**2 averaged ("mean"), summed ("sum") or elementwise ("none")."""
    cdef int red = _reduction_code(reduction)
    pred, target = _check_mse(pred, target)
    out = np.empty_like(pred)
    if pred.dtype == np.float32:
        total = _mse_forward[float](pred.reshape(-1), target.reshape(-1), out.reshape(-1), red == RED_NONE)
    else:
        total = _mse_forward[double](pred.reshape(-1), target.reshape(-1), out.reshape(-1), red == RED_NONE)
    if red == RED_NONE:
        return out
    if red == RED_MEAN:
        total /= pred.size
    return np.array(total, dtype=pred.dtype)


def mse_backward(grad_out, pred, target, reduction="mean"):
    """Gradient w.r.t. pred: 2 * (pred - target) * grad_out (/ numel for "mean"); w.r.t. target it is the negative."""
    cdef int red = _reduction_code(reduction)
    pred, target = _check_mse(pred, target)
    g = np.asarray(grad_out, dtype=pred.dtype)
    if red == RED_NONE:
        if g.shape != pred.shape:
            raise ValueError(f"grad_out must have shape {pred.shape} for reduction='none', got {g.shape}")
        scale = np.ascontiguousarray(g).reshape(-1)
    else:
        if g.size != 1:
            raise ValueError(f"grad_out must be a scalar for reduction={reduction!r}, got shape {g.shape}")
        scale = g.reshape(1) / pred.size if red == RED_MEAN else g.reshape(1).copy()
    dp = np.empty_like(pred)
    if pred.dtype == np.float32:
        _mse_backward[float](scale, red == RED_NONE, pred.reshape(-1), target.reshape(-1), dp.reshape(-1))
    else:
        _mse_backward[double](scale, red == RED_NONE, pred.reshape(-1), target.reshape(-1), dp.reshape(-1))
    return dp
