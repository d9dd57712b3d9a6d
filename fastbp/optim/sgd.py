"""Stochastic gradient descent with PyTorch's update rule, one fused kernel call per parameter."""
import numpy as np

from .optimizer import Optimizer


class SGD(Optimizer):
    """SGD(params, lr, momentum=0, dampening=0, nesterov=False, weight_decay=0).

    d = grad + weight_decay * p;  buf = d (first step) or momentum * buf + (1 - dampening) * d;
    d = d + momentum * buf (Nesterov) or buf;  p -= lr * d.  Exactly torch.optim.SGD."""

    _buffer_keys = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                      weight_decay=weight_decay))

    def _check_group(self, g):
        if not g["lr"] >= 0:
            raise ValueError(f"Invalid learning rate: {g['lr']}")
        if not g["momentum"] >= 0:
            raise ValueError(f"Invalid momentum value: {g['momentum']}")
        if not g["weight_decay"] >= 0:
            raise ValueError(f"Invalid weight_decay value: {g['weight_decay']}")
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self._step_params()
        return loss

    def _param_step(self, g, p):
        """The step of p (in group g) as (kernel name, arguments after param and gradient), with its
        bookkeeping done (the momentum buffer made on the first step)."""
        mom = g["momentum"]
        buf = None
        first = False
        if mom != 0:
            st = self.state.get(id(p))
            if st is None:
                st = self.state[id(p)] = {"momentum_buffer": np.empty_like(p.data)}
                first = True
            buf = st["momentum_buffer"]
        return "sgd_step", (buf, g["lr"], mom, g["dampening"], g["weight_decay"], g["nesterov"], first)
