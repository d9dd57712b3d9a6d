"""Parameter initialisation with PyTorch's formulas, seeded by `fastbp.manual_seed`.

Every function fills a Tensor (or Parameter, or a plain ndarray) in place and returns it. Random draws
come from fastbp's generator (`fastbp.manual_seed(n)` makes them reproducible), happen in float64 and
are cast to the tensor's dtype, so float32 and float64 models start from the same values up to rounding.
The draws themselves are NumPy's, so the numbers differ from PyTorch's for the same seed; the
distributions (bounds, standard deviations, fans and gains) are PyTorch's.

Fans: for a weight of shape (out, in, *kernel), fan_in = in * prod(kernel) and
fan_out = out * prod(kernel) (so Linear's (out_features, in_features) weight has fan_in = in_features).
"""
import math

import numpy as np

from ..random import get_rng
from ..tensor import Tensor

__all__ = ["calculate_gain", "uniform_", "normal_", "constant_", "zeros_", "ones_", "xavier_uniform_",
           "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]


def _array(t):
    if isinstance(t, Tensor):
        return t.data
    if isinstance(t, np.ndarray):
        return t
    raise TypeError(f"init functions fill a Tensor or numpy.ndarray, got {type(t).__name__}")


def _fill(t, values):
    arr = _array(t)
    arr[...] = np.asarray(values).astype(arr.dtype, copy=False)
    return t


def _shape(t):
    return _array(t).shape


def _calculate_fan_in_and_fan_out(t):
    """(fan_in, fan_out) of a tensor with at least 2 dimensions."""
    shape = _shape(t)
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out can not be computed for a tensor with fewer than 2 dimensions "
                         f"(shape {shape})")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fan(t, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    return fan_in if mode == "fan_in" else fan_out


_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "sigmoid")


def calculate_gain(nonlinearity, param=None):
    """PyTorch's recommended gain for a nonlinearity: 1 for linear/conv/sigmoid, 5/3 for tanh, sqrt(2)
    for relu, sqrt(2 / (1 + slope^2)) for leaky_relu (slope = param, default 0.01), 3/4 for selu."""
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity!r}")


def uniform_(t, a=0.0, b=1.0):
    """Fill with draws from U(a, b)."""
    if not a <= b:
        raise ValueError(f"uniform_ needs a <= b, got a={a}, b={b}")
    return _fill(t, get_rng().uniform(a, b, size=_shape(t)))


def normal_(t, mean=0.0, std=1.0):
    """Fill with draws from N(mean, std^2)."""
    if not std >= 0:
        raise ValueError(f"normal_ needs std >= 0, got {std}")
    return _fill(t, get_rng().normal(mean, std, size=_shape(t)))


def constant_(t, val):
    """Fill with the value `val`."""
    return _fill(t, val)


def zeros_(t):
    return _fill(t, 0.0)


def ones_(t):
    return _fill(t, 1.0)


def xavier_uniform_(t, gain=1.0):
    """Glorot uniform: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out)) if fan_in + fan_out > 0 else 0.0
    a = math.sqrt(3.0) * std
    return uniform_(t, -a, a)


def xavier_normal_(t, gain=1.0):
    """Glorot normal: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out)) if fan_in + fan_out > 0 else 0.0
    return normal_(t, 0.0, std)


def _kaiming_std(t, a, mode, nonlinearity):
    fan = _fan(t, mode)
    gain = calculate_gain(nonlinearity, a)
    return gain / math.sqrt(fan) if fan > 0 else 0.0


def kaiming_uniform_(t, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He uniform: U(-bound, bound), bound = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a),
    fan = fan_in or fan_out per `mode`. `a` is the negative slope of the leaky ReLU that follows
    (only used with nonlinearity='leaky_relu'). A tensor with no elements is left as is."""
    std = _kaiming_std(t, a, mode, nonlinearity) if _array(t).size else 0.0
    bound = math.sqrt(3.0) * std
    return uniform_(t, -bound, bound)


def kaiming_normal_(t, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """He normal: N(0, std^2), std = gain / sqrt(fan), with gain and fan as in kaiming_uniform_."""
    std = _kaiming_std(t, a, mode, nonlinearity) if _array(t).size else 0.0
    return normal_(t, 0.0, std)
