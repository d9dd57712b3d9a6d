/* Interrupts for long kernels.

   Python runs signal handlers (Ctrl-C raises KeyboardInterrupt) only when the interpreter has control,
   never while a kernel runs with the GIL released, so without this a Ctrl-C during a large conv2d call
   arrived only when the call returned, seconds later. Long kernels call fastbp_poll between chunks of work
   (one sample of a conv, never per element) from the thread that called them -- OpenMP thread 0 inside a
   parallel loop. At most every FASTBP_POLL_PERIOD seconds it takes the GIL briefly and runs
   PyErr_CheckSignals; the other calls cost one clock read. If a handler raised, its exception stays set,
   `stop` is set, every thread skips the work it has left (checking fastbp_stopped), and the wrapper
   raises the exception once the kernel has returned (fastbp_interrupt_raise in _interrupt.pxd). Outputs
   of an interrupted call are freshly allocated and are discarded with the exception.

   Only the main thread polls: Python runs handlers only there, and a kernel called from another thread
   should not wait for the GIL every few milliseconds for nothing. */
#ifndef FASTBP_INTERRUPT_H
#define FASTBP_INTERRUPT_H
#include <Python.h>
#include <pythread.h>
#include <time.h>

#define FASTBP_POLL_PERIOD 0.02  /* seconds between two checks for signals */

typedef struct {
    double next;  /* monotonic time of the next check */
    int enabled;  /* 0: never check (not the main thread) */
    int stop;     /* set once a handler raised; read by every thread */
} fastbp_interrupt;

static inline double fastbp_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* main_ident: the main thread's identifier (threading.main_thread().ident); call with the GIL held. */
static inline void fastbp_interrupt_init(fastbp_interrupt* it, unsigned long main_ident) {
    it->enabled = PyThread_get_thread_ident() == main_ident;
    it->stop = 0;
    it->next = it->enabled ? fastbp_monotonic() + FASTBP_POLL_PERIOD : 0.0;
}

static inline int fastbp_stopped(const fastbp_interrupt* it) {
    return __atomic_load_n(&it->stop, __ATOMIC_RELAXED);
}

/* From the calling thread only (thread 0 of a parallel loop), without the GIL. Returns 1 once stopped. */
static inline int fastbp_poll(fastbp_interrupt* it) {
    double now;
    int raised;
    PyGILState_STATE st;
    if (fastbp_stopped(it))
        return 1;
    if (!it->enabled)
        return 0;
    now = fastbp_monotonic();
    if (now < it->next)
        return 0;
    it->next = now + FASTBP_POLL_PERIOD;
    st = PyGILState_Ensure();
    raised = PyErr_CheckSignals() != 0;
    PyGILState_Release(st);
    if (raised)
        __atomic_store_n(&it->stop, 1, __ATOMIC_RELAXED);
    return raised;
}
#endif
