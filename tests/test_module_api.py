"""nn.Module's PyTorch surface: buffers, state_dict with buffers, load_state_dict's strict and non-strict
results and errors, ModuleList / ModuleDict, traversal, apply, requires_grad_, get_submodule, forward
hooks, to()/double() with buffers, zero_grad."""
import numpy as np
import pytest

import fastbp
from fastbp import nn, tensor


class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("scale", np.full(2, 2.0, np.float32))
        self.register_buffer("steps", np.array(0, np.int64))
        self.register_buffer("cache", np.zeros(4, np.float32), persistent=False)

    def forward(self, x):
        self.steps.data += 1
        return self.lin(x) * self.scale


def test_buffers_registration_and_state_dict():
    m = WithBuffers()
    assert [n for n, _ in m.named_buffers()] == ["scale", "steps", "cache"]
    assert isinstance(m.scale, fastbp.Tensor) and not m.scale.requires_grad
    assert len(list(m.buffers())) == 3
    assert [n for n, _ in m.named_parameters()] == ["lin.weight", "lin.bias"]
    sd = m.state_dict()
    assert list(sd) == ["scale", "steps", "lin.weight", "lin.bias"]  # own buffers, then children; no "cache"
    m(tensor(np.ones((1, 3), np.float32)))
    assert m.steps.data == 1 and sd["steps"] == 0  # state_dict holds copies
    m.scale = np.ones(2, np.float32)  # assigning to a buffer name replaces the buffer
    assert "scale" in m._buffers and isinstance(m.scale, fastbp.Tensor)
    m.register_buffer("gone", None)
    assert "gone" not in m.state_dict()
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("lin", np.zeros(1))
    with pytest.raises(KeyError, match=r"contain \".\""):
        m.register_buffer("a.b", np.zeros(1))
    with pytest.raises(TypeError, match="buffer"):
        m.scale = "not an array"
    del m.scale
    assert "scale" not in m.state_dict()


def test_load_state_dict_strict_and_non_strict():
    a, b = WithBuffers(), WithBuffers()
    a.steps.data[...] = 5
    a.scale.data[...] = 3
    res = b.load_state_dict(a.state_dict())
    assert res.missing_keys == [] and res.unexpected_keys == [] and repr(res) == "<All keys matched successfully>"
    assert b.steps.data == 5 and b.steps.dtype == np.int64
    np.testing.assert_array_equal(b.scale.data, 3)
    sd = a.state_dict()
    del sd["lin.bias"]
    sd["extra.weight"] = np.zeros(2)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "lin.bias"') as e:
        b.load_state_dict(sd)
    assert 'Unexpected key(s) in state_dict: "extra.weight"' in str(e.value)
    assert isinstance(e.value, KeyError)
    res = b.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["lin.bias"] and res.unexpected_keys == ["extra.weight"]
    missing, unexpected = res  # a named tuple, as PyTorch's
    assert missing == ["lin.bias"]
    sd = a.state_dict()
    sd["lin.weight"] = np.zeros((3, 3))
    before = b.state_dict()
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"size mismatch for lin.weight.*\(3, 3\).*\(2, 3\)"):
            b.load_state_dict(sd, strict=strict)
    for k, v in b.state_dict().items():  # nothing was copied by the failed loads
        np.testing.assert_array_equal(v, before[k])


def test_module_list_and_dict_register_children():
    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    layers.append(nn.ReLU())
    assert len(layers) == 4 and isinstance(layers[-1], nn.ReLU)
    assert [n for n, _ in layers.named_parameters()][:2] == ["0.weight", "0.bias"]
    assert isinstance(layers[1:3], nn.ModuleList) and len(layers[1:3]) == 2
    with pytest.raises(IndexError):
        layers[4]
    d = nn.ModuleDict({"enc": nn.Linear(2, 3), "dec": nn.Linear(3, 2)})
    d["act"] = nn.Tanh()
    assert list(d.keys()) == ["enc", "dec", "act"] and "enc" in d
    assert list(d.state_dict()) == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    net = Net()
    assert list(net.state_dict()) == ["blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias"]
    assert net(tensor(np.ones((1, 2), np.float32))).shape == (1, 2)


def test_traversal_apply_requires_grad_and_get_submodule():
    net = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()), nn.Linear(3, 1))
    assert [n for n, _ in net.named_children()] == ["0", "1", "2"]
    assert [n for n, _ in net.named_modules()] == ["", "0", "1", "1.0", "1.1", "2"]
    assert net.get_submodule("1.0") is net[1][0]
    assert net.get_submodule("") is net
    with pytest.raises(AttributeError, match="no submodule '5'"):
        net.get_submodule("1.5")
    seen = []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen == ["Linear", "BatchNorm1d", "ReLU", "Sequential", "Linear", "Sequential"]  # children first
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())
    net.requires_grad_()
    assert all(p.requires_grad for p in net.parameters())
    net.eval()
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    shared = nn.Linear(2, 2)
    twice = nn.Sequential(shared, shared)
    assert len(list(twice.modules())) == 2 and len(list(twice.parameters())) == 2


def test_forward_hooks_and_removable_handles():
    lin = nn.Linear(2, 2)
    calls = []
    h1 = lin.register_forward_pre_hook(lambda m, args: calls.append(("pre", args[0].shape)))
    h2 = lin.register_forward_hook(lambda m, args, out: out * 0)
    y = lin(tensor(np.ones((3, 2), np.float32)))
    assert calls == [("pre", (3, 2))] and (y.data == 0).all()
    h2.remove()
    h1.remove()
    h1.remove()  # removing twice is harmless
    assert (lin(tensor(np.ones((3, 2), np.float32))).data != 0).any() and len(calls) == 1
    with lin.register_forward_pre_hook(lambda m, args: (args[0] * 0,)):
        np.testing.assert_allclose(lin(tensor(np.ones((1, 2), np.float32))).data, lin.bias.data[None])
    assert not lin._forward_pre_hooks


def test_to_converts_parameters_and_floating_buffers_and_accepts_cpu():
    m = WithBuffers()
    assert m.to("cpu") is m and m.cpu() is m
    m.to(np.float64)
    assert m.lin.weight.dtype == np.float64 and m.scale.dtype == np.float64 and m.cache.dtype == np.float64
    assert m.steps.dtype == np.int64
    m.to("cpu", dtype="float32")
    assert m.lin.weight.dtype == np.float32 and m.scale.dtype == np.float32
    with pytest.raises(ValueError, match="CPU only"):
        m.to("cuda")
    with pytest.raises(TypeError, match="float32 or float64"):
        m.to(np.int32)


def test_zero_grad_set_to_none():
    lin = nn.Linear(2, 2)
    lin(tensor(np.ones((1, 2), np.float32))).sum().backward()
    lin.zero_grad(set_to_none=False)
    assert (lin.weight.grad == 0).all()
    lin.zero_grad()
    assert lin.weight.grad is None


def test_existing_error_types_kept():
    """Earlier code caught KeyError for missing keys and ValueError for shapes; both still work."""
    m = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(KeyError, match="0.bias"):
        m.load_state_dict({"0.weight": np.zeros((2, 2))})
