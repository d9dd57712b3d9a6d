"""The backend table: `compiled` (Cython kernels in fastbp._C) and `reference` (NumPy, fastbp.reference)
expose the same function names. Ops call `backend.current.<name>(...)`; nothing imports a kernel module
directly, so `set_backend("reference")` runs a whole model on NumPy.

If the compiled extension cannot be imported, importing fastbp fails loudly, unless the environment
variable FASTBP_BACKEND=reference asks for the NumPy backend on purpose. There is no silent fallback."""
import contextlib
import importlib
import os
import sys
import types

from . import reference as _reference

# Kernel families: csrc/<family>.pyx builds fastbp._C.<family>; fastbp/reference/<family>.py mirrors it.
FAMILIES = ("gemm", "activations", "losses", "optim", "conv", "pool", "norm")


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


def _installed_copy(here):
    """Directory of an installed fastbp other than the one at `here` (the package being imported), or None."""
    try:
        from importlib import metadata
        dist = metadata.distribution("fastbp")
        init = next((f for f in dist.files or () if str(f).replace("\\", "/") == "fastbp/__init__.py"), None)
        if init is None:
            return None
        where = os.path.dirname(os.path.abspath(str(dist.locate_file(init))))
    except Exception:  # noqa: BLE001 (no metadata: no installed copy we can name)
        return None
    if os.path.normcase(where) == os.path.normcase(here) or not os.path.isdir(where):
        return None
    return where


def _rebuild_hint(err):
    """Why fastbp._C failed to import, in terms of what the user can do about it."""
    here = os.path.dirname(os.path.abspath(__file__))
    c_dir = os.path.join(here, "_C")
    built = [f for f in os.listdir(c_dir) if f.endswith((".so", ".pyd"))] if os.path.isdir(c_dir) else []
    head = f"fastbp's compiled kernels (fastbp._C) could not be imported: {err}\n"
    tail = " To run on the NumPy reference backend on purpose, set FASTBP_BACKEND=reference."
    rebuild = ("Rebuild them: `pip install .` from the source tree (or `python setup.py build_ext --inplace` "
               "for a development checkout).")
    if built:
        return (f"{head}The modules in {c_dir} were probably built for another Python, NumPy or platform, or "
                f"are incomplete. {rebuild}{tail}")
    installed = _installed_copy(here)
    if installed is not None:
        return (f"{head}Python imported fastbp from the source tree {here}, which has no compiled modules: it "
                f"comes first on sys.path (the current directory or PYTHONPATH) and hides the installed fastbp "
                f"in {installed}. Run Python from another directory to use the installed package, or build "
                f"the modules in the source tree: `python setup.py build_ext --inplace`.{tail}")
    return f"{head}{here} has no compiled modules and no installed fastbp was found. {rebuild}{tail}"

# Our OpenMP threads and the BLAS threads behind GEMM share the cores. libgomp's default keeps idle
# workers spinning after each parallel region, which starves the next GEMM's threads: measured on 2 cores,
# an MLP forward at batch 256 took 10.8 ms instead of 0.14 ms. Unless the user chose a policy, idle
# OpenMP workers sleep instead. This must happen before fastbp._C loads libgomp (it reads it once).
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

# The same for OpenBLAS (the library behind scipy.linalg.cython_blas, our GEMM): after each threaded call
# its workers spin for 2^28 cycles before sleeping. A network step calls threaded GEMM every few
# milliseconds, so a worker never sleeps and keeps one of the cores busy: measured on 2 cores, a LeNet-5
# training step ran 4.7-5.4 ms with the worker spinning 96% of the time, 3.7-4.3 ms with it sleeping
# (2^4 cycles, OpenBLAS's minimum). OpenBLAS reads the variable once, when it loads: this must happen before
# fastbp._C imports scipy.linalg.cython_blas, and it has no effect if the program loaded scipy.linalg first
# (fastbp.show_config() says which).
OPENBLAS_TIMEOUT_VARS = ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")
openblas_timeout_by_fastbp = not any(v in os.environ for v in OPENBLAS_TIMEOUT_VARS)
openblas_loaded_before = any(m == "scipy.linalg" or m.startswith("scipy.linalg.") for m in sys.modules)
if openblas_timeout_by_fastbp:
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"

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
    raise ImportError(_rebuild_hint(_compiled_error)) from _compiled_error

current = _BACKENDS[_env]


def set_backend(name):
    """Select the backend every op uses from now on: "compiled" (default) or "reference" (NumPy)."""
    global current
    if name not in ("compiled", "reference"):
        raise ValueError(f"backend must be 'compiled' or 'reference', got {name!r}")
    if name not in _BACKENDS:
        raise RuntimeError(_rebuild_hint(_compiled_error))
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
