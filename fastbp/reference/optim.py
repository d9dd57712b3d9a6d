"""NumPy references for csrc/optim.pyx: PyTorch's update rules, in place."""
import numpy as np


def _check_state(arr, name, param):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(arr).__name__}")
    if arr.dtype != param.dtype:
        raise TypeError(f"{name} has dtype {arr.dtype} but param has dtype {param.dtype}")
    if arr.shape != param.shape:
        raise ValueError(f"{name} has shape {arr.shape} but param has shape {param.shape}")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError(f"{name} must be a writeable C-contiguous array (it is updated in place)")


def _check_param(param):
    if not isinstance(param, np.ndarray) or param.dtype not in (np.float32, np.float64):
        raise TypeError(f"param must be a float32 or float64 numpy.ndarray, got "
                        f"{getattr(param, 'dtype', type(param).__name__)}")
    _check_state(param, "param", param)


def sgd_step(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, first_step=False):
    """d = g + wd p; buf = d (first) or mu buf + (1 - dampening) d; d = d + mu buf (Nesterov) or buf;
    p -= lr d."""
    _check_param(param)
    if not isinstance(grad, np.ndarray) or grad.dtype != param.dtype:
        raise TypeError(f"grad must be a numpy.ndarray of dtype {param.dtype}")
    if grad.shape != param.shape:
        raise ValueError(f"grad has shape {grad.shape} but param has shape {param.shape}")
    if lr < 0 or momentum < 0 or weight_decay < 0:
        raise ValueError(f"sgd_step: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
    dt = param.dtype.type
    d = grad.astype(param.dtype, copy=True)
    if weight_decay != 0:
        d += dt(weight_decay) * param
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("sgd_step: momentum != 0 needs a momentum_buffer")
        _check_state(momentum_buffer, "momentum_buffer", param)
        if first_step:
            momentum_buffer[...] = d
        else:
            momentum_buffer *= dt(momentum)
            momentum_buffer += dt(1 - dampening) * d
        d = d + dt(momentum) * momentum_buffer if nesterov else momentum_buffer.copy()
    param -= dt(lr) * d
