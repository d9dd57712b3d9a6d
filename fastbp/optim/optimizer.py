"""Optimizer base class: parameter groups, zero_grad, state_dict.

Per-parameter state lives in `self.state[id(param)]` as a dict of ndarrays (buffers with the
parameter's shape, named in the subclass's `_buffer_keys`) and plain numbers (e.g. the per-parameter
`step` counter of Adam, AdaGrad and RMSprop). `state_dict()` refers to parameters by their position
across all groups, as PyTorch does, so a freshly built model and optimizer can load it and resume with
an identical trajectory."""
import copy

import numpy as np

from .. import _backend

from ..tensor import Tensor


class Optimizer:
    # state keys that hold a buffer shaped like the parameter (checked and cast to its dtype on load)
    _buffer_keys = ()

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
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in group["params"]}) != len(group["params"]) or any(id(p) in seen for p in group["params"]):
            raise ValueError("some parameters appear more than once in the optimizer's parameter groups")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group):
        pass

    def _param_step(self, group, p):
        """Optimizers whose step is one kernel call per parameter define this: the step of p as (name of
        the backend kernel, its arguments after param and gradient), the per-parameter bookkeeping done.
        step() then runs them all (_step_params)."""
        raise NotImplementedError

    def _step_params(self, skip=None):
        """The step of every parameter with a gradient, except those whose id is in `skip`."""
        kernels = _backend.current
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None or skip is not None and id(p) in skip:
                    continue
                name, args = self._param_step(g, p)
                getattr(kernels, name)(p.data, p.grad, *args)

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
        """Load hyperparameters and state saved by `state_dict()` of an optimizer built over parameters
        of the same shapes in the same order. Buffers are copied (the dict stays independent) and cast
        to each parameter's dtype; mismatches raise ValueError naming the group, parameter and key."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: {len(groups)} parameter groups in the state dict, "
                             f"{len(self.param_groups)} in the optimizer")
        params = list(self._params())
        new_groups = []
        for k, (g, saved) in enumerate(zip(self.param_groups, groups)):
            if len(saved["params"]) != len(g["params"]):
                raise ValueError(f"load_state_dict: parameter group {k} has {len(saved['params'])} parameters in "
                                 f"the state dict, {len(g['params'])} in the optimizer")
            ng = dict(g)
            ng.update({key: copy.deepcopy(v) for key, v in saved.items() if key != "params"})
            self._check_group(ng)
            new_groups.append(ng)
        new_state = {}
        for i, s in state_dict["state"].items():
            i = int(i)
            if not 0 <= i < len(params):
                raise ValueError(f"load_state_dict: state for parameter {i}, but the optimizer has {len(params)}")
            p = params[i]
            s = copy.deepcopy(s)
            for key in self._buffer_keys:
                if key in s and s[key] is not None:
                    arr = np.asarray(s[key])
                    if arr.shape != p.data.shape:
                        raise ValueError(f"load_state_dict: state {key!r} of parameter {i} has shape {arr.shape} "
                                         f"but the parameter has shape {p.data.shape}")
                    s[key] = np.array(arr, dtype=p.data.dtype, order="C")
            new_state[id(p)] = s
        for g, ng in zip(self.param_groups, new_groups):
            g.update(ng)
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for k, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            for key in sorted(g):
                if key != "params":
                    lines.append(f"    {key}: {g[key]}")
        return "\n".join(lines) + "\n)"


def _check_nonneg(**values):
    """PyTorch's messages for the common hyperparameter checks (NaN fails them too)."""
    names = {"lr": "learning rate", "eps": "epsilon value"}
    for key, v in values.items():
        if not v >= 0.0:
            raise ValueError(f"Invalid {names.get(key, key + ' value')}: {v}")


def _check_betas(betas):
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for k, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {k}: {b}")
