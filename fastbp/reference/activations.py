"""NumPy references for csrc/activations.pyx."""
import numpy as np

from ._util import as_float_array, check_same_dtype


def _check_pair(grad_out, saved, name):
    as_float_array(grad_out, "grad_out")
    as_float_array(saved, name)
    check_same_dtype(grad_out, "grad_out", saved, name)
    if grad_out.shape != saved.shape:
        raise ValueError(f"grad_out has shape {grad_out.shape} but {name} has shape {saved.shape}")


def relu_forward(x):
    """relu(x) = max(x, 0)."""
    as_float_array(x, "x")
    return np.maximum(x, 0)


def relu_backward(grad_out, x):
    """relu'(x) = 1 for x > 0, 0 for x <= 0 (0 at exactly 0, as PyTorch)."""
    _check_pair(grad_out, x, "x")
    return np.where(x > 0, grad_out, 0).astype(x.dtype)


def sigmoid_forward(x):
    """sigmoid(x) = 1 / (1 + exp(-x)), written as exp(x) / (1 + exp(x)) for x < 0 to avoid overflow."""
    as_float_array(x, "x")
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def sigmoid_backward(grad_out, y):
    """sigmoid'(x) = y (1 - y) with y = sigmoid(x)."""
    _check_pair(grad_out, y, "y")
    return grad_out * y * (1 - y)


def tanh_forward(x):
    """tanh(x)."""
    as_float_array(x, "x")
    return np.tanh(x)


def tanh_backward(grad_out, y):
    """tanh'(x) = 1 - y^2 with y = tanh(x)."""
    _check_pair(grad_out, y, "y")
    return grad_out * (1 - y * y)


def _check_softmax_input(x):
    if x.ndim == 0:
        raise ValueError(f"softmax needs at least 1 dimension, got shape {x.shape}")
    if x.shape[-1] == 0:
        raise ValueError(f"softmax over an empty last axis, shape {x.shape}")


def softmax_forward(x):
    """softmax(x)_j = exp(x_j - m) / sum_k exp(x_k - m), m = max_k x_k, over the last axis."""
    as_float_array(x, "x")
    _check_softmax_input(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(grad_out, y):
    """dL/dx_j = y_j (g_j - sum_k g_k y_k)."""
    _check_pair(grad_out, y, "y")
    _check_softmax_input(y)
    return y * (grad_out - (grad_out * y).sum(axis=-1, keepdims=True))


def log_softmax_forward(x):
    """log_softmax(x)_j = x_j - m - log sum_k exp(x_k - m)."""
    as_float_array(x, "x")
    _check_softmax_input(x)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def log_softmax_backward(grad_out, y):
    """dL/dx_j = g_j - exp(y_j) sum_k g_k."""
    _check_pair(grad_out, y, "y")
    _check_softmax_input(y)
    return grad_out - np.exp(y) * grad_out.sum(axis=-1, keepdims=True)
