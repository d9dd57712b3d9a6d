"""Tensor arithmetic for the graph: + - * / ** @, neg, sum, mean, reshape, transpose, indexing, exp,
log, abs, dtype casts. Elementwise ops are NumPy; the 2-D `@` goes through the backend's `matmul`
kernel. Backward of a broadcasting op sums the gradient back to each input's shape."""
import numpy as np

from .. import _backend
from ..tensor import Function


def unbroadcast(grad, shape):
    """Sum `grad` over the axes that broadcasting added or stretched, so it has `shape`."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _shape(x):
    return np.shape(x)


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        return np.add(a, b)

    @staticmethod
    def backward(ctx, g):
        na, nb = ctx.needs_input_grad
        return (unbroadcast(g, ctx.shapes[0]) if na else None,
                unbroadcast(g, ctx.shapes[1]) if nb else None)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        return np.subtract(a, b)

    @staticmethod
    def backward(ctx, g):
        na, nb = ctx.needs_input_grad
        return (unbroadcast(g, ctx.shapes[0]) if na else None,
                unbroadcast(-g, ctx.shapes[1]) if nb else None)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        na, nb = ctx.needs_input_grad
        ctx.a = a if nb else None
        ctx.b = b if na else None
        ctx.shapes = (_shape(a), _shape(b))
        return np.multiply(a, b)

    @staticmethod
    def backward(ctx, g):
        na, nb = ctx.needs_input_grad
        return (unbroadcast(g * ctx.b, ctx.shapes[0]) if na else None,
                unbroadcast(g * ctx.a, ctx.shapes[1]) if nb else None)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        ctx.shapes = (_shape(a), _shape(b))
        return np.divide(a, b)

    @staticmethod
    def backward(ctx, g):
        na, nb = ctx.needs_input_grad
        ga = unbroadcast(g / ctx.b, ctx.shapes[0]) if na else None
        gb = unbroadcast(-g * ctx.a / (ctx.b * ctx.b), ctx.shapes[1]) if nb else None
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return np.negative(a)

    @staticmethod
    def backward(ctx, g):
        return (-g,)


class Pow(Function):
    @staticmethod
    def forward(ctx, a, exponent):
        if not np.isscalar(exponent):
            raise TypeError(f"tensor ** exponent needs a scalar exponent, got {type(exponent).__name__}")
        ctx.a, ctx.p = a, exponent
        return np.power(a, a.dtype.type(exponent) if a.dtype.kind == "f" else exponent)

    @staticmethod
    def backward(ctx, g):
        p = ctx.a.dtype.type(ctx.p)
        return (g * p * np.power(ctx.a, p - 1),)


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.y = np.exp(a)
        return ctx.y

    @staticmethod
    def backward(ctx, g):
        return (g * ctx.y,)


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        return (g / ctx.a,)


class Abs(Function):
    """|x|, with gradient sign(x) (0 at exactly 0, as PyTorch)."""

    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return np.abs(a)

    @staticmethod
    def backward(ctx, g):
        return (g * np.sign(ctx.a),)


class MatMul(Function):
    """a @ b. 2-D operands go through the backend's GEMM kernel; other ranks use NumPy's matmul rules."""

    @staticmethod
    def forward(ctx, a, b):
        a = np.asarray(a)
        b = np.asarray(b)
        na, nb = ctx.needs_input_grad
        ctx.a = a if nb else None
        ctx.b = b if na else None
        ctx.shapes = (a.shape, b.shape)
        if a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype and a.dtype.kind == "f":
            return _backend.current.matmul(a, b)
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul needs operands with at least 1 dimension, got {a.shape} and {b.shape}")
        return np.matmul(a, b)

    @staticmethod
    def backward(ctx, g):
        na, nb = ctx.needs_input_grad
        sa, sb = ctx.shapes
        a, b = ctx.a, ctx.b
        if len(sa) == 2 and len(sb) == 2 and g.dtype.kind == "f":
            mm = _backend.current.matmul
            ga = mm(g, b, trans_b=True) if na else None
            gb = mm(a, g, trans_a=True) if nb else None
            return ga, gb
        # general ranks: promote 1-D operands as NumPy does, then sum broadcast batch axes away
        a2 = a[None, :] if a is not None and a.ndim == 1 else a
        b2 = b[:, None] if b is not None and b.ndim == 1 else b
        g2 = g
        if len(sa) == 1:
            g2 = np.expand_dims(g2, -2)
        if len(sb) == 1:
            g2 = np.expand_dims(g2, -1)
        ga = gb = None
        if na:
            ga = np.matmul(g2, np.swapaxes(b2, -1, -2))
            ga = unbroadcast(ga.reshape(ga.shape[:-2] + (1,) + ga.shape[-1:]).squeeze(-2) if len(sa) == 1 else ga, sa)
        if nb:
            gb = np.matmul(np.swapaxes(a2, -1, -2), g2)
            gb = unbroadcast(gb.squeeze(-1) if len(sb) == 1 else gb, sb)
        return ga, gb


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        return np.asarray(np.sum(a, axis=axis, keepdims=keepdims))

    @staticmethod
    def backward(ctx, g):
        if ctx.axis is not None and not ctx.keepdims:
            g = np.expand_dims(g, ctx.axis)
        return (np.broadcast_to(g, ctx.shape).copy(),)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        out = np.asarray(np.mean(a, axis=axis, keepdims=keepdims))
        ctx.count = a.size // max(out.size, 1) if a.size else 0
        return out

    @staticmethod
    def backward(ctx, g):
        if ctx.axis is not None and not ctx.keepdims:
            g = np.expand_dims(g, ctx.axis)
        return (np.broadcast_to(g / g.dtype.type(ctx.count), ctx.shape).copy(),)


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return (g.reshape(ctx.shape),)


class Transpose(Function):
    @staticmethod
    def forward(ctx, a, axes=None):
        ctx.axes = axes
        return np.transpose(a, axes)

    @staticmethod
    def backward(ctx, g):
        if ctx.axes is None:
            return (np.transpose(g),)
        return (np.transpose(g, np.argsort(ctx.axes)),)


class Index(Function):
    @staticmethod
    def forward(ctx, a, index):
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        return np.asarray(a[index])

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shape, dtype=ctx.dtype)
        np.add.at(out, ctx.index, g)
        return (out,)


class Cast(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.src = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return (g.astype(ctx.src),)
