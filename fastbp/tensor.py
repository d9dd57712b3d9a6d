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

import numpy as np

from ._dtype import get_default_dtype

_counter = itertools.count()


class _GradMode:
    enabled = True


class no_grad:
    """Context manager (and decorator) under which ops record nothing."""

    def __enter__(self):
        self._prev = _GradMode.enabled
        _GradMode.enabled = False
        return self

    def __exit__(self, *exc):
        _GradMode.enabled = self._prev
        return False

    def __call__(self, fn):
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)
        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = fn.__doc__
        return wrapper


def is_grad_enabled():
    return _GradMode.enabled


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
        record = record and _GradMode.enabled
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
        root.grad = grad if root.grad is None else root.grad + grad
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
        if finals and n in finals:
            _fire_leaf_hooks(finals.pop(n))
    if _backward_end_callbacks:
        _end_of_backward()


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
