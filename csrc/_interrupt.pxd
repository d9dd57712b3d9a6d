# Interrupt checks for long kernels (csrc/interrupt.h says how they work). A wrapper declares a
# fastbp_interrupt, initialises it with the GIL held (interrupt_init), passes its address to the nogil
# kernel, which calls fastbp_poll from the calling thread between chunks of work and skips the rest once
# fastbp_stopped; after the kernel returns, still inside any try/finally that restores state, the wrapper
# calls interrupt_raise, which propagates the handler's exception (KeyboardInterrupt).

cdef extern from "interrupt.h" nogil:
    ctypedef struct fastbp_interrupt:
        int stop
    void fastbp_interrupt_init(fastbp_interrupt* it, unsigned long main_ident)
    int fastbp_stopped(const fastbp_interrupt* it)
    int fastbp_poll(fastbp_interrupt* it)


cdef inline void interrupt_init(fastbp_interrupt* it):
    import threading
    fastbp_interrupt_init(it, <unsigned long>threading.main_thread().ident)


cdef inline int interrupt_raise(fastbp_interrupt* it) except -1:
    """-1 (the handler's exception, already set, propagates) if the kernel was interrupted, else 0."""
    return -1 if it.stop else 0
