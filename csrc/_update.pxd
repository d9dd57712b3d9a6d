# Elementwise passes over a range of elements, shared by csrc/optim.pyx and csrc/gemm.pyx:
#   * the optimizer update rules (SGD, Adam/AdamW) that optim.pyx's steps run over contiguous parts of a
#     parameter (one part per thread);
#   * UPD_RELU, linear_forward's epilogue, run by gemm.pyx on each block of the product right after BLAS
#     writes it (while it is in cache), with the same rule as relu_forward (r_relu), so the same bits.
# An Update holds the target and state pointers (void*: cast to the source's type) and the scalars of one
# pass; for the steps it is made by optim.pyx's _sgd_spec/_adam_spec (which validate like the step
# kernels always did) and filled by fill_update.
#
# An optimizer step applied inside linear_backward, on each block of the weight gradient as it is written,
# was built and measured (2 threads, quiet machine): slower, not faster. The step is bound by reading and
# writing the parameter and its state, not the gradient; a 64x784x256 weight gradient plus its SGD-momentum
# step took 73 + 19 us separately and 115 us fused (column blocks) or 89 us (row blocks), and the captured
# MLP step went from 0.300 to 0.331 ms at batch 64. It was removed.
cimport numpy as cnp
from cython.parallel cimport prange
from libc.float cimport FLT_MIN, DBL_MIN
from libc.math cimport fabs, fabsf
from _common cimport real, r_sqrt, r_relu, threads_for

cdef enum:
    UPD_NONE = 0
    UPD_SGD = 1
    UPD_ADAM = 2
    UPD_RELU = 3        # not a step: linear_forward's epilogue, p[i] = relu(C[i]) into the activation output
    UPD_CHUNK = 16384   # a threaded update gives each thread at least this many elements

cdef struct Update:
    int kind
    void* p
    void* s1           # SGD: momentum buffer (NULL without momentum); Adam: exp_avg
    void* s2           # Adam: exp_avg_sq
    void* s3           # Adam: max_exp_avg_sq (NULL without amsgrad)
    double lr, momentum, dampening, wd
    bint nesterov, first
    double beta1, beta2, eps, decay, step_size, bc2_sqrt
    bint amsgrad, decoupled


cdef inline real flush_subnormal(real x) noexcept nogil:
    """x, or 0 when x is subnormal (csrc/optim.pyx, Design); NaN and inf pass through."""
    if real is float:
        return 0 if fabsf(x) < FLT_MIN else x
    else:
        return 0 if fabs(x) < DBL_MIN else x


cdef inline void sgd_range(real* p, const real* g, real* buf, Py_ssize_t n, const Update* u) noexcept nogil:
    cdef Py_ssize_t i
    cdef real d, b
    cdef real rlr = <real>u.lr, rmom = <real>u.momentum, rdamp = <real>(1 - u.dampening), rwd = <real>u.wd
    cdef bint use_mom = u.momentum != 0, use_wd = u.wd != 0, first = u.first, nesterov = u.nesterov
    for i in range(n):
        d = g[i]
        if use_wd:
            d = d + rwd * p[i]
        if use_mom:
            if first:
                b = d
            else:
                b = flush_subnormal(rmom * buf[i] + rdamp * d)
            buf[i] = b
            if nesterov:
                d = d + rmom * b
            else:
                d = b
        p[i] = p[i] - rlr * d


cdef inline void _adam_loop(real* p, const real* g, real* m, real* v, real* vmax, Py_ssize_t n,
                            bint coupled, bint amsgrad, real rb1, real rcb1, real rb2, real rcb2, real reps,
                            real rwd, real rdecay, real rstep, real rbc2) noexcept nogil:
    # Called with constant flags (adam_range), so each of the four copies has no branch left but the
    # data-dependent selects and vectorizes: one loop testing the flags per element stayed scalar
    # (1M float32 elements: 1.21 ms on 2 threads, against 0.65 for PyTorch). rdecay is 1 without decoupled
    # weight decay: x * 1 is x exactly, NaN and inf included.
    cdef Py_ssize_t i
    cdef real x, d, mi, vi, vm
    for i in range(n):
        x = p[i] * rdecay
        d = g[i]
        if coupled:
            d = d + rwd * x
        mi = flush_subnormal(rb1 * m[i] + rcb1 * d)
        vi = flush_subnormal(rb2 * v[i] + rcb2 * (d * d))
        m[i] = mi
        v[i] = vi
        if amsgrad:
            vm = vmax[i]
            vi = vm if (vm > vi or vm != vm) else vi  # a NaN on either side wins, as in torch.maximum
            vmax[i] = vi
        p[i] = x - rstep * (mi / (r_sqrt(vi) / rbc2 + reps))


cdef inline void adam_range(real* p, const real* g, real* m, real* v, real* vmax, Py_ssize_t n,
                            const Update* u) noexcept nogil:
    cdef real rb1 = <real>u.beta1, rcb1 = <real>(1 - u.beta1), rb2 = <real>u.beta2, rcb2 = <real>(1 - u.beta2)
    cdef real reps = <real>u.eps, rwd = <real>u.wd, rstep = <real>u.step_size
    cdef real rbc2 = <real>u.bc2_sqrt
    cdef real rdecay = <real>u.decay if (u.wd != 0 and u.decoupled) else <real>1
    cdef bint coupled = u.wd != 0 and not u.decoupled
    if coupled:
        if u.amsgrad:
            _adam_loop(p, g, m, v, vmax, n, True, True, rb1, rcb1, rb2, rcb2, reps, rwd, rdecay, rstep, rbc2)
        else:
            _adam_loop(p, g, m, v, vmax, n, True, False, rb1, rcb1, rb2, rcb2, reps, rwd, rdecay, rstep, rbc2)
    else:
        if u.amsgrad:
            _adam_loop(p, g, m, v, vmax, n, False, True, rb1, rcb1, rb2, rcb2, reps, rwd, rdecay, rstep, rbc2)
        else:
            _adam_loop(p, g, m, v, vmax, n, False, False, rb1, rcb1, rb2, rcb2, reps, rwd, rdecay, rstep, rbc2)


cdef inline void relu_range(real* h, const real* z, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        h[i] = r_relu(z[i])


cdef inline real* _at(void* base, Py_ssize_t off, const real* like) noexcept nogil:
    return NULL if base == NULL else <real*>base + off


cdef inline void apply_update(const Update* u, const real* g, Py_ssize_t off, Py_ssize_t n) noexcept nogil:
    """The step on elements off .. off + n of the parameter, with g the whole gradient (same layout)."""
    if n <= 0:
        return
    if u.kind == UPD_SGD:
        sgd_range(_at(u.p, off, g), g + off, _at(u.s1, off, g), n, u)
    elif u.kind == UPD_ADAM:
        adam_range(_at(u.p, off, g), g + off, _at(u.s1, off, g), _at(u.s2, off, g), _at(u.s3, off, g), n, u)
    elif u.kind == UPD_RELU:
        relu_range(_at(u.p, off, g), g + off, n)


cdef inline void _update_part(const Update* u, const real* g, Py_ssize_t n, Py_ssize_t part,
                              Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t lo = part * size
    apply_update(u, g, lo, (n - lo) if n - lo < size else size)


cdef inline void update_all(const Update* u, const real* g, Py_ssize_t n, int threads) noexcept nogil:
    """The step on all n elements, one contiguous part per thread (1 thread: serial)."""
    cdef Py_ssize_t part, size = (n + threads - 1) // threads if threads > 1 else n
    if threads <= 1 or n < 2 * UPD_CHUNK:
        apply_update(u, g, 0, n)
        return
    for part in prange(threads, schedule="static", num_threads=threads):
        _update_part(u, g, n, part, size)


cdef inline int update_threads(Py_ssize_t n) noexcept nogil:
    """Threads for a step over n elements. A step streams 3-5 arrays where the elementwise ops'
    threshold (PARALLEL_MIN) was measured on ReLU's 2, so it counts each element twice: measured at
    200,704 float32 elements (the MLP's first layer), SGD momentum 34 us serial vs 20 us on 2 threads."""
    return threads_for(2 * n)


cdef inline void* _data_or_null(object arr):
    if arr is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>arr)


cdef inline int fill_update(Update* u, tuple spec) except -1:
    """Fill u from a tuple made by fastbp._C.optim._update_spec (the arrays in it must outlive the use)."""
    u.kind = spec[0]
    u.p = _data_or_null(spec[1])
    u.s1 = _data_or_null(spec[2])
    u.s2 = _data_or_null(spec[3])
    u.s3 = _data_or_null(spec[4])
    u.lr, u.momentum, u.dampening, u.wd = spec[5], spec[6], spec[7], spec[8]
    u.nesterov, u.first = spec[9], spec[10]
    u.beta1, u.beta2, u.eps, u.decay, u.step_size, u.bc2_sqrt = spec[11], spec[12], spec[13], spec[14], spec[15], spec[16]
    u.amsgrad, u.decoupled = spec[17], spec[18]
    return 0
