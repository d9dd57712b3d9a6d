# Design: batch normalization forward and backward, and dropout's mask-and-scale.
#
# Batch norm works on x viewed as a C-contiguous (N, C, L) array: (N, C) input has L = 1, (N, C, L) is
# itself, (N, C, H, W) has L = H W. One channel is N planes of L values; plane p = n C + c is contiguous.
# Sums read the input in memory order: each plane is summed on its own in a fixed order (norm.h; planes of
# PLANE_MIN values or more, chunks of whole planes per prange iteration) or, for small planes, blocks of
# channels are summed over the samples; a channel's plane sums are added in sample order. The split depends
# only on the shape, so results are bit-identical for any thread count. Every prange body is a single call
# of a cdef function (nothing assigned in it but the loop index). Statistics are summed in double; y and dx
# are computed in the input's precision from constants rounded to it, elementwise, in memory order. The
# fused forms (activation="relu", relu_output=) apply relu_forward's / relu_backward's rule in the same
# passes.
#
#   training:  mean, var = batch mean and biased variance per channel; invstd = 1 / sqrt(var + eps)
#              y = (x - mean) * (weight * invstd) + bias
#              running stats (when given): running_mean = (1 - momentum) running_mean + momentum mean,
#              running_var = (1 - momentum) running_var + momentum var n / (n - 1)   (n = N L, unbiased)
#   evaluation: the same y with mean = running_mean, invstd = 1 / sqrt(running_var + eps)
#   backward (training): with sg = sum g, sgx = sum g (x - mean), n = N L, A = weight invstd:
#              dbias = sg, dweight = invstd sgx, dx = A g - A invstd^2 sgx / n (x - mean) - A sg / n
#   backward (evaluation): dx = A g (the statistics are constants), dweight and dbias as above.
#
# Dropout: y = x * (mask ? scale : 0) where mask is a bool array whose shape is a prefix of x's shape
# (mask.shape == x.shape for dropout, (N, C) for dropout2d on (N, C, H, W): one flag per plane). The mask is
# drawn by the caller (fastbp.nn.functional, from fastbp's generator) so both backends apply the same mask.
# x * 0 keeps NaN and inf as NaN, as PyTorch's input * mask / (1 - p). The backward is the same operation on
# the incoming gradient. Elementwise, parallel above PARALLEL_MIN elements.
cimport numpy as cnp
from cython.parallel cimport prange
from libc.math cimport sqrt
from _common cimport bind_threading, real, r_relu, as_float_array, check_same_dtype, threads_for, out_array

import math

import numpy as np

cnp.import_array()
bind_threading()


cdef extern from "norm.h" nogil:
    void bn_planes_stats_f(const float* x, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t C, Py_ssize_t L,
                           const double* K, double* part)
    void bn_planes_stats_d(const double* x, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t C, Py_ssize_t L,
                           const double* K, double* part)
    void bn_planes_grad_sums_f(const float* g, const float* x, const float* mk, Py_ssize_t p0, Py_ssize_t p1,
                               Py_ssize_t C, Py_ssize_t L, const double* mean, double* part)
    void bn_planes_grad_sums_d(const double* g, const double* x, const double* mk, Py_ssize_t p0, Py_ssize_t p1,
                               Py_ssize_t C, Py_ssize_t L, const double* mean, double* part)
    void bn_planes_apply_f(const float* x, float* y, float* r, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t C,
                           Py_ssize_t L, const float* mean, const float* coef)
    void bn_planes_apply_d(const double* x, double* y, double* r, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t C,
                           Py_ssize_t L, const double* mean, const double* coef)
    void bn_planes_grad_apply_f(const float* g, const float* x, const float* mk, float* dx, Py_ssize_t p0,
                                Py_ssize_t p1, Py_ssize_t C, Py_ssize_t L, const float* mean, const float* coef,
                                int constant_stats)
    void bn_planes_grad_apply_d(const double* g, const double* x, const double* mk, double* dx, Py_ssize_t p0,
                                Py_ssize_t p1, Py_ssize_t C, Py_ssize_t L, const double* mean,
                                const double* coef, int constant_stats)


cdef enum:
    PLANE_MIN = 8       # planes of at least this many values take the plane path (below: the row path)
    PLANE_CHUNK = 4096  # the plane path hands each thread whole planes, about this many values per call


cdef struct BNGeom:
    Py_ssize_t N, C, L
    Py_ssize_t pch      # planes per chunk of the plane path (a function of L only)
    Py_ssize_t nch      # chunks: ceil(N C / pch)


cdef inline void* _ptr(object a):
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline void* _optr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline double _shift_of(double K0) noexcept nogil:
    # an infinite or NaN first element would turn every x - K into inf or NaN (-inf - -inf = NaN): no shift
    # then, so the mean is the IEEE sum's (+-inf or NaN, as PyTorch's)
    return K0 if K0 - K0 == 0 else 0.0


# ----- batch normalization: the sums ------------------------------------------------------------------------
# Each channel's two sums (statistics: of x - K and (x - K)^2, K the channel's shift, _shift_of its first
# element; gradient: of g' and g' (x - mean), g' = grad_out masked by the ReLU's output when fused) are the
# planes' sums added in
# sample order, a plane's sum being norm.h's (lanes and tree; for planes under 8 values, the values added in
# order, which is what the lanes give). Planes of PLANE_MIN values or more take the plane path (chunks of
# whole planes per prange iteration, partial sums part[2 p], part[2 p + 1] for plane p = n C + c, then added
# per channel);
# smaller planes the row path (blocks of ROW_BLOCK channels per iteration, each block reading its channels
# sample after sample: contiguous for (N, C) input). Either way the bits do not depend on the threads.
cdef enum:
    ROW_BLOCK = 32


cdef inline void _chunk(const BNGeom* g, Py_ssize_t k, Py_ssize_t* p0, Py_ssize_t* p1) noexcept nogil:
    p0[0] = k * g.pch
    p1[0] = p0[0] + g.pch if p0[0] + g.pch < g.N * g.C else g.N * g.C


cdef void _sums_chunk(const real* a, const real* x, const real* mk, const BNGeom* g, const double* ref,
                      Py_ssize_t k, double* part, bint grads) noexcept nogil:
    cdef Py_ssize_t p0, p1
    _chunk(g, k, &p0, &p1)
    if real is float:
        if grads:
            bn_planes_grad_sums_f(a, x, mk, p0, p1, g.C, g.L, ref, part)
        else:
            bn_planes_stats_f(a, p0, p1, g.C, g.L, ref, part)
    else:
        if grads:
            bn_planes_grad_sums_d(a, x, mk, p0, p1, g.C, g.L, ref, part)
        else:
            bn_planes_stats_d(a, p0, p1, g.C, g.L, ref, part)


cdef void _sums_block(const real* a, const real* x, const real* mk, const BNGeom* g, const double* ref,
                      Py_ssize_t blk, double* tot, bint grads) noexcept nogil:
    """Row path: channels blk ROW_BLOCK .. (blk + 1) ROW_BLOCK - 1 (clipped to C); tot[2 c], tot[2 c + 1]."""
    cdef Py_ssize_t c0 = blk * ROW_BLOCK, c1 = c0 + ROW_BLOCK, n, c, l, i
    cdef double s1[ROW_BLOCK]
    cdef double s2[ROW_BLOCK]
    cdef double d, v, p1, p2
    if c1 > g.C:
        c1 = g.C
    for c in range(c0, c1):
        s1[c - c0] = 0
        s2[c - c0] = 0
    if g.L == 1:  # a plane's sum is its value (0 + v = v for the sums here: they are never -0)
        for n in range(g.N):
            if grads and mk != NULL:
                for c in range(c0, c1):
                    i = n * g.C + c
                    v = <double>a[i]
                    v = v if mk[i] > 0 else 0
                    s1[c - c0] = s1[c - c0] + v
                    s2[c - c0] = s2[c - c0] + v * (<double>x[i] - ref[c])
            elif grads:
                for c in range(c0, c1):
                    i = n * g.C + c
                    v = <double>a[i]
                    s1[c - c0] = s1[c - c0] + v
                    s2[c - c0] = s2[c - c0] + v * (<double>x[i] - ref[c])
            else:
                for c in range(c0, c1):
                    d = <double>a[n * g.C + c] - ref[c]
                    s1[c - c0] = s1[c - c0] + d
                    s2[c - c0] = s2[c - c0] + d * d
    else:
        for n in range(g.N):
            for c in range(c0, c1):
                p1 = 0
                p2 = 0
                for l in range(g.L):
                    i = (n * g.C + c) * g.L + l
                    if grads:
                        v = <double>(a[i] if mk == NULL or mk[i] > 0 else 0)
                        p1 = p1 + v
                        p2 = p2 + v * (<double>x[i] - ref[c])
                    else:
                        d = <double>a[i] - ref[c]
                        p1 = p1 + d
                        p2 = p2 + d * d
                s1[c - c0] = s1[c - c0] + p1
                s2[c - c0] = s2[c - c0] + p2
    for c in range(c0, c1):
        tot[2 * c] = s1[c - c0]
        tot[2 * c + 1] = s2[c - c0]


cdef void _channel_totals(const real* a, const real* x, const real* mk, const BNGeom* g, const double* ref,
                          double* part, double* tot, bint grads, int nt) noexcept nogil:
    """Every channel's two sums into tot[2 c], tot[2 c + 1]: the statistics' (grads false; a is x, ref[c] the
    channel's shift K) or the gradient's (grads; a is grad_out, masked by mk when not NULL; ref[c] the
    channel's mean, in double)."""
    cdef Py_ssize_t k, n, c, blk
    cdef double u, v
    if g.L >= PLANE_MIN:
        for k in prange(g.nch, schedule="static", num_threads=nt):
            _sums_chunk(a, x, mk, g, ref, k, part, grads)
        for c in range(g.C):
            u = 0
            v = 0
            for n in range(g.N):
                u = u + part[2 * (n * g.C + c)]
                v = v + part[2 * (n * g.C + c) + 1]
            tot[2 * c] = u
            tot[2 * c + 1] = v
    else:
        for blk in prange((g.C + ROW_BLOCK - 1) // ROW_BLOCK, schedule="static", num_threads=nt):
            _sums_block(a, x, mk, g, ref, blk, tot, grads)


# ----- batch normalization: the elementwise passes ----------------------------------------------------------
cdef void _apply_chunk(const real* x, real* y, real* r, const BNGeom* g, Py_ssize_t k, const real* smean,
                       const real* coef) noexcept nogil:
    cdef Py_ssize_t p0, p1
    _chunk(g, k, &p0, &p1)
    if real is float:
        bn_planes_apply_f(x, y, r, p0, p1, g.C, g.L, smean, coef)
    else:
        bn_planes_apply_d(x, y, r, p0, p1, g.C, g.L, smean, coef)


cdef void _apply_row(const real* x, real* y, real* r, const BNGeom* g, Py_ssize_t n, const real* smean,
                     const real* coef) noexcept nogil:
    cdef Py_ssize_t c, l, i, o = n * g.C * g.L
    cdef real m, sc, sh, v
    if g.L == 1:  # (N, C) input: one loop over the channels of sample n
        if r == NULL:
            for c in range(g.C):
                y[o + c] = (x[o + c] - smean[c]) * coef[c] + coef[g.C + c]
        elif y == NULL:
            for c in range(g.C):
                r[o + c] = r_relu((x[o + c] - smean[c]) * coef[c] + coef[g.C + c])
        else:
            for c in range(g.C):
                v = (x[o + c] - smean[c]) * coef[c] + coef[g.C + c]
                y[o + c] = v
                r[o + c] = r_relu(v)
        return
    for c in range(g.C):
        m = smean[c]
        sc = coef[c]
        sh = coef[g.C + c]
        for l in range(g.L):
            i = (n * g.C + c) * g.L + l
            v = (x[i] - m) * sc + sh
            if y != NULL:
                y[i] = v
            if r != NULL:
                r[i] = r_relu(v)


cdef void _grad_apply_chunk(const real* gy, const real* x, const real* mk, real* dx, const BNGeom* g,
                            Py_ssize_t k, const real* smean, const real* coef, bint constant) noexcept nogil:
    cdef Py_ssize_t p0, p1
    _chunk(g, k, &p0, &p1)
    if real is float:
        bn_planes_grad_apply_f(gy, x, mk, dx, p0, p1, g.C, g.L, smean, coef, constant)
    else:
        bn_planes_grad_apply_d(gy, x, mk, dx, p0, p1, g.C, g.L, smean, coef, constant)


cdef void _grad_apply_row(const real* gy, const real* x, const real* mk, real* dx, const BNGeom* g,
                          Py_ssize_t n, const real* smean, const real* coef, bint constant) noexcept nogil:
    cdef Py_ssize_t c, l, i, o = n * g.C * g.L
    cdef real m, A, B, E, gv
    if g.L == 1 and mk == NULL and not constant:  # (N, C) input in training: one loop over the channels
        for c in range(g.C):
            dx[o + c] = coef[c] * gy[o + c] + (coef[g.C + c] * (x[o + c] - smean[c]) + coef[2 * g.C + c])
        return
    for c in range(g.C):
        m = smean[c]
        A = coef[c]
        B = coef[g.C + c]
        E = coef[2 * g.C + c]
        for l in range(g.L):
            i = (n * g.C + c) * g.L + l
            gv = gy[i] if mk == NULL or mk[i] > 0 else 0
            if constant:
                dx[i] = A * gv
            else:
                dx[i] = A * gv + (B * (x[i] - m) + E)


cdef void _forward(const real* x, real* y, real* r, const BNGeom* g, const real* w, const real* b, real* smean,
                   real* sinvstd, double* bmean, double* bvar, bint training, double eps, double* part,
                   double* tot, double* ref, real* coef) noexcept nogil:
    cdef Py_ssize_t c, k, n
    cdef int nt = threads_for(g.N * g.C * g.L)
    cdef double s1, s2, cnt = <double>(g.N * g.L), m1, v
    if training:
        for c in range(g.C):
            ref[c] = _shift_of(<double>x[c * g.L])
        _channel_totals(x, NULL, NULL, g, ref, part, tot, False, nt)
        for c in range(g.C):
            s1 = tot[2 * c]
            s2 = tot[2 * c + 1]
            m1 = s1 / cnt
            v = s2 / cnt - m1 * m1
            bmean[c] = ref[c] + m1
            bvar[c] = 0 if v < 0 else v  # NaN passes through
            smean[c] = <real>bmean[c]
            sinvstd[c] = <real>(1.0 / sqrt(bvar[c] + eps))
    for c in range(g.C):
        coef[c] = <real>((<double>w[c] if w != NULL else 1.0) * <double>sinvstd[c])
        coef[g.C + c] = b[c] if b != NULL else 0
    if g.L >= PLANE_MIN:
        for k in prange(g.nch, schedule="static", num_threads=nt):
            _apply_chunk(x, y, r, g, k, smean, coef)
    else:
        for n in prange(g.N, schedule="static", num_threads=nt):
            _apply_row(x, y, r, g, n, smean, coef)


cdef void _backward(const real* gy, const real* x, const real* mk, real* dx, const BNGeom* g, const real* w,
                    const real* smean, const real* sinvstd, real* dw, real* db, bint training, double* part,
                    double* tot, double* ref, real* coef) noexcept nogil:
    cdef Py_ssize_t c, k, n
    cdef int nt = threads_for(g.N * g.C * g.L)
    cdef double sg = 0, sgx = 0, invstd, A, cnt = <double>(g.N * g.L)
    cdef bint sums = training or dw != NULL or db != NULL
    if sums:
        for c in range(g.C):
            ref[c] = <double>smean[c]
        _channel_totals(gy, x, mk, g, ref, part, tot, True, nt)
    for c in range(g.C):
        if sums:
            sg = tot[2 * c]
            sgx = tot[2 * c + 1]
        invstd = sinvstd[c]
        if dw != NULL:
            dw[c] = <real>(sgx * invstd)
        if db != NULL:
            db[c] = <real>sg
        A = (<double>w[c] if w != NULL else 1.0) * invstd
        coef[c] = <real>A
        coef[g.C + c] = <real>(-A * invstd * invstd * sgx / cnt if training else 0.0)
        coef[2 * g.C + c] = <real>(-A * sg / cnt if training else 0.0)
    if dx == NULL:
        return
    if g.L >= PLANE_MIN:
        for k in prange(g.nch, schedule="static", num_threads=nt):
            _grad_apply_chunk(gy, x, mk, dx, g, k, smean, coef, not training)
    else:
        for n in prange(g.N, schedule="static", num_threads=nt):
            _grad_apply_row(gy, x, mk, dx, g, n, smean, coef, not training)


# ----- batch normalization: validation (before any nogil code) ---------------------------------------------
cdef object _geometry(BNGeom* g, object x, str op):
    if x.ndim < 2:
        raise ValueError(f"{op}: input must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    g.N = x.shape[0]
    g.C = x.shape[1]
    g.L = 1
    for d in x.shape[2:]:
        g.L *= d
    g.pch = PLANE_CHUNK // g.L if 0 < g.L < PLANE_CHUNK else 1  # (empty planes never reach a loop)
    g.nch = (g.N * g.C + g.pch - 1) // g.pch
    return x


cdef object _channel_vector(object a, str name, object x, str op, bint writeable=False):
    """A 1-D array of x.shape[1] values of x's dtype (None stays None)."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{op}: {name} must be a numpy.ndarray or None, got {type(a).__name__}")
    if a.dtype != x.dtype:
        raise TypeError(f"{op}: {name} has dtype {a.dtype} but the input has dtype {x.dtype}; they must match")
    if a.ndim != 1 or a.shape[0] != x.shape[1]:
        raise ValueError(f"{op}: {name} has shape {a.shape}, expected ({x.shape[1]},): one value per channel "
                         f"of the input (shape {x.shape}, channels in dimension 1)")
    if writeable:
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{op}: {name} must be a writeable C-contiguous array (it is updated in place)")
        return a
    return np.ascontiguousarray(a)


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5, out=None,
                       activation=None, activation_out=None):
    """Batch normalization of x (N, C, ...) over every dimension but the channel one (dim 1), as PyTorch's
    batch_norm. Returns (y, save_mean, save_invstd), the last two of shape (C,) in x's dtype.

    training: batch statistics; running_mean and running_var (both None, or both given, C-contiguous, x's
    dtype) are updated in place with `momentum` (the unbiased variance goes into running_var).
    Evaluation: running_mean and running_var are required and used. weight and bias may be None
    (affine=False). The statistics of each channel are summed in a fixed order (any thread count gives the
    same bits). out: the array y is written to.

    activation="relu" (a BatchNorm followed by a ReLU, as captured steps run it): returns (y, save_mean,
    save_invstd, relu(y)) with relu(y) in activation_out (or a new array); relu(y) has the bits of
    relu_forward(y). y itself is written only when `out` is given (it is None otherwise)."""
    cdef BNGeom g
    op = "batch_norm"
    x = _geometry(&g, as_float_array(x, "x"), op)
    training = bool(training)
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")
    if activation not in (None, "relu"):
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")
    if activation is None and activation_out is not None:
        raise ValueError(f"{op}: activation_out is given but activation is None")
    weight = _channel_vector(weight, "weight", x, op)
    bias = _channel_vector(bias, "bias", x, op)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: pass both running_mean and running_var, or neither")
    running_mean = _channel_vector(running_mean, "running_mean", x, op, True)
    running_var = _channel_vector(running_var, "running_var", x, op, True)
    cdef Py_ssize_t n = g.N * g.L
    if training:
        if n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        if running_mean is not None:
            momentum = float(momentum)
            if not 0 <= momentum <= 1:
                raise ValueError(f"{op}: momentum must be in [0, 1], got {momentum}")
    elif running_mean is None:
        raise ValueError(f"{op}: evaluation mode (training=False) needs running_mean and running_var")
    ins = (x, weight, bias, running_mean, running_var)
    y = None
    if activation is None or out is not None:
        y = out_array(out, x.shape, x.dtype, f"{op}: out", ins)
    r = None
    if activation is not None:
        r = out_array(activation_out, x.shape, x.dtype, f"{op}: activation_out", ins + (y,))
    smean = np.empty(g.C, dtype=x.dtype)
    sinvstd = np.empty(g.C, dtype=x.dtype)
    bmean = np.empty(g.C, dtype=np.float64)
    bvar = np.empty(g.C, dtype=np.float64)
    if not training:
        smean[...] = running_mean
        sinvstd[...] = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    result = (y, smean, sinvstd) if activation is None else (y, smean, sinvstd, r)
    if n == 0 or g.C == 0:
        return result
    part = np.empty(2 * g.N * g.C if training and g.L >= PLANE_MIN else 0, dtype=np.float64)
    tot = np.empty(3 * g.C, dtype=np.float64)  # the channels' two sums, then their shifts (ref)
    coef = np.empty(2 * g.C, dtype=x.dtype)
    cdef void* px = _ptr(x)
    cdef void* py = _optr(y)
    cdef void* pr = _optr(r)
    cdef void* pw = _optr(weight)
    cdef void* pb = _optr(bias)
    cdef void* pm = _ptr(smean)
    cdef void* ps = _ptr(sinvstd)
    cdef double* pbm = <double*>_ptr(bmean)
    cdef double* pbv = <double*>_ptr(bvar)
    cdef double* ppart = <double*>_ptr(part)
    cdef double* ptot = <double*>_ptr(tot)
    cdef void* pcoef = _ptr(coef)
    cdef bint tr = training
    cdef double e = eps
    if x.dtype == np.float32:
        with nogil:
            _forward[float](<float*>px, <float*>py, <float*>pr, &g, <float*>pw, <float*>pb, <float*>pm,
                            <float*>ps, pbm, pbv, tr, e, ppart, ptot, ptot + 2 * g.C, <float*>pcoef)
    else:
        with nogil:
            _forward[double](<double*>px, <double*>py, <double*>pr, &g, <double*>pw, <double*>pb, <double*>pm,
                             <double*>ps, pbm, pbv, tr, e, ppart, ptot, ptot + 2 * g.C, <double*>pcoef)
    if training and running_mean is not None:
        running_mean[...] = (1 - momentum) * running_mean.astype(np.float64) + momentum * bmean
        unbiased = bvar * (<double>n / <double>(n - 1))
        running_var[...] = (1 - momentum) * running_var.astype(np.float64) + momentum * unbiased
    return result


cdef object _grad_out(object out, Py_ssize_t i, tuple shape, object dtype, str name, bint need, tuple inputs):
    if not need:
        return None
    if out is None or out[i] is None:
        return np.empty(shape, dtype=dtype)
    return out_array(out[i], shape, dtype, name, inputs)


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training, need_input_grad=True,
                        need_weight_grad=True, need_bias_grad=True, relu_output=None, out=None):
    """Gradients of batch_norm_forward: (dx, dweight, dbias), each None where not needed (dweight and dbias
    also None when weight is None). save_mean and save_invstd are what the forward returned (in evaluation
    mode: the running mean and 1 / sqrt(running_var + eps), constants). out: a tuple of three arrays (or
    None each) the gradients are written to.

    relu_output (a BatchNorm followed by a ReLU, as captured steps run it): grad_out is the gradient of
    relu(y), relu_output is relu(y), and the ReLU's backward (grad_out where relu_output > 0, else 0: the bits
    of relu_backward) is applied first."""
    cdef BNGeom g
    op = "batch_norm_backward"
    x = _geometry(&g, as_float_array(x, "x"), op)
    grad_out = as_float_array(grad_out, "grad_out")
    check_same_dtype(x, "x", grad_out, "grad_out")
    if grad_out.shape != x.shape:
        raise ValueError(f"{op}: grad_out has shape {grad_out.shape} but x has shape {x.shape}")
    if relu_output is not None:
        relu_output = as_float_array(relu_output, "relu_output")
        check_same_dtype(x, "x", relu_output, "relu_output")
        if relu_output.shape != x.shape:
            raise ValueError(f"{op}: relu_output has shape {relu_output.shape} but x has shape {x.shape}")
    weight = _channel_vector(weight, "weight", x, op)
    if save_mean is None or save_invstd is None:
        raise ValueError(f"{op}: save_mean and save_invstd are required (from batch_norm_forward)")
    save_mean = _channel_vector(save_mean, "save_mean", x, op)
    save_invstd = _channel_vector(save_invstd, "save_invstd", x, op)
    cdef bint tr = bool(training)
    if tr and g.N * g.L < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    if out is not None and (not isinstance(out, tuple) or len(out) != 3):
        raise ValueError(f"{op}: out must be a tuple of three arrays or None (dx, dweight, dbias)")
    ins = (grad_out, x, relu_output, weight, save_mean, save_invstd)
    dx = _grad_out(out, 0, x.shape, x.dtype, f"{op}: out[0]", need_input_grad, ins)
    dw = _grad_out(out, 1, (g.C,), x.dtype, f"{op}: out[1]", need_weight_grad and weight is not None, ins + (dx,))
    db = _grad_out(out, 2, (g.C,), x.dtype, f"{op}: out[2]", need_bias_grad and weight is not None,
                   ins + (dx, dw))
    if g.N * g.L == 0 or g.C == 0 or (dx is None and dw is None and db is None):
        for a in (dw, db):
            if a is not None:
                a[...] = 0
        return dx, dw, db
    part = np.empty(2 * g.N * g.C if g.L >= PLANE_MIN else 0, dtype=np.float64)
    tot = np.empty(3 * g.C, dtype=np.float64)  # the channels' two sums, then their means in double (ref)
    coef = np.empty(3 * g.C, dtype=x.dtype)
    cdef void* pg = _ptr(grad_out)
    cdef void* px = _ptr(x)
    cdef void* pmk = _optr(relu_output)
    cdef void* pdx = _optr(dx)
    cdef void* pw = _optr(weight)
    cdef void* pm = _ptr(save_mean)
    cdef void* ps = _ptr(save_invstd)
    cdef void* pdw = _optr(dw)
    cdef void* pdb = _optr(db)
    cdef double* ppart = <double*>_ptr(part)
    cdef double* ptot = <double*>_ptr(tot)
    cdef void* pcoef = _ptr(coef)
    if x.dtype == np.float32:
        with nogil:
            _backward[float](<float*>pg, <float*>px, <float*>pmk, <float*>pdx, &g, <float*>pw, <float*>pm,
                             <float*>ps, <float*>pdw, <float*>pdb, tr, ppart, ptot, ptot + 2 * g.C,
                             <float*>pcoef)
    else:
        with nogil:
            _backward[double](<double*>pg, <double*>px, <double*>pmk, <double*>pdx, &g, <double*>pw,
                              <double*>pm, <double*>ps, <double*>pdw, <double*>pdb, tr, ppart, ptot,
                              ptot + 2 * g.C, <double*>pcoef)
    return dx, dw, db


# ----- dropout ----------------------------------------------------------------------------------------------
cdef enum:
    MASK_BLOCK = 16384  # elements per prange iteration of elementwise dropout


cdef void _mask_plane(const real* x, real* y, Py_ssize_t L, real k) noexcept nogil:
    """One plane of channel-wise dropout: y = x * k."""
    cdef Py_ssize_t i
    for i in range(L):
        y[i] = x[i] * k


cdef void _mask_block(const real* x, real* y, const unsigned char* mask, Py_ssize_t n, Py_ssize_t b,
                      real scale) noexcept nogil:
    """Block b of elementwise dropout: elements [b MASK_BLOCK, min(n, (b + 1) MASK_BLOCK))."""
    cdef Py_ssize_t i, lo = b * MASK_BLOCK, hi = lo + MASK_BLOCK
    if hi > n:
        hi = n
    for i in range(lo, hi):
        y[i] = x[i] * (scale if mask[i] else 0)


cdef void _mask_scale(const real* x, real* y, const unsigned char* mask, Py_ssize_t P, Py_ssize_t L,
                      real scale) noexcept nogil:
    """y[p, :] = x[p, :] * (mask[p] ? scale : 0) for P planes of L values (L = 1: elementwise, in blocks)."""
    cdef Py_ssize_t p, b
    if L == 1:
        for b in prange((P + MASK_BLOCK - 1) // MASK_BLOCK, schedule="static", num_threads=threads_for(P)):
            _mask_block(x, y, mask, P, b, scale)
    else:
        for p in prange(P, schedule="static", num_threads=threads_for(P * L)):
            _mask_plane(x + p * L, y + p * L, L, scale if mask[p] else 0)


def dropout_mask_scale(x, mask, scale):
    """x * (mask ? scale : 0), with the bool mask broadcast over the trailing dimensions of x that it lacks:
    mask.shape must equal x.shape[:mask.ndim] (x.shape for elementwise dropout, (N, C) for channel-wise
    dropout of (N, C, H, W)). Dropout's forward (scale = 1 / (1 - p)) and its backward (on the gradient)."""
    op = "dropout_mask_scale"
    x = as_float_array(x, "x")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError(f"{op}: mask must be a numpy.ndarray of dtype bool, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.ndim > x.ndim or mask.shape != x.shape[:mask.ndim]:
        raise ValueError(f"{op}: mask shape {mask.shape} must be a leading part of the input shape {x.shape}")
    mask = np.ascontiguousarray(mask)
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be finite, got {scale}")
    y = np.empty(x.shape, dtype=x.dtype)
    cdef Py_ssize_t P = mask.size, L = (x.size // P) if P else 0
    if P == 0 or L == 0:
        return y
    cdef void* px = _ptr(x)
    cdef void* py = _ptr(y)
    cdef const unsigned char* pm = <const unsigned char*>_ptr(mask)
    cdef double s = scale
    if x.dtype == np.float32:
        with nogil:
            _mask_scale[float](<float*>px, <float*>py, pm, P, L, <float>s)
    else:
        with nogil:
            _mask_scale[double](<double*>px, <double*>py, pm, P, L, s)
    return y
