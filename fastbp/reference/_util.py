"""Input checks shared by the NumPy references; they raise the same errors as the compiled wrappers."""
import math
import operator

import numpy as np


def as_float_array(x, name, ndim=None):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32 or float64, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    return x


def check_same_dtype(a, aname, b, bname):
    if a.dtype != b.dtype:
        raise TypeError(f"{aname} has dtype {a.dtype} but {bname} has dtype {b.dtype}; they must match")


def check_reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def check_labels(labels, n, c):
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match logits with {n} rows, got {labels.shape}")
    bad = np.flatnonzero((labels < 0) | (labels >= c))
    if bad.size:
        raise ValueError(f"label {labels[bad[0]]} at position {bad[0]} is out of range for {c} classes")
    return labels.astype(np.intp)


def int_pair(op, v, name, minimum):
    """An int or a pair of ints (stride, padding, kernel size, ...) as a pair, each >= minimum."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
        a, b = v
    else:
        a = b = v
    try:
        a, b = operator.index(a), operator.index(b)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v!r}")
    return a, b


def finite_scalar(value, name):
    """A hyperparameter as a finite float, or a clear TypeError/ValueError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _into(res, out, name, write=True):
    """`out` checked against the result `res` and (write=True) filled with it; res when out is None."""
    if out is None or res is None:
        return res
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != res.dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {res.dtype}")
    if out.shape != res.shape:
        raise ValueError(f"{name} has shape {out.shape}, expected {res.shape}")
    if not out.flags.c_contiguous or not out.flags.aligned or not out.flags.writeable:
        raise ValueError(f"{name} must be C-contiguous, aligned and writeable")
    if write:
        np.copyto(out, res)
    return out


def with_out(fn):
    """Give a reference kernel the compiled kernel's optional `out` parameter (last, default None): the
    result (or each array of a result tuple; None entries of `out` allocate) is written into it."""
    import functools
    import inspect
    sig = inspect.signature(fn)
    nparams = len(sig.parameters)

    @functools.wraps(fn)
    def wrapper(*args, out=None, **kwargs):
        if len(args) > nparams:
            args, out = args[:nparams], args[nparams]
        res = fn(*args, **kwargs)
        if out is None:
            return res
        if isinstance(res, tuple):
            if not isinstance(out, tuple) or len(out) != len(res):
                raise TypeError(f"{fn.__name__}: out must be a tuple of {len(res)} arrays or None, got "
                                f"{type(out).__name__}")
            pairs = [(r, o, f"out[{k}]") for k, (r, o) in enumerate(zip(res, out))]
            for r, o, name in pairs:  # every buffer checked before any is written, as the compiled kernels do
                _into(r, o, name, write=False)
            return tuple(_into(r, o, name) for r, o, name in pairs)
        return _into(res, out, "out")

    wrapper.__signature__ = sig.replace(parameters=list(sig.parameters.values()) + [
        inspect.Parameter("out", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)])
    return wrapper
