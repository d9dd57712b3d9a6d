# Design: runtime facts about the build (OpenMP on/off) and the OpenMP thread count. Not a kernel:
# fastbp._config uses it; the op registry does not list it.
from _common cimport omp_get_max_threads, omp_set_num_threads, FASTBP_HAVE_OPENMP


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(FASTBP_HAVE_OPENMP)


def get_num_threads():
    """OpenMP's current maximum thread count (1 in a serial build)."""
    return omp_get_max_threads()


def set_num_threads(int n):
    """Set the OpenMP thread count used by prange loops."""
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    omp_set_num_threads(n)
