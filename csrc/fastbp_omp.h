/* OpenMP shim: the real omp.h when the build probe enabled -fopenmp, serial stand-ins otherwise.

   Thread settings shared by every kernel module. Each csrc/*.pyx is its own extension module, and this
   header is compiled into each of them, so `fastbp_thr` is one pointer per module; fastbp._C._runtime owns
   the one fastbp_threading struct and hands its address out in a capsule, and every module points its
   `fastbp_thr` at it when it is imported (_common.bind_threading). Setting the count there therefore
   changes it for every module and every Python thread (OpenMP's own omp_set_num_threads is per-thread
   state, so the count is passed to each parallel region explicitly instead). */
#ifndef FASTBP_OMP_H
#define FASTBP_OMP_H
#include "fastbp_compat.h" /* static inline for MSVC C */
#ifdef _OPENMP
#include <omp.h>
#define FASTBP_HAVE_OPENMP 1
#else
#define FASTBP_HAVE_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline void omp_set_num_threads(int n) { (void)n; }
static inline int omp_get_num_threads(void) { return 1; }
#endif

typedef void (*fastbp_blas_set_fn)(int);
typedef int (*fastbp_blas_get_fn)(void);

typedef struct {
    volatile int num_threads;             /* threads of every parallel region (>= 1) */
    volatile Py_ssize_t parallel_min;     /* loops over less work than this run serially */
    /* Setter/getter of the thread count of the BLAS behind scipy.linalg.cython_blas (NULL: unknown BLAS),
       and the "single-threaded BLAS" section they implement (see fastbp_blas_single_enter). */
    fastbp_blas_set_fn blas_set;
    fastbp_blas_get_fn blas_get;
    int blas_depth;
    int blas_prev;
    /* Load-adaptive thread count (fastbp_threads_for): on/off, and the cached "machine oversubscribed"
       answer with the time of its next refresh. */
    volatile int adaptive;
    volatile int load_busy;
    volatile long long load_next_ns;
    /* At most this many fixed blocks per matrix product (csrc/gemm.pyx): 1, 2 or 4, from the CPUs this
       process may use, not from the thread count, so products stay bit-identical for any thread count. */
    volatile int gemm_blocks_max;
    /* How many modules bound themselves to these settings (fastbp_bind_threading): a test checks that
       every kernel module did (one that does not runs every loop serially). */
    int bound_modules;
} fastbp_threading;

/* Until bind_threading runs (module import), a module runs serially. */
static fastbp_threading fastbp_threading_unbound = {1, 262144, NULL, NULL, 0, 1};
static fastbp_threading* fastbp_thr = &fastbp_threading_unbound;

static inline void fastbp_bind_threading(void* state) {
    fastbp_thr = (fastbp_threading*)state;
    fastbp_thr->bound_modules++;
}

/* Make the BLAS single-threaded for the duration of a kernel call; returns 0 (nothing done) without the
   hooks. Calls from several Python threads that overlap share one section: the first to enter saves the
   count and sets 1, the last to leave restores it. The caller holds the GIL (which serialises these). */
static inline int fastbp_blas_single_enter(void) {
    if (fastbp_thr->blas_set == NULL || fastbp_thr->blas_get == NULL) return 0;
    if (fastbp_thr->blas_depth++ == 0) {
        fastbp_thr->blas_prev = fastbp_thr->blas_get();
        if (fastbp_thr->blas_prev != 1) fastbp_thr->blas_set(1);
    }
    return 1;
}

static inline void fastbp_blas_single_exit(void) {
    if (--fastbp_thr->blas_depth == 0 && fastbp_thr->blas_prev != 1 && fastbp_thr->blas_set != NULL)
        fastbp_thr->blas_set(fastbp_thr->blas_prev);
}
/* Threads for a parallel region over `work` elements: 1 below the parallel threshold; else the process-wide
 * count, or 1 while other processes oversubscribe the machine. On a machine whose cores are all taken, a
 * parallel region waits at its barriers for whichever of its threads the OS has descheduled, and libgomp's
 * idle workers (spinning by default) take the cores the working thread needs: measured on 2 cores at a load
 * average of 13-21, a LeNet-5 step took 120-340 ms on 2 threads and 21-23 ms on one. So while the 1-minute
 * load average is at least 2 x CPUs + 1 (at least CPUs + 1 runnable threads besides a fully busy fastbp),
 * regions run on one thread; back to the count once it drops below 2 x CPUs. The load average is read at
 * most once a second (CLOCK_MONOTONIC_COARSE otherwise, ~20 ns). Results do not depend on it (they do not
 * depend on the thread count). Off unless asked for: fastbp.set_threads_adaptive(True), or
 * FASTBP_THREADS_ADAPTIVE=1 in the environment at import. */
#if defined(__linux__)
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#endif

static inline int fastbp_busy_for_load(double load1, long ncpu, int was_busy) {
    if (ncpu < 1) ncpu = 1;
    return was_busy ? load1 >= 2.0 * ncpu : load1 >= 2.0 * ncpu + 1.0;
}

static inline int fastbp_machine_busy(void) {
#if defined(__linux__) && defined(CLOCK_MONOTONIC_COARSE)
    struct timespec ts;
    long long now;
    double la[1];
    int busy = fastbp_thr->load_busy;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    now = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (now >= fastbp_thr->load_next_ns) {
        fastbp_thr->load_next_ns = now + 1000000000LL;
        if (getloadavg(la, 1) == 1) {
            busy = fastbp_busy_for_load(la[0], sysconf(_SC_NPROCESSORS_ONLN), busy);
            fastbp_thr->load_busy = busy;
        }
    }
    return busy;
#else
    return 0;
#endif
}

static inline int fastbp_threads_for(Py_ssize_t work) {
    int nt = fastbp_thr->num_threads;
    if (work < fastbp_thr->parallel_min) return 1;
    if (nt > 1 && fastbp_thr->adaptive && fastbp_machine_busy()) return 1;
    return nt;
}
#endif
