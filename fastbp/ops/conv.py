"""Convolution and pooling ops; forward and backward are backend kernels (compiled or reference)."""
from .. import _backend
from ..tensor import Function


class Conv2d(Function):
    """y = conv2d(x, weight) + bias; x (N, C, H, W), weight (O, C, kH, kW), bias (O,) or None.

    Saves x and weight (backward recomputes the im2col columns instead of keeping them); gradients are
    computed only for the inputs that need them."""

    @staticmethod
    def forward(ctx, x, weight, bias=None, stride=1, padding=0, dilation=1):
        ctx.x, ctx.w, ctx.geom = x, weight, (stride, padding, dilation)
        return _backend.current.conv2d_forward(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, g):
        nx, nw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        nb = len(ctx.needs_input_grad) > 2 and ctx.needs_input_grad[2]
        stride, padding, dilation = ctx.geom
        return _backend.current.conv2d_backward(g, ctx.x, ctx.w, stride, padding, dilation, nx, nw, nb)


class MaxPool2d(Function):
    """Max over windows; saves only the int64 argmax indices and the input shape."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride=None, padding=0, dilation=1):
        y, ctx.indices = _backend.current.max_pool2d_forward(x, kernel_size, stride, padding, dilation)
        ctx.shape = x.shape
        return y

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.max_pool2d_backward(g, ctx.indices, ctx.shape),)


class AvgPool2d(Function):
    """Mean over windows, padded zeros counted (count_include_pad=True); saves only the input shape."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride=None, padding=0):
        ctx.shape, ctx.geom = x.shape, (kernel_size, stride, padding)
        return _backend.current.avg_pool2d_forward(x, kernel_size, stride, padding)

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.avg_pool2d_backward(g, ctx.shape, *ctx.geom),)


class GlobalAvgPool2d(Function):
    """Mean over each (H, W) plane: (N, C, H, W) -> (N, C, 1, 1)."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return _backend.current.global_avg_pool2d_forward(x)

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.global_avg_pool2d_backward(g, ctx.shape),)
