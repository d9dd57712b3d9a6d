# Design: 2-D pooling over NCHW planes, forward and backward.
#   * max_pool2d(kernel, stride = kernel, padding, dilation): forward writes y and the argmax of each
#     window as a flat index ih * W + iw into its (H, W) input plane (int64, as PyTorch); backward zeroes
#     dx and adds grad_out[p] at dx[index[p]], so overlapping windows accumulate.
#     Tie rule: the first maximum in row-major window order wins (scan kh, then kw; a later element
#     replaces the current one only if strictly greater). NaN counts as the maximum: the first NaN in the
#     window wins and y is NaN. Padding is implicit -inf and is never selected; a window that holds only
#     padding (possible only with dilation wider than the input) gives y = -inf and index -1, and its
#     gradient is dropped.
#   * avg_pool2d(kernel, stride = kernel, padding) with count_include_pad=True (PyTorch's default): every
#     window divides by kH kW, padded zeros included; backward spreads grad / (kH kW) over the window.
#   * global_avg_pool2d: mean over each (H, W) plane, output (N, C, 1, 1).
# Output size: OH = (H + 2 pH - dH (kH - 1) - 1) // sH + 1 (floor mode), padding at most half the kernel.
# Every loop runs over the N C planes with OpenMP prange; each plane is owned by one thread, so backward
# scatters are race-free and add in a fixed order. A plane's work is a cdef function (_*_plane) called from
# the prange body: variables assigned inside a prange body are private only when Cython sees them
# assigned, and the window bounds are written through pointers (valid_range), which Cython would share
# between threads. Index arithmetic is Py_ssize_t.
cimport numpy as cnp
from cpython.exc cimport PyErr_CheckSignals
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.string cimport memset
from _common cimport (bind_threading, aligned_c, real, as_float_array, check_same_dtype, threads_for, int_pair,
                     valid_range, out_array)

import operator

import numpy as np

cnp.import_array()
bind_threading()


cdef struct PGeom:
    Py_ssize_t N, C, H, W, kH, kW, sH, sW, pH, pW, dH, dW, OH, OW




# ----- max pooling ----------------------------------------------------------------------------------
cdef void _max_forward_plane(const real* xp, real* yp, int64_t* ip, const PGeom* g) noexcept nogil:
    """One (H, W) plane, tap-major, one output row at a time. The row's argmax indices start at each
    window's first real element (clipped to the input), then every tap (kh, kw), in row-major window
    order, is compared with the current maximum of all the row's outputs that see it: a strictly greater
    element or the first NaN takes over. The update is arithmetic on the index (no branch: with random data
    "v > best" is unpredictable) and the outputs of a row are independent, so the loop is not bound by one
    long dependency chain. y is read back through the indices at the end.
    A function of its own so that every variable it assigns (some only through pointers, valid_range) is
    local to the thread that runs it, never shared by the prange in _max_forward."""
    cdef Py_ssize_t oh, ow, kh, kw, ih0, iw0, khl, khh, kwl, kwh, lo, hi, r, j, bi
    cdef Py_ssize_t OW = g.OW, sW = g.sW
    cdef real v, best
    cdef bint take, nopad = g.pH == 0 and g.pW == 0
    cdef real* yr
    cdef int64_t* ir
    for oh in range(g.OH):
        yr = yp + oh * OW
        ir = ip + oh * OW
        ih0 = oh * g.sH - g.pH
        if nopad:
            # every window lies inside the input: start at tap (0, 0), compare the others
            for ow in range(OW):
                ir[ow] = ih0 * g.W + ow * sW
            for kh in range(g.kH):
                for kw in range(g.kW):
                    if kh == 0 and kw == 0:
                        continue
                    r = (ih0 + kh * g.dH) * g.W + kw * g.dW
                    for ow in range(OW):
                        j = r + ow * sW
                        bi = ir[ow]
                        v = xp[j]
                        best = xp[bi]
                        take = (not (v <= best)) & (best == best)
                        ir[ow] = bi + take * (j - bi)
            for ow in range(OW):
                yr[ow] = xp[ir[ow]]
            continue
        valid_range(ih0, g.dH, g.H, g.kH, &khl, &khh)
        for ow in range(OW):
            iw0 = ow * sW - g.pW
            valid_range(iw0, g.dW, g.W, g.kW, &kwl, &kwh)
            if khl == khh or kwl == kwh:
                ir[ow] = -1
            else:
                ir[ow] = (ih0 + khl * g.dH) * g.W + iw0 + kwl * g.dW
        for kh in range(khl, khh):
            for kw in range(g.kW):
                iw0 = kw * g.dW - g.pW
                valid_range(iw0, sW, g.W, OW, &lo, &hi)
                r = (ih0 + kh * g.dH) * g.W + iw0
                for ow in range(lo, hi):
                    j = r + ow * sW
                    bi = ir[ow]
                    v = xp[j]
                    best = xp[bi]
                    # "greater, or NaN over a number" == not (v <= best) and best is not NaN
                    take = (not (v <= best)) & (best == best)
                    ir[ow] = bi + take * (j - bi)
        for ow in range(OW):
            bi = ir[ow]
            yr[ow] = xp[bi] if bi >= 0 else -INFINITY


cdef void _max_forward(const real* x, real* y, int64_t* ind, const PGeom* g) noexcept nogil:
    cdef Py_ssize_t t, HW = g.H * g.W, P = g.OH * g.OW
    for t in prange(g.N * g.C, schedule="static", num_threads=threads_for(g.N * g.C * HW)):
        _max_forward_plane(x + t * HW, y + t * P, ind + t * P, g)


cdef Py_ssize_t _max_backward(const real* gy, const int64_t* ind, real* dx, Py_ssize_t planes,
                              Py_ssize_t HW, Py_ssize_t P) noexcept nogil:
    """Scatter gy through ind; returns the number of indices outside [-1, HW) (those are skipped)."""
    cdef Py_ssize_t t, p, j, bad = 0
    cdef real* dp
    for t in prange(planes, schedule="static", num_threads=threads_for(planes * HW)):
        dp = dx + t * HW
        memset(dp, 0, HW * sizeof(real))
        for p in range(P):
            j = ind[t * P + p]
            if 0 <= j < HW:
                dp[j] += gy[t * P + p]
            elif j != -1:
                bad += 1
    return bad


# ----- average pooling ------------------------------------------------------------------------------
cdef void _avg_forward_plane(const real* xp, real* yp, const PGeom* g) noexcept nogil:
    """One plane, tap-major like max pooling: each output row accumulates its window taps (kh, kw) in
    row-major order over long, simple inner loops, then is divided by kH kW. (A function of its own so that
    the window bounds valid_range writes are the calling thread's own.)"""
    cdef Py_ssize_t oh, ow, kh, kw, ih0, iw0, khl, khh, lo, hi, r
    cdef Py_ssize_t OW = g.OW, sW = g.sW
    cdef real area = <real>(g.kH * g.kW)
    cdef real* yr
    for oh in range(g.OH):
        yr = yp + oh * OW
        for ow in range(OW):
            yr[ow] = 0
        ih0 = oh * g.sH - g.pH
        valid_range(ih0, 1, g.H, g.kH, &khl, &khh)
        for kh in range(khl, khh):
            for kw in range(g.kW):
                iw0 = kw - g.pW
                valid_range(iw0, sW, g.W, OW, &lo, &hi)
                r = (ih0 + kh) * g.W + iw0
                for ow in range(lo, hi):
                    yr[ow] += xp[r + ow * sW]
        for ow in range(OW):
            yr[ow] = yr[ow] / area


cdef void _avg_forward(const real* x, real* y, const PGeom* g) noexcept nogil:
    cdef Py_ssize_t t, HW = g.H * g.W, P = g.OH * g.OW
    for t in prange(g.N * g.C, schedule="static", num_threads=threads_for(g.N * g.C * HW)):
        _avg_forward_plane(x + t * HW, y + t * P, g)


cdef void _avg_backward_plane(const real* gp, real* dp, const PGeom* g) noexcept nogil:
    """One plane's tap-major scatter: every tap (kh, kw) of an output row adds grad / (kH kW) to the
    pixels it saw."""
    cdef Py_ssize_t oh, ow, kh, kw, ih0, iw0, khl, khh, lo, hi, r
    cdef Py_ssize_t OW = g.OW, sW = g.sW
    cdef real area = <real>(g.kH * g.kW)
    cdef const real* gr
    memset(dp, 0, g.H * g.W * sizeof(real))
    for oh in range(g.OH):
        gr = gp + oh * OW
        ih0 = oh * g.sH - g.pH
        valid_range(ih0, 1, g.H, g.kH, &khl, &khh)
        for kh in range(khl, khh):
            for kw in range(g.kW):
                iw0 = kw - g.pW
                valid_range(iw0, sW, g.W, OW, &lo, &hi)
                r = (ih0 + kh) * g.W + iw0
                for ow in range(lo, hi):
                    dp[r + ow * sW] += gr[ow] / area


cdef void _avg_backward(const real* gy, real* dx, const PGeom* g) noexcept nogil:
    cdef Py_ssize_t t, HW = g.H * g.W, P = g.OH * g.OW
    for t in prange(g.N * g.C, schedule="static", num_threads=threads_for(g.N * g.C * HW)):
        _avg_backward_plane(gy + t * P, dx + t * HW, g)


# ----- global average pooling -----------------------------------------------------------------------
cdef void _gap_forward(const real* x, real* y, Py_ssize_t planes, Py_ssize_t HW) noexcept nogil:
    cdef Py_ssize_t t, i
    cdef double s
    cdef const real* xp
    for t in prange(planes, schedule="static", num_threads=threads_for(planes * HW)):
        xp = x + t * HW
        s = 0
        for i in range(HW):
            s = s + xp[i]
        y[t] = <real>(s / HW)


cdef void _gap_backward(const real* gy, real* dx, Py_ssize_t planes, Py_ssize_t HW) noexcept nogil:
    cdef Py_ssize_t t, i
    cdef real v
    cdef real* dp
    for t in prange(planes, schedule="static", num_threads=threads_for(planes * HW)):
        dp = dx + t * HW
        v = gy[t] / <real>HW
        for i in range(HW):
            dp[i] = v


# ----- validation (Python level, before any nogil code) ---------------------------------------------


cdef int _geometry(PGeom* g, str op, tuple xs, object kernel_size, object stride, object padding,
                   object dilation) except -1:
    if len(xs) != 4:
        raise ValueError(f"{op}: x must be 4-D (N, C, H, W), got shape {xs}")
    g.N, g.C, g.H, g.W = xs
    g.kH, g.kW = int_pair(op, kernel_size, "kernel_size", 1)
    g.sH, g.sW = int_pair(op, kernel_size if stride is None else stride, "stride", 1)
    g.pH, g.pW = int_pair(op, padding, "padding", 0)
    g.dH, g.dW = int_pair(op, dilation, "dilation", 1)
    if 2 * g.pH > g.kH or 2 * g.pW > g.kW:
        raise ValueError(f"{op}: padding {(g.pH, g.pW)} must be at most half the kernel size "
                         f"{(g.kH, g.kW)}")
    ekh, ekw = (g.kH - 1) * g.dH + 1, (g.kW - 1) * g.dW + 1
    hp, wp = g.H + 2 * g.pH, g.W + 2 * g.pW
    if ekh > hp or ekw > wp:
        raise ValueError(f"{op}: kernel {g.kH}x{g.kW} (dilation {(g.dH, g.dW)}, spanning {ekh}x{ekw}) is "
                         f"larger than the padded input {hp}x{wp} (x shape {xs}, padding {(g.pH, g.pW)})")
    g.OH = (hp - ekh) // g.sH + 1
    g.OW = (wp - ekw) // g.sW + 1
    return 0


cdef tuple _input_shape(str op, object input_shape):
    try:
        shp = tuple(operator.index(d) for d in input_shape)
    except TypeError:
        raise TypeError(f"{op}: input_shape must be a sequence of 4 ints, got {input_shape!r}") from None
    if len(shp) != 4 or min(shp) < 0:
        raise ValueError(f"{op}: input_shape must be 4 non-negative ints (N, C, H, W), got {input_shape!r}")
    return shp


cdef inline void* _ptr(object a):
    return cnp.PyArray_DATA(<cnp.ndarray>a)


# Ctrl-C: Python runs signal handlers only when it has control, so the windowed kernels (which can run
# for seconds on large batches) run in chunks of samples, and between chunks, with the GIL held,
# PyErr_CheckSignals runs the handlers: a KeyboardInterrupt arrives after the current chunk instead of at
# the end of the call, and the freshly allocated output is discarded. Every plane is computed the same way
# whatever the chunking, so results do not change.
cdef enum:
    CHUNK_TAPS = 1 << 23          # window taps (output pixels x kernel size) per chunk: ~10-50 ms
    CHUNK_MIN_ELEMENTS = 1 << 18  # but at least this many input pixels (PARALLEL_MIN), so chunks run threaded


cdef Py_ssize_t _chunk_samples(const PGeom* g):
    cdef Py_ssize_t taps = g.C * g.OH * g.OW * g.kH * g.kW, elems = g.C * g.H * g.W
    cdef Py_ssize_t nb = CHUNK_TAPS // taps if taps > 0 else g.N
    if elems > 0 and CHUNK_MIN_ELEMENTS // elems > nb:
        nb = CHUNK_MIN_ELEMENTS // elems
    return nb if nb > 0 else 1


cdef enum:
    WIN_MAX_FORWARD = 0
    WIN_AVG_FORWARD = 1
    WIN_AVG_BACKWARD = 2


cdef void _window_kernel(int kind, bint single, char* src, char* dst, int64_t* ind,
                         const PGeom* g) noexcept nogil:
    if kind == WIN_MAX_FORWARD:
        if single:
            _max_forward[float](<float*>src, <float*>dst, ind, g)
        else:
            _max_forward[double](<double*>src, <double*>dst, ind, g)
    elif kind == WIN_AVG_FORWARD:
        if single:
            _avg_forward[float](<float*>src, <float*>dst, g)
        else:
            _avg_forward[double](<double*>src, <double*>dst, g)
    else:
        if single:
            _avg_backward[float](<float*>src, <float*>dst, g)
        else:
            _avg_backward[double](<double*>src, <double*>dst, g)


cdef int _run_windowed(int kind, object src, object dst, object ind, const PGeom* g) except -1:
    """A windowed kernel over all samples, in chunks of _chunk_samples samples with PyErr_CheckSignals
    between them (see above). src/dst are the kernel's input and output arrays (for the backward grad_out
    and dx), ind the max-pool indices (shaped like the output) or None."""
    cdef PGeom gc = g[0]
    cdef bint single = src.dtype == np.float32
    cdef bint fwd = kind != WIN_AVG_BACKWARD
    cdef Py_ssize_t xs = g.C * g.H * g.W, ys = g.C * g.OH * g.OW, isz = src.dtype.itemsize
    cdef Py_ssize_t ss = (xs if fwd else ys) * isz, ds = (ys if fwd else xs) * isz
    cdef Py_ssize_t n0, nb = _chunk_samples(g)
    cdef char* ps = <char*>_ptr(src)
    cdef char* pd = <char*>_ptr(dst)
    cdef int64_t* pi = <int64_t*>_ptr(ind) if ind is not None else NULL
    for n0 in range(0, g.N, nb):
        gc.N = nb if nb < g.N - n0 else g.N - n0
        with nogil:
            _window_kernel(kind, single, ps + n0 * ss, pd + n0 * ds, pi + n0 * ys if pi != NULL else NULL, &gc)
        PyErr_CheckSignals()
    return 0


# ----- public kernels -------------------------------------------------------------------------------
def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, out=None):
    """Max over each window of x (N, C, H, W). Returns (y, indices): y (N, C, OH, OW) and the int64 flat
    index ih * W + iw of each window's maximum in its input plane (first maximum wins; NaN is a maximum).
    out, if given, is a tuple (y, indices) of arrays (None entries allocate) the results are written into."""
    cdef PGeom g
    x = as_float_array(x, "x")
    _geometry(&g, "max_pool2d", x.shape, kernel_size, stride, padding, dilation)
    if out is not None and (not isinstance(out, tuple) or len(out) != 2):
        raise TypeError(f"max_pool2d_forward: out must be a tuple of 2 arrays or None, got {type(out).__name__}")
    oy, oi = out if out is not None else (None, None)
    y = out_array(oy, (g.N, g.C, g.OH, g.OW), x.dtype, "out[0]", (x,))
    ind = out_array(oi, (g.N, g.C, g.OH, g.OW), np.dtype(np.int64), "out[1]", (x, y))
    _run_windowed(WIN_MAX_FORWARD, x, y, ind, &g)
    return y, ind


def max_pool2d_backward(grad_out, indices, input_shape, out=None):
    """dx of input_shape (N, C, H, W): zeros plus grad_out added at each window's saved argmax index
    (written into `out` when given)."""
    shp = _input_shape("max_pool2d_backward", input_shape)
    grad_out = as_float_array(grad_out, "grad_out", 4)
    if not isinstance(indices, np.ndarray) or indices.dtype != np.int64:
        raise TypeError(f"max_pool2d_backward: indices must be an int64 numpy.ndarray (from "
                        f"max_pool2d_forward), got {getattr(indices, 'dtype', type(indices).__name__)}")
    indices = aligned_c(indices)
    if indices.shape != grad_out.shape:
        raise ValueError(f"max_pool2d_backward: indices have shape {indices.shape} but grad_out has shape "
                         f"{grad_out.shape}")
    if grad_out.shape[:2] != shp[:2]:
        raise ValueError(f"max_pool2d_backward: grad_out has shape {grad_out.shape} but input_shape is "
                         f"{shp}; the (N, C) dimensions must match")
    dx = out_array(out, tuple(shp), grad_out.dtype, "out", (grad_out, indices))
    cdef Py_ssize_t planes = shp[0] * shp[1], HW = shp[2] * shp[3]
    cdef Py_ssize_t P = grad_out.shape[2] * grad_out.shape[3], bad = 0
    cdef char* pg = <char*>_ptr(grad_out)
    cdef char* pdx = <char*>_ptr(dx)
    cdef int64_t* pi = <int64_t*>_ptr(indices)
    cdef Py_ssize_t t0, tb, nt, isz = grad_out.dtype.itemsize
    # chunks of planes for Ctrl-C (see _chunk_samples): each plane zeroes and scatters about HW + P values
    tb = (CHUNK_MIN_ELEMENTS // (HW + P) if HW + P > 0 else planes) + 1
    for t0 in range(0, planes, tb):
        nt = tb if tb < planes - t0 else planes - t0
        if grad_out.dtype == np.float32:
            with nogil:
                bad += _max_backward[float](<float*>(pg + t0 * P * isz), pi + t0 * P, <float*>(pdx + t0 * HW * isz),
                                            nt, HW, P)
        else:
            with nogil:
                bad += _max_backward[double](<double*>(pg + t0 * P * isz), pi + t0 * P,
                                             <double*>(pdx + t0 * HW * isz), nt, HW, P)
        PyErr_CheckSignals()
    if bad:
        raise ValueError(f"max_pool2d_backward: {bad} indices are outside [-1, {HW}) for input planes of "
                         f"{shp[2]}x{shp[3]}; indices must come from max_pool2d_forward on this input shape")
    return dx


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Mean over each window of x (N, C, H, W), padded zeros counted (divisor kH kW)."""
    cdef PGeom g
    x = as_float_array(x, "x")
    _geometry(&g, "avg_pool2d", x.shape, kernel_size, stride, padding, 1)
    y = np.empty((g.N, g.C, g.OH, g.OW), dtype=x.dtype)
    _run_windowed(WIN_AVG_FORWARD, x, y, None, &g)
    return y


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0):
    """dx of input_shape: each grad_out element spread as grad / (kH kW) over its window's real pixels."""
    cdef PGeom g
    shp = _input_shape("avg_pool2d_backward", input_shape)
    grad_out = as_float_array(grad_out, "grad_out", 4)
    _geometry(&g, "avg_pool2d_backward", shp, kernel_size, stride, padding, 1)
    if grad_out.shape != (g.N, g.C, g.OH, g.OW):
        raise ValueError(f"avg_pool2d_backward: grad_out has shape {grad_out.shape}, expected "
                         f"{(g.N, g.C, g.OH, g.OW)} for input_shape {shp}")
    dx = np.empty(shp, dtype=grad_out.dtype)
    _run_windowed(WIN_AVG_BACKWARD, grad_out, dx, None, &g)
    return dx


def global_avg_pool2d_forward(x):
    """Mean of each (H, W) plane of x (N, C, H, W): y (N, C, 1, 1), summed in double."""
    x = as_float_array(x, "x", 4)
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"global_avg_pool2d: empty spatial dimensions, x shape {x.shape}")
    y = np.empty((x.shape[0], x.shape[1], 1, 1), dtype=x.dtype)
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1], HW = x.shape[2] * x.shape[3]
    cdef void* px = _ptr(x)
    cdef void* py = _ptr(y)
    if x.dtype == np.float32:
        with nogil:
            _gap_forward[float](<float*>px, <float*>py, planes, HW)
    else:
        with nogil:
            _gap_forward[double](<double*>px, <double*>py, planes, HW)
    return y


def global_avg_pool2d_backward(grad_out, input_shape):
    """dx of input_shape (N, C, H, W) = grad_out[n, c] / (H W) everywhere in plane (n, c)."""
    shp = _input_shape("global_avg_pool2d_backward", input_shape)
    grad_out = as_float_array(grad_out, "grad_out", 4)
    if grad_out.shape != (shp[0], shp[1], 1, 1):
        raise ValueError(f"global_avg_pool2d_backward: grad_out has shape {grad_out.shape}, expected "
                         f"{(shp[0], shp[1], 1, 1)} for input_shape {shp}")
    if shp[2] == 0 or shp[3] == 0:
        raise ValueError(f"global_avg_pool2d_backward: empty spatial dimensions, input_shape {shp}")
    dx = np.empty(shp, dtype=grad_out.dtype)
    cdef Py_ssize_t planes = shp[0] * shp[1], HW = shp[2] * shp[3]
    cdef void* pg = _ptr(grad_out)
    cdef void* pdx = _ptr(dx)
    if grad_out.dtype == np.float32:
        with nogil:
            _gap_backward[float](<float*>pg, <float*>pdx, planes, HW)
    else:
        with nogil:
            _gap_backward[double](<double*>pg, <double*>pdx, planes, HW)
    return dx
