# Design: optimizer steps as single fused in-place passes over one parameter tensor. Each kernel reads
# param, grad and its state buffers once and writes param and state once, following PyTorch's update
# rules exactly (see each docstring). Parameters and state must be C-contiguous (they are updated in
# place); grads may be any layout and are made contiguous first.
#
# Arithmetic is done in the parameter's dtype (float32 parameters are updated in float32, as PyTorch
# does); scalar factors that depend only on hyperparameters and the step count (bias corrections, the
# decayed AdaGrad rate) are computed once in double in the wrapper and rounded to that dtype. Every
# element is independent, so results do not depend on the thread count. Loops run serially below
# PARALLEL_MIN elements and with OpenMP prange (static schedule) above it.
#
# Denormal state is stored as zero. A state element whose gradient stays 0 (a weight fed by an MNIST
# border pixel at batch 1, a dead unit) decays geometrically and passes through the subnormal range,
# where each multiply takes a microcode assist: measured on a 784-256-128-10 MLP trained on MNIST at batch
# 1 with SGD momentum, half of the first layer's buffer was subnormal after 4,000 steps and a step took
# 3.8 ms instead of 0.47 ms (PyTorch's CPU build slows the same way). We may not change the process's
# floating-point mode (no FTZ/DAZ), so momentum buffers, Adam's exp_avg/exp_avg_sq and RMSprop's averages
# are stored as 0 when |value| < the dtype's smallest normal number (FLT_MIN / DBL_MIN); NaN and inf
# are kept. The parameter update uses the stored value, and the NumPy reference does the same. The
# parameters differ from PyTorch's only by less than lr * FLT_MIN per step. Cost on dense data: none
# measurable for SGD, about 20% on a 1e6-element Adam step on one thread (0.74-0.87 ms -> 0.87-1.08 ms).
# The test is fabs(x) < FLT_MIN with a select: two other branch-free forms made the loops 10x slower.
cimport numpy as cnp
from cython.parallel cimport prange
from _common cimport (bind_threading, real, as_float_array, check_same_dtype, threads_for, r_sqrt,
                      aligned_c)
from _update cimport Update, UPD_SGD, UPD_ADAM, fill_update, update_all, update_threads, flush_subnormal

import math

import numpy as np

cnp.import_array()
bind_threading()


cdef object _check_state(object arr, str name, object param):
    # NumPy C-API checks: this runs for every parameter at every step, so it avoids building dtype,
    # shape and flags objects on the happy path
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>arr, p = <cnp.ndarray>param
    if cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(p):
        raise TypeError(f"{name} has dtype {arr.dtype} but param has dtype {param.dtype}")
    if not cnp.PyArray_SAMESHAPE(a, p):
        raise ValueError(f"{name} has shape {arr.shape} but param has shape {param.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISWRITEABLE(a) or not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{name} must be a writeable, aligned C-contiguous array (it is updated in place)")
    return arr.reshape(-1)


cdef object _check_param(object param):
    cdef int tn = -1
    if isinstance(param, np.ndarray):
        tn = cnp.PyArray_TYPE(<cnp.ndarray>param)
    if tn != cnp.NPY_FLOAT and tn != cnp.NPY_DOUBLE:
        raise TypeError(f"param must be a float32 or float64 numpy.ndarray, got "
                        f"{getattr(param, 'dtype', type(param).__name__)}")
    return _check_state(param, "param", param)


cdef object _check_grad(object grad, object param):
    grad = as_float_array(grad, "grad")
    check_same_dtype(param, "param", grad, "grad")
    if grad.shape != param.shape:
        raise ValueError(f"grad has shape {grad.shape} but param has shape {param.shape}")
    return grad.reshape(-1)


cdef object _optional_state(object arr, str name, object param, bint needed, str why):
    """The flattened state buffer when `needed`, else an empty array (the kernel never touches it)."""
    if not needed:
        return np.empty(0, dtype=param.dtype)
    if arr is None:
        raise ValueError(f"{why} needs {name} (got None)")
    return _check_state(arr, name, param)


cdef void _nonneg(str fn, str name, object value) except *:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{fn}: {name} must be >= 0, got {value}")


cdef void _unit(str fn, str name, object value) except *:
    if not 0 <= value < 1:
        raise ValueError(f"{fn}: {name} must be in [0, 1), got {value}")


cdef Py_ssize_t _step_count(str fn, object step) except -1:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{fn}: step must be an integer >= 1 (the count including this step), got {step!r}")
    return step


# ----- SGD --------------------------------------------------------------------------------------------
# SGD and Adam run the range loops of csrc/_update.pxd over contiguous parts of the parameter.
cdef tuple _sgd_spec(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
              nesterov=False, first_step=False):
    """Validated step of sgd_step as the tuple fill_update reads (grad only checked, not kept)."""
    flat_p = _check_param(param)
    _check_grad(grad, param)
    for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        _nonneg("sgd_step", name, v)
    buf = _optional_state(momentum_buffer, "momentum_buffer", param, momentum != 0, "sgd_step: momentum != 0")
    return (UPD_SGD, flat_p, buf if momentum != 0 else None, None, None, float(lr), float(momentum),
            float(dampening), float(weight_decay), bool(nesterov), bool(first_step), 0.0, 0.0, 0.0, 0.0, 0.0,
            0.0, False, False)


cdef _run_update(tuple spec, object grad):
    """Apply a validated step to the whole parameter (threads above the parallel threshold)."""
    cdef Update u
    fill_update(&u, spec)
    flat_g = aligned_c(as_float_array(grad, "grad")).reshape(-1)
    cdef Py_ssize_t n = flat_g.shape[0]
    cdef cnp.ndarray ga = flat_g
    if n == 0:
        return
    if cnp.PyArray_TYPE(ga) == cnp.NPY_FLOAT:
        with nogil:
            update_all(&u, <const float*>cnp.PyArray_DATA(ga), n, update_threads(n))
    else:
        with nogil:
            update_all(&u, <const double*>cnp.PyArray_DATA(ga), n, update_threads(n))


def sgd_step(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, first_step=False):
    """One in-place SGD step, PyTorch's rule:

        d = grad + weight_decay * param
        if momentum: buf = d on the first step, else momentum * buf + (1 - dampening) * d
                     d = d + momentum * buf if nesterov else buf
        param -= lr * d

    momentum_buffer may be None when momentum == 0. Returns None."""
    _run_update(_sgd_spec(param, grad, momentum_buffer, lr, momentum, dampening, weight_decay, nesterov,
                          first_step), grad)


# ----- AdaGrad ------------------------------------------------------------------------------------------
cdef void _adagrad(real[::1] p, const real[::1] g, real[::1] ssum, double clr, double wd,
                   double eps) noexcept nogil:
    cdef Py_ssize_t i, n = p.shape[0]
    cdef real d, s
    cdef real rclr = <real>clr, rwd = <real>wd, reps = <real>eps
    for i in prange(n, schedule="static", num_threads=threads_for(n)):
        d = g[i]
        if wd != 0:
            d = d + rwd * p[i]
        s = ssum[i] + d * d
        ssum[i] = s
        p[i] = p[i] - rclr * (d / (r_sqrt(s) + reps))


def adagrad_step(param, grad, state_sum, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
    """One in-place AdaGrad step, PyTorch's rule (`step` counts this step, starting at 1):

        d = grad + weight_decay * param
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum += d * d
        param -= clr * d / (sqrt(state_sum) + eps)

    state_sum starts at `initial_accumulator_value` (the caller fills it). Returns None."""
    flat_p = _check_param(param)
    flat_g = _check_grad(grad, param)
    t = _step_count("adagrad_step", step)
    for name, v in (("lr", lr), ("lr_decay", lr_decay), ("weight_decay", weight_decay), ("eps", eps)):
        _nonneg("adagrad_step", name, v)
    ssum = _check_state(state_sum, "state_sum", param)
    clr = lr / (1 + (t - 1) * lr_decay)
    if param.dtype == np.float32:
        _adagrad[float](flat_p, flat_g, ssum, clr, weight_decay, eps)
    else:
        _adagrad[double](flat_p, flat_g, ssum, clr, weight_decay, eps)


# ----- RMSProp ------------------------------------------------------------------------------------------
cdef void _rmsprop(real[::1] p, const real[::1] g, real[::1] sq, real[::1] gavg, real[::1] buf,
                   double lr, double alpha, double eps, double wd, double momentum,
                   bint centered) noexcept nogil:
    # Two copies of the loop (centered or not) so that each has a single data-dependent branch and
    # GCC vectorizes both; one loop with both branches was left scalar (3.1 ms vs 0.6 ms at 1e6 floats).
    cdef Py_ssize_t i, n = p.shape[0]
    cdef real d, s, a, avg, b
    cdef real rlr = <real>lr, ralpha = <real>alpha, rcalpha = <real>(1 - alpha), reps = <real>eps
    cdef real rwd = <real>wd, rmom = <real>momentum
    cdef bint use_mom = momentum > 0
    cdef bint use_wd = wd != 0
    if centered:
        for i in prange(n, schedule="static", num_threads=threads_for(n)):
            d = g[i] + rwd * p[i] if use_wd else g[i]
            s = flush_subnormal(ralpha * sq[i] + rcalpha * (d * d))
            sq[i] = s
            a = flush_subnormal(ralpha * gavg[i] + rcalpha * d)
            gavg[i] = a
            avg = r_sqrt(s - a * a) + reps
            if use_mom:
                b = flush_subnormal(rmom * buf[i] + d / avg)
                buf[i] = b
                p[i] = p[i] - rlr * b
            else:
                p[i] = p[i] - rlr * (d / avg)
    else:
        for i in prange(n, schedule="static", num_threads=threads_for(n)):
            d = g[i] + rwd * p[i] if use_wd else g[i]
            s = flush_subnormal(ralpha * sq[i] + rcalpha * (d * d))
            sq[i] = s
            avg = r_sqrt(s) + reps
            if use_mom:
                b = flush_subnormal(rmom * buf[i] + d / avg)
                buf[i] = b
                p[i] = p[i] - rlr * b
            else:
                p[i] = p[i] - rlr * (d / avg)


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha=0.99, eps=1e-8,
                 weight_decay=0.0, momentum=0.0, centered=False):
    """One in-place RMSProp step, PyTorch's rule:

        d = grad + weight_decay * param
        square_avg = alpha * square_avg + (1 - alpha) * d * d
        if centered: grad_avg = alpha * grad_avg + (1 - alpha) * d
                     avg = sqrt(square_avg - grad_avg^2) + eps
        else:        avg = sqrt(square_avg) + eps
        if momentum > 0: buf = momentum * buf + d / avg;  param -= lr * buf
        else:            param -= lr * d / avg

    All state starts at zero. grad_avg may be None unless centered, momentum_buffer None unless
    momentum > 0. Returns None."""
    flat_p = _check_param(param)
    flat_g = _check_grad(grad, param)
    for name, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay), ("momentum", momentum),
                    ("alpha", alpha)):
        _nonneg("rmsprop_step", name, v)
    sq = _check_state(square_avg, "square_avg", param)
    gavg = _optional_state(grad_avg, "grad_avg", param, bool(centered), "rmsprop_step: centered=True")
    buf = _optional_state(momentum_buffer, "momentum_buffer", param, momentum > 0, "rmsprop_step: momentum > 0")
    if param.dtype == np.float32:
        _rmsprop[float](flat_p, flat_g, sq, gavg, buf, lr, alpha, eps, weight_decay, momentum, bool(centered))
    else:
        _rmsprop[double](flat_p, flat_g, sq, gavg, buf, lr, alpha, eps, weight_decay, momentum, bool(centered))


# ----- Adam / AdamW -------------------------------------------------------------------------------------
cdef tuple _adam_spec(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1=0.9, beta2=0.999,
               eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled_weight_decay=False):
    """Validated step of adam_step as the tuple fill_update reads (grad only checked, not kept)."""
    flat_p = _check_param(param)
    _check_grad(grad, param)
    t = _step_count("adam_step", step)
    for name, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
        _nonneg("adam_step", name, v)
    _unit("adam_step", "beta1", beta1)
    _unit("adam_step", "beta2", beta2)
    m = _check_state(exp_avg, "exp_avg", param)
    v2 = _check_state(exp_avg_sq, "exp_avg_sq", param)
    vmax = _optional_state(max_exp_avg_sq, "max_exp_avg_sq", param, bool(amsgrad), "adam_step: amsgrad=True")
    step_size = lr / (1 - beta1 ** t)
    bc2_sqrt = math.sqrt(1 - beta2 ** t)
    decay = 1 - lr * weight_decay
    return (UPD_ADAM, flat_p, m, v2, vmax if amsgrad else None, float(lr), 0.0, 0.0, float(weight_decay),
            False, False, float(beta1), float(beta2), float(eps), float(decay), float(step_size),
            float(bc2_sqrt), bool(amsgrad), bool(decoupled_weight_decay))


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled_weight_decay=False):
    """One in-place Adam (or AdamW) step, PyTorch's rule (`step` counts this step, starting at 1):

        if decoupled_weight_decay: param *= 1 - lr * weight_decay        (AdamW)
        else:                      d = grad + weight_decay * param       (Adam, coupled L2)
        exp_avg    = beta1 * exp_avg    + (1 - beta1) * d
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * d * d
        v = max(max_exp_avg_sq, exp_avg_sq) (stored back) if amsgrad else exp_avg_sq
        param -= lr / (1 - beta1^step) * exp_avg / (sqrt(v) / sqrt(1 - beta2^step) + eps)

    All state starts at zero. max_exp_avg_sq may be None unless amsgrad. Returns None."""
    _run_update(_adam_spec(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
                           weight_decay, amsgrad, decoupled_weight_decay), grad)


# ----- Adadelta -----------------------------------------------------------------------------------------
cdef void _adadelta(real[::1] p, const real[::1] g, real[::1] sq, real[::1] acc, double lr, double rho,
                    double eps, double wd) noexcept nogil:
    cdef Py_ssize_t i, n = p.shape[0]
    cdef real d, s, delta, a
    cdef real rlr = <real>lr, rrho = <real>rho, rcrho = <real>(1 - rho), reps = <real>eps, rwd = <real>wd
    cdef bint use_wd = wd != 0
    for i in prange(n, schedule="static", num_threads=threads_for(n)):
        d = g[i] + rwd * p[i] if use_wd else g[i]
        s = flush_subnormal(rrho * sq[i] + rcrho * (d * d))
        sq[i] = s
        delta = r_sqrt(acc[i] + reps) / r_sqrt(s + reps) * d
        a = flush_subnormal(rrho * acc[i] + rcrho * (delta * delta))
        acc[i] = a
        p[i] = p[i] - rlr * delta


def adadelta_step(param, grad, square_avg, acc_delta, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    """One in-place Adadelta step, PyTorch's rule:

        d = grad + weight_decay * param
        square_avg = rho * square_avg + (1 - rho) * d * d
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * d
        acc_delta = rho * acc_delta + (1 - rho) * delta * delta
        param -= lr * delta

    Both state buffers start at zero. Returns None."""
    flat_p = _check_param(param)
    flat_g = _check_grad(grad, param)
    for name, v in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
        _nonneg("adadelta_step", name, v)
    if not 0 <= rho <= 1:
        raise ValueError(f"adadelta_step: rho must be in [0, 1], got {rho}")
    sq = _check_state(square_avg, "square_avg", param)
    acc = _check_state(acc_delta, "acc_delta", param)
    if param.dtype == np.float32:
        _adadelta[float](flat_p, flat_g, sq, acc, lr, rho, eps, weight_decay)
    else:
        _adadelta[double](flat_p, flat_g, sq, acc, lr, rho, eps, weight_decay)
