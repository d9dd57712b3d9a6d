"""NumPy references for csrc/conv.pyx: 2-D convolution (cross-correlation, as PyTorch's conv2d), NCHW.

    y[n, o, i, j] = bias[o] + sum_{c, a, b} weight[o, c, a, b] * xpad[n, c, i*sH + a*dH, j*sW + b*dW]

where xpad is x with pH (pW) zeros above and below (left and right). The windows xpad[..., i*sH + a*dH,
j*sW + b*dW] are read with `as_strided` (no copy) and contracted with the weight by `tensordot`."""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._util import as_float_array, check_same_dtype, int_pair, with_out


def _geometry(x, weight, stride, padding, dilation):
    """(stride, padding, dilation, (OH, OW)) after the same checks the compiled kernel makes."""
    if x.ndim != 4:
        raise ValueError(f"conv2d: x must be 4-D (N, C, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: weight must be 4-D (out_channels, in_channels, kH, kW), got shape {weight.shape}")
    s = int_pair("conv2d", stride, "stride", 1)
    p = int_pair("conv2d", padding, "padding", 0)
    d = int_pair("conv2d", dilation, "dilation", 1)
    _, C, H, W = x.shape
    O, Cw, kH, kW = weight.shape
    if C != Cw:
        raise ValueError(f"conv2d: x has shape {x.shape} ({C} channels) but weight has shape {weight.shape} "
                         f"({Cw} input channels)")
    if C == 0 or O == 0 or kH == 0 or kW == 0:
        raise ValueError(f"conv2d: empty channel or kernel dimension, x shape {x.shape}, weight shape {weight.shape}")
    ekh, ekw = (kH - 1) * d[0] + 1, (kW - 1) * d[1] + 1
    hp, wp = H + 2 * p[0], W + 2 * p[1]
    if ekh > hp or ekw > wp:
        raise ValueError(f"conv2d: kernel {kH}x{kW} (dilation {d}, spanning {ekh}x{ekw}) is larger than the "
                         f"padded input {hp}x{wp} (x shape {x.shape}, weight shape {weight.shape}, padding {p})")
    return s, p, d, ((hp - ekh) // s[0] + 1, (wp - ekw) // s[1] + 1)


def _windows(xpad, kernel, s, d, out_hw):
    """View (N, C, OH, OW, kH, kW) of xpad: [n, c, i, j, a, b] = xpad[n, c, i*sH + a*dH, j*sW + b*dW]."""
    sn, sc, sh, sw = xpad.strides
    shape = xpad.shape[:2] + tuple(out_hw) + tuple(kernel)
    return as_strided(xpad, shape, (sn, sc, sh * s[0], sw * s[1], sh * d[0], sw * d[1]), writeable=False)


def _pad(x, p):
    return np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))


@with_out
def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """y[n, o] = bias[o] + sum_c (x[n, c] cross-correlated with weight[o, c])."""
    as_float_array(x, "x")
    as_float_array(weight, "weight")
    check_same_dtype(x, "x", weight, "weight")
    s, p, d, out_hw = _geometry(x, weight, stride, padding, dilation)
    O = weight.shape[0]
    if bias is not None:
        as_float_array(bias, "bias")
        check_same_dtype(x, "x", bias, "bias")
        if bias.shape != (O,):
            raise ValueError(f"conv2d: bias has shape {bias.shape} but weight has shape {weight.shape}; "
                             f"bias must have shape ({O},)")
    win = _windows(_pad(x, p), weight.shape[2:], s, d, out_hw)
    # contract over (c, a, b): (N, OH, OW, O) -> (N, O, OH, OW)
    y = np.tensordot(win, weight, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    if bias is not None:
        y = y + bias[:, None, None]
    return np.ascontiguousarray(y, dtype=x.dtype)


@with_out
def conv2d_backward(grad_out, x, weight, stride=1, padding=0, dilation=1, need_input_grad=True,
                    need_weight_grad=True, need_bias_grad=True):
    """dweight[o, c, a, b] = sum_{n,i,j} g[n, o, i, j] xpad[n, c, i*sH + a*dH, j*sW + b*dW];
    dxpad[n, c, i*sH + a*dH, j*sW + b*dW] += sum_o g[n, o, i, j] weight[o, c, a, b] (then crop the padding);
    dbias[o] = sum_{n,i,j} g[n, o, i, j]."""
    as_float_array(x, "x")
    as_float_array(weight, "weight")
    as_float_array(grad_out, "grad_out")
    check_same_dtype(x, "x", weight, "weight")
    check_same_dtype(x, "x", grad_out, "grad_out")
    s, p, d, (OH, OW) = _geometry(x, weight, stride, padding, dilation)
    N, C, H, W = x.shape
    O, _, kH, kW = weight.shape
    if grad_out.shape != (N, O, OH, OW):
        raise ValueError(f"conv2d_backward: grad_out has shape {grad_out.shape}, expected "
                         f"{(N, O, OH, OW)} for x {x.shape} and weight {weight.shape}")
    dx = dw = db = None
    if need_bias_grad:
        db = grad_out.sum(axis=(0, 2, 3)).astype(x.dtype)
    if need_weight_grad:
        win = _windows(_pad(x, p), (kH, kW), s, d, (OH, OW))
        dw = np.tensordot(grad_out, win, axes=([0, 2, 3], [0, 2, 3])).astype(x.dtype)
    if need_input_grad:
        # dwin[n, i, j, c, a, b] = sum_o g[n, o, i, j] weight[o, c, a, b]
        dwin = np.tensordot(grad_out, weight, axes=([1], [0]))
        dxpad = np.zeros((N, C, H + 2 * p[0], W + 2 * p[1]), dtype=x.dtype)
        for a in range(kH):
            for b in range(kW):
                rows = slice(a * d[0], a * d[0] + s[0] * (OH - 1) + 1, s[0])
                cols = slice(b * d[1], b * d[1] + s[1] * (OW - 1) + 1, s[1])
                dxpad[:, :, rows, cols] += dwin[:, :, :, :, a, b].transpose(0, 3, 1, 2)
        dx = np.ascontiguousarray(dxpad[:, :, p[0]:p[0] + H, p[1]:p[1] + W])
    return dx, dw, db
