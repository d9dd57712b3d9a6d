# Design: runtime facts about the build (OpenMP on/off) and the OpenMP thread count. Not a kernel:
# fastbp._config uses it; the op registry does not list it.
from _common cimport (omp_get_max_threads, omp_set_num_threads, FASTBP_HAVE_OPENMP, fastbp_max_threads,
                     fastbp_busy_for_load)


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


def effective_threads():
    """Threads a large kernel would use now: get_num_threads(), or 1 while the machine is oversubscribed
    (1-minute load average >= 2 x CPUs + 1; see csrc/fastbp_omp.h)."""
    return fastbp_max_threads()


def _busy_for_load(double load1, long ncpu, bint was_busy):
    """The oversubscription rule of fastbp_omp.h, for tests: True when regions should run on one thread."""
    return bool(fastbp_busy_for_load(load1, ncpu, was_busy))


include "_threads.pxi"
