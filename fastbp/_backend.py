"""The backend table: `compiled` (Cython kernels in fastbp._C) and `reference` (NumPy, fastbp.reference)
expose the same function names. Ops call `backend.current.<name>(...)`; nothing imports a kernel module
directly, so `set_backend("reference")` runs a whole model on NumPy.

If the compiled extension cannot be imported, importing fastbp fails loudly, unless the environment
variable FASTBP_BACKEND=reference asks for the NumPy backend on purpose. There is no silent fallback."""
import contextlib
import importlib
import os
import types

from . import reference as _reference

# Kernel families: csrc/<family>.pyx builds fastbp._C.<family>; fastbp/reference/<family>.py mirrors it.
FAMILIES = ("gemm", "activations", "losses", "optim", "conv", "pool")


def public_functions(module):
    """The kernels a module defines (public callables whose __module__ is the module itself)."""
    out = {}
    for name in dir(module):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        if callable(obj) and not isinstance(obj, type) and getattr(obj, "__module__", None) == module.__name__:
            out[name] = obj
    return out


def _namespace(name, modules):
    ns = types.SimpleNamespace()
    ns.name = name
    for mod in modules:
        for fname, fn in public_functions(mod).items():
            setattr(ns, fname, fn)
    return ns


_REBUILD_HINT = (
    "fastbp's compiled kernels (fastbp._C) could not be imported: {err}\n"
    "Rebuild them: `pip install .` from the source tree (or `python setup.py build_ext --inplace` for a "
    "development checkout). To run on the NumPy reference backend on purpose, set FASTBP_BACKEND=reference."
)

# A guest in its user's process: importing fastbp sets no environment variable and no thread count that
# other libraries read. (Earlier versions set OMP_WAIT_POLICY=PASSIVE and OPENBLAS_THREAD_TIMEOUT=4 here; the
# first slowed PyTorch's own OpenMP runtime, loaded later in the same process, by 2-3x.) Users who want idle
# OpenMP or OpenBLAS workers to sleep set those variables themselves before starting Python; `fastbp info`
# shows what is in effect. How fastbp keeps its OpenMP and BLAS threads from starving each other without
# them: see fastbp/_config.py (BLAS single-threaded inside our parallel regions, prange only on large work).
OPENBLAS_TIMEOUT_VARS = ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")

reference = _namespace("reference", [getattr(_reference, f) for f in FAMILIES])
compiled_modules = ()
try:
    compiled_modules = tuple(importlib.import_module(f"fastbp._C.{f}") for f in FAMILIES)
    compiled = _namespace("compiled", compiled_modules)
    _compiled_error = None
except ImportError as exc:  # re-raised below unless the user asked for the reference backend
    compiled = None
    _compiled_error = exc

_BACKENDS = {"reference": reference}
if compiled is not None:
    _BACKENDS["compiled"] = compiled

_env = os.environ.get("FASTBP_BACKEND", "compiled")
if _env not in ("compiled", "reference"):
    raise ValueError(f"FASTBP_BACKEND must be 'compiled' or 'reference', got {_env!r}")
if compiled is None and _env != "reference":
    raise ImportError(_REBUILD_HINT.format(err=_compiled_error)) from _compiled_error

current = _BACKENDS[_env]


def set_backend(name):
    """Select the backend every op uses from now on: "compiled" (default) or "reference" (NumPy)."""
    global current
    if name not in ("compiled", "reference"):
        raise ValueError(f"backend must be 'compiled' or 'reference', got {name!r}")
    if name not in _BACKENDS:
        raise RuntimeError(_REBUILD_HINT.format(err=_compiled_error))
    current = _BACKENDS[name]


def get_backend():
    """Name of the backend in use: "compiled" or "reference"."""
    return current.name


@contextlib.contextmanager
def backend(name):
    """`with fastbp.backend("reference"): ...` runs the block on the named backend, then restores."""
    previous = current.name
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)
