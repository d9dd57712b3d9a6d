"""RMSprop with PyTorch's update rule, one fused kernel call (`rmsprop_step`) per parameter."""
import numpy as np

from .. import _backend
from .optimizer import Optimizer, _check_nonneg


class RMSprop(Optimizer):
    """RMSprop(params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False) --
    torch.optim.RMSprop's rule, per parameter:

        d = grad + weight_decay * p
        square_avg = alpha * square_avg + (1 - alpha) * d^2
        centered:  grad_avg = alpha * grad_avg + (1 - alpha) * d;  avg = sqrt(square_avg - grad_avg^2) + eps
        otherwise: avg = sqrt(square_avg) + eps
        momentum > 0: buf = momentum * buf + d / avg;  p -= lr * buf
        otherwise:    p -= lr * d / avg

    State per parameter: "step" (int), "square_avg", and "grad_avg" (centered) and "momentum_buffer"
    (momentum > 0), all zero at the start."""

    _buffer_keys = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=bool(centered)))

    def _check_group(self, g):
        _check_nonneg(lr=g["lr"], eps=g["eps"], momentum=g["momentum"], weight_decay=g["weight_decay"],
                      alpha=g["alpha"])

    def step(self, closure=None):
        """One RMSprop step over every parameter that has a gradient; returns closure() if given."""
        loss = closure() if closure is not None else None
        kernel = _backend.current.rmsprop_step
        for g in self.param_groups:
            centered, momentum = g["centered"], g["momentum"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state.get(id(p))
                if st is None:
                    st = self.state[id(p)] = {"step": 0, "square_avg": np.zeros_like(p.data)}
                if centered and st.get("grad_avg") is None:
                    st["grad_avg"] = np.zeros_like(p.data)
                if momentum > 0 and st.get("momentum_buffer") is None:
                    st["momentum_buffer"] = np.zeros_like(p.data)
                st["step"] += 1
                kernel(p.data, p.grad, st["square_avg"], st.get("grad_avg") if centered else None,
                       st.get("momentum_buffer") if momentum > 0 else None, g["lr"], g["alpha"], g["eps"],
                       g["weight_decay"], momentum, centered)
        return loss
