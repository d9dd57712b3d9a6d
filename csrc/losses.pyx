# Design: losses and norm penalties. Every loss takes a `reduction` ("mean" (default), "sum", "none") and
# returns a 0-d array or the unreduced values; every backward takes the incoming gradient (a scalar, or
# the shape of the unreduced values for "none") and produces the input gradient in one pass.
#   * Row losses over logits / scores (N, C) with integer labels (N,): softmax cross-entropy (optional
#     class weights and label smoothing), NLL on log-probabilities, multiclass hinge (MultiMargin).
#     Cross-entropy's forward saves only the per-row log-sum-exp (N values); its backward forms
#     softmax(x) from it and writes the whole gradient in one pass. cross_entropy_fused does both in one
#     pass over the rows (a captured training step's loss): per block of rows that stays in L1, each row's
#     log-sum-exp, then its gradient row, through the same per-row helpers as the separate kernels, so its
#     results are theirs bit for bit.
#   * Elementwise losses over any shape (pred and target of equal shape): squared error, absolute error,
#     binary cross-entropy on probabilities, binary cross-entropy on logits.
#   * norm_penalty: l1 * sum|p| + l2 * sum p^2 of one parameter array (the L1/L2/elastic-net regularizers).
# Labels are range-checked, and BCE probabilities checked to lie in [0, 1], in validation loops before
# any compute loop runs. Per-element values are computed in double. Large inputs run with OpenMP prange;
# sums are taken over fixed chunks (or per row) and then added in index order, so the result does not
# depend on the thread count.
#
# Rules at kinks: |d|' = sign(d) with sign(0) = 0; the hinge max(0, z) has gradient 0 at z = 0; BCE's
# gradient is (x - y) / max(x (1 - x), 1e-12) (PyTorch's, so finite at x = 0 or 1).
# NaN and infinity follow PyTorch (checked against it in tests/test_nonfinite.py): cross-entropy adds the
# label-smoothing term only when label_smoothing > 0 (a -inf logit off the target then drops out; on the
# target the loss is +inf), reduces its two terms separately (a zero total class weight makes the mean NaN),
# and for a non-finite incoming gradient or class weight forms a row's gradient in PyTorch's order
# gl - p sum(gl) (gl the gradient w.r.t. log-softmax); the hinge counts a term only where z > 0, so a NaN
# score contributes nothing, weights only active terms, and multiplies by the incoming gradient last (0 * NaN
# is NaN: a NaN gradient reaches its whole row, also for C = 1);
# BCE with logits takes PyTorch's form (1 - t) x + (1 + (pw - 1) t) softplus(-x) for an infinite logit
# (x = +inf, t < 1: +inf; a 0 times an infinity: NaN), the more accurate symmetric form otherwise.
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport log, fabs, isfinite
from _common cimport (bind_threading, aligned_c, real, as_float_array, check_same_dtype, threads_for, finite_scalar,
                     r_exp, r_log, r_log1p, r_abs, out_array)

import numpy as np

cnp.import_array()
bind_threading()

cdef enum:
    RED_NONE = 0
    RED_MEAN = 1
    RED_SUM = 2

cdef enum:
    SQUARED = 0
    ABSOLUTE = 1
    BCE = 2
    BCE_LOGITS = 3

cdef enum:
    CHUNK = 8192  # elements per partial sum: fixed, so sums do not depend on the thread count

cdef enum:
    CE_BLOCK = 2048  # logits per block of rows in cross_entropy_fused (8 or 16 KB: stays in L1)

cdef double BCE_LOG_MIN = -100.0   # PyTorch clamps log(p) and log(1 - p) at -100
cdef double BCE_GRAD_EPS = 1e-12   # and divides the gradient by max(p (1 - p), 1e-12)


cdef inline real _log1p_small(real e) noexcept nogil:
    """log1p(e) for e in [0, 1] as log(u) * e / (u - 1), u = 1 + e (Goldberg's trick): as accurate as log1p
    to a few ulps, and a plain log is about three times cheaper than glibc's log1p."""
    cdef real u = 1 + e
    if u == 1:
        return e
    return r_log(u) * (e / (u - 1))


cdef int _reduction_code(object reduction) except -1:
    if not isinstance(reduction, str):
        raise TypeError(f"reduction must be 'mean', 'sum' or 'none', got {type(reduction).__name__}")
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
    if labels.dtype.kind == "u" and labels.dtype.itemsize >= np.dtype(np.intp).itemsize and labels.size \
            and labels.max() >= c:
        # unsigned values too large for intp would wrap negative on conversion
        bad_u = int(np.flatnonzero(labels >= c)[0])
        raise ValueError(f"label {labels[bad_u]} at position {bad_u} is out of range for {c} classes")
    labels = aligned_c(np.ascontiguousarray(labels, dtype=np.intp))
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


cdef tuple _check_rows(object x, object labels, str what, str xname):
    x = as_float_array(x, xname, 2)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what}: {xname} must be non-empty (N, C), got shape {x.shape}")
    labels = _check_labels(labels, x.shape[0], x.shape[1])
    return x, labels


cdef object _class_weight(object weight, object x, str what):
    """None, or `weight` validated as a (C,) array of x's dtype."""
    if weight is None:
        return None
    weight = as_float_array(weight, "weight", 1)
    check_same_dtype(x, what, weight, "weight")
    if weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight has shape {weight.shape} but {what} has shape {x.shape}; "
                         f"weight must have shape ({x.shape[1]},)")
    return weight


cdef object _dummy(object dtype):
    return np.zeros(1, dtype=dtype)


cdef object _grad_scale(object grad_out, int red, object reduction, tuple shape, double denom, object dtype):
    """The incoming gradient as a flat contiguous array: per element/row for "none", else one value
    (divided by `denom` for "mean")."""
    g = np.asarray(grad_out, dtype=dtype)
    if red == RED_NONE:
        if g.shape != shape:
            raise ValueError(f"grad_out must have shape {shape} for reduction='none', got {g.shape}")
        return aligned_c(g).reshape(-1)
    if g.size != 1:
        raise ValueError(f"grad_out must be a scalar for reduction={reduction!r}, got shape {g.shape}")
    cdef double gv
    if red == RED_MEAN:
        # C division (cdivision is on for every kernel): a zero denominator gives inf/NaN as PyTorch,
        # without NumPy's warning machinery on this per-step path
        gv = g.reshape(-1)[0]
        return np.array([gv / denom], dtype=dtype)
    return g.reshape(1).copy()


cdef object _reduced(double total, int red, double denom, object dtype):
    if red == RED_MEAN:
        total = total / denom  # C division: 0/0 is NaN (all-zero class weights), as PyTorch
    return np.array(total, dtype=dtype)


cdef double _ordered_sum(const double[::1] v) noexcept nogil:
    cdef Py_ssize_t i
    cdef double total = 0
    for i in range(v.shape[0]):
        total += v[i]
    return total


cdef double _weight_of_labels(const real[::1] w, const Py_ssize_t[::1] y) noexcept nogil:
    """sum_n w[y_n]: the denominator of PyTorch's weighted mean."""
    cdef Py_ssize_t i
    cdef double total = 0
    for i in range(y.shape[0]):
        total += w[y[i]]
    return total


cdef double _mean_denominator(object weight, object labels):
    if weight is None:
        return labels.shape[0]
    if weight.dtype == np.float32:
        return _weight_of_labels[float](weight, labels)
    return _weight_of_labels[double](weight, labels)


# ----- softmax cross-entropy -------------------------------------------------------------------------
# The row math lives in per-row helpers (_ce_row_forward, _ce_row_backward) that the separate kernels and
# the fused one (_ce_fused) all call, so the three give the same bits; each prange body is one call (every
# variable the row writes is a local of the helper, private to its thread).
cdef inline real _ce_row_forward(const real[:, ::1] x, Py_ssize_t i, Py_ssize_t yi, const real[::1] w,
                                 bint has_w, double eps, double[::1] nll, double[::1] smooth) noexcept nogil:
    """Row i's log-sum-exp (returned), and the two terms PyTorch reduces separately: nll[i] = w_y (-log p_y)
    and, with smoothing, smooth[i] = sum_c w_c (-log p_c); the caller combines them (1 - eps) nll + eps / C
    smooth."""
    cdef Py_ssize_t j, c = x.shape[1]
    cdef real m = x[i, 0]
    cdef double s = 0, ls, t, wy
    for j in range(1, c):
        if x[i, j] > m:
            m = x[i, j]
    for j in range(c):
        s = s + r_exp(x[i, j] - m)
    ls = log(s)
    wy = w[yi] if has_w else 1.0
    # -log softmax(x)_k = (m - x_k) + log(s): no cancellation against a large lse
    nll[i] = wy * ((<double>m - x[i, yi]) + ls)
    if eps != 0:
        t = 0
        for j in range(c):
            t = t + (w[j] if has_w else 1.0) * ((<double>m - x[i, j]) + ls)
        smooth[i] = t
    return <real>(m + ls)


cdef void _ce_forward(const real[:, ::1] x, const Py_ssize_t[::1] y, const real[::1] w, bint has_w,
                      double eps, real[::1] lse, double[::1] nll, double[::1] smooth) noexcept nogil:
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, schedule="static", num_threads=threads_for(n * x.shape[1])):
        lse[i] = _ce_row_forward(x, i, y[i], w, has_w, eps, nll, smooth)


cdef inline double _ce_gl(Py_ssize_t j, Py_ssize_t yj, const real[::1] w, bint has_w, double ga,
                          double gb, bint smoothing) noexcept nogil:
    """PyTorch's gradient w.r.t. log p_j: -gb w_j from the smoothing term, -ga w_y on the target."""
    cdef double gl = 0
    if smoothing:
        gl = -gb * (w[j] if has_w else 1.0)
    if j == yj:
        gl = gl + (w[yj] if has_w else 1.0) * (-ga)
    return gl


cdef void _ce_row_exact(double s, const real[:, ::1] x, Py_ssize_t i, Py_ssize_t yi, const real[::1] w,
                        bint has_w, double eps, real lse_i, real[:, ::1] dx) noexcept nogil:
    """One row in PyTorch's order, dx = gl - p sum(gl) (gl the gradient w.r.t. log-softmax), for an
    incoming gradient or class weight that is not finite: the NaN/inf pattern then depends on the order."""
    cdef Py_ssize_t j, c = x.shape[1]
    cdef double ga = (1 - eps) * s, gb = eps / c * s, S = 0
    for j in range(c):
        S = S + _ce_gl(j, yi, w, has_w, ga, gb, eps != 0)
    for j in range(c):
        dx[i, j] = <real>(_ce_gl(j, yi, w, has_w, ga, gb, eps != 0) - r_exp(x[i, j] - lse_i) * S)


cdef inline void _ce_row_backward(double s, const real[:, ::1] x, Py_ssize_t i, Py_ssize_t yi,
                                  const real[::1] w, bint has_w, bint w_finite, double wsum, double eps,
                                  real lse_i, real[:, ::1] dx) noexcept nogil:
    """Row i of the gradient for incoming gradient s (already divided by the mean's denominator):
    d l_n / d x_k = s (p_k ((1 - eps) w_y + eps/C sum_c w_c) - (1 - eps) w_y [k == y] - eps/C w_k)."""
    cdef Py_ssize_t j, c = x.shape[1]
    cdef double wy, a, p
    if not (w_finite and isfinite(s)):
        _ce_row_exact(s, x, i, yi, w, has_w, eps, lse_i, dx)
        return
    wy = w[yi] if has_w else 1.0
    a = (1 - eps) * wy + eps / c * wsum
    for j in range(c):
        p = r_exp(x[i, j] - lse_i)
        dx[i, j] = <real>(s * (p * a - eps / c * (w[j] if has_w else 1.0)))
    dx[i, yi] = <real>(dx[i, yi] - s * (1 - eps) * wy)


cdef double _ce_wsum(const real[::1] w, bint has_w, Py_ssize_t c) noexcept nogil:
    """sum_c w_c in index order (C without weights)."""
    cdef Py_ssize_t j
    cdef double wsum = 0
    if not has_w:
        return c
    for j in range(c):
        wsum += w[j]
    return wsum


cdef void _ce_backward(const real[::1] scale, bint per_row_scale, const real[:, ::1] x,
                       const Py_ssize_t[::1] y, const real[::1] w, bint has_w, bint w_finite, double eps,
                       const real[::1] lse, real[:, ::1] dx) noexcept nogil:
    cdef Py_ssize_t i, n = x.shape[0], c = x.shape[1]
    cdef double wsum = _ce_wsum(w, has_w, c)
    for i in prange(n, schedule="static", num_threads=threads_for(n * c)):
        _ce_row_backward(scale[i] if per_row_scale else scale[0], x, i, y[i], w, has_w, w_finite, wsum, eps,
                         lse[i], dx)


cdef void _ce_fused_block(const real[::1] scale, bint per_row_scale, const real[:, ::1] x,
                          const Py_ssize_t[::1] y, Py_ssize_t block, Py_ssize_t rows, const real[::1] w,
                          bint has_w, bint w_finite, double wsum, double eps, real[::1] lse, double[::1] nll,
                          double[::1] smooth, real[:, ::1] dx) noexcept nogil:
    """Rows [block * rows, (block + 1) * rows) of the fused kernel: each row's forward, then, while the block
    is in L1, each row's gradient, with the bits of _ce_forward then _ce_backward (the gradient reads the
    log-sum-exp rounded to the logits' precision, as the separate backward reads the forward's output).
    A block rather than one row at a time: a row's gradient waits on its log-sum-exp (a log's latency),
    which short rows cannot hide; across a block the rows' independent work overlaps."""
    cdef Py_ssize_t i, lo = block * rows, hi = lo + rows
    if hi > x.shape[0]:
        hi = x.shape[0]
    for i in range(lo, hi):
        lse[i] = _ce_row_forward(x, i, y[i], w, has_w, eps, nll, smooth)
    for i in range(lo, hi):
        _ce_row_backward(scale[i] if per_row_scale else scale[0], x, i, y[i], w, has_w, w_finite, wsum, eps,
                         lse[i], dx)


cdef void _ce_fused(const real[::1] scale, bint per_row_scale, const real[:, ::1] x, const Py_ssize_t[::1] y,
                    const real[::1] w, bint has_w, bint w_finite, double eps, real[::1] lse, double[::1] nll,
                    double[::1] smooth, real[:, ::1] dx) noexcept nogil:
    cdef Py_ssize_t b, n = x.shape[0], c = x.shape[1]
    cdef Py_ssize_t rows = CE_BLOCK // c if c < CE_BLOCK else 1
    cdef double wsum = _ce_wsum(w, has_w, c)
    for b in prange((n + rows - 1) // rows, schedule="static", num_threads=threads_for(n * c)):
        _ce_fused_block(scale, per_row_scale, x, y, b, rows, w, has_w, w_finite, wsum, eps, lse, nll, smooth, dx)


cdef tuple _ce_prepare(object logits, object labels, object weight, object label_smoothing):
    logits, labels = _check_rows(logits, labels, "cross_entropy", "logits")
    weight = _class_weight(weight, logits, "logits")
    cdef double eps = finite_scalar(label_smoothing, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {eps}")
    return logits, labels, weight, eps


cdef double _ce_total(const double[::1] nll, const double[::1] smooth, int red, double denom, double eps,
                      Py_ssize_t c):
    """The mean or sum over rows, PyTorch's combination (1 - eps) nll + eps / C smooth with each term reduced
    on its own (with a zero or non-finite total weight the mean is NaN, not the combined sum over 0); the
    rows added in index order, so the total does not depend on the thread count."""
    cdef double total
    if eps == 0:
        total = _ordered_sum(nll)
        if red == RED_MEAN:
            total = total / denom  # C division: 0/0 is NaN (all-zero class weights), as PyTorch
        return total
    cdef double k = eps / c
    if red == RED_MEAN:
        return (1 - eps) * (_ordered_sum(nll) / denom) + k * (_ordered_sum(smooth) / denom)
    return (1 - eps) * _ordered_sum(nll) + k * _ordered_sum(smooth)


cdef object _ce_unreduced(object nll, object smooth, double eps, Py_ssize_t c, object dtype, object out):
    """The per-row losses (1 - eps) nll + eps / C smooth cast to dtype, into `out` when given (nll and smooth
    are scratch: overwritten)."""
    if eps == 0:
        if out is None:
            return nll.astype(dtype)
        np.copyto(out, nll, casting="unsafe")
        return out
    cdef double k = eps / c
    with np.errstate(invalid="ignore"):
        if out is None:
            return ((1 - eps) * nll + k * smooth).astype(dtype)
        np.multiply(nll, 1 - eps, out=nll)
        np.multiply(smooth, k, out=smooth)
        np.add(nll, smooth, out=nll)
    np.copyto(out, nll, casting="unsafe")
    return out


def cross_entropy_forward(logits, labels, reduction="mean", weight=None, label_smoothing=0.0):
    """Softmax cross-entropy of logits (N, C) against integer labels (N,), as PyTorch's cross_entropy.

    l_n = (1 - eps) w[y_n] (-log softmax(x_n)[y_n]) + eps / C sum_c w[c] (-log softmax(x_n)[c]) with
    eps = label_smoothing and w = weight (ones if None). "mean" divides the sum by sum_n w[y_n] (N
    without weights). Returns (loss, lse): loss is 0-d ("mean"/"sum") or (N,) ("none"); lse (N,) is the
    per-row log-sum-exp that cross_entropy_backward needs."""
    cdef int red = _reduction_code(reduction)
    cdef double eps
    logits, labels, weight, eps = _ce_prepare(logits, labels, weight, label_smoothing)
    n = logits.shape[0]
    lse = np.empty(n, dtype=logits.dtype)
    nll = np.empty(n, dtype=np.float64)
    smooth = np.empty(n if eps != 0 else 1, dtype=np.float64)
    w = weight if weight is not None else _dummy(logits.dtype)
    if logits.dtype == np.float32:
        _ce_forward[float](logits, labels, w, weight is not None, eps, lse, nll, smooth)
    else:
        _ce_forward[double](logits, labels, w, weight is not None, eps, lse, nll, smooth)
    if red == RED_NONE:
        return _ce_unreduced(nll, smooth, eps, logits.shape[1], logits.dtype, None), lse
    total = _ce_total(nll, smooth, red, _mean_denominator(weight, labels), eps, logits.shape[1])
    return np.array(total, dtype=logits.dtype), lse


def cross_entropy_backward(grad_out, logits, labels, lse, reduction="mean", weight=None, label_smoothing=0.0,
                           out=None):
    """Gradient w.r.t. logits: g (p_k ((1 - eps) w[y] + eps/C sum(w)) - (1 - eps) w[y] [k == y] - eps/C w[k])
    with p = softmax(logits) = exp(logits - lse), g the incoming gradient (divided by the mean's
    denominator for "mean"). Without weights and smoothing this is g (softmax(x) - onehot(y))."""
    cdef int red = _reduction_code(reduction)
    cdef double eps
    logits, labels, weight, eps = _ce_prepare(logits, labels, weight, label_smoothing)
    n = logits.shape[0]
    lse = as_float_array(lse, "lse", 1)
    check_same_dtype(logits, "logits", lse, "lse")
    if lse.shape[0] != n:
        raise ValueError(f"lse has shape {lse.shape}, expected ({n},)")
    scale = _grad_scale(grad_out, red, reduction, (n,), _mean_denominator(weight, labels), logits.dtype)
    w = weight if weight is not None else _dummy(logits.dtype)
    dx = out_array(out, logits.shape, logits.dtype, "out", (logits, lse))
    w_finite = weight is None or bool(np.isfinite(weight).all())
    if logits.dtype == np.float32:
        _ce_backward[float](scale, red == RED_NONE, logits, labels, w, weight is not None, w_finite, eps, lse, dx)
    else:
        _ce_backward[double](scale, red == RED_NONE, logits, labels, w, weight is not None, w_finite, eps, lse,
                             dx)
    return dx


def cross_entropy_fused(logits, labels, grad_out=1.0, reduction="mean", weight=None, label_smoothing=0.0,
                        out=None):
    """Cross-entropy's forward and backward in one pass over the rows: returns (loss, lse, dx), where
    (loss, lse) are bit for bit what cross_entropy_forward(logits, labels, reduction, weight,
    label_smoothing) returns and dx what cross_entropy_backward(grad_out, logits, labels, lse, reduction,
    weight, label_smoothing) returns. grad_out is the incoming gradient: a scalar for "mean"/"sum", shape
    (N,) for "none". out, if given, is a tuple (loss, lse, dx) of arrays (None entries allocate) the
    results are written into: loss 0-d ("mean"/"sum") or (N,) ("none"), lse (N,), dx (N, C), all of the
    logits' dtype."""
    cdef int red = _reduction_code(reduction)
    cdef double eps
    logits, labels, weight, eps = _ce_prepare(logits, labels, weight, label_smoothing)
    n, c = logits.shape
    dt = logits.dtype
    denom = _mean_denominator(weight, labels)
    scale = _grad_scale(grad_out, red, reduction, (n,), denom, dt)
    if out is not None and (not isinstance(out, tuple) or len(out) != 3):
        raise TypeError(f"cross_entropy_fused: out must be a tuple of 3 arrays (loss, lse, dx) or None, got "
                        f"{type(out).__name__}")
    oloss, olse, odx = out if out is not None else (None, None, None)
    ins = (logits, labels, weight, scale)
    loss = out_array(oloss, (n,) if red == RED_NONE else (), dt, "out[0]", ins) if oloss is not None else None
    lse = out_array(olse, (n,), dt, "out[1]", ins + (loss,))
    dx = out_array(odx, logits.shape, dt, "out[2]", ins + (loss, lse))
    nll = np.empty(n, dtype=np.float64)
    smooth = np.empty(n if eps != 0 else 1, dtype=np.float64)
    w = weight if weight is not None else _dummy(dt)
    w_finite = weight is None or bool(np.isfinite(weight).all())
    if dt == np.float32:
        _ce_fused[float](scale, red == RED_NONE, logits, labels, w, weight is not None, w_finite, eps, lse, nll,
                         smooth, dx)
    else:
        _ce_fused[double](scale, red == RED_NONE, logits, labels, w, weight is not None, w_finite, eps, lse, nll,
                          smooth, dx)
    if red == RED_NONE:
        return _ce_unreduced(nll, smooth, eps, c, dt, loss), lse, dx
    total = _ce_total(nll, smooth, red, denom, eps, c)
    if loss is None:
        return np.array(total, dtype=dt), lse, dx
    loss[()] = total
    return loss, lse, dx


# ----- negative log-likelihood on log-probabilities ----------------------------------------------------
cdef void _nll_forward(const real[:, ::1] x, const Py_ssize_t[::1] y, const real[::1] w, bint has_w,
                       double[::1] row) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        row[i] = -(<double>(w[y[i]] if has_w else 1)) * x[i, y[i]]


cdef void _nll_backward(const real[::1] scale, bint per_row_scale, const Py_ssize_t[::1] y,
                        const real[::1] w, bint has_w, real[:, ::1] dx) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(dx.shape[0]):
        dx[i, y[i]] = -(scale[i] if per_row_scale else scale[0]) * (w[y[i]] if has_w else 1)


def nll_forward(log_probs, labels, reduction="mean", weight=None):
    """Negative log-likelihood, as PyTorch's nll_loss: l_n = -w[y_n] log_probs[n, y_n] for log_probs
    (N, C) and integer labels (N,); "mean" divides the sum by sum_n w[y_n] (N without weights)."""
    cdef int red = _reduction_code(reduction)
    log_probs, labels = _check_rows(log_probs, labels, "nll", "log_probs")
    weight = _class_weight(weight, log_probs, "log_probs")
    w = weight if weight is not None else _dummy(log_probs.dtype)
    row = np.empty(log_probs.shape[0], dtype=np.float64)
    if log_probs.dtype == np.float32:
        _nll_forward[float](log_probs, labels, w, weight is not None, row)
    else:
        _nll_forward[double](log_probs, labels, w, weight is not None, row)
    if red == RED_NONE:
        return row.astype(log_probs.dtype)
    return _reduced(_ordered_sum(row), red, _mean_denominator(weight, labels), log_probs.dtype)


def nll_backward(grad_out, log_probs, labels, reduction="mean", weight=None):
    """Gradient w.r.t. log_probs: -g w[y_n] at (n, y_n), zero elsewhere (g divided by the mean's
    denominator for "mean")."""
    cdef int red = _reduction_code(reduction)
    log_probs, labels = _check_rows(log_probs, labels, "nll", "log_probs")
    weight = _class_weight(weight, log_probs, "log_probs")
    n = log_probs.shape[0]
    scale = _grad_scale(grad_out, red, reduction, (n,), _mean_denominator(weight, labels), log_probs.dtype)
    w = weight if weight is not None else _dummy(log_probs.dtype)
    dx = np.zeros_like(log_probs)
    if log_probs.dtype == np.float32:
        _nll_backward[float](scale, red == RED_NONE, labels, w, weight is not None, dx)
    else:
        _nll_backward[double](scale, red == RED_NONE, labels, w, weight is not None, dx)
    return dx


# ----- multiclass hinge (MultiMargin) -------------------------------------------------------------------
cdef void _mm_forward(const real[:, ::1] x, const Py_ssize_t[::1] y, const real[::1] w, bint has_w,
                      int p, double margin, double norm, double[::1] row) noexcept nogil:
    cdef Py_ssize_t i, j, n = x.shape[0], c = x.shape[1]
    cdef double z, acc, xy
    cdef int active
    for i in prange(n, schedule="static", num_threads=threads_for(n * c)):
        xy = x[i, y[i]]
        acc = 0
        active = 0
        for j in range(c):
            if j == y[i]:
                continue
            z = margin - xy + x[i, j]
            if z > 0:
                acc = acc + (z if p == 1 else z * z)
                active = 1
        # PyTorch weights each active term: a row without one is 0 even for an infinite or NaN weight
        row[i] = acc * (w[y[i]] if has_w else 1.0) / norm if active else 0.0


cdef void _mm_backward(const real[::1] scale, bint per_row_scale, const real[:, ::1] x,
                       const Py_ssize_t[::1] y, const real[::1] w, bint has_w, int p, double margin,
                       double norm, real[:, ::1] dx) noexcept nogil:
    cdef Py_ssize_t i, j, n = x.shape[0], c = x.shape[1]
    # PyTorch's order: h = hinge gradient times w_y / D (0 where inactive), and only then times the incoming
    # gradient g, so a NaN or infinite g reaches every entry of its row (0 * g), as in PyTorch
    cdef double z, h, s, g, xy, total
    for i in prange(n, schedule="static", num_threads=threads_for(n * c)):
        g = scale[i] if per_row_scale else scale[0]
        s = (w[y[i]] if has_w else 1.0) / norm
        xy = x[i, y[i]]
        total = 0
        for j in range(c):
            if j == y[i]:
                continue
            z = margin - xy + x[i, j]
            if z > 0:  # the hinge's gradient at z == 0 is 0
                h = s if p == 1 else 2 * z * s
            else:
                h = 0
            dx[i, j] = <real>(h * g)
            total = total + h
        dx[i, y[i]] = <real>(-total * g)


cdef tuple _mm_prepare(object scores, object labels, object p, object margin, object weight,
                       object normalization):
    scores, labels = _check_rows(scores, labels, "multi_margin", "scores")
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    cdef double mg = finite_scalar(margin, "margin")
    weight = _class_weight(weight, scores, "scores")
    if normalization == "classes":
        norm = float(scores.shape[1])
    elif normalization == "sum":
        norm = 1.0
    else:
        raise ValueError(f"normalization must be 'classes' (PyTorch's MultiMarginLoss: divide by C) or "
                         f"'sum' (the plain sum over classes), got {normalization!r}")
    return scores, labels, int(p), mg, weight, norm


def multi_margin_forward(scores, labels, reduction="mean", p=1, margin=1.0, weight=None, normalization="classes"):
    """Multiclass hinge loss of scores (N, C) against integer labels (N,):
    l_n = w[y_n] sum_{j != y_n} max(0, margin - s[n, y_n] + s[n, j])**p / D, p in {1, 2}, with
    D = C for normalization="classes" (PyTorch's MultiMarginLoss) or D = 1 for "sum" (the multiclass
    SVM loss as usually written). "mean" averages over the N rows."""
    cdef int red = _reduction_code(reduction)
    cdef double mg, norm
    cdef int pp
    scores, labels, pp, mg, weight, norm = _mm_prepare(scores, labels, p, margin, weight, normalization)
    w = weight if weight is not None else _dummy(scores.dtype)
    row = np.empty(scores.shape[0], dtype=np.float64)
    if scores.dtype == np.float32:
        _mm_forward[float](scores, labels, w, weight is not None, pp, mg, norm, row)
    else:
        _mm_forward[double](scores, labels, w, weight is not None, pp, mg, norm, row)
    if red == RED_NONE:
        return row.astype(scores.dtype)
    return _reduced(_ordered_sum(row), red, scores.shape[0], scores.dtype)


def multi_margin_backward(grad_out, scores, labels, reduction="mean", p=1, margin=1.0, weight=None,
                          normalization="classes"):
    """Gradient w.r.t. scores: each active margin (z > 0) adds h = g w[y] / D (p = 1) or 2 z g w[y] / D
    (p = 2) to s[n, j] and subtracts it from s[n, y_n]."""
    cdef int red = _reduction_code(reduction)
    cdef double mg, norm
    cdef int pp
    scores, labels, pp, mg, weight, norm = _mm_prepare(scores, labels, p, margin, weight, normalization)
    n = scores.shape[0]
    scale = _grad_scale(grad_out, red, reduction, (n,), n, scores.dtype)
    w = weight if weight is not None else _dummy(scores.dtype)
    dx = np.empty_like(scores)
    if scores.dtype == np.float32:
        _mm_backward[float](scale, red == RED_NONE, scores, labels, w, weight is not None, pp, mg, norm, dx)
    else:
        _mm_backward[double](scale, red == RED_NONE, scores, labels, w, weight is not None, pp, mg, norm, dx)
    return dx


# ----- elementwise losses --------------------------------------------------------------------------------
# Per-element values and derivatives in the input's precision (float32 math for float32: single-precision
# exp/log are several times faster, and each value is only rounded once more before the double sum).
cdef inline real _elem_value(real x, real t, real pw, int kind) noexcept nogil:
    cdef real d, lx, l1x, l
    if kind == SQUARED:
        d = x - t
        return d * d
    if kind == ABSOLUTE:
        return r_abs(x - t)  # fabs, not a branch: the sign of random data defeats branch prediction
    if kind == BCE:
        lx = r_log(x)
        l1x = r_log1p(-x)
        if lx < BCE_LOG_MIN:
            lx = BCE_LOG_MIN
        if l1x < BCE_LOG_MIN:
            l1x = BCE_LOG_MIN
        return -(t * lx + (1 - t) * l1x)
    # BCE_LOGITS: pw t softplus(-x) + (1 - t) softplus(x), both terms >= 0 for t in [0, 1], and
    # softplus(+-x) = max(+-x, 0) + log1p(exp(-|x|)) never overflows; max(+-x, 0) = (|x| +- x) / 2 exactly
    # (this form keeps log1p(e^-20) at x = -20, t = 0, where PyTorch's form cancels to 0 in float32).
    # An infinite (or NaN) logit takes PyTorch's form, (1 - t) x + (1 + (pw - 1) t) softplus(-x), so that
    # it gives PyTorch's values: x = +inf, t < 1: +inf (the form above had inf - inf = NaN); a 0 times
    # an infinity: NaN.
    if x - x != 0:
        d = -x if x < 0 else 0
        return (1 - t) * x + (1 + (pw - 1) * t) * d
    d = r_abs(x)
    l = _log1p_small(r_exp(-d))
    return pw * t * ((d - x) * <real>0.5 + l) + (1 - t) * ((d + x) * <real>0.5 + l)


cdef inline real _elem_grad(real x, real t, real pw, int kind) noexcept nogil:
    cdef real d, e, sig, den
    if kind == SQUARED:
        return 2 * (x - t)
    if kind == ABSOLUTE:
        d = x - t
        if d > 0:
            return 1
        if d < 0:
            return -1
        return d  # 0 at d == 0, NaN stays NaN
    if kind == BCE:
        den = x * (1 - x)
        if den < BCE_GRAD_EPS:
            den = BCE_GRAD_EPS
        return (x - t) / den
    # BCE_LOGITS: sigmoid(x) (1 - t + pw t) - pw t, sigmoid from exp(-|x|) so it never overflows
    e = r_exp(-r_abs(x))
    sig = (1 if x >= 0 else e) / (1 + e)
    return sig * (1 - t + pw * t) - pw * t


cdef void _elem_forward(const real[::1] x, const real[::1] t, const real[::1] w, bint has_w,
                        const real[::1] pw, bint has_pw, int kind, real[::1] out, bint keep,
                        double[::1] partial) noexcept nogil:
    cdef Py_ssize_t ch, lo, hi, i, n = x.shape[0]
    cdef double acc, v
    for ch in prange(partial.shape[0], schedule="static", num_threads=threads_for(n)):
        lo = ch * CHUNK
        hi = lo + CHUNK
        if hi > n:
            hi = n
        acc = 0
        for i in range(lo, hi):
            v = _elem_value(x[i], t[i], pw[i] if has_pw else 1, kind)
            if has_w:
                v = v * w[i]
            if keep:
                out[i] = <real>v
            acc = acc + v
        partial[ch] = acc


cdef void _elem_backward(const real[::1] g, bint per_elem, const real[::1] x, const real[::1] t,
                         const real[::1] w, bint has_w, const real[::1] pw, bint has_pw, int kind,
                         real[::1] dx) noexcept nogil:
    cdef Py_ssize_t i, n = x.shape[0]
    cdef real d
    for i in prange(n, schedule="static", num_threads=threads_for(n)):
        d = _elem_grad(x[i], t[i], pw[i] if has_pw else 1, kind)
        if has_w:
            d = d * w[i]
        dx[i] = d * (g[i] if per_elem else g[0])


cdef Py_ssize_t _first_outside_unit(const real[::1] a) noexcept nogil:
    """Index of the first value not in [0, 1] (NaN included), or -1."""
    cdef Py_ssize_t i
    for i in range(a.shape[0]):
        if not (a[i] >= 0 and a[i] <= 1):
            return i
    return -1


cdef object _elementwise_weight(object weight, object x, str name):
    """None, or `weight` broadcast to x's shape as a flat contiguous array of x's dtype."""
    if weight is None:
        return None
    weight = as_float_array(weight, name)
    check_same_dtype(x, "input", weight, name)
    try:
        full = np.broadcast_to(weight, x.shape)
    except ValueError:
        raise ValueError(f"{name} of shape {weight.shape} cannot be broadcast to the input shape {x.shape}") from None
    return aligned_c(np.ascontiguousarray(full)).reshape(-1)


cdef tuple _elem_prepare(object pred, object target, int kind, str what, str pname, object weight,
                         object pos_weight):
    pred = as_float_array(pred, pname)
    target = as_float_array(target, "target")
    check_same_dtype(pred, pname, target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"{what}: {pname} has shape {pred.shape} but target has shape {target.shape}")
    if pred.size == 0:
        raise ValueError(f"{what}: empty input of shape {pred.shape}")
    xf = pred.reshape(-1)
    tf = target.reshape(-1)
    cdef Py_ssize_t bad
    if kind == BCE:
        for arr, nm in ((xf, pname), (tf, "target")):
            bad = _first_outside_unit[float](arr) if arr.dtype == np.float32 else _first_outside_unit[double](arr)
            if bad >= 0:
                idx = tuple(int(k) for k in np.unravel_index(bad, pred.shape))
                raise ValueError(f"{what}: all elements of {nm} must lie in [0, 1]; element {idx} is {arr[bad]}")
    w = _elementwise_weight(weight, pred, "weight")
    pw = _elementwise_weight(pos_weight, pred, "pos_weight")
    return pred, xf, tf, w, pw


cdef object _elem_loss(object pred, object target, object reduction, int kind, str what, str pname,
                       object weight=None, object pos_weight=None):
    cdef int red = _reduction_code(reduction)
    pred, xf, tf, w, pw = _elem_prepare(pred, target, kind, what, pname, weight, pos_weight)
    n = xf.shape[0]
    out = np.empty_like(xf) if red == RED_NONE else _dummy(pred.dtype)
    partial = np.empty((n + CHUNK - 1) // CHUNK, dtype=np.float64)
    wa = w if w is not None else _dummy(pred.dtype)
    pwa = pw if pw is not None else _dummy(pred.dtype)
    if pred.dtype == np.float32:
        _elem_forward[float](xf, tf, wa, w is not None, pwa, pw is not None, kind, out, red == RED_NONE, partial)
    else:
        _elem_forward[double](xf, tf, wa, w is not None, pwa, pw is not None, kind, out, red == RED_NONE, partial)
    if red == RED_NONE:
        return out.reshape(pred.shape)
    return _reduced(_ordered_sum(partial), red, n, pred.dtype)


cdef object _elem_grad_of(object grad_out, object pred, object target, object reduction, int kind, str what,
                          str pname, object weight=None, object pos_weight=None):
    cdef int red = _reduction_code(reduction)
    pred, xf, tf, w, pw = _elem_prepare(pred, target, kind, what, pname, weight, pos_weight)
    scale = _grad_scale(grad_out, red, reduction, pred.shape, pred.size, pred.dtype)
    wa = w if w is not None else _dummy(pred.dtype)
    pwa = pw if pw is not None else _dummy(pred.dtype)
    dx = np.empty_like(pred)
    if pred.dtype == np.float32:
        _elem_backward[float](scale, red == RED_NONE, xf, tf, wa, w is not None, pwa, pw is not None, kind,
                              dx.reshape(-1))
    else:
        _elem_backward[double](scale, red == RED_NONE, xf, tf, wa, w is not None, pwa, pw is not None, kind,
                               dx.reshape(-1))
    return dx


def mse_forward(pred, target, reduction="mean"):
    """(pred - target)**2 averaged ("mean"), summed ("sum") or elementwise ("none")."""
    return _elem_loss(pred, target, reduction, SQUARED, "mse", "pred")


def mse_backward(grad_out, pred, target, reduction="mean"):
    """Gradient w.r.t. pred: 2 * (pred - target) * grad_out (/ numel for "mean"); w.r.t. target it is the negative."""
    return _elem_grad_of(grad_out, pred, target, reduction, SQUARED, "mse", "pred")


def l1_forward(pred, target, reduction="mean"):
    """|pred - target| averaged ("mean"), summed ("sum") or elementwise ("none")."""
    return _elem_loss(pred, target, reduction, ABSOLUTE, "l1", "pred")


def l1_backward(grad_out, pred, target, reduction="mean"):
    """Gradient w.r.t. pred: sign(pred - target) * grad_out (/ numel for "mean"), 0 where pred == target;
    w.r.t. target it is the negative."""
    return _elem_grad_of(grad_out, pred, target, reduction, ABSOLUTE, "l1", "pred")


def bce_forward(probs, target, reduction="mean", weight=None):
    """Binary cross-entropy on probabilities, as PyTorch's binary_cross_entropy:
    l = -w (t max(log p, -100) + (1 - t) max(log(1 - p), -100)); probs and target must lie in [0, 1];
    weight (optional) broadcasts to the input's shape; "mean" divides by the number of elements."""
    return _elem_loss(probs, target, reduction, BCE, "binary_cross_entropy", "probs", weight)


def bce_backward(grad_out, probs, target, reduction="mean", weight=None):
    """Gradient w.r.t. probs: g w (p - t) / max(p (1 - p), 1e-12) (PyTorch's formula)."""
    return _elem_grad_of(grad_out, probs, target, reduction, BCE, "binary_cross_entropy", "probs", weight)


def bce_with_logits_forward(logits, target, reduction="mean", weight=None, pos_weight=None):
    """Binary cross-entropy on logits, as PyTorch's binary_cross_entropy_with_logits:
    l = w (pw t softplus(-x) + (1 - t) softplus(x)) = -w (pw t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))),
    finite for any finite x. weight and pos_weight (optional) broadcast to the input's shape."""
    return _elem_loss(logits, target, reduction, BCE_LOGITS, "binary_cross_entropy_with_logits", "logits",
                      weight, pos_weight)


def bce_with_logits_backward(grad_out, logits, target, reduction="mean", weight=None, pos_weight=None):
    """Gradient w.r.t. logits: g w (sigmoid(x) (1 - t + pw t) - pw t); without pos_weight g w (sigmoid(x) - t)."""
    return _elem_grad_of(grad_out, logits, target, reduction, BCE_LOGITS, "binary_cross_entropy_with_logits",
                         "logits", weight, pos_weight)


# ----- L1 / L2 penalties ----------------------------------------------------------------------------------
cdef void _penalty_forward(const real[::1] p, double l1, double l2, double[::1] partial) noexcept nogil:
    cdef Py_ssize_t ch, lo, hi, i, n = p.shape[0]
    cdef double acc, v
    for ch in prange(partial.shape[0], schedule="static", num_threads=threads_for(n)):
        lo = ch * CHUNK
        hi = lo + CHUNK
        if hi > n:
            hi = n
        acc = 0
        for i in range(lo, hi):
            v = p[i]
            acc = acc + l1 * fabs(v) + l2 * v * v
        partial[ch] = acc


cdef void _penalty_backward(real g, const real[::1] p, double l1, double l2, real[::1] dp) noexcept nogil:
    cdef Py_ssize_t i, n = p.shape[0]
    cdef double v, sgn
    for i in prange(n, schedule="static", num_threads=threads_for(n)):
        v = p[i]
        sgn = 1 if v > 0 else (-1 if v < 0 else 0)
        dp[i] = <real>(g * (l1 * sgn + 2 * l2 * v))


cdef tuple _penalty_coeffs(object l1, object l2):
    cdef double a = finite_scalar(l1, "l1"), b = finite_scalar(l2, "l2")
    if a < 0 or b < 0:
        raise ValueError(f"penalty coefficients must be >= 0, got l1={a}, l2={b}")
    return a, b


def norm_penalty_forward(param, l1=0.0, l2=0.0):
    """l1 * sum(|param|) + l2 * sum(param**2) as a 0-d array (the L1 / L2 / elastic-net regularizer)."""
    cdef double a, b
    a, b = _penalty_coeffs(l1, l2)
    param = as_float_array(param, "param")
    pf = param.reshape(-1)
    partial = np.empty((pf.shape[0] + CHUNK - 1) // CHUNK, dtype=np.float64)
    if param.dtype == np.float32:
        _penalty_forward[float](pf, a, b, partial)
    else:
        _penalty_forward[double](pf, a, b, partial)
    return np.array(_ordered_sum(partial), dtype=param.dtype)


def norm_penalty_backward(grad_out, param, l1=0.0, l2=0.0):
    """Gradient w.r.t. param: grad_out * (l1 * sign(param) + 2 * l2 * param), with sign(0) = 0."""
    cdef double a, b
    a, b = _penalty_coeffs(l1, l2)
    param = as_float_array(param, "param")
    g = np.asarray(grad_out, dtype=param.dtype)
    if g.size != 1:
        raise ValueError(f"grad_out must be a scalar, got shape {g.shape}")
    dp = np.empty_like(param)
    if param.dtype == np.float32:
        _penalty_backward[float](g.reshape(-1)[0], param.reshape(-1), a, b, dp.reshape(-1))
    else:
        _penalty_backward[double](g.reshape(-1)[0], param.reshape(-1), a, b, dp.reshape(-1))
    return dp
