"""NumPy references for csrc/pool.pyx: max, average and global average pooling over NCHW planes.

Windows are read with `as_strided` from a padded copy of the input:
    window[n, c, i, j, a, b] = xpad[n, c, i*sH + a*dH, j*sW + b*dW]
max_pool2d pads with -inf and returns the argmax as the flat index ih * W + iw in the unpadded plane.
Tie rule (the compiled kernel's): the first maximum in row-major window order wins (np.argmax returns the
first occurrence); NaN counts as the maximum and the first NaN wins (np.argmax does the same). Padding is
never chosen: if the argmax lands on padding, every real element of the window is -inf and the first real
element is taken; a window of padding only gives -inf and index -1 (no gradient).
avg_pool2d pads with zeros and divides by kH * kW (count_include_pad=True)."""
import operator

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._util import as_float_array, int_pair


def _geometry(op, shape, kernel_size, stride, padding, dilation):
    """(kernel, stride, padding, dilation, (OH, OW)) after the checks the compiled kernels make."""
    if len(shape) != 4:
        raise ValueError(f"{op}: x must be 4-D (N, C, H, W), got shape {tuple(shape)}")
    k = int_pair(op, kernel_size, "kernel_size", 1)
    s = int_pair(op, kernel_size if stride is None else stride, "stride", 1)
    p = int_pair(op, padding, "padding", 0)
    d = int_pair(op, dilation, "dilation", 1)
    if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
        raise ValueError(f"{op}: padding {p} must be at most half the kernel size {k}")
    ekh, ekw = (k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1
    hp, wp = shape[2] + 2 * p[0], shape[3] + 2 * p[1]
    if ekh > hp or ekw > wp:
        raise ValueError(f"{op}: kernel {k[0]}x{k[1]} (dilation {d}, spanning {ekh}x{ekw}) is larger than the "
                         f"padded input {hp}x{wp} (x shape {tuple(shape)}, padding {p})")
    return k, s, p, d, ((hp - ekh) // s[0] + 1, (wp - ekw) // s[1] + 1)


def _windows(xpad, k, s, d, out_hw):
    sn, sc, sh, sw = xpad.strides
    shape = xpad.shape[:2] + tuple(out_hw) + tuple(k)
    return as_strided(xpad, shape, (sn, sc, sh * s[0], sw * s[1], sh * d[0], sw * d[1]), writeable=False)


def _pad(x, p, value):
    return np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=value)


def _input_shape(op, input_shape):
    try:
        shp = tuple(operator.index(v) for v in input_shape)
    except TypeError:
        raise TypeError(f"{op}: input_shape must be a sequence of 4 ints, got {input_shape!r}") from None
    if len(shp) != 4 or min(shp) < 0:
        raise ValueError(f"{op}: input_shape must be 4 non-negative ints (N, C, H, W), got {input_shape!r}")
    return shp


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1):
    """y = max over each window; indices = ih * W + iw of the (first) maximum, int64."""
    as_float_array(x, "x")
    k, s, p, d, out_hw = _geometry("max_pool2d", x.shape, kernel_size, stride, padding, dilation)
    N, C, H, W = x.shape
    win = _windows(_pad(x, p, -np.inf), k, s, d, out_hw).reshape(N, C, *out_hw, k[0] * k[1])
    real = _windows(_pad(np.ones((1, 1, H, W), dtype=bool), p, False), k, s, d, out_hw)
    real = np.broadcast_to(real.reshape(1, 1, *out_hw, k[0] * k[1]), win.shape)
    t = np.argmax(win, axis=-1)                                   # first maximum, first NaN
    on_pad = ~np.take_along_axis(real, t[..., None], -1)[..., 0]
    t = np.where(on_pad, np.argmax(real, axis=-1), t)             # all real elements are -inf here
    any_real = real.any(axis=-1)
    a, b = np.divmod(t, k[1])                                     # tap (row, column) in the window
    i = np.arange(out_hw[0]).reshape(-1, 1)
    j = np.arange(out_hw[1]).reshape(1, -1)
    ih = i * s[0] - p[0] + a * d[0]
    iw = j * s[1] - p[1] + b * d[1]
    indices = np.where(any_real, ih * W + iw, -1).astype(np.int64)
    y = np.where(any_real, np.take_along_axis(win, t[..., None], -1)[..., 0], -np.inf).astype(x.dtype)
    return y, indices


def max_pool2d_backward(grad_out, indices, input_shape):
    """dx.flat[plane][indices] += grad_out (index -1: a padding-only window, no gradient)."""
    shp = _input_shape("max_pool2d_backward", input_shape)
    as_float_array(grad_out, "grad_out", 4)
    if not isinstance(indices, np.ndarray) or indices.dtype != np.int64:
        raise TypeError(f"max_pool2d_backward: indices must be an int64 numpy.ndarray (from "
                        f"max_pool2d_forward), got {getattr(indices, 'dtype', type(indices).__name__)}")
    if indices.shape != grad_out.shape:
        raise ValueError(f"max_pool2d_backward: indices have shape {indices.shape} but grad_out has shape "
                         f"{grad_out.shape}")
    if grad_out.shape[:2] != shp[:2]:
        raise ValueError(f"max_pool2d_backward: grad_out has shape {grad_out.shape} but input_shape is "
                         f"{shp}; the (N, C) dimensions must match")
    N, C, H, W = shp
    bad = int(np.count_nonzero((indices < -1) | (indices >= H * W)))
    if bad:
        raise ValueError(f"max_pool2d_backward: {bad} indices are outside [-1, {H * W}) for input planes of "
                         f"{H}x{W}; indices must come from max_pool2d_forward on this input shape")
    dx = np.zeros((N * C, H * W), dtype=grad_out.dtype)
    ind = indices.reshape(N * C, indices.shape[2] * indices.shape[3])  # (-1 cannot be inferred when N C = 0)
    plane = np.broadcast_to(np.arange(N * C)[:, None], ind.shape)
    keep = ind >= 0
    np.add.at(dx, (plane[keep], ind[keep]), grad_out.reshape(ind.shape)[keep])
    return dx.reshape(shp)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """y = sum over the zero-padded window / (kH * kW)."""
    as_float_array(x, "x")
    k, s, p, d, out_hw = _geometry("avg_pool2d", x.shape, kernel_size, stride, padding, 1)
    win = _windows(_pad(x, p, 0), k, s, d, out_hw)
    return (win.sum(axis=(4, 5)) / (k[0] * k[1])).astype(x.dtype)


def avg_pool2d_backward(grad_out, input_shape, kernel_size, stride=None, padding=0):
    """dxpad[n, c, i*sH + a, j*sW + b] += grad_out[n, c, i, j] / (kH * kW), then crop the padding."""
    shp = _input_shape("avg_pool2d_backward", input_shape)
    as_float_array(grad_out, "grad_out", 4)
    k, s, p, d, (OH, OW) = _geometry("avg_pool2d_backward", shp, kernel_size, stride, padding, 1)
    N, C, H, W = shp
    if grad_out.shape != (N, C, OH, OW):
        raise ValueError(f"avg_pool2d_backward: grad_out has shape {grad_out.shape}, expected "
                         f"{(N, C, OH, OW)} for input_shape {shp}")
    share = grad_out / grad_out.dtype.type(k[0] * k[1])
    dxpad = np.zeros((N, C, H + 2 * p[0], W + 2 * p[1]), dtype=grad_out.dtype)
    for a in range(k[0]):
        for b in range(k[1]):
            dxpad[:, :, a:a + s[0] * (OH - 1) + 1:s[0], b:b + s[1] * (OW - 1) + 1:s[1]] += share
    return np.ascontiguousarray(dxpad[:, :, p[0]:p[0] + H, p[1]:p[1] + W])


def global_avg_pool2d_forward(x):
    """y[n, c, 0, 0] = mean of x[n, c] (summed in float64)."""
    as_float_array(x, "x", 4)
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"global_avg_pool2d: empty spatial dimensions, x shape {x.shape}")
    return (x.sum(axis=(2, 3), keepdims=True, dtype=np.float64) / (x.shape[2] * x.shape[3])).astype(x.dtype)


def global_avg_pool2d_backward(grad_out, input_shape):
    """dx[n, c, :, :] = grad_out[n, c, 0, 0] / (H * W)."""
    shp = _input_shape("global_avg_pool2d_backward", input_shape)
    as_float_array(grad_out, "grad_out", 4)
    if grad_out.shape != (shp[0], shp[1], 1, 1):
        raise ValueError(f"global_avg_pool2d_backward: grad_out has shape {grad_out.shape}, expected "
                         f"{(shp[0], shp[1], 1, 1)} for input_shape {shp}")
    if shp[2] == 0 or shp[3] == 0:
        raise ValueError(f"global_avg_pool2d_backward: empty spatial dimensions, input_shape {shp}")
    share = grad_out / grad_out.dtype.type(shp[2] * shp[3])
    return np.ascontiguousarray(np.broadcast_to(share, shp))
