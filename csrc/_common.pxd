# Design: shared declarations for every kernel family.
#   * `real` is the fused float/double type every kernel is written over.
#   * `gemm_rm` is a row-major GEMM on top of scipy's Fortran BLAS (operands swapped: a row-major
#     C = op(A) @ op(B) is the column-major C^T = op(B)^T @ op(A)^T).
#   * `as_float_array` / `check_same_dtype` are the validation every wrapper runs before a nogil loop;
#     `aligned_c` gives any input array (labels, indices) as C-contiguous and aligned, copying if needed.
#   * `threads_for` / `bind_threading`: the process-wide thread settings (csrc/fastbp_omp.h).
# Everything here is `inline` so cimporting this file adds no runtime module import (bind_threading, run
# once when a kernel module loads, imports fastbp._C._runtime).
cimport numpy as cnp
from cpython.number cimport PyNumber_Index
from cpython.pycapsule cimport PyCapsule_GetPointer
from scipy.linalg.cython_blas cimport sgemm, dgemm
from libc.math cimport (isfinite, exp, expf, expm1, expm1f, log, logf, log1p, log1pf, fabs, fabsf, sqrt, sqrtf,
                        tanh, tanhf)

import numpy as np

ctypedef fused real:
    float
    double

# libm in the kernel's own precision: the float function for float (no silent promotion to double),
# the double one for double.
cdef inline real r_exp(real v) noexcept nogil:
    if real is float:
        return expf(v)
    else:
        return exp(v)


cdef inline real r_expm1(real v) noexcept nogil:
    if real is float:
        return expm1f(v)
    else:
        return expm1(v)


cdef inline real r_log(real v) noexcept nogil:
    if real is float:
        return logf(v)
    else:
        return log(v)


cdef inline real r_log1p(real v) noexcept nogil:
    if real is float:
        return log1pf(v)
    else:
        return log1p(v)


cdef inline real r_relu(real x) noexcept nogil:
    """max(x, 0) with NaN kept (PyTorch's relu): the rule of relu_forward and of linear_forward's epilogue."""
    return 0 if x <= 0 else x


cdef inline real r_abs(real v) noexcept nogil:
    if real is float:
        return fabsf(v)
    else:
        return fabs(v)


cdef inline real r_sqrt(real v) noexcept nogil:
    if real is float:
        return sqrtf(v)
    else:
        return sqrt(v)


cdef inline real r_tanh(real v) noexcept nogil:
    if real is float:
        return tanhf(v)
    else:
        return tanh(v)


cdef extern from "fastbp_omp.h":
    int omp_get_max_threads() noexcept nogil
    int omp_get_num_threads() noexcept nogil
    int FASTBP_HAVE_OPENMP
    ctypedef void (*fastbp_blas_set_fn)(int) noexcept nogil
    ctypedef int (*fastbp_blas_get_fn)() noexcept nogil
    ctypedef struct fastbp_threading:
        int num_threads
        Py_ssize_t parallel_min
        fastbp_blas_set_fn blas_set
        fastbp_blas_get_fn blas_get
        int blas_depth
        int blas_prev
        int adaptive
        int load_busy
        long long load_next_ns
        int gemm_blocks_max
        int bound_modules
    fastbp_threading* fastbp_thr
    int fastbp_threads_for(Py_ssize_t work) noexcept nogil
    int fastbp_machine_busy() noexcept nogil
    int fastbp_busy_for_load(double load1, long ncpu, int was_busy) noexcept nogil
    void fastbp_bind_threading(void* state)
    int fastbp_blas_single_enter()
    void fastbp_blas_single_exit()

# Below this many elements an elementwise loop runs serially: waking threads costs more than it saves.
# Measured on 2 cores (ReLU, float32, idle workers sleeping): 200k elements 28 us serial vs 34 us on 2
# threads; 500k elements 140 us vs 92 us. Tests lower it (fastbp._C._runtime._set_parallel_min, or the
# environment variable FASTBP_PARALLEL_MIN at import) so that small samples run the parallel branches.
cdef enum:
    PARALLEL_MIN = 262144

cdef inline int threads_for(Py_ssize_t work) noexcept nogil:
    """Threads for a loop over `work` elements: 1 below the parallel threshold (PARALLEL_MIN unless a test
    lowered it), else the process-wide count set by fastbp.set_num_threads, or 1 while other processes
    oversubscribe the machine (fastbp.set_threads_adaptive; csrc/fastbp_omp.h)."""
    return fastbp_threads_for(work)


cdef inline int num_threads() noexcept nogil:
    """The process-wide thread count (fastbp.set_num_threads), whatever the amount of work."""
    return fastbp_thr.num_threads


cdef inline int bind_threading() except -1:
    """Point this module's thread settings at the ones fastbp._C._runtime owns (call once at import)."""
    from fastbp._C._runtime import _threading_capsule
    fastbp_bind_threading(PyCapsule_GetPointer(_threading_capsule, b"fastbp._C._runtime.threading"))
    return 0


cdef inline void gemm_rm(bint trans_a, bint trans_b, int m, int n, int k, real alpha,
                         const real* a, int lda, const real* b, int ldb, real beta,
                         real* c, int ldc) noexcept nogil:
    """Row-major C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m == 0 or n == 0:
        return
    if real is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


cdef inline object aligned_c(object x):
    """The ndarray x as C-contiguous and aligned to its item size: x itself when it is, else a copy. The
    kernels read arrays through typed pointers, and a misaligned one (a view into a byte buffer at an odd
    offset, say) is undefined behaviour in C (UBSan aborts; some CPUs fault or slow down)."""
    cdef cnp.ndarray arr = <cnp.ndarray>x
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISALIGNED(arr):
        return np.array(arr, order="C", copy=True)
    return x


cdef inline object as_float_array(object x, str name, int ndim=-1):
    """Return x as a C-contiguous, aligned float32/float64 ndarray (a copy when x is not), or raise
    TypeError/ValueError naming `name`."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32 or float64, got {type(x).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>x
    cdef int tn = cnp.PyArray_TYPE(arr)
    if tn != cnp.NPY_FLOAT and tn != cnp.NPY_DOUBLE:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if ndim >= 0 and cnp.PyArray_NDIM(arr) != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    return aligned_c(arr)


cdef inline void check_same_dtype(object a, str aname, object b, str bname) except *:
    if (<cnp.ndarray>a).descr.type_num != (<cnp.ndarray>b).descr.type_num:
        raise TypeError(f"{aname} has dtype {a.dtype} but {bname} has dtype {b.dtype}; they must match")


cdef inline void check_blas_size(Py_ssize_t n, str what) except *:
    if n > 2147483647:
        raise ValueError(f"{what} = {n} exceeds the 32-bit BLAS index limit (2**31 - 1)")


cdef inline tuple int_pair(str op, object v, str name, Py_ssize_t minimum):
    """An int or a pair of ints (stride, padding, kernel size, ...) as a pair, each >= minimum."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
        a, b = v
    else:
        a = b = v
    try:
        a, b = PyNumber_Index(a), PyNumber_Index(b)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v!r}")
    return a, b


cdef inline void valid_range(Py_ssize_t start, Py_ssize_t step, Py_ssize_t size, Py_ssize_t count,
                             Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the k in [0, count) with 0 <= start + k * step < size (step >= 1); im2col, col2im and
    pooling use it to clip windows to the input."""
    cdef Py_ssize_t a = 0, b
    if step == 1:  # no division on the common path (pooling calls this once per output pixel)
        a = -start if start < 0 else 0
        b = size - start if size - start < count else count
        if a > count:
            a = count
        if b < a:
            b = a
        lo[0] = a
        hi[0] = b
        return
    if start < 0:
        a = (-start + step - 1) // step
    if size - 1 - start < 0:
        b = 0
    else:
        b = (size - 1 - start) // step + 1
    if a > count:
        a = count
    if b > count:
        b = count
    if b < a:
        b = a
    lo[0] = a
    hi[0] = b


cdef inline double finite_scalar(object value, str name) except? -1:
    """A hyperparameter (slope, alpha, margin, smoothing, penalty weight) as a finite double, or a clear
    TypeError/ValueError naming it."""
    cdef double v
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


cdef inline bint _bounds(cnp.ndarray a, char** lo, char** hi) noexcept:
    """The byte range [lo, hi) that a's elements span (from its data pointer, shape and strides, as
    np.may_share_memory's bounds check); False when a has no elements."""
    cdef int d
    cdef cnp.npy_intp ext
    cdef char* low = <char*>cnp.PyArray_DATA(a)
    cdef char* high = low
    for d in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIM(a, d) == 0:
            return False
        ext = cnp.PyArray_STRIDE(a, d) * (cnp.PyArray_DIM(a, d) - 1)
        if ext > 0:
            high += ext
        else:
            low += ext
    lo[0] = low
    hi[0] = high + cnp.PyArray_ITEMSIZE(a)
    return True


cdef inline bint may_overlap(object a, object b):
    """np.may_share_memory(a, b) (bounds only) without its call overhead when both are ndarrays: out= buffers
    are checked against every input on each call of a kernel, which a replayed training step makes often."""
    cdef char *alo, *ahi, *blo, *bhi
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return np.may_share_memory(a, b)
    if not _bounds(<cnp.ndarray>a, &alo, &ahi) or not _bounds(<cnp.ndarray>b, &blo, &bhi):
        return False
    return <size_t>alo < <size_t>bhi and <size_t>blo < <size_t>ahi


cdef inline object out_array(object out, tuple shape, object dtype, str name, tuple inputs=()):
    """The output array of a kernel: a new one when out is None, else `out` after checking that it is an
    ndarray of exactly `shape` and `dtype`, C-contiguous, aligned and writeable, and shares no memory with
    `inputs` (the kernels write it while reading those). Raises TypeError/ValueError naming `name`."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>out
    if out.dtype != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {np.dtype(dtype)}")
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}, expected {shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr) or not cnp.PyArray_ISALIGNED(arr) or not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} must be C-contiguous, aligned and writeable")
    for x in inputs:
        if x is not None and may_overlap(out, x):
            raise ValueError(f"{name} overlaps an input of the kernel")
    return out
