"""NumPy references for csrc/gemm.pyx: the linear layer y = x W^T + b and the 2-D matrix product."""
import numpy as np

from ._util import as_float_array, check_same_dtype, with_out


def _check_linear(x, weight, bias):
    as_float_array(x, "x", 2)
    as_float_array(weight, "weight", 2)
    check_same_dtype(x, "x", weight, "weight")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"linear: x has shape {x.shape} (in_features={x.shape[1]}) but weight has shape "
                         f"{weight.shape} (in_features={weight.shape[1]})")
    if x.shape[0] == 0:
        raise ValueError(f"linear: empty batch, x has shape {x.shape}")
    if bias is not None:
        as_float_array(bias, "bias", 1)
        check_same_dtype(x, "x", bias, "bias")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"linear: bias has shape {bias.shape} but weight has shape {weight.shape}; "
                             f"bias must have shape ({weight.shape[0]},)")


def linear_forward(x, weight, bias=None, out=None, activation=None, activation_out=None):
    """y[n, o] = sum_i x[n, i] * weight[o, i] + bias[o]; with activation="relu" returns (y, relu(y))."""
    if activation not in (None, "relu"):
        raise ValueError(f"linear_forward: activation must be None or 'relu', got {activation!r}")
    if activation is None and activation_out is not None:
        raise ValueError("linear_forward: activation_out given without an activation")
    y = _linear(x, weight, bias, out=out)
    if activation is None:
        return y
    from .activations import relu_forward
    return y, relu_forward(y, out=activation_out)


@with_out
def _linear(x, weight, bias=None):
    """y[n, o] = sum_i x[n, i] * weight[o, i] + bias[o]."""
    _check_linear(x, weight, bias)
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y


@with_out
def linear_backward(grad_out, x, weight, need_input_grad=True, need_weight_grad=True, need_bias_grad=True):
    """dL/dx = g W,  dL/dW = g^T x,  dL/db = sum_n g[n, :]."""
    _check_linear(x, weight, None)
    as_float_array(grad_out, "grad_out", 2)
    check_same_dtype(x, "x", grad_out, "grad_out")
    if grad_out.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(f"linear_backward: grad_out has shape {grad_out.shape}, expected "
                         f"({x.shape[0]}, {weight.shape[0]}) for x {x.shape} and weight {weight.shape}")
    dx = grad_out @ weight if need_input_grad else None
    dw = grad_out.T @ x if need_weight_grad else None
    db = grad_out.sum(axis=0) if need_bias_grad else None
    return dx, dw, db


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) for 2-D arrays."""
    for arr, nm in ((a, "a"), (b, "b")):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"matmul: {nm} must be a numpy.ndarray, got {type(arr).__name__}")
        if arr.ndim != 2:
            raise ValueError(f"matmul: {nm} must be 2-D, got shape {arr.shape}")
    as_float_array(a, "a", 2)
    as_float_array(b, "b", 2)
    check_same_dtype(a, "a", b, "b")
    oa = a.T if trans_a else a
    ob = b.T if trans_b else b
    if oa.shape[1] != ob.shape[0]:
        raise ValueError(f"matmul: inner dimensions differ: op(a) is {oa.shape} (a {a.shape}, trans_a={bool(trans_a)}) "
                         f"and op(b) is {ob.shape} (b {b.shape}, trans_b={bool(trans_b)})")
    return oa @ ob
