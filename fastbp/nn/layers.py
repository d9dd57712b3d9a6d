"""Layers with PyTorch's shapes and default initialisation."""
import math

import numpy as np

from .._dtype import get_default_dtype
from ..tensor import Tensor
from . import functional as F
from . import init
from .module import Module, Parameter


class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features), PyTorch's default initialisation
    (kaiming_uniform_ with a=sqrt(5) for the weight, U(-1/sqrt(in), 1/sqrt(in)) for the bias)."""

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        if in_features < 0 or out_features < 0:
            raise ValueError(f"Linear: feature counts must be >= 0, got {in_features}, {out_features}")
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = Parameter(np.empty((out_features, in_features), dtype=dtype))
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if bias:
            self.bias = Parameter(np.empty(out_features, dtype=dtype))
            bound = 1 / math.sqrt(in_features) if in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)
        else:
            self.bias = None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    """max(x, 0). inplace=True is accepted (PyTorch's signature) and computes out of place."""

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        return F.relu(x)

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


def _dim_alias(dim, axis, what):
    if axis is not None:
        if dim is not None:
            raise TypeError(f"{what}: pass dim or its alias axis, not both")
        return axis
    return dim


class Softmax(Module):
    """softmax along `dim` (`axis` is an alias); dim=None follows PyTorch's legacy rule with its warning."""

    def __init__(self, dim=None, *, axis=None):
        super().__init__()
        self.dim = _dim_alias(dim, axis, "Softmax")

    def forward(self, x):
        return F.softmax(x, self.dim, _stacklevel=5)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """log_softmax along `dim` (`axis` is an alias); dim=None follows PyTorch's legacy rule with its warning."""

    def __init__(self, dim=None, *, axis=None):
        super().__init__()
        self.dim = _dim_alias(dim, axis, "LogSoftmax")

    def forward(self, x):
        return F.log_softmax(x, self.dim, _stacklevel=5)

    def extra_repr(self):
        return f"dim={self.dim}"


def _stored(weight):
    """A constant weight kept by a loss module as an ndarray (cast to the input's dtype at each call)."""
    if weight is None:
        return None
    if isinstance(weight, str):
        raise TypeError("the first argument of this loss is the weight, as in PyTorch; pass the reduction by "
                        f"keyword (reduction={weight!r})")
    return np.array(weight.data if isinstance(weight, Tensor) else weight)


class CrossEntropyLoss(Module):
    """Softmax cross-entropy on logits (N, C) with integer labels (N,), optional class weights (C,) and label
    smoothing; see fastbp.nn.functional.cross_entropy for the definition."""

    def __init__(self, weight=None, reduction="mean", label_smoothing=0.0):
        super().__init__()
        self.weight = _stored(weight)
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, logits, target):
        return F.cross_entropy(logits, target, weight=self.weight, reduction=self.reduction,
                               label_smoothing=self.label_smoothing)


class MSELoss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class ELU(Module):
    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return F.elu(x, self.alpha)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class Maxout(Module):
    """Maxout layer: y[:, f] = max_j (x @ W[f * pieces + j] + b[f * pieces + j]), the max over `pieces`
    linear functions per output feature.

    One Linear(in_features, out_features * pieces) holds every piece (weight (out_features * pieces,
    in_features), rows of one output feature adjacent, PyTorch's default Linear initialisation); the max over
    pieces is a compiled kernel that saves the argmax. On ties the first maximal piece gets the gradient."""

    def __init__(self, in_features, out_features, pieces, bias=True, dtype=None):
        super().__init__()
        if isinstance(pieces, bool) or not isinstance(pieces, (int, np.integer)) or pieces < 1:
            raise ValueError(f"Maxout: pieces must be an int >= 1, got {pieces!r}")
        self.in_features, self.out_features, self.pieces = int(in_features), int(out_features), int(pieces)
        self.linear = Linear(in_features, out_features * pieces, bias=bias, dtype=dtype)

    def forward(self, x):
        return F.maxout(self.linear(x), self.pieces)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, pieces={self.pieces}"


class L1Loss(Module):
    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):
        return F.l1_loss(input, target, reduction=self.reduction)


class NLLLoss(Module):
    """Negative log-likelihood of log-probabilities (N, C) with integer labels; see F.nll_loss."""

    def __init__(self, weight=None, reduction="mean"):
        super().__init__()
        self.weight = _stored(weight)
        self.reduction = reduction

    def forward(self, input, target):
        return F.nll_loss(input, target, weight=self.weight, reduction=self.reduction)


class BCELoss(Module):
    """Binary cross-entropy on probabilities; see F.binary_cross_entropy."""

    def __init__(self, weight=None, reduction="mean"):
        super().__init__()
        self.weight = _stored(weight)
        self.reduction = reduction

    def forward(self, input, target):
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(Module):
    """Binary cross-entropy on logits, stable for any logit; see F.binary_cross_entropy_with_logits."""

    def __init__(self, weight=None, reduction="mean", pos_weight=None):
        super().__init__()
        self.weight = _stored(weight)
        self.reduction = reduction
        self.pos_weight = _stored(pos_weight)

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, weight=self.weight, reduction=self.reduction,
                                                  pos_weight=self.pos_weight)


class MultiMarginLoss(Module):
    """Multiclass hinge loss; normalization="classes" (PyTorch's MultiMarginLoss, divide by C) or "sum"
    (the multiclass SVM loss). See F.multi_margin_loss."""

    def __init__(self, p=1, margin=1.0, weight=None, reduction="mean", normalization="classes"):
        super().__init__()
        self.p, self.margin = p, margin
        self.weight = _stored(weight)
        self.reduction = reduction
        self.normalization = normalization

    def forward(self, input, target):
        return F.multi_margin_loss(input, target, p=self.p, margin=self.margin, weight=self.weight,
                                   reduction=self.reduction, normalization=self.normalization)
