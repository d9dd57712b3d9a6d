"""Data-parallel training over MPI: the same script runs as N processes under `mpiexec`, each on its own
shard of the data, with the gradients averaged across processes after every backward pass.

    import fastbp.distributed as dist
    dist.init()                                       # MPI.COMM_WORLD, or init(comm) for another communicator
    model = dist.DistributedDataParallel(lenet5())    # rank 0's parameters and buffers go to every rank
    sampler = dist.DistributedSampler(len(X), shuffle=True, seed=0)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)                      # same new order on every rank, disjoint shards
        idx = np.fromiter(sampler, dtype=np.int64)
        for i in range(0, len(idx), batch):
            ...  loss.backward()  ...                 # gradients arrive averaged over all ranks
            opt.step()
    dist.print0(...)                                  # rank 0 only

MPI is the engine (mpi4py over Open MPI, MPICH or a vendor MPI); this is the only fastbp module that imports
mpi4py, and only when `init()` (or something that needs MPI) runs: `import fastbp` never loads it.

Design:
- Every collective is started non-blocking and completed by `_wait`, which polls it against the timeout given
  to `init()`. A rank that stops calling collectives (it crashed without taking the job down, or it ran out of
  batches before the others) makes the others abort the whole job with a message naming the wait, never hang.
- `init()` installs a `sys.excepthook` that prints the traceback (prefixed with the rank) and calls
  `MPI_Abort`: an exception on one rank ends every rank at once, with a non-zero exit status.
- `DistributedDataParallel` packs gradients into contiguous buckets of at most `bucket_cap_mb` (parameters in
  reverse registration order, which is about the order in which their gradients become final during the
  backward pass) and averages each bucket with one `Iallreduce`. With `overlap=True` a bucket starts as soon
  as all its gradients are final (a post-accumulate-grad hook on each parameter), while the backward pass goes
  on with earlier layers; buckets always start in the same order on every rank (a bucket waits for the ones
  before it), as MPI requires. Each bucket carries one extra element per parameter counting the ranks on which
  that parameter received a gradient: a parameter unused on some ranks contributes zeros there, and one unused
  on every rank keeps `grad = None`, as in a single process.
"""
import contextlib
import hashlib
import io
import json
import math
import os
import sys
import time
import weakref

import numpy as np


from .nn.module import Module
from .tensor import Tensor, _add_backward_end_callback, _current_backward_pass

__all__ = ["init", "init_process_group", "is_initialized", "is_available", "destroy_process_group", "get_rank",
           "get_world_size", "get_local_rank", "get_local_world_size", "threads_per_rank", "barrier",
           "all_reduce", "broadcast", "ReduceOp", "is_main_process", "print0", "check_same",
           "DistributedDataParallel", "DDP", "DistributedSampler", "save_checkpoint", "load_checkpoint"]

_INSTALL_HINT = ('fastbp.distributed needs mpi4py and an MPI library: pip install "fastbp[mpi]" '
                 '(mpi4py and the Open MPI wheel), or pip install mpi4py built against your system MPI')
_NOT_INIT = ("fastbp.distributed is not initialized: call fastbp.distributed.init() first "
             "(and start the script with mpiexec -n N python script.py)")


class _State:
    MPI = None          # the mpi4py.MPI module once init() ran
    base = None         # the communicator given to init()
    comm = None         # our duplicate of it
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    timeout = None      # seconds a collective may wait for the other ranks
    prev_excepthook = None


def _load_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return MPI


def is_available():
    """Whether mpi4py (and so an MPI library) can be imported. Does not initialize anything."""
    import importlib.util
    try:
        return importlib.util.find_spec("mpi4py") is not None
    except (ImportError, ValueError):
        return False


def init(comm=None, *, timeout=1800.0, abort_on_exception=True):
    """Join the process group: `comm` (an mpi4py communicator) or `MPI.COMM_WORLD`.

    `timeout` (seconds or a timedelta): how long any collective of this module waits for the other ranks before it aborts
    the job with a message (a rank that died or ran out of batches; never a hang). PyTorch's default, 30 min.
    `abort_on_exception`: install a `sys.excepthook` that prints an uncaught exception with its rank and
    calls `MPI_Abort`, so the whole job exits non-zero at once instead of the other ranks waiting.
    Calling init() again with the same communicator is a no-op; with another one it raises."""
    if hasattr(timeout, "total_seconds"):  # a datetime.timedelta, as torch.distributed takes
        timeout = timeout.total_seconds()
    if timeout is None or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    MPI = _load_mpi()
    if comm is None:
        comm = MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise TypeError(f"init() expects an mpi4py intra-communicator (e.g. MPI.COMM_WORLD), got {comm!r}")
    if _State.comm is not None:
        if MPI.Comm.Compare(_State.base, comm) == MPI.IDENT:
            _State.timeout = float(timeout)
            return
        raise RuntimeError("fastbp.distributed is already initialized with another communicator; "
                           "call destroy_process_group() first")
    _State.MPI = MPI
    _State.base = comm
    _State.comm = comm.Dup()  # our messages never meet the user's on the same communicator
    _State.rank = _State.comm.Get_rank()
    _State.size = _State.comm.Get_size()
    _State.timeout = float(timeout)
    node = _State.comm.Split_type(MPI.COMM_TYPE_SHARED, key=_State.rank)  # the ranks on this machine
    _State.local_rank, _State.local_size = node.Get_rank(), node.Get_size()
    node.Free()
    if abort_on_exception and _State.prev_excepthook is None:
        _State.prev_excepthook = sys.excepthook
        sys.excepthook = _abort_excepthook


init_process_group = init


def destroy_process_group():
    """Leave the process group (frees our communicator, restores sys.excepthook). MPI itself stays
    initialized until the interpreter exits (mpi4py finalizes it then)."""
    if _State.comm is None:
        return
    if _State.prev_excepthook is not None and sys.excepthook is _abort_excepthook:
        sys.excepthook = _State.prev_excepthook
    _State.prev_excepthook = None
    comm, _State.comm, _State.base = _State.comm, None, None
    _State.rank, _State.size, _State.local_rank, _State.local_size = 0, 1, 0, 1
    try:
        comm.Free()
    except Exception:  # pragma: no cover - MPI already finalized
        pass


def is_initialized():
    return _State.comm is not None


def _comm():
    if _State.comm is None:
        raise RuntimeError(_NOT_INIT)
    return _State.comm


def get_rank():
    _comm()
    return _State.rank


def get_world_size():
    _comm()
    return _State.size


def get_local_rank():
    """This rank's index among the ranks on the same machine."""
    _comm()
    return _State.local_rank


def get_local_world_size():
    """How many ranks run on this machine (they share its cores: see threads_per_rank)."""
    _comm()
    return _State.local_size


def threads_per_rank():
    """How many OpenMP/BLAS threads this rank should use so that threads x ranks do not oversubscribe the
    machine: the cores the launcher pinned this process to, if it pinned it (Open MPI pins each rank to one
    core by default for up to 2 ranks; `--map-by slot:PE=4` gives 4), else the machine's cores divided by
    the ranks on it (at least 1). Use `fastbp.set_num_threads(dist.threads_per_rank())` after init(),
    unless OMP_NUM_THREADS is set."""
    _comm()
    total = os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = total
    if allowed < total:
        return allowed
    return max(1, total // _State.local_size)


def is_main_process():
    """True on rank 0, and in a process that never called init() (a single-process run)."""
    return _State.comm is None or _State.rank == 0


def print0(*args, **kwargs):
    """print() on rank 0 only (and in a single-process run); flushes, so lines from mpiexec come in order."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def _abort_excepthook(exc_type, exc, tb):
    prefix = f"[fastbp.distributed rank {_State.rank}/{_State.size}] "
    try:
        sys.stderr.write(f"{prefix}uncaught {exc_type.__name__} on rank {_State.rank}; aborting the whole job\n")
        (_State.prev_excepthook or sys.__excepthook__)(exc_type, exc, tb)
        sys.stderr.flush()
        sys.stdout.flush()
    finally:
        if _State.comm is not None and _State.size > 1:
            _State.MPI.COMM_WORLD.Abort(1)


def _abort(message):
    sys.stderr.write(f"[fastbp.distributed rank {_State.rank}/{_State.size}] {message}; aborting the job\n")
    sys.stderr.flush()
    sys.stdout.flush()
    _State.MPI.COMM_WORLD.Abort(1)


def _wait(req, what):
    """Complete a non-blocking request, aborting the job if the other ranks do not join within the timeout.

    Spins on Test for the first few hundred microseconds (the common case: the others are right there),
    then sleeps between tests, so a rank that waits long does not take a core from one that computes."""
    if req.Test():
        return
    start = time.perf_counter()
    deadline = start + _State.timeout
    nap = 0.0
    while not req.Test():
        now = time.perf_counter()
        if now - start > 2e-4:
            if now > deadline:
                _abort(f"waited {_State.timeout:g} s for the other ranks in {what}: a rank has stopped "
                       f"(crashed, or ran out of batches before the others: give every rank the same number "
                       f"of steps, e.g. with DistributedSampler)")
            nap = min(1e-3, nap + 2e-5)
            time.sleep(nap)


# ----- collectives on arrays and numbers -----------------------------------------------------------------
class ReduceOp:
    SUM = "sum"
    AVG = "avg"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"


def _mpi_op(op):
    name = str(getattr(op, "value", op)).lower()
    MPI = _State.MPI
    table = {"sum": MPI.SUM, "avg": MPI.SUM, "mean": MPI.SUM, "product": MPI.PROD, "prod": MPI.PROD,
             "min": MPI.MIN, "max": MPI.MAX}
    if name not in table:
        raise ValueError(f"unknown reduce op {op!r}; use one of sum, avg, product, min, max")
    return table[name], name in ("avg", "mean")


def all_reduce(value, op=ReduceOp.SUM):
    """Reduce across ranks; every rank gets the result.

    A Tensor or ndarray is reduced in place and returned (as torch.distributed.all_reduce); a Python or NumPy
    number returns the reduced number (handy for a loss or an accuracy: `all_reduce(correct)`).
    op: "sum", "avg" (sum / world size), "product", "min", "max"."""
    comm = _comm()
    mop, avg = _mpi_op(op)
    if isinstance(value, Tensor):
        all_reduce(value.data, op)
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiub":
            raise TypeError(f"all_reduce: cannot reduce an array of dtype {value.dtype}")
        if avg and value.dtype.kind != "f":
            raise TypeError(f"all_reduce: op avg needs a floating-point array, got {value.dtype}")
        if not value.flags.c_contiguous or not value.flags.writeable:
            raise ValueError("all_reduce reduces in place: pass a C-contiguous writable array "
                             "(np.ascontiguousarray(x)) or a number")
        if _State.size > 1 and value.size:
            _wait(comm.Iallreduce(_State.MPI.IN_PLACE, value, op=mop), "all_reduce")
        if avg:
            np.divide(value, _State.size, out=value)
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("all_reduce: pass a number or an array, not a bool (use int(flag))")
    if isinstance(value, (int, np.integer)) and not avg:
        buf = np.array([value], dtype=np.int64)
    elif isinstance(value, (int, float, np.integer, np.floating)):
        buf = np.array([value], dtype=np.float64)
    else:
        raise TypeError(f"all_reduce: expected a Tensor, an ndarray or a number, got {type(value).__name__}")
    all_reduce(buf, op)
    return buf[0].item()


def broadcast(value, src=0):
    """Rank `src`'s values into every rank's `value` (a Tensor or a C-contiguous ndarray), in place."""
    comm = _comm()
    if not 0 <= int(src) < _State.size:
        raise ValueError(f"broadcast: src must be a rank in [0, {_State.size - 1}], got {src}")
    arr = value.data if isinstance(value, Tensor) else value
    if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError("broadcast writes in place: pass a Tensor or a C-contiguous writable ndarray")
    if _State.size > 1 and arr.size:
        _wait(comm.Ibcast(arr, root=int(src)), "broadcast")
    return value


def barrier():
    """Wait until every rank reaches this point (aborts the job after the init() timeout instead of hanging)."""
    comm = _comm()
    if _State.size > 1:
        _wait(comm.Ibarrier(), "barrier")


def _allgather_i64(values, comm=None):
    """Every rank's int64 vector (same length on all ranks), as an array of shape (world, len)."""
    comm = comm or _comm()
    size = comm.Get_size()
    mine = np.ascontiguousarray(values, dtype=np.int64)
    out = np.empty((size, mine.size), dtype=np.int64)
    if size > 1:
        _wait(comm.Iallgather(mine, out), "allgather")
    else:
        out[0] = mine
    return out


def _digest(text):
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)


def check_same(value, what="value"):
    """Raise ValueError on every rank unless `value` (an int, or anything with a stable repr) is the same on
    all ranks. E.g. `check_same(len(loader), "batches per epoch")` before a training loop: ranks that take
    different numbers of steps would otherwise wait for each other until the timeout."""
    _comm()
    key = int(value) if isinstance(value, (int, np.integer)) else _digest(repr(value))
    got = _allgather_i64([key])[:, 0]
    if np.all(got == got[0]):
        return value
    if isinstance(value, (int, np.integer)):
        detail = ", ".join(f"rank {r}: {v}" for r, v in enumerate(got.tolist()))
    else:
        detail = "values differ: " + ", ".join(f"rank {r}" for r in range(_State.size) if got[r] != got[0])
    raise ValueError(f"{what} differs across ranks ({detail})")


def _gather_texts(text, comm=None):
    """Every rank's string (only after a cheap check found they differ: used for error messages)."""
    comm = comm or _comm()
    size = comm.Get_size()
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    sizes = _allgather_i64([data.size], comm)[:, 0]
    out = np.zeros(int(sizes.max()) * size, dtype=np.uint8)
    buf = np.zeros(int(sizes.max()), dtype=np.uint8)
    buf[:data.size] = data
    _wait(comm.Iallgather(buf, out), "allgather")
    out = out.reshape(size, -1)
    return [bytes(out[r, :sizes[r]]).decode() for r in range(size)]


# ----- DistributedDataParallel --------------------------------------------------------------------------
def _named_buffers(module):
    """(name, array-or-Tensor) for the module's buffers, when the module has a buffer API."""
    fn = getattr(module, "named_buffers", None)
    return list(fn()) if callable(fn) else []


def _buffer_array(b):
    arr = b.data if isinstance(b, Tensor) else b
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"buffer of type {type(b).__name__} cannot be broadcast (expected an ndarray or Tensor)")
    return arr


class _Bucket:
    __slots__ = ("index", "dtype", "params", "offsets", "numel", "flat", "ready", "req", "launched")

    def __init__(self, index, dtype, params):
        self.index = index
        self.dtype = dtype
        self.params = params
        self.offsets = []
        off = 0
        for p in params:
            self.offsets.append(off)
            off += p.data.size
        self.numel = off
        # gradients, then one "used on this rank" flag per parameter
        self.flat = np.zeros(off + len(params), dtype=dtype)
        self.ready = 0
        self.req = None
        self.launched = False


class DistributedDataParallel(Module):
    """Wrap a model for data-parallel training (torch.nn.parallel.DistributedDataParallel's role and names).

    At wrap time every rank checks that all ranks hold the same parameters (names, shapes, dtypes; a mismatch
    raises ValueError on every rank naming the first difference) and receives rank 0's parameters and
    buffers. After each `backward()` every parameter's `.grad` holds the average over ranks of the local
    gradients. Calls go to the wrapped model (`ddp.module`); `state_dict()` keys carry PyTorch's "module."
    prefix: save `ddp.module.state_dict()` for a checkpoint that loads into an unwrapped model.

    bucket_cap_mb: gradients are averaged in contiguous buckets of at most this many MiB (at least one
        parameter each): larger buckets mean fewer, more efficient calls; smaller ones start earlier and
        overlap more of the backward pass. PyTorch's default, 25.
    overlap: start each bucket's reduction during the backward pass as soon as its gradients are final
        (True), or reduce all buckets after the backward pass (False). Same results either way.
    broadcast_buffers: also send rank 0's buffers to every rank before each forward pass in training mode
        (PyTorch's default; nothing to do for models without buffers).
    comm: reduce over this mpi4py communicator instead of the one given to init() (its Dup is used).

    `stats` counts the allreduce calls and bytes and the seconds spent waiting for them after backward
    passes (bench/bench_ddp.py reads it)."""

    def __init__(self, module, bucket_cap_mb=25.0, overlap=True, broadcast_buffers=True, comm=None):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel wraps a fastbp.nn.Module, got {type(module).__name__}")
        base = _comm()
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        self.module = module
        object.__setattr__(self, "_ddp_comm", base if comm is None else comm.Dup())
        object.__setattr__(self, "world_size", self._ddp_comm.Get_size())
        object.__setattr__(self, "rank", self._ddp_comm.Get_rank())
        object.__setattr__(self, "bucket_cap_mb", float(bucket_cap_mb))
        object.__setattr__(self, "overlap", bool(overlap))
        object.__setattr__(self, "broadcast_buffers", bool(broadcast_buffers))
        object.__setattr__(self, "require_backward_grad_sync", True)
        named = list(module.named_parameters())  # frozen ones too: every rank must start from rank 0's
        buffers = _named_buffers(module)
        self._check_models_match(named, buffers)
        object.__setattr__(self, "_params", [p for _, p in named if p.requires_grad])
        object.__setattr__(self, "_buckets", self._make_buckets())
        object.__setattr__(self, "_bucket_of", {id(p): b for b in self._buckets for p in b.params})
        object.__setattr__(self, "_pass", None)
        object.__setattr__(self, "_next_launch", 0)
        object.__setattr__(self, "_pending", [])
        object.__setattr__(self, "_seen", set())
        object.__setattr__(self, "stats", {"allreduce_calls": 0, "allreduce_bytes": 0, "wait_seconds": 0.0})
        self._broadcast_arrays([p.data for _, p in named] + [_buffer_array(b) for _, b in buffers])
        object.__setattr__(self, "_handles", [])
        object.__setattr__(self, "_remove_end", None)
        if self.world_size > 1:
            self._install_hooks()

    # ----- wrap time ------------------------------------------------------------------------------
    def _check_models_match(self, params, buffers):
        lines = [f"bucket_cap_mb={self.bucket_cap_mb!r}"]
        lines += [f"parameter {n}: shape {tuple(p.data.shape)}, {p.data.dtype}"
                  + ("" if p.requires_grad else ", frozen") for n, p in params]
        lines += [f"buffer {n}: shape {tuple(_buffer_array(b).shape)}, {_buffer_array(b).dtype}" for n, b in buffers]
        text = "\n".join(lines)
        if self.world_size == 1:
            return
        digests = _allgather_i64([_digest(text)], self._ddp_comm)[:, 0]
        if np.all(digests == digests[0]):
            return
        texts = _gather_texts(text, self._ddp_comm)
        odd = next(r for r in range(self.world_size) if digests[r] != digests[0])
        a, b = texts[0].split("\n"), texts[odd].split("\n")
        k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        first = a[k] if k < len(a) else "(nothing)"
        other = b[k] if k < len(b) else "(nothing)"
        raise ValueError(f"DistributedDataParallel: the model differs across ranks (checked at wrap time); "
                         f"rank 0 has {first!r} where rank {odd} has {other!r} "
                         f"({len(params)} parameters on this rank, rank {self.rank})")

    def _broadcast_arrays(self, arrays):
        if self.world_size == 1 or not arrays:
            return
        by_dtype = {}
        for a in arrays:
            by_dtype.setdefault(a.dtype.str, []).append(a)
        for key in sorted(by_dtype):  # same order on every rank
            group = by_dtype[key]
            flat = np.concatenate([a.reshape(-1) for a in group]) if len(group) > 1 else group[0].reshape(-1).copy()
            _wait(self._ddp_comm.Ibcast(flat, root=0), "DistributedDataParallel's broadcast from rank 0")
            off = 0
            for a in group:
                a[...] = flat[off:off + a.size].reshape(a.shape)
                off += a.size

    def _make_buckets(self):
        cap = self.bucket_cap_mb * (1 << 20)
        buckets, current, size, dtype = [], [], 0, None
        for p in reversed(self._params):  # roughly the order in which gradients become final
            nbytes = p.data.nbytes
            if current and (p.data.dtype != dtype or size + nbytes > cap):
                buckets.append(_Bucket(len(buckets), dtype, current))
                current, size = [], 0
            current.append(p)
            dtype = p.data.dtype
            size += nbytes
        if current:
            buckets.append(_Bucket(len(buckets), dtype, current))
        return buckets

    def _install_hooks(self):
        ref = weakref.ref(self)

        def on_grad(p):
            s = ref()
            if s is not None:
                s._grad_ready(p)

        def on_end():
            s = ref()
            if s is not None:
                s._backward_done()

        handles = [p.register_post_accumulate_grad_hook(on_grad) for p in self._params]
        remove_end = _add_backward_end_callback(on_end)
        object.__setattr__(self, "_handles", handles)
        object.__setattr__(self, "_remove_end", remove_end)
        weakref.finalize(self, _remove_hooks, handles, remove_end)

    # ----- forward --------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self.broadcast_buffers and self.training and self.world_size > 1:
            buffers = _named_buffers(self.module)
            if buffers:
                self._broadcast_arrays([_buffer_array(b) for _, b in buffers])
        return self.module(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside this block only accumulate local gradients (no communication); the first
        backward pass after it averages the accumulated gradients. For gradient accumulation."""
        prev = self.require_backward_grad_sync
        object.__setattr__(self, "require_backward_grad_sync", False)
        try:
            yield
        finally:
            object.__setattr__(self, "require_backward_grad_sync", prev)

    def extra_repr(self):
        return (f"world_size={self.world_size}, buckets={len(self._buckets)}, bucket_cap_mb={self.bucket_cap_mb:g}, "
                f"overlap={self.overlap}")

    # ----- the reduction --------------------------------------------------------------------------
    def _start_pass(self):
        if self._pending:
            # a previous pass stopped part-way (an exception the caller caught): its reductions must
            # complete before the buffers are reused; the other ranks started them too, or the wait
            # times out and aborts the job
            for b in self._pending:
                _wait(b.req, "the gradient allreduce of an interrupted backward pass")
            self._pending.clear()
        object.__setattr__(self, "_pass", _current_backward_pass())
        for b in self._buckets:
            b.ready = 0
            b.req = None
            b.launched = False
        self._seen.clear()
        object.__setattr__(self, "_next_launch", 0)
        self._pending.clear()

    def _grad_ready(self, p):
        if not self.require_backward_grad_sync:
            return
        if self._pass != _current_backward_pass():
            self._start_pass()
        if id(p) in self._seen:
            return
        self._seen.add(id(p))
        if not self.overlap:
            return
        b = self._bucket_of[id(p)]
        b.ready += 1
        if b.ready == len(b.params):
            # launch this bucket and any complete ones behind it, strictly in bucket order
            while self._next_launch < len(self._buckets):
                nb = self._buckets[self._next_launch]
                if nb.ready != len(nb.params):
                    break
                self._launch(nb)
        elif self._pending:
            # let MPI move the buckets in flight along (Open MPI progresses non-blocking collectives
            # only inside MPI calls)
            self._pending[-1].req.Test()

    def _launch(self, b):
        flat, n = b.flat, b.numel
        for k, (p, off) in enumerate(zip(b.params, b.offsets)):
            g = p.grad
            size = p.data.size
            if g is None:
                flat[off:off + size] = 0
                flat[n + k] = 0
            else:
                if p.data.dtype != b.dtype or p.data.size != size:
                    raise RuntimeError("DistributedDataParallel: a parameter's dtype or size changed after wrapping "
                                       f"({p.data.dtype}, {p.data.shape}; wrapped as {b.dtype}); convert the model "
                                       "(model.double(), ...) before wrapping it")
                flat[off:off + size] = g.reshape(-1)
                flat[n + k] = 1
        b.req = self._ddp_comm.Iallreduce(_State.MPI.IN_PLACE, flat, op=_State.MPI.SUM)
        b.launched = True
        self._pending.append(b)
        self.stats["allreduce_calls"] += 1
        self.stats["allreduce_bytes"] += flat.nbytes
        object.__setattr__(self, "_next_launch", b.index + 1)

    def _backward_done(self):
        if not self.require_backward_grad_sync:
            return
        if self._pass != _current_backward_pass():  # this pass gave none of the model's parameters a gradient
            return
        t0 = time.perf_counter()
        while self._next_launch < len(self._buckets):  # the rest, in order (unused parameters included)
            self._launch(self._buckets[self._next_launch])
        inv = self.world_size
        for b in self._pending:
            _wait(b.req, f"the gradient allreduce (bucket {b.index} of {len(self._buckets)})")
            flat, n = b.flat, b.numel
            np.divide(flat[:n], inv, out=flat[:n])
            for k, (p, off) in enumerate(zip(b.params, b.offsets)):
                if flat[n + k] == 0:  # unused on every rank: keep grad None, as a single process would
                    continue
                p.grad = flat[off:off + p.data.size].reshape(p.data.shape)
        self.stats["wait_seconds"] += time.perf_counter() - t0
        self._pending.clear()
        object.__setattr__(self, "_pass", None)


def _remove_hooks(handles, remove_end):
    for h in handles:
        h.remove()
    if remove_end is not None:
        remove_end()


DDP = DistributedDataParallel


# ----- DistributedSampler -------------------------------------------------------------------------------
class DistributedSampler:
    """Indices of this rank's shard of a data set (torch.utils.data.DistributedSampler's semantics).

    `dataset`: anything with len() (or the number of samples as an int). Each epoch the indices are shuffled
    (shuffle=True) with a generator seeded by `seed + epoch`, identically on every rank, then padded by
    repeating the first ones (drop_last=False) or trimmed (drop_last=True) to a multiple of num_replicas;
    rank r takes every num_replicas-th index starting at r. So every rank has the same len() (the same number
    of steps, which data-parallel training needs) and the shards are disjoint up to the padding. Call
    set_epoch(epoch) before each epoch for a new order. The order is NumPy's (default_rng), not torch's.

    Use it as `DataLoader(dataset, batch_size=..., sampler=sampler)`, or take `np.fromiter(sampler, np.int64)`
    and slice batches from it. num_replicas and rank default to the process group's (init() needed then)."""

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        if num_replicas is None:
            num_replicas = get_world_size()
        if rank is None:
            rank = get_rank()
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"Invalid rank {rank!r}, rank should be in the interval [0, {int(num_replicas) - 1}]")
        self.dataset = dataset
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        n = self._n = self._dataset_len()
        # drop_last: the tail that does not fill a round goes; otherwise the last round is padded
        self.num_samples = n // self.num_replicas if self.drop_last else math.ceil(n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def _dataset_len(self):
        if isinstance(self.dataset, (int, np.integer)) and not isinstance(self.dataset, bool):
            n = int(self.dataset)
        else:
            n = len(self.dataset)
        if n < 0:
            raise ValueError(f"the data set length must be >= 0, got {n}")
        return n

    def set_epoch(self, epoch):
        """Use `seed + epoch` for the next iteration's order (the same on every rank)."""
        self.epoch = int(epoch)

    def indices(self):
        """This rank's indices for the current epoch, as an int64 array."""
        n = self._dataset_len()
        if n != self._n:
            raise RuntimeError(f"the data set's length changed from {self._n} to {n} since the sampler was made")
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            order = np.arange(n)
        if self.drop_last:
            order = order[:self.total_size]
        elif self.total_size > n and n > 0:
            order = np.resize(order, self.total_size)  # repeats from the start, as PyTorch pads
        return order[self.rank:self.total_size:self.num_replicas].astype(np.int64, copy=False)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples

    def __repr__(self):
        return (f"DistributedSampler(len={self.num_samples}, num_replicas={self.num_replicas}, rank={self.rank}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last}, epoch={self.epoch})")


# ----- checkpoints ----------------------------------------------------------------------------------------
def _encode(obj, arrays):
    """A JSON-able tree for nested dicts/lists/tuples of numbers, strings and ndarrays (arrays stored apart)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "fiub":
            raise TypeError(f"checkpoint: cannot store an array of dtype {obj.dtype}")
        arrays[f"a{len(arrays)}"] = obj
        return {"__array__": f"a{len(arrays) - 1}"}
    if isinstance(obj, Tensor):
        return _encode(obj.data, arrays)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else {"__float__": repr(f)}
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, arrays) for v in obj]
        return items if isinstance(obj, list) else {"__tuple__": items}
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    raise TypeError(f"checkpoint: cannot store a value of type {type(obj).__name__}")


def _decode(obj, arrays):
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in obj["__dict__"]}
        raise ValueError("checkpoint: unknown entry in the file's structure")
    return obj


def _run_on_main(fn):
    """Run fn() on rank 0 only; every rank gets its result or raises its error (no rank left waiting)."""
    if _State.comm is None or _State.size == 1:
        return fn()
    result, error = None, None
    if _State.rank == 0:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = f"{type(exc).__name__}: {exc}"
    status = np.array([0 if error is None else 1], dtype=np.int64)
    _wait(_State.comm.Ibcast(status, root=0), "a rank-0 checkpoint operation")
    if status[0]:
        msg = _gather_from_main(error or "")
        if _State.rank == 0:
            raise RuntimeError(f"on rank 0: {msg}")
        raise RuntimeError(f"rank 0 failed: {msg}")
    return result


def _gather_from_main(text):
    data = np.frombuffer(text.encode(), dtype=np.uint8) if _State.rank == 0 else np.zeros(0, np.uint8)
    n = np.array([data.size], dtype=np.int64)
    _wait(_State.comm.Ibcast(n, root=0), "a broadcast from rank 0")
    buf = data.copy() if _State.rank == 0 else np.empty(int(n[0]), dtype=np.uint8)
    if n[0]:
        _wait(_State.comm.Ibcast(buf, root=0), "a broadcast from rank 0")
    return bytes(buf).decode()


def save_checkpoint(path, model, optimizer=None, scheduler=None, **extra):
    """Write the model's (and optionally the optimizer's and scheduler's) state to `path` from rank 0 only,
    atomically (a temporary file renamed into place), then let every rank go on. A failure on rank 0 raises
    on every rank. A DistributedDataParallel is saved as its inner model, so the file loads without MPI.

    The file is a NumPy .npz read without pickle: arrays plus a JSON description; loading it never runs code.
    `extra`: numbers, strings, arrays, lists and dicts of them (epoch, best score, ...)."""
    if isinstance(model, DistributedDataParallel):
        model = model.module

    def write():
        state = {"model": model.state_dict(), "extra": extra}
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        arrays = {}
        tree = _encode(state, arrays)
        arrays["__tree__"] = np.array(json.dumps(tree))
        directory = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    return _run_on_main(write)


def load_checkpoint(path, model, optimizer=None, scheduler=None):
    """Read a file written by save_checkpoint on rank 0, send it to every rank, and load it into `model`
    (and `optimizer`, `scheduler`) everywhere: the file need only exist on rank 0's machine. Returns the
    `extra` values saved with it."""
    if isinstance(model, DistributedDataParallel):
        model = model.module

    def read():
        with open(path, "rb") as f:
            return f.read()

    raw = _run_on_main(read)
    if _State.comm is not None and _State.size > 1:
        n = np.array([len(raw) if _State.rank == 0 else 0], dtype=np.int64)
        _wait(_State.comm.Ibcast(n, root=0), "load_checkpoint's broadcast")
        buf = np.frombuffer(raw, dtype=np.uint8).copy() if _State.rank == 0 else np.empty(int(n[0]), np.uint8)
        _wait(_State.comm.Ibcast(buf, root=0), "load_checkpoint's broadcast")
        raw = buf.tobytes()
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    state = _decode(json.loads(str(arrays.pop("__tree__"))), arrays)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        if "optimizer" not in state:
            raise KeyError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        if "scheduler" not in state:
            raise KeyError(f"{path} holds no scheduler state")
        scheduler.load_state_dict(state["scheduler"])
    return state.get("extra", {})
