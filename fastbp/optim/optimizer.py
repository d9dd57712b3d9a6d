"""Optimizer base class: parameter groups, zero_grad, state_dict."""
import copy

import numpy as np

from ..tensor import Tensor


class Optimizer:
    def __init__(self, params, defaults):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if isinstance(params[0], dict):
            groups = params
        else:
            groups = [{"params": params}]
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group):
        group = dict(group)
        ps = group["params"]
        group["params"] = [ps] if isinstance(ps, Tensor) else list(ps)
        for p in group["params"]:
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise TypeError("optimizer can only optimize Tensors that require grad")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group):
        pass

    def zero_grad(self, set_to_none=True):
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    def _params(self):
        for g in self.param_groups:
            for p in g["params"]:
                yield p

    def state_dict(self):
        """{"state": {index: {name: ndarray or number}}, "param_groups": [{hyperparameters, "params": [index]}]}"""
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {index[id(p)]: copy.deepcopy(s) for p, s in ((p, self.state.get(id(p))) for p in self._params())
                 if s is not None}
        groups = []
        for g in self.param_groups:
            d = {k: v for k, v in g.items() if k != "params"}
            d["params"] = [index[id(p)] for p in g["params"]]
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: {len(groups)} parameter groups in the state dict, "
                             f"{len(self.param_groups)} in the optimizer")
        params = list(self._params())
        for g, saved in zip(self.param_groups, groups):
            if len(saved["params"]) != len(g["params"]):
                raise ValueError("load_state_dict: a parameter group has a different number of parameters")
            g.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            s = copy.deepcopy(s)
            for k, v in s.items():
                if isinstance(v, np.ndarray) and v.shape == p.data.shape:
                    s[k] = np.ascontiguousarray(v, dtype=p.data.dtype)
            self.state[id(p)] = s
