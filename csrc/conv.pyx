# Design: 2-D convolution (cross-correlation, as PyTorch's conv2d), forward and backward, NCHW.
#   x (N, C, H, W), weight (O, C, kH, kW), bias (O,) or None, y (N, O, OH, OW) with
#   OH = (H + 2 pH - dH (kH - 1) - 1) // sH + 1 (same for OW); stride, padding, dilation are int or pair.
#
# Forward is im2col + BLAS GEMM: the columns of one sample are a (K, P) matrix with K = C kH kW rows
# (row (c, kh, kw) holds the input pixel each output pixel sees through that tap, 0 in the padding) and
# P = OH OW columns, so y[n] (O, P) = weight (O, K) @ col[n] (K, P). Backward recomputes the columns:
#   dweight^T += col[n] @ g[n]^T,  dcol[n] = weight^T @ g[n],  dx[n] = col2im(dcol[n]) (scatter-add),
#   dbias = sum of g over n, OH, OW.
#
# Two paths, chosen per call:
#   * sample-parallel (default when fastbp._config found the BLAS thread hook, see below): prange over
#     samples (dynamic schedule: on this shared VM a thread often stalls for a while, and handing out
#     samples one at a time made the benchmark forward 11% faster than fixed halves; the backward hands out
#     blocks of samples, neutral); each thread owns a (K, P) slice of the column workspace, runs im2col and a
#     *single-threaded* GEMM straight into y[n] (bias pre-filled, beta = 1). Backward: per sample, recompute
#     the columns, part_k += col @ g[n]^T, dcol = weight^T @ g[n] into the same slice, col2im into dx[n]
#     (each sample owns its dx plane: no races). On 2 cores this ran the benchmark forward ~2x faster than
#     the chunked path: at these sizes (e.g. 32x144 @ 144x1024) OpenBLAS gets nothing from a second thread,
#     so 32 sequential threaded GEMMs used one core.
#   * chunked (no hook: an unknown BLAS; or the batched layout's forward): im2col of a chunk of samples in
#     prange, then threaded BLAS calls outside prange, one per sample (or one per chunk, batched layout).
#     The batched layout's backward with the hook runs block-parallel instead (see the layouts below).
# The project rule "no threaded BLAS inside prange" (oversubscription) holds on both: the BLAS thread hook is
# the setter/getter of the thread count of scipy's OpenBLAS (resolved once at import by fastbp._config via
# threadpoolctl and ctypes, passed in by _set_blas_thread_hooks). Around every call on the sample-parallel
# path (also one that runs on one thread: OpenBLAS's threaded sgemm rounds differently from its
# single-threaded one, so a threaded GEMM would make results depend on the thread count) the wrapper saves
# the BLAS count, sets 1 and restores it afterwards (overlapping calls from several Python threads share
# one such section). Cost: one large sample alone runs its GEMMs on one core. Without the hook the chunked
# path is used, with the BLAS's own threading (its rounding may then change with its thread count).
# Determinism: dweight is accumulated per block of bs consecutive samples (at most 16 blocks; blocks depend
# only on N and the weight size, never on the thread count or the workspace limit) into per-block partials
# that are summed in block order, on both paths; so results are bit-identical for any thread count and on
# either path (tests/test_conv_pool.py checks both). dbias: a fixed-order sum per output channel.
#
# Memory: the column workspace is bounded. The sample-parallel path holds one sample's columns per thread;
# the chunked path processes the batch in chunks of as many samples as fit in the workspace limit (default
# 64 MiB, `_set_workspace_limit`; fastbp.nn.functional.set_conv_workspace_limit is the public setter);
# either way a single sample whose columns exceed the limit is processed alone (one thread). Within the
# limit, chunks are kept near 1 MiB (`_tuning`) so the columns are still in cache when BLAS reads them:
# measured on the benchmark shape, one sample per chunk ran the forward 3x faster than the whole batch.
# The workspace is kept between calls (see _acquire_workspace). The weight-gradient partials (at most 16
# copies of dweight, at most 64 MiB) are allocated per call.
#
# Two GEMM layouts, chosen per call by the number of output pixels P:
#   * per-sample (default): one GEMM per sample writes straight into y (bias pre-filled, beta = 1), no
#     output copy. 1x1 kernels with stride 1 and no padding skip im2col (x[n] viewed as (C, H W) is already
#     the column matrix) and the workspace.
#   * batched (P < 64, e.g. 4x4 maps; always the chunked path): a per-sample GEMM would be nearly a
#     matrix-vector product, so the chunk's columns sit side by side, workspace (K, chunk P) plus an
#     (O, chunk P) output block; one GEMM per chunk, then a parallel copy into y adding the bias (backward
#     gathers g into that block first). For larger P OpenBLAS ran the per-sample GEMMs faster than the long
#     batched ones (LeNet-5's convs: 2-3x), so P decides, not the amount of work.
#     Its backward, when the thread hook exists, runs on the block-parallel path (_backward_block): each
#     thread takes whole weight-gradient blocks (the bs samples of block k, as on the sample-parallel
#     path) and multiplies their samples side by side, at most BLOCK_COLUMNS columns per GEMM pair (a
#     constant: the grouping, like the blocks, never depends on the thread count), single-threaded BLAS,
#     its own slot of (K + O) sub P elements; dweight partials per block summed in block order. Before, the
#     chunks ran one after another with single-threaded GEMMs (threaded OpenBLAS was slower there, see
#     conv2d_forward), so the whole backward used one core. Measured, 2 threads, idle 2-core machine,
#     inside the ResNet step: (64,64,7,7)x(64,64,3,3) 3.4-3.9 -> 2.0-2.4 ms, (64,32,14,14)x(64,32,3,3)
#     stride 2 2.1-2.4 -> 1.1-1.3 ms. On one thread a block of 4 samples per GEMM costs ~5-10% more than
#     the chunks of 8 did (smaller GEMMs, the partials' sum).
#     When one group's slot exceeds the workspace limit it keeps the chunked path.
# The forward of the per-sample layout has a second orientation, the row layout (_forward_rows), used when
# the layer has >= 16 input and output channels (`_tuning(row_min_channels=...)`): the sample is copied into
# a zero-padded channels-last plane, im2row writes rows (P, K) in (kh, kw, c) order (each piece kW C
# contiguous values, one memcpy), the GEMM computes yt (P, O) = rows @ w'^T with the weight permuted to
# (O, kH, kW, C), and yt is transposed into y[n] adding the bias. OpenBLAS runs that product ~30% faster
# than w @ col at the benchmark shape; with few channels the copies are too short and it loses (LeNet-5's
# convs: 1-4x slower), so they keep the column layout. Measured, one thread, wall time, forward of the
# whole batch, rows / columns: (32,16,32,32)x(32,16,3,3) 0.93-0.95, (32,32,16,16)x(64,32,3,3) 0.93-0.98,
# (32,64,8,8)x(64,64,3,3) 0.85, (64,6,14,14)x(16,6,5,5) ~1.0, (16,3,64,64)x(32,3,3,3) 1.4,
# (64,1,28,28)x(6,1,5,5) 3.8. 3x3 kernels with stride 1 and dilation 1, >= 8 channels in and out and
# output pixels x min(channels) >= 4096 take Winograd F(2x2, 3x3) instead, forward (_forward_wino) and backward
# (_backward_wino, its adjoint on the same tiles): 2.25x fewer multiply-adds, transforms by additions, but
# each transformed tensor is 4x its source, so the transforms are bound by moving that data. They are C
# loops in csrc/winograd.h (restrict pointers, so GCC vectorizes them; compiled for the baseline, AVX2
# and AVX-512 and picked at load time, csrc/fastbp_clones.h), the forward runs in blocks of 64+ tiles
# (_tuning(winograd_block_tiles=...)) so that a block's transformed data stays in cache.
# Winograd / other layout, one thread, CPU time (forward, backward): benchmark shape 16 -> 32 on 32x32
# 0.58, 0.72; 32 -> 32 on 32x32 0.55, 0.66; 16 -> 16 on 64x64 0.50, 0.65; 12 -> 12 on 32x32 0.59, 0.57;
# 8 -> 8 on 64x64 0.47, 0.61 (but 8 -> 8 on 32x32 1.06, 0.87); 32 -> 16 on 15x15 0.72, 0.77; 16 -> 16 on
# 16x16 0.71, 0.85; 16 -> 16 on 12x12 0.96, 0.90; 64 -> 64 on 8x8 0.79, 0.79, but 16 -> 16 on 8x8 1.15,
# 1.03 (hence the size threshold, DEFAULT_WINOGRAD_MIN_SIZE). Its rounding differs from the direct sum by a
# few ulps (float32 relative error ~3e-7 against a float64 reference). A third forward layout, the wide
# columns (_forward_wide), serves stride 1 without padding (LeNet-5's second conv: forward 18% faster,
# one thread). The backward keeps the column layout: the wide one would multiply the dropped columns'
# inputs by zero, and 0 * inf is NaN.
# Winograd has the same caveat in a milder form: an inf input can meet a zero transformed weight
# (0 * inf) or another inf of opposite sign inside a transform, so an output the direct sum makes +-inf
# can come out NaN; finite inputs give finite results as before.
# im2col / col2im with stride 2 (dilation 1, planes up to 4096 elements once split) go through the
# plane's 4 phases (_im2col_plane_phase): each column row is then one shifted copy, not a strided gather
# row by row; the same bits (see PHASE_MAX). (64,16,28,28)x(32,16,3,3) stride 2, backward: one thread
# 3.0 -> 2.1-2.3 ms; 2 threads in the ResNet step 1.6-2.0 -> 1.2-1.6 ms.
# On the chunked path im2col/col2im run in prange over (sample, channel) pairs of the chunk; each pair owns
# its rows of the workspace / its plane of dx, so there are no races, and col2im adds in a fixed order.
# Index arithmetic is Py_ssize_t throughout.
cimport numpy as cnp
from cython.parallel cimport prange, threadid
from libc.string cimport memset, memcpy
from _common cimport (bind_threading, fastbp_thr, fastbp_blas_set_fn, fastbp_blas_get_fn,
                     fastbp_blas_single_enter, fastbp_blas_single_exit, real, gemm_rm, as_float_array, check_same_dtype, check_blas_size, threads_for,
                     num_threads, int_pair, valid_range, out_array)

cdef extern from "fastbp_clones.h":
    const char* fastbp_clone_variant()

cdef extern from "sums.h" nogil:
    double plane_sum_f(const float* r, Py_ssize_t n)
    double plane_sum_d(const double* r, Py_ssize_t n)

# Ctrl-C between samples: the kernels poll from the calling thread (see csrc/interrupt.h)
from _interrupt cimport fastbp_interrupt, fastbp_poll, fastbp_stopped, interrupt_init, interrupt_raise

cdef extern from "winograd.h" nogil:
    # the Winograd tile transforms, per channel plane (restrict-qualified C loops; see the header)
    void wino_pad_row_f(const float* src, Py_ssize_t n, Py_ssize_t q0, float* dst, Py_ssize_t half)
    void wino_pad_row_d(const double* src, Py_ssize_t n, Py_ssize_t q0, double* dst, Py_ssize_t half)
    void wino_unpad_row_f(const float* src, Py_ssize_t n, Py_ssize_t q0, float* dst, Py_ssize_t half)
    void wino_unpad_row_d(const double* src, Py_ssize_t n, Py_ssize_t q0, double* dst, Py_ssize_t half)
    void wino_in_plane_f(const float* xp, Py_ssize_t TH, Py_ssize_t TW, float* V, Py_ssize_t CT, float* e)
    void wino_in_plane_d(const double* xp, Py_ssize_t TH, Py_ssize_t TW, double* V, Py_ssize_t CT, double* e)
    void wino_out_plane_f(const float* M, Py_ssize_t OT, Py_ssize_t TH, Py_ssize_t TW, float* r, float* y,
                          Py_ssize_t OH, Py_ssize_t OW, float bias)
    void wino_out_plane_d(const double* M, Py_ssize_t OT, Py_ssize_t TH, Py_ssize_t TW, double* r, double* y,
                          Py_ssize_t OH, Py_ssize_t OW, double bias)
    void wino_grad_plane_f(const float* go, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t TH, Py_ssize_t TW,
                           float* Gt, Py_ssize_t OT, float* s)
    void wino_grad_plane_d(const double* go, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t TH, Py_ssize_t TW,
                           double* Gt, Py_ssize_t OT, double* s)
    void wino_in_adjoint_plane_f(const float* V, Py_ssize_t CT, Py_ssize_t TH, Py_ssize_t TW, float* xp,
                                 float* e)
    void wino_in_adjoint_plane_d(const double* V, Py_ssize_t CT, Py_ssize_t TH, Py_ssize_t TW, double* xp,
                                 double* e)

import operator
import threading

import numpy as np

cnp.import_array()
bind_threading()

DEFAULT_WORKSPACE_LIMIT = 64 * 1024 * 1024
cdef Py_ssize_t _workspace_limit = DEFAULT_WORKSPACE_LIMIT
# Below this many output pixels per sample the batched layout is used.
DEFAULT_BATCH_PIXELS = 64
cdef Py_ssize_t _batch_pixels = DEFAULT_BATCH_PIXELS
# Preferred chunk size in bytes (cache-sized: the columns are still in cache when the GEMM reads them);
# the workspace limit caps it.
DEFAULT_CHUNK_BYTES = 1 << 20
cdef Py_ssize_t _chunk_bytes = DEFAULT_CHUNK_BYTES
# The forward uses the row layout (see _forward_rows) when the per-sample layout applies and the layer has
# at least this many input and output channels (with fewer, the pieces im2row copies are too short and
# OpenBLAS's gain in that orientation is small; measured shapes in the design note at the top).
DEFAULT_ROW_MIN_CHANNELS = 16
cdef Py_ssize_t _row_min_channels = DEFAULT_ROW_MIN_CHANNELS
# The forward uses the wide column layout (see _forward_wide) where it applies.
cdef bint _wide = True
# 3x3 kernels with stride 1 and dilation 1 and at least this many input and output channels use
# Winograd F(2x2, 3x3) (_forward_wino, _backward_wino) in the forward and the backward...
DEFAULT_WINOGRAD_MIN_CHANNELS = 8
cdef Py_ssize_t _wino_min_channels = DEFAULT_WINOGRAD_MIN_CHANNELS
# ... and at least this much work per sample: output pixels times the smaller channel count. On small maps
# the 16 small GEMMs per sample can cost more than they save, less so with many channels. Winograd / other
# layouts, one thread (forward, backward): 16 -> 16 on 8x8 1.15, 1.03 (size 1024); 16 -> 16 on 12x12 0.96,
# 0.90 (2304); 32 -> 32 on 8x8 0.95, 0.94 (2048); 16 -> 16 on 16x16 0.71, 0.85 (4096); 64 -> 64 on 8x8 0.79,
# 0.79 (4096); 64 -> 64 on 12x12 0.89, 0.83; 32 -> 32 on 14x14 0.91, 0.96; 64 -> 64 on 14x14 0.77, 0.78.
DEFAULT_WINOGRAD_MIN_SIZE = 4096
cdef Py_ssize_t _wino_min_size = DEFAULT_WINOGRAD_MIN_SIZE
# The Winograd forward runs in blocks of rows of tiles, at least this many tiles per block with the rows
# shared out evenly (0: the whole sample at once), so that a block's transformed input and products (16 C
# and 16 O values per tile) are still in cache when the GEMMs and the output transform read them. The
# backward takes the whole sample (per-block weight-gradient GEMMs with K = tiles were slower). Measured,
# one thread, forward, 64 vs whole sample: (32,16,32,32)x(32,16,3,3) 0.92-0.99, (32,32,32,32)x(32,32,3,3)
# 0.90-1.0, (16,16,64,64)x(16,16,3,3) 0.79-0.87, (32,64,32,32)x(64,64,3,3) 0.71-0.80.
DEFAULT_WINOGRAD_BLOCK_TILES = 64
cdef Py_ssize_t _wino_block_tiles = DEFAULT_WINOGRAD_BLOCK_TILES


cdef struct Geom:
    Py_ssize_t N, C, H, W, O, kH, kW, sH, sW, pH, pW, dH, dW, OH, OW
    Py_ssize_t K, P, taps       # K = C kH kW, P = OH OW, taps = kH kW
    bint direct                 # 1x1 kernel, stride 1, no padding: x[n] is its own column matrix
    bint same                   # stride 1 and OW == W: each column row is one shifted copy of the plane
    bint phase                  # stride 2, small plane: column rows are shifted copies of its 4 phases
    bint rows                   # forward in the row layout (set by _plan)
    bint wide                   # forward in the wide column layout (set by _plan)
    bint wino                   # forward by Winograd F(2x2, 3x3) (set by _plan)
    Py_ssize_t TH, TW           # Winograd: 2x2 output tiles down and across
    Py_ssize_t TB               # Winograd: rows of tiles per block
    Py_ssize_t CT, OT           # Winograd: distance between the 16 planes of V (C T) and M (O T), padded
    Py_ssize_t part             # elements of one weight-gradient partial: K O, or 16 O C with Winograd
    Py_ssize_t slot             # workspace elements per sample slot (set by _plan)


# ----- index helpers --------------------------------------------------------------------------------


# Stride 2 (dilation 1, more than one tap, ceil(W / 2) <= OW, 4 ceil(H / 2) OW <= PHASE_MAX): the plane is
# split into its 4 phases, q[a, b][i, j] = xc[2 i + a, 2 j + b], each stored (ceil(H / 2), OW) in a buffer
# on the stack; tap (kh, kw) then reads phase ((kh - pH) mod 2, (kw - pW) mod 2) shifted by
# (floor((kh - pH) / 2), floor((kw - pW) / 2)), so its column row is one shifted copy of that phase with the
# edge columns zeroed, as in the "same"-width case, instead of a strided gather row by row (the short
# rows' overhead: at (64,16,28,28)x(32,16,3,3) stride 2, im2col and col2im took 47% of the backward).
# Same values, and col2im adds the same terms in the same (tap) order: the same bits as the gather.
cdef enum:
    PHASE_MAX = 4096


cdef void _phase_split(const real* xc, real* q, const Geom* g) noexcept nogil:
    """The 4 phases of the plane xc (H, W) into q: phase 2 a + b at q + (2 a + b) Hp OW, Hp = ceil(H / 2)."""
    cdef Py_ssize_t ih, j, W = g.W, OW = g.OW, Hp = (g.H + 1) // 2, half = g.W // 2
    cdef const real* src
    cdef real* d0
    cdef real* d1
    for ih in range(g.H):
        src = xc + ih * W
        d0 = q + (2 * (ih % 2)) * Hp * OW + (ih // 2) * OW
        d1 = d0 + Hp * OW
        for j in range(half):
            d0[j] = src[2 * j]
            d1[j] = src[2 * j + 1]
        if W % 2:
            d0[half] = src[W - 1]


cdef inline void _phase_tap(const Geom* g, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t* offset,
                            Py_ssize_t* base) noexcept nogil:
    """The phase tap (kh, kw) reads (its offset in the buffer) and the shift within it."""
    cdef Py_ssize_t ih0 = kh - g.pH, iw0 = kw - g.pW, a, b
    a = ih0 % 2
    if a < 0:
        a += 2
    b = iw0 % 2
    if b < 0:
        b += 2
    offset[0] = (2 * a + b) * ((g.H + 1) // 2) * g.OW
    base[0] = ((ih0 - a) // 2) * g.OW + (iw0 - b) // 2


cdef inline void _phase_span(const Geom* g, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t ohl, Py_ssize_t ohh,
                             Py_ssize_t HWq, Py_ssize_t* off, Py_ssize_t* base, Py_ssize_t* a,
                             Py_ssize_t* b) noexcept nogil:
    """Tap (kh, kw) of a stride-2 plane: its phase offset and shift (_phase_tap), and the span [a, b) of
    column entries (output rows ohl..ohh) that one shifted copy from (to) the phase covers."""
    _phase_tap(g, kh, kw, off, base)
    _clip_span(ohl * g.OW, ohh * g.OW, base[0], HWq, a, b)


cdef inline void _clip_span(Py_ssize_t a0, Py_ssize_t b0, Py_ssize_t base, Py_ssize_t n, Py_ssize_t* a,
                            Py_ssize_t* b) noexcept nogil:
    """[a0, b0) clipped so that [a + base, b + base) stays inside a source of n entries (a shifted copy)."""
    a[0] = a0 if a0 >= -base else -base
    b[0] = b0 if b0 <= n - base else n - base


cdef inline void _zero_edge_columns(real* row, Py_ssize_t ohl, Py_ssize_t ohh, Py_ssize_t OW, Py_ssize_t lo,
                                    Py_ssize_t hi) noexcept nogil:
    """Zero columns [0, lo) and [hi, OW) of output rows ohl..ohh of one column row (the padding's taps)."""
    cdef Py_ssize_t oh, ow
    cdef real* dst
    for oh in range(ohl, ohh):
        dst = row + oh * OW
        for ow in range(lo):
            dst[ow] = 0
        for ow in range(hi, OW):
            dst[ow] = 0


cdef void _im2col_plane_phase(const real* xc, real* col, Py_ssize_t ld, const Geom* g) noexcept nogil:
    cdef real q[PHASE_MAX]
    cdef Py_ssize_t kh, kw, lo, hi, ohl, ohh, base, off, a, b, OW = g.OW
    cdef Py_ssize_t HWq = ((g.H + 1) // 2) * g.OW
    cdef real* row
    _phase_split(xc, q, g)
    for kh in range(g.kH):
        valid_range(kh - g.pH, 2, g.H, g.OH, &ohl, &ohh)
        for kw in range(g.kW):
            row = col + (kh * g.kW + kw) * ld
            valid_range(kw - g.pW, 2, g.W, OW, &lo, &hi)
            if ohh == ohl or hi == lo:
                memset(row, 0, g.P * sizeof(real))
                continue
            memset(row, 0, ohl * OW * sizeof(real))
            memset(row + ohh * OW, 0, (g.OH - ohh) * OW * sizeof(real))
            _phase_span(g, kh, kw, ohl, ohh, HWq, &off, &base, &a, &b)
            if b > a:
                memcpy(row + a, q + off + (a + base), (b - a) * sizeof(real))
            _zero_edge_columns(row, ohl, ohh, OW, lo, hi)


cdef void _col2im_plane_phase(real* col, Py_ssize_t ld, real* dxc, const Geom* g) noexcept nogil:
    cdef real q[PHASE_MAX]
    cdef Py_ssize_t kh, kw, lo, hi, ohl, ohh, base, off, a, b, i, ih, j, OW = g.OW
    cdef Py_ssize_t Hp = (g.H + 1) // 2, HWq = ((g.H + 1) // 2) * g.OW, W = g.W, half = g.W // 2
    cdef real* row
    cdef real* qt
    cdef real* d
    cdef const real* s0
    cdef const real* s1
    memset(q, 0, 4 * HWq * sizeof(real))
    for kh in range(g.kH):
        valid_range(kh - g.pH, 2, g.H, g.OH, &ohl, &ohh)
        for kw in range(g.kW):
            row = col + (kh * g.kW + kw) * ld
            valid_range(kw - g.pW, 2, g.W, OW, &lo, &hi)
            if ohh == ohl or hi == lo:
                continue
            _zero_edge_columns(row, ohl, ohh, OW, lo, hi)
            _phase_span(g, kh, kw, ohl, ohh, HWq, &off, &base, &a, &b)
            qt = q + off + base
            for i in range(a, b):
                qt[i] += row[i]
    for ih in range(g.H):
        d = dxc + ih * W
        s0 = q + (2 * (ih % 2)) * Hp * OW + (ih // 2) * OW
        s1 = s0 + Hp * OW
        for j in range(half):
            d[2 * j] = s0[j]
            d[2 * j + 1] = s1[j]
        if W % 2:
            d[W - 1] = s0[half]


cdef void _im2col_plane(const real* xc, real* col, Py_ssize_t ld, const Geom* g) noexcept nogil:
    """The kH kW column rows of one input plane xc (H, W); row t starts at col + t ld, P entries.

    Row (kh, kw) at output pixel (oh, ow) holds xc[oh sH + kh dH - pH, ow sW + kw dW - pW], or 0 where that
    falls in the padding. Output rows [ohl, ohh) and columns [lo, hi) are the ones that see real pixels.
    For stride 1 with OW == W ("same" width) the row is one shifted copy of the plane (dst[i] =
    xc[i + base]) followed by zeroing the edge columns; otherwise it is copied row by row."""
    cdef Py_ssize_t kh, kw, oh, ow, ih0, iw0, lo, hi, ohl, ohh, base, a, b, r
    cdef Py_ssize_t OW = g.OW, HW = g.H * g.W
    cdef real* row
    cdef real* dst
    if g.phase:
        _im2col_plane_phase(xc, col, ld, g)
        return
    for kh in range(g.kH):
        ih0 = kh * g.dH - g.pH
        valid_range(ih0, g.sH, g.H, g.OH, &ohl, &ohh)
        for kw in range(g.kW):
            row = col + (kh * g.kW + kw) * ld
            iw0 = kw * g.dW - g.pW
            valid_range(iw0, g.sW, g.W, OW, &lo, &hi)
            if ohh == ohl or hi == lo:
                memset(row, 0, g.P * sizeof(real))
                continue
            memset(row, 0, ohl * OW * sizeof(real))
            memset(row + ohh * OW, 0, (g.OH - ohh) * OW * sizeof(real))
            if g.same:
                base = ih0 * g.W + iw0
                _clip_span(ohl * OW, ohh * OW, base, HW, &a, &b)
                memcpy(row + a, xc + (a + base), (b - a) * sizeof(real))
                _zero_edge_columns(row, ohl, ohh, OW, lo, hi)
            elif g.sW == 1 and lo == 0 and hi == OW:
                # the whole output row sees real pixels (no padding on this side): one copy per row
                for oh in range(ohl, ohh):
                    memcpy(row + oh * OW, xc + (oh * g.sH + ih0) * g.W + iw0, OW * sizeof(real))
            else:
                for oh in range(ohl, ohh):
                    dst = row + oh * OW
                    r = (oh * g.sH + ih0) * g.W + iw0
                    for ow in range(lo):
                        dst[ow] = 0
                    if g.sW == 1:
                        for ow in range(lo, hi):
                            dst[ow] = xc[r + ow]
                    else:
                        for ow in range(lo, hi):
                            dst[ow] = xc[r + ow * g.sW]
                    for ow in range(hi, OW):
                        dst[ow] = 0


cdef void _col2im_plane(real* col, Py_ssize_t ld, real* dxc, const Geom* g) noexcept nogil:
    """dxc (H, W) = the kH kW column rows of one plane added back onto the pixels they were read from.

    In the "same"-width case the edge columns of the (scratch) rows are zeroed first, so each row is then
    added in one shifted pass (dxc[i + base] += row[i]); adding those zeros leaves dxc unchanged."""
    cdef Py_ssize_t kh, kw, oh, ow, ih0, iw0, lo, hi, ohl, ohh, base, a, b, i, r
    cdef Py_ssize_t OW = g.OW, HW = g.H * g.W
    cdef real* row
    cdef real* src
    if g.phase:
        _col2im_plane_phase(col, ld, dxc, g)
        return
    memset(dxc, 0, HW * sizeof(real))
    for kh in range(g.kH):
        ih0 = kh * g.dH - g.pH
        valid_range(ih0, g.sH, g.H, g.OH, &ohl, &ohh)
        for kw in range(g.kW):
            row = col + (kh * g.kW + kw) * ld
            iw0 = kw * g.dW - g.pW
            valid_range(iw0, g.sW, g.W, OW, &lo, &hi)
            if ohh == ohl or hi == lo:
                continue
            if g.same:
                _zero_edge_columns(row, ohl, ohh, OW, lo, hi)
                base = ih0 * g.W + iw0
                _clip_span(ohl * OW, ohh * OW, base, HW, &a, &b)
                for i in range(a, b):
                    dxc[i + base] += row[i]
            else:
                for oh in range(ohl, ohh):
                    src = row + oh * OW
                    r = (oh * g.sH + ih0) * g.W + iw0
                    if g.sW == 1:
                        for ow in range(lo, hi):
                            dxc[r + ow] += src[ow]
                    else:
                        for ow in range(lo, hi):
                            dxc[r + ow * g.sW] += src[ow]


cdef void _im2col_chunk(const real* x, Py_ssize_t n0, Py_ssize_t nb, real* col, Py_ssize_t ld,
                        Py_ssize_t sample_stride, const Geom* g) noexcept nogil:
    """Columns of samples n0 .. n0+nb-1: sample j, channel c go to col + j sample_stride + c taps ld."""
    cdef Py_ssize_t t, j, c, HW = g.H * g.W
    for t in prange(nb * g.C, schedule="static", num_threads=threads_for(nb * g.K * g.P)):
        j = t // g.C
        c = t - j * g.C
        _im2col_plane(x + ((n0 + j) * g.C + c) * HW, col + j * sample_stride + c * g.taps * ld, ld, g)


cdef void _col2im_chunk(real* col, Py_ssize_t ld, Py_ssize_t sample_stride, real* dx,
                        Py_ssize_t n0, Py_ssize_t nb, const Geom* g) noexcept nogil:
    cdef Py_ssize_t t, j, c, HW = g.H * g.W
    for t in prange(nb * g.C, schedule="static", num_threads=threads_for(nb * g.K * g.P)):
        j = t // g.C
        c = t - j * g.C
        _col2im_plane(col + j * sample_stride + c * g.taps * ld, ld, dx + ((n0 + j) * g.C + c) * HW, g)


# ----- BLAS thread hook -----------------------------------------------------------------------------
# Setter/getter of the thread count of the BLAS behind scipy.linalg.cython_blas, resolved once at import
# by fastbp._config (ctypes + threadpoolctl) and passed in by _set_blas_thread_hooks. They live in the
# process-wide settings (csrc/fastbp_omp.h), shared with the GEMM kernels; NULL: unknown BLAS, so the
# kernels keep BLAS outside prange. Calls that overlap (the kernels release the GIL) share one
# "single-threaded" section (fastbp_blas_single_enter / _exit): the first to enter saves the count and sets
# 1, the last to leave restores it.
cdef inline bint _blas_hooks() noexcept nogil:
    return fastbp_thr.blas_get != NULL and fastbp_thr.blas_set != NULL


cdef void _blas_single_enter():
    fastbp_blas_single_enter()


cdef void _blas_single_exit():
    fastbp_blas_single_exit()


# ----- forward --------------------------------------------------------------------------------------
cdef void _im2row(const real* xn, real* xh, real* rows, const Geom* g) noexcept nogil:
    """Row layout of one sample: rows (P, K) with row p = output pixel (oh, ow) and column order
    (kh, kw, c). xn (C, H, W) is first copied into xh, a zero-padded channels-last (Hp, Wp, C) plane,
    so each (pixel, kh) piece of a row is kW C contiguous values of xh (kW pieces of C with dilation)."""
    cdef Py_ssize_t c, h, w, oh, ow, kh, kw, i, C = g.C, W = g.W, HW = g.H * g.W
    cdef Py_ssize_t Wp = g.W + 2 * g.pW, Hp = g.H + 2 * g.pH, L = g.kW * g.C
    cdef const real* src
    cdef real* dst
    memset(xh, 0, Hp * Wp * C * sizeof(real))
    for h in range(g.H):
        # contiguous stores, C strided load streams
        src = xn + h * W
        dst = xh + ((h + g.pH) * Wp + g.pW) * C
        for w in range(W):
            for c in range(C):
                dst[c] = src[c * HW + w]
            dst = dst + C
    for oh in range(g.OH):
        for ow in range(g.OW):
            dst = rows + (oh * g.OW + ow) * g.K
            for kh in range(g.kH):
                src = xh + ((oh * g.sH + kh * g.dH) * Wp + ow * g.sW) * C
                if g.dW == 1:
                    memcpy(dst, src, L * sizeof(real))
                else:
                    for kw in range(g.kW):
                        for i in range(C):
                            dst[kw * C + i] = src[kw * g.dW * C + i]
                dst = dst + L


cdef void _forward_rows(const real* x, const real* wr, const real* b, real* y, real* slot, Py_ssize_t n,
                        const Geom* g) noexcept nogil:
    """y[n] through the row layout: yt (P, O) = rows (P, K) @ wr^T, wr the weight permuted to
    (O, kH, kW, C); then y[n] (O, P) = yt^T + b, transposed in blocks of 16 pixels. OpenBLAS runs this
    orientation faster when O is not small (benchmark shape: ~30% less GEMM time per sample)."""
    cdef Py_ssize_t p0, p1, p, o, K = g.K, P = g.P, O = g.O, HW = g.H * g.W
    cdef Py_ssize_t xhn = (g.H + 2 * g.pH) * (g.W + 2 * g.pW) * g.C
    cdef real* rows = slot + xhn
    cdef real* yt = rows + P * K
    cdef real* yn = y + n * O * P
    cdef real bo
    _im2row(x + n * g.C * HW, slot, rows, g)
    gemm_rm(False, True, <int>P, <int>O, <int>K, <real>1, rows, <int>K, wr, <int>K, <real>0, yt, <int>O)
    for p0 in range(0, P, 16):
        p1 = p0 + 16 if p0 + 16 < P else P
        for o in range(O):
            bo = b[o] if b != NULL else 0
            for p in range(p0, p1):
                yn[o * P + p] = yt[p * O + o] + bo


cdef void _forward_wide(const real* x, const real* w, const real* b, real* y, real* slot, Py_ssize_t n,
                        const Geom* g) noexcept nogil:
    """y[n] through the wide column layout (stride 1, no padding, OW < W): the columns keep the input's
    row length, Pw = (OH - 1) W + OW of them, so column row (c, kh, kw) is one contiguous run of the plane,
    xc[kh dH W + kw dW + q] for q < Pw (one memcpy instead of one per output row), and never reads past
    the plane (OW + (kW - 1) dW = W). yw (O, Pw) = w @ col; output pixel (oh, ow) is yw column oh W + ow,
    the W - OW columns between output rows are dropped when yw is copied into y[n] with the bias.
    More GEMM work (Pw / P: 1.36 for LeNet-5's second conv), far fewer, longer copies."""
    cdef Py_ssize_t c, kh, kw, o, oh, ow, K = g.K, O = g.O, W = g.W, HW = g.H * g.W, OW = g.OW
    cdef Py_ssize_t Pw = (g.OH - 1) * g.W + g.OW
    cdef const real* xc
    cdef real* col = slot
    cdef real* yw = slot + K * Pw
    cdef real* dst
    cdef const real* src
    cdef real bo
    for c in range(g.C):
        xc = x + (n * g.C + c) * HW
        for kh in range(g.kH):
            for kw in range(g.kW):
                memcpy(col + ((c * g.kH + kh) * g.kW + kw) * Pw, xc + kh * g.dH * W + kw * g.dW,
                       Pw * sizeof(real))
    gemm_rm(False, False, <int>O, <int>Pw, <int>K, <real>1, w, <int>K, col, <int>Pw, <real>0, yw, <int>Pw)
    for o in range(O):
        bo = b[o] if b != NULL else 0
        for oh in range(g.OH):
            dst = y + (n * O + o) * g.P + oh * OW
            src = yw + o * Pw + oh * W
            for ow in range(OW):
                dst[ow] = src[ow] + bo


cdef void _wino_pad(const real* xn, real* xp, const Geom* g) noexcept nogil:
    """The sample xn (C, H, W) zero-padded into the planes xp (C, 2 TH + 2, 2 TW + 2) the tiles read:
    padded pixel (c, h, q) = xn[c, h - pH, q - pW] (0 outside; input rows or columns no tile reaches are
    left out), each row stored deinterleaved (even q, then odd q; wino_pad_row) so that the transform's
    loads are contiguous."""
    cdef Py_ssize_t C = g.C, H = g.H, W = g.W, Hq = 2 * g.TH + 2, Wq = 2 * g.TW + 2
    cdef Py_ssize_t c, h, h0, h1, w0, w1
    h0 = g.pH
    h1 = g.pH + H if g.pH + H < Hq else Hq
    w0 = g.pW
    w1 = g.pW + W if g.pW + W < Wq else Wq
    memset(xp, 0, C * Hq * Wq * sizeof(real))
    for c in range(C):
        for h in range(h0, h1):
            if real is float:
                wino_pad_row_f(xn + (c * H + h - g.pH) * W, w1 - w0, w0, xp + (c * Hq + h) * Wq, g.TW + 1)
            else:
                wino_pad_row_d(xn + (c * H + h - g.pH) * W, w1 - w0, w0, xp + (c * Hq + h) * Wq, g.TW + 1)


cdef inline void _wino_input(const real* xp, Py_ssize_t th0, Py_ssize_t R, real* V, real* e,
                             const Geom* g) noexcept nogil:
    """V[xi, c, t] = (B^T d B)[i, j] (xi = 4 i + j) for the R rows of tiles from th0 (t counts from the
    block's first tile) of every channel of the padded sample xp (_wino_pad); planes g.CT apart, channels
    R TW apart. e: scratch, 4 (2 TW + 2). The transform is wino_in_plane (csrc/winograd.h).
      B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]"""
    cdef Py_ssize_t c, Hq = 2 * g.TH + 2, Wq = 2 * g.TW + 2, Tb = R * g.TW
    for c in range(g.C):
        if real is float:
            wino_in_plane_f(xp + (c * Hq + 2 * th0) * Wq, R, g.TW, V + c * Tb, g.CT, e)
        else:
            wino_in_plane_d(xp + (c * Hq + 2 * th0) * Wq, R, g.TW, V + c * Tb, g.CT, e)


cdef inline void _wino_slot(real* slot, const Geom* g, real** V, real** M, real** xp, real** e,
                            real** r) noexcept nogil:
    """The parts of a Winograd slot (sizes in _plan): V (16 planes g.CT apart), M, the forward's products or
    the backward's transformed gradient (16 planes g.OT apart), the padded sample xp (C planes of
    (2 TH + 2) (2 TW + 2)), scratch rows e (4 of 2 TW + 2) and r (the rest)."""
    V[0] = slot
    M[0] = slot + 16 * g.CT
    xp[0] = M[0] + 16 * g.OT
    e[0] = xp[0] + g.C * (2 * g.TH + 2) * (2 * g.TW + 2)
    r[0] = e[0] + 4 * (2 * g.TW + 2)


cdef void _forward_wino(const real* x, const real* U, const real* b, real* y, real* slot, Py_ssize_t n,
                        const Geom* g) noexcept nogil:
    """y[n] by Winograd F(2x2, 3x3) (Lavin and Gray), for 3x3 kernels with stride 1 and dilation 1.

    The output is cut into T = TH TW tiles of 2x2; tile (th, tw) reads the 4x4 input patch d at
    (2 th - pH, 2 tw - pW) (zeros outside the input). Each patch is transformed (_wino_input), v = B^T d B,
    into V[xi, c, tile] (xi = 4 i + j); U[xi] (O, C) holds the transformed weights G w G^T (the wrapper
    computes them). Then 16 GEMMs M[xi] (O, T) = U[xi] @ V[xi] (C, T), and each output tile is A^T m A of
    its 16 values m, plus the bias (the parts of edge tiles outside y are dropped): 16 O C T multiply-adds
    where im2col + GEMM does 36 O C T. The sample is padded once (_wino_pad), then the tiles go through
    in blocks of g.TB rows of tiles: input transform, GEMMs and output transform of one block while its V
    and M (16 C and 16 O values per tile) are in cache; V and M hold one block. The output transform
    (wino_out_plane) takes r = A^T m over all tiles of the block, then the two output rows of each row of
    tiles.   A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]"""
    cdef Py_ssize_t C = g.C, O = g.O, H = g.H, W = g.W, TH = g.TH, TW = g.TW, TB = g.TB
    cdef Py_ssize_t CT = g.CT, OT = g.OT, OH = g.OH, OW = g.OW
    cdef Py_ssize_t o, xi, th0, R, Tb
    cdef real* V
    cdef real* M
    cdef real* xp
    cdef real* e
    cdef real* r
    cdef real* yo
    cdef real bo
    _wino_slot(slot, g, &V, &M, &xp, &e, &r)
    _wino_pad(x + n * C * H * W, xp, g)
    th0 = 0
    while th0 < TH:  # blocks of TB rows of tiles: V and M of a block stay in cache
        R = TB if th0 + TB <= TH else TH - th0
        Tb = R * TW
        _wino_input(xp, th0, R, V, e, g)
        for xi in range(16):
            gemm_rm(False, False, <int>O, <int>Tb, <int>C, <real>1, U + xi * O * C, <int>C, V + xi * CT,
                    <int>Tb, <real>0, M + xi * OT, <int>Tb)
        for o in range(O):
            bo = b[o] if b != NULL else 0
            yo = y + ((n * O + o) * OH + 2 * th0) * OW
            if real is float:
                wino_out_plane_f(M + o * Tb, OT, R, TW, r, yo, OH - 2 * th0, OW, bo)
            else:
                wino_out_plane_d(M + o * Tb, OT, R, TW, r, yo, OH - 2 * th0, OW, bo)
        th0 += TB


cdef void _forward_sample(const real* x, const real* w, const real* b, real* y, real* col, Py_ssize_t n,
                          const Geom* g) noexcept nogil:
    """y[n] = w @ columns(x[n]) + b: im2col into col (K, P) (none for a direct 1x1 kernel), bias
    pre-filled, one GEMM with beta = 1 straight into y[n]. With g.rows, the row layout instead (w is then
    the permuted weight, col the slot of _forward_rows)."""
    if g.rows:
        _forward_rows(x, w, b, y, col, n, g)
        return
    if g.wide:
        _forward_wide(x, w, b, y, col, n, g)
        return
    if g.wino:
        _forward_wino(x, w, b, y, col, n, g)
        return
    cdef Py_ssize_t c, o, p, K = g.K, P = g.P, O = g.O, HW = g.H * g.W
    cdef real* yn = y + n * O * P
    cdef const real* src
    cdef real beta = 0
    cdef real bo
    if b != NULL:
        for o in range(O):
            bo = b[o]
            for p in range(P):
                yn[o * P + p] = bo
        beta = 1
    if g.direct:
        src = x + n * g.C * HW
    else:
        for c in range(g.C):
            _im2col_plane(x + (n * g.C + c) * HW, col + c * g.taps * P, P, g)
        src = col
    gemm_rm(False, False, <int>O, <int>P, <int>K, <real>1, w, <int>K, src, <int>P, beta, yn, <int>P)


cdef void _conv_forward_par(const real* x, const real* w, const real* b, real* y, real* ws, int nt,
                            const Geom* g, fastbp_interrupt* it) noexcept nogil:
    """Sample-parallel forward: thread t uses the workspace slot ws + t g.slot; BLAS is single-threaded
    (the caller set it) when nt > 1. Thread 0 polls for signals after each of its samples; once
    interrupted, the samples left are skipped."""
    cdef Py_ssize_t n
    cdef int tid
    if nt <= 1:
        for n in range(g.N):
            if fastbp_poll(it):
                return
            _forward_sample(x, w, b, y, ws, n, g)
        return
    for n in prange(g.N, schedule="dynamic", num_threads=nt):
        tid = threadid()
        if not fastbp_stopped(it):
            _forward_sample(x, w, b, y, ws + tid * g.slot, n, g)
            if tid == 0:
                fastbp_poll(it)


cdef void _conv_forward(const real* x, const real* w, const real* b, real* y, real* ws,
                        Py_ssize_t chunk, bint batched, const Geom* g, fastbp_interrupt* it) noexcept nogil:
    """Chunked forward with threaded BLAS outside prange (no BLAS thread hook, or the batched layout). The
    row layout is processed one sample at a time (its slot is one sample's workspace)."""
    cdef Py_ssize_t n0 = 0, nb, j, t, o, p, ld
    cdef Py_ssize_t K = g.K, P = g.P, O = g.O, xs = g.C * g.H * g.W, ys = g.O * g.P
    cdef real beta = 1 if b != NULL else 0
    cdef real bo
    cdef real* col
    cdef real* blk
    cdef real* yr
    cdef const real* src
    if g.rows or g.wide or g.wino:
        # row / wide / Winograd layout without the thread hook: samples one after another, threaded BLAS
        for j in range(g.N):
            if fastbp_poll(it):
                return
            _forward_sample(x, w, b, y, ws, j, g)
        return
    while n0 < g.N:
        if fastbp_poll(it):
            return
        nb = chunk if chunk < g.N - n0 else g.N - n0
        if batched:
            ld = nb * P
            col = ws
            blk = ws + K * ld
            _im2col_chunk(x, n0, nb, col, ld, P, g)
            gemm_rm(False, False, <int>O, <int>ld, <int>K, <real>1, w, <int>K, col, <int>ld, <real>0,
                    blk, <int>ld)
            for t in prange(nb * O, schedule="static", num_threads=threads_for(nb * O * P)):
                j = t // O
                o = t - j * O
                src = blk + o * ld + j * P
                yr = y + (n0 + j) * ys + o * P
                if b != NULL:
                    bo = b[o]
                    for p in range(P):
                        yr[p] = src[p] + bo
                else:
                    memcpy(yr, src, P * sizeof(real))
        else:
            if not g.direct:
                _im2col_chunk(x, n0, nb, ws, P, K * P, g)
            if b != NULL:
                for t in prange(nb * O, schedule="static", num_threads=threads_for(nb * O * P)):
                    j = t // O
                    o = t - j * O
                    yr = y + (n0 + j) * ys + o * P
                    bo = b[o]
                    for p in range(P):
                        yr[p] = bo
            for j in range(nb):
                if fastbp_poll(it):
                    return
                src = (x + (n0 + j) * xs) if g.direct else (ws + j * K * P)
                gemm_rm(False, False, <int>O, <int>P, <int>K, <real>1, w, <int>K, src, <int>P, beta,
                        y + (n0 + j) * ys, <int>P)
        n0 += nb


# ----- backward -------------------------------------------------------------------------------------
cdef inline double _plane_sum(const real* r, Py_ssize_t P) noexcept nogil:
    """Sum of r[0 .. P) in double, in a fixed order (plane_sum in csrc/sums.h: sixteen partial sums, so the
    additions are not one serial dependency chain and the loop vectorizes)."""
    if real is float:
        return plane_sum_f(r, P)
    else:
        return plane_sum_d(r, P)


cdef void _bias_grad(const real* gy, real* db, const Geom* g) noexcept nogil:
    """db[o] = sum over n (in order) of _plane_sum(g[n, o]), in double. The sample-parallel backward
    computes the same per-sample sums inside its loop (_bias_sample_sums, while g[n] is in cache) and
    combines them with _bias_combine in the same order, so both give the same bits."""
    cdef Py_ssize_t o, n, P = g.P, ys = g.O * g.P
    cdef double s
    for o in prange(g.O, schedule="static", num_threads=threads_for(g.N * g.O * g.P)):
        s = 0
        for n in range(g.N):
            s = s + _plane_sum(gy + n * ys + o * P, P)
        db[o] = <real>s


cdef inline void _bias_sample_sums(const real* gy, double* sums, Py_ssize_t n, const Geom* g) noexcept nogil:
    cdef Py_ssize_t o
    for o in range(g.O):
        sums[n * g.O + o] = _plane_sum(gy + (n * g.O + o) * g.P, g.P)


cdef void _bias_combine(const double* sums, real* db, const Geom* g) noexcept nogil:
    cdef Py_ssize_t o, n
    cdef double s
    for o in range(g.O):
        s = 0
        for n in range(g.N):
            s = s + sums[n * g.O + o]
        db[o] = <real>s


cdef void _backward_wino(const real* gy, const real* x, const real* U, real* dx, real* part, real* slot,
                         bint ndx, bint ndw, bint first, Py_ssize_t n, const Geom* g) noexcept nogil:
    """One sample's backward through the Winograd F(2x2, 3x3) forward (the adjoint of _forward_wino).

    Each 2x2 tile of g[n] (zeros past the output's edge) is transformed, gt = A g A^T (A = (A^T)^T), into
    16 planes Gt[xi] (O, T). Then part[xi] (O, C) (+)= Gt[xi] @ V[xi]^T with V the transformed input as in
    the forward (the wrapper turns the summed part into dweight = G^T part G), and dV[xi] (C, T) =
    U[xi]^T @ Gt[xi], whose tiles go back through B dV B^T, overlapping 4x4 patches added into a
    zero-padded plane (rows stored deinterleaved, like the forward's padded input) that is then cropped
    into dx[n]. The whole sample is one block here (per-block weight-gradient GEMMs, K = the block's tiles,
    were slower); dV reuses V."""
    cdef Py_ssize_t C = g.C, O = g.O, H = g.H, W = g.W, TH = g.TH, TW = g.TW, OW = g.OW, OH = g.OH
    cdef Py_ssize_t Hq = 2 * g.TH + 2, Wq = 2 * g.TW + 2, CT = g.CT, OT = g.OT
    cdef Py_ssize_t T = g.TH * g.TW, c, o, h, xi, hq, wv
    cdef real* V
    cdef real* Gt
    cdef real* xp
    cdef real* e
    cdef real* r
    cdef real* dxc
    _wino_slot(slot, g, &V, &Gt, &xp, &e, &r)
    for o in range(O):
        if real is float:
            wino_grad_plane_f(gy + (n * O + o) * OH * OW, OH, OW, TH, TW, Gt + o * T, OT, r)
        else:
            wino_grad_plane_d(gy + (n * O + o) * OH * OW, OH, OW, TH, TW, Gt + o * T, OT, r)
    if ndw:
        _wino_pad(x + n * C * H * W, xp, g)
        _wino_input(xp, 0, TH, V, e, g)
        for xi in range(16):
            gemm_rm(False, True, <int>O, <int>C, <int>T, <real>1, Gt + xi * OT, <int>T, V + xi * CT, <int>T,
                    <real>0 if first else <real>1, part + xi * O * C, <int>C)
    if not ndx:
        return
    for xi in range(16):
        gemm_rm(True, False, <int>C, <int>T, <int>O, <real>1, U + xi * O * C, <int>C, Gt + xi * OT, <int>T,
                <real>0, V + xi * CT, <int>T)
    # dx one channel at a time: dV's tiles, overlapping, added into a zeroed padded plane (xp's first, the
    # padded input is no longer needed), then cropped: dx[h, w] = plane[h + pH, w + pW]; pixels past the
    # plane's edge reach no output, their gradient is 0
    wv = Wq - g.pW if Wq - g.pW < W else W
    for c in range(C):
        memset(xp, 0, Hq * Wq * sizeof(real))
        if real is float:
            wino_in_adjoint_plane_f(V + c * T, CT, TH, TW, xp, e)
        else:
            wino_in_adjoint_plane_d(V + c * T, CT, TH, TW, xp, e)
        dxc = dx + (n * C + c) * H * W
        for h in range(H):
            hq = h + g.pH
            if hq < Hq:
                if real is float:  # the plane's rows are deinterleaved (wino_in_adjoint_plane)
                    wino_unpad_row_f(xp + hq * Wq, wv, g.pW, dxc + h * W, TW + 1)
                else:
                    wino_unpad_row_d(xp + hq * Wq, wv, g.pW, dxc + h * W, TW + 1)
                if wv < W:
                    memset(dxc + h * W + wv, 0, (W - wv) * sizeof(real))
            else:
                memset(dxc + h * W, 0, W * sizeof(real))


cdef void _backward_sample(const real* gy, const real* x, const real* w, real* dx, real* part, real* col,
                           bint ndx, bint ndw, bint first, Py_ssize_t n, const Geom* g) noexcept nogil:
    """One sample's share: part (K, O) (+)= columns(x[n]) @ g[n]^T (= unless `first`), and
    dx[n] = col2im(w^T @ g[n]). The columns are recomputed into col (K, P), then overwritten by dcol.
    With g.wino, _backward_wino instead (w is then U, col its slot, part 16 O C)."""
    if g.wino:
        _backward_wino(gy, x, w, dx, part, col, ndx, ndw, first, n, g)
        return
    cdef Py_ssize_t c, K = g.K, P = g.P, O = g.O, HW = g.H * g.W, xs = g.C * g.H * g.W
    cdef const real* gn = gy + n * O * P
    cdef const real* cn
    if ndw:
        if g.direct:
            cn = x + n * xs
        else:
            for c in range(g.C):
                _im2col_plane(x + n * xs + c * HW, col + c * g.taps * P, P, g)
            cn = col
        gemm_rm(False, True, <int>K, <int>O, <int>P, <real>1, cn, <int>P, gn, <int>P,
                <real>0 if first else <real>1, part, <int>O)
    if ndx:
        if g.direct:
            gemm_rm(True, False, <int>K, <int>P, <int>O, <real>1, w, <int>K, gn, <int>P, <real>0,
                    dx + n * xs, <int>P)
        else:
            gemm_rm(True, False, <int>K, <int>P, <int>O, <real>1, w, <int>K, gn, <int>P, <real>0,
                    col, <int>P)
            for c in range(g.C):
                _col2im_plane(col + c * g.taps * P, P, dx + n * xs + c * HW, g)


cdef void _backward_block(const real* gy, const real* x, const real* w, real* dx, real* part, real* slot,
                          bint ndx, bint ndw, Py_ssize_t n0, Py_ssize_t nb, Py_ssize_t sub, bint poll,
                          const Geom* g, fastbp_interrupt* it) noexcept nogil:
    """One weight-gradient block in the batched layout (small maps): samples n0 .. n0 + nb - 1, taken sub
    at a time (a constant of the geometry) side by side: g gathered into blk (O, sub P), the columns into
    col (K, sub P); part (K, O) (+)= col @ blk^T (= for the block's first group), then dcol = w^T @ blk
    into col and col2im into dx. slot holds (K + O) sub P elements. With poll (the calling thread), polls
    for signals after each group; once stopped, the groups left are skipped."""
    cdef Py_ssize_t j, c, o, m, a, K = g.K, P = g.P, O = g.O, HW = g.H * g.W, ld
    cdef real* col = slot
    cdef real* blk
    a = n0
    while a < n0 + nb:
        if fastbp_stopped(it):
            return
        m = sub if sub < n0 + nb - a else n0 + nb - a
        ld = m * P
        blk = slot + K * ld
        for j in range(m):
            for o in range(O):
                memcpy(blk + o * ld + j * P, gy + ((a + j) * O + o) * P, P * sizeof(real))
        if ndw:
            for j in range(m):
                for c in range(g.C):
                    _im2col_plane(x + ((a + j) * g.C + c) * HW, col + j * P + c * g.taps * ld, ld, g)
            gemm_rm(False, True, <int>K, <int>O, <int>ld, <real>1, col, <int>ld, blk, <int>ld,
                    <real>0 if a == n0 else <real>1, part, <int>O)
        if ndx:
            gemm_rm(True, False, <int>K, <int>ld, <int>O, <real>1, w, <int>K, blk, <int>ld, <real>0,
                    col, <int>ld)
            for j in range(m):
                for c in range(g.C):
                    _col2im_plane(col + j * P + c * g.taps * ld, ld, dx + ((a + j) * g.C + c) * HW, g)
        if poll:
            fastbp_poll(it)
        a += m


cdef void _sum_partials(const real* parts, Py_ssize_t nblk, real* dwt, Py_ssize_t size) noexcept nogil:
    """dwt[i] = parts[0][i] + parts[1][i] + ... in block order (each element's order is fixed)."""
    cdef Py_ssize_t i, k
    cdef real s
    for i in prange(size, schedule="static", num_threads=threads_for(nblk * size)):
        s = parts[i]
        for k in range(1, nblk):
            s = s + parts[k * size + i]
        dwt[i] = s


cdef void _conv_backward_par(const real* gy, const real* x, const real* w, real* dx, real* dwt, real* parts,
                             real* ws, double* bsums, real* db, bint ndx, bint ndw, Py_ssize_t bs,
                             Py_ssize_t nblk, int nt, Py_ssize_t sub, const Geom* g,
                             fastbp_interrupt* it) noexcept nogil:
    """Block-parallel backward: block k = samples [k bs, (k + 1) bs) accumulates its weight gradient into
    parts + k g.part (K O, or 16 O C with Winograd), then the partials are summed in block order. The
    blocks do not depend on the thread count, so neither does the result. Thread t uses the slot
    ws + t g.slot. With bsums (N, O) given, the bias gradient's per-sample sums are taken while g[n] is in
    cache and combined into db at the end. Thread 0 polls for signals after each of its samples; once
    interrupted, the samples left are skipped and nothing is summed."""
    cdef Py_ssize_t k, n, hi, KO = g.part
    cdef int tid
    if ndw and g.N == 0:
        memset(dwt, 0, KO * sizeof(real))
        return
    if nblk == 1:
        parts = dwt
    for k in prange(nblk, schedule="dynamic", num_threads=nt):
        tid = threadid()
        hi = (k + 1) * bs
        if hi > g.N:
            hi = g.N
        if sub > 0:
            _backward_block(gy, x, w, dx, parts + k * KO, ws + tid * g.slot, ndx, ndw, k * bs, hi - k * bs,
                            sub, tid == 0, g, it)
            if bsums != NULL:
                for n in range(k * bs, hi):
                    _bias_sample_sums(gy, bsums, n, g)
        else:
            for n in range(k * bs, hi):
                if fastbp_stopped(it):
                    break
                _backward_sample(gy, x, w, dx, parts + k * KO, ws + tid * g.slot,
                                 ndx, ndw, n == k * bs, n, g)
                if bsums != NULL:
                    _bias_sample_sums(gy, bsums, n, g)
                if tid == 0:
                    fastbp_poll(it)
    if fastbp_stopped(it):
        return
    if ndw and nblk > 1:
        _sum_partials(parts, nblk, dwt, KO)
    if bsums != NULL:
        _bias_combine(bsums, db, g)


cdef void _conv_backward(const real* gy, const real* x, const real* w, real* dx, real* dwt, real* parts,
                         real* ws, bint ndx, bint ndw, Py_ssize_t bs, Py_ssize_t nblk, Py_ssize_t chunk,
                         bint batched, const Geom* g, fastbp_interrupt* it) noexcept nogil:
    """Chunked backward with threaded BLAS outside prange. dx (N, C, H, W) and dwt (K, O) = dweight^T. The
    weight gradient is accumulated transposed, dwt += col[n] @ g[n]^T, because BLAS runs that orientation
    of the product faster than g[n] @ col[n]^T. Per-sample layout: same blocks of bs samples and partials as
    _conv_backward_par (same result); batched layout: one sum over the batch in chunk order."""
    cdef Py_ssize_t n0 = 0, nb, j, t, o, ld, n, KO = g.part
    cdef Py_ssize_t K = g.K, P = g.P, O = g.O, xs = g.C * g.H * g.W, ys = g.O * g.P
    cdef real beta = 0
    cdef real* col
    cdef real* blk
    cdef real* dst
    cdef const real* src
    if ndw and g.N == 0:
        memset(dwt, 0, KO * sizeof(real))
        return
    if nblk == 1:
        parts = dwt
    if g.wino:
        # Winograd without the thread hook: samples one after another (same blocks), threaded BLAS
        for n in range(g.N):
            if fastbp_poll(it):
                return
            _backward_sample(gy, x, w, dx, parts + (n // bs) * KO, ws, ndx, ndw, n % bs == 0, n, g)
        if ndw and nblk > 1:
            _sum_partials(parts, nblk, dwt, KO)
        return
    while n0 < g.N:
        if fastbp_poll(it):
            return
        nb = chunk if chunk < g.N - n0 else g.N - n0
        if batched:
            ld = nb * P
            col = ws
            blk = ws + K * ld
            for t in prange(nb * O, schedule="static", num_threads=threads_for(nb * O * P)):
                j = t // O
                o = t - j * O
                memcpy(blk + o * ld + j * P, gy + (n0 + j) * ys + o * P, P * sizeof(real))
            if ndw:
                _im2col_chunk(x, n0, nb, col, ld, P, g)
                gemm_rm(False, True, <int>K, <int>O, <int>ld, <real>1, col, <int>ld, blk, <int>ld, beta,
                        dwt, <int>O)
            if ndx:
                gemm_rm(True, False, <int>K, <int>ld, <int>O, <real>1, w, <int>K, blk, <int>ld, <real>0,
                        col, <int>ld)
                _col2im_chunk(col, ld, P, dx, n0, nb, g)
            beta = 1
        else:
            if ndw and not g.direct:
                _im2col_chunk(x, n0, nb, ws, P, K * P, g)
            for j in range(nb):
                if fastbp_poll(it):
                    return
                n = n0 + j
                src = gy + n * ys
                col = (<real*>x + n * xs) if g.direct else (ws + j * K * P)
                if ndw:
                    gemm_rm(False, True, <int>K, <int>O, <int>P, <real>1, col, <int>P, src, <int>P,
                            <real>0 if n % bs == 0 else <real>1, parts + (n // bs) * KO, <int>O)
                if ndx:
                    dst = (dx + n * xs) if g.direct else col
                    gemm_rm(True, False, <int>K, <int>P, <int>O, <real>1, w, <int>K, src, <int>P, <real>0,
                            dst, <int>P)
            if ndx and not g.direct:
                _col2im_chunk(ws, P, K * P, dx, n0, nb, g)
        n0 += nb
    if ndw and not batched and nblk > 1:
        _sum_partials(parts, nblk, dwt, KO)


# ----- validation and planning (Python level, before any nogil code) --------------------------------


cdef int _geometry(Geom* g, tuple xs, tuple wsh, object stride, object padding, object dilation) except -1:
    if len(xs) != 4:
        raise ValueError(f"conv2d: x must be 4-D (N, C, H, W), got shape {xs}")
    if len(wsh) != 4:
        raise ValueError(f"conv2d: weight must be 4-D (out_channels, in_channels, kH, kW), got shape {wsh}")
    g.sH, g.sW = int_pair("conv2d", stride, "stride", 1)
    g.pH, g.pW = int_pair("conv2d", padding, "padding", 0)
    g.dH, g.dW = int_pair("conv2d", dilation, "dilation", 1)
    g.N, g.C, g.H, g.W = xs
    g.O, cw, g.kH, g.kW = wsh
    if g.C != cw:
        raise ValueError(f"conv2d: x has shape {xs} ({g.C} channels) but weight has shape {wsh} "
                         f"({cw} input channels)")
    if g.C == 0 or g.O == 0 or g.kH == 0 or g.kW == 0:
        raise ValueError(f"conv2d: empty channel or kernel dimension, x shape {xs}, weight shape {wsh}")
    ekh, ekw = (g.kH - 1) * g.dH + 1, (g.kW - 1) * g.dW + 1
    hp, wp = g.H + 2 * g.pH, g.W + 2 * g.pW
    if ekh > hp or ekw > wp:
        raise ValueError(f"conv2d: kernel {g.kH}x{g.kW} (dilation {(g.dH, g.dW)}, spanning {ekh}x{ekw}) is "
                         f"larger than the padded input {hp}x{wp} (x shape {xs}, weight shape {wsh}, "
                         f"padding {(g.pH, g.pW)})")
    g.OH = (hp - ekh) // g.sH + 1
    g.OW = (wp - ekw) // g.sW + 1
    g.taps = g.kH * g.kW
    g.K = g.C * g.taps
    g.P = g.OH * g.OW
    g.direct = g.taps == 1 and g.sH == 1 and g.sW == 1 and g.pH == 0 and g.pW == 0
    g.same = g.sH == 1 and g.sW == 1 and g.OW == g.W
    g.phase = (g.sH == 2 and g.sW == 2 and g.dH == 1 and g.dW == 1 and g.taps > 1
               and (g.W + 1) // 2 <= g.OW and 4 * ((g.H + 1) // 2) * g.OW <= PHASE_MAX)
    for d, what in ((g.K, "C*kH*kW"), (g.P, "OH*OW"), (g.O, "out_channels"), (g.C * g.H * g.W, "C*H*W")):
        check_blas_size(d, f"conv2d {what}")
    return 0


# Most blocks the weight gradient is split into (each block of samples has its own partial sum).
DEFAULT_MAX_BLOCKS = 16
cdef enum:
    PARTIALS_BYTES = 64 * 1024 * 1024
cdef Py_ssize_t _max_blocks = DEFAULT_MAX_BLOCKS
# The block-parallel backward of the batched layout multiplies at most this many columns (samples side by
# side) at once: bounds its workspace and the time between two polls for Ctrl-C.
cdef enum:
    BLOCK_COLUMNS = 1024


cdef struct Plan:
    bint batched        # batched GEMM layout (small outputs); always the chunked path
    bint par            # sample-parallel path: prange over samples, single-threaded BLAS inside
    Py_ssize_t chunk    # samples whose columns the workspace holds at once (par: one per thread)
    int nt              # OpenMP threads of the sample-parallel loop
    Py_ssize_t bs       # samples per weight-gradient block (independent of the thread count)
    Py_ssize_t nblk     # number of blocks
    Py_ssize_t sub      # backward, batched layout on the block-parallel path: samples per GEMM (else 0)


cdef bint _wino_fits(const Geom* g):
    """Winograd F(2x2, 3x3) applies: a 3x3 kernel, stride 1, dilation 1, enough channels in and out."""
    return (g.kH == 3 and g.kW == 3 and g.sH == 1 and g.sW == 1 and g.dH == 1 and g.dW == 1
            and g.C >= _wino_min_channels and g.O >= _wino_min_channels
            and g.P * (g.C if g.C < g.O else g.O) >= _wino_min_size)


# The forward of a map small enough for the batched layout (P < batch_pixels, and below the default
# threshold: a larger batch_pixels still forces the batched layout on larger maps) but at least
# WINO_SMALL_MIN_SIDE on each side takes Winograd where its kernel fits, whatever the size threshold:
# the baseline there is the batched GEMM, not the per-sample one. Measured, one thread, CPU time, batch
# 64, forward, Winograd / batched: 64 -> 64 on 7x7 0.85, 32 -> 32 0.90, 128 -> 128 0.80, 16 -> 16 0.83,
# 32 -> 64 (batch 32) 0.91, 64 -> 64 on 6x6 0.91; on 5x5 1.14 and 4x4 1.11 (so they stay batched). The
# backward stays batched (Winograd's backward at 64 -> 64 on 7x7: 1.19x).
cdef enum:
    WINO_SMALL_MIN_SIDE = 6


cdef bint _wino_small_fits(const Geom* g):
    return (g.kH == 3 and g.kW == 3 and g.sH == 1 and g.sW == 1 and g.dH == 1 and g.dW == 1
            and g.C >= _wino_min_channels and g.O >= _wino_min_channels
            and g.OH >= WINO_SMALL_MIN_SIDE and g.OW >= WINO_SMALL_MIN_SIDE and g.P < DEFAULT_BATCH_PIXELS)


cdef int _plan(Geom* g, Py_ssize_t itemsize, Plan* pl, bint backward) except -1:
    """Layout, path, samples per chunk, threads and weight-gradient blocks for this geometry under the
    current workspace limit and BLAS thread hook; sets the layout flags (g.wino, g.rows, g.wide), the
    Winograd tile counts, the slot size and the weight-gradient partial size in g."""
    cdef Py_ssize_t per, cap, nb, n = g.N if g.N > 0 else 1
    pl.batched = g.P < _batch_pixels
    g.wino = not pl.batched and _wino_fits(g)
    if pl.batched and not backward and _wino_small_fits(g):
        pl.batched = False
        g.wino = True
    pl.par = _blas_hooks() and not pl.batched
    g.TH = (g.OH + 1) // 2
    g.TW = (g.OW + 1) // 2
    if g.wino and g.TW % 16 >= 14:
        # one or two tiles short of a multiple of 16 per row: compute the grid that wide (junk tiles
        # past the edge read zeros and are dropped) so that the transforms' loops over a row run in full
        # vectors. One thread, 32 x 16 -> 32 channels: 28x28 forward 0.79-0.83x, backward 0.96-0.98x;
        # 30x30 0.86, 0.90. Wider rounding lost (34x34 to 20 tiles: forward 1.03x, backward 1.11x).
        g.TW = (g.TW + 15) // 16 * 16
    g.TB = g.TH
    if _wino_block_tiles > 0 and not backward:
        # as many blocks as hold at least _wino_block_tiles tiles each, rows shared out evenly: a short
        # last block costs 16 GEMM calls for little work (24x24 outputs in blocks of 5, 5, 2 rows of 12
        # tiles took 1.12x the time of 6, 6)
        nb = g.TH * g.TW // _wino_block_tiles
        if nb > 1:
            g.TB = (g.TH + nb - 1) // nb
    # plane strides padded off powers of two: the 16 values of a tile go to / come from 16 planes, and at
    # a power-of-two distance those accesses all hit the same cache sets (measured: 2x slower overall)
    g.CT = g.C * g.TB * g.TW + 16
    g.OT = g.O * g.TB * g.TW + 16
    # 1x1 kernels keep the column layout: their rows are single values of the channels-last copy (one
    # thread, forward, (64,16,28,28)x(32,16,1,1) stride 2: rows 0.51-0.66 ms, columns 0.29 ms)
    g.rows = (not backward and not pl.batched and not g.direct and not g.wino and g.K > g.C
              and g.O >= _row_min_channels
              and g.C >= _row_min_channels)
    g.wide = (_wide and not backward and not pl.batched and not g.direct and not g.rows and not g.wino
              and g.sH == 1 and g.sW == 1 and g.pH == 0 and g.pW == 0 and g.OW < g.W)
    if pl.batched:
        g.slot = (g.K + g.O) * g.P
    elif g.direct:
        g.slot = 0
    elif g.rows:
        g.slot = (g.H + 2 * g.pH) * (g.W + 2 * g.pW) * g.C + g.P * (g.K + g.O)
    elif g.wide:
        g.slot = ((g.OH - 1) * g.W + g.OW) * (g.K + g.O)
    elif g.wino:
        # V and M (16 planes each; the forward's hold one block, the backward's the whole sample), the padded
        # sample (the backward then accumulates dx in its first plane), 4 rows e, and 8 block rows r of the
        # forward's output transform or 4 rows (a row of tiles' 2x2 phases) for the gradient's transform
        g.slot = (16 * (g.CT + g.OT) + g.C * (2 * g.TH + 2) * (2 * g.TW + 2) + 4 * (2 * g.TW + 2)
                  + (4 * g.TW if backward else 8 * g.TB * g.TW))
    else:
        g.slot = g.K * g.P
    per = g.slot * itemsize
    # blocks: a function of N and the weight size only (never of the thread count or the workspace limit,
    # so results do not change with either); the partials take at most PARTIALS_BYTES
    g.part = 16 * g.O * g.C if g.wino else g.K * g.O
    cap = PARTIALS_BYTES // (g.part * itemsize)
    pl.nblk = n if n < _max_blocks else _max_blocks
    if pl.nblk > cap:
        pl.nblk = cap if cap > 1 else 1
    pl.bs = (n + pl.nblk - 1) // pl.nblk
    pl.nblk = (n + pl.bs - 1) // pl.bs
    pl.sub = 0
    if backward and pl.batched and _blas_hooks():
        # the backward of the batched layout runs block-parallel too: each thread takes whole
        # weight-gradient blocks, sub samples side by side per GEMM pair (at most BLOCK_COLUMNS columns,
        # a constant of the geometry like the blocks, so the result does not depend on the thread count)
        pl.sub = BLOCK_COLUMNS // g.P
        if pl.sub > pl.bs:
            pl.sub = pl.bs
        if pl.sub < 1:
            pl.sub = 1
        if g.slot * pl.sub * itemsize <= _workspace_limit:
            pl.par = True
            g.slot *= pl.sub
            per = g.slot * itemsize
        else:
            pl.sub = 0
    pl.nt = 1
    if pl.par:
        if threads_for(n * g.K * g.P) > 1:
            pl.nt = num_threads()
        cap = n if per == 0 else _workspace_limit // per
        if pl.nt > cap:
            pl.nt = cap if cap > 1 else 1
        if pl.nt > n:
            pl.nt = n
        if backward and pl.nt > pl.nblk:
            pl.nt = pl.nblk
        pl.chunk = pl.nt
    elif per == 0:
        pl.chunk = n
    elif g.rows or g.wide or g.wino:
        pl.chunk = 1
    else:
        pl.chunk = (_workspace_limit if _workspace_limit < _chunk_bytes else _chunk_bytes) // per
        if pl.chunk < 1:
            pl.chunk = 1
        if pl.chunk > n:
            pl.chunk = n
    if pl.batched:
        check_blas_size((pl.sub if pl.par else pl.chunk) * g.P, "conv2d chunk*OH*OW")
    return 0


# The workspace is kept between calls (reallocating it each call costs page faults in the kernel, a
# visible share of a small network's step). One cached buffer, handed to one call at a time: a call that
# finds it in use by another thread (the kernels release the GIL) allocates its own. A workspace larger
# than the limit (one sample whose columns exceed it) is never cached.
cdef object _ws_cache = None
_ws_lock = threading.Lock()


cdef tuple _acquire_workspace(const Geom* g, Py_ssize_t chunk, object dtype):
    """(array, held): the workspace for this plan (chunk slots of g.slot elements); held means the caller
    must release _ws_lock."""
    global _ws_cache
    cdef Py_ssize_t n = g.slot * chunk if g.slot > 0 else 1
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    if nbytes > _workspace_limit or not _ws_lock.acquire(False):
        return np.empty(n, dtype=dtype), False
    if _ws_cache is None or _ws_cache.nbytes < nbytes:
        _ws_cache = None
        _ws_cache = np.empty(nbytes, dtype=np.uint8)
    return _ws_cache[:nbytes].view(dtype), True


cdef inline void* _ptr(object a):
    return cnp.PyArray_DATA(<cnp.ndarray>a)


# ----- public kernels -------------------------------------------------------------------------------
cdef void _wino_weight(const real* w, real* U, Py_ssize_t O, Py_ssize_t C) noexcept nogil:
    """U[4 i + j, o, c] = (G w[o, c] G^T)[i, j], in double, rounded once;
    G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]."""
    cdef Py_ssize_t o, c, k, OC = O * C
    cdef const real* wk
    cdef double t[4][3]
    cdef real* u
    for o in range(O):
        for c in range(C):
            wk = w + (o * C + c) * 9
            for k in range(3):  # t = G w (rows of w combined)
                t[0][k] = wk[k]
                t[1][k] = 0.5 * ((<double>wk[k] + wk[3 + k]) + wk[6 + k])
                t[2][k] = 0.5 * ((<double>wk[k] - wk[3 + k]) + wk[6 + k])
                t[3][k] = wk[6 + k]
            u = U + o * C + c
            for k in range(4):  # U = t G^T (columns of t combined)
                u[(4 * k) * OC] = <real>t[k][0]
                u[(4 * k + 1) * OC] = <real>(0.5 * ((t[k][0] + t[k][1]) + t[k][2]))
                u[(4 * k + 2) * OC] = <real>(0.5 * ((t[k][0] - t[k][1]) + t[k][2]))
                u[(4 * k + 3) * OC] = <real>t[k][2]


cdef void _wino_weight_grad(const real* dU, real* dw, Py_ssize_t O, Py_ssize_t C) noexcept nogil:
    """dw[o, c] = G^T dU[:, o, c] G (the adjoint of _wino_weight), in double, rounded once."""
    cdef Py_ssize_t o, c, j, OC = O * C
    cdef const real* d
    cdef double s[3][4]
    cdef real* wk
    for o in range(O):
        for c in range(C):
            d = dU + o * C + c
            for j in range(4):  # s = G^T dU (rows of dU combined)
                s[0][j] = d[j * OC] + 0.5 * (<double>d[(4 + j) * OC] + d[(8 + j) * OC])
                s[1][j] = 0.5 * (<double>d[(4 + j) * OC] - d[(8 + j) * OC])
                s[2][j] = 0.5 * (<double>d[(4 + j) * OC] + d[(8 + j) * OC]) + d[(12 + j) * OC]
            wk = dw + (o * C + c) * 9
            for j in range(3):  # dw = s G (columns of s combined)
                wk[3 * j] = <real>(s[j][0] + 0.5 * (s[j][1] + s[j][2]))
                wk[3 * j + 1] = <real>(0.5 * (s[j][1] - s[j][2]))
                wk[3 * j + 2] = <real>(0.5 * (s[j][1] + s[j][2]) + s[j][3])


cdef object _winograd_weight(object weight):
    """U (16, O, C): G w[o, c] G^T for every (o, c) of the wrapper's validated, contiguous (O, C, 3, 3)
    float weight (module-private: callers have checked the shape)."""
    cdef Py_ssize_t O = weight.shape[0], C = weight.shape[1]
    U = np.empty((16, O, C), dtype=weight.dtype)
    cdef void* pw = _ptr(weight)
    cdef void* pu = _ptr(U)
    if weight.dtype == np.float32:
        with nogil:
            _wino_weight[float](<float*>pw, <float*>pu, O, C)
    else:
        with nogil:
            _wino_weight[double](<double*>pw, <double*>pu, O, C)
    return U


cdef object _winograd_weight_grad(object du, Py_ssize_t O, Py_ssize_t C):
    """dweight (O, C, 3, 3) from the transformed-domain gradient du (16 O C elements, contiguous; the
    backward's own buffer)."""
    dw = np.empty((O, C, 3, 3), dtype=du.dtype)
    cdef void* pd = _ptr(du)
    cdef void* pw = _ptr(dw)
    if du.dtype == np.float32:
        with nogil:
            _wino_weight_grad[float](<float*>pd, <float*>pw, O, C)
    else:
        with nogil:
            _wino_weight_grad[double](<double*>pd, <double*>pw, O, C)
    return dw


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, out=None):
    """y = conv2d(x, weight) + bias for x (N, C, H, W), weight (O, C, kH, kW), bias (O,) or None.

    stride, padding (zeros) and dilation are an int or a (height, width) pair. Returns y (N, O, OH, OW),
    written into `out` (C-contiguous, x's dtype) when given."""
    cdef Geom g
    cdef Plan pl
    x = as_float_array(x, "x")
    weight = as_float_array(weight, "weight")
    check_same_dtype(x, "x", weight, "weight")
    _geometry(&g, x.shape, weight.shape, stride, padding, dilation)
    if bias is not None:
        bias = as_float_array(bias, "bias")
        check_same_dtype(x, "x", bias, "bias")
        if bias.shape != (g.O,):
            raise ValueError(f"conv2d: bias has shape {bias.shape} but weight has shape {weight.shape}; "
                             f"bias must have shape ({g.O},)")
    _plan(&g, x.dtype.itemsize, &pl, False)
    y = out_array(out, (g.N, g.O, g.OH, g.OW), x.dtype, "out", (x, weight, bias))
    if g.rows:  # the row layout multiplies by the weight in (O, kH, kW, C) order
        weight = np.ascontiguousarray(weight.transpose(0, 2, 3, 1))
    elif g.wino:  # Winograd multiplies by the transformed weight U (16, O, C)
        weight = _winograd_weight(weight)
    cdef void* px = _ptr(x)
    cdef void* pw = _ptr(weight)
    cdef void* pb = _ptr(bias) if bias is not None else NULL
    cdef void* py = _ptr(y)
    cdef void* pws
    # BLAS single-threaded on the whole sample-parallel path, also when the loop runs on one thread (small
    # work, or one sample): OpenBLAS's threaded sgemm rounds differently from its single-threaded one
    # (measured: 288x16x144, 256^3, 100x10x784 differ in the last bits), so a threaded GEMM here made
    # the result depend on the thread count
    # The batched layout (small maps) too, when the hook exists: its GEMMs are small and the hand-offs
    # between our threads and OpenBLAS's cost more than they gain (2 cores, 2 threads, loaded machine,
    # (64,32,14,14)x(64,32,3,3) stride 2: forward 6.3-11.5 ms CPU threaded vs 1.8 ms single, backward
    # 11.5-14.4 vs 3.1; the 1x1 stride-2 projection's backward 2.1-24 vs 0.5)
    cdef bint single = pl.par or (pl.batched and _blas_hooks())
    cdef fastbp_interrupt it
    interrupt_init(&it)
    ws, held = _acquire_workspace(&g, pl.chunk, x.dtype)
    try:
        pws = _ptr(ws)
        if single:
            _blas_single_enter()
        try:
            if x.dtype == np.float32:
                with nogil:
                    if pl.par:
                        _conv_forward_par[float](<float*>px, <float*>pw, <float*>pb, <float*>py, <float*>pws,
                                                 pl.nt, &g, &it)
                    else:
                        _conv_forward[float](<float*>px, <float*>pw, <float*>pb, <float*>py, <float*>pws,
                                             pl.chunk, pl.batched, &g, &it)
            else:
                with nogil:
                    if pl.par:
                        _conv_forward_par[double](<double*>px, <double*>pw, <double*>pb, <double*>py,
                                                  <double*>pws, pl.nt, &g, &it)
                    else:
                        _conv_forward[double](<double*>px, <double*>pw, <double*>pb, <double*>py, <double*>pws,
                                              pl.chunk, pl.batched, &g, &it)
            interrupt_raise(&it)  # Ctrl-C during the call: y is discarded
        finally:
            if single:
                _blas_single_exit()
    finally:
        if held:
            _ws_lock.release()
    return y


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, need_input_grad=True,
                    need_weight_grad=True, need_bias_grad=True, out=None):
    """Gradients of conv2d_forward: returns (dx, dweight, dbias), None where not needed. out, if given, is
    a tuple (dx, dweight, dbias) of arrays (None entries allocate) the results are written into."""
    cdef Geom g
    cdef Plan pl
    cdef bint ndx = bool(need_input_grad), ndw = bool(need_weight_grad), ndb = bool(need_bias_grad)
    x = as_float_array(x, "x")
    weight = as_float_array(weight, "weight")
    grad_out = as_float_array(grad_out, "grad_out")
    check_same_dtype(x, "x", weight, "weight")
    check_same_dtype(x, "x", grad_out, "grad_out")
    _geometry(&g, x.shape, weight.shape, stride, padding, dilation)
    if grad_out.shape != (g.N, g.O, g.OH, g.OW):
        raise ValueError(f"conv2d_backward: grad_out has shape {grad_out.shape}, expected "
                         f"{(g.N, g.O, g.OH, g.OW)} for x {x.shape} and weight {weight.shape}")
    _plan(&g, x.dtype.itemsize, &pl, True)
    dt = x.dtype
    if out is not None and (not isinstance(out, tuple) or len(out) != 3):
        raise TypeError(f"conv2d_backward: out must be a tuple of 3 arrays or None, got {type(out).__name__}")
    ox, ow, ob = out if out is not None else (None, None, None)
    ins = (grad_out, x, weight)
    dx = out_array(ox, x.shape, dt, "out[0]", ins) if ndx else None
    if ndw and ow is not None:
        out_array(ow, tuple(weight.shape), dt, "out[1]", ins)
    dwt = np.empty(g.part, dtype=dt) if ndw else None
    if g.wino and ndx:  # Winograd multiplies by the transformed weight U (16, O, C)
        weight = _winograd_weight(weight)
    db = out_array(ob, (g.O,), dt, "out[2]", ins) if ndb else None
    parts = (np.empty((pl.nblk, g.part), dtype=dt) if ndw and pl.nblk > 1 and (pl.par or not pl.batched)
             else None)
    cdef void* pg = _ptr(grad_out)
    cdef void* px = _ptr(x)
    cdef void* pw = _ptr(weight)
    cdef void* pdx = _ptr(dx) if ndx else NULL
    cdef void* pdw = _ptr(dwt) if ndw else NULL
    cdef void* pdb = _ptr(db) if ndb else NULL
    cdef void* ppa = _ptr(parts) if parts is not None else NULL
    cdef void* pws = NULL
    # BLAS single-threaded on this path and the batched one (see conv2d_forward)
    cdef bint single = (pl.par or (pl.batched and _blas_hooks())) and (ndx or ndw)
    # bias gradient inside the sample-parallel loop (same sums, same order as _bias_grad)
    cdef bint fused = ndb and pl.par and (ndx or ndw) and g.N > 0
    bsums = np.empty((g.N, g.O), dtype=np.float64) if fused else None
    cdef double* pbs = <double*>_ptr(bsums) if fused else NULL
    cdef fastbp_interrupt it
    interrupt_init(&it)
    held = False
    try:
        if ndx or ndw:
            ws, held = _acquire_workspace(&g, pl.chunk, dt)
            pws = _ptr(ws)
        if single:
            _blas_single_enter()
        try:
            if dt == np.float32:
                with nogil:
                    if ndb and not fused:
                        _bias_grad[float](<float*>pg, <float*>pdb, &g)
                    if (ndx or ndw) and pl.par:
                        _conv_backward_par[float](<float*>pg, <float*>px, <float*>pw, <float*>pdx, <float*>pdw,
                                                  <float*>ppa, <float*>pws, pbs, <float*>pdb, ndx, ndw, pl.bs,
                                                  pl.nblk, pl.nt, pl.sub, &g, &it)
                    elif ndx or ndw:
                        _conv_backward[float](<float*>pg, <float*>px, <float*>pw, <float*>pdx, <float*>pdw,
                                              <float*>ppa, <float*>pws, ndx, ndw, pl.bs, pl.nblk, pl.chunk,
                                              pl.batched, &g, &it)
            else:
                with nogil:
                    if ndb and not fused:
                        _bias_grad[double](<double*>pg, <double*>pdb, &g)
                    if (ndx or ndw) and pl.par:
                        _conv_backward_par[double](<double*>pg, <double*>px, <double*>pw, <double*>pdx,
                                                   <double*>pdw, <double*>ppa, <double*>pws, pbs,
                                                   <double*>pdb, ndx, ndw, pl.bs, pl.nblk, pl.nt, pl.sub, &g,
                                                   &it)
                    elif ndx or ndw:
                        _conv_backward[double](<double*>pg, <double*>px, <double*>pw, <double*>pdx,
                                               <double*>pdw, <double*>ppa, <double*>pws, ndx, ndw, pl.bs,
                                               pl.nblk, pl.chunk, pl.batched, &g, &it)
            interrupt_raise(&it)  # Ctrl-C during the call: the gradients are discarded
        finally:
            if single:
                _blas_single_exit()
    finally:
        if held:
            _ws_lock.release()
    if not ndw:
        dw = None
    elif g.wino:  # dweight = G^T dU G from the summed transformed-domain gradient dU (16, O, C)
        dw = _winograd_weight_grad(dwt, g.O, g.C)
    else:
        dw = np.ascontiguousarray(dwt.reshape(g.K, g.O).T).reshape(g.O, g.C, g.kH, g.kW)
    if ndw and ow is not None:
        np.copyto(ow, dw)
        dw = ow
    return dx, dw, db


# ----- settings (underscore names: not kernels; fastbp.nn.functional wraps them) ---------------------
def _set_workspace_limit(nbytes):
    """Bound, in bytes, on the im2col workspace of one conv2d call (at least one sample's columns)."""
    global _workspace_limit, _ws_cache
    n = operator.index(nbytes)
    if n < 1:
        raise ValueError(f"conv workspace limit must be >= 1 byte, got {n}")
    with _ws_lock:
        _workspace_limit = n
        _ws_cache = None


def _get_workspace_limit():
    return _workspace_limit


def _cached_workspace_bytes():
    """Bytes held by the workspace kept between calls (0 before the first call or after a limit change)."""
    return 0 if _ws_cache is None else _ws_cache.nbytes


def _knob(name, value, lowest):
    n = operator.index(value)
    if n < lowest:
        raise ValueError(f"{name} must be >= {lowest}, got {value}")
    return n


def _tuning(batch_pixels=None, chunk_bytes=None, max_blocks=None, row_min_channels=None, wide=None,
            winograd_min_channels=None, winograd_min_size=None, winograd_block_tiles=None):
    """Performance knobs (results do not depend on them beyond rounding): batch_pixels is the number of
    output pixels per sample below which the batched layout is used (0: never); chunk_bytes is the
    preferred workspace per chunk of the chunked path (the workspace limit still caps it); max_blocks is the
    most blocks of samples the weight gradient is summed in; row_min_channels is the number of input
    and output channels from which the forward uses the row layout (0: always, where the per-sample layout
    applies); wide switches the forward's wide column layout on or off; winograd_min_channels is the
    number of input and output channels and winograd_min_size the output pixels per sample times the
    smaller channel count
    from which 3x3 stride-1 convs use Winograd; winograd_block_tiles is the least number of tiles per
    block of the Winograd forward (0: whole samples). Returns the previous values."""
    global _batch_pixels, _chunk_bytes, _max_blocks, _row_min_channels, _wide, _wino_min_channels
    global _wino_min_size, _wino_block_tiles
    previous = {"batch_pixels": _batch_pixels, "chunk_bytes": _chunk_bytes, "max_blocks": _max_blocks,
                "row_min_channels": _row_min_channels, "wide": bool(_wide),
                "winograd_min_channels": _wino_min_channels, "winograd_min_size": _wino_min_size,
                "winograd_block_tiles": _wino_block_tiles}
    if winograd_block_tiles is not None:
        _wino_block_tiles = _knob("winograd_block_tiles", winograd_block_tiles, 0)
    if winograd_min_size is not None:
        _wino_min_size = _knob("winograd_min_size", winograd_min_size, 0)
    if winograd_min_channels is not None:
        _wino_min_channels = _knob("winograd_min_channels", winograd_min_channels, 0)
    if wide is not None:
        _wide = bool(wide)
    if row_min_channels is not None:
        _row_min_channels = _knob("row_min_channels", row_min_channels, 0)
    if batch_pixels is not None:
        _batch_pixels = _knob("batch_pixels", batch_pixels, 0)
    if chunk_bytes is not None:
        _chunk_bytes = _knob("chunk_bytes", chunk_bytes, 1)
    if max_blocks is not None:
        _max_blocks = _knob("max_blocks", max_blocks, 1)
    return previous


def _simd_variant():
    """Which compiled variant of the Winograd transforms and the bias sums runs on this CPU: "avx512f",
    "avx2", "baseline", or "baseline (built without clones)" (csrc/fastbp_clones.h)."""
    return fastbp_clone_variant().decode()


def _plan_info(x_shape, weight_shape, stride=1, padding=0, dilation=1, itemsize=4, backward=False):
    """How a forward (or, with backward, a backward) call with these shapes would run: {"layout",
    "parallel", "threads", "chunk", "chunks", "workspace_bytes", "grad_blocks"}. parallel: the
    sample-parallel path (BLAS thread hook found; the backward's batched layout then runs block-parallel);
    chunk: samples whose columns the workspace holds at once (on the parallel path, one slot per thread)."""
    cdef Geom g
    cdef Plan pl
    _geometry(&g, tuple(x_shape), tuple(weight_shape), stride, padding, dilation)
    _plan(&g, itemsize, &pl, bool(backward))
    nbytes = g.slot * pl.chunk * itemsize
    layout = ("batched" if pl.batched else "winograd" if g.wino else "direct" if g.direct else "rows" if g.rows
              else "wide" if g.wide else "per-sample")
    return {"layout": layout,
            "parallel": bool(pl.par), "threads": pl.nt, "chunk": pl.chunk,
            "chunks": -(-g.N // pl.chunk) if g.N else 0, "workspace_bytes": nbytes, "grad_blocks": pl.nblk}


def _set_blas_thread_hooks(set_ptr, get_ptr):
    """Addresses (ints) of the BLAS's void set_num_threads(int) and int get_num_threads(void), or 0/None to
    clear them (then BLAS always runs outside prange, with its own threads). They hold for every kernel
    family (process-wide settings). Returns the previous pair (0, 0 when unset)."""
    cdef size_t s = 0 if set_ptr is None else operator.index(set_ptr)
    cdef size_t q = 0 if get_ptr is None else operator.index(get_ptr)
    if (s == 0) != (q == 0):
        raise ValueError("set_ptr and get_ptr must both be given or both be 0")
    if fastbp_thr.blas_depth:
        raise RuntimeError("cannot change the BLAS thread hooks while a kernel call is running")
    previous = (<size_t>fastbp_thr.blas_set, <size_t>fastbp_thr.blas_get)
    fastbp_thr.blas_set = <fastbp_blas_set_fn>s
    fastbp_thr.blas_get = <fastbp_blas_get_fn>q
    return previous


def _blas_thread_hooks_set():
    """True when the BLAS thread hooks are set (conv2d then runs sample-parallel)."""
    return _blas_hooks()
