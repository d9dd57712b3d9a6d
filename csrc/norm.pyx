# Design: batch normalization forward and backward, and dropout's mask-and-scale.
#
# Batch norm works on x viewed as a C-contiguous (N, C, L) array: (N, C) input has L = 1, (N, C, L) is
# itself, (N, C, H, W) has L = H W. One channel is N planes of L values. Every loop is a prange over
# channels whose body is a single call of a per-channel cdef function (_forward_channel, _backward_channel;
# their inner loops are in csrc/norm.h), so nothing is assigned in the prange body but the loop index.
# Each channel's sums run serially in a fixed order (eight double partial sums, see norm.h), so results are
# bit-identical for any thread count. Statistics are summed in double; y and dx are computed in the input's
# precision from constants rounded to it.
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
from _common cimport real, as_float_array, check_same_dtype, threads_for

import math

import numpy as np

cnp.import_array()


cdef extern from "norm.h" nogil:
    void bn_stats_f(const float* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t c, double* mean,
                    double* var)
    void bn_stats_d(const double* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t c, double* mean,
                    double* var)
    void bn_apply_f(const float* x, float* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t c, float m,
                    float scale, float shift)
    void bn_apply_d(const double* x, double* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t c,
                    double m, double scale, double shift)
    void bn_grad_sums_f(const float* g, const float* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, Py_ssize_t c,
                        double mean, double* sg, double* sgx)
    void bn_grad_sums_d(const double* g, const double* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
                        Py_ssize_t c, double mean, double* sg, double* sgx)
    void bn_grad_apply_f(const float* g, const float* x, float* dx, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
                         Py_ssize_t c, float m, float A, float B, float E, int constant_stats)
    void bn_grad_apply_d(const double* g, const double* x, double* dx, Py_ssize_t N, Py_ssize_t C,
                         Py_ssize_t L, Py_ssize_t c, double m, double A, double B, double E, int constant_stats)


cdef struct BNGeom:
    Py_ssize_t N, C, L


cdef inline void* _ptr(object a):
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline void* _optr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


# ----- batch normalization: per-channel work ----------------------------------------------------------------
cdef void _forward_channel(const real* x, real* y, const BNGeom* g, Py_ssize_t c, const real* w, const real* b,
                           real* smean, real* sinvstd, double* bmean, double* bvar, bint training,
                           double eps) noexcept nogil:
    """Channel c: batch statistics (training; stored in smean, sinvstd and in double in bmean, bvar) or the
    given ones (evaluation: smean, sinvstd hold them), then y."""
    cdef double mean, var, invstd, scale
    if training:
        if real is float:
            bn_stats_f(x, g.N, g.C, g.L, c, &mean, &var)
        else:
            bn_stats_d(x, g.N, g.C, g.L, c, &mean, &var)
        invstd = 1.0 / sqrt(var + eps)
        bmean[c] = mean
        bvar[c] = var
        smean[c] = <real>mean
        sinvstd[c] = <real>invstd
    scale = (<double>w[c] if w != NULL else 1.0) * <double>sinvstd[c]
    if real is float:
        bn_apply_f(x, y, g.N, g.C, g.L, c, smean[c], <float>scale, b[c] if b != NULL else 0)
    else:
        bn_apply_d(x, y, g.N, g.C, g.L, c, smean[c], scale, b[c] if b != NULL else 0)


cdef void _backward_channel(const real* gy, const real* x, real* dx, const BNGeom* g, Py_ssize_t c,
                            const real* w, const real* smean, const real* sinvstd, real* dw, real* db,
                            bint training) noexcept nogil:
    cdef double sg = 0, sgx = 0, invstd = sinvstd[c], n = <double>(g.N * g.L)
    cdef double A, B, E
    if training or dw != NULL or db != NULL:
        if real is float:
            bn_grad_sums_f(gy, x, g.N, g.C, g.L, c, smean[c], &sg, &sgx)
        else:
            bn_grad_sums_d(gy, x, g.N, g.C, g.L, c, smean[c], &sg, &sgx)
    if dw != NULL:
        dw[c] = <real>(sgx * invstd)
    if db != NULL:
        db[c] = <real>sg
    if dx == NULL:
        return
    A = (<double>w[c] if w != NULL else 1.0) * invstd
    B = -A * invstd * invstd * sgx / n if training else 0.0
    E = -A * sg / n if training else 0.0
    if real is float:
        bn_grad_apply_f(gy, x, dx, g.N, g.C, g.L, c, smean[c], <float>A, <float>B, <float>E, not training)
    else:
        bn_grad_apply_d(gy, x, dx, g.N, g.C, g.L, c, smean[c], A, B, E, not training)


cdef void _forward(const real* x, real* y, const BNGeom* g, const real* w, const real* b, real* smean,
                   real* sinvstd, double* bmean, double* bvar, bint training, double eps) noexcept nogil:
    cdef Py_ssize_t c
    for c in prange(g.C, schedule="static", num_threads=threads_for(g.N * g.C * g.L)):
        _forward_channel(x, y, g, c, w, b, smean, sinvstd, bmean, bvar, training, eps)


cdef void _backward(const real* gy, const real* x, real* dx, const BNGeom* g, const real* w, const real* smean,
                    const real* sinvstd, real* dw, real* db, bint training) noexcept nogil:
    cdef Py_ssize_t c
    for c in prange(g.C, schedule="static", num_threads=threads_for(g.N * g.C * g.L)):
        _backward_channel(gy, x, dx, g, c, w, smean, sinvstd, dw, db, training)


# ----- batch normalization: validation (before any nogil code) ---------------------------------------------
cdef object _geometry(BNGeom* g, object x, str op):
    if x.ndim < 2:
        raise ValueError(f"{op}: input must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    g.N = x.shape[0]
    g.C = x.shape[1]
    g.L = 1
    for d in x.shape[2:]:
        g.L *= d
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


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Batch normalization of x (N, C, ...) over every dimension but the channel one (dim 1), as PyTorch's
    batch_norm. Returns (y, save_mean, save_invstd), the last two of shape (C,) in x's dtype.

    training: batch statistics; running_mean and running_var (both None, or both given, C-contiguous, x's
    dtype) are updated in place with `momentum` (the unbiased variance goes into running_var).
    Evaluation: running_mean and running_var are required and used. weight and bias may be None
    (affine=False). The statistics of each channel are summed in a fixed order (any thread count gives the
    same bits)."""
    cdef BNGeom g
    op = "batch_norm"
    x = _geometry(&g, as_float_array(x, "x"), op)
    training = bool(training)
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")
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
    y = np.empty(x.shape, dtype=x.dtype)
    smean = np.empty(g.C, dtype=x.dtype)
    sinvstd = np.empty(g.C, dtype=x.dtype)
    bmean = np.empty(g.C, dtype=np.float64)
    bvar = np.empty(g.C, dtype=np.float64)
    if not training:
        smean[...] = running_mean
        sinvstd[...] = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    if n == 0 or g.C == 0:
        return y, smean, sinvstd
    cdef void* px = _ptr(x)
    cdef void* py = _ptr(y)
    cdef void* pw = _optr(weight)
    cdef void* pb = _optr(bias)
    cdef void* pm = _ptr(smean)
    cdef void* ps = _ptr(sinvstd)
    cdef double* pbm = <double*>_ptr(bmean)
    cdef double* pbv = <double*>_ptr(bvar)
    cdef bint tr = training
    cdef double e = eps
    if x.dtype == np.float32:
        with nogil:
            _forward[float](<float*>px, <float*>py, &g, <float*>pw, <float*>pb, <float*>pm, <float*>ps, pbm, pbv,
                            tr, e)
    else:
        with nogil:
            _forward[double](<double*>px, <double*>py, &g, <double*>pw, <double*>pb, <double*>pm, <double*>ps,
                             pbm, pbv, tr, e)
    if training and running_mean is not None:
        running_mean[...] = (1 - momentum) * running_mean.astype(np.float64) + momentum * bmean
        unbiased = bvar * (<double>n / <double>(n - 1))
        running_var[...] = (1 - momentum) * running_var.astype(np.float64) + momentum * unbiased
    return y, smean, sinvstd


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training, need_input_grad=True,
                        need_weight_grad=True, need_bias_grad=True):
    """Gradients of batch_norm_forward: (dx, dweight, dbias), each None where not needed (dweight and dbias
    also None when weight is None). save_mean and save_invstd are what the forward returned (in evaluation
    mode: the running mean and 1 / sqrt(running_var + eps), constants)."""
    cdef BNGeom g
    op = "batch_norm_backward"
    x = _geometry(&g, as_float_array(x, "x"), op)
    grad_out = as_float_array(grad_out, "grad_out")
    check_same_dtype(x, "x", grad_out, "grad_out")
    if grad_out.shape != x.shape:
        raise ValueError(f"{op}: grad_out has shape {grad_out.shape} but x has shape {x.shape}")
    weight = _channel_vector(weight, "weight", x, op)
    if save_mean is None or save_invstd is None:
        raise ValueError(f"{op}: save_mean and save_invstd are required (from batch_norm_forward)")
    save_mean = _channel_vector(save_mean, "save_mean", x, op)
    save_invstd = _channel_vector(save_invstd, "save_invstd", x, op)
    cdef bint tr = bool(training)
    if tr and g.N * g.L < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    dx = np.empty(x.shape, dtype=x.dtype) if need_input_grad else None
    dw = np.zeros(g.C, dtype=x.dtype) if need_weight_grad and weight is not None else None
    db = np.zeros(g.C, dtype=x.dtype) if need_bias_grad and weight is not None else None
    if g.N * g.L == 0 or g.C == 0 or (dx is None and dw is None and db is None):
        return dx, dw, db
    cdef void* pg = _ptr(grad_out)
    cdef void* px = _ptr(x)
    cdef void* pdx = _optr(dx)
    cdef void* pw = _optr(weight)
    cdef void* pm = _ptr(save_mean)
    cdef void* ps = _ptr(save_invstd)
    cdef void* pdw = _optr(dw)
    cdef void* pdb = _optr(db)
    if x.dtype == np.float32:
        with nogil:
            _backward[float](<float*>pg, <float*>px, <float*>pdx, &g, <float*>pw, <float*>pm, <float*>ps,
                             <float*>pdw, <float*>pdb, tr)
    else:
        with nogil:
            _backward[double](<double*>pg, <double*>px, <double*>pdx, &g, <double*>pw, <double*>pm,
                              <double*>ps, <double*>pdw, <double*>pdb, tr)
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
