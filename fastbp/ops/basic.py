"""Tensor arithmetic for the graph: + - * / ** @, neg, sum, mean, reshape, transpose/permute, indexing,
exp, log, abs, sqrt, sign, clamp, maximum/minimum, where, max/min, cat/stack, expand, clone, dtype casts.
Elementwise ops are NumPy; the 2-D `@` goes through the backend's `matmul` kernel. Backward of a
broadcasting op sums the gradient back to each input's shape.

NumPy ufuncs return NumPy scalars, not arrays, for 0-d results; every forward here returns an ndarray
(`_nd`), so Tensor.data is always an ndarray and the kernels (which take ndarrays only) accept it."""
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


_ndarray = np.ndarray
_asarray = np.asarray


def _nd(x):
    """x as an ndarray (a ufunc's 0-d result is a NumPy scalar)."""
    return x if type(x) is _ndarray else _asarray(x)


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        out = np.add(a, b)
        return out if type(out) is _ndarray else _asarray(out)

    @staticmethod
    def backward(ctx, g):
        na, nb = ctx.needs_input_grad
        return (unbroadcast(g, ctx.shapes[0]) if na else None,
                unbroadcast(g, ctx.shapes[1]) if nb else None)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (_shape(a), _shape(b))
        out = np.subtract(a, b)
        return out if type(out) is _ndarray else _asarray(out)

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
        out = np.multiply(a, b)
        return out if type(out) is _ndarray else _asarray(out)

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
        out = np.divide(a, b)
        return out if type(out) is _ndarray else _asarray(out)

    @staticmethod
    def backward(ctx, g):
        na, nb = ctx.needs_input_grad
        ga = unbroadcast(g / ctx.b, ctx.shapes[0]) if na else None
        gb = unbroadcast(-g * ctx.a / (ctx.b * ctx.b), ctx.shapes[1]) if nb else None
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return _nd(np.negative(a))

    @staticmethod
    def backward(ctx, g):
        return (-g,)


class Pow(Function):
    @staticmethod
    def forward(ctx, a, exponent):
        if not np.isscalar(exponent):
            raise TypeError(f"tensor ** exponent needs a scalar exponent, got {type(exponent).__name__}")
        ctx.a, ctx.p = a, exponent
        return _nd(np.power(a, a.dtype.type(exponent) if a.dtype.kind == "f" else exponent))

    @staticmethod
    def backward(ctx, g):
        p = ctx.a.dtype.type(ctx.p)
        if p == 0:  # d(x**0)/dx = 0 everywhere, also at x = 0 (where p * x**(p-1) would be 0 * inf)
            return (np.zeros_like(g),)
        return (_nd(g * p * np.power(ctx.a, p - 1)),)


class PowTensor(Function):
    """a ** b with both operands arrays (broadcasting). As PyTorch: d/da = b a^(b-1) (0 where b == 0),
    d/db = a^b log(a) (0 where a == 0 and b >= 0)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        ctx.shapes = (_shape(a), _shape(b))
        ctx.y = y = _nd(np.power(a, b))
        return y

    @staticmethod
    def backward(ctx, g):
        na, nb = ctx.needs_input_grad
        a, b = ctx.a, ctx.b
        ga = gb = None
        with np.errstate(divide="ignore", invalid="ignore"):
            if na:
                ga = unbroadcast(_nd(np.where(b == 0, 0, g * b * np.power(a, b - 1)).astype(g.dtype)), ctx.shapes[0])
            if nb:
                gb = unbroadcast(_nd(np.where((a == 0) & (b >= 0), 0, g * ctx.y * np.log(a)).astype(g.dtype)),
                                 ctx.shapes[1])
        return ga, gb


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.y = y = _nd(np.exp(a))
        return y

    @staticmethod
    def backward(ctx, g):
        return (g * ctx.y,)


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return _nd(np.log(a))

    @staticmethod
    def backward(ctx, g):
        return (g / ctx.a,)


class Abs(Function):
    """|x|, with gradient sign(x) (0 at exactly 0, as PyTorch)."""

    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return _nd(np.abs(a))

    @staticmethod
    def backward(ctx, g):
        return (_nd(g * np.sign(ctx.a)),)


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
        return _nd(np.matmul(a, b))  # 1-D @ 1-D is 0-d

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
        if len(sa) == 1 and len(sb) == 1:  # a dot product: g is 0-d
            return (_nd(g * b) if na else None), (_nd(g * a) if nb else None)
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


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.y = y = _nd(np.sqrt(a))
        return y

    @staticmethod
    def backward(ctx, g):
        with np.errstate(divide="ignore"):
            return (_nd(g / (2 * ctx.y)),)


class Sign(Function):
    """sign(x) in {-1, 0, 1} (NaN stays NaN); its gradient is 0 everywhere, as PyTorch."""

    @staticmethod
    def forward(ctx, a):
        return _nd(np.sign(a))

    @staticmethod
    def backward(ctx, g):
        return (np.zeros_like(g),)


class Clamp(Function):
    """Clamp to [min, max] (either may be None). The gradient passes where min <= x <= max, boundaries
    included (PyTorch's rule), and is 0 outside and at NaN. Bounds are constants (scalars or arrays that
    broadcast to x); they get no gradient."""

    @staticmethod
    def forward(ctx, a, min=None, max=None):
        ctx.a, ctx.lo, ctx.hi = a, min, max
        if min is None:
            out = np.minimum(a, max)
        elif max is None:
            out = np.maximum(a, min)
        else:
            out = np.minimum(np.maximum(a, min), max)  # min > max gives max everywhere, as PyTorch
        return _nd(out.astype(a.dtype, copy=False))

    @staticmethod
    def backward(ctx, g):
        a = ctx.a
        mask = np.ones(a.shape, dtype=bool) if ctx.lo is None else (a >= ctx.lo)
        if ctx.hi is not None:
            mask = mask & (a <= ctx.hi)
        return (unbroadcast(_nd(np.where(mask, g, 0).astype(g.dtype, copy=False)), a.shape),)


class Maximum(Function):
    """Elementwise max(a, b) with broadcasting; NaN propagates. Gradient as PyTorch: to a where a > b, to b
    where a < b, half to each where a == b; where either is NaN both receive it."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        ctx.shapes = (_shape(a), _shape(b))
        return _nd(np.maximum(a, b))

    @staticmethod
    def backward(ctx, g):
        return _minmax_backward(ctx, g, larger=True)


class Minimum(Function):
    """Elementwise min(a, b); gradient rule as Maximum's, mirrored."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.a, ctx.b = a, b
        ctx.shapes = (_shape(a), _shape(b))
        return _nd(np.minimum(a, b))

    @staticmethod
    def backward(ctx, g):
        return _minmax_backward(ctx, g, larger=False)


def _minmax_backward(ctx, g, larger):
    a, b = ctx.a, ctx.b
    na, nb = ctx.needs_input_grad
    shared = np.where(a == b, g / 2, g)
    lose_a, lose_b = (a < b, a > b) if larger else (a > b, a < b)
    ga = unbroadcast(_nd(np.where(lose_a, 0, shared).astype(g.dtype, copy=False)), ctx.shapes[0]) if na else None
    gb = unbroadcast(_nd(np.where(lose_b, 0, shared).astype(g.dtype, copy=False)), ctx.shapes[1]) if nb else None
    return ga, gb


class Where(Function):
    """cond ? a : b with broadcasting; cond gets no gradient."""

    @staticmethod
    def forward(ctx, cond, a, b):
        cond = np.asarray(cond, dtype=bool)
        ctx.cond = cond
        ctx.shapes = (_shape(a), _shape(b))
        return _nd(np.where(cond, a, b))

    @staticmethod
    def backward(ctx, g):
        _, na, nb = ctx.needs_input_grad
        zero = g.dtype.type(0)
        ga = unbroadcast(_nd(np.where(ctx.cond, g, zero)), ctx.shapes[0]) if na else None
        gb = unbroadcast(_nd(np.where(ctx.cond, zero, g)), ctx.shapes[1]) if nb else None
        return None, ga, gb


class Gather(Function):
    """Values of `a` at `index` along `dim` (index has a's shape with size 1 at dim, as from
    argmax(keepdims=True)); the result drops dim unless keepdim. The gradient goes to those positions
    only: max(dim)/min(dim) send it to the returned index, as PyTorch."""

    @staticmethod
    def forward(ctx, a, index, dim, keepdim=False):
        ctx.shape, ctx.index, ctx.dim, ctx.keepdim = a.shape, index, dim, keepdim
        out = np.take_along_axis(a, index, axis=dim)
        return out if keepdim else out.squeeze(dim)

    @staticmethod
    def backward(ctx, g):
        if not ctx.keepdim:
            g = np.expand_dims(g, ctx.dim)
        out = np.zeros(ctx.shape, dtype=g.dtype)
        np.put_along_axis(out, ctx.index, g, axis=ctx.dim)
        return (out,)


class MaxAll(Function):
    """max (or min) over every element, a 0-d result; NaN propagates. As PyTorch, the gradient is shared
    evenly among the elements equal to the result (the NaNs when the result is NaN)."""

    @staticmethod
    def forward(ctx, a, minimum=False):
        if a.size == 0:
            raise RuntimeError(f"{'min' if minimum else 'max'}(): the tensor has no elements (shape {a.shape}); "
                               f"specify a dim")
        ctx.a = a
        ctx.y = y = np.asarray(a.min() if minimum else a.max())
        return y

    @staticmethod
    def backward(ctx, g):
        a, y = ctx.a, ctx.y
        mask = np.isnan(a) if np.isnan(y) else (a == y)
        return (_nd((mask * (g / mask.sum())).astype(g.dtype, copy=False)),)


class Cat(Function):
    """Concatenation along `dim` (the dtypes promote as NumPy's/PyTorch's do); each input's gradient is its
    slice, in its own dtype."""

    @staticmethod
    def forward(ctx, *arrays, dim=0):
        ctx.dim = dim
        ctx.sizes = [a.shape[dim] for a in arrays]
        ctx.dtypes = [a.dtype for a in arrays]
        return np.concatenate(arrays, axis=dim)

    @staticmethod
    def backward(ctx, g):
        cuts = np.cumsum(ctx.sizes)[:-1]
        parts = np.split(g, cuts, axis=ctx.dim)
        return tuple(p if p.dtype == dt or dt.kind != "f" else p.astype(dt) for p, dt in zip(parts, ctx.dtypes))


class Stack(Function):
    """Stack along a new axis `dim`; each input's gradient is its slice along that axis."""

    @staticmethod
    def forward(ctx, *arrays, dim=0):
        ctx.dim = dim
        ctx.dtypes = [a.dtype for a in arrays]
        return np.stack(arrays, axis=dim)

    @staticmethod
    def backward(ctx, g):
        return tuple(np.take(g, i, axis=ctx.dim).astype(dt if dt.kind == "f" else g.dtype, copy=False)
                     for i, dt in enumerate(ctx.dtypes))


class Expand(Function):
    """A broadcast view of `a` with `shape` (read-only, no copy); the gradient sums over the expanded axes."""

    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return np.broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, g):
        return (unbroadcast(g, ctx.shape),)


class Clone(Function):
    """A copy (C-contiguous) whose gradient is the incoming one: clone() and contiguous()."""

    @staticmethod
    def forward(ctx, a):
        return np.array(a, order="C", copy=True)

    @staticmethod
    def backward(ctx, g):
        return (g,)


class Repeat(Function):
    """np.tile with PyTorch's repeat semantics (len(reps) >= ndim); the gradient sums over the tiles."""

    @staticmethod
    def forward(ctx, a, reps):
        shape = (1,) * (len(reps) - a.ndim) + a.shape
        ctx.shape, ctx.padded, ctx.reps = a.shape, shape, reps
        return np.tile(a.reshape(shape), reps)

    @staticmethod
    def backward(ctx, g):
        split = []
        for r, s in zip(ctx.reps, ctx.padded):
            split += [r, s]
        g = g.reshape(split).sum(axis=tuple(range(0, len(split), 2)))
        return (g.reshape(ctx.shape),)


class TakeAlong(Function):
    """out[i][j][k] = a[i][index[i][j][k]][k] for dim 1 (and so on), as torch.gather: index has a's number of
    dims and, outside dim, sizes no larger than a's. The gradient adds into the gathered positions (repeated
    indices accumulate)."""

    @staticmethod
    def forward(ctx, a, index, dim):
        ctx.shape, ctx.index, ctx.dim = a.shape, index, dim
        sl = tuple(slice(None) if d == dim else slice(0, index.shape[d]) for d in range(a.ndim))
        return np.take_along_axis(a[sl], index, axis=dim)

    @staticmethod
    def backward(ctx, g):
        out = np.zeros(ctx.shape, dtype=g.dtype)
        idx = list(np.indices(ctx.index.shape, sparse=True))
        idx[ctx.dim] = ctx.index
        np.add.at(out, tuple(idx), g)
        return (out,)
