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

from ._dtype import get_default_dtype

_counter = itertools.count()


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
        if kind == "f" and not isinstance(value, np.ndarray):
            arr = arr.astype(get_default_dtype())  # Python floats become the default dtype
        return arr
    raise TypeError(f"cannot make a tensor from dtype {arr.dtype}")


def _check_grad_shape(grad, data):
    if grad.shape != data.shape:
        raise ValueError(f"gradient has shape {grad.shape} but the tensor has shape {data.shape}")


_by_seq = operator.attrgetter("seq")
_FREED = ("Trying to backward through the graph a second time (or after its saved arrays were freed); "
          "call backward(retain_graph=True) the first time")


def _run_backward(root, grad, retain_graph):
    node = root._node
    if node is None:
        # a leaf: the gradient goes straight to .grad
        root.grad = grad if root.grad is None else root.grad + grad
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
    grads = {node: grad}
    owned = set()  # ids of arrays already stored in a leaf's .grad during this pass
    for n in nodes:
        g = grads.pop(n, None)
        if g is None:
            continue
        in_grads = n.backward(n, g)
        if type(in_grads) is not tuple:
            in_grads = (in_grads,)
        for inp, gi in zip(n.inputs, in_grads):
            if gi is None or not isinstance(inp, Tensor) or not inp.requires_grad:
                continue
            p = inp._node
            if p is not None:
                prev = grads.get(p)
                grads[p] = gi if prev is None else prev + gi
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
                    inp.grad = inp.grad + gi
        if not retain_graph:
            n.__dict__.clear()  # frees the saved arrays and the references to the inputs


class Tensor:
    """An ndarray (`.data`) with an optional gradient (`.grad`) and the node that produced it."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "__weakref__")
    __array_priority__ = 1000  # so ndarray <op> Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad=False, dtype=None):
        arr = _as_array(data, dtype)
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
    def size(self):
        return self.data.size

    @property
    def is_leaf(self):
        return self._node is None

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({np.array2string(self.data, separator=', ', prefix='tensor(')}, dtype={self.dtype}{extra})"

    def numpy(self):
        """The underlying ndarray (shares memory, as torch.Tensor.numpy())."""
        return self.data

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(-1)[0].item()

    def detach(self):
        """A new leaf sharing the same data, cut from the graph."""
        t = Tensor.__new__(Tensor)
        t.data = self.data
        t.grad = None
        t.requires_grad = False
        t._node = None
        return t

    def requires_grad_(self, flag=True):
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require gradients, got dtype {self.dtype}")
        if self._node is not None and not flag:
            raise RuntimeError("requires_grad can only be turned off on a leaf; use detach()")
        self.requires_grad = bool(flag)
        return self

    # ----- backward ---------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) * grad into the .grad of every leaf that requires a gradient.

        `grad` may be omitted only for a tensor with one element (then it is 1), as in PyTorch."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad and has no graph")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs; this tensor "
                                   f"has shape {self.shape}: pass backward(grad) with that shape")
            grad = np.ones_like(self.data)
        else:
            # no copy of the caller's array (for a big output that copy was a visible share of the step):
            # the engine never writes into incoming gradients, and copies before storing the caller's
            # array, or a view of it, in a .grad
            grad = np.asarray(_as_array(grad), dtype=self.data.dtype)
            _check_grad_shape(grad, self.data)
            if self._node is None:
                grad = grad.copy()
        _run_backward(self, grad, retain_graph)

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

    def __pow__(self, exponent):
        return _ops().Pow.apply(self, exponent=exponent)

    def __matmul__(self, other):
        return _ops().MatMul.apply(self, other)

    def __rmatmul__(self, other):
        return _ops().MatMul.apply(other, self)

    def __getitem__(self, index):
        return _ops().Index.apply(self, index=index)

    def sum(self, axis=None, keepdims=False):
        return _ops().Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops().Mean.apply(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().Reshape.apply(self, shape=shape)

    def view(self, *shape):
        return self.reshape(*shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops().Transpose.apply(self, axes=axes or None)

    @property
    def T(self):
        return _ops().Transpose.apply(self, axes=None)

    def exp(self):
        return _ops().Exp.apply(self)

    def log(self):
        return _ops().Log.apply(self)

    def abs(self):
        return _ops().Abs.apply(self)

    def relu(self):
        from .ops import nn as _nnops
        return _nnops.Relu.apply(self)

    def sigmoid(self):
        from .ops import nn as _nnops
        return _nnops.Sigmoid.apply(self)

    def tanh(self):
        from .ops import nn as _nnops
        return _nnops.Tanh.apply(self)

    def astype(self, dtype):
        return _ops().Cast.apply(self, dtype=np.dtype(dtype))

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)


_basic = None


def _ops():
    global _basic
    if _basic is None:
        from .ops import basic
        _basic = basic
    return _basic


def tensor(data, requires_grad=False, dtype=None):
    """Make a Tensor. Python floats become the default dtype (float32); float ndarrays keep their dtype;
    integer data stays integer (for labels)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)
