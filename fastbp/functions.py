"""Functions of the fastbp namespace that mirror torch's (fastbp.cat, fastbp.max, fastbp.where, ...). Tensor
arguments may also be ndarrays or numbers; each call goes to the Tensor method of the same name."""
import numpy as np

from .tensor import Tensor, _data, _dim, _wrap

__all__ = ["cat", "concat", "concatenate", "stack", "where", "flatten", "squeeze", "unsqueeze", "transpose",
           "permute", "reshape", "max", "min", "argmax", "argmin", "amax", "amin", "sum", "mean", "exp", "log",
           "sqrt", "abs", "sign", "clamp", "clip", "maximum", "minimum", "pow", "neg", "matmul", "mm", "relu",
           "sigmoid", "tanh", "softmax", "log_softmax", "eq", "ne", "lt", "le", "gt", "ge", "equal", "isnan",
           "numel", "is_tensor", "allclose"]


def _t(x):
    return x if isinstance(x, Tensor) else _wrap(np.asarray(x))


def _tensors(tensors, what):
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{what}: expected a sequence (list or tuple) of tensors, got {type(tensors).__name__}")
    if not tensors:
        raise ValueError(f"{what}: expected a non-empty sequence of tensors")
    return [_t(x) for x in tensors]


def cat(tensors, dim=0, *, axis=None, out=None):
    """Concatenate along an existing dim; the shapes must agree except along dim (ValueError naming them).
    Differentiable: each input receives its slice of the gradient."""
    from .ops.basic import Cat
    if out is not None:
        raise TypeError("cat: out= is not supported")
    dim = dim if axis is None else axis
    ts = _tensors(tensors, "cat")
    shapes = [t.shape for t in ts]
    nd = len(shapes[0])
    if nd == 0 or any(len(s) != nd for s in shapes):
        raise ValueError(f"cat: tensors must have the same number of dims (at least 1), got shapes {shapes}")
    d = _dim(dim, nd, "cat")
    for i, s in enumerate(shapes):
        if s[:d] + s[d + 1:] != shapes[0][:d] + shapes[0][d + 1:]:
            raise ValueError(f"cat: sizes must match except in dim {dim}; tensor 0 has shape {shapes[0]} but "
                             f"tensor {i} has shape {s}")
    return Cat.apply(*ts, dim=d)


concat = concatenate = cat


def stack(tensors, dim=0, *, axis=None, out=None):
    """Stack equal-shaped tensors along a new dim (in [-ndim-1, ndim]); differentiable."""
    from .ops.basic import Stack
    if out is not None:
        raise TypeError("stack: out= is not supported")
    dim = dim if axis is None else axis
    ts = _tensors(tensors, "stack")
    shapes = [t.shape for t in ts]
    for i, s in enumerate(shapes):
        if s != shapes[0]:
            raise ValueError(f"stack expects each tensor to be equal size, but got {shapes[0]} at entry 0 and "
                             f"{s} at entry {i}")
    d = _dim(dim, len(shapes[0]) + 1, "stack")
    return Stack.apply(*ts, dim=d)


def where(condition, input=None, other=None):
    """where(cond, x, y): x where cond else y, with broadcasting (differentiable in x and y).
    where(cond) alone returns the indices of the true elements, a tuple of int64 tensors (as torch)."""
    from .ops.basic import Where
    if input is None and other is None:
        return tuple(_wrap(i.astype(np.int64)) for i in np.nonzero(_data(condition)))
    if input is None or other is None:
        raise TypeError("where: pass both input and other (or neither)")
    return Where.apply(_data(condition), input, other)


def _method(name):
    def fn(input, *args, **kwargs):
        return getattr(_t(input), name)(*args, **kwargs)
    fn.__name__ = name
    fn.__doc__ = f"fastbp.{name}(input, ...) is input.{name}(...) (see Tensor.{name})."
    return fn


flatten = _method("flatten")
squeeze = _method("squeeze")
unsqueeze = _method("unsqueeze")
transpose = _method("transpose")
permute = _method("permute")
reshape = _method("reshape")
argmax = _method("argmax")
argmin = _method("argmin")
amax = _method("amax")
amin = _method("amin")
sum = _method("sum")
mean = _method("mean")
exp = _method("exp")
log = _method("log")
sqrt = _method("sqrt")
abs = _method("abs")
sign = _method("sign")
clamp = clip = _method("clamp")
pow = _method("pow")
neg = _method("neg")
matmul = mm = _method("matmul")
relu = _method("relu")
sigmoid = _method("sigmoid")
tanh = _method("tanh")
softmax = _method("softmax")
log_softmax = _method("log_softmax")
eq = _method("eq")
ne = _method("ne")
lt = _method("lt")
le = _method("le")
gt = _method("gt")
ge = _method("ge")
equal = _method("equal")
isnan = _method("isnan")
numel = _method("numel")


def max(input, dim=None, keepdim=False):
    """max(x) -> the largest value; max(x, dim, keepdim=False) -> (values, indices); max(x, other) ->
    maximum(x, other), as torch.max."""
    return _t(input).max(dim, keepdim)


def min(input, dim=None, keepdim=False):
    return _t(input).min(dim, keepdim)


def maximum(input, other):
    return _t(input).maximum(other)


def minimum(input, other):
    return _t(input).minimum(other)


def is_tensor(obj):
    return isinstance(obj, Tensor)


def allclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):
    return bool(np.allclose(_data(input), _data(other), rtol=rtol, atol=atol, equal_nan=equal_nan))
