/* OpenMP shim: the real omp.h when the build probe enabled -fopenmp, serial stand-ins otherwise. */
#ifndef FASTBP_OMP_H
#define FASTBP_OMP_H
#ifdef _OPENMP
#include <omp.h>
#define FASTBP_HAVE_OPENMP 1
#else
#define FASTBP_HAVE_OPENMP 0
static inline int omp_get_max_threads(void) { return 1; }
static inline void omp_set_num_threads(int n) { (void)n; }
#endif

/* Threads for a parallel region: OpenMP's maximum, or 1 while the machine is oversubscribed by other
 * processes. On a machine whose cores are all taken, a parallel region waits at its barriers for whichever
 * of its threads the OS has descheduled, and libgomp's idle workers spin (by default) on the cores the
 * working thread needs: measured on 2 cores with a load average of 13-21, a LeNet-5 step took 120-340 ms on
 * 2 threads and 21-23 ms on one. So when the 1-minute load average is at least 2 x CPUs + 1 (at least
 * CPUs + 1 runnable threads besides a fully busy fastbp), regions run on one thread; back to the maximum once
 * it drops below 2 x CPUs. The load average is read at most once a second (CLOCK_MONOTONIC_COARSE, ~20 ns
 * per call otherwise). Each extension module keeps its own copy of this small cache. */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int fastbp_load_busy = 0;
static long long fastbp_load_next_ns = 0;
static int fastbp_adaptive = 1;   /* fastbp.set_threads_adaptive() sets it in every module (_threads.pxi) */

static inline void fastbp_set_adaptive(int on) {
    __atomic_store_n(&fastbp_adaptive, on ? 1 : 0, __ATOMIC_RELAXED);
    __atomic_store_n(&fastbp_load_busy, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&fastbp_load_next_ns, 0LL, __ATOMIC_RELAXED);
}

static inline int fastbp_get_adaptive(void) { return __atomic_load_n(&fastbp_adaptive, __ATOMIC_RELAXED); }

static inline int fastbp_busy_for_load(double load1, long ncpu, int was_busy) {
    if (ncpu < 1) ncpu = 1;
    return was_busy ? load1 >= 2.0 * ncpu : load1 >= 2.0 * ncpu + 1.0;
}

static inline int fastbp_machine_busy(void) {
#if defined(__linux__) && defined(CLOCK_MONOTONIC_COARSE)
    struct timespec ts;
    long long now;
    double la[1];
    int busy = __atomic_load_n(&fastbp_load_busy, __ATOMIC_RELAXED);
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    now = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (now >= __atomic_load_n(&fastbp_load_next_ns, __ATOMIC_RELAXED)) {
        __atomic_store_n(&fastbp_load_next_ns, now + 1000000000LL, __ATOMIC_RELAXED);
        if (getloadavg(la, 1) == 1) {
            busy = fastbp_busy_for_load(la[0], sysconf(_SC_NPROCESSORS_ONLN), busy);
            __atomic_store_n(&fastbp_load_busy, busy, __ATOMIC_RELAXED);
        }
    }
    return busy;
#else
    return 0;
#endif
}

static inline int fastbp_max_threads(void) {
    int nt = omp_get_max_threads();
    if (nt > 1 && fastbp_get_adaptive() && fastbp_machine_busy())
        return 1;
    return nt;
}
#endif
