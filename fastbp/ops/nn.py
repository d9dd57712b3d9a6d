"""Ops whose forward and backward are backend kernels (compiled or reference, as selected)."""
import numpy as np

from .. import _backend
from ..tensor import Function


class Linear(Function):
    """y = x @ weight.T + bias (x: (N, in), weight: (out, in), bias: (out,) or None)."""

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        ctx.x, ctx.w = x, weight
        return _backend.current.linear_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        nx, nw, nb = ctx.needs_input_grad
        return _backend.current.linear_backward(g, ctx.x, ctx.w, nx, nw, nb)


class Relu(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return _backend.current.relu_forward(x)

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.relu_backward(g, ctx.x),)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.y = y = _backend.current.sigmoid_forward(x)
        return y

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.sigmoid_backward(g, ctx.y),)


class Tanh(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.y = y = _backend.current.tanh_forward(x)
        return y

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.tanh_backward(g, ctx.y),)


def _move_last(x, axis):
    axis = axis % x.ndim if x.ndim else 0
    return (x if axis == x.ndim - 1 else np.moveaxis(x, axis, -1)), axis


class Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        xl, ctx.axis = _move_last(x, axis)
        ctx.y = y = _backend.current.softmax_forward(np.ascontiguousarray(xl))
        return np.moveaxis(y, -1, ctx.axis) if ctx.axis != x.ndim - 1 else y

    @staticmethod
    def backward(ctx, g):
        gl = g if ctx.axis == g.ndim - 1 else np.moveaxis(g, ctx.axis, -1)
        d = _backend.current.softmax_backward(np.ascontiguousarray(gl), ctx.y)
        return (d if ctx.axis == g.ndim - 1 else np.moveaxis(d, -1, ctx.axis),)


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        xl, ctx.axis = _move_last(x, axis)
        ctx.y = y = _backend.current.log_softmax_forward(np.ascontiguousarray(xl))
        return np.moveaxis(y, -1, ctx.axis) if ctx.axis != x.ndim - 1 else y

    @staticmethod
    def backward(ctx, g):
        gl = g if ctx.axis == g.ndim - 1 else np.moveaxis(g, ctx.axis, -1)
        d = _backend.current.log_softmax_backward(np.ascontiguousarray(gl), ctx.y)
        return (d if ctx.axis == g.ndim - 1 else np.moveaxis(d, -1, ctx.axis),)


class CrossEntropy(Function):
    """Softmax cross-entropy of logits (N, C) with integer labels (N,)."""

    @staticmethod
    def forward(ctx, logits, labels, reduction="mean"):
        loss, ctx.lse = _backend.current.cross_entropy_forward(logits, labels, reduction)
        ctx.logits, ctx.labels, ctx.reduction = logits, labels, reduction
        return loss

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.cross_entropy_backward(g, ctx.logits, ctx.labels, ctx.lse, ctx.reduction), None)


class MSELoss(Function):
    @staticmethod
    def forward(ctx, pred, target, reduction="mean"):
        ctx.pred, ctx.target, ctx.reduction = pred, target, reduction
        return _backend.current.mse_forward(pred, target, reduction)

    @staticmethod
    def backward(ctx, g):
        d = _backend.current.mse_backward(g, ctx.pred, ctx.target, ctx.reduction)
        return (d if ctx.needs_input_grad[0] else None, -d if ctx.needs_input_grad[1] else None)
