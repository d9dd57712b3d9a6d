"""Ops whose forward and backward are backend kernels (compiled or reference, as selected)."""
from .. import _backend
from ..tensor import Function, is_grad_enabled


class Linear(Function):
    """y = x @ weight.T + bias (x: (N, in), weight: (out, in), bias: (out,) or None)."""

    @staticmethod
    def forward(ctx, x, weight, bias=None):
        ctx.x, ctx.w = x, weight
        return _backend.current.linear_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        nx, nw, nb = ctx.needs_input_grad
        return _backend.current.linear_backward(g, ctx.x, ctx.w, nx, nw, nb)


class Relu(Function):
    """Saves its output, as PyTorch does: relu(x) > 0 exactly where x > 0 (NaN in neither), so relu_backward
    gives the same bits from it, and the input is free to go (a captured step then fuses a BatchNorm and the
    ReLU after it without writing the BatchNorm's output)."""

    @staticmethod
    def forward(ctx, x):
        ctx.y = y = _backend.current.relu_forward(x)
        return y

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.relu_backward(g, ctx.y),)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.y = y = _backend.current.sigmoid_forward(x)
        return y

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.sigmoid_backward(g, ctx.y),)


class Tanh(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.y = y = _backend.current.tanh_forward(x)
        return y

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.tanh_backward(g, ctx.y),)


class Softmax(Function):
    """softmax over `axis`; the kernels normalise along the axis in place of moving it last."""

    @staticmethod
    def forward(ctx, x, axis=-1):
        ctx.axis = axis
        ctx.y = y = _backend.current.softmax_forward(x, axis)
        return y

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.softmax_backward(g, ctx.y, ctx.axis),)


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        ctx.axis = axis
        ctx.y = y = _backend.current.log_softmax_forward(x, axis)
        return y

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.log_softmax_backward(g, ctx.y, ctx.axis),)


class CrossEntropy(Function):
    """Softmax cross-entropy of logits (N, C) with integer labels (N,), optional class weights (C,) and
    label smoothing; the labels and weights get no gradient."""

    @staticmethod
    def forward(ctx, logits, labels, reduction="mean", weight=None, label_smoothing=0.0):
        loss, ctx.lse = _backend.current.cross_entropy_forward(logits, labels, reduction, weight, label_smoothing)
        ctx.logits, ctx.labels, ctx.reduction = logits, labels, reduction
        ctx.weight, ctx.label_smoothing = weight, label_smoothing
        return loss

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.cross_entropy_backward(g, ctx.logits, ctx.labels, ctx.lse, ctx.reduction,
                                                        ctx.weight, ctx.label_smoothing), None)


class MSELoss(Function):
    @staticmethod
    def forward(ctx, pred, target, reduction="mean"):
        ctx.pred, ctx.target, ctx.reduction = pred, target, reduction
        return _backend.current.mse_forward(pred, target, reduction)

    @staticmethod
    def backward(ctx, g):
        d = _backend.current.mse_backward(g, ctx.pred, ctx.target, ctx.reduction)
        return (d if ctx.needs_input_grad[0] else None, -d if ctx.needs_input_grad[1] else None)


class LeakyRelu(Function):
    @staticmethod
    def forward(ctx, x, negative_slope=0.01):
        ctx.x, ctx.slope = x, negative_slope
        return _backend.current.leaky_relu_forward(x, negative_slope)

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.leaky_relu_backward(g, ctx.x, ctx.slope),)


class Elu(Function):
    @staticmethod
    def forward(ctx, x, alpha=1.0):
        ctx.x, ctx.alpha = x, alpha
        return _backend.current.elu_forward(x, alpha)

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.elu_backward(g, ctx.x, ctx.alpha),)


class MaxPieces(Function):
    """Max over groups of `pieces` consecutive values of the last axis (the nonlinearity of Maxout); saves
    only the argmax."""

    @staticmethod
    def forward(ctx, x, pieces):
        y, ctx.arg = _backend.current.maxout_forward(x, pieces)
        ctx.pieces = pieces
        return y

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.maxout_backward(g, ctx.arg, ctx.pieces),)


def _pair_grads(ctx, d):
    """Gradients of an elementwise loss of (pred - target): d for pred, -d for target."""
    return (d if ctx.needs_input_grad[0] else None, -d if ctx.needs_input_grad[1] else None)


def _no_target_grad(ctx, what):
    if ctx.needs_input_grad[1] and is_grad_enabled():
        raise ValueError(f"{what}: gradients with respect to the target are not supported; pass a target that "
                         f"does not require grad (e.g. target.detach())")


class L1Loss(Function):
    @staticmethod
    def forward(ctx, pred, target, reduction="mean"):
        ctx.pred, ctx.target, ctx.reduction = pred, target, reduction
        return _backend.current.l1_forward(pred, target, reduction)

    @staticmethod
    def backward(ctx, g):
        return _pair_grads(ctx, _backend.current.l1_backward(g, ctx.pred, ctx.target, ctx.reduction))


class BCELoss(Function):
    """Binary cross-entropy on probabilities; the target and weight get no gradient."""

    @staticmethod
    def forward(ctx, probs, target, reduction="mean", weight=None):
        _no_target_grad(ctx, "binary_cross_entropy")
        ctx.probs, ctx.target, ctx.reduction, ctx.weight = probs, target, reduction, weight
        return _backend.current.bce_forward(probs, target, reduction, weight)

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.bce_backward(g, ctx.probs, ctx.target, ctx.reduction, ctx.weight), None)


class BCEWithLogitsLoss(Function):
    """Binary cross-entropy on logits; the target, weight and pos_weight get no gradient."""

    @staticmethod
    def forward(ctx, logits, target, reduction="mean", weight=None, pos_weight=None):
        _no_target_grad(ctx, "binary_cross_entropy_with_logits")
        ctx.logits, ctx.target, ctx.reduction = logits, target, reduction
        ctx.weight, ctx.pos_weight = weight, pos_weight
        return _backend.current.bce_with_logits_forward(logits, target, reduction, weight, pos_weight)

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.bce_with_logits_backward(g, ctx.logits, ctx.target, ctx.reduction, ctx.weight,
                                                          ctx.pos_weight), None)


class NLLLoss(Function):
    """Negative log-likelihood of log-probabilities (N, C) with integer labels (N,)."""

    @staticmethod
    def forward(ctx, log_probs, labels, reduction="mean", weight=None):
        ctx.log_probs, ctx.labels, ctx.reduction, ctx.weight = log_probs, labels, reduction, weight
        return _backend.current.nll_forward(log_probs, labels, reduction, weight)

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.nll_backward(g, ctx.log_probs, ctx.labels, ctx.reduction, ctx.weight), None)


class MultiMarginLoss(Function):
    """Multiclass hinge loss of scores (N, C) with integer labels (N,)."""

    @staticmethod
    def forward(ctx, scores, labels, reduction="mean", p=1, margin=1.0, weight=None, normalization="classes"):
        ctx.scores, ctx.labels = scores, labels
        ctx.opts = dict(reduction=reduction, p=p, margin=margin, weight=weight, normalization=normalization)
        return _backend.current.multi_margin_forward(scores, labels, **ctx.opts)

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.multi_margin_backward(g, ctx.scores, ctx.labels, **ctx.opts), None)


class NormPenalty(Function):
    """l1 * sum(|p|) + l2 * sum(p**2) of one tensor: the building block of the L1/L2/elastic-net penalties."""

    @staticmethod
    def forward(ctx, param, l1=0.0, l2=0.0):
        ctx.param, ctx.l1, ctx.l2 = param, l1, l2
        return _backend.current.norm_penalty_forward(param, l1, l2)

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.norm_penalty_backward(g, ctx.param, ctx.l1, ctx.l2),)


class BatchNorm(Function):
    """Batch normalization over every dim but 1 (csrc/norm.pyx). x, weight, bias are the positional inputs
    (weight and bias may be None); running_mean and running_var are ndarrays updated in place in training
    mode. Saves x, weight and the per-channel mean and 1 / std used."""

    @staticmethod
    def forward(ctx, x, weight=None, bias=None, running_mean=None, running_var=None, training=True, momentum=0.1,
                eps=1e-5):
        y, ctx.mean, ctx.invstd = _backend.current.batch_norm_forward(x, weight, bias, running_mean, running_var,
                                                                      training, momentum, eps)
        ctx.x, ctx.w, ctx.training = x, weight, bool(training)
        return y

    @staticmethod
    def backward(ctx, g):
        needs = ctx.needs_input_grad
        nw = len(needs) > 1 and needs[1]
        nb = len(needs) > 2 and needs[2]
        dx, dw, db = _backend.current.batch_norm_backward(g, ctx.x, ctx.w, ctx.mean, ctx.invstd, ctx.training,
                                                          needs[0], nw, nb)
        return dx, dw, db


class MaskScale(Function):
    """y = x * (mask ? scale : 0), the bool mask broadcast over the trailing dims it lacks (dropout)."""

    @staticmethod
    def forward(ctx, x, mask=None, scale=1.0):
        ctx.mask, ctx.scale = mask, scale
        return _backend.current.dropout_mask_scale(x, mask, scale)

    @staticmethod
    def backward(ctx, g):
        return (_backend.current.dropout_mask_scale(g, ctx.mask, ctx.scale),)
