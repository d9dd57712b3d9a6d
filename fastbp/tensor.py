"""The graph: Tensor, Function and the backward engine.

Define-by-run. Each op is a Function subclass with `forward(ctx, *arrays, **params)` and
`backward(ctx, grad)` returning one gradient per positional input (None where there is none). The
Function instance is the graph node: it keeps its inputs, a creation sequence number and whatever the
forward saved on it, nothing more. `Tensor.backward()` collects the nodes reachable from the root
without recursion, runs them in reverse creation order (deterministic), adds gradients where a value
fans out, and frees each node's saved arrays once it has run.
"""
import itertools
import operator
import threading

import numpy as np

from . import _device
from ._dtype import ALIASES as _ALIASES, as_dtype, get_default_dtype
from .random import get_rng as _get_rng

_counter = itertools.count()
_ndarray = np.ndarray


class _GradState(threading.local):
    """Grad mode is per Python thread (as in PyTorch): a no_grad() block in one thread never stops another
    thread's graph from recording. `saved` holds the values the enclosing blocks restore on exit."""

    def __init__(self):
        self.enabled = True
        self.saved = []


_grad_state = _GradState()


class _GradModeContext:
    """Context manager and decorator that sets grad mode for its block (in the current thread) and restores
    exactly the value it found on entry. The saved values live on a per-thread stack, so one instance may
    be entered from several threads, or nested."""
    _mode = True

    def __enter__(self):
        _grad_state.saved.append(_grad_state.enabled)
        _grad_state.enabled = self._mode
        return self

    def __exit__(self, *exc):
        _grad_state.enabled = _grad_state.saved.pop()
        return False

    def __call__(self, fn):
        mode = self._mode

        def wrapper(*args, **kwargs):
            _grad_state.saved.append(_grad_state.enabled)
            _grad_state.enabled = mode
            try:
                return fn(*args, **kwargs)
            finally:
                _grad_state.enabled = _grad_state.saved.pop()
        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = fn.__doc__
        wrapper.__wrapped__ = fn
        return wrapper


class no_grad(_GradModeContext):
    """Context manager (and decorator) under which ops record nothing, in the current thread."""
    _mode = False


class enable_grad(_GradModeContext):
    """Context manager (and decorator) that turns recording back on inside a no_grad block."""
    _mode = True


class set_grad_enabled(_GradModeContext):
    """set_grad_enabled(mode): turns recording on or off in the current thread right away (as a call), or
    for a block (as a context manager, restoring the previous value on exit), as in PyTorch."""

    def __init__(self, mode):
        self._mode = bool(mode)
        self._prev = _grad_state.enabled
        _grad_state.enabled = self._mode

    def __call__(self, fn):
        # used as a decorator: the mode applies while fn runs, not from the decoration on
        if "_prev" in self.__dict__:
            _grad_state.enabled = self.__dict__.pop("_prev")
        return super().__call__(fn)

    def __enter__(self):
        # the call already set the mode; the block restores what was there before the call
        _grad_state.saved.append(getattr(self, "_prev", _grad_state.enabled))
        self.__dict__.pop("_prev", None)
        _grad_state.enabled = self._mode
        return self


class inference_mode(_GradModeContext):
    """inference_mode(mode=True): as no_grad (fastbp has no separate inference tensors); mode=False leaves
    grad mode as it is."""

    def __init__(self, mode=True):
        self._mode = bool(mode)

    def __enter__(self):
        _grad_state.saved.append(_grad_state.enabled)
        _grad_state.enabled = _grad_state.enabled and not self._mode
        return self

    def __call__(self, fn):
        mode = self._mode

        def wrapper(*args, **kwargs):
            with inference_mode(mode):
                return fn(*args, **kwargs)
        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = fn.__doc__
        wrapper.__wrapped__ = fn
        return wrapper


def is_grad_enabled():
    """Whether ops record the graph in the current thread."""
    return _grad_state.enabled


class Function:
    """Base class of every differentiable op; see the module docstring."""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = cls.__new__(cls)
        needs = []
        datas = []
        record = False
        for a in args:
            if type(a) is Tensor or isinstance(a, Tensor):
                datas.append(a.data)
                r = a.requires_grad
                record = record or r
                needs.append(r)
            else:
                datas.append(a)
                needs.append(False)
        record = record and _grad_state.enabled
        ctx.needs_input_grad = needs
        out = cls.forward(ctx, *datas, **kwargs)
        t = Tensor.__new__(Tensor)
        t.data = out
        t.grad = None
        if record:
            ctx.inputs = args
            ctx.seq = next(_counter)
            t.requires_grad = True
            t._node = ctx
        else:
            t.requires_grad = False
            t._node = None
        return t


def _as_array(value, dtype=None):
    if isinstance(value, Tensor):
        value = value.data
    if dtype is not None:
        return np.asarray(value, dtype=dtype)
    arr = np.asarray(value)
    kind = arr.dtype.kind
    if kind in "fiub":
        if kind == "f" and not isinstance(value, (np.ndarray, np.generic)):
            arr = arr.astype(get_default_dtype())  # Python floats become the default; NumPy keeps its dtype
        return arr
    raise TypeError(f"cannot make a tensor from dtype {arr.dtype}")


def _check_grad_shape(grad, data):
    if grad.shape != data.shape:
        raise ValueError(f"gradient has shape {grad.shape} but the tensor has shape {data.shape}")


_by_seq = operator.attrgetter("seq")
_FREED = ("Trying to backward through the graph a second time (or after its saved arrays were freed); "
          "call backward(retain_graph=True) the first time")


def _acc(a, b):
    """a + b as an ndarray (the sum of two 0-d arrays is a NumPy scalar)."""
    s = a + b
    return s if type(s) is _ndarray else np.asarray(s)


# Hooks for code that must act on gradients while the backward pass is still running (the data-parallel
# layer starts averaging a layer's gradients across processes as soon as they are final). Both tables are
# empty unless someone registers: a backward pass then pays one dict test and one list test, nothing more.
_leaf_hooks = {}             # id(leaf) -> (leaf, [hook(leaf), ...]) run once the leaf's .grad is final
_backward_end_callbacks = []  # callback() after every backward pass that completed
_pass_counter = itertools.count(1)
_pass = [0]                   # the number of the backward pass running (or last run)


def _current_backward_pass():
    """Number of the backward pass running now (or last run): tells hooks of one pass from the next."""
    return _pass[0]


class _HookHandle:
    """What `register_post_accumulate_grad_hook` returns: `remove()` takes the hook out again."""

    __slots__ = ("_key", "_hook")

    def __init__(self, key, hook):
        self._key, self._hook = key, hook

    def remove(self):
        entry = _leaf_hooks.get(self._key)
        if entry is not None:
            hooks = entry[1]
            if self._hook in hooks:
                hooks.remove(self._hook)
            if not hooks:
                del _leaf_hooks[self._key]


def _add_backward_end_callback(callback):
    """Run `callback()` at the end of every completed backward pass; returns a function that removes it."""
    _backward_end_callbacks.append(callback)

    def remove():
        if callback in _backward_end_callbacks:
            _backward_end_callbacks.remove(callback)
    return remove


def _leaf_finals(nodes):
    """{node: [hooked leaves whose gradient is final once that node has run]} for nodes in run order."""
    last = {}
    for n in nodes:
        for inp in n.inputs:
            if isinstance(inp, Tensor) and inp._node is None and id(inp) in _leaf_hooks:
                last[id(inp)] = (n, inp)
    finals = {}
    for n, leaf in last.values():
        finals.setdefault(n, []).append(leaf)
    return finals


def _fire_leaf_hooks(leaves):
    for leaf in leaves:
        if leaf.grad is not None:
            entry = _leaf_hooks.get(id(leaf))
            if entry is not None:
                for hook in list(entry[1]):
                    hook(leaf)


def _end_of_backward():
    for cb in list(_backward_end_callbacks):
        cb()


def _run_backward(root, grad, retain_graph):
    _pass[0] = next(_pass_counter)
    node = root._node
    if node is None:
        # a leaf: the gradient goes straight to .grad
        root.grad = grad if root.grad is None else _acc(root.grad, grad)
        if _leaf_hooks:
            _fire_leaf_hooks((root,))
        if _backward_end_callbacks:
            _end_of_backward()
        return
    # collect every node reachable from the root (iterative, no recursion limit); nodes hash by identity
    nodes = []
    seen = {node}
    stack = [node]
    while stack:
        n = stack.pop()
        try:
            inputs = n.inputs
        except AttributeError:
            raise RuntimeError(_FREED) from None
        nodes.append(n)
        for inp in inputs:
            if isinstance(inp, Tensor):
                p = inp._node
                if p is not None and p not in seen:
                    seen.add(p)
                    stack.append(p)
    nodes.sort(key=_by_seq, reverse=True)  # reverse creation order: every consumer before its producer
    finals = _leaf_finals(nodes) if _leaf_hooks else None
    grads = {node: grad}
    owned = set()  # ids of arrays already stored in a leaf's .grad during this pass
    for n in nodes:
        g = grads.pop(n, None)
        if g is None:
            if finals and n in finals:
                _fire_leaf_hooks(finals.pop(n))
            continue
        in_grads = n.backward(n, g)
        if type(in_grads) is not tuple:
            in_grads = (in_grads,)
        for inp, gi in zip(n.inputs, in_grads):
            if gi is None or not isinstance(inp, Tensor) or not inp.requires_grad:
                continue
            if type(gi) is not _ndarray:  # a NumPy scalar from a 0-d computation
                gi = np.asarray(gi)
            p = inp._node
            if p is not None:
                prev = grads.get(p)
                grads[p] = gi if prev is None else _acc(prev, gi)
            else:
                if gi.shape != inp.data.shape:
                    raise RuntimeError(f"{type(n).__name__}.backward returned a gradient of shape {gi.shape} "
                                       f"for an input of shape {inp.data.shape}")
                if inp.grad is None:
                    # never hand out an array that another leaf (or the caller) also holds
                    if gi.base is not None or id(gi) in owned or gi is grad:
                        gi = gi.copy()
                    owned.add(id(gi))
                    inp.grad = gi
                else:
                    inp.grad = _acc(inp.grad, gi)
        if not retain_graph:
            n.__dict__.clear()  # frees the saved arrays and the references to the inputs
        if finals and n in finals:
            _fire_leaf_hooks(finals.pop(n))
    if _backward_end_callbacks:
        _end_of_backward()


class Tensor:
    """An ndarray (`.data`) with an optional gradient (`.grad`) and the node that produced it.

    The method surface follows torch.Tensor (see the README's Tensor table); dims are PyTorch's `dim`/`keepdim`
    keywords (NumPy's `axis`/`keepdims` are accepted as aliases)."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "__weakref__")
    __array_priority__ = 1000  # so ndarray <op> Tensor defers to Tensor's reflected operator
    __hash__ = object.__hash__  # hashable by identity although == is elementwise, as torch.Tensor

    def __init__(self, data, requires_grad=False, dtype=None):
        arr = _as_array(data, None if dtype is None else as_dtype(dtype))
        if requires_grad and arr.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {arr.dtype}")
        self.data = arr
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._node = None

    # ----- plain properties -------------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def is_leaf(self):
        return self._node is None

    @property
    def grad_fn(self):
        """The node (Function instance) that produced this tensor; None for a leaf."""
        return self._node

    @property
    def device(self):
        return _device.CPU

    is_cuda = False

    def size(self, dim=None):
        """The shape (a tuple), or the size of dimension `dim` (an int), as torch.Tensor.size.
        (The element count is numel(); ndarray's `.size` is `.data.size`.)"""
        if dim is None:
            return self.data.shape
        return self.data.shape[_dim(dim, self.data.ndim, "size")]

    def dim(self):
        return self.data.ndim

    ndimension = dim

    def numel(self):
        return self.data.size

    nelement = numel

    def element_size(self):
        return self.data.itemsize

    def is_floating_point(self):
        return self.data.dtype.kind == "f"

    def __len__(self):
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({np.array2string(self.data, separator=', ', prefix='tensor(')}, dtype={self.dtype}{extra})"

    # ----- conversion to Python / NumPy -------------------------------------------------------------
    def numpy(self):
        """The underlying ndarray (shares memory, as torch.Tensor.numpy(); unlike PyTorch it also works on
        a tensor that requires grad)."""
        return self.data

    def __array__(self, dtype=None, copy=None):
        """np.asarray(t) is t.data (no copy); NumPy 2's copy= protocol is followed."""
        if copy:
            return np.array(self.data, dtype=dtype, copy=True)
        if dtype is None or np.dtype(dtype) == self.data.dtype:
            return self.data
        if copy is False:
            raise ValueError(f"converting a {self.dtype} tensor to {np.dtype(dtype)} needs a copy (copy=False given)")
        return self.data.astype(dtype)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(-1)[0].item()

    def tolist(self):
        return self.data.tolist()

    def __bool__(self):
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor with {self.data.size} elements (shape {self.shape}) "
                               f"is ambiguous; use .any() or .all()")
        return bool(self.data.reshape(-1)[0])

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.data.dtype.kind not in "iub" or self.data.size != 1:
            raise TypeError(f"only integer tensors of a single element can be converted to an index, got dtype "
                            f"{self.dtype} and shape {self.shape}")
        return int(self.item())

    # ----- graph bookkeeping ------------------------------------------------------------------------
    def detach(self):
        """A new leaf sharing the same data, cut from the graph."""
        return _wrap(self.data)

    def requires_grad_(self, requires_grad=True):
        flag = requires_grad
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {self.dtype}")
        if self._node is not None and not flag:
            raise RuntimeError("requires_grad can only be turned off on a leaf; use detach()")
        self.requires_grad = bool(flag)
        return self

    def clone(self):
        """A copy (C-contiguous) that stays in the graph: its gradient flows back to self."""
        return _ops().Clone.apply(self)

    def register_post_accumulate_grad_hook(self, hook):
        """Call `hook(tensor)` during each backward pass once this leaf's `.grad` holds its final value for
        that pass (as torch.Tensor.register_post_accumulate_grad_hook). Returns a handle with `remove()`."""
        if self._node is not None:
            raise RuntimeError("post-accumulate-grad hooks can only be registered on leaf tensors")
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        entry = _leaf_hooks.setdefault(id(self), (self, []))
        if entry[0] is not self:  # a dead tensor's id reused: start afresh
            entry = _leaf_hooks[id(self)] = (self, [])
        entry[1].append(hook)
        return _HookHandle(id(self), hook)

    def contiguous(self):
        """self if its data is C-contiguous, else a contiguous copy in the graph (as clone())."""
        if self.data.flags.c_contiguous:
            return self
        return _ops().Clone.apply(self)

    def is_contiguous(self):
        return bool(self.data.flags.c_contiguous)

    # ----- backward ---------------------------------------------------------------------------------
    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """Accumulate d(self)/d(leaf) * gradient into the .grad of every leaf that requires a gradient.

        `gradient` may be omitted only for a tensor with one element (then it is 1), as in PyTorch.
        retain_graph=True keeps the saved arrays for another backward. Higher-order gradients
        (create_graph=True) and `inputs=` are not supported."""
        if create_graph:
            raise NotImplementedError("backward(create_graph=True): fastbp computes first-order gradients only")
        if inputs is not None:
            raise NotImplementedError("backward(inputs=...) is not supported; gradients go to every leaf that "
                                      "requires grad")
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad and has no graph")
        grad = gradient
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs; this tensor "
                                   f"has shape {self.shape}: pass backward(gradient) with that shape")
            grad = np.ones_like(self.data)
        else:
            # no copy of the caller's array (for a big output that copy was a visible share of the step):
            # the engine never writes into incoming gradients, and copies before storing the caller's
            # array, or a view of it, in a .grad
            grad = np.asarray(_as_array(grad), dtype=self.data.dtype)
            _check_grad_shape(grad, self.data)
            if self._node is None:
                grad = grad.copy()
        _run_backward(self, grad, bool(retain_graph))

    # ----- arithmetic (gradients handle broadcasting) ----------------------------------------------
    def __add__(self, other):
        return _ops().Add.apply(self, other)

    def __radd__(self, other):
        return _ops().Add.apply(other, self)

    def __sub__(self, other):
        return _ops().Sub.apply(self, other)

    def __rsub__(self, other):
        return _ops().Sub.apply(other, self)

    def __mul__(self, other):
        return _ops().Mul.apply(self, other)

    def __rmul__(self, other):
        return _ops().Mul.apply(other, self)

    def __truediv__(self, other):
        return _ops().Div.apply(self, other)

    def __rtruediv__(self, other):
        return _ops().Div.apply(other, self)

    def __neg__(self):
        return _ops().Neg.apply(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _ops().Abs.apply(self)

    def __pow__(self, exponent):
        if isinstance(exponent, (Tensor, np.ndarray)):
            return _ops().PowTensor.apply(self, exponent)
        return _ops().Pow.apply(self, exponent=exponent)

    def __rpow__(self, base):
        if self.data.dtype.kind == "f" and not isinstance(base, (Tensor, np.ndarray)):
            base = np.asarray(base, dtype=self.data.dtype)
        return _ops().PowTensor.apply(base, self)

    def __matmul__(self, other):
        return _ops().MatMul.apply(self, other)

    def __rmatmul__(self, other):
        return _ops().MatMul.apply(other, self)

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple) and any(isinstance(i, Tensor) for i in index):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        return _ops().Index.apply(self, index=index)

    add = __add__
    sub = __sub__
    mul = __mul__
    div = __truediv__
    matmul = __matmul__
    neg = negative = __neg__

    def pow(self, exponent):
        return self.__pow__(exponent)

    def square(self):
        return _ops().Pow.apply(self, exponent=2)

    # ----- comparisons and logic: elementwise, bool tensors, no gradient ------------------------------
    def __eq__(self, other):
        if other is None:
            return False
        return _wrap(np.equal(self.data, _data(other)))

    def __ne__(self, other):
        if other is None:
            return True
        return _wrap(np.not_equal(self.data, _data(other)))

    def __lt__(self, other):
        return _wrap(np.less(self.data, _data(other)))

    def __le__(self, other):
        return _wrap(np.less_equal(self.data, _data(other)))

    def __gt__(self, other):
        return _wrap(np.greater(self.data, _data(other)))

    def __ge__(self, other):
        return _wrap(np.greater_equal(self.data, _data(other)))

    eq, ne, lt, le, gt, ge = __eq__, __ne__, __lt__, __le__, __gt__, __ge__
    greater, greater_equal, less, less_equal, not_equal = gt, ge, lt, le, ne

    def equal(self, other):
        """True if both have the same shape and elements (a Python bool, as torch.equal)."""
        o = _data(other)
        return self.data.shape == np.shape(o) and bool(np.array_equal(self.data, o))

    def __and__(self, other):
        return _wrap(np.bitwise_and(self.data, _data(other)))

    def __or__(self, other):
        return _wrap(np.bitwise_or(self.data, _data(other)))

    def __xor__(self, other):
        return _wrap(np.bitwise_xor(self.data, _data(other)))

    __rand__, __ror__, __rxor__ = __and__, __or__, __xor__

    def __invert__(self):
        return _wrap(np.invert(self.data))

    def logical_not(self):
        return _wrap(np.logical_not(self.data))

    def isnan(self):
        return _wrap(np.isnan(self.data))

    def isfinite(self):
        return _wrap(np.isfinite(self.data))

    def all(self, dim=None, keepdim=False):
        return _wrap(np.all(self.data, axis=_axes(dim, self.data.ndim, "all"), keepdims=keepdim))

    def any(self, dim=None, keepdim=False):
        return _wrap(np.any(self.data, axis=_axes(dim, self.data.ndim, "any"), keepdims=keepdim))

    # ----- reductions -------------------------------------------------------------------------------
    def sum(self, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None):
        dim, keepdim = _dim_kw(dim, keepdim, axis, keepdims, "sum")
        x = self if dtype is None else self.to(dtype)
        return _ops().Sum.apply(x, axis=_axes(dim, x.data.ndim, "sum"), keepdims=keepdim)

    def mean(self, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None):
        dim, keepdim = _dim_kw(dim, keepdim, axis, keepdims, "mean")
        x = self if dtype is None else self.to(dtype)
        if x.data.dtype.kind != "f":
            raise TypeError(f"mean(): input dtype must be floating point, got {x.dtype} (use .float() first or "
                            f"pass dtype=)")
        return _ops().Mean.apply(x, axis=_axes(dim, x.data.ndim, "mean"), keepdims=keepdim)

    def argmax(self, dim=None, keepdim=False):
        """Index of the (first) maximum, int64; over all elements (flattened) when dim is None. NaN counts as
        the maximum."""
        return _wrap(_arg(np.argmax, self.data, dim, keepdim, "argmax"))

    def argmin(self, dim=None, keepdim=False):
        return _wrap(_arg(np.argmin, self.data, dim, keepdim, "argmin"))

    def max(self, dim=None, keepdim=False):
        """max() -> the largest value (0-d, gradient shared evenly among ties, as PyTorch);
        max(dim, keepdim=False) -> (values, indices) (a namedtuple, fastbp.return_types.max), the gradient
        going to the returned index (the first maximum); max(other) -> maximum(self, other)."""
        return _max_min(self, dim, keepdim, False)

    def min(self, dim=None, keepdim=False):
        """As max(), for the smallest value."""
        return _max_min(self, dim, keepdim, True)

    def amax(self, dim=None, keepdim=False):
        if dim is None:
            return _ops().MaxAll.apply(self, minimum=False)
        return _max_min(self, dim, keepdim, False).values

    def amin(self, dim=None, keepdim=False):
        if dim is None:
            return _ops().MaxAll.apply(self, minimum=True)
        return _max_min(self, dim, keepdim, True).values

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        """Variance over dim (all elements when None) with Bessel's correction by default (correction=1;
        unbiased=False or correction=0 divides by n), as torch.var; differentiable."""
        return _var(self, dim, unbiased, keepdim, correction, "var")

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        """sqrt(var(...)), as torch.std."""
        return _var(self, dim, unbiased, keepdim, correction, "std").sqrt()

    def sort(self, dim=-1, descending=False, stable=False):
        """(values, indices) sorted along dim (NaN sorts as the largest value); equal values keep their order
        (a stable sort, whatever `stable` says). Values are differentiable (the gradient goes back to the
        source positions); indices are int64."""
        from . import return_types
        idx = _sort_index(self.data, dim, descending, "sort")
        return return_types.sort(_take(self, idx, dim), _wrap(idx))

    def argsort(self, dim=-1, descending=False, stable=False):
        return _wrap(_sort_index(self.data, dim, descending, "argsort"))

    def topk(self, k, dim=-1, largest=True, sorted=True):
        """(values, indices) of the k largest (or smallest) along dim, in order, as torch.topk."""
        from . import return_types
        d = _dim(dim, self.data.ndim, "topk")
        n = self.data.shape[d] if self.data.ndim else 1
        k = operator.index(k)
        if not 0 <= k <= n:
            raise ValueError(f"topk: k={k} is out of range for dim {dim} of size {n} (tensor of shape {self.shape})")
        idx = _sort_index(self.data, dim, largest, "topk")
        if self.data.ndim:
            idx = np.ascontiguousarray(np.take(idx, np.arange(k), axis=d))
        return return_types.topk(_take(self, idx, dim), _wrap(idx))

    def gather(self, dim, index):
        """Values at `index` along dim (torch.gather): index (int64) has self's number of dims and, outside
        dim, sizes no larger than self's. Differentiable in self."""
        ix = np.asarray(_data(index))
        if ix.dtype.kind not in "iu":
            raise TypeError(f"gather: index must be an integer tensor, got dtype {ix.dtype}")
        if ix.ndim != self.data.ndim:
            raise ValueError(f"gather: index of shape {ix.shape} must have as many dims as the input of shape "
                             f"{self.shape}")
        d = _dim(dim, self.data.ndim, "gather")
        if any(ix.shape[i] > self.data.shape[i] for i in range(ix.ndim) if i != d):
            raise ValueError(f"gather: index of shape {ix.shape} is larger than the input of shape {self.shape} "
                             f"outside dim {dim}")
        n = self.data.shape[d] if self.data.ndim else 1
        if ix.size and (ix.min() < -n or ix.max() >= n):
            raise IndexError(f"gather: index values must lie in [0, {n}) for dim {dim} of the input of shape "
                             f"{self.shape}")
        return _ops().TakeAlong.apply(self, index=ix % n if ix.size else ix, dim=d)

    # ----- elementwise math -------------------------------------------------------------------------
    def exp(self):
        return _ops().Exp.apply(self)

    def log(self):
        return _ops().Log.apply(self)

    def abs(self):
        return _ops().Abs.apply(self)

    def sqrt(self):
        return _ops().Sqrt.apply(self)

    def sign(self):
        return _ops().Sign.apply(self)

    def clamp(self, min=None, max=None):
        """Clamp to [min, max]; the gradient is 1 where min <= x <= max (boundaries included, as PyTorch),
        else 0. Bounds are numbers or tensors/arrays that broadcast to self (constants: no gradient)."""
        if min is None and max is None:
            raise ValueError("clamp: at least one of min and max must not be None")
        return _ops().Clamp.apply(self, min=_data(min), max=_data(max))

    clip = clamp

    def clamp_min(self, min):
        return self.clamp(min=min)

    def clamp_max(self, max):
        return self.clamp(max=max)

    def maximum(self, other):
        return _ops().Maximum.apply(self, other)

    def minimum(self, other):
        return _ops().Minimum.apply(self, other)

    def where(self, condition, other):
        """self where condition, else other (as torch.Tensor.where)."""
        return _ops().Where.apply(condition, self, other)

    def masked_fill(self, mask, value):
        """value where mask (a bool tensor broadcasting to self), else self; the gradient flows where mask is
        False."""
        v = np.asarray(_data(value), dtype=self.data.dtype)
        return _ops().Where.apply(_data(mask), v, self)

    def relu(self):
        from .ops import nn as _nnops
        return _nnops.Relu.apply(self)

    def sigmoid(self):
        from .ops import nn as _nnops
        return _nnops.Sigmoid.apply(self)

    def tanh(self):
        from .ops import nn as _nnops
        return _nnops.Tanh.apply(self)

    def softmax(self, dim):
        from .nn import functional as F
        return F.softmax(self, dim)

    def log_softmax(self, dim):
        from .nn import functional as F
        return F.log_softmax(self, dim)

    # ----- shape ------------------------------------------------------------------------------------
    def reshape(self, *shape):
        shape = _shape_args(shape, "reshape")
        try:
            return _ops().Reshape.apply(self, shape=shape)
        except ValueError:
            raise ValueError(f"view/reshape: shape {shape} is invalid for a tensor of shape {self.shape} "
                             f"({self.data.size} elements)") from None

    view = reshape

    def view_as(self, other):
        return self.reshape(other.shape)

    reshape_as = view_as

    def flatten(self, start_dim=0, end_dim=-1):
        """Merge dims start_dim..end_dim into one (a 0-d tensor becomes shape (1,)), as torch.flatten."""
        shape = self.data.shape
        nd = len(shape)
        if nd == 0:
            return self.reshape(1)
        s, e = _dim(start_dim, nd, "flatten"), _dim(end_dim, nd, "flatten")
        if s > e:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} for a tensor of "
                             f"shape {shape}")
        if s == e:
            return self
        return self.reshape(shape[:s] + (int(np.prod(shape[s:e + 1], dtype=np.int64)),) + shape[e + 1:])

    def unflatten(self, dim, sizes):
        shape = self.data.shape
        d = _dim(dim, len(shape), "unflatten")
        return self.reshape(shape[:d] + tuple(sizes) + shape[d + 1:])

    def squeeze(self, dim=None):
        """Drop dims of size 1 (all of them, or those of `dim`, an int or tuple); a dim whose size is not 1 is
        left alone, as PyTorch."""
        shape = self.data.shape
        if dim is None:
            new = tuple(s for s in shape if s != 1)
        else:
            drop = {d for d in _axes_tuple(dim, len(shape), "squeeze") if shape[d] == 1}
            new = tuple(s for i, s in enumerate(shape) if i not in drop)
        return self if new == shape else _ops().Reshape.apply(self, shape=new)

    def unsqueeze(self, dim):
        """A view with a new dim of size 1 at position `dim` (in [-ndim-1, ndim])."""
        shape = self.data.shape
        d = _dim(dim, len(shape) + 1, "unsqueeze")
        return _ops().Reshape.apply(self, shape=shape[:d] + (1,) + shape[d:])

    def permute(self, *dims):
        dims = _shape_args(dims, "permute")
        nd = self.data.ndim
        if len(dims) != nd:
            raise ValueError(f"permute: got {len(dims)} dims {dims} for a tensor of shape {self.shape}")
        norm = tuple(_dim(d, nd, "permute") for d in dims)
        if sorted(norm) != list(range(nd)):
            raise ValueError(f"permute: {dims} is not a permutation of the dims of a tensor of shape {self.shape}")
        return _ops().Transpose.apply(self, axes=norm)

    def transpose(self, dim0, dim1):
        """Swap dims dim0 and dim1 (PyTorch's transpose; for a general permutation use permute)."""
        nd = self.data.ndim
        if nd == 0:
            _dim(dim0, 1, "transpose"), _dim(dim1, 1, "transpose")
            return self
        a, b = _dim(dim0, nd, "transpose"), _dim(dim1, nd, "transpose")
        axes = list(range(nd))
        axes[a], axes[b] = b, a
        return _ops().Transpose.apply(self, axes=tuple(axes))

    swapaxes = swapdims = transpose

    def t(self):
        """Transpose of a tensor with at most 2 dims (PyTorch's t())."""
        if self.data.ndim > 2:
            raise ValueError(f"t() expects a tensor with <= 2 dims, got shape {self.shape}; use transpose(dim0, dim1)")
        return self if self.data.ndim < 2 else self.transpose(0, 1)

    @property
    def T(self):
        return _ops().Transpose.apply(self, axes=None)

    def expand(self, *sizes):
        """A broadcast view with the given sizes: -1 keeps a dim, a dim of size 1 stretches, new dims may be
        added in front; the gradient sums over the expanded dims. The result is read-only, as NumPy's
        broadcast views (PyTorch warns on writes to expanded tensors)."""
        sizes = _shape_args(sizes, "expand")
        shape = self.data.shape
        lead = len(sizes) - len(shape)
        if lead < 0:
            raise ValueError(f"expand: the size {sizes} has fewer dims than the tensor's shape {shape}")
        new = []
        for i, s in enumerate(sizes):
            if i < lead:
                if s < 0:
                    raise ValueError(f"expand: size -1 is not allowed in a new leading dim ({sizes} for a tensor "
                                     f"of shape {shape})")
                new.append(s)
                continue
            cur = shape[i - lead]
            if s == -1 or s == cur:
                new.append(cur)
            elif cur == 1 and s >= 0:
                new.append(s)
            else:
                raise ValueError(f"expand: cannot expand a tensor of shape {shape} to size {sizes}: dim {i} has "
                                 f"size {cur}, which is not 1")
        new = tuple(new)
        return self if new == shape else _ops().Expand.apply(self, shape=new)

    def expand_as(self, other):
        return self.expand(other.shape)

    def repeat(self, *sizes):
        """Tile self sizes[i] times along each dim (leading new dims allowed), as torch.Tensor.repeat;
        the gradient sums over the copies."""
        sizes = _shape_args(sizes, "repeat")
        if len(sizes) < self.data.ndim:
            raise ValueError(f"repeat: {len(sizes)} sizes {sizes} for a tensor of shape {self.shape}: give at "
                             f"least one per dim")
        if any(r < 0 for r in sizes):
            raise ValueError(f"repeat: sizes must be >= 0, got {sizes}")
        return _ops().Repeat.apply(self, reps=sizes)

    def split(self, split_size_or_sections, dim=0):
        """Pieces of split_size along dim (the last may be smaller), or of the given section sizes; each
        piece is differentiable."""
        n = self.data.shape[_dim(dim, self.data.ndim, "split")]
        d = _dim(dim, self.data.ndim, "split")
        if isinstance(split_size_or_sections, (list, tuple)):
            sizes = [operator.index(k) for k in split_size_or_sections]
            if sum(sizes) != n:
                raise ValueError(f"split: sections {sizes} sum to {sum(sizes)}, but dim {dim} of a tensor of shape "
                                 f"{self.shape} has size {n}")
        else:
            k = operator.index(split_size_or_sections)
            if k <= 0:
                raise ValueError(f"split: split_size must be > 0, got {k}")
            sizes = [min(k, n - i) for i in range(0, n, k)] or [0]
        out, start = [], 0
        lead = (slice(None),) * d
        for k in sizes:
            out.append(self[lead + (slice(start, start + k),)])
            start += k
        return tuple(out)

    def chunk(self, chunks, dim=0):
        """At most `chunks` pieces of equal size ceil(n / chunks) along dim, as torch.chunk."""
        chunks = operator.index(chunks)
        if chunks <= 0:
            raise ValueError(f"chunk: chunks must be > 0, got {chunks}")
        n = self.data.shape[_dim(dim, self.data.ndim, "chunk")]
        return self.split(max(-(-n // chunks), 1), dim)

    # ----- dtype and device -------------------------------------------------------------------------
    def astype(self, dtype):
        return _cast(self, as_dtype(dtype))

    def type_as(self, other):
        return _cast(self, other.dtype)

    def float(self):
        return _cast(self, _float32)

    def double(self):
        return _cast(self, _float64)

    def long(self):
        return _cast(self, _int64)

    def int(self):
        return _cast(self, np.dtype(np.int32))

    def bool(self):
        return _cast(self, np.dtype(np.bool_))

    def to(self, *args, dtype=None, device=None, copy=False, non_blocking=False, **_ignored):
        """to(dtype), to(device), to(device, dtype), to(other) (other's dtype), with keywords dtype=, device=,
        copy=. The only device is "cpu" (a string or fastbp.device); any other raises ValueError. Returns self
        when nothing changes and copy is False; a float-to-float conversion or copy stays in the graph."""
        for a in args:
            if isinstance(a, Tensor):
                dtype = a.dtype
            elif isinstance(a, _device.device):
                device = a
            elif isinstance(a, str) and not _is_dtype_name(a):
                device = a
            elif isinstance(a, (int, np.integer)) and not isinstance(a, bool):
                _device.device(a)  # an accelerator ordinal: ValueError
            else:
                dtype = a
        _device.check_device(device)
        out = self if dtype is None else _cast(self, as_dtype(dtype))
        if copy and out is self:
            out = self.clone() if self.requires_grad else _wrap(self.data.copy())
        return out

    def cpu(self):
        return self

    def cuda(self, *args, **kwargs):
        raise ValueError("cuda(): fastbp is a CPU library, the only device is 'cpu'")

    # ----- in place (data only: on leaves, or under no_grad for a leaf that requires grad) ---------------
    def _writable(self, what):
        if self._node is not None or (self.requires_grad and _grad_state.enabled):
            raise RuntimeError(f"{what}: in-place change of a tensor that requires grad; fastbp records no in-place "
                               f"ops: use the out-of-place form, or fastbp.no_grad() for a leaf (e.g. a parameter)")
        if not self.data.flags.writeable:
            raise ValueError(f"{what}: the tensor's data is a read-only view (from expand()); clone() it first")
        return self.data

    def __setitem__(self, index, value):
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple) and any(isinstance(i, Tensor) for i in index):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        self._writable("item assignment")[index] = _data(value)

    def zero_(self):
        self._writable("zero_")[...] = 0
        return self

    def fill_(self, value):
        self._writable("fill_")[...] = _data(value)
        return self

    def copy_(self, src):
        np.copyto(self._writable("copy_"), _data(src), casting="unsafe")
        return self

    def add_(self, other, alpha=1):
        d = self._writable("add_")
        o = _data(other)
        np.add(d, o if alpha == 1 else np.multiply(o, alpha), out=d, casting="unsafe")
        return self

    def sub_(self, other, alpha=1):
        d = self._writable("sub_")
        o = _data(other)
        np.subtract(d, o if alpha == 1 else np.multiply(o, alpha), out=d, casting="unsafe")
        return self

    def mul_(self, other):
        d = self._writable("mul_")
        np.multiply(d, _data(other), out=d, casting="unsafe")
        return self

    def div_(self, other):
        d = self._writable("div_")
        np.divide(d, _data(other), out=d, casting="unsafe")
        return self

    def clamp_(self, min=None, max=None):
        d = self._writable("clamp_")
        if min is None and max is None:
            raise ValueError("clamp_: at least one of min and max must not be None")
        if min is not None:
            np.maximum(d, _data(min), out=d, casting="unsafe")
        if max is not None:
            np.minimum(d, _data(max), out=d, casting="unsafe")
        return self

    def uniform_(self, a=0.0, b=1.0):
        d = self._writable("uniform_")
        d[...] = _get_rng().uniform(a, b, d.shape)
        return self

    def normal_(self, mean=0.0, std=1.0):
        d = self._writable("normal_")
        d[...] = _get_rng().normal(mean, std, d.shape)
        return self

    def __iter__(self):
        if self.data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.data.shape[0]))

    # ----- creation from this tensor (dtype follows self unless given) --------------------------------
    def new_zeros(self, *size, dtype=None, requires_grad=False, device=None):
        return _creation().zeros(*size, dtype=dtype or self.dtype, requires_grad=requires_grad, device=device)

    def new_ones(self, *size, dtype=None, requires_grad=False, device=None):
        return _creation().ones(*size, dtype=dtype or self.dtype, requires_grad=requires_grad, device=device)

    def new_full(self, size, fill_value, dtype=None, requires_grad=False, device=None):
        return _creation().full(size, fill_value, dtype=dtype or self.dtype, requires_grad=requires_grad,
                                device=device)

    def new_empty(self, *size, dtype=None, requires_grad=False, device=None):
        return _creation().empty(*size, dtype=dtype or self.dtype, requires_grad=requires_grad, device=device)

    def new_tensor(self, data, dtype=None, requires_grad=False, device=None):
        return tensor(data, dtype=dtype or self.dtype, requires_grad=requires_grad, device=device)


# ----- helpers of the Tensor surface ---------------------------------------------------------------------
_float32 = np.dtype(np.float32)
_float64 = np.dtype(np.float64)
_int64 = np.dtype(np.int64)


def _wrap(arr):
    """A leaf Tensor (no gradient) around an ndarray, without the constructor's checks."""
    t = Tensor.__new__(Tensor)
    t.data = arr if type(arr) is np.ndarray else np.asarray(arr)
    t.grad = None
    t.requires_grad = False
    t._node = None
    return t


def _data(x):
    return x.data if isinstance(x, Tensor) else x


def _is_dtype_name(s):
    if s in _ALIASES:
        return True
    try:
        np.dtype(s)
    except TypeError:
        return False
    return True


def _dim(d, ndim, what):
    """One dim index normalised to [0, ndim); a 0-d tensor accepts 0 and -1, as PyTorch."""
    try:
        d = operator.index(d)
    except TypeError:
        raise TypeError(f"{what}: dim must be an int, got {type(d).__name__}") from None
    n = max(ndim, 1)
    if not -n <= d < n:
        raise IndexError(f"{what}: dim {d} is out of range for a tensor with {ndim} dims (expected in "
                         f"[{-n}, {n - 1}])")
    return d % n


def _axes_tuple(dim, ndim, what):
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    out = tuple(_dim(d, ndim, what) for d in dims)
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: dim {dim} names a dim more than once")
    return out


def _axes(dim, ndim, what):
    """A reduction's dim (None, int, tuple or list) as NumPy's axis; on a 0-d tensor dim 0/-1 means all."""
    if dim is None:
        return None
    if ndim == 0:
        _axes_tuple(dim, 0, what)
        return None
    if type(dim) is int and -ndim <= dim < ndim:
        return dim
    out = _axes_tuple(dim, ndim, what)
    return out[0] if not isinstance(dim, (tuple, list)) else out


def _dim_kw(dim, keepdim, axis, keepdims, what):
    if axis is not None:
        if dim is not None:
            raise TypeError(f"{what}: pass dim or its alias axis, not both")
        dim = axis
    if keepdims is not None:
        keepdim = keepdims
    return dim, bool(keepdim)


def _shape_args(args, what):
    """Sizes given as ints (f(2, 3)) or one sequence (f((2, 3)), f([2, 3])), as ints."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    try:
        return tuple(operator.index(a) for a in args)
    except TypeError:
        raise TypeError(f"{what}: sizes must be ints (or one tuple of ints), got {args!r}") from None


def _arg(fn, a, dim, keepdim, what):
    if a.size == 0 and (dim is None or a.shape[_dim(dim, a.ndim, what)] == 0):
        raise ValueError(f"{what}(): cannot take {what} of an empty tensor (shape {a.shape})")
    if dim is None:
        out = fn(a, axis=None)
        if keepdim:
            out = np.reshape(out, (1,) * a.ndim)
    else:
        d = _dim(dim, a.ndim, what)
        out = fn(a, axis=d, keepdims=keepdim) if a.ndim else fn(a)
        if a.ndim == 0:
            out = np.asarray(out)
    return np.asarray(out, dtype=np.int64)


def _max_min(self, dim, keepdim, minimum):
    ops = _ops()
    if isinstance(dim, (Tensor, np.ndarray)):
        return (ops.Minimum if minimum else ops.Maximum).apply(self, dim)
    if dim is None:
        return ops.MaxAll.apply(self, minimum=minimum)
    from . import return_types
    what = "min" if minimum else "max"
    a = self.data
    d = _dim(dim, a.ndim, what)
    if a.ndim == 0:
        values = ops.Clone.apply(self) if self.requires_grad else _wrap(a.copy())
        return getattr(return_types, what)(values, _wrap(np.zeros((), dtype=np.int64)))
    if a.shape[d] == 0:
        raise ValueError(f"{what}(): dim {dim} is empty in a tensor of shape {a.shape}")
    idx = (np.argmin if minimum else np.argmax)(a, axis=d, keepdims=True)
    values = ops.Gather.apply(self, index=idx, dim=d, keepdim=keepdim)
    indices = np.asarray(idx if keepdim else idx.squeeze(d), dtype=np.int64)
    return getattr(return_types, what)(values, _wrap(indices))


def _var(t, dim, unbiased, keepdim, correction, what):
    if unbiased is not None and correction is not None:
        raise TypeError(f"{what}: pass unbiased or correction, not both")
    c = correction if correction is not None else (0 if unbiased is False else 1)
    if t.data.dtype.kind != "f":
        raise TypeError(f"{what}(): input dtype must be floating point, got {t.dtype}")
    axes = _axes(dim, t.data.ndim, what)
    n = t.data.size if axes is None else int(np.prod([t.data.shape[a] for a in np.atleast_1d(axes)]))
    centred = t - t.mean(dim=axes, keepdim=True)
    return (centred * centred).sum(dim=axes, keepdim=keepdim) / max(n - c, 0)


def _sort_index(a, dim, descending, what):
    d = _dim(dim, a.ndim, what)
    if a.ndim == 0:
        return np.zeros((), dtype=np.int64)
    if descending:
        # a stable ascending sort of the reversed line, reversed back: largest first, NaN first (as the
        # largest), equal values in their original order, no negation (so no integer overflow)
        n = a.shape[d]
        return (n - 1 - np.flip(np.argsort(np.flip(a, d), axis=d, kind="stable"), d)).astype(np.int64)
    return np.argsort(a, axis=d, kind="stable").astype(np.int64)


def _take(t, idx, dim):
    if t.data.ndim == 0:
        return t.clone() if t.requires_grad else _wrap(t.data.copy())
    return _ops().TakeAlong.apply(t, index=idx, dim=_dim(dim, t.data.ndim, "sort"))


def _cast(t, dtype):
    """t converted to dtype: t itself when it already has it; float -> float stays in the graph; a cast to
    a non-float dtype gives a tensor without gradient."""
    if t.data.dtype == dtype:
        return t
    if dtype.kind == "f" and t.data.dtype.kind == "f":
        return _ops().Cast.apply(t, dtype=dtype)
    return _wrap(t.data.astype(dtype))


_basic = None


def _ops():
    global _basic
    if _basic is None:
        from .ops import basic
        _basic = basic
    return _basic


def _creation():
    from . import creation
    return creation


def tensor(data, requires_grad=False, dtype=None, *, device=None):
    """Make a Tensor from data (a copy, as torch.tensor): Python floats become the default dtype (float32),
    NumPy arrays and scalars keep their dtype, integer data stays integer (for labels), bools stay bool.
    To share an ndarray's memory use fastbp.from_numpy or fastbp.as_tensor."""
    if device is not None:
        _device.check_device(device)
    if type(data) is _ndarray and dtype is None and data.dtype.kind in "fiub":
        arr = data.copy()  # the common case (a batch of NumPy data), kept cheap
    else:
        if isinstance(data, Tensor):
            data = data.data
        arr = _as_array(data, None if dtype is None else as_dtype(dtype))
        if arr is data or (isinstance(data, np.ndarray) and np.may_share_memory(arr, data)):
            arr = arr.copy()
    if requires_grad and arr.dtype.kind != "f":
        raise TypeError(f"only floating-point tensors can require gradients, got dtype {arr.dtype}")
    t = Tensor.__new__(Tensor)
    t.data = arr
    t.grad = None
    t.requires_grad = bool(requires_grad)
    t._node = None
    return t
