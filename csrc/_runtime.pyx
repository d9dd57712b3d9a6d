# Design: runtime facts about the build (OpenMP on/off) and the thread settings every kernel module reads.
# Not a kernel: fastbp._config uses it; the op registry does not list it.
#   * The one fastbp_threading struct (csrc/fastbp_omp.h) lives here; its address goes out in the capsule
#     `_threading_capsule` and each kernel module points at it when imported, so a count set here holds
#     for every module and every Python thread. Start-up count: OpenMP's default for this process, which
#     honours OMP_NUM_THREADS.
#   * After os.fork() the child runs every kernel on one thread (fastbp._config registers the handler):
#     libgomp's thread pool does not survive fork, and a child that entered a parallel region with more
#     than one thread after its parent had used the pool would wait forever for threads that do not exist.
#   * The parallel threshold (PARALLEL_MIN elements) can be lowered for tests, so that small inputs run
#     the parallel branches: `_set_parallel_min(n)`, or FASTBP_PARALLEL_MIN=n in the environment at import.
import os

cimport numpy as cnp
import numpy as np

cnp.import_array()
from cython.parallel cimport prange
from _common cimport (omp_get_max_threads, omp_get_num_threads, FASTBP_HAVE_OPENMP, fastbp_threading,
                      PARALLEL_MIN, threads_for, fastbp_bind_threading, as_float_array, aligned_c)
from cpython.pycapsule cimport PyCapsule_New

cdef extern from *:
    """
    #ifndef FASTBP_DEBUG
    #define FASTBP_DEBUG 0
    #endif
    """
    int FASTBP_DEBUG

cdef fastbp_threading _state
_state.num_threads = omp_get_max_threads() if omp_get_max_threads() >= 1 else 1
_state.parallel_min = PARALLEL_MIN
cdef bint _forked = False

_threading_capsule = PyCapsule_New(&_state, b"fastbp._C._runtime.threading", NULL)
fastbp_bind_threading(&_state)


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(FASTBP_HAVE_OPENMP)


def debug_build():
    """True for a FASTBP_DEBUG=1 build (bounds checks on; errors in kernel helpers abort)."""
    return bool(FASTBP_DEBUG)


def get_num_threads():
    """Threads every parallel region of the kernels uses (1 in a serial build or in a forked child)."""
    return _state.num_threads


def set_num_threads(int n):
    """Set the thread count of every kernel's parallel regions, for all Python threads. Without OpenMP, or
    in a child process made by fork, the kernels stay on one thread."""
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    if FASTBP_HAVE_OPENMP and not _forked:
        _state.num_threads = n


def _after_fork_in_child():
    """Run in a forked child (os.register_at_fork): every kernel serial from now on."""
    global _forked
    _forked = True
    _state.num_threads = 1


def _is_forked_child():
    return _forked


def _threads_used(Py_ssize_t work):
    """Test probe: the number of threads a kernel loop over `work` elements runs on, from the calling
    Python thread (a prange with the same thread choice as the kernels)."""
    cdef Py_ssize_t i
    cdef int used = 0
    with nogil:
        for i in prange(1, schedule="static", num_threads=threads_for(work)):
            used = omp_get_num_threads()
    return used


def _kernel_input(x, floating=True):
    """Test probe: the array a kernel wrapper would read for input x (as_float_array for float inputs,
    aligned_c for integer ones such as labels and indices)."""
    return as_float_array(x, "x") if floating else aligned_c(x)


def _set_parallel_min(Py_ssize_t n):
    """Test hook: loops over at least n elements take the parallel branch (default PARALLEL_MIN). Returns
    the previous value."""
    if n < 0:
        raise ValueError(f"parallel threshold must be >= 0, got {n}")
    previous = _state.parallel_min
    _state.parallel_min = n
    return previous


def _get_parallel_min():
    return _state.parallel_min


_env_min = os.environ.get("FASTBP_PARALLEL_MIN")
if _env_min:
    _set_parallel_min(int(_env_min))
