"""NumPy references for csrc/activations.pyx.

Rules at kinks (PyTorch's): relu'(0) = 0, leaky_relu'(0) = negative_slope, elu'(0) = alpha (the x <= 0
branch); maxout's gradient goes to the first maximal piece on ties."""
import numbers

import numpy as np

from ._util import as_float_array, check_same_dtype, finite_scalar


def _check_pair(grad_out, saved, name):
    as_float_array(grad_out, "grad_out")
    as_float_array(saved, name)
    check_same_dtype(grad_out, "grad_out", saved, name)
    if grad_out.shape != saved.shape:
        raise ValueError(f"grad_out has shape {grad_out.shape} but {name} has shape {saved.shape}")


def relu_forward(x):
    """relu(x) = max(x, 0)."""
    as_float_array(x, "x")
    return np.asarray(np.maximum(x, 0))  # a 0-d input gives a 0-d array, not a NumPy scalar


def relu_backward(grad_out, x):
    """relu'(x) = 1 for x > 0, 0 for x <= 0 (0 at exactly 0, as PyTorch)."""
    _check_pair(grad_out, x, "x")
    return np.where(x > 0, grad_out, 0).astype(x.dtype)


def leaky_relu_forward(x, negative_slope=0.01):
    """leaky_relu(x) = x for x > 0, negative_slope * x for x <= 0."""
    as_float_array(x, "x")
    a = x.dtype.type(finite_scalar(negative_slope, "negative_slope"))
    return np.where(x > 0, x, x * a).astype(x.dtype)


def leaky_relu_backward(grad_out, x, negative_slope=0.01):
    """leaky_relu'(x) = 1 for x > 0, negative_slope for x <= 0 (negative_slope at exactly 0, as PyTorch)."""
    _check_pair(grad_out, x, "x")
    a = x.dtype.type(finite_scalar(negative_slope, "negative_slope"))
    return np.where(x > 0, grad_out, grad_out * a).astype(x.dtype)


def elu_forward(x, alpha=1.0):
    """elu(x) = x for x > 0, alpha (exp(x) - 1) for x <= 0."""
    as_float_array(x, "x")
    a = x.dtype.type(finite_scalar(alpha, "alpha"))
    return np.where(x > 0, x, a * np.expm1(np.minimum(x, 0))).astype(x.dtype)


def elu_backward(grad_out, x, alpha=1.0):
    """elu'(x) = 1 for x > 0, alpha exp(x) for x <= 0 (alpha at exactly 0, as PyTorch)."""
    _check_pair(grad_out, x, "x")
    a = x.dtype.type(finite_scalar(alpha, "alpha"))
    return np.where(x > 0, grad_out, grad_out * a * np.exp(np.minimum(x, 0))).astype(x.dtype)


def sigmoid_forward(x):
    """sigmoid(x) = 1 / (1 + exp(-x)), written as exp(x) / (1 + exp(x)) for x < 0 to avoid overflow."""
    as_float_array(x, "x")
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def sigmoid_backward(grad_out, y):
    """sigmoid'(x) = y (1 - y) with y = sigmoid(x)."""
    _check_pair(grad_out, y, "y")
    return np.asarray(grad_out * y * (1 - y))


def tanh_forward(x):
    """tanh(x)."""
    as_float_array(x, "x")
    return np.asarray(np.tanh(x))


def tanh_backward(grad_out, y):
    """tanh'(x) = 1 - y^2 with y = tanh(x)."""
    _check_pair(grad_out, y, "y")
    return np.asarray(grad_out * (1 - y * y))


def _check_axis(a, axis, name):
    if a.ndim == 0:
        raise ValueError(f"softmax needs at least 1 dimension, got {name} of shape {a.shape}")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -a.ndim <= axis < a.ndim:
        raise ValueError(f"axis {axis} is out of range for {name} of shape {a.shape}")
    if a.shape[axis] == 0:
        raise ValueError(f"softmax over an empty axis {axis}, {name} of shape {a.shape}")


@np.errstate(invalid="ignore")  # NaN/inf lines give NaN, as in the kernel; no warning
def softmax_forward(x, axis=-1):
    """softmax(x)_j = exp(x_j - m) / sum_k exp(x_k - m), m = max_k x_k, along `axis` (sums in float64)."""
    as_float_array(x, "x")
    _check_axis(x, axis, "x")
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True, dtype=np.float64)).astype(x.dtype)


def softmax_backward(grad_out, y, axis=-1):
    """dL/dx_j = y_j (g_j - sum_k g_k y_k)."""
    _check_pair(grad_out, y, "y")
    _check_axis(y, axis, "y")
    s = (grad_out * y).sum(axis=axis, keepdims=True, dtype=np.float64)
    return (y * (grad_out - s)).astype(y.dtype)


@np.errstate(invalid="ignore")  # NaN/inf lines give NaN, as in the kernel; no warning
def log_softmax_forward(x, axis=-1):
    """log_softmax(x)_j = (x_j - m) - log sum_k exp(x_k - m)."""
    as_float_array(x, "x")
    _check_axis(x, axis, "x")
    shifted = x - x.max(axis=axis, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True, dtype=np.float64))).astype(x.dtype)


def log_softmax_backward(grad_out, y, axis=-1):
    """dL/dx_j = g_j - exp(y_j) sum_k g_k."""
    _check_pair(grad_out, y, "y")
    _check_axis(y, axis, "y")
    return (grad_out - np.exp(y) * grad_out.sum(axis=axis, keepdims=True, dtype=np.float64)).astype(y.dtype)


def _check_pieces(pieces):
    if isinstance(pieces, bool) or not isinstance(pieces, numbers.Integral):
        raise TypeError(f"pieces must be an int, got {type(pieces).__name__}")
    if pieces < 1:
        raise ValueError(f"pieces must be >= 1, got {pieces}")


def maxout_forward(x, pieces):
    """y[..., f] = max_j x[..., f * pieces + j]; returns (y, argmax) with the first maximal j on ties."""
    _check_pieces(pieces)
    as_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError(f"maxout needs at least 1 dimension, got x of shape {x.shape}")
    if x.shape[-1] % pieces != 0:
        raise ValueError(f"maxout: the last axis of x (shape {x.shape}) is not a multiple of pieces={pieces}")
    groups = x.reshape(x.shape[:-1] + (x.shape[-1] // pieces, pieces))
    arg = np.argmax(groups, axis=-1).astype(np.intp)
    y = np.take_along_axis(groups, arg[..., None], axis=-1)[..., 0]
    return y.astype(x.dtype), arg


def maxout_backward(grad_out, argmax, pieces):
    """dL/dx[..., f * pieces + j] = g[..., f] if j == argmax[..., f] else 0."""
    _check_pieces(pieces)
    as_float_array(grad_out, "grad_out")
    if grad_out.ndim == 0:
        raise ValueError(f"maxout needs at least 1 dimension, got grad_out of shape {grad_out.shape}")
    if not isinstance(argmax, np.ndarray) or argmax.dtype.kind not in "iu":
        got = getattr(argmax, "dtype", type(argmax).__name__)
        raise TypeError(f"argmax must be an integer numpy.ndarray, got {got}")
    if argmax.shape != grad_out.shape:
        raise ValueError(f"argmax has shape {argmax.shape} but grad_out has shape {grad_out.shape}")
    if argmax.size and (argmax.min() < 0 or argmax.max() >= pieces):
        raise ValueError(f"argmax values must lie in [0, {pieces}), got range [{argmax.min()}, {argmax.max()}]")
    onehot = np.arange(pieces) == argmax[..., None]
    dx = np.where(onehot, grad_out[..., None], 0).astype(grad_out.dtype)
    return dx.reshape(grad_out.shape[:-1] + (grad_out.shape[-1] * pieces,))
