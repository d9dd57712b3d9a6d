"""Build and runtime configuration: threads, BLAS, OpenMP, and `fastbp info`."""
import os

import numpy as np
import scipy
import threadpoolctl

from . import _backend
from ._version import __version__


def _runtime():
    from ._C import _runtime
    return _runtime


def _scipy_blas_pools():
    """threadpoolctl entries for the BLAS library behind scipy.linalg.cython_blas (our GEMM)."""
    import scipy.linalg.cython_blas  # noqa: F401  (make sure it is loaded)
    pools = threadpoolctl.threadpool_info()
    ours = [p for p in pools if p.get("user_api") == "blas" and "scipy.libs" in p.get("filepath", "")]
    return ours or [p for p in pools if p.get("user_api") == "blas"]


def get_num_threads():
    """Threads our OpenMP kernels use (1 without OpenMP or the compiled backend)."""
    if _backend.compiled is None:
        return 1
    return _runtime().get_num_threads()


def set_num_threads(n):
    """One setting for both pools: OpenMP threads of our kernels and the BLAS threads behind GEMM.

    Respects OMP_NUM_THREADS at start-up (both libraries read it); call this to change it later."""
    n = int(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    if _backend.compiled is not None:
        _runtime().set_num_threads(n)
    threadpoolctl.threadpool_limits(limits=n, user_api="blas")


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
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(libgomp default)"),
        "gemm_blas": [
            {"library": p.get("internal_api"), "version": p.get("version"), "threads": p.get("num_threads"),
             "path": p.get("filepath")} for p in blas
        ],
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
    print(f"  OpenMP threads:          {c['num_threads']} (OMP_WAIT_POLICY={c['omp_wait_policy']})")
    for b in c["gemm_blas"]:
        print(f"  GEMM BLAS:               {b['library']} {b['version']} ({b['threads']} threads) {b['path']}")
    if not c["gemm_blas"]:
        print("  GEMM BLAS:               scipy.linalg.cython_blas (library not identified)")
    print(f"  numpy {c['numpy']}, scipy {c['scipy']}")
