# Design: elementwise activations and row-wise softmax / log-softmax, forward and backward.
# Elementwise ops work on any shape (flattened, C-contiguous); softmax-family ops normalise over the
# last axis of a C-contiguous array viewed as (rows, C). Loops run serially below PARALLEL_MIN elements
# and with OpenMP prange above it. Backward formulas use the saved input (ReLU) or the saved output
# (sigmoid, tanh, softmax, log-softmax), whichever the derivative needs.
#
# Rules at non-differentiable or extreme points:
#   * relu'(0) = 0 (as PyTorch); relu(NaN) = NaN (NaN propagates, as np.maximum).
#   * sigmoid uses 1/(1+exp(-x)) for x >= 0 and exp(x)/(1+exp(x)) for x < 0, so it never overflows.
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport exp, expf, tanh, tanhf, log, logf
from _common cimport real, as_float_array, check_same_dtype, threads_for

import numpy as np

cnp.import_array()

cdef enum:
    RELU = 0
    SIGMOID = 1
    TANH = 2


cdef inline real _sigmoid(real x) noexcept nogil:
    cdef real e
    if x >= 0:
        if real is float:
            return 1.0 / (1.0 + expf(-x))
        else:
            return 1.0 / (1.0 + exp(-x))
    if real is float:
        e = expf(x)
    else:
        e = exp(x)
    return e / (1 + e)


cdef inline real _fwd(real x, int op) noexcept nogil:
    if op == RELU:
        return 0 if x <= 0 else x
    if op == SIGMOID:
        return _sigmoid(x)
    if real is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline real _bwd(real g, real s, int op) noexcept nogil:
    # s is the saved input for RELU, the saved output for SIGMOID and TANH
    if op == RELU:
        return g if s > 0 else 0
    if op == SIGMOID:
        return g * s * (1 - s)
    return g * (1 - s * s)


cdef void _unary_forward(const real[::1] x, real[::1] y, int op) noexcept nogil:
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, schedule="static", num_threads=threads_for(n)):
        y[i] = _fwd(x[i], op)


cdef void _unary_backward(const real[::1] g, const real[::1] s, real[::1] out, int op) noexcept nogil:
    cdef Py_ssize_t i, n = g.shape[0]
    for i in prange(n, schedule="static", num_threads=threads_for(n)):
        out[i] = _bwd(g[i], s[i], op)


cdef object _forward(object x, int op):
    x = as_float_array(x, "x")
    y = np.empty_like(x)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    if x.dtype == np.float32:
        _unary_forward[float](xf, yf, op)
    else:
        _unary_forward[double](xf, yf, op)
    return y


cdef object _backward(object grad_out, object saved, str saved_name, int op):
    grad_out = as_float_array(grad_out, "grad_out")
    saved = as_float_array(saved, saved_name)
    check_same_dtype(grad_out, "grad_out", saved, saved_name)
    if grad_out.shape != saved.shape:
        raise ValueError(f"grad_out has shape {grad_out.shape} but {saved_name} has shape {saved.shape}")
    out = np.empty_like(grad_out)
    gf = grad_out.reshape(-1)
    sf = saved.reshape(-1)
    of = out.reshape(-1)
    if grad_out.dtype == np.float32:
        _unary_backward[float](gf, sf, of, op)
    else:
        _unary_backward[double](gf, sf, of, op)
    return out


def relu_forward(x):
    """max(x, 0) elementwise; NaN stays NaN."""
    return _forward(x, RELU)


def relu_backward(grad_out, x):
    """grad_out where x > 0, else 0 (the gradient at exactly 0 is 0)."""
    return _backward(grad_out, x, "x", RELU)


def sigmoid_forward(x):
    """1 / (1 + exp(-x)), evaluated without overflow for any finite x."""
    return _forward(x, SIGMOID)


def sigmoid_backward(grad_out, y):
    """grad_out * y * (1 - y) where y = sigmoid(x)."""
    return _backward(grad_out, y, "y", SIGMOID)


def tanh_forward(x):
    """tanh(x) elementwise."""
    return _forward(x, TANH)


def tanh_backward(grad_out, y):
    """grad_out * (1 - y**2) where y = tanh(x)."""
    return _backward(grad_out, y, "y", TANH)


cdef void _softmax_rows(const real[:, ::1] x, real[:, ::1] y, bint log_out) noexcept nogil:
    cdef Py_ssize_t r, j, rows = x.shape[0], c = x.shape[1]
    cdef real m, s
    for r in range(rows):
        m = x[r, 0]
        for j in range(1, c):
            if x[r, j] > m:
                m = x[r, j]
        s = 0
        for j in range(c):
            if real is float:
                y[r, j] = expf(x[r, j] - m)
            else:
                y[r, j] = exp(x[r, j] - m)
            s = s + y[r, j]
        if log_out:
            # (x - m) - log(s), not x - (m + log(s)): keeps float32 accurate for logits of size ~1000
            if real is float:
                s = logf(s)
            else:
                s = log(s)
            for j in range(c):
                y[r, j] = (x[r, j] - m) - s
        else:
            s = 1 / s
            for j in range(c):
                y[r, j] = y[r, j] * s


cdef void _softmax_rows_backward(const real[:, ::1] g, const real[:, ::1] y, real[:, ::1] out,
                                 bint log_out) noexcept nogil:
    cdef Py_ssize_t r, j, rows = g.shape[0], c = g.shape[1]
    cdef real s
    for r in range(rows):
        s = 0
        if log_out:
            for j in range(c):
                s = s + g[r, j]
            for j in range(c):
                if real is float:
                    out[r, j] = g[r, j] - expf(y[r, j]) * s
                else:
                    out[r, j] = g[r, j] - exp(y[r, j]) * s
        else:
            for j in range(c):
                s = s + g[r, j] * y[r, j]
            for j in range(c):
                out[r, j] = y[r, j] * (g[r, j] - s)


cdef object _as_rows(object a):
    if a.ndim == 0:
        raise ValueError(f"softmax needs at least 1 dimension, got shape {a.shape}")
    if a.shape[a.ndim - 1] == 0:
        raise ValueError(f"softmax over an empty last axis, shape {a.shape}")
    return a.reshape(-1, a.shape[a.ndim - 1])


cdef object _softmax_fwd(object x, bint log_out):
    x = as_float_array(x, "x")
    y = np.empty_like(x)
    xr = _as_rows(x)
    yr = y.reshape(xr.shape)
    if x.dtype == np.float32:
        _softmax_rows[float](xr, yr, log_out)
    else:
        _softmax_rows[double](xr, yr, log_out)
    return y


cdef object _softmax_bwd(object grad_out, object y, bint log_out):
    grad_out = as_float_array(grad_out, "grad_out")
    y = as_float_array(y, "y")
    check_same_dtype(grad_out, "grad_out", y, "y")
    if grad_out.shape != y.shape:
        raise ValueError(f"grad_out has shape {grad_out.shape} but y has shape {y.shape}")
    out = np.empty_like(y)
    gr = _as_rows(grad_out)
    yr = y.reshape(gr.shape)
    orr = out.reshape(gr.shape)
    if y.dtype == np.float32:
        _softmax_rows_backward[float](gr, yr, orr, log_out)
    else:
        _softmax_rows_backward[double](gr, yr, orr, log_out)
    return out


def softmax_forward(x):
    """exp(x - max) / sum(exp(x - max)) over the last axis."""
    return _softmax_fwd(x, False)


def softmax_backward(grad_out, y):
    """y * (grad_out - sum(grad_out * y)) over the last axis, where y = softmax(x)."""
    return _softmax_bwd(grad_out, y, False)


def log_softmax_forward(x):
    """x - logsumexp(x) over the last axis (max subtracted first, so finite for finite x)."""
    return _softmax_fwd(x, True)


def log_softmax_backward(grad_out, y):
    """grad_out - exp(y) * sum(grad_out) over the last axis, where y = log_softmax(x)."""
    return _softmax_bwd(grad_out, y, True)
