"""AdaGrad with PyTorch's update rule, one fused kernel call (`adagrad_step`) per parameter."""
import numpy as np

from .. import _backend
from .optimizer import Optimizer, _check_nonneg


class Adagrad(Optimizer):
    """Adagrad(params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10) --
    torch.optim.Adagrad's rule, per parameter, step count t = 1, 2, ...:

        d = grad + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        state_sum += d^2                          (state_sum starts at initial_accumulator_value)
        p -= clr * d / (sqrt(state_sum) + eps)

    State per parameter: "step" (int) and "sum". PyTorch creates the state when the optimizer is built;
    fastbp creates it at the parameter's first step, with the same values."""

    _buffer_keys = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps))

    def _check_group(self, g):
        _check_nonneg(lr=g["lr"], lr_decay=g["lr_decay"], weight_decay=g["weight_decay"],
                      initial_accumulator_value=g["initial_accumulator_value"], eps=g["eps"])

    def step(self, closure=None):
        """One AdaGrad step over every parameter that has a gradient; returns closure() if given."""
        loss = closure() if closure is not None else None
        kernel = _backend.current.adagrad_step
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state.get(id(p))
                if st is None:
                    st = self.state[id(p)] = {
                        "step": 0, "sum": np.full_like(p.data, g["initial_accumulator_value"])}
                st["step"] += 1
                kernel(p.data, p.grad, st["sum"], st["step"], g["lr"], g["lr_decay"], g["weight_decay"], g["eps"])
        return loss
