"""Adam and AdamW with PyTorch's update rules, one fused kernel call (`adam_step`) per parameter."""
import numpy as np

from .optimizer import Optimizer, _check_betas, _check_nonneg


class Adam(Optimizer):
    """Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False,
    decoupled_weight_decay=False) -- torch.optim.Adam's rule, per parameter, step count t = 1, 2, ...:

        d = grad + weight_decay * p                        (coupled L2; AdamW instead shrinks p)
        m = beta1 * m + (1 - beta1) * d
        v = beta2 * v + (1 - beta2) * d^2
        v_max = max(v_max, v) and use it in place of v      (amsgrad=True)
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    State per parameter: "step" (int), "exp_avg", "exp_avg_sq" and, with amsgrad, "max_exp_avg_sq",
    all zero at the start. Each step is one in-place pass over p, grad and the state buffers.
    `decoupled_weight_decay=True` turns this into AdamW (as in PyTorch's Adam)."""

    _buffer_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 decoupled_weight_decay=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=bool(amsgrad), decoupled_weight_decay=bool(decoupled_weight_decay)))

    def _check_group(self, g):
        _check_nonneg(lr=g["lr"], eps=g["eps"])
        g["betas"] = tuple(g["betas"])
        _check_betas(g["betas"])
        _check_nonneg(weight_decay=g["weight_decay"])

    def step(self, closure=None):
        """One Adam step over every parameter that has a gradient; returns closure() if given."""
        loss = closure() if closure is not None else None
        self._step_params()
        return loss

    def _param_step(self, g, p):
        """The step of p (in group g) as (kernel name, arguments after param and gradient), with its
        bookkeeping done (state made on the first step, the step count advanced)."""
        st = self.state.get(id(p))
        if st is None:
            st = self.state[id(p)] = {"step": 0, "exp_avg": np.zeros_like(p.data),
                                      "exp_avg_sq": np.zeros_like(p.data)}
        amsgrad = g["amsgrad"]
        if amsgrad and st.get("max_exp_avg_sq") is None:
            st["max_exp_avg_sq"] = np.zeros_like(p.data)
        st["step"] += 1
        beta1, beta2 = g["betas"]
        return "adam_step", (st["exp_avg"], st["exp_avg_sq"], st.get("max_exp_avg_sq"), st["step"], g["lr"], beta1,
                             beta2, g["eps"], g["weight_decay"], amsgrad, g["decoupled_weight_decay"])


class AdamW(Adam):
    """AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False) --
    torch.optim.AdamW: Adam with decoupled weight decay. Each step first shrinks the parameter,
    p *= 1 - lr * weight_decay, then applies the Adam update with the raw gradient (no L2 term in m, v)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         decoupled_weight_decay=True)
