"""Module, Parameter and Sequential, shaped like torch.nn."""
from collections import OrderedDict, namedtuple

import numpy as np

from .._dtype import get_default_dtype
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable (requires_grad=True by default)."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        arr = data.data if isinstance(data, Tensor) else np.asarray(data)
        if arr.dtype.kind != "f":
            arr = arr.astype(get_default_dtype())
        super().__init__(np.ascontiguousarray(arr), requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class _IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What load_state_dict returns, as PyTorch: the keys the module expected but the dict lacked, and the
    keys the dict had that the module does not know."""

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


class StateDictError(RuntimeError, KeyError, ValueError):
    """load_state_dict's error: a RuntimeError as in PyTorch, also a KeyError (missing or unexpected keys)
    and a ValueError (shape mismatches) so that either kind can be caught by what it is."""

    __str__ = BaseException.__str__


class RemovableHandle:
    """Returned by register_forward_hook / register_forward_pre_hook; remove() unregisters the hook."""

    _next_id = 0

    def __init__(self, hooks):
        self._hooks = hooks
        self.id = RemovableHandle._next_id
        RemovableHandle._next_id += 1

    def remove(self):
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _as_buffer(value, name):
    if value is None or isinstance(value, Tensor):
        return value
    if isinstance(value, (np.ndarray, np.number, np.bool_, int, float, bool)):
        return Tensor(np.array(value))
    raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r} (a Tensor, ndarray or None is "
                    f"expected)")


def _state_value(value):
    """An ndarray from a state-dict value: ndarray, fastbp Tensor, or anything array-like (a CPU torch
    tensor included)."""
    if isinstance(value, Tensor):
        return value.data
    if not isinstance(value, np.ndarray) and hasattr(value, "detach") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _parse_to(args, kwargs):
    """(dtype or None) from Module.to's arguments: a dtype, a device ("cpu"), a tensor, or both."""
    dtype = kwargs.pop("dtype", None)
    device = kwargs.pop("device", None)
    kwargs.pop("non_blocking", None)
    if kwargs:
        raise TypeError(f"to() got unexpected keyword arguments {sorted(kwargs)}")
    for a in args:
        if isinstance(a, Tensor):
            dtype = a.dtype
        elif isinstance(a, str) and not _is_dtype_name(a):
            device = a
        elif a is not None and not isinstance(a, (str, type, np.dtype)) and hasattr(a, "type"):
            device = a  # a device object
        else:
            dtype = a
    if device is not None:
        kind = device if isinstance(device, str) else getattr(device, "type", device)
        if str(kind).split(":")[0] != "cpu":
            raise ValueError(f"fastbp runs on the CPU only; unknown or unsupported device {device!r} "
                             f"(use 'cpu')")
    return dtype


def _is_dtype_name(s):
    try:
        np.dtype(s)
    except TypeError:
        return False
    return True


class Module:
    """Base class: assigning a Parameter, Module or registered buffer attribute registers it, in
    assignment order, as torch.nn.Module does.

    Buffers (register_buffer) are Tensors that are state but not parameters: BatchNorm's running statistics.
    Persistent buffers go into state_dict() after the module's own parameters, under PyTorch's key names;
    .to()/.double()/.float() convert floating-point buffers (integer ones, like num_batches_tracked, keep
    their dtype)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers_set", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError("call Module.__init__() before assigning attributes")
        buffers = self.__dict__["_buffers"]
        if isinstance(value, Parameter):
            self._modules.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            self.__dict__.pop(name, None)
            self._modules[name] = value
        elif name in params and value is None:
            params[name] = None
        elif name in buffers:
            buffers[name] = _as_buffer(value, name)
        else:
            params.pop(name, None)
            self._modules.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        if name in self._parameters:
            del self._parameters[name]
        elif name in self._buffers:
            del self._buffers[name]
            self._non_persistent_buffers_set.discard(name)
        elif name in self._modules:
            del self._modules[name]
        else:
            object.__delattr__(self, name)

    @staticmethod
    def _check_name(name, what):
        if not isinstance(name, str):
            raise TypeError(f"{what} name should be a string, got {type(name).__name__}")
        if name == "" or "." in name:
            raise KeyError(f"{what} name can't be empty or contain \".\", got {name!r}")

    def register_parameter(self, name, param):
        self._check_name(name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter expects a Parameter or None, got {type(param).__name__}")
        if name in self._buffers or name in self._modules or (name in self.__dict__ and name not in self._parameters):
            raise KeyError(f"attribute {name!r} already exists")
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """Register a buffer (a Tensor, an ndarray, which is wrapped, or None): state that is not a parameter.
        Persistent buffers are part of state_dict(); non-persistent ones only move with .to()."""
        self._check_name(name, "buffer")
        if name in self._parameters or name in self._modules or (name in self.__dict__ and name not in self._buffers):
            raise KeyError(f"attribute {name!r} already exists")
        self._buffers[name] = _as_buffer(tensor, name)
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def add_module(self, name, module):
        self._check_name(name, "module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module expects a Module, got {type(module).__name__}")
        if name in self._parameters or name in self._buffers:
            raise KeyError(f"attribute {name!r} already exists")
        self._modules[name] = module

    register_module = add_module

    def get_submodule(self, target):
        """The submodule at a dotted path ("layer1.0.conv1"); "" is the module itself."""
        mod = self
        if target == "":
            return mod
        for i, item in enumerate(target.split(".")):
            sub = mod._modules.get(item)
            if sub is None:
                where = ".".join(target.split(".")[:i]) or type(self).__name__
                raise AttributeError(f"{where} has no submodule {item!r} (looking up {target!r})")
            mod = sub
        return mod

    def get_parameter(self, target):
        mod_path, _, name = target.rpartition(".")
        mod = self.get_submodule(mod_path)
        if name not in mod._parameters:
            raise AttributeError(f"{type(mod).__name__} has no parameter {name!r}")
        return mod._parameters[name]

    def get_buffer(self, target):
        mod_path, _, name = target.rpartition(".")
        mod = self.get_submodule(mod_path)
        if name not in mod._buffers:
            raise AttributeError(f"{type(mod).__name__} has no buffer {name!r}")
        return mod._buffers[name]

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        d = self.__dict__
        if not d["_forward_pre_hooks"] and not d["_forward_hooks"]:
            return self.forward(*args, **kwargs)
        for hook in list(d["_forward_pre_hooks"].values()):
            res = hook(self, args)
            if res is not None:
                args = res if isinstance(res, tuple) else (res,)
        out = self.forward(*args, **kwargs)
        for hook in list(d["_forward_hooks"].values()):
            res = hook(self, args, out)
            if res is not None:
                out = res
        return out

    def register_forward_pre_hook(self, hook):
        """hook(module, args) runs before forward; returning a value (a tuple, or a single value) replaces
        the positional arguments. Returns a handle whose remove() unregisters it."""
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        return handle

    def register_forward_hook(self, hook):
        """hook(module, args, output) runs after forward; returning a value replaces the output. Returns a
        handle whose remove() unregisters it."""
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    # ----- traversal -------------------------------------------------------------------------------
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """(name, module) for this module and every descendant, depth first in registration order; a module
        reachable twice appears once (unless remove_duplicate=False)."""
        if memo is None:
            memo = set()
        stack = [(prefix, self)]
        while stack:
            name, mod = stack.pop()
            if remove_duplicate:
                if id(mod) in memo:
                    continue
                memo.add(id(mod))
            yield name, mod
            children = [(f"{name}.{n}" if name else n, m) for n, m in mod._modules.items() if m is not None]
            stack.extend(reversed(children))

    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def _named_members(self, store, prefix, recurse):
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mname, mod in mods:
            for pname, p in getattr(mod, store).items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def named_parameters(self, prefix="", recurse=True):
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        """fn(module) on every submodule (children first, as PyTorch), then on self; returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    # ----- state ---------------------------------------------------------------------------------
    def _state_items(self):
        """(key, Tensor) for every parameter and persistent buffer, in PyTorch's state_dict order: each
        module's parameters, then its buffers, modules depth first."""
        for mname, mod in self.named_modules(remove_duplicate=False):
            pre = f"{mname}." if mname else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    yield pre + name, p
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent_buffers_set:
                    yield pre + name, b

    def state_dict(self, keep_vars=False):
        """An ordered dict of key -> ndarray copy, keys as in PyTorch ("0.weight", "bn1.running_mean",
        "bn1.num_batches_tracked", ...): parameters and persistent buffers. keep_vars=True gives the Tensors
        themselves instead of copies."""
        out = OrderedDict()
        for key, t in self._state_items():
            if key not in out:
                out[key] = t if keep_vars else t.data.copy()
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays (ndarrays, Tensors, or CPU torch tensors) into the parameters and persistent buffers,
        cast to their dtypes. Returns (missing_keys, unexpected_keys) as a named tuple. strict=True (default)
        raises StateDictError (a RuntimeError, KeyError and ValueError) naming every missing or unexpected
        key; a shape mismatch raises in either mode, naming the key and both shapes. Nothing is copied
        when it raises."""
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        errors = []
        values = []
        for key, t in own.items():
            if key not in state_dict:
                continue
            value = _state_value(state_dict[key])
            if value.shape != t.data.shape:
                errors.append(f"size mismatch for {key}: copying a value with shape {value.shape} from the state "
                              f"dict, the shape in the current model is {t.data.shape}")
                continue
            values.append((t, value))
        if strict:
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected))
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing))
        if errors:
            raise StateDictError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                                 + "\n\t".join(errors))
        for t, value in values:
            t.data[...] = value.astype(t.data.dtype, copy=False)
        return _IncompatibleKeys(missing, unexpected)

    def train(self, mode=True):
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Reset the gradients: set them to None (default, as PyTorch), or fill them with zeros."""
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def to(self, *args, **kwargs):
        """Convert every parameter and floating-point buffer to a dtype (float32 or float64) in place;
        returns self. Accepts PyTorch's forms: to(dtype), to("cpu"), to(device, dtype), to(tensor),
        to(dtype=..., device=...). fastbp runs on the CPU: any other device raises ValueError."""
        dtype = _parse_to(args, dict(kwargs))
        if dtype is None:
            return self
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"Module.to: dtype must be float32 or float64, got {dtype}")
        for p in self.parameters():
            if p.data.dtype != dtype:
                p.data = np.ascontiguousarray(p.data.astype(dtype))
            if p.grad is not None and p.grad.dtype != dtype:
                p.grad = p.grad.astype(dtype)
        for b in self.buffers():
            if b.data.dtype.kind == "f" and b.data.dtype != dtype:
                b.data = np.ascontiguousarray(b.data.astype(dtype))
        return self

    def cpu(self):
        return self

    def float(self):
        return self.to(np.float32)

    def double(self):
        return self.to(np.float64)

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        if len(lines) == 1:
            return lines[0] + ")"
        return "\n".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... as in PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self


class ModuleList(Module):
    """A list of modules, registered as children "0", "1", ... (PyTorch's ModuleList); no forward."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _index(self, i):
        n = len(self._modules)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for a ModuleList of length {n}")
        return str(i % n)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ModuleList(list(self._modules.values())[i])
        return self._modules[self._index(i)]

    def __setitem__(self, i, module):
        self.add_module(self._index(i), module)

    def __delitem__(self, i):
        mods = list(self._modules.values())
        del mods[i]
        self._modules.clear()
        for k, m in enumerate(mods):
            self.add_module(str(k), m)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __iadd__(self, modules):
        return self.extend(modules)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def insert(self, index, module):
        mods = list(self._modules.values())
        mods.insert(index, module)
        self._modules.clear()
        for k, m in enumerate(mods):
            self.add_module(str(k), m)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList has no forward(); iterate over it in the parent's forward")


class ModuleDict(Module):
    """An ordered dict of named modules, registered as children under their keys (PyTorch's ModuleDict)."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        self.add_module(key, module)

    def __delitem__(self, key):
        del self._modules[key]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __contains__(self, key):
        return key in self._modules

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()

    def pop(self, key):
        return self._modules.pop(key)

    def clear(self):
        self._modules.clear()

    def update(self, modules):
        items = modules.items() if hasattr(modules, "items") else modules
        for k, m in items:
            self.add_module(k, m)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleDict has no forward(); index it in the parent's forward")
