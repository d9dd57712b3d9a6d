"""Tensor creation functions with PyTorch's signatures: sizes as ints or one tuple, dtype=, requires_grad=,
device= ("cpu" only). Floating results default to fastbp.get_default_dtype() (float32); random draws come
from the generator that fastbp.manual_seed seeds (fastbp/random.py)."""
import numbers
import operator

import numpy as np

from . import _device
from ._dtype import as_dtype, get_default_dtype
from .random import get_rng
from .tensor import Tensor, _as_array, _shape_args

__all__ = ["zeros", "ones", "full", "empty", "arange", "linspace", "eye", "rand", "randn", "randint", "randperm",
           "zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "randint_like",
           "from_numpy", "as_tensor"]


def _make(arr, requires_grad, device):
    _device.check_device(device)
    return Tensor(arr, requires_grad=requires_grad)


def _float_dtype(dtype, what):
    dt = get_default_dtype() if dtype is None else as_dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"{what}: dtype must be a floating dtype, got {dt}")
    return dt


def _sizes(size, what):
    shape = _shape_args(size, what)
    bad = [s for s in shape if s < 0]
    if bad:
        raise ValueError(f"{what}: sizes must be >= 0, got {shape}")
    return shape


def zeros(*size, dtype=None, requires_grad=False, device=None, out=None):
    _no_out(out, "zeros")
    return _make(np.zeros(_sizes(size, "zeros"), dtype=as_dtype(dtype) or get_default_dtype()), requires_grad, device)


def ones(*size, dtype=None, requires_grad=False, device=None, out=None):
    _no_out(out, "ones")
    return _make(np.ones(_sizes(size, "ones"), dtype=as_dtype(dtype) or get_default_dtype()), requires_grad, device)


def empty(*size, dtype=None, requires_grad=False, device=None, out=None):
    """Uninitialised memory, as torch.empty (the values are whatever was there)."""
    _no_out(out, "empty")
    return _make(np.empty(_sizes(size, "empty"), dtype=as_dtype(dtype) or get_default_dtype()), requires_grad, device)


def _fill_dtype(fill_value):
    """PyTorch's dtype for full(): bool -> bool, int -> int64, float -> the default float dtype."""
    if isinstance(fill_value, Tensor):
        fill_value = fill_value.item()
    if isinstance(fill_value, (bool, np.bool_)):
        return np.dtype(np.bool_)
    if isinstance(fill_value, np.generic):
        return fill_value.dtype
    if isinstance(fill_value, numbers.Integral):
        return np.dtype(np.int64)
    if isinstance(fill_value, numbers.Real):
        return get_default_dtype()
    raise TypeError(f"full: fill_value must be a number, got {type(fill_value).__name__}")


def full(size, fill_value, dtype=None, requires_grad=False, device=None, out=None):
    """A tensor of `size` filled with fill_value; without dtype, a bool stays bool, an int gives int64 and a
    float the default dtype, as PyTorch."""
    _no_out(out, "full")
    dt = as_dtype(dtype) or _fill_dtype(fill_value)
    if isinstance(fill_value, Tensor):
        fill_value = fill_value.item()
    return _make(np.full(_sizes((size,), "full"), fill_value, dtype=dt), requires_grad, device)


def arange(start, end=None, step=1, dtype=None, requires_grad=False, device=None, out=None):
    """Values start, start + step, ... below end (arange(end) starts at 0). int64 when start, end and step are
    all ints, else the default float dtype, as PyTorch."""
    _no_out(out, "arange")
    if end is None:
        start, end = 0, start
    start, end, step = (v.item() if isinstance(v, Tensor) else v for v in (start, end, step))
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if (end - start) * step < 0:
        raise ValueError(f"arange: upper bound and lower bound inconsistent with step sign (start={start}, "
                         f"end={end}, step={step})")
    ints = all(isinstance(v, numbers.Integral) for v in (start, end, step))
    dt = as_dtype(dtype) or (np.dtype(np.int64) if ints else get_default_dtype())
    if ints or dt.kind != "f":
        arr = np.arange(start, end, step).astype(dt)
    else:
        # count as PyTorch does (ceil((end - start) / step)) and compute in float64, then cast
        n = int(np.ceil((end - start) / step))
        arr = (start + step * np.arange(n, dtype=np.float64)).astype(dt)
    return _make(arr, requires_grad, device)


def linspace(start, end, steps, dtype=None, requires_grad=False, device=None, out=None):
    """`steps` evenly spaced values from start to end, both included."""
    _no_out(out, "linspace")
    steps = operator.index(steps)
    if steps < 0:
        raise ValueError(f"linspace: steps must be >= 0, got {steps}")
    dt = as_dtype(dtype) or get_default_dtype()
    return _make(np.linspace(start, end, steps, dtype=np.float64).astype(dt), requires_grad, device)


def eye(n, m=None, dtype=None, requires_grad=False, device=None, out=None):
    _no_out(out, "eye")
    return _make(np.eye(operator.index(n), None if m is None else operator.index(m),
                        dtype=as_dtype(dtype) or get_default_dtype()), requires_grad, device)


def rand(*size, generator=None, dtype=None, requires_grad=False, device=None, out=None):
    """Uniform on [0, 1) from fastbp's generator (fastbp.manual_seed); `generator` is a numpy Generator."""
    _no_out(out, "rand")
    dt = _float_dtype(dtype, "rand")
    rng = generator if generator is not None else get_rng()
    return _make(rng.random(_sizes(size, "rand"), dtype=dt), requires_grad, device)


def randn(*size, generator=None, dtype=None, requires_grad=False, device=None, out=None):
    """Standard normal from fastbp's generator (fastbp.manual_seed)."""
    _no_out(out, "randn")
    dt = _float_dtype(dtype, "randn")
    rng = generator if generator is not None else get_rng()
    return _make(rng.standard_normal(_sizes(size, "randn"), dtype=dt), requires_grad, device)


def randint(low=0, high=None, size=None, generator=None, dtype=None, requires_grad=False, device=None, out=None):
    """Integers uniform on [low, high): randint(high, size) or randint(low, high, size), int64 by default."""
    _no_out(out, "randint")
    if size is None:
        if high is None or not isinstance(high, (tuple, list)):
            raise TypeError("randint: call randint(high, size) or randint(low, high, size) with size a tuple")
        low, high, size = 0, low, high
    if high is None:  # randint(high, size=...)
        low, high = 0, low
    if high <= low:
        raise ValueError(f"randint: high ({high}) must be greater than low ({low})")
    rng = generator if generator is not None else get_rng()
    shape = _sizes((size,), "randint")
    arr = rng.integers(low, high, size=shape, dtype=np.int64)
    return _make(arr.astype(as_dtype(dtype) or np.int64, copy=False), requires_grad, device)


def randperm(n, generator=None, dtype=None, requires_grad=False, device=None):
    """A random permutation of 0..n-1 (int64)."""
    rng = generator if generator is not None else get_rng()
    return _make(rng.permutation(operator.index(n)).astype(as_dtype(dtype) or np.int64), requires_grad, device)


# ----- *_like: the shape (and, unless dtype is given, the dtype) of another tensor or array ------------------
def _like(t):
    a = t.data if isinstance(t, Tensor) else np.asarray(t)
    return a.shape, a.dtype


def zeros_like(input, dtype=None, requires_grad=False, device=None):
    shape, dt = _like(input)
    return _make(np.zeros(shape, dtype=as_dtype(dtype) or dt), requires_grad, device)


def ones_like(input, dtype=None, requires_grad=False, device=None):
    shape, dt = _like(input)
    return _make(np.ones(shape, dtype=as_dtype(dtype) or dt), requires_grad, device)


def empty_like(input, dtype=None, requires_grad=False, device=None):
    shape, dt = _like(input)
    return _make(np.empty(shape, dtype=as_dtype(dtype) or dt), requires_grad, device)


def full_like(input, fill_value, dtype=None, requires_grad=False, device=None):
    shape, dt = _like(input)
    return _make(np.full(shape, fill_value, dtype=as_dtype(dtype) or dt), requires_grad, device)


def rand_like(input, dtype=None, requires_grad=False, device=None):
    shape, dt = _like(input)
    return rand(shape, dtype=dtype or dt, requires_grad=requires_grad, device=device)


def randn_like(input, dtype=None, requires_grad=False, device=None):
    shape, dt = _like(input)
    return randn(shape, dtype=dtype or dt, requires_grad=requires_grad, device=device)


def randint_like(input, low=0, high=None, dtype=None, requires_grad=False, device=None):
    if high is None:
        low, high = 0, low
    shape, dt = _like(input)
    return randint(low, high, shape, dtype=dtype or dt, requires_grad=requires_grad, device=device)


# ----- from NumPy -------------------------------------------------------------------------------------------
def from_numpy(ndarray):
    """A tensor sharing the ndarray's memory (no copy, the dtype kept), as torch.from_numpy."""
    if not isinstance(ndarray, np.ndarray):
        raise TypeError(f"from_numpy expects a numpy.ndarray, got {type(ndarray).__name__}")
    if ndarray.dtype.kind not in "fiub":
        raise TypeError(f"from_numpy: unsupported dtype {ndarray.dtype} (floating, integer and bool arrays only)")
    t = Tensor.__new__(Tensor)
    t.data = ndarray
    t.grad = None
    t.requires_grad = False
    t._node = None
    return t


def as_tensor(data, dtype=None, device=None):
    """data as a tensor, sharing memory when it is already a tensor or ndarray of the requested dtype."""
    _device.check_device(device)
    dt = as_dtype(dtype)
    if isinstance(data, Tensor):
        return data if dt is None or data.dtype == dt else data.to(dt)
    return Tensor(_as_array(data, dt))


def _no_out(out, what):
    if out is not None:
        raise TypeError(f"{what}: out= is not supported; use the returned tensor")
