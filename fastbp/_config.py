"""Build and runtime configuration: threads, BLAS, OpenMP, and `fastbp info`."""
import ctypes
import itertools
import os

import numpy as np
import scipy

from . import _backend
from ._version import __version__


def _threadpoolctl():
    """threadpoolctl, imported without its side effect on the environment.

    threadpoolctl sets KMP_DUPLICATE_LIB_OK=True when it is first imported (a setting of Intel's OpenMP
    runtime, which PyTorch or MKL may load later in the same process). fastbp only uses it to find the BLAS
    library behind scipy.linalg.cython_blas, so the variable is removed again unless the user had set it
    (or threadpoolctl was already imported by someone else)."""
    import sys
    if "threadpoolctl" in sys.modules:
        return sys.modules["threadpoolctl"]
    before = os.environ.get("KMP_DUPLICATE_LIB_OK")
    import threadpoolctl
    if before is None:
        os.environ.pop("KMP_DUPLICATE_LIB_OK", None)
    elif os.environ.get("KMP_DUPLICATE_LIB_OK") != before:
        os.environ["KMP_DUPLICATE_LIB_OK"] = before
    return threadpoolctl


def _runtime():
    from ._C import _runtime
    return _runtime


def _scipy_blas_pools():
    """threadpoolctl entries for the BLAS library behind scipy.linalg.cython_blas (our GEMM)."""
    import scipy.linalg.cython_blas  # noqa: F401  (make sure it is loaded)
    pools = _threadpoolctl().threadpool_info()
    ours = [p for p in pools if p.get("user_api") == "blas" and "scipy.libs" in p.get("filepath", "")]
    return ours or [p for p in pools if p.get("user_api") == "blas"]


def _scipy_openblas_thread_functions():
    """(set_num_threads, get_num_threads) ctypes functions of the OpenBLAS behind scipy's cython_blas, or None.

    Only for OpenBLAS with its own (pthreads) thread pool: there the count is process-wide, so the conv
    kernels can make BLAS single-threaded around their parallel region. The symbol names carry a
    build-dependent prefix/suffix (scipy_openblas_set_num_threads, openblas_set_num_threads64_, ...)."""
    import scipy.linalg.cython_blas  # noqa: F401  (make sure it is loaded)
    for lc in _threadpoolctl().ThreadpoolController().lib_controllers:
        if getattr(lc, "internal_api", None) != "openblas" or "scipy.libs" not in (lc.filepath or ""):
            continue
        if getattr(lc, "threading_layer", None) == "openmp":
            return None
        for pre, suf in itertools.product(("scipy_", ""), ("", "64_", "_64")):
            try:
                fset = getattr(lc.dynlib, f"{pre}openblas_set_num_threads{suf}")
                fget = getattr(lc.dynlib, f"{pre}openblas_get_num_threads{suf}")
            except AttributeError:
                continue
            return fset, fget
    return None


def _compiled_module(family):
    """The compiled kernels of one family, or None on the reference-only backend."""
    return dict(zip(_backend.FAMILIES, _backend.compiled_modules)).get(family)


def _conv_module():
    return _compiled_module("conv")


def _install_blas_thread_hooks():
    """Hand the BLAS thread setter/getter to the compiled conv and GEMM kernels (see csrc/conv.pyx and
    csrc/gemm.pyx, "Threads"); returns whether they were found. Without them conv2d keeps BLAS calls outside
    its OpenMP loops and each GEMM is one BLAS call on the BLAS's own threads."""
    mods = [m for m in (_compiled_module("conv"), _compiled_module("gemm")) if m is not None]
    if not mods:
        return False
    fns = _scipy_openblas_thread_functions()
    for mod in mods:
        if fns is None:
            mod._set_blas_thread_hooks(0, 0)
        else:
            mod._set_blas_thread_hooks(*(ctypes.cast(f, ctypes.c_void_p).value for f in fns))
    return fns is not None


def _gemm_on_openmp():
    gemm = _compiled_module("gemm")
    return gemm is not None and gemm._blas_thread_hooks_set()


def _conv_blas_thread_hook():
    conv = _conv_module()
    return conv is not None and conv._blas_thread_hooks_set()


def _conv_transforms_variant():
    """The instruction-set variant of the conv transforms the loader picked (None without compiled kernels)."""
    conv = _conv_module()
    return conv._simd_variant() if conv is not None else None


def get_num_threads():
    """Threads our OpenMP kernels use (1 without OpenMP or the compiled backend)."""
    if _backend.compiled is None:
        return 1
    return _runtime().get_num_threads()


def set_num_threads(n):
    """One setting for both of fastbp's pools: the OpenMP threads of our kernels and the BLAS threads behind
    GEMM (the OpenBLAS that scipy.linalg.cython_blas links, shared with scipy.linalg). NumPy's own BLAS and
    other libraries' thread pools are left alone.

    Respects OMP_NUM_THREADS at start-up (both libraries read it); call this to change it later."""
    n = int(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    if _backend.compiled is not None:
        _runtime().set_num_threads(n)
    fns = _scipy_openblas_thread_functions()
    if fns is not None:
        fns[0](n)
        return
    tpc = _threadpoolctl()
    for lc in tpc.ThreadpoolController().lib_controllers:
        if lc.user_api == "blas" and "scipy.libs" in (lc.filepath or ""):
            lc.set_num_threads(n)


def set_threads_adaptive(on=True):
    """Whether fastbp's parallel kernels drop to one thread while other processes oversubscribe the machine
    (1-minute load average >= 2 x CPUs + 1, back at < 2 x CPUs; checked at most once a second). On by
    default: on a machine whose cores are all taken, threaded steps spend their time waiting at barriers for
    descheduled threads (csrc/fastbp_omp.h). `set_threads_adaptive(False)` keeps get_num_threads() threads
    whatever the load (for timing a fixed configuration, or tests that must reach the parallel paths).
    Returns the previous setting."""
    previous = get_threads_adaptive()
    for mod in _backend.compiled_modules:
        if hasattr(mod, "_set_threads_adaptive"):
            mod._set_threads_adaptive(bool(on))
    if _backend.compiled is not None:
        _runtime()._set_threads_adaptive(bool(on))
    return previous


def get_threads_adaptive():
    if _backend.compiled is None:
        return False
    return _runtime()._threads_adaptive()


def _openblas_timeout():
    """How long idle OpenBLAS workers spin: OPENBLAS_THREAD_TIMEOUT / GOTO_THREAD_TIMEOUT if the user set
    one (OpenBLAS reads it when it loads); fastbp never sets it."""
    value = next((f"{v}={os.environ[v]}" for v in _backend.OPENBLAS_TIMEOUT_VARS if v in os.environ), None)
    if value is None:
        return "not set (OpenBLAS default; fastbp does not set it)"
    return f"{value} (set by the user)"


def _omp_wait_policy():
    """OMP_WAIT_POLICY / GOMP_SPINCOUNT as the user set them (libgomp reads them when it loads); fastbp
    never sets them."""
    vals = [f"{v}={os.environ[v]}" for v in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if v in os.environ]
    if not vals:
        return "not set (libgomp default; fastbp does not set it)"
    return ", ".join(vals) + " (set by the user)"


def config():
    """The facts `show_config()` prints, as a dict."""
    compiled = _backend.compiled is not None
    blas = _scipy_blas_pools()
    return {
        "version": __version__,
        "backend": _backend.get_backend(),
        "compiled_kernels_loaded": compiled,
        "openmp": bool(compiled and _runtime().openmp_enabled()),
        "num_threads": get_num_threads(),
        "threads_adaptive": get_threads_adaptive(),
        "effective_threads": _runtime().effective_threads() if compiled else 1,
        "omp_wait_policy": _omp_wait_policy(),
        "openblas_thread_timeout": _openblas_timeout(),
        "gemm_blas": [
            {"library": p.get("internal_api"), "version": p.get("version"), "threads": p.get("num_threads"),
             "path": p.get("filepath")} for p in blas
        ],
        "conv_blas_thread_hook": _conv_blas_thread_hook(),
        "gemm_on_openmp_threads": _gemm_on_openmp(),
        "conv_transforms_variant": _conv_transforms_variant(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


def show_config():
    """Print version, whether the compiled kernels are loaded, OpenMP, threads and the BLAS behind GEMM."""
    c = config()
    print(f"fastbp {c['version']}")
    print(f"  backend in use:          {c['backend']}")
    print(f"  compiled kernels loaded: {'yes' if c['compiled_kernels_loaded'] else 'no'}")
    print(f"  OpenMP:                  {'on' if c['openmp'] else 'off'}")
    print(f"  OpenMP threads:          {c['num_threads']} ({c['effective_threads']} now; "
          f"{'one while the machine is oversubscribed' if c['threads_adaptive'] else 'fixed, whatever the load'})")
    print(f"  OpenMP wait policy:      {c['omp_wait_policy']}")
    print(f"  OpenBLAS thread timeout: {c['openblas_thread_timeout']}")
    for b in c["gemm_blas"]:
        print(f"  GEMM BLAS:               {b['library']} {b['version']} ({b['threads']} threads) {b['path']}")
    if not c["gemm_blas"]:
        print("  GEMM BLAS:               scipy.linalg.cython_blas (library not identified)")
    if c["compiled_kernels_loaded"]:
        print(f"  conv BLAS thread hook:   {'found (conv2d runs samples in parallel, BLAS single-threaded inside)' if c['conv_blas_thread_hook'] else 'not found (conv2d calls threaded BLAS outside its parallel loops)'}")
        print(f"  GEMM threads:            {'fastbp OpenMP threads, BLAS single-threaded inside (one pool)' if c['gemm_on_openmp_threads'] else 'the BLAS library own threads'}")
        print(f"  conv transforms:         {c['conv_transforms_variant']} variant (Winograd transforms, bias sums)")
    print(f"  numpy {c['numpy']}, scipy {c['scipy']}")


_install_blas_thread_hooks()
