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
from _common cimport fastbp_busy_for_load
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
# load-adaptive thread count: opt-in (set_threads_adaptive(True), or FASTBP_THREADS_ADAPTIVE=1 at import)
_state.adaptive = 1 if os.environ.get("FASTBP_THREADS_ADAPTIVE", "0") == "1" else 0
_state.load_busy = 0
_state.load_next_ns = 0


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Matrix products are split into a fixed number of blocks that our threads share (csrc/gemm.pyx). Each
# block re-packs the shared operand, so more blocks than cores cost time: a 256x784x256 product on one
# core took 576 us in 4 blocks, 510 us in 2 (NumPy, one call: 475 us). The number comes from the CPUs
# this process may use at import, never from set_num_threads, so results do not depend on the thread count.
_cpus = _usable_cpus()
_state.gemm_blocks_max = 4 if _cpus >= 4 else (2 if _cpus >= 2 else 1)
cdef bint _forked = False

_state.bound_modules = 0
_threading_capsule = PyCapsule_New(&_state, b"fastbp._C._runtime.threading", NULL)
fastbp_bind_threading(&_state)


def _bound_modules():
    """How many modules use these thread settings: this one and every kernel module that bound itself at
    import (tests check that every kernel module did)."""
    return _state.bound_modules


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


def _set_gemm_blocks_max(int n):
    """Test hook: at most n (1, 2 or 4) blocks per matrix product (default from the usable CPUs). Returns
    the previous value."""
    if n not in (1, 2, 4):
        raise ValueError(f"gemm blocks must be 1, 2 or 4, got {n}")
    previous = _state.gemm_blocks_max
    _state.gemm_blocks_max = n
    return previous


def _get_parallel_min():
    return _state.parallel_min


_env_min = os.environ.get("FASTBP_PARALLEL_MIN")
if _env_min:
    _set_parallel_min(int(_env_min))


def set_threads_adaptive(bint on):
    """Whether parallel regions drop to one thread while other processes oversubscribe the machine
    (csrc/fastbp_omp.h, fastbp_threads_for). Returns the previous setting."""
    previous = bool(_state.adaptive)
    _state.adaptive = 1 if on else 0
    _state.load_busy = 0
    _state.load_next_ns = 0
    return previous


def get_threads_adaptive():
    return bool(_state.adaptive)


def effective_threads():
    """Threads a large parallel region would use now (get_num_threads(), or 1 while oversubscribed)."""
    return threads_for(PARALLEL_MIN if _state.parallel_min <= PARALLEL_MIN else _state.parallel_min)


def _busy_for_load(double load1, long ncpu, bint was_busy):
    """The oversubscription rule of fastbp_omp.h, for tests."""
    return bool(fastbp_busy_for_load(load1, ncpu, was_busy))

# ----- the output-buffer cache --------------------------------------------------------------------------
# Kernel outputs and graph temporaries of a training step are multi-megabyte arrays allocated and freed at
# the same sizes every step. glibc hands such blocks back to the OS on free and maps fresh ones on the next
# malloc, so every step pays the page faults and the kernel's zeroing of every page on first write (measured:
# a BatchNorm forward at (64, 16, 28, 28) 0.65 ms on warm memory, 5.5 ms on fresh pages; the ResNet step's
# system time was a quarter of its CPU time). fastbp keeps such blocks itself, as PyTorch's caching
# allocators do: a NumPy memory handler (PyDataMem_Handler) that fastbp installs only around its own ops
# (`_pool_enter` / `_pool_exit`, in fastbp.tensor: NumPy's handler is a context variable, so other code
# and other threads keep NumPy's default), and that arrays allocated under it carry for their whole life:
# freeing such an array, anywhere, returns its block to the cache. Only blocks of at least POOL_MIN bytes
# are kept, at most `limit` bytes in all (oldest blocks go first); a request takes the smallest cached block
# that fits, if that block is at most a quarter larger. fastbp.memory.empty_cache() hands every cached block
# back; set_cache_limit(0) turns the cache off. Contents are never read: results do not depend on it.
cdef extern from *:
    """
    #include <stdlib.h>
    #include <string.h>
    #include <stdint.h>
    #include <pthread.h>
    #include "numpy/arrayobject.h"
    #define FBP_POOL_MIN ((size_t)1 << 16)
    #define FBP_POOL_SLOTS 256
    typedef struct { void *raw; size_t cap; size_t pad[2]; } fbp_hdr;   /* 32 bytes before the user block */
    static struct {
        void *blk[FBP_POOL_SLOTS]; size_t cap[FBP_POOL_SLOTS]; int n;
        size_t bytes, limit, hits, misses;
    } fbp_pool = {{0}, {0}, 0, 0, (size_t)256 << 20, 0, 0};
    static pthread_mutex_t fbp_pool_mu = PTHREAD_MUTEX_INITIALIZER;
    static void fbp_pool_child(void) { pthread_mutex_init(&fbp_pool_mu, NULL); }
    static int fbp_pool_atfork(void) { return pthread_atfork(NULL, NULL, fbp_pool_child); }

    static inline fbp_hdr *fbp_head(void *p) { return (fbp_hdr *)p - 1; }
    /* a fresh block of capacity cap, 64-byte aligned; zeroed when zero */
    static void *fbp_fresh(size_t cap, int zero) {
        size_t total = cap + sizeof(fbp_hdr) + 64;
        void *raw;
        uintptr_t u;
        if (total < cap) return NULL;
        raw = zero ? calloc(1, total) : malloc(total);
        if (raw == NULL) return NULL;
        u = ((uintptr_t)raw + sizeof(fbp_hdr) + 63) & ~(uintptr_t)63;
        fbp_head((void *)u)->raw = raw;
        fbp_head((void *)u)->cap = cap;
        return (void *)u;
    }
    static void fbp_release(void *p) { free(fbp_head(p)->raw); }
    /* the smallest cached block of capacity in [size, size + size / 4], taken out of the cache */
    static void *fbp_take(size_t size) {
        int i, best = -1;
        void *p = NULL;
        pthread_mutex_lock(&fbp_pool_mu);
        for (i = 0; i < fbp_pool.n; i++)
            if (fbp_pool.cap[i] >= size && fbp_pool.cap[i] - size <= size / 4 &&
                (best < 0 || fbp_pool.cap[i] < fbp_pool.cap[best])) best = i;
        if (best >= 0) {
            p = fbp_pool.blk[best];
            fbp_pool.bytes -= fbp_pool.cap[best];
            memmove(fbp_pool.blk + best, fbp_pool.blk + best + 1, (fbp_pool.n - best - 1) * sizeof(void *));
            memmove(fbp_pool.cap + best, fbp_pool.cap + best + 1, (fbp_pool.n - best - 1) * sizeof(size_t));
            fbp_pool.n--;
            fbp_pool.hits++;
        } else {
            fbp_pool.misses++;
        }
        pthread_mutex_unlock(&fbp_pool_mu);
        return p;
    }
    static void *fbp_malloc(void *ctx, size_t size) {
        void *p;
        (void)ctx;
        if (size >= FBP_POOL_MIN && (p = fbp_take(size)) != NULL) return p;
        return fbp_fresh(size, 0);
    }
    static void *fbp_calloc(void *ctx, size_t nelem, size_t elsize) {
        size_t size = nelem * elsize;
        void *p;
        (void)ctx;
        if (elsize != 0 && size / elsize != nelem) return NULL;
        if (size >= FBP_POOL_MIN && (p = fbp_take(size)) != NULL) { memset(p, 0, size); return p; }
        return fbp_fresh(size, 1);
    }
    static void fbp_free(void *ctx, void *p, size_t size) {
        void *evict[FBP_POOL_SLOTS];
        int i, k = 0, keep = 0;
        size_t cap;
        (void)ctx; (void)size;
        if (p == NULL) return;
        cap = fbp_head(p)->cap;
        if (cap >= FBP_POOL_MIN) {
            pthread_mutex_lock(&fbp_pool_mu);
            if (cap <= fbp_pool.limit) {
                /* make room: the oldest blocks go back to the system */
                while (fbp_pool.n > 0 && (fbp_pool.n == FBP_POOL_SLOTS || fbp_pool.bytes + cap > fbp_pool.limit)) {
                    evict[k++] = fbp_pool.blk[0];
                    fbp_pool.bytes -= fbp_pool.cap[0];
                    fbp_pool.n--;
                    memmove(fbp_pool.blk, fbp_pool.blk + 1, fbp_pool.n * sizeof(void *));
                    memmove(fbp_pool.cap, fbp_pool.cap + 1, fbp_pool.n * sizeof(size_t));
                }
                fbp_pool.blk[fbp_pool.n] = p;
                fbp_pool.cap[fbp_pool.n] = cap;
                fbp_pool.n++;
                fbp_pool.bytes += cap;
                keep = 1;
            }
            pthread_mutex_unlock(&fbp_pool_mu);
            for (i = 0; i < k; i++) fbp_release(evict[i]);
            if (keep) return;
        }
        fbp_release(p);
    }
    static void *fbp_realloc(void *ctx, void *p, size_t size) {
        void *q;
        size_t cap;
        if (p == NULL) return fbp_malloc(ctx, size);
        cap = fbp_head(p)->cap;
        if (size <= cap && (cap < FBP_POOL_MIN || cap - size <= size / 4)) return p;
        q = fbp_malloc(ctx, size);
        if (q == NULL) return NULL;
        memcpy(q, p, cap < size ? cap : size);
        fbp_free(ctx, p, cap);
        return q;
    }
    /* hand every cached block back; returns the bytes released */
    static size_t fbp_pool_empty(void) {
        void *blk[FBP_POOL_SLOTS];
        int i, n;
        size_t bytes;
        pthread_mutex_lock(&fbp_pool_mu);
        n = fbp_pool.n;
        bytes = fbp_pool.bytes;
        memcpy(blk, fbp_pool.blk, n * sizeof(void *));
        fbp_pool.n = 0;
        fbp_pool.bytes = 0;
        pthread_mutex_unlock(&fbp_pool_mu);
        for (i = 0; i < n; i++) fbp_release(blk[i]);
        return bytes;
    }
    static size_t fbp_pool_set_limit(size_t limit) {
        size_t old;
        pthread_mutex_lock(&fbp_pool_mu);
        old = fbp_pool.limit;
        fbp_pool.limit = limit;
        pthread_mutex_unlock(&fbp_pool_mu);
        fbp_pool_empty();
        return old;
    }
    static void fbp_pool_stats(size_t *out) {
        pthread_mutex_lock(&fbp_pool_mu);
        out[0] = fbp_pool.bytes; out[1] = (size_t)fbp_pool.n; out[2] = fbp_pool.limit;
        out[3] = fbp_pool.hits; out[4] = fbp_pool.misses;
        pthread_mutex_unlock(&fbp_pool_mu);
    }
    static PyDataMem_Handler fbp_pool_handler = {
        "fastbp_cache", 1, {NULL, fbp_malloc, fbp_calloc, fbp_realloc, fbp_free}
    };
    static PyObject *fbp_pool_capsule(void) {
        return PyCapsule_New(&fbp_pool_handler, "mem_handler", NULL);
    }
    """
    size_t fbp_pool_empty() nogil
    size_t fbp_pool_set_limit(size_t limit) nogil
    void fbp_pool_stats(size_t* out) nogil
    int fbp_pool_atfork()
    object fbp_pool_capsule()

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)

if fbp_pool_atfork() != 0:
    raise ImportError("fastbp: pthread_atfork failed")
cdef object _pool_handler = fbp_pool_capsule()


def _pool_enter():
    """Make fastbp's cache NumPy's memory handler in the current context; returns the handler to restore
    with _pool_exit."""
    return PyDataMem_SetHandler(_pool_handler)


def _pool_exit(previous):
    PyDataMem_SetHandler(previous)


def _pool_handler_capsule():
    return _pool_handler


def _pool_empty():
    """Hand every cached block back to the system; returns the number of bytes released."""
    return fbp_pool_empty()


def _pool_set_limit(nbytes):
    """Most bytes the cache keeps (0: keep nothing); empties it. Returns the previous limit."""
    cdef Py_ssize_t n = nbytes
    if n < 0:
        raise ValueError(f"cache limit must be >= 0 bytes, got {nbytes}")
    return fbp_pool_set_limit(<size_t>n)


def _pool_stats():
    """{"cached_bytes", "cached_blocks", "limit", "hits", "misses"}."""
    cdef size_t s[5]
    fbp_pool_stats(s)
    return {"cached_bytes": s[0], "cached_blocks": s[1], "limit": s[2], "hits": s[3], "misses": s[4]}
