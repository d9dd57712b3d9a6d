"""Adadelta with PyTorch's update rule, one fused kernel call (`adadelta_step`) per parameter."""
import numpy as np

from .. import _backend
from .optimizer import Optimizer, _check_nonneg


class Adadelta(Optimizer):
    """Adadelta(params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0) -- torch.optim.Adadelta's rule, per
    parameter:

        d = grad + weight_decay * p
        square_avg = rho * square_avg + (1 - rho) * d^2
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * d
        acc_delta = rho * acc_delta + (1 - rho) * delta^2
        p -= lr * delta

    State per parameter: "step" (int), "square_avg" and "acc_delta", zero at the start."""

    _buffer_keys = ("square_avg", "acc_delta")

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay))

    def _check_group(self, g):
        _check_nonneg(lr=g["lr"], eps=g["eps"], weight_decay=g["weight_decay"])
        if not 0.0 <= g["rho"] <= 1.0:
            raise ValueError(f"Invalid rho value: {g['rho']}")

    def step(self, closure=None):
        """One Adadelta step over every parameter that has a gradient; returns closure() if given."""
        loss = closure() if closure is not None else None
        kernel = _backend.current.adadelta_step
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state.get(id(p))
                if st is None:
                    st = self.state[id(p)] = {"step": 0, "square_avg": np.zeros_like(p.data),
                                              "acc_delta": np.zeros_like(p.data)}
                st["step"] += 1
                kernel(p.data, p.grad, st["square_avg"], st["acc_delta"], g["lr"], g["rho"], g["eps"],
                       g["weight_decay"])
        return loss
