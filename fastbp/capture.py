"""Captured training steps: `step = fastbp.compile(step_fn)`.

The first call for given argument shapes/dtypes runs `step_fn` eagerly while recording every kernel call
(forward, loss, backward: the functions of the backend table), the random draws of dropout, where each kernel
argument comes from (an input, the output of an earlier kernel, a view of one, a persistent array such as a
parameter or a running statistic, a constant) and the optimizer / clipping / scheduler calls. Ops that are not one kernel (NumPy arithmetic,
reshapes, user Functions) are recorded whole, their forward/backward called again at replay. Later calls
replay that flat sequence from generated straight-line Python: no Tensor, no graph node, no backward engine;
kernels that take `out=` write into the arrays of the capture, which become the step's buffers.
Optimizer steps, `zero_grad`, `clip_grad_norm_`/`clip_grad_value_` and scheduler steps are replayed as calls
of the same methods on the same objects, so the learning rate and every other hyperparameter of the
optimizer is read at replay time. The same kernels run on the same values in the same order, so replay gives
the same bits as eager.

What cannot be captured falls back to eager execution with a warning (CaptureWarning) naming the reason;
reading tensor data inside the step (`.item()`, `float(t)`, `bool(t)`, `.numpy()`, `.tolist()`) raises
CaptureError at capture time. The global off switch: `fastbp.set_compile_enabled(False)` or the environment
variable FASTBP_COMPILE=0 (read when fastbp is imported); per function: `fastbp.compile(fn, disable=True)`."""
import collections
import functools
import gc
import os
import sys
import threading
import warnings
import weakref

import numpy as np

from . import _backend

from .tensor import Function, Tensor, _pool_enter, _pool_exit, is_grad_enabled

__all__ = ["compile", "capture", "set_compile_enabled", "is_compile_enabled", "CaptureError", "CaptureWarning",
           "CapturedStep"]

_enabled = os.environ.get("FASTBP_COMPILE", "1").strip().lower() not in ("0", "false", "off", "no")


def set_compile_enabled(flag):
    """Turn every captured step on (True, the default) or off (False: each call runs its function eagerly)."""
    global _enabled
    _enabled = bool(flag)


def is_compile_enabled():
    return _enabled


class CaptureError(RuntimeError):
    """The step does something a captured step cannot replay (raised at capture time)."""


class CaptureWarning(UserWarning):
    """A step could not be captured and runs eagerly; the message says why."""


class _Unsupported(Exception):
    pass


class _Stale(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------
# recording
_lock = threading.RLock()
_active = None  # the Recorder of the capture running (in the thread rec.thread), else None


def _recording():
    rec = _active
    return rec is not None and rec.depth == 0 and rec.thread == threading.get_ident()


class _Recorder:
    def __init__(self):
        self.thread = threading.get_ident()
        self.depth = 0            # > 0 inside an opaque call (optimizer step, clipping): nothing recorded
        self.ops = []
        self.slot_objs = []       # arrays with a slot (strong references: their ids stay unique)
        self.slots = {}           # id(array) -> slot index
        self.unknown = []         # (weakref, snapshot copy) of arrays from elsewhere
        self.unknown_ids = {}
        self.trusted = []         # constants known not to depend on data (the backward seed)
        self.leaves = {}          # id(tensor) -> (tensor, its data array)
        self.problem = None
        self.nctx = 0             # Functions recorded as a whole (their ctx objects are locals of the replay)
        self.aliases = {}         # index of a "fwd"/"bwd" op -> specs of the inputs its output shared memory with

    # where a value comes from
    def new_slot(self, arr):
        i = len(self.slot_objs)
        self.slot_objs.append(arr)
        self.slots[id(arr)] = i
        return i

    def spec(self, v):
        if isinstance(v, np.ndarray):
            i = self.slots.get(id(v))
            if i is not None and self.slot_objs[i] is v:
                return ("s", i)
            b = v.base
            while isinstance(b, np.ndarray):
                i = self.slots.get(id(b))
                if i is not None and self.slot_objs[i] is b:
                    off = v.__array_interface__["data"][0] - b.__array_interface__["data"][0]
                    return ("v", i, v.shape, v.strides, off, v.dtype)
                b = b.base
            k = self.unknown_ids.get(id(v))
            if k is not None and self.unknown[k][0]() is v:
                return ("u", k)
            k = len(self.unknown)
            self.unknown.append((weakref.ref(v), np.array(v, copy=True)))
            self.unknown_ids[id(v)] = k
            return ("u", k)
        if isinstance(v, Tensor):
            raise _Unsupported("a kernel received a Tensor object")
        if isinstance(v, tuple):
            return ("t", tuple(self.spec(x) for x in v))
        if isinstance(v, list):
            return ("l", [self.spec(x) for x in v])
        if v is None or isinstance(v, (bool, int, float, str, complex, np.generic, np.dtype, type)):
            return ("c", v)
        if isinstance(v, dict):
            return ("d", {k: self.spec(x) for k, x in v.items()})
        raise _Unsupported(f"a kernel received an argument of type {type(v).__name__}")

    def out_spec(self, v):
        if isinstance(v, np.ndarray):
            return ("s", self.new_slot(v))
        if isinstance(v, (tuple, list)):
            return ("t", tuple(self.out_spec(x) for x in v))
        return ("x",)  # a number or None: not used by later kernels through identity

    def kernel(self, name, fn, args, kwargs):
        try:
            a = tuple(self.spec(x) for x in args)
            k = {key: self.spec(x) for key, x in kwargs.items()}
        except _Unsupported as exc:
            self.problem = self.problem or f"{name}: {exc}"
            return fn(*args, **kwargs)
        out = fn(*args, **kwargs)
        self.ops.append(("k", name, fn, a, k, self.out_spec(out)))
        return out


def _wrap_kernel(name, fn):
    @functools.wraps(fn)
    def recorded(*args, **kwargs):
        rec = _active
        if rec is None or rec.depth or rec.thread != threading.get_ident():
            return fn(*args, **kwargs)
        return rec.kernel(name, fn, args, kwargs)
    return recorded


_recording_tables = {}


def _recording_table(table):
    """The backend table `table` with every kernel wrapped to record its calls (built once per table)."""
    ns = _recording_tables.get(id(table))
    if ns is None or ns[0] is not table:
        import types
        wrapped = types.SimpleNamespace()
        for key, value in vars(table).items():
            setattr(wrapped, key, _wrap_kernel(key, value) if callable(value) else value)
        ns = _recording_tables[id(table)] = (table, wrapped)
    return ns[1]


def _opaque(fn, *args, **kwargs):
    """Run fn(*args, **kwargs) now and record it to be called again, with the same arguments, at replay."""
    rec = _active
    args = tuple(list(a) if _is_iterator(a) else a for a in args)
    rec.ops.append(("py", fn, args, kwargs))
    rec.depth += 1
    try:
        return fn(*args, **kwargs)
    finally:
        rec.depth -= 1


def _is_iterator(a):
    return hasattr(a, "__next__") and not isinstance(a, (Tensor, np.ndarray))


def opaque_call(fn):
    """Decorator for library functions that act on parameters and gradients in Python (clipping): inside a
    capture they are recorded as one call and run again at replay."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _recording():
            return _opaque(fn, *args, **kwargs)
        return fn(*args, **kwargs)
    wrapper.__wrapped_opaque__ = fn
    return wrapper


def _all_subclasses(cls):
    out, stack = [], [cls]
    while stack:
        c = stack.pop()
        out.append(c)
        stack.extend(c.__subclasses__())
    return out


def _reads_data(what):
    def raiser(self, *a, **k):
        if _recording():
            raise CaptureError(
                f"Tensor.{what} reads tensor data inside a captured step (fastbp.compile): a replayed step does "
                f"not run Python code between kernels, so a value read here would be stale and any control flow "
                f"on it would be frozen. Return the tensor from the step and read it outside, or run this step "
                f"eagerly with fastbp.compile(fn, disable=True).")
        return _ORIG_TENSOR[what](self, *a, **k)
    raiser.__name__ = what
    return raiser


_DATA_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
_ORIG_TENSOR = {name: getattr(Tensor, name) for name in _DATA_READS}
_ORIG_BACKWARD = Tensor.backward


def _backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    rec = _active
    if not _recording():
        return _ORIG_BACKWARD(self, gradient, retain_graph, create_graph, inputs)
    leaves = []
    node = self._node
    if node is not None:
        seen = {id(node)}
        stack = [node]
        while stack:
            n = stack.pop()
            for inp in getattr(n, "inputs", ()):
                if isinstance(inp, Tensor):
                    p = inp._node
                    if p is None:
                        if inp.requires_grad:
                            leaves.append(inp)
                    elif id(p) not in seen:
                        seen.add(id(p))
                        stack.append(p)
    else:
        leaves.append(self)
    if gradient is None and self.requires_grad and self.data.size == 1:
        gradient = np.ones_like(self.data)  # what the engine would make; a constant known not to hold data
        rec.trusted.append(gradient)
        rec.ops.append(("k", "<seed>", _const, (("c", gradient),), {}, rec.out_spec(gradient)))
    before = {id(t): t.grad for t in leaves}
    out = _ORIG_BACKWARD(self, gradient, retain_graph, create_graph, inputs)
    for t in leaves:
        rec.leaves[id(t)] = (t, t.data)
        if t.grad is not before[id(t)]:
            if before[id(t)] is not None:
                rec.problem = rec.problem or ("a gradient was accumulated into an existing .grad (call "
                                              "optimizer.zero_grad() with set_to_none=True inside the step)")
            spec = rec.spec(t.grad)
            if spec[0] == "u":
                spec = _copy_source(rec, t.grad)
            if spec is None:
                rec.problem = rec.problem or "a parameter's gradient could not be traced to one kernel output"
            rec.ops.append(("grad", t, spec))
    return out


def _copy_source(rec, g):
    """The engine copies a gradient that is a view (or shared) before storing it in .grad: find the slot
    (or view of one) that the copy was taken from, else None."""
    found = [i for i, a in enumerate(rec.slot_objs)
             if a.shape == g.shape and a.dtype == g.dtype and a is not g and np.array_equal(a, g, equal_nan=True)]
    return ("s", found[0]) if len(found) == 1 else None  # ambiguous (equal arrays): not captured


# Functions whose forward and backward are single kernel calls: recorded through their kernels (which
# take out= buffers). Every other Function (NumPy arithmetic, reshapes, user-defined ones) is recorded as a
# whole: its forward and backward are called again at replay.
_KERNEL_OP_MODULES = ("fastbp.ops.nn", "fastbp.ops.conv")
_ORIG_APPLY = Function.__dict__["apply"].__func__
_ORIG_ACC = sys.modules[Tensor.__module__]._acc


def _apply(cls, *args, **kwargs):
    rec = _active
    if rec is None or rec.depth or rec.thread != threading.get_ident() or cls.__module__ in _KERNEL_OP_MODULES:
        return _ORIG_APPLY(cls, *args, **kwargs)
    try:
        specs = tuple(rec.spec(a.data if isinstance(a, Tensor) else a) for a in args)
        kspecs = {k: rec.spec(v.data if isinstance(v, Tensor) else v) for k, v in kwargs.items()}
    except _Unsupported as exc:
        rec.problem = rec.problem or f"{cls.__name__}: {exc}"
        return _ORIG_APPLY(cls, *args, **kwargs)
    needs = [bool(isinstance(a, Tensor) and a.requires_grad) for a in args]
    rec.depth += 1
    try:
        t = _ORIG_APPLY(cls, *args, **kwargs)
    finally:
        rec.depth -= 1
    c = rec.nctx
    rec.nctx += 1
    ins = [a.data if isinstance(a, Tensor) else a for a in list(args) + list(kwargs.values())]
    _note_aliases(rec, t.data, ins, specs + tuple(kspecs.values()))
    rec.ops.append(("fwd", cls, specs, kspecs, rec.out_spec(t.data), c, needs))
    if t._node is not None:
        t._node.backward = _recorded_backward(rec, cls, c)
    return t


def _recorded_backward(rec, cls, c):
    def backward(ctx, g):
        if _active is not rec or rec.depth:
            return cls.backward(ctx, g)
        gs = rec.spec(g)
        rec.depth += 1
        try:
            res = cls.backward(ctx, g)
        finally:
            rec.depth -= 1
        _note_aliases(rec, res, [g], (gs,))
        rec.ops.append(("bwd", cls, c, gs, rec.out_spec(res)))
        return res
    return backward


def _note_aliases(rec, out, ins, specs):
    """Record, for the op about to be appended, the specs of its inputs that its output shares memory with
    (a Function's forward may return a view of an input: flatten, reshape, ...; see _escaping)."""
    outs = [x for x in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(x, np.ndarray)]
    shared = tuple(sp for a, sp in zip(ins, specs)
                   if isinstance(a, np.ndarray) and any(np.may_share_memory(o, a) for o in outs))
    if shared:
        rec.aliases[len(rec.ops)] = shared


def _const(a):
    return a


def _draw_mask(shape, p):
    """Dropout's mask, recorded as a kernel: replay draws a fresh one from fastbp's generator in eager order."""
    return _ORIG_MASK(shape, p)


_ORIG_MASK = None


@functools.lru_cache(maxsize=None)
def _lbfgs_class():
    from .optim.lbfgs import LBFGS
    return LBFGS


def _optimizer_step(orig):
    @functools.wraps(orig)
    def step(self, *args, **kwargs):
        if not _recording():
            return orig(self, *args, **kwargs)
        if isinstance(self, _lbfgs_class()):
            raise CaptureError("LBFGS cannot be captured: its step re-evaluates a closure a data-dependent "
                               "number of times. Run the step eagerly (fastbp.compile(fn, disable=True)).")
        if args and args[0] is not None or kwargs.get("closure") is not None:
            raise CaptureError("optimizer.step(closure) cannot be captured; call step() without a closure")
        return _opaque(orig, self, *args, **kwargs)
    step.__wrapped_orig__ = orig
    return step


class _Patches:
    """Install the recording hooks for the duration of one capture (under the module lock)."""

    def __enter__(self):
        from .optim.optimizer import Optimizer
        from .optim.lr_scheduler import LRScheduler
        from .nn import functional as F
        global _ORIG_MASK
        self.saved = []
        for name in _DATA_READS:
            self._set(Tensor, name, _reads_data(name))
        self._set(Tensor, "backward", _backward)
        for cls in _all_subclasses(Optimizer):
            for meth in ("step", "zero_grad"):
                if meth in vars(cls):
                    orig = vars(cls)[meth]
                    self._set(cls, meth, _optimizer_step(orig) if meth == "step" else _opaque_method(orig))
        for cls in _all_subclasses(LRScheduler):
            if "step" in vars(cls):
                self._set(cls, "step", _opaque_method(vars(cls)["step"]))
        self._set(Function, "apply", classmethod(_apply))
        tmod = sys.modules[Tensor.__module__]
        self._set(tmod, "_acc", _wrap_kernel("<accumulate>", _ORIG_ACC))
        _ORIG_MASK = F._keep_mask
        self._set(F, "_keep_mask", _wrap_kernel("<dropout mask>", _draw_mask))
        self.table = _backend.current
        _backend.current = _recording_table(self.table)
        return self

    def _set(self, owner, name, value):
        self.saved.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))
        setattr(owner, name, value)

    def __exit__(self, *exc):
        _backend.current = self.table
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)


def _opaque_method(orig):
    @functools.wraps(orig)
    def method(self, *args, **kwargs):
        if _recording():
            return _opaque(orig, self, *args, **kwargs)
        return orig(self, *args, **kwargs)
    return method


# ----------------------------------------------------------------------------------------------------------
# the captured program
def _flatten_args(args, kwargs):
    """(key, list of input arrays) of the call: tensors and arrays by shape/dtype/requires_grad, the other
    arguments by value (they must be hashable; they are baked into the capture)."""
    key = []
    arrays = []
    for v in list(args) + [kwargs[k] for k in sorted(kwargs)]:
        if isinstance(v, Tensor):
            key.append(("T", v.data.shape, v.data.dtype.str, v.requires_grad, v.data.strides))
            arrays.append(v.data)
        elif isinstance(v, np.ndarray):
            key.append(("A", v.shape, v.dtype.str, v.strides))
            arrays.append(v)
        else:
            hash(v)
            key.append(("V", type(v), v))
    return tuple(key) + (tuple(sorted(kwargs)), is_grad_enabled(), _backend.get_backend()), arrays


def _same_structure(a, b):
    """Tapes of two captures agree: same kernels with the same argument sources and constants."""
    if len(a.ops) != len(b.ops):
        return False
    for x, y in zip(a.ops, b.ops):
        if x[0] != y[0]:
            return False
        if x[0] == "k":
            if x[2] is not y[2] or not _spec_eq(("t", x[3]), ("t", y[3]), a, b) or x[4].keys() != y[4].keys() or \
                    not all(_spec_eq(x[4][k], y[4][k], a, b) for k in x[4]) or x[5] != y[5]:
                return False
        elif x[0] == "py":
            if x[1] is not y[1] or len(x[2]) != len(y[2]) or \
                    not all(p is q or _plain_eq(p, q) for p, q in zip(x[2], y[2])) or x[3] != y[3]:
                return False
        elif x[0] == "fwd":
            if x[1] is not y[1] or not _spec_eq(("t", x[2]), ("t", y[2]), a, b) or x[3].keys() != y[3].keys() or \
                    not all(_spec_eq(x[3][k], y[3][k], a, b) for k in x[3]) or x[4:] != y[4:]:
                return False
        elif x[0] == "bwd":
            if x[1] is not y[1] or x[2] != y[2] or not _spec_eq(x[3], y[3], a, b) or x[4] != y[4]:
                return False
        elif x[0] == "grad":
            if x[1] is not y[1] or not _spec_eq(x[2], y[2], a, b):
                return False
    return True


def _plain_eq(p, q):
    if isinstance(p, list) and isinstance(q, list):
        return len(p) == len(q) and all(u is v for u, v in zip(p, q))
    try:
        return bool(p == q)
    except Exception:  # noqa: BLE001
        return False


def _spec_eq(s, t, a, b):
    if s[0] != t[0]:
        return False
    kind = s[0]
    if kind in ("t", "l"):
        return len(s[1]) == len(t[1]) and all(_spec_eq(u, v, a, b) for u, v in zip(s[1], t[1]))
    if kind == "d":
        return s[1].keys() == t[1].keys() and all(_spec_eq(s[1][k], t[1][k], a, b) for k in s[1])
    if kind == "u":
        ua, ub = a.resolved[s[1]], b.resolved[t[1]]
        if ua[0] != ub[0]:
            return False
        if ua[0] == "p":
            return ua[1] is ub[1]
        return ua[1].dtype == ub[1].dtype and ua[1].shape == ub[1].shape and \
            np.array_equal(ua[1], ub[1], equal_nan=ua[1].dtype.kind in "fc")
    if kind == "c":
        x, y = s[1], t[1]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            return isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and np.array_equal(x, y)
        return type(x) is type(y) and (x == y or (x != x and y != y))
    if kind == "v":
        return s[1:] == t[1:]
    return s == t


# ----------------------------------------------------------------------------------------------------------
# fusions: rewrites of a finished tape that keep every bit of the eager step
def _kernel_pairs(tape, first, second):
    """(j, op j, op j + 1) for each kernel call `first` followed directly by a kernel call `second` of the
    same backend."""
    ops = tape.ops
    for j in range(len(ops) - 1):
        a, b = ops[j], ops[j + 1]
        if a[0] == "k" and a[1] == first and b[0] == "k" and b[1] == second and \
                a[2].__module__.rpartition(".")[0] == b[2].__module__.rpartition(".")[0]:
            yield j, a, b


def _plan_relu_epilogues(tape, escaping):
    """{index of a linear_forward: index of the relu_forward right after it that reads its output}: the
    pair runs as one linear_forward(activation="relu") writing both buffers (neither may be returned)."""
    plan = {}
    for j, a, b in _kernel_pairs(tape, "linear_forward", "relu_forward"):
        if a[5][0] != "s" or b[5][0] != "s" or "out" in a[4] or b[4] or len(b[3]) != 1 or b[3][0] != a[5]:
            continue
        if a[5][1] in escaping or b[5][1] in escaping:
            continue
        plan[j] = j + 1
    return plan


def _plan_cross_entropy(tape, escaping):
    """{index of a cross_entropy_backward: index of its cross_entropy_forward} where the backward follows
    the forward with only the backward seed (a constant) in between, on the same logits, labels and
    options: the pair runs as one cross_entropy_fused call (the bits of the two kernels)."""
    ops = tape.ops
    plan = {}
    for j in range(len(ops) - 2):
        f, seed, b = ops[j], ops[j + 1], ops[j + 2]
        if f[0] != "k" or f[1] != "cross_entropy_forward" or seed[0] != "k" or seed[1] != "<seed>" or \
                b[0] != "k" or b[1] != "cross_entropy_backward":
            continue
        if f[5][0] != "t" or len(f[5][1]) != 2 or any(x[0] != "s" for x in f[5][1]) or b[5][0] != "s":
            continue
        fa, ba = f[3], b[3]
        if len(fa) < 2 or len(ba) < 4 or ba[0] != seed[5] or ba[1] != fa[0] or ba[2] != fa[1] or \
                ba[3] != f[5][1][1] or ba[4:] != fa[2:] or b[4] != f[4] or "out" in f[4]:
            continue
        if b[5][1] in escaping or not hasattr(sys.modules.get(f[2].__module__), "cross_entropy_fused"):
            continue
        plan[j + 2] = j
    return plan


def _escaping(tape):
    """Slots whose arrays the step's result may share memory with, so that no kernel writes them into a
    buffer the next replay overwrites: the returned slots (a returned view names its base), and, through
    every Function recorded as a whole whose output shared memory with some of its inputs at capture
    (flatten, reshape, ...: _note_aliases), those inputs when its output escapes (transitively)."""
    escaping = set()
    _slots_of(tape.result_spec, escaping)
    for j in range(len(tape.ops) - 1, -1, -1):
        op = tape.ops[j]
        if op[0] in ("fwd", "bwd") and j in tape.aliases:
            outs = set()
            _slots_of(op[4], outs)
            if outs & escaping:
                for x in tape.aliases[j]:
                    _slots_of(x, escaping)
    return escaping


def _input_uses(tape):
    """{slot: how many times the ops of the tape read it} (as an argument, a view's base or a gradient)."""
    uses = {}

    def count(spec):
        acc = set()
        _slots_of(spec, acc)
        for slot in acc:
            uses[slot] = uses.get(slot, 0) + 1

    by_id = {id(obj): slot for slot, obj in enumerate(tape.slot_objs)}

    def count_py(v):  # an opaque call's arguments are the captured objects themselves
        if isinstance(v, (tuple, list)):
            for x in v:
                count_py(x)
        elif isinstance(v, dict):
            for x in v.values():
                count_py(x)
        else:
            arr = getattr(v, "data", None) if isinstance(v, Tensor) else v  # a Tensor argument reads its data
            if id(arr) in by_id:
                uses[by_id[id(arr)]] = uses.get(by_id[id(arr)], 0) + 1

    for op in tape.ops:
        if op[0] == "py":
            count_py(op[2])
            count_py(op[3])
        elif op[0] in ("k", "fwd"):
            a, k = (op[3], op[4]) if op[0] == "k" else (op[2], op[3])
            for x in list(a) + list(k.values()):
                count(x)
        elif op[0] == "bwd":
            count(op[3])
        else:
            count(op[2])
    return uses


def _plan_bn_relu(tape, escaping, uses):
    """{index of a batch_norm_forward: (index of the relu_forward right after it that reads its output,
    whether the output y is still needed)}: the pair runs as one batch_norm_forward(activation="relu")
    that writes relu(y) (and y only when another op reads it; not fused when the step returns y)."""
    plan = {}
    for j, a, b in _kernel_pairs(tape, "batch_norm_forward", "relu_forward"):
        if a[5][0] != "t" or not a[5][1] or a[5][1][0][0] != "s" or b[5][0] != "s" or b[4] or len(b[3]) != 1 or \
                b[3][0] != a[5][1][0] or "out" in a[4] or "activation" in a[4] or b[5][1] in escaping:
            continue
        y = a[5][1][0][1]
        if y in escaping:  # a returned array must not be a buffer the next replay overwrites
            continue
        plan[j] = (j + 1, uses.get(y, 0) > 1)
    return plan


def _plan_relu_bn_backward(tape, escaping, uses):
    """{index of a batch_norm_backward: index of the relu_backward right before it whose output is its
    grad_out and is read by nothing else}: the pair runs as one batch_norm_backward(relu_output=...)."""
    plan = {}
    for j, a, b in _kernel_pairs(tape, "relu_backward", "batch_norm_backward"):
        if a[5][0] != "s" or a[4] or len(a[3]) != 2 or not b[3] or b[3][0] != a[5] or "relu_output" in b[4] or \
                "out" in b[4] or a[5][1] in escaping or uses.get(a[5][1], 0) != 1:
            continue
        plan[j + 1] = j
    return plan


class _Tape:
    """One finished recording: ops, inputs, what was returned, and the persistent arrays it reads."""

    def __init__(self, rec, input_slots, result_spec):
        self.ops = rec.ops
        self.aliases = rec.aliases
        self.input_slots = input_slots
        self.result_spec = result_spec
        self.leaves = list(rec.leaves.values())
        self.slot_objs = rec.slot_objs
        self.resolved = []
        self.untrusted = False
        for ref, snap in rec.unknown:
            obj = ref()
            if obj is not None:
                self.resolved.append(("p", obj))          # still alive after the step: a persistent array
            else:
                self.resolved.append(("c", snap))         # made during the step and dropped: a constant
                self.untrusted = True

    def build(self, slot_objs, fuse=True):
        """Generate the straight-line replay function. Kernels that take `out=` write into the arrays the
        capture produced (kept as the step's buffers), except the arrays the step returns. With fuse, the
        pairs of _plan_relu_epilogues and _plan_cross_entropy run as one kernel call each."""
        ns = {"_Stale": _Stale, "_view": _view}
        lines = []
        counter = [0]
        escaping = _escaping(self)
        fixed = {}   # slot -> name of its buffer
        uses = _input_uses(self)
        epilogues = _plan_relu_epilogues(self, escaping) if fuse else {}
        ce_pairs = _plan_cross_entropy(self, escaping) if fuse else {}
        bn_relu = _plan_bn_relu(self, escaping, uses) if fuse else {}
        relu_bn = _plan_relu_bn_backward(self, escaping, uses) if fuse else {}
        dropped = set(epilogues.values()) | set(ce_pairs.values()) | {r for r, _ in bn_relu.values()} | \
            set(relu_bn.values())
        self.fused = {"relu in linear_forward": len(epilogues),
                      "cross-entropy forward+backward": len(ce_pairs),
                      "relu in batch_norm forward": len(bn_relu),
                      "relu in batch_norm backward": len(relu_bn)}

        def const(v):
            name = f"C{counter[0]}"
            counter[0] += 1
            ns[name] = v
            return name

        def expr(s):
            kind = s[0]
            if kind == "s":
                return fixed.get(s[1], f"s{s[1]}")
            if kind == "v":
                if s[1] in fixed:
                    return const(_view(slot_objs[s[1]], s[2], s[3], s[4], s[5]))
                return f"_view(s{s[1]}, {const(s[2])}, {const(s[3])}, {s[4]}, {const(s[5])})"
            if kind == "u":
                return const(self.resolved[s[1]][1])
            if kind == "c":
                return const(s[1])
            if kind == "t":
                inner = ", ".join(expr(x) for x in s[1])
                return f"({inner},)" if s[1] else "()"
            if kind == "l":
                return "[" + ", ".join(expr(x) for x in s[1]) + "]"
            if kind == "d":
                return "{" + ", ".join(f"{k!r}: {expr(x)}" for k, x in s[1].items()) + "}"
            raise AssertionError(s)

        def bind(target, s):
            if s[0] == "s":
                lines.append(f"    s{s[1]} = {target}")
            elif s[0] == "t":
                for j, x in enumerate(s[1]):
                    if x[0] != "x":
                        bind(f"{target}[{j}]", x)

        def bind_after_first(target, out):  # a result tuple's items after the first, which a buffer holds
            for i, x in enumerate(out[1][1:], 1):
                bind(f"{target}[{i}]", x)

        params = ", ".join(f"s{i}" for i in self.input_slots)
        guards = [f"{const(t)}.data is not {const(arr)}" for t, arr in self.leaves]
        if guards:
            lines.append("    if " + " or ".join(guards) + ":")
            lines.append("        raise _Stale")
        for j, op in enumerate(self.ops):
            if j in dropped:
                continue
            if j in epilogues:  # linear_forward + relu_forward as one kernel call, into both buffers
                _, name, fn, a, k, out = op
                hout = self.ops[epilogues[j]][5]
                call = ", ".join([expr(x) for x in a] + [f"{key}={expr(x)}" for key, x in k.items()])
                fixed[out[1]] = const(slot_objs[out[1]])
                fixed[hout[1]] = const(slot_objs[hout[1]])
                lines.append(f"    {const(fn)}({call}, out={fixed[out[1]]}, activation='relu', "
                             f"activation_out={fixed[hout[1]]})")
                continue
            if j in ce_pairs:  # cross_entropy_forward + backward as one cross_entropy_fused call
                f = self.ops[ce_pairs[j]]
                fa, fk, (loss_s, lse_s) = f[3], f[4], f[5][1]
                fn = getattr(sys.modules[f[2].__module__], "cross_entropy_fused")
                call = ", ".join([expr(fa[0]), expr(fa[1]), expr(op[3][0])] + [expr(x) for x in fa[2:]] +
                                 [f"{key}={expr(x)}" for key, x in fk.items()])
                bufs = []
                for slot in (lse_s[1], op[5][1]):
                    if slot in escaping:
                        bufs.append("None")
                    else:
                        fixed[slot] = const(slot_objs[slot])
                        bufs.append(fixed[slot])
                lines.append(f"    t = {const(fn)}({call}, out=(None, {bufs[0]}, {bufs[1]}))")
                lines.append(f"    s{loss_s[1]} = t[0]")
                if lse_s[1] in escaping:
                    lines.append(f"    s{lse_s[1]} = t[1]")
                if op[5][1] in escaping:
                    lines.append(f"    s{op[5][1]} = t[2]")
                continue
            if j in bn_relu:  # batch_norm_forward + relu_forward as one kernel call
                _, name, fn, a, k, out = op
                r_out = self.ops[bn_relu[j][0]][5]
                call = ", ".join([expr(x) for x in a] + [f"{key}={expr(x)}" for key, x in k.items()])
                fixed[r_out[1]] = const(slot_objs[r_out[1]])
                y_slot = out[1][0][1]
                if bn_relu[j][1]:
                    fixed[y_slot] = const(slot_objs[y_slot])
                    call += f", out={fixed[y_slot]}"
                lines.append(f"    t = {const(fn)}({call}, activation='relu', activation_out={fixed[r_out[1]]})")
                bind_after_first("t", out)
                continue
            if op[0] == "k":
                _, name, fn, a, k, out = op
                if j in relu_bn:  # relu_backward + batch_norm_backward as one kernel call
                    rb = self.ops[relu_bn[j]]
                    a = (rb[3][0],) + tuple(a[1:])
                    k = dict(k, relu_output=rb[3][1])
                call = ", ".join([expr(x) for x in a] + [f"{key}={expr(x)}" for key, x in k.items()])
                form = _OUT_KERNELS.get(name)
                outs = set()
                _slots_of(out, outs)
                if form is not None and "out" not in k and outs and not outs & escaping:
                    bufs = [slot_objs[x[1]] if x[0] == "s" else None for x in (out[1] if out[0] == "t" else (out,))]
                    if form == "first" and out[0] == "t" and out[1] and out[1][0][0] == "s":
                        y_slot = out[1][0][1]
                        fixed[y_slot] = const(slot_objs[y_slot])
                        lines.append(f"    t = {const(fn)}({call}, out={fixed[y_slot]})")
                        bind_after_first("t", out)
                        continue
                    if form == "tuple" and out[0] == "t" or form == "single" and out[0] == "s":
                        for x in (out[1] if out[0] == "t" else (out,)):
                            if x[0] == "s":
                                fixed[x[1]] = const(slot_objs[x[1]])
                        arg = const(tuple(bufs) if form == "tuple" else bufs[0])
                        lines.append(f"    {const(fn)}({call}, out={arg})")
                        continue
                if out[0] == "s":
                    lines.append(f"    s{out[1]} = {const(fn)}({call})")
                elif out[0] == "t":
                    lines.append(f"    t = {const(fn)}({call})")
                    bind("t", out)
                else:
                    lines.append(f"    {const(fn)}({call})")
            elif op[0] == "fwd":
                _, cls, a, k, out, c, needs = op
                call = ", ".join([f"x{c}"] + [expr(x) for x in a] + [f"{key}={expr(x)}" for key, x in k.items()])
                cname = const(cls)
                lines.append(f"    x{c} = {cname}.__new__({cname})")
                lines.append(f"    x{c}.needs_input_grad = {const(needs)}")
                if out[0] == "s":
                    lines.append(f"    s{out[1]} = {cname}.forward({call})")
                else:
                    lines.append(f"    t = {cname}.forward({call})")
                    bind("t", out)
            elif op[0] == "bwd":
                _, cls, c, g, out = op
                lines.append(f"    t = {const(cls)}.backward(x{c}, {expr(g)})")
                if out[0] == "s":
                    lines.append(f"    s{out[1]} = t")
                else:
                    bind("t", out)
            elif op[0] == "py":
                _, fn, args, kwargs = op
                lines.append(f"    {const(fn)}(*{const(args)}, **{const(kwargs)})")
            else:
                _, t, s = op
                lines.append(f"    {const(t)}.grad = {expr(s)}")
        lines.append(f"    return {expr(self.result_spec) if self.result_spec[0] != 'n' else 'None'}")
        src = f"def replay({params}):\n" + "\n".join(lines) + "\n"
        exec(_builtin_compile(src, "<fastbp captured step>", "exec"), ns)  # noqa: S102 (generated from the tape)
        self.source = src
        return ns["replay"]


_builtin_compile = compile  # the module defines its own `compile` below


# kernels with an `out=` parameter: "single" array, a "tuple" matching the result tuple, or the "first" array
# of the result tuple (the others are small and allocated per call)
_OUT_KERNELS = {"linear_forward": "single", "linear_backward": "tuple", "relu_forward": "single",
                "relu_backward": "single", "sigmoid_forward": "single", "sigmoid_backward": "single",
                "tanh_forward": "single", "tanh_backward": "single", "cross_entropy_backward": "single",
                "conv2d_forward": "single", "conv2d_backward": "tuple", "max_pool2d_forward": "tuple",
                "max_pool2d_backward": "single", "batch_norm_forward": "first", "batch_norm_backward": "tuple"}


def _slots_of(spec, acc):
    if spec[0] in ("s", "v"):
        acc.add(spec[1])
    elif spec[0] in ("t", "l"):
        for x in spec[1]:
            _slots_of(x, acc)
    elif spec[0] == "d":
        for x in spec[1].values():
            _slots_of(x, acc)


def _view(base, shape, strides, offset, dtype):
    return np.ndarray(shape, dtype, buffer=base, offset=offset, strides=strides)


def _result_spec(rec, out):
    """How to rebuild the step's return value: tensors (from slots), tuples/lists of them, or None."""
    if out is None:
        return ("n", None), None
    if isinstance(out, Tensor):
        s = rec.spec(out.data)
        if s[0] not in ("s", "v"):
            raise _Unsupported("the step returned a tensor not computed by a kernel")
        return s, ("T",)
    if isinstance(out, (tuple, list)):
        parts = [_result_spec(rec, o) for o in out]
        return ("t", tuple(p[0] for p in parts)), (type(out), tuple(p[1] for p in parts))
    raise _Unsupported(f"the step returned a {type(out).__name__}; return tensors (or a tuple of them) or None")


def _rebuild(shape, value):
    if shape is None:
        return None
    if shape[0] == "T":
        t = Tensor.__new__(Tensor)
        t.data = value
        t.grad = None
        t.requires_grad = False
        t._node = None
        return t
    return shape[0](_rebuild(s, v) for s, v in zip(shape[1], value))


class _Entry:
    __slots__ = ("state", "tape", "replay", "result_shape", "reason", "inputs0")

    def __init__(self):
        self.state = "new"       # new -> (pending ->) ready, or eager
        self.tape = self.replay = self.result_shape = self.reason = self.inputs0 = None


class CapturedStep:
    """What fastbp.compile returns; call it like the function. See the module docstring."""

    def __init__(self, fn, disable=False, cache_size=8, warn=True, fuse=True):
        if not callable(fn):
            raise TypeError(f"fastbp.compile expects a callable, got {type(fn).__name__}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        self.fn = fn
        self.disable = bool(disable)
        self.cache_size = int(cache_size)
        self.warn = warn
        self.fuse = bool(fuse)
        self._cache = collections.OrderedDict()
        functools.update_wrapper(self, fn)

    def reset(self):
        """Forget every capture (call after changing Python state the step reads, e.g. model.train()/eval())."""
        self._cache.clear()

    def captures(self):
        """{signature: state} of the cached captures ('ready', 'pending', 'eager: reason')."""
        return {k: (e.state if e.state != "eager" else f"eager: {e.reason}") for k, e in self._cache.items()}

    def fusions(self):
        """Per ready capture, how many of each fusion its replay applies (see compile's fuse=)."""
        return [dict(e.tape.fused) for e in self._cache.values() if e.state == "ready"]

    def replay_source(self):
        """The generated replay code of each ready capture (for debugging)."""
        return [e.tape.source for e in self._cache.values() if e.state == "ready"]

    def __call__(self, *args, **kwargs):
        if self.disable or not _enabled:
            return self.fn(*args, **kwargs)
        try:
            key, arrays = _flatten_args(args, kwargs)
        except TypeError:
            return self.fn(*args, **kwargs)  # unhashable non-tensor arguments: nothing to key a capture on
        entry = self._cache.get(key)
        if entry is None:
            entry = self._cache[key] = _Entry()
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        if entry.state == "ready":
            # under fastbp's block cache, as eager ops run (fastbp.memory): the arrays that kernels and
            # whole-recorded ops still allocate are reused instead of page-faulted in at every replay
            previous = _pool_enter() if _pool_enter is not None else None
            try:
                return _rebuild(entry.result_shape, entry.replay(*arrays))
            except _Stale:
                entry.state = "new"
            finally:
                if _pool_enter is not None:
                    _pool_exit(previous)
        if entry.state == "eager":
            return self.fn(*args, **kwargs)
        if entry.state == "pending" and all(a is b or np.array_equal(a, b) for a, b in zip(arrays, entry.inputs0)):
            return self.fn(*args, **kwargs)  # the check capture needs different input values
        return self._capture(entry, args, kwargs, arrays)

    def _give_up(self, entry, reason):
        entry.state, entry.reason = "eager", reason
        if self.warn:
            warnings.warn(f"fastbp.compile: {getattr(self.fn, '__name__', 'step')} runs eagerly: {reason}",
                          CaptureWarning, stacklevel=3)

    def _capture(self, entry, args, kwargs, arrays):
        global _active
        with _lock:
            if _active is not None:
                return self.fn(*args, **kwargs)  # a captured step called inside another capture: plain call
            rec = _Recorder()
            input_slots = [rec.new_slot(a) if id(a) not in rec.slots else rec.slots[id(a)] for a in arrays]
            if len(set(input_slots)) != len(input_slots):
                input_slots = None
            _active = rec
            try:
                with _Patches():
                    out = self.fn(*args, **kwargs)
                    try:
                        result = _result_spec(rec, out) if rec.problem is None else None
                    except _Unsupported as exc:
                        rec.problem = str(exc)
            finally:
                _active = None
        if input_slots is None:
            rec.problem = rec.problem or "the same array was passed as two arguments"
        if rec.problem is not None:
            self._give_up(entry, rec.problem)
            return out
        result_spec, shape = result
        del result
        out_keep = out
        gc.collect()
        tape = _Tape(rec, input_slots, result_spec)
        del rec
        if entry.state == "pending":
            if not _same_structure(entry.tape, tape):
                self._give_up(entry, "two captures with different input values recorded different kernel "
                                     "sequences or constants (Python control flow or values depend on the data)")
                return out_keep
        elif tape.untrusted:
            # constants made during the step: confirm on a call with different input values that they
            # do not depend on the data before replaying
            entry.state, entry.tape = "pending", tape
            entry.inputs0 = [np.array(a, copy=True) for a in arrays]
            return out_keep
        try:
            entry.replay = tape.build(tape.slot_objs, self.fuse)
        except Exception as exc:  # noqa: BLE001
            self._give_up(entry, f"could not build the replay ({exc})")
            return out_keep
        entry.tape, entry.result_shape, entry.state, entry.inputs0 = tape, shape, "ready", None
        return out_keep


def compile(fn=None, *, disable=False, cache_size=8, warn=True, fuse=True):  # noqa: A001 (torch.compile's name)
    """Capture a training step: `step = fastbp.compile(step_fn)` or `@fastbp.compile` (also with keywords:
    `@fastbp.compile(disable=True)`). The first call per argument signature (shapes, dtypes, the values of
    non-tensor arguments) runs eagerly and records; later calls replay. cache_size signatures are kept (least
    recently used dropped). disable=True (or set_compile_enabled(False), or FASTBP_COMPILE=0) runs every call
    eagerly. warn=False silences the CaptureWarning of a step that cannot be captured.

    fuse=True (default) lets the replay combine kernels where that keeps every bit of the eager step: a
    Linear followed by a ReLU runs as one linear_forward(activation="relu") (the ReLU on each block of the
    product as BLAS writes it), and cross-entropy's forward and backward as one cross_entropy_fused call
    when the loss is what backward() starts from. fuse=False replays kernel by kernel."""
    if fn is None:
        return lambda f: CapturedStep(f, disable=disable, cache_size=cache_size, warn=warn, fuse=fuse)
    return CapturedStep(fn, disable=disable, cache_size=cache_size, warn=warn, fuse=fuse)


capture = compile
