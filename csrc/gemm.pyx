# Design: matrix products for the linear layer and the graph's `@`, all through scipy's BLAS
# (sgemm/dgemm via _common.gemm_rm, row-major, GIL released).
# Thread count independence: OpenBLAS's threaded sgemm rounds differently from its single-threaded one
# (measured: 256^3, 100x10x784, 1000x300x500 differ in the last bits between 1 and 2 threads). So when
# fastbp._config found the BLAS thread hook (scipy's OpenBLAS), every product runs with BLAS
# single-threaded, split by us into blocks of rows (or columns) of the output that depend only on the
# shape (_gemm_blocks), the blocks shared among our OpenMP threads: the same single-threaded calls on the
# same blocks whatever the thread count, so the same bits. Without the hook (unknown BLAS), one call with
# the BLAS's own threading, as before. Layout: x is (N, in), weight is
# (out, in) as in PyTorch, y = x @ weight.T + bias. The bias is written into y before GEMM accumulates
# into it (beta = 1), and the bias gradient is summed in the same call as the weight gradient.
cimport numpy as cnp
from cython.parallel cimport prange
from _common cimport (bind_threading, real, gemm_rm, as_float_array, check_same_dtype, check_blas_size,
                      threads_for, fastbp_thr, fastbp_blas_single_enter, fastbp_blas_single_exit,
                      out_array)
from _update cimport Update, UPD_NONE, UPD_RELU, apply_update, update_all, update_threads

import numpy as np

cnp.import_array()
bind_threading()

# Splitting a product into blocks: 1, 2 or 4 blocks (at most fastbp_thr.gemm_blocks_max, set once from
# the CPUs the process may use), each of at least GEMM_BLOCK_WORK multiply-adds and GEMM_MIN_EDGE rows (or
# columns). Each block re-packs the shared operand, so blocks are kept large; the count depends only on the
# shape and the machine, never on the thread count.
cdef enum:
    GEMM_BLOCK_WORK = 1 << 22
    GEMM_MIN_EDGE = 32


cdef inline Py_ssize_t _gemm_blocks(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t nb = m * n * k // GEMM_BLOCK_WORK
    cdef Py_ssize_t edge = (m if m >= n else n) // GEMM_MIN_EDGE
    if nb > edge:
        nb = edge
    # a power of two, so that the blocks share evenly among 2 or 4 threads (3 blocks on 2 threads leave
    # one thread idle for a third of the product)
    if nb >= 4 and fastbp_thr.gemm_blocks_max >= 4:
        return 4
    return 2 if nb >= 2 and fastbp_thr.gemm_blocks_max >= 2 else 1


cdef inline void _block_bounds(Py_ssize_t extent, Py_ssize_t blk, Py_ssize_t nb, Py_ssize_t* lo,
                               Py_ssize_t* hi) noexcept nogil:
    cdef Py_ssize_t size = (extent + nb - 1) // nb
    lo[0] = blk * size
    hi[0] = lo[0] + size if lo[0] + size < extent else extent


cdef void _gemm_block(bint ta, bint tb, int m, int n, int k, real alpha, const real* a, int lda,
                      const real* b, int ldb, real beta, real* c, int ldc, Py_ssize_t blk,
                      Py_ssize_t nb, const Update* u) noexcept nogil:
    """Block blk of nb of C = alpha op(A) op(B) + beta C: rows of C when m >= n, else columns. With an
    epilogue (u.kind != UPD_NONE, csrc/_update.pxd; C C-contiguous, ldc == n), the elementwise pass from C
    into u's array runs on the block right after it is written, while it is in cache."""
    cdef Py_ssize_t lo, hi, r
    if m >= n:
        _block_bounds(m, blk, nb, &lo, &hi)
        if hi > lo:  # rows lo..hi of op(A): columns of A when transposed
            gemm_rm(ta, tb, <int>(hi - lo), n, k, alpha, a + (lo if ta else lo * lda), lda, b, ldb, beta,
                    c + lo * ldc, ldc)
            if u.kind != UPD_NONE:
                apply_update(u, c, lo * ldc, (hi - lo) * ldc)
    else:
        _block_bounds(n, blk, nb, &lo, &hi)
        if hi > lo:  # columns lo..hi of op(B): rows of B when transposed
            gemm_rm(ta, tb, m, <int>(hi - lo), k, alpha, a, lda, b + (lo * ldb if tb else lo), ldb, beta,
                    c + lo, ldc)
            if u.kind != UPD_NONE:
                for r in range(m):
                    apply_update(u, c, r * ldc + lo, hi - lo)


cdef void gemm_fixed(bint ta, bint tb, int m, int n, int k, real alpha, const real* a, int lda,
                     const real* b, int ldb, real beta, real* c, int ldc) noexcept nogil:
    """gemm_rm, bit-identical for any thread count when the BLAS thread hook is set (the caller made BLAS
    single-threaded with fastbp_blas_single_enter): fixed blocks on our threads. Without the hook, one
    call with the BLAS's own threads."""
    cdef Update none
    none.kind = UPD_NONE
    gemm_fixed_update(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, &none)


cdef void gemm_fixed_update(bint ta, bint tb, int m, int n, int k, real alpha, const real* a, int lda,
                            const real* b, int ldb, real beta, real* c, int ldc,
                            const Update* u) noexcept nogil:
    """gemm_fixed, then the epilogue u on C (ldc == n) block by block as the blocks are written; when the
    product is one block, one threaded pass over C after it."""
    cdef Py_ssize_t blk, nb
    if m == 0 or n == 0:
        return
    nb = 1 if fastbp_thr.blas_get == NULL else _gemm_blocks(m, n, k)
    if nb == 1:
        gemm_rm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        if u.kind != UPD_NONE:
            update_all(u, c, <Py_ssize_t>m * n, update_threads(<Py_ssize_t>m * n))
        return
    for blk in prange(nb, schedule="dynamic", num_threads=threads_for(<Py_ssize_t>m * n * k)):
        _gemm_block(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, blk, nb, u)


cdef void _linear_forward(const real[:, ::1] x, const real[:, ::1] w, const real[::1] b, bint has_bias,
                          real[:, ::1] y, const Update* epi) noexcept:
    cdef int single = fastbp_blas_single_enter()
    with nogil:
        _linear_forward_nogil(x, w, b, has_bias, y, epi)
    if single:
        fastbp_blas_single_exit()


cdef void _linear_forward_nogil(const real[:, ::1] x, const real[:, ::1] w, const real[::1] b,
                                bint has_bias, real[:, ::1] y, const Update* epi) noexcept nogil:
    """y = x w^T + b; with an epilogue (epi.kind == UPD_RELU) also relu(y) into epi.p, block by block."""
    cdef Py_ssize_t n = x.shape[0], fin = x.shape[1], fout = w.shape[0], i, j
    cdef real beta = 0
    if has_bias:
        for i in range(n):
            for j in range(fout):
                y[i, j] = b[j]
        beta = 1
    # empty dimensions before any pointer is taken (&w[0, 0] of an empty array is out of bounds)
    if n == 0 or fout == 0:
        return
    if fin == 0:
        if not has_bias:
            for i in range(n):
                for j in range(fout):
                    y[i, j] = 0
        if epi.kind != UPD_NONE:
            update_all(epi, &y[0, 0], n * fout, 1)
        return
    gemm_fixed_update(False, True, <int>n, <int>fout, <int>fin, <real>1, &x[0, 0], <int>fin, &w[0, 0],
                      <int>fin, beta, &y[0, 0], <int>fout, epi)


cdef void _linear_backward(const real[:, ::1] g, const real[:, ::1] x, const real[:, ::1] w,
                           real[:, ::1] dx, real[:, ::1] dw, real[::1] db,
                           bint need_dx, bint need_dw, bint need_db) noexcept:
    cdef int single = fastbp_blas_single_enter()
    with nogil:
        _linear_backward_nogil(g, x, w, dx, dw, db, need_dx, need_dw, need_db)
    if single:
        fastbp_blas_single_exit()


cdef void _linear_backward_nogil(const real[:, ::1] g, const real[:, ::1] x, const real[:, ::1] w,
                                 real[:, ::1] dx, real[:, ::1] dw, real[::1] db,
                                 bint need_dx, bint need_dw, bint need_db) noexcept nogil:
    cdef Py_ssize_t n = x.shape[0], fin = x.shape[1], fout = w.shape[0], i, j
    # empty dimensions are settled before any pointer is taken (&g[0, 0] of an empty array is out of bounds)
    if need_dx and fin > 0 and n > 0:
        if fout > 0:
            # dx[n, in] = g[n, out] @ w[out, in]
            gemm_fixed(False, False, <int>n, <int>fin, <int>fout, <real>1, &g[0, 0], <int>fout,
                       &w[0, 0], <int>fin, <real>0, &dx[0, 0], <int>fin)
        else:
            dx[:, :] = 0
    if need_dw and fout > 0 and fin > 0 and n == 0:
        dw[:, :] = 0
    elif need_dw and fout > 0 and fin > 0:
        # dw[out, in] = g[n, out]^T @ x[n, in]
        gemm_fixed(True, False, <int>fout, <int>fin, <int>n, <real>1, &g[0, 0], <int>fout,
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


def linear_forward(x, weight, bias=None, out=None, activation=None, activation_out=None):
    """y = x @ weight.T + bias for x (N, in), weight (out, in), bias (out,) or None; written into `out`
    (an (N, out) C-contiguous array of x's dtype) when given.

    activation="relu" also computes h = relu(y) in the same pass (each block of y as it is written, while
    it is in cache) and returns (y, h), h written into activation_out when given: the bits of
    linear_forward followed by relu_forward."""
    x, weight, bias = _check_linear(x, weight, bias)
    if activation not in (None, "relu"):
        raise ValueError(f"linear_forward: activation must be None or 'relu', got {activation!r}")
    if activation is None and activation_out is not None:
        raise ValueError("linear_forward: activation_out given without an activation")
    y = out_array(out, (x.shape[0], weight.shape[0]), x.dtype, "out", (x, weight, bias))
    cdef Update epi
    epi.kind = UPD_NONE
    h = None
    if activation is not None:
        h = out_array(activation_out, y.shape, x.dtype, "activation_out", (x, weight, bias, y))
        epi.kind = UPD_RELU
        epi.p = cnp.PyArray_DATA(<cnp.ndarray>h)
    has_bias = bias is not None
    b = bias if has_bias else np.empty(0, dtype=x.dtype)
    if x.dtype == np.float32:
        _linear_forward[float](x, weight, b, has_bias, y, &epi)
    else:
        _linear_forward[double](x, weight, b, has_bias, y, &epi)
    return y if h is None else (y, h)


def linear_backward(grad_out, x, weight, need_input_grad=True, need_weight_grad=True, need_bias_grad=True,
                    out=None):
    """Gradients of y = x @ weight.T + bias: returns (dx, dweight, dbias), None where not needed. out, if
    given, is a tuple (dx, dweight, dbias) of arrays (None entries allocate) the results are written into."""
    x, weight, _ = _check_linear(x, weight, None)
    grad_out = as_float_array(grad_out, "grad_out", 2)
    check_same_dtype(x, "x", grad_out, "grad_out")
    if grad_out.shape[0] != x.shape[0] or grad_out.shape[1] != weight.shape[0]:
        raise ValueError(f"linear_backward: grad_out has shape {grad_out.shape}, expected "
                         f"({x.shape[0]}, {weight.shape[0]}) for x {x.shape} and weight {weight.shape}")
    cdef bint ndx = bool(need_input_grad), ndw = bool(need_weight_grad), ndb = bool(need_bias_grad)
    dt = x.dtype
    ox, ow, ob = _out3(out, "linear_backward")
    ins = (grad_out, x, weight)
    dx = out_array(ox, x.shape, dt, "out[0]", ins) if ndx else _SCRATCH2[dt.num]
    dw = out_array(ow, weight.shape, dt, "out[1]", ins) if ndw else _SCRATCH2[dt.num]
    db = out_array(ob, (weight.shape[0],), dt, "out[2]", ins) if ndb else _SCRATCH1[dt.num]
    if dt == np.float32:
        _linear_backward[float](grad_out, x, weight, dx, dw, db, ndx, ndw, ndb)
    else:
        _linear_backward[double](grad_out, x, weight, dx, dw, db, ndx, ndw, ndb)
    return (dx if ndx else None, dw if ndw else None, db if ndb else None)


# unused outputs of linear_backward (never written: the need_* flags skip them)
_SCRATCH2 = {np.dtype(np.float32).num: np.empty((1, 1), np.float32), np.dtype(np.float64).num: np.empty((1, 1), np.float64)}
_SCRATCH1 = {np.dtype(np.float32).num: np.empty(1, np.float32), np.dtype(np.float64).num: np.empty(1, np.float64)}


def _out3(out, name):
    if out is None:
        return None, None, None
    if not isinstance(out, tuple) or len(out) != 3:
        raise TypeError(f"{name}: out must be a tuple of 3 arrays or None, got {type(out).__name__}")
    return out


cdef void _matmul(const real* a, const real* b, real* c, bint ta, bint tb, int m, int n, int k,
                  int lda, int ldb) noexcept nogil:
    cdef Py_ssize_t i
    if k == 0:
        for i in range(<Py_ssize_t>m * n):
            c[i] = 0
        return
    gemm_fixed(ta, tb, m, n, k, <real>1, a, lda, b, ldb, <real>0, c, n)


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
    cdef int single = fastbp_blas_single_enter()
    try:
        if a.dtype == np.float32:
            with nogil:
                _matmul[float](<float*>cnp.PyArray_DATA(aa), <float*>cnp.PyArray_DATA(bb),
                               <float*>cnp.PyArray_DATA(cc), ta, tb, im, iN, ik, lda, ldb)
        else:
            with nogil:
                _matmul[double](<double*>cnp.PyArray_DATA(aa), <double*>cnp.PyArray_DATA(bb),
                                <double*>cnp.PyArray_DATA(cc), ta, tb, im, iN, ik, lda, ldb)
    finally:
        if single:
            fastbp_blas_single_exit()
    return c
