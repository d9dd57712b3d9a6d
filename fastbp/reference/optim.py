"""NumPy references for csrc/optim.pyx: PyTorch's update rules, in place.

Each function updates `param` and its state arrays in place, in the parameter's dtype, evaluating the
formula in the same order as the compiled kernel (so float32 results agree to rounding)."""
import math

import numpy as np


def _flush(state):
    """Store subnormal state values as 0 (NaN and inf kept), as the compiled kernels do: see the Design
    note in csrc/optim.pyx (decaying buffers in the subnormal range slowed steps 8x)."""
    state[np.abs(state) < np.finfo(state.dtype).tiny] = 0
    return state


def _check_state(arr, name, param):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype != param.dtype:
        raise TypeError(f"{name} has dtype {arr.dtype} but param has dtype {param.dtype}")
    if arr.shape != param.shape:
        raise ValueError(f"{name} has shape {arr.shape} but param has shape {param.shape}")
    # the compiled kernels' contract, to the letter (they write through typed pointers, so a misaligned
    # array, which they cannot update in place through a copy, is refused there and here)
    if not arr.flags.c_contiguous or not arr.flags.writeable or not arr.flags.aligned:
        raise ValueError(f"{name} must be a writeable, aligned C-contiguous array (it is updated in place)")


def _check_param(param):
    if not isinstance(param, np.ndarray) or param.dtype not in (np.float32, np.float64):
        raise TypeError(f"param must be a float32 or float64 numpy.ndarray, got "
                        f"{getattr(param, 'dtype', type(param).__name__)}")
    _check_state(param, "param", param)


def _check_grad(grad, param):
    if not isinstance(grad, np.ndarray):
        raise TypeError(f"grad must be a numpy.ndarray of float32 or float64, got {type(grad).__name__}")
    if grad.dtype not in (np.float32, np.float64):
        raise TypeError(f"grad must have dtype float32 or float64, got {grad.dtype}")
    if grad.dtype != param.dtype:
        raise TypeError(f"param has dtype {param.dtype} but grad has dtype {grad.dtype}; they must match")
    if grad.shape != param.shape:
        raise ValueError(f"grad has shape {grad.shape} but param has shape {param.shape}")


def _optional_state(arr, name, param, needed, why):
    if needed:
        if arr is None:
            raise ValueError(f"{why} needs {name} (got None)")
        _check_state(arr, name, param)


def _nonneg(fn, **values):
    for name, v in values.items():
        if not v >= 0:
            raise ValueError(f"{fn}: {name} must be >= 0, got {v}")


def _unit(fn, **values):
    for name, v in values.items():
        if not 0 <= v < 1:
            raise ValueError(f"{fn}: {name} must be in [0, 1), got {v}")


def _step_count(fn, step):
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{fn}: step must be an integer >= 1 (the count including this step), got {step!r}")
    return int(step)


def sgd_step(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, first_step=False):
    """d = g + wd p; buf = d (first) or mu buf + (1 - dampening) d; d = d + mu buf (Nesterov) or buf;
    p -= lr d."""
    _check_param(param)
    _check_grad(grad, param)
    _nonneg("sgd_step", lr=lr, momentum=momentum, weight_decay=weight_decay)
    _optional_state(momentum_buffer, "momentum_buffer", param, momentum != 0, "sgd_step: momentum != 0")
    dt = param.dtype.type
    d = grad.astype(param.dtype, copy=True)
    if weight_decay != 0:
        d += dt(weight_decay) * param
    if momentum != 0:
        if first_step:
            momentum_buffer[...] = d
        else:
            momentum_buffer[...] = dt(momentum) * momentum_buffer + dt(1 - dampening) * d
            _flush(momentum_buffer)
        d = d + dt(momentum) * momentum_buffer if nesterov else momentum_buffer.copy()
    param -= dt(lr) * d


def adagrad_step(param, grad, state_sum, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
    """d = g + wd p; clr = lr / (1 + (step - 1) lr_decay); state_sum += d^2;
    p -= clr d / (sqrt(state_sum) + eps)."""
    _check_param(param)
    _check_grad(grad, param)
    t = _step_count("adagrad_step", step)
    _nonneg("adagrad_step", lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps)
    _check_state(state_sum, "state_sum", param)
    dt = param.dtype.type
    d = grad.astype(param.dtype, copy=True)
    if weight_decay != 0:
        d = d + dt(weight_decay) * param
    clr = lr / (1 + (t - 1) * lr_decay)
    state_sum += d * d
    param -= dt(clr) * (d / (np.sqrt(state_sum) + dt(eps)))


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha=0.99, eps=1e-8,
                 weight_decay=0.0, momentum=0.0, centered=False):
    """d = g + wd p; sq = alpha sq + (1 - alpha) d^2; centered: ga = alpha ga + (1 - alpha) d and
    avg = sqrt(sq - ga^2) + eps, else avg = sqrt(sq) + eps; momentum: buf = mu buf + d / avg,
    p -= lr buf; otherwise p -= lr d / avg."""
    _check_param(param)
    _check_grad(grad, param)
    _nonneg("rmsprop_step", lr=lr, eps=eps, weight_decay=weight_decay, momentum=momentum, alpha=alpha)
    _check_state(square_avg, "square_avg", param)
    _optional_state(grad_avg, "grad_avg", param, bool(centered), "rmsprop_step: centered=True")
    _optional_state(momentum_buffer, "momentum_buffer", param, momentum > 0, "rmsprop_step: momentum > 0")
    dt = param.dtype.type
    d = grad.astype(param.dtype, copy=True)
    if weight_decay != 0:
        d = d + dt(weight_decay) * param
    square_avg[...] = dt(alpha) * square_avg + dt(1 - alpha) * (d * d)
    _flush(square_avg)
    if centered:
        grad_avg[...] = dt(alpha) * grad_avg + dt(1 - alpha) * d
        _flush(grad_avg)
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + dt(eps)
    else:
        avg = np.sqrt(square_avg) + dt(eps)
    if momentum > 0:
        momentum_buffer[...] = dt(momentum) * momentum_buffer + d / avg
        _flush(momentum_buffer)
        param -= dt(lr) * momentum_buffer
    else:
        param -= dt(lr) * (d / avg)


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled_weight_decay=False):
    """AdamW: p *= 1 - lr wd; Adam: d = g + wd p. m = b1 m + (1 - b1) d; v = b2 v + (1 - b2) d^2;
    v' = max(vmax, v) (stored) if amsgrad else v;
    p -= lr / (1 - b1^t) * m / (sqrt(v') / sqrt(1 - b2^t) + eps)."""
    _check_param(param)
    _check_grad(grad, param)
    t = _step_count("adam_step", step)
    _nonneg("adam_step", lr=lr, eps=eps, weight_decay=weight_decay)
    _unit("adam_step", beta1=beta1)
    _unit("adam_step", beta2=beta2)
    _check_state(exp_avg, "exp_avg", param)
    _check_state(exp_avg_sq, "exp_avg_sq", param)
    _optional_state(max_exp_avg_sq, "max_exp_avg_sq", param, bool(amsgrad), "adam_step: amsgrad=True")
    dt = param.dtype.type
    d = grad.astype(param.dtype, copy=True)
    if weight_decay != 0:
        if decoupled_weight_decay:
            param *= dt(1 - lr * weight_decay)
        else:
            d = d + dt(weight_decay) * param
    exp_avg[...] = dt(beta1) * exp_avg + dt(1 - beta1) * d
    exp_avg_sq[...] = dt(beta2) * exp_avg_sq + dt(1 - beta2) * (d * d)
    _flush(exp_avg)
    _flush(exp_avg_sq)
    v = exp_avg_sq
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    step_size = lr / (1 - beta1 ** t)
    bc2_sqrt = math.sqrt(1 - beta2 ** t)
    param -= dt(step_size) * (exp_avg / (np.sqrt(v) / dt(bc2_sqrt) + dt(eps)))


def adadelta_step(param, grad, square_avg, acc_delta, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    """d = g + wd p; sq = rho sq + (1 - rho) d^2; delta = sqrt(acc + eps) / sqrt(sq + eps) d;
    acc = rho acc + (1 - rho) delta^2; p -= lr delta."""
    _check_param(param)
    _check_grad(grad, param)
    _nonneg("adadelta_step", lr=lr, eps=eps, weight_decay=weight_decay)
    if not 0 <= rho <= 1:
        raise ValueError(f"adadelta_step: rho must be in [0, 1], got {rho}")
    _check_state(square_avg, "square_avg", param)
    _check_state(acc_delta, "acc_delta", param)
    dt = param.dtype.type
    d = grad.astype(param.dtype, copy=True)
    if weight_decay != 0:
        d = d + dt(weight_decay) * param
    square_avg[...] = dt(rho) * square_avg + dt(1 - rho) * (d * d)
    _flush(square_avg)
    delta = np.sqrt(acc_delta + dt(eps)) / np.sqrt(square_avg + dt(eps)) * d
    acc_delta[...] = dt(rho) * acc_delta + dt(1 - rho) * (delta * delta)
    _flush(acc_delta)
    param -= dt(lr) * delta
