# Design: matrix products for the linear layer and the graph's `@`, all through scipy's BLAS
# (sgemm/dgemm via _common.gemm_rm, row-major, GIL released). Layout: x is (N, in), weight is
# (out, in) as in PyTorch, y = x @ weight.T + bias. The bias is written into y before GEMM accumulates
# into it (beta = 1), and the bias gradient is summed in the same call as the weight gradient.
#
# One thread pool (see "Threads" below): when fastbp._config found the thread setter of the OpenBLAS behind
# scipy.linalg.cython_blas, GEMMs run that BLAS single-threaded and a large product is split into column
# (or row) blocks over our own OpenMP threads, one single-threaded GEMM per block. fastbp's work then runs on
# one pool, libgomp's: the threads that idle-spin after one kernel are the ones that run the next, instead of
# OpenBLAS's workers and ours taking turns on the cores (measured: one pool's idle workers spinning starved
# the other's, a 784-256-128-10 MLP step at batch 256 on 2 cores took 2-14 ms instead of 2.2).
cimport numpy as cnp
from cython.parallel cimport prange
from _common cimport real, gemm_rm, as_float_array, check_same_dtype, check_blas_size, fastbp_max_threads

import operator
import threading

import numpy as np

cnp.import_array()


# ----- Threads --------------------------------------------------------------------------------------------
# Setter/getter of the OpenBLAS thread count (resolved by fastbp._config, as for conv2d). NULL: unknown BLAS;
# then every GEMM is one BLAS call with the BLAS's own threads, as before. While any GEMM of this module runs,
# the count is 1; it is restored by the last call to leave, and only if this module changed it (so a
# concurrent conv2d call, which saves and restores the count itself, never leaves it at 1 for good).
ctypedef void (*blas_set_fn)(int) noexcept nogil
ctypedef int (*blas_get_fn)() noexcept nogil
cdef blas_set_fn _blas_set = NULL
cdef blas_get_fn _blas_get = NULL
cdef int _blas_depth = 0
cdef int _blas_prev = 1
cdef bint _blas_changed = False
_blas_lock = threading.Lock()

# A product of at least this many multiply-adds (m n k) is computed in blocks (_gemm_parts) shared out over
# the OpenMP threads; smaller ones are one call on one thread (fork/join of the team costs ~5-20 us, a 2^21
# multiply-add sgemm ~20 us on one core). The blocks depend on the shape only, not on the thread count.
cdef enum:
    GEMM_PARALLEL_MIN = 2097152
    GEMM_COL_ALIGN = 16


cdef int _gemm_parts(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """Blocks a product is computed in: a function of its shape only (never of the thread count), so the
    result has the same bits on any number of threads. 1 below GEMM_PARALLEL_MIN multiply-adds; else one
    block per 512 columns (rows when m > n) of C, at least 2 and at most 8 (each block repacks the other
    operand: at n = 1024 four blocks ran 4-10% slower than two on one core)."""
    cdef Py_ssize_t big = n if n >= m else m
    if m * n * k < GEMM_PARALLEL_MIN or big < 2 * GEMM_COL_ALIGN:
        return 1
    big = big // 512
    return 2 if big < 2 else (8 if big > 8 else <int>big)


cdef int _gemm_threads(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k):
    """0: plain BLAS call (no thread hook); else the number of OpenMP threads for the blocks of the product
    (_gemm_parts), BLAS single-threaded inside."""
    if _blas_set == NULL:
        return 0
    cdef int parts = _gemm_parts(m, n, k)
    if parts == 1:
        return 1
    cdef int nt = fastbp_max_threads()
    return 1 if nt < 1 else (parts if nt > parts else nt)


cdef void _blas_single_enter():
    global _blas_depth, _blas_prev, _blas_changed
    with _blas_lock:
        if _blas_depth == 0:
            _blas_prev = _blas_get()
            _blas_changed = _blas_prev != 1
            if _blas_changed:
                _blas_set(1)
        _blas_depth += 1


cdef void _blas_single_exit():
    global _blas_depth, _blas_changed
    with _blas_lock:
        _blas_depth -= 1
        if _blas_depth == 0 and _blas_changed:
            _blas_set(_blas_prev)
            _blas_changed = False


cdef void _gemm_part(int part, int parts, bint ta, bint tb, int m, int n, int k, real alpha,
                     const real* a, int lda, const real* b, int ldb, real beta, real* c, int ldc) noexcept nogil:
    """Block `part` of `parts` of C = alpha op(A) op(B) + beta C: columns when n >= m, else rows."""
    cdef int size = n if n >= m else m
    cdef int blk = (size + parts - 1) // parts
    blk = (blk + GEMM_COL_ALIGN - 1) // GEMM_COL_ALIGN * GEMM_COL_ALIGN
    cdef int lo = part * blk, hi = lo + blk
    if hi > size:
        hi = size
    if lo >= hi:
        return
    if n >= m:  # columns lo:hi of C and of op(B)
        gemm_rm(ta, tb, m, hi - lo, k, alpha, a, lda, (b + <Py_ssize_t>lo * ldb) if tb else (b + lo), ldb,
                beta, c + lo, ldc)
    else:       # rows lo:hi of C and of op(A)
        gemm_rm(ta, tb, hi - lo, n, k, alpha, (a + lo) if ta else (a + <Py_ssize_t>lo * lda), lda, b, ldb,
                beta, c + <Py_ssize_t>lo * ldc, ldc)


cdef void gemm_threads(int nt, bint ta, bint tb, int m, int n, int k, real alpha, const real* a, int lda,
                       const real* b, int ldb, real beta, real* c, int ldc) noexcept nogil:
    """gemm_rm in _gemm_parts blocks over nt OpenMP threads; nt == 0 (no thread hook): one BLAS call on the
    BLAS's own threads. With nt >= 1 the caller has made BLAS single-threaded."""
    cdef int t, parts = _gemm_parts(m, n, k) if nt > 0 else 1
    if parts <= 1 or m == 0 or n == 0:
        gemm_rm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    for t in prange(parts, num_threads=nt, schedule="static"):
        _gemm_part(t, parts, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


def _set_blas_thread_hooks(set_ptr, get_ptr):
    """Addresses (ints) of the BLAS's void set_num_threads(int) and int get_num_threads(void), or 0/None to
    clear them (then each GEMM is one BLAS call on the BLAS's own threads). Returns the previous pair."""
    global _blas_set, _blas_get
    cdef size_t s = 0 if set_ptr is None else operator.index(set_ptr)
    cdef size_t q = 0 if get_ptr is None else operator.index(get_ptr)
    if (s == 0) != (q == 0):
        raise ValueError("set_ptr and get_ptr must both be given or both be 0")
    with _blas_lock:
        if _blas_depth:
            raise RuntimeError("cannot change the BLAS thread hooks while a GEMM is running")
        previous = (<size_t>_blas_set, <size_t>_blas_get)
        _blas_set = <blas_set_fn>s
        _blas_get = <blas_get_fn>q
    return previous


def _blas_thread_hooks_set():
    """True when GEMMs run on fastbp's OpenMP threads with the BLAS single-threaded."""
    return _blas_set != NULL and _blas_get != NULL


def _gemm_plan(m, n, k):
    """(threads, blocks) of a (m, n, k) product; threads 0 = one BLAS call on the BLAS's own threads."""
    nt = _gemm_threads(m, n, k)
    return nt, (_gemm_parts(m, n, k) if nt else 1)


cdef void _linear_forward(const real[:, ::1] x, const real[:, ::1] w, const real[::1] b, bint has_bias,
                          real[:, ::1] y) noexcept:
    cdef int nt = _gemm_threads(x.shape[0], w.shape[0], x.shape[1])
    if nt:
        _blas_single_enter()
    with nogil:
        _linear_forward_nogil(x, w, b, has_bias, y, nt)
    if nt:
        _blas_single_exit()


cdef void _linear_forward_nogil(const real[:, ::1] x, const real[:, ::1] w, const real[::1] b,
                                bint has_bias, real[:, ::1] y, int nt) noexcept nogil:
    cdef Py_ssize_t n = x.shape[0], fin = x.shape[1], fout = w.shape[0], i, j
    cdef real beta = 0
    if has_bias:
        for i in range(n):
            for j in range(fout):
                y[i, j] = b[j]
        beta = 1
    if fin == 0:
        if not has_bias:
            for i in range(n):
                for j in range(fout):
                    y[i, j] = 0
        return
    gemm_threads(nt, False, True, <int>n, <int>fout, <int>fin, <real>1, &x[0, 0], <int>fin, &w[0, 0], <int>fin,
                 beta, &y[0, 0], <int>fout)


cdef void _linear_backward(const real[:, ::1] g, const real[:, ::1] x, const real[:, ::1] w,
                           real[:, ::1] dx, real[:, ::1] dw, real[::1] db,
                           bint need_dx, bint need_dw, bint need_db) noexcept:
    cdef int nt = _gemm_threads(x.shape[0], w.shape[0], x.shape[1])
    if nt:
        _blas_single_enter()
    with nogil:
        _linear_backward_nogil(g, x, w, dx, dw, db, need_dx, need_dw, need_db, nt)
    if nt:
        _blas_single_exit()


cdef void _linear_backward_nogil(const real[:, ::1] g, const real[:, ::1] x, const real[:, ::1] w,
                                 real[:, ::1] dx, real[:, ::1] dw, real[::1] db,
                                 bint need_dx, bint need_dw, bint need_db, int nt) noexcept nogil:
    cdef Py_ssize_t n = x.shape[0], fin = x.shape[1], fout = w.shape[0], i, j
    if need_dx and fin > 0:
        if fout > 0:
            # dx[n, in] = g[n, out] @ w[out, in]
            gemm_threads(nt, False, False, <int>n, <int>fin, <int>fout, <real>1, &g[0, 0], <int>fout,
                         &w[0, 0], <int>fin, <real>0, &dx[0, 0], <int>fin)
        else:
            dx[:, :] = 0
    if need_dw and fout > 0 and fin > 0:
        # dw[out, in] = g[n, out]^T @ x[n, in]
        gemm_threads(nt, True, False, <int>fout, <int>fin, <int>n, <real>1, &g[0, 0], <int>fout,
                     &x[0, 0], <int>fin, <real>0, &dw[0, 0], <int>fin)
    if need_db and fout > 0:
        db[:] = 0
        for i in range(n):
            for j in range(fout):
                db[j] += g[i, j]


cdef tuple _check_linear(object x, object weight, object bias):
    x = as_float_array(x, "x", 2)
    weight = as_float_array(weight, "weight", 2)
    check_same_dtype(x, "x", weight, "weight")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"linear: x has shape {x.shape} (in_features={x.shape[1]}) but weight has shape "
                         f"{weight.shape} (in_features={weight.shape[1]})")
    if x.shape[0] == 0:
        raise ValueError(f"linear: empty batch, x has shape {x.shape}")
    if bias is not None:
        bias = as_float_array(bias, "bias", 1)
        check_same_dtype(x, "x", bias, "bias")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"linear: bias has shape {bias.shape} but weight has shape {weight.shape}; "
                             f"bias must have shape ({weight.shape[0]},)")
    for d in (x.shape[0], x.shape[1], weight.shape[0]):
        check_blas_size(d, "linear dimension")
    return x, weight, bias


def linear_forward(x, weight, bias=None):
    """y = x @ weight.T + bias for x (N, in), weight (out, in), bias (out,) or None."""
    x, weight, bias = _check_linear(x, weight, bias)
    y = np.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)
    has_bias = bias is not None
    b = bias if has_bias else np.empty(0, dtype=x.dtype)
    if x.dtype == np.float32:
        _linear_forward[float](x, weight, b, has_bias, y)
    else:
        _linear_forward[double](x, weight, b, has_bias, y)
    return y


def linear_backward(grad_out, x, weight, need_input_grad=True, need_weight_grad=True, need_bias_grad=True):
    """Gradients of y = x @ weight.T + bias: returns (dx, dweight, dbias), None where not needed."""
    x, weight, _ = _check_linear(x, weight, None)
    grad_out = as_float_array(grad_out, "grad_out", 2)
    check_same_dtype(x, "x", grad_out, "grad_out")
    if grad_out.shape[0] != x.shape[0] or grad_out.shape[1] != weight.shape[0]:
        raise ValueError(f"linear_backward: grad_out has shape {grad_out.shape}, expected "
                         f"({x.shape[0]}, {weight.shape[0]}) for x {x.shape} and weight {weight.shape}")
    cdef bint ndx = bool(need_input_grad), ndw = bool(need_weight_grad), ndb = bool(need_bias_grad)
    dt = x.dtype
    dx = np.empty(x.shape, dtype=dt) if ndx else np.empty((1, 1), dtype=dt)
    dw = np.empty(weight.shape, dtype=dt) if ndw else np.empty((1, 1), dtype=dt)
    db = np.empty(weight.shape[0], dtype=dt) if ndb else np.empty(1, dtype=dt)
    if dt == np.float32:
        _linear_backward[float](grad_out, x, weight, dx, dw, db, ndx, ndw, ndb)
    else:
        _linear_backward[double](grad_out, x, weight, dx, dw, db, ndx, ndw, ndb)
    return (dx if ndx else None, dw if ndw else None, db if ndb else None)


cdef void _matmul(const real* a, const real* b, real* c, bint ta, bint tb, int m, int n, int k,
                  int lda, int ldb, int nt) noexcept nogil:
    cdef Py_ssize_t i
    if k == 0:
        for i in range(<Py_ssize_t>m * n):
            c[i] = 0
        return
    gemm_threads(nt, ta, tb, m, n, k, <real>1, a, lda, b, ldb, <real>0, c, n)


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) for 2-D a, b, where op transposes when trans_a / trans_b is true.

    A Fortran-ordered operand (for example a transposed view) is used in place by flipping its BLAS
    transpose flag instead of being copied."""
    cdef bint ta = bool(trans_a), tb = bool(trans_b)
    for arr, nm in ((a, "a"), (b, "b")):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"matmul: {nm} must be a numpy.ndarray, got {type(arr).__name__}")
        if arr.ndim != 2:
            raise ValueError(f"matmul: {nm} must be 2-D, got shape {arr.shape}")
    if not a.flags.c_contiguous and a.flags.f_contiguous:
        a = a.T
        ta = not ta
    if not b.flags.c_contiguous and b.flags.f_contiguous:
        b = b.T
        tb = not tb
    a = as_float_array(a, "a", 2)
    b = as_float_array(b, "b", 2)
    check_same_dtype(a, "a", b, "b")
    m, ka = (a.shape[1], a.shape[0]) if ta else (a.shape[0], a.shape[1])
    kb, n = (b.shape[1], b.shape[0]) if tb else (b.shape[0], b.shape[1])
    if ka != kb:
        raise ValueError(f"matmul: inner dimensions differ: op(a) is ({m}, {ka}) (a {a.shape}, trans_a={ta}) "
                         f"and op(b) is ({kb}, {n}) (b {b.shape}, trans_b={tb})")
    for d in (m, n, ka):
        check_blas_size(d, "matmul dimension")
    c = np.empty((m, n), dtype=a.dtype)
    cdef int im = m, iN = n, ik = ka, lda = max(a.shape[1], 1), ldb = max(b.shape[1], 1)
    cdef cnp.ndarray aa = a, bb = b, cc = c
    if m == 0 or n == 0:
        return c
    cdef int nt = _gemm_threads(m, n, ka)
    if nt:
        _blas_single_enter()
    try:
        if a.dtype == np.float32:
            with nogil:
                _matmul[float](<float*>cnp.PyArray_DATA(aa), <float*>cnp.PyArray_DATA(bb),
                               <float*>cnp.PyArray_DATA(cc), ta, tb, im, iN, ik, lda, ldb, nt)
        else:
            with nogil:
                _matmul[double](<double*>cnp.PyArray_DATA(aa), <double*>cnp.PyArray_DATA(bb),
                                <double*>cnp.PyArray_DATA(cc), ta, tb, im, iN, ik, lda, ldb, nt)
    finally:
        if nt:
            _blas_single_exit()
    return c


include "_threads.pxi"
