"""Functional forms of the layers: each takes Tensors (or ndarrays) and records the graph."""
import warnings

import numpy as np

from .._dtype import get_default_dtype
from ..random import get_rng
from ..ops import nn as _ops
from ..tensor import Tensor


def _labels(target):
    return target.data if isinstance(target, Tensor) else np.asarray(target)


def _dtype_of(x):
    return x.data.dtype if isinstance(x, Tensor) else np.asarray(x).dtype


def _const(value, like, name):
    """A constant array argument (class weights, pos_weight) as an ndarray of `like`'s dtype; None stays None."""
    if value is None:
        return None
    arr = value.data if isinstance(value, Tensor) else np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=_dtype_of(like))


def _weight_arg(weight, what):
    """The weight argument, refusing a reduction string passed in its place."""
    if isinstance(weight, str):
        raise TypeError(f"{what}: the third argument is the class weight, as in PyTorch; pass the reduction "
                        f"by keyword (reduction={weight!r})")
    return weight


def linear(x, weight, bias=None):
    """x @ weight.T + bias, weight of shape (out_features, in_features)."""
    return _ops.Linear.apply(x, weight, bias)


def relu(x, inplace=False):
    """max(x, 0). inplace=True is accepted for PyTorch compatibility but computes out of place (a new
    tensor; the input is unchanged): write `x = F.relu(x, inplace=True)` as PyTorch scripts do."""
    return _ops.Relu.apply(x)


def sigmoid(x):
    return _ops.Sigmoid.apply(x)


def tanh(x):
    return _ops.Tanh.apply(x)


def _softmax_dim(x, dim, axis, what, stacklevel):
    """The dim of softmax/log_softmax. `axis` is an alias of `dim`. Without either, PyTorch's legacy rule
    applies (dim 0 for 0-, 1- and 3-D input, else 1) with PyTorch's warning: pass dim explicitly."""
    if axis is not None:
        if dim is not None:
            raise TypeError(f"{what}: pass dim or its alias axis, not both")
        dim = axis
    if dim is None:
        nd = np.ndim(x.data if isinstance(x, Tensor) else x)
        dim = 0 if nd in (0, 1, 3) else 1
        warnings.warn(f"Implicit dimension choice for {what} has been deprecated. Change the call to include "
                      f"dim=X as an argument.", UserWarning, stacklevel=stacklevel)
    return dim


def _softmax_apply(op, x, dim, dtype):
    if dtype is not None:
        x = (x if isinstance(x, Tensor) else Tensor(x)).to(dtype)
    if np.ndim(x.data if isinstance(x, Tensor) else x) == 0:
        # the kernels take at least one dim: a 0-d input is a line of one value
        if dim not in (0, -1):
            raise IndexError(f"dim {dim} is out of range for a 0-d tensor (expected 0 or -1)")
        return op.apply(x.reshape(1) if isinstance(x, Tensor) else np.reshape(x, 1), axis=0).reshape(())
    return op.apply(x, axis=dim)


def softmax(input, dim=None, _stacklevel=3, dtype=None, *, axis=None):
    """softmax along `dim` (PyTorch's keyword; `axis` is an alias). Without dim: PyTorch's legacy choice
    (dim 0 for 0-, 1- and 3-D input, else 1) with its deprecation warning. dtype= casts the input first."""
    return _softmax_apply(_ops.Softmax, input, _softmax_dim(input, dim, axis, "softmax", _stacklevel), dtype)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None, *, axis=None):
    """log(softmax(x)) along `dim`, computed stably; dim rules as softmax."""
    return _softmax_apply(_ops.LogSoftmax, input, _softmax_dim(input, dim, axis, "log_softmax", _stacklevel), dtype)


def cross_entropy(input, target, weight=None, reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy of logits (N, C) against integer class labels (N,) (ndarray or Tensor), as
    PyTorch's cross_entropy with class-index targets (same argument order):

        l_n = (1 - eps) w[y_n] (-log softmax(x_n)[y_n]) + eps / C * sum_c w[c] (-log softmax(x_n)[c])

    with eps = label_smoothing in [0, 1] and w = weight (C,) (ones when None). "mean" divides the sum by
    sum_n w[y_n] (by N without weights), "sum" adds, "none" returns the (N,) values.

    Differences from PyTorch: the logits must be 2-D (N, C); targets are class indices only (no
    class-probability targets) and there is no ignore_index. The weight is a constant cast to the logits'
    dtype; it gets no gradient."""
    weight = _weight_arg(weight, "cross_entropy")
    return _ops.CrossEntropy.apply(input, _labels(target), reduction=reduction,
                                   weight=_const(weight, input, "weight"), label_smoothing=label_smoothing)


def mse_loss(input, target, reduction="mean"):
    return _ops.MSELoss.apply(input, target, reduction=reduction)


def leaky_relu(x, negative_slope=0.01):
    """x for x > 0, negative_slope * x otherwise. Gradient at exactly 0: negative_slope (PyTorch's rule)."""
    return _ops.LeakyRelu.apply(x, negative_slope=negative_slope)


def elu(x, alpha=1.0):
    """x for x > 0, alpha * (exp(x) - 1) otherwise. Gradient at exactly 0: alpha (PyTorch's rule)."""
    return _ops.Elu.apply(x, alpha=alpha)


def maxout(x, pieces):
    """The Maxout nonlinearity: the max over groups of `pieces` consecutive values of the last axis,
    (..., F * pieces) -> (..., F). On ties the gradient goes to the first maximal value of the group."""
    return _ops.MaxPieces.apply(x, pieces=pieces)


def l1_loss(input, target, reduction="mean"):
    """|input - target| reduced by "mean" (over all elements), "sum" or "none", as PyTorch's l1_loss.
    The gradient at input == target is 0. input and target must have the same shape (no broadcasting)."""
    return _ops.L1Loss.apply(input, target, reduction=reduction)


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """Binary cross-entropy of probabilities, as PyTorch's binary_cross_entropy:

        l = -w (t * max(log p, -100) + (1 - t) * max(log(1 - p), -100))

    input and target must lie in [0, 1] (ValueError otherwise) and have the same shape; weight broadcasts
    to it. The gradient is PyTorch's w (p - t) / max(p (1 - p), 1e-12). Prefer
    binary_cross_entropy_with_logits on logits: it is exact where sigmoid saturates.

    Difference from PyTorch: no gradient with respect to the target (a target that requires grad raises)."""
    weight = _weight_arg(weight, "binary_cross_entropy")
    return _ops.BCELoss.apply(input, target, reduction=reduction, weight=_const(weight, input, "weight"))


def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """Binary cross-entropy on logits, as PyTorch's binary_cross_entropy_with_logits:

        l = -w (pw * t * log sigmoid(x) + (1 - t) * log(1 - sigmoid(x)))

    weight and pos_weight (e.g. one per class, shape (C,)) broadcast to the input's shape. Evaluated as
    w (pw t softplus(-x) + (1 - t) softplus(x)): finite and accurate for any finite x (x = +-1000 included).

    Difference from PyTorch: no gradient with respect to the target (a target that requires grad raises)."""
    weight = _weight_arg(weight, "binary_cross_entropy_with_logits")
    return _ops.BCEWithLogitsLoss.apply(input, target, reduction=reduction, weight=_const(weight, input, "weight"),
                                        pos_weight=_const(pos_weight, input, "pos_weight"))


def nll_loss(input, target, weight=None, reduction="mean"):
    """Negative log-likelihood of log-probabilities (N, C) against integer labels (N,), as PyTorch's nll_loss:
    l_n = -w[y_n] input[n, y_n]; "mean" divides the sum by sum_n w[y_n] (N without weights).
    Difference from PyTorch: 2-D input only, no ignore_index."""
    weight = _weight_arg(weight, "nll_loss")
    return _ops.NLLLoss.apply(input, _labels(target), reduction=reduction, weight=_const(weight, input, "weight"))


def multi_margin_loss(input, target, p=1, margin=1.0, weight=None, reduction="mean", normalization="classes"):
    """Multiclass hinge loss of scores (N, C) against integer labels (N,):

        l_n = w[y_n] * sum_{j != y_n} max(0, margin - x[n, y_n] + x[n, j]) ** p / D,   p in {1, 2}

    normalization="classes" (default) uses D = C, which is PyTorch's multi_margin_loss; "sum" uses D = 1,
    the multiclass SVM loss as usually written (e.g. cs231n, with reduction="mean" averaging over the batch).
    "mean" divides by N (not by the weights). The gradient of max(0, z) at z == 0 is 0.
    As PyTorch's implementation, the class weight multiplies the hinge term (w * max(0, z) ** p)."""
    return _ops.MultiMarginLoss.apply(input, _labels(target), reduction=reduction, p=p, margin=margin,
                                      weight=_const(weight, input, "weight"), normalization=normalization)


# ----- regularizers: penalties to add to a loss --------------------------------------------------------
def _param_list(params):
    if isinstance(params, Tensor):
        return [params]
    ps = list(params)
    for i, p in enumerate(ps):
        if not isinstance(p, Tensor):
            raise TypeError(f"params must be Tensors (e.g. model.parameters()), item {i} is {type(p).__name__}")
    return ps


def _coeff(value, name):
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _penalty(params, l1, l2):
    total = None
    for p in _param_list(params):
        term = _ops.NormPenalty.apply(p, l1=l1, l2=l2)
        total = term if total is None else total + term
    if total is None:
        return Tensor(np.zeros((), dtype=get_default_dtype()))
    return total


def l1_penalty(params, coeff):
    """coeff * sum over params of sum(|p|): a differentiable term to add to a loss (gradient
    coeff * sign(p), 0 at p == 0). `params` is a Tensor or an iterable of Tensors (model.parameters())."""
    return _penalty(params, _coeff(coeff, "coeff"), 0.0)


def l2_penalty(params, coeff):
    """coeff * sum over params of sum(p ** 2) (gradient 2 * coeff * p). Note the convention: there is no
    1/2, so SGD's weight_decay=lambda adds the same gradient as l2_penalty(params, lambda / 2)."""
    return _penalty(params, 0.0, _coeff(coeff, "coeff"))


def elastic_net_penalty(params, coeff, l1_ratio=0.5):
    """coeff * (l1_ratio * sum|p| + (1 - l1_ratio) * sum p ** 2), summed over params, with l1_ratio in
    [0, 1]: l1_ratio=1 is l1_penalty, 0 is l2_penalty. (scikit-learn's ElasticNet puts a 1/2 on the
    squared term; this one does not, to match l2_penalty.)"""
    coeff = _coeff(coeff, "coeff")
    r = float(l1_ratio)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"l1_ratio must be in [0, 1], got {l1_ratio!r}")
    return _penalty(params, coeff * r, coeff * (1 - r))


# ----- convolution and pooling (ops in fastbp/ops/conv.py, kernels in csrc/conv.pyx and csrc/pool.pyx) -----
from ..ops import conv as _conv_ops  # noqa: E402


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1):
    """2-D convolution (cross-correlation) of input (N, C, H, W) with weight (O, C, kH, kW), plus bias (O,).

    stride, padding (zeros) and dilation are an int or a (height, width) pair, as torch.nn.functional.conv2d
    (groups=1). Output (N, O, OH, OW), OH = (H + 2 pH - dH (kH - 1) - 1) // sH + 1. Shape errors (wrong
    rank, channel mismatch, kernel larger than the padded input) raise ValueError naming the shapes.
    The compiled kernel works through the batch in chunks whose im2col workspace stays under
    get_conv_workspace_limit() bytes."""
    return _conv_ops.Conv2d.apply(input, weight, bias, stride=stride, padding=padding, dilation=dilation)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1):
    """Max over each window (stride defaults to kernel_size; padding at most half the kernel, -inf padded).
    The gradient goes to the first maximum in row-major window order (NaN counts as the maximum)."""
    return _conv_ops.MaxPool2d.apply(input, kernel_size=kernel_size, stride=stride, padding=padding,
                                     dilation=dilation)


def avg_pool2d(input, kernel_size, stride=None, padding=0):
    """Mean over each window, zero padding counted (count_include_pad=True, PyTorch's default)."""
    return _conv_ops.AvgPool2d.apply(input, kernel_size=kernel_size, stride=stride, padding=padding)


def global_avg_pool2d(input):
    """Mean over each (H, W) plane: (N, C, H, W) -> (N, C, 1, 1), as adaptive_avg_pool2d(input, 1)."""
    return _conv_ops.GlobalAvgPool2d.apply(input)


def _compiled_conv():
    from .. import _backend
    return dict(zip(_backend.FAMILIES, _backend.compiled_modules)).get("conv")


def set_conv_workspace_limit(nbytes):
    """Bound, in bytes, on the im2col column workspace of one compiled conv2d call (default 64 MiB).

    The batch is processed in chunks of as many samples as fit; a single sample whose columns alone exceed
    the bound is processed on its own, so the workspace is max(limit, one sample's columns). Chunks are
    also kept near 1 MiB when the limit allows, so that the columns are still in cache when BLAS reads them.
    Smaller limits save memory on large batches. Results are bit-identical for any limit when each sample
    is its own GEMM (outputs of 64 pixels or more); smaller outputs, which run one GEMM per chunk, agree up
    to float32/float64 rounding. The workspace is kept between calls (at most the limit). The NumPy
    reference backend does not chunk (it is written for clarity). Returns the previous limit."""
    mod = _compiled_conv()
    if mod is None:
        raise RuntimeError("set_conv_workspace_limit needs the compiled kernels (fastbp._C.conv)")
    previous = mod._get_workspace_limit()
    mod._set_workspace_limit(nbytes)
    return previous


def get_conv_workspace_limit():
    """The current conv2d workspace bound in bytes (see set_conv_workspace_limit)."""
    mod = _compiled_conv()
    if mod is None:
        raise RuntimeError("get_conv_workspace_limit needs the compiled kernels (fastbp._C.conv)")
    return mod._get_workspace_limit()


# ----- normalization, dropout, adaptive pooling (kernels in csrc/norm.pyx) ----------------------------------
def _data(t):
    return t.data if isinstance(t, Tensor) else t


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalization of input (N, C, ...) over every dim but 1, as torch.nn.functional.batch_norm.

    training=True: normalise with the batch mean and biased variance; running_mean and running_var (Tensors
    or ndarrays of the input's dtype, or None) are updated in place: r = (1 - momentum) r + momentum s, with
    the unbiased variance for running_var. A batch with one value per channel raises ValueError, as
    PyTorch. training=False: normalise with running_mean and running_var (required).
    y = (x - mean) / sqrt(var + eps) * weight + bias; weight and bias may be None. Gradients flow to input,
    weight and bias (through the batch statistics in training mode)."""
    return _ops.BatchNorm.apply(input, weight, bias, running_mean=_data(running_mean),
                                running_var=_data(running_var), training=bool(training), momentum=momentum,
                                eps=eps)


def _check_p(p):
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return p


# masks are drawn in blocks of this many elements, so the float draws never take more than 4 MiB
_MASK_BLOCK = 1 << 20


def _keep_mask(shape, p):
    """A bool array, True with probability 1 - p, drawn from fastbp's generator (fastbp.manual_seed)."""
    rng = get_rng()
    mask = np.empty(shape, dtype=np.bool_)
    flat = mask.reshape(-1)
    for lo in range(0, flat.size, _MASK_BLOCK):
        hi = min(flat.size, lo + _MASK_BLOCK)
        np.greater_equal(rng.random(hi - lo, dtype=np.float32), np.float32(p), out=flat[lo:hi])
    return mask


def _masked(input, p, mask_shape):
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    return _ops.MaskScale.apply(input, mask=_keep_mask(mask_shape, p), scale=scale)


def dropout(input, p=0.5, training=True, inplace=False):
    """Zero each element with probability p and scale the others by 1 / (1 - p) (training); the input
    itself when training is False or p == 0. The mask comes from fastbp's generator (reproducible with
    fastbp.manual_seed; both backends apply the same mask) and is kept as one byte per element for the
    backward. p outside [0, 1] raises ValueError. inplace=True is accepted and computes out of place.
    As PyTorch, NaN and inf stay NaN where they are dropped (x * 0)."""
    p = _check_p(p)
    if not training or p == 0.0:
        return input
    return _masked(input, p, np.shape(_data(input)))


def dropout2d(input, p=0.5, training=True, inplace=False):
    """Channel-wise dropout: each (H, W) plane of input (N, C, H, W) is zeroed with probability p, the others
    scaled by 1 / (1 - p). A 3-D input is one unbatched sample (C, H, W), as PyTorch treats it. Otherwise
    as dropout()."""
    p = _check_p(p)
    shape = np.shape(_data(input))
    if len(shape) not in (3, 4):
        raise ValueError(f"dropout2d: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape {shape}")
    if not training or p == 0.0:
        return input
    return _masked(input, p, shape[:len(shape) - 2])


def adaptive_avg_pool2d(input, output_size):
    """Average pooling of input (N, C, H, W) to output_size (an int or a pair; None keeps that dimension).
    Output 1 (or (1, 1)) is global_avg_pool2d; otherwise each output size must divide the input size
    (then it is avg_pool2d with kernel = stride = input // output). Sizes that do not divide raise
    NotImplementedError."""
    shape = np.shape(_data(input))
    if len(shape) != 4:
        raise ValueError(f"adaptive_avg_pool2d: expected a 4-D (N, C, H, W) input, got shape {shape}")
    oh, ow = (output_size, output_size) if not isinstance(output_size, (tuple, list)) else tuple(output_size)
    H, W = shape[2], shape[3]
    oh = H if oh is None else int(oh)
    ow = W if ow is None else int(ow)
    if oh < 1 or ow < 1:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be >= 1, got {output_size!r}")
    if (oh, ow) == (1, 1):
        return global_avg_pool2d(input)
    if H % oh or W % ow:
        raise NotImplementedError(f"adaptive_avg_pool2d: output size {(oh, ow)} for input {H}x{W}: supported are "
                                  f"output 1 and output sizes that divide the input size")
    return avg_pool2d(input, (H // oh, W // ow))
