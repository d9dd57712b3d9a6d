"""NumPy references for csrc/norm.pyx: batch normalization and dropout's mask-and-scale, same signatures.

Batch statistics are computed in float64 over every axis but the channel one; y and dx in the input's
dtype from constants rounded to it, as the compiled kernels do."""
import math

import numpy as np

from ._util import _into, as_float_array, check_same_dtype


def _channel_vector(a, name, x, op, writeable=False):
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{op}: {name} must be a numpy.ndarray or None, got {type(a).__name__}")
    if a.dtype != x.dtype:
        raise TypeError(f"{op}: {name} has dtype {a.dtype} but the input has dtype {x.dtype}; they must match")
    if a.ndim != 1 or a.shape[0] != x.shape[1]:
        raise ValueError(f"{op}: {name} has shape {a.shape}, expected ({x.shape[1]},): one value per channel "
                         f"of the input (shape {x.shape}, channels in dimension 1)")
    if writeable and (not a.flags.c_contiguous or not a.flags.writeable):
        raise ValueError(f"{op}: {name} must be a writeable C-contiguous array (it is updated in place)")
    return a


def _geometry(x, op):
    if x.ndim < 2:
        raise ValueError(f"{op}: input must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
    return tuple(i for i in range(x.ndim) if i != 1), x.shape[0] * int(np.prod(x.shape[2:], dtype=np.int64))


def _bcast(v, ndim):
    """A (C,) vector shaped to broadcast along dim 1 of an ndim-D array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5, out=None,
                       activation=None, activation_out=None):
    """training: mean, var = batch mean and biased variance over all dims but 1, invstd = 1 / sqrt(var + eps);
    running stats updated in place (unbiased variance). Evaluation: the running ones.
    y = (x - mean) * (weight * invstd) + bias. Returns (y, save_mean, save_invstd); with activation="relu",
    (y or None when out is None, save_mean, save_invstd, relu(y))."""
    op = "batch_norm"
    as_float_array(x, "x")
    if activation not in (None, "relu"):
        raise ValueError(f"{op}: activation must be None or 'relu', got {activation!r}")
    if activation is None and activation_out is not None:
        raise ValueError(f"{op}: activation_out is given but activation is None")
    axes, n = _geometry(x, op)
    training = bool(training)
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")
    weight = _channel_vector(weight, "weight", x, op)
    bias = _channel_vector(bias, "bias", x, op)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: pass both running_mean and running_var, or neither")
    running_mean = _channel_vector(running_mean, "running_mean", x, op, True)
    running_var = _channel_vector(running_var, "running_var", x, op, True)
    dt = x.dtype
    if training:
        if n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        if running_mean is not None:
            momentum = float(momentum)
            if not 0 <= momentum <= 1:
                raise ValueError(f"{op}: momentum must be in [0, 1], got {momentum}")
        x64 = x.astype(np.float64)
        mean = x64.mean(axis=axes)
        var = ((x64 - _bcast(mean, x.ndim)) ** 2).mean(axis=axes)
        save_mean = mean.astype(dt)
        save_invstd = (1.0 / np.sqrt(var + eps)).astype(dt)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean.astype(np.float64) + momentum * mean
            running_var[...] = (1 - momentum) * running_var.astype(np.float64) + momentum * (var * (n / (n - 1)))
    else:
        if running_mean is None:
            raise ValueError(f"{op}: evaluation mode (training=False) needs running_mean and running_var")
        save_mean = running_mean.astype(dt, copy=True)
        save_invstd = (1.0 / np.sqrt(running_var.astype(np.float64) + eps)).astype(dt)
    w = weight.astype(np.float64) if weight is not None else 1.0
    scale = (w * save_invstd.astype(np.float64)).astype(dt)
    shift = bias if bias is not None else np.zeros(x.shape[1], dtype=dt)
    y = (x - _bcast(save_mean, x.ndim)) * _bcast(scale, x.ndim) + _bcast(shift, x.ndim)
    y = np.ascontiguousarray(y, dtype=dt)
    if activation is None:
        return _into(y, out, f"{op}: out"), save_mean, save_invstd
    from .activations import relu_forward
    return (_into(y, out, f"{op}: out") if out is not None else None, save_mean, save_invstd,
            _into(relu_forward(y), activation_out, f"{op}: activation_out"))


def batch_norm_backward(grad_out, x, weight, save_mean, save_invstd, training, need_input_grad=True,
                        need_weight_grad=True, need_bias_grad=True, relu_output=None, out=None):
    """sg = sum g, sgx = sum g (x - mean), A = weight invstd: dbias = sg, dweight = invstd sgx,
    dx = A g - A invstd^2 sgx / n (x - mean) - A sg / n (training), A g (evaluation). With relu_output,
    g = relu_backward(grad_out, relu_output) first. out: a tuple of three arrays (or None each)."""
    op = "batch_norm_backward"
    as_float_array(x, "x")
    axes, n = _geometry(x, op)
    as_float_array(grad_out, "grad_out")
    check_same_dtype(x, "x", grad_out, "grad_out")
    if grad_out.shape != x.shape:
        raise ValueError(f"{op}: grad_out has shape {grad_out.shape} but x has shape {x.shape}")
    if relu_output is not None:
        as_float_array(relu_output, "relu_output")
        check_same_dtype(x, "x", relu_output, "relu_output")
        if relu_output.shape != x.shape:
            raise ValueError(f"{op}: relu_output has shape {relu_output.shape} but x has shape {x.shape}")
        from .activations import relu_backward
        grad_out = relu_backward(grad_out, relu_output)
    if out is not None and (not isinstance(out, tuple) or len(out) != 3):
        raise ValueError(f"{op}: out must be a tuple of three arrays or None (dx, dweight, dbias)")
    weight = _channel_vector(weight, "weight", x, op)
    if save_mean is None or save_invstd is None:
        raise ValueError(f"{op}: save_mean and save_invstd are required (from batch_norm_forward)")
    save_mean = _channel_vector(save_mean, "save_mean", x, op)
    save_invstd = _channel_vector(save_invstd, "save_invstd", x, op)
    training = bool(training)
    if training and n < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    dt, nd = x.dtype, x.ndim
    g64 = grad_out.astype(np.float64)
    mean, invstd = save_mean.astype(np.float64), save_invstd.astype(np.float64)
    xc = x.astype(np.float64) - _bcast(mean, nd)
    sg = g64.sum(axis=axes)
    sgx = (g64 * xc).sum(axis=axes)
    dx = dw = db = None
    if need_input_grad:
        A = (weight.astype(np.float64) if weight is not None else 1.0) * invstd
        if training:
            B, E = (-A * invstd * invstd * sgx / n).astype(dt), (-A * sg / n).astype(dt)
            dx = _bcast(A.astype(dt), nd) * grad_out + (_bcast(B, nd) * (x - _bcast(save_mean, nd)) + _bcast(E, nd))
        else:
            dx = _bcast(np.asarray(A).astype(dt), nd) * grad_out
        dx = np.ascontiguousarray(dx, dtype=dt)
    if weight is not None:
        if need_weight_grad:
            dw = (sgx * invstd).astype(dt)
        if need_bias_grad:
            db = sg.astype(dt)
    if out is None:
        return dx, dw, db
    return tuple(_into(r, o, f"{op}: out[{k}]") for k, (r, o) in enumerate(zip((dx, dw, db), out)))


def dropout_mask_scale(x, mask, scale):
    """x * (mask ? scale : 0), the bool mask broadcast over the trailing dims it lacks
    (mask.shape == x.shape[:mask.ndim])."""
    op = "dropout_mask_scale"
    as_float_array(x, "x")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError(f"{op}: mask must be a numpy.ndarray of dtype bool, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.ndim > x.ndim or mask.shape != x.shape[:mask.ndim]:
        raise ValueError(f"{op}: mask shape {mask.shape} must be a leading part of the input shape {x.shape}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be finite, got {scale}")
    k = np.where(mask, x.dtype.type(scale), x.dtype.type(0)).reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    return np.ascontiguousarray(x * k, dtype=x.dtype)
