# Included at the end of every kernel module: each compiled module has its own copy of the load-average
# cache of fastbp_omp.h, so fastbp._config.set_threads_adaptive() calls this in all of them.
from _common cimport fastbp_set_adaptive as _fastbp_set_adaptive, fastbp_get_adaptive as _fastbp_get_adaptive


def _set_threads_adaptive(bint on):
    """Whether large kernels of this module drop to one thread while the machine is oversubscribed."""
    _fastbp_set_adaptive(on)


def _threads_adaptive():
    return bool(_fastbp_get_adaptive())
