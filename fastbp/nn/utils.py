"""Gradient clipping, as torch.nn.utils: `clip_grad_norm_` and `clip_grad_value_`.

Both modify `.grad` in place and skip parameters whose `.grad` is None. Norms are accumulated in float64
with NumPy's pairwise summation (single-threaded, fixed order), so the result does not depend on the
number of threads; PyTorch accumulates in the gradient's dtype, so float32 totals may differ from
PyTorch's in the last digits."""
import math

import numpy as np

from ..capture import opaque_call
from ..tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_", "get_total_norm"]


def _grads(parameters):
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    out = []
    for p in parameters:
        if not isinstance(p, Tensor):
            raise TypeError(f"expected Tensors (parameters), got {type(p).__name__}")
        if p.grad is not None:
            out.append(p.grad)
    return out


def get_total_norm(grads, norm_type=2.0):
    """The norm of all arrays in `grads` together, as if concatenated into one vector (a float)."""
    norm_type = float(norm_type)
    if not grads:
        return 0.0
    if math.isinf(norm_type):
        if norm_type < 0:
            return float(min(np.abs(g).min(initial=np.inf) for g in grads))
        return float(max(np.abs(g).max(initial=0.0) for g in grads))
    if norm_type == 0:
        return float(sum(np.count_nonzero(g) for g in grads))
    if norm_type <= 0:
        raise ValueError(f"norm_type must be positive, 0 or +-inf, got {norm_type}")
    # per-tensor norms first, then the norm of those norms, as PyTorch does
    per = []
    for g in grads:
        a = np.abs(np.asarray(g, dtype=np.float64))
        if norm_type == 2.0:
            per.append(math.sqrt(np.sum(a * a)))
        elif norm_type == 1.0:
            per.append(float(np.sum(a)))
        else:
            per.append(float(np.sum(a ** norm_type)) ** (1.0 / norm_type))
    per = np.asarray(per)
    if norm_type == 1.0:
        return float(np.sum(per))
    return float(np.sum(per ** norm_type) ** (1.0 / norm_type))


@opaque_call
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients together so that their joint `norm_type`-norm is at most `max_norm`.

    Gradients are multiplied by min(1, max_norm / (total_norm + 1e-6)) (PyTorch's rule, so a total norm
    just below max_norm is scaled by a factor a hair under 1). norm_type may be float('inf') (largest
    absolute entry). Returns the total norm before clipping, as a Python float. With
    error_if_nonfinite=True a NaN or infinite total norm raises RuntimeError instead of clipping."""
    grads = _grads(parameters)
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    total = get_total_norm(grads, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {total}, so they cannot be "
                           f"clipped; pass error_if_nonfinite=False to clip anyway")
    with np.errstate(invalid="ignore", divide="ignore"):
        coef = float(np.minimum(float(max_norm) / (total + 1e-6), 1.0))  # NaN total -> NaN grads, as PyTorch
    for g in grads:
        g *= g.dtype.type(coef)
    return total


@opaque_call
def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient entry into [-clip_value, clip_value] in place."""
    if not clip_value >= 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for g in _grads(parameters):
        np.clip(g, -clip_value, clip_value, out=g)
