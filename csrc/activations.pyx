# Design: elementwise activations, softmax / log-softmax over any axis, and the max-over-pieces of
# Maxout, forward and backward.
#   * Elementwise ops work on any shape (flattened, C-contiguous). Backward formulas use the saved input
#     (ReLU, LeakyReLU, ELU) or the saved output (sigmoid, tanh), whichever the derivative needs.
#   * Softmax-family ops view a C-contiguous array as (outer, C, inner) with C = shape[axis] and
#     normalise each of the outer*inner lines of C values (stride `inner`). axis=-1 is the row case.
#   * Maxout views its input (..., F*k) as (..., F, k) and takes the max over the k consecutive values;
#     the forward returns the argmax (intp) that the backward scatters the gradient to.
# Loops run serially below PARALLEL_MIN elements and with OpenMP prange above it; every output element
# is computed by one thread from its own inputs, so results do not depend on the thread count.
#
# Rules at non-differentiable or extreme points (PyTorch's conventions):
#   * relu'(0) = 0; leaky_relu'(0) = negative_slope; elu'(0) = alpha: at 0 the x <= 0 branch applies.
#     NaN propagates through every activation.
#   * sigmoid uses 1/(1+exp(-|x|)) for x >= 0 and exp(-|x|)/(1+exp(-|x|)) for x < 0: it never overflows;
#     elu uses expm1 (accurate near 0) and never evaluates exp of a positive number.
#   * softmax subtracts the line's max first; log-softmax returns (x - m) - log(sum exp(x - m)), finite
#     and float32-accurate for logits of size ~1000.
#   * maxout ties: the first (lowest-index) maximal piece receives the gradient; a NaN piece wins (the
#     first NaN), as numpy.argmax.
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport log
from _common cimport (bind_threading, aligned_c, real, as_float_array, check_same_dtype, threads_for, finite_scalar,
                     r_exp, r_expm1, r_abs, r_tanh, r_relu, out_array)

import numpy as np

cnp.import_array()
bind_threading()

cdef enum:
    RELU = 0
    SIGMOID = 1
    TANH = 2
    LEAKY_RELU = 3
    ELU = 4


cdef inline real _sigmoid(real x) noexcept nogil:
    # 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0, e = exp(-|x|): never overflows, and selecting the
    # numerator (rather than branching around two formulas) keeps random signs from stalling the pipeline
    cdef real e
    e = r_exp(-r_abs(x))
    return (1 if x >= 0 else e) / (1 + e)


cdef inline real _fwd(real x, int op, real a) noexcept nogil:
    # `a` is the op's parameter: negative_slope (LEAKY_RELU) or alpha (ELU); unused otherwise
    if op == RELU:
        return r_relu(x)
    if op == LEAKY_RELU:
        return x if x > 0 else x * a
    if op == ELU:
        if x > 0:
            return x
        return a * r_expm1(x)
    if op == SIGMOID:
        return _sigmoid(x)
    return r_tanh(x)


cdef inline real _bwd(real g, real s, int op, real a) noexcept nogil:
    # s is the saved input for RELU, LEAKY_RELU and ELU, the saved output for SIGMOID and TANH
    if op == RELU:
        return g if s > 0 else 0
    if op == LEAKY_RELU:
        return g if s > 0 else g * a
    if op == ELU:
        if s > 0:
            return g
        return g * a * r_exp(s)
    if op == SIGMOID:
        return g * s * (1 - s)
    return g * (1 - s * s)


cdef void _unary_forward(const real[::1] x, real[::1] y, int op, real a) noexcept nogil:
    cdef Py_ssize_t i, n = x.shape[0]
    for i in prange(n, schedule="static", num_threads=threads_for(n)):
        y[i] = _fwd(x[i], op, a)


cdef void _unary_backward(const real[::1] g, const real[::1] s, real[::1] out, int op, real a) noexcept nogil:
    cdef Py_ssize_t i, n = g.shape[0]
    for i in prange(n, schedule="static", num_threads=threads_for(n)):
        out[i] = _bwd(g[i], s[i], op, a)


cdef object _forward(object x, int op, double a=0, object out=None):
    x = as_float_array(x, "x")
    y = np.empty_like(x) if out is None else out_array(out, x.shape, x.dtype, "out")
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    if x.dtype == np.float32:
        _unary_forward[float](xf, yf, op, <float>a)
    else:
        _unary_forward[double](xf, yf, op, a)
    return y


cdef object _backward(object grad_out, object saved, str saved_name, int op, double a=0, object out=None):
    grad_out = as_float_array(grad_out, "grad_out")
    saved = as_float_array(saved, saved_name)
    check_same_dtype(grad_out, "grad_out", saved, saved_name)
    if grad_out.shape != saved.shape:
        raise ValueError(f"grad_out has shape {grad_out.shape} but {saved_name} has shape {saved.shape}")
    out = np.empty_like(grad_out) if out is None else out_array(out, grad_out.shape, grad_out.dtype, "out")
    gf = grad_out.reshape(-1)
    sf = saved.reshape(-1)
    of = out.reshape(-1)
    if grad_out.dtype == np.float32:
        _unary_backward[float](gf, sf, of, op, <float>a)
    else:
        _unary_backward[double](gf, sf, of, op, a)
    return out


def relu_forward(x, out=None):
    """max(x, 0) elementwise; NaN stays NaN."""
    return _forward(x, RELU, 0, out)


def relu_backward(grad_out, x, out=None):
    """grad_out where x > 0, else 0 (the gradient at exactly 0 is 0)."""
    return _backward(grad_out, x, "x", RELU, 0, out)


def leaky_relu_forward(x, negative_slope=0.01):
    """x for x > 0, negative_slope * x otherwise."""
    return _forward(x, LEAKY_RELU, finite_scalar(negative_slope, "negative_slope"))


def leaky_relu_backward(grad_out, x, negative_slope=0.01):
    """grad_out where x > 0, negative_slope * grad_out where x <= 0 (at exactly 0: negative_slope)."""
    return _backward(grad_out, x, "x", LEAKY_RELU, finite_scalar(negative_slope, "negative_slope"))


def elu_forward(x, alpha=1.0):
    """x for x > 0, alpha * (exp(x) - 1) otherwise (computed with expm1)."""
    return _forward(x, ELU, finite_scalar(alpha, "alpha"))


def elu_backward(grad_out, x, alpha=1.0):
    """grad_out where x > 0, grad_out * alpha * exp(x) where x <= 0 (at exactly 0: alpha)."""
    return _backward(grad_out, x, "x", ELU, finite_scalar(alpha, "alpha"))


def sigmoid_forward(x, out=None):
    """1 / (1 + exp(-x)), evaluated without overflow for any finite x."""
    return _forward(x, SIGMOID, 0, out)


def sigmoid_backward(grad_out, y, out=None):
    """grad_out * y * (1 - y) where y = sigmoid(x)."""
    return _backward(grad_out, y, "y", SIGMOID, 0, out)


def tanh_forward(x, out=None):
    """tanh(x) elementwise."""
    return _forward(x, TANH, 0, out)


def tanh_backward(grad_out, y, out=None):
    """grad_out * (1 - y**2) where y = tanh(x)."""
    return _backward(grad_out, y, "y", TANH, 0, out)


# ----- softmax / log-softmax over one axis ------------------------------------------------------------
# Sums along a line: in order within blocks of SUM_BLOCK values, blocks combined pairwise. A naive running
# sum over a line of n values has error growing like n (measured: 1.8e-6 absolute on the log-softmax
# gradient of a 300,007-value float64 line with gradients ~1e6, against an exact sum); pairwise blocks grow
# like log2(n / SUM_BLOCK). Lines of at most SUM_BLOCK values are summed exactly as before (one running
# sum), and the order depends only on the line length, never on the thread count.
cdef enum:
    SUM_BLOCK = 128


cdef double _line_sum(const real* a, const real* b, Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    """sum of a[j] (b NULL) or of a[j] b[j] (the product in the kernel's precision) for j < n, values
    `stride` apart, accumulated in double."""
    cdef Py_ssize_t j, half
    cdef double s = 0
    if n <= SUM_BLOCK:
        if b == NULL:
            for j in range(n):
                s += a[j * stride]
        else:
            for j in range(n):
                s += a[j * stride] * b[j * stride]
        return s
    half = (n // 2 + SUM_BLOCK - 1) // SUM_BLOCK * SUM_BLOCK  # split on a block boundary
    return (_line_sum(a, b, half, stride) +
            _line_sum(a + half * stride, NULL if b == NULL else b + half * stride, n - half, stride))


cdef inline void _softmax_line(const real* x, real* y, Py_ssize_t c, Py_ssize_t stride,
                               bint log_out) noexcept nogil:
    """Softmax (or log-softmax) of the c values x[0], x[stride], ..., written to y at the same offsets.
    y holds exp(x - m) first, so that the sum can be taken in blocks (_line_sum)."""
    cdef Py_ssize_t j
    cdef real m = x[0]
    cdef double s, ls
    for j in range(1, c):
        if x[j * stride] > m:
            m = x[j * stride]
    for j in range(c):
        y[j * stride] = r_exp(<real>(x[j * stride] - m))
    s = _line_sum(y, <const real*>NULL, c, stride)
    if log_out:
        # (x - m) - log(s), not x - (m + log(s)): keeps float32 accurate for logits of size ~1000
        ls = log(s)
        for j in range(c):
            y[j * stride] = <real>((x[j * stride] - m) - ls)
    else:
        s = 1 / s
        for j in range(c):
            y[j * stride] = <real>(y[j * stride] * s)


cdef inline void _softmax_line_backward(const real* g, const real* y, real* out, Py_ssize_t c,
                                        Py_ssize_t stride, bint log_out) noexcept nogil:
    cdef Py_ssize_t j
    cdef double s
    if log_out:
        s = _line_sum(g, <const real*>NULL, c, stride)
        for j in range(c):
            out[j * stride] = <real>(g[j * stride] - r_exp(y[j * stride]) * s)
    else:
        s = _line_sum(g, y, c, stride)
        for j in range(c):
            out[j * stride] = <real>(y[j * stride] * (g[j * stride] - s))


cdef void _softmax_lines(const real[:, :, ::1] x, real[:, :, ::1] y, bint log_out) noexcept nogil:
    cdef Py_ssize_t p, o, i, outer = x.shape[0], c = x.shape[1], inner = x.shape[2]
    for p in prange(outer * inner, schedule="static", num_threads=threads_for(outer * c * inner)):
        o = p // inner
        i = p - o * inner
        _softmax_line(&x[o, 0, i], &y[o, 0, i], c, inner, log_out)


cdef void _softmax_lines_backward(const real[:, :, ::1] g, const real[:, :, ::1] y, real[:, :, ::1] out,
                                  bint log_out) noexcept nogil:
    cdef Py_ssize_t p, o, i, outer = g.shape[0], c = g.shape[1], inner = g.shape[2]
    for p in prange(outer * inner, schedule="static", num_threads=threads_for(outer * c * inner)):
        o = p // inner
        i = p - o * inner
        _softmax_line_backward(&g[o, 0, i], &y[o, 0, i], &out[o, 0, i], c, inner, log_out)


cdef tuple _axis_view(object a, object axis, str name):
    """(outer, C, inner) for normalising `a` over `axis`, after validating both."""
    if a.ndim == 0:
        raise ValueError(f"softmax needs at least 1 dimension, got {name} of shape {a.shape}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    cdef Py_ssize_t ax = axis
    if ax < -a.ndim or ax >= a.ndim:
        raise ValueError(f"axis {axis} is out of range for {name} of shape {a.shape}")
    if ax < 0:
        ax += a.ndim
    cdef Py_ssize_t c = a.shape[ax]
    if c == 0:
        raise ValueError(f"softmax over an empty axis {axis}, {name} of shape {a.shape}")
    cdef Py_ssize_t outer = 1, inner = 1, k
    for k in range(ax):
        outer *= a.shape[k]
    for k in range(ax + 1, a.ndim):
        inner *= a.shape[k]
    return (outer, c, inner)


cdef object _softmax_fwd(object x, object axis, bint log_out):
    x = as_float_array(x, "x")
    shape3 = _axis_view(x, axis, "x")
    y = np.empty_like(x)
    if x.dtype == np.float32:
        _softmax_lines[float](x.reshape(shape3), y.reshape(shape3), log_out)
    else:
        _softmax_lines[double](x.reshape(shape3), y.reshape(shape3), log_out)
    return y


cdef object _softmax_bwd(object grad_out, object y, object axis, bint log_out):
    grad_out = as_float_array(grad_out, "grad_out")
    y = as_float_array(y, "y")
    check_same_dtype(grad_out, "grad_out", y, "y")
    if grad_out.shape != y.shape:
        raise ValueError(f"grad_out has shape {grad_out.shape} but y has shape {y.shape}")
    shape3 = _axis_view(y, axis, "y")
    out = np.empty_like(y)
    if y.dtype == np.float32:
        _softmax_lines_backward[float](grad_out.reshape(shape3), y.reshape(shape3), out.reshape(shape3), log_out)
    else:
        _softmax_lines_backward[double](grad_out.reshape(shape3), y.reshape(shape3), out.reshape(shape3), log_out)
    return out


def softmax_forward(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) over `axis`."""
    return _softmax_fwd(x, axis, False)


def softmax_backward(grad_out, y, axis=-1):
    """y * (grad_out - sum(grad_out * y)) over `axis`, where y = softmax(x)."""
    return _softmax_bwd(grad_out, y, axis, False)


def log_softmax_forward(x, axis=-1):
    """(x - max) - log(sum(exp(x - max))) over `axis` (finite for finite x)."""
    return _softmax_fwd(x, axis, True)


def log_softmax_backward(grad_out, y, axis=-1):
    """grad_out - exp(y) * sum(grad_out) over `axis`, where y = log_softmax(x)."""
    return _softmax_bwd(grad_out, y, axis, True)


# ----- maxout: max over k consecutive pieces -----------------------------------------------------------
cdef void _maxout_forward(const real[:, ::1] x, real[::1] y, Py_ssize_t[::1] arg) noexcept nogil:
    cdef Py_ssize_t u, j, best, units = x.shape[0], k = x.shape[1]
    cdef real m, v
    for u in prange(units, schedule="static", num_threads=threads_for(units * k)):
        m = x[u, 0]
        best = 0
        for j in range(1, k):
            v = x[u, j]
            # strict > keeps the first maximum; a NaN wins once and then stays (as numpy.argmax)
            if v > m or (v != v and m == m):
                m = v
                best = j
        y[u] = m
        arg[u] = best


cdef void _maxout_backward(const real[::1] g, const Py_ssize_t[::1] arg, real[:, ::1] dx) noexcept nogil:
    cdef Py_ssize_t u, j, units = dx.shape[0], k = dx.shape[1]
    for u in prange(units, schedule="static", num_threads=threads_for(units * k)):
        for j in range(k):
            dx[u, j] = 0
        dx[u, arg[u]] = g[u]


cdef Py_ssize_t _pieces(object pieces) except -1:
    if isinstance(pieces, bool) or not isinstance(pieces, (int, np.integer)):
        raise TypeError(f"pieces must be an int, got {type(pieces).__name__}")
    if pieces < 1:
        raise ValueError(f"pieces must be >= 1, got {pieces}")
    return pieces


def maxout_forward(x, pieces):
    """Max over groups of `pieces` consecutive values of the last axis: x (..., F*pieces) -> (..., F).

    Returns (y, argmax): argmax (intp, shape of y) is the winning piece of each output, the first one
    on ties, which maxout_backward needs."""
    cdef Py_ssize_t k = _pieces(pieces)
    x = as_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError(f"maxout needs at least 1 dimension, got x of shape {x.shape}")
    last = x.shape[x.ndim - 1]
    if last % k != 0:
        raise ValueError(f"maxout: the last axis of x (shape {x.shape}) is not a multiple of pieces={k}")
    out_shape = x.shape[:x.ndim - 1] + (last // k,)
    y = np.empty(out_shape, dtype=x.dtype)
    arg = np.empty(out_shape, dtype=np.intp)
    x2 = x.reshape(-1, k)
    if x.dtype == np.float32:
        _maxout_forward[float](x2, y.reshape(-1), arg.reshape(-1))
    else:
        _maxout_forward[double](x2, y.reshape(-1), arg.reshape(-1))
    return y, arg


def maxout_backward(grad_out, argmax, pieces):
    """Gradient w.r.t. x (..., F*pieces): grad_out[..., f] goes to piece argmax[..., f] of group f, zeros
    elsewhere."""
    cdef Py_ssize_t k = _pieces(pieces)
    grad_out = as_float_array(grad_out, "grad_out")
    if grad_out.ndim == 0:
        raise ValueError(f"maxout needs at least 1 dimension, got grad_out of shape {grad_out.shape}")
    if not isinstance(argmax, np.ndarray) or argmax.dtype.kind not in "iu":
        got = getattr(argmax, "dtype", type(argmax).__name__)
        raise TypeError(f"argmax must be an integer numpy.ndarray, got {got}")
    if argmax.shape != grad_out.shape:
        raise ValueError(f"argmax has shape {argmax.shape} but grad_out has shape {grad_out.shape}")
    arg = aligned_c(np.ascontiguousarray(argmax, dtype=np.intp)).reshape(-1)
    if arg.size and (arg.min() < 0 or arg.max() >= k):
        raise ValueError(f"argmax values must lie in [0, {k}), got range [{arg.min()}, {arg.max()}]")
    dx = np.empty(grad_out.shape[:grad_out.ndim - 1] + (grad_out.shape[grad_out.ndim - 1] * k,), dtype=grad_out.dtype)
    if grad_out.dtype == np.float32:
        _maxout_backward[float](grad_out.reshape(-1), arg, dx.reshape(-1, k))
    else:
        _maxout_backward[double](grad_out.reshape(-1), arg, dx.reshape(-1, k))
    return dx
