# Design: optimizer steps as single fused in-place passes over one parameter tensor. Each kernel reads
# param, grad and its state buffers once and writes param and state once, following PyTorch's update
# rules exactly (see each docstring). Parameters and state must be C-contiguous (they are updated in
# place); grads may be any layout and are made contiguous first.
cimport numpy as cnp
from cython.parallel cimport prange
from _common cimport real, as_float_array, check_same_dtype, threads_for

import numpy as np

cnp.import_array()


cdef object _check_state(object arr, str name, object param):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype != param.dtype:
        raise TypeError(f"{name} has dtype {arr.dtype} but param has dtype {param.dtype}")
    if arr.shape != param.shape:
        raise ValueError(f"{name} has shape {arr.shape} but param has shape {param.shape}")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError(f"{name} must be a writeable C-contiguous array (it is updated in place)")
    return arr


cdef object _check_param(object param):
    if not isinstance(param, np.ndarray) or param.dtype.kind != "f" or param.dtype.itemsize not in (4, 8):
        raise TypeError(f"param must be a float32 or float64 numpy.ndarray, got "
                        f"{getattr(param, 'dtype', type(param).__name__)}")
    return _check_state(param, "param", param)


cdef void _sgd(real[::1] p, const real[::1] g, real[::1] buf, double lr, double momentum,
               double dampening, double wd, bint nesterov, bint first) noexcept nogil:
    cdef Py_ssize_t i, n = p.shape[0]
    cdef real d, b
    cdef real rlr = <real>lr, rmom = <real>momentum, rdamp = <real>(1 - dampening), rwd = <real>wd
    cdef bint use_mom = momentum != 0
    for i in prange(n, schedule="static", num_threads=threads_for(n)):
        d = g[i]
        if wd != 0:
            d = d + rwd * p[i]
        if use_mom:
            if first:
                b = d
            else:
                b = rmom * buf[i] + rdamp * d
            buf[i] = b
            if nesterov:
                d = d + rmom * b
            else:
                d = b
        p[i] = p[i] - rlr * d


def sgd_step(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, first_step=False):
    """One in-place SGD step, PyTorch's rule:

        d = grad + weight_decay * param
        if momentum: buf = d on the first step, else momentum * buf + (1 - dampening) * d
                     d = d + momentum * buf if nesterov else buf
        param -= lr * d

    momentum_buffer may be None when momentum == 0. Returns None."""
    param = _check_param(param)
    grad = as_float_array(grad, "grad")
    check_same_dtype(param, "param", grad, "grad")
    if grad.shape != param.shape:
        raise ValueError(f"grad has shape {grad.shape} but param has shape {param.shape}")
    if lr < 0 or momentum < 0 or weight_decay < 0:
        raise ValueError(f"sgd_step: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("sgd_step: momentum != 0 needs a momentum_buffer")
        buf = _check_state(momentum_buffer, "momentum_buffer", param).reshape(-1)
    else:
        buf = np.empty(0, dtype=param.dtype)
    if param.dtype == np.float32:
        _sgd[float](param.reshape(-1), grad.reshape(-1), buf, lr, momentum, dampening, weight_decay,
                    bool(nesterov), bool(first_step))
    else:
        _sgd[double](param.reshape(-1), grad.reshape(-1), buf, lr, momentum, dampening, weight_decay,
                     bool(nesterov), bool(first_step))
