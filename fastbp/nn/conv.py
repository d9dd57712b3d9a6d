"""Convolution, pooling and flattening layers with PyTorch's arguments, shapes and initialisation."""
import math
import operator

import numpy as np

from .._dtype import get_default_dtype
from . import functional as F
from . import init
from .module import Module, Parameter


def _pair(v, name, minimum):
    """An int or a pair of ints, each >= minimum, as a tuple (checked when the layer is built)."""
    vals = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(vals) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    try:
        vals = tuple(operator.index(a) for a in vals)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if min(vals) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return vals


class Conv2d(Module):
    """2-D convolution over NCHW input, as torch.nn.Conv2d (groups=1, zero padding).

    weight (out_channels, in_channels, kH, kW) ~ kaiming_uniform_(a=sqrt(5)), i.e. U(-b, b) with
    b = 1/sqrt(fan_in), fan_in = in_channels kH kW; bias (out_channels,) ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    kernel_size, stride, padding and dilation are an int or a (height, width) pair."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 dtype=None):
        super().__init__()
        if operator.index(in_channels) < 1 or operator.index(out_channels) < 1:
            raise ValueError(f"Conv2d: channel counts must be >= 1, got in_channels={in_channels}, "
                             f"out_channels={out_channels}")
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        self.weight = Parameter(np.empty((self.out_channels, self.in_channels) + self.kernel_size, dtype=dtype))
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if bias:
            fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            self.bias = Parameter(np.empty(self.out_channels, dtype=dtype))
            init.uniform_(self.bias, -bound, bound)
        else:
            self.bias = None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s


class MaxPool2d(Module):
    """Max pooling (stride defaults to kernel_size). Ties: the first maximum in row-major window order
    gets the gradient; NaN counts as the maximum."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}")


class AvgPool2d(Module):
    """Average pooling with count_include_pad=True (padded zeros count; divisor kH kW), as PyTorch's default."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GlobalAvgPool2d(Module):
    """Mean over each feature map: (N, C, H, W) -> (N, C, 1, 1), as torch.nn.AdaptiveAvgPool2d(1)."""

    def forward(self, x):
        return F.global_avg_pool2d(x)


class Flatten(Module):
    """Flatten dimensions start_dim..end_dim into one (default: all but the batch dimension)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        shape = x.shape
        nd = len(shape)
        s, e = self.start_dim % nd if nd else 0, self.end_dim % nd if nd else 0
        if s > e:
            raise ValueError(f"Flatten: start_dim {self.start_dim} comes after end_dim {self.end_dim} "
                             f"for an input of shape {shape}")
        new = shape[:s] + (int(np.prod(shape[s:e + 1], dtype=np.int64)),) + shape[e + 1:]
        return x.reshape(new)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
