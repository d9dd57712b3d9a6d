"""The Tensor surface and creation functions that follow PyTorch: dim/keepdim, argmax/max/min, comparisons,
elementwise math, cat/stack, shape ops, dtype/device conversion, creation functions, 0-d tensors.

Values and gradients are checked against PyTorch where it is installed (float64, 1e-12) and with
fastbp.gradcheck (central differences, float64) everywhere."""
import pickle
import warnings

import numpy as np
import pytest

import fastbp
from fastbp import gradcheck, nn
from fastbp import nn as fnn
from fastbp.nn import functional as F


def _torch():
    return pytest.importorskip("torch")


def T(a, requires_grad=False):
    return fastbp.tensor(np.array(a, dtype=np.float64), requires_grad=requires_grad)


def _randn(rng, *shape):
    return rng.standard_normal(shape)


def _value_and_grads(fn, arrays, lib, proj):
    """fn applied to leaves made from `arrays` by `lib` (fastbp or torch); returns (output, grads) of
    sum(proj * output)."""
    if lib is fastbp:
        leaves = [fastbp.tensor(a.copy(), requires_grad=True) for a in arrays]
    else:
        leaves = [lib.tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*leaves)
    (out * (fastbp.tensor(proj) if lib is fastbp else lib.tensor(proj))).sum().backward()
    if lib is fastbp:
        return out.data, [leaf.grad for leaf in leaves]
    return out.detach().numpy(), [leaf.grad.numpy() if leaf.grad is not None else None for leaf in leaves]


# (id, fastbp fn, torch fn, input shapes, input transform) -- the same expression in both libraries
def _pos(a):
    return np.abs(a) + 0.5


_IDX = np.array([[0, 0, 4], [2, 1, 2]])  # repeated indices: their gradients add up
_LO = np.linspace(-1.0, 0.5, 5)  # constant clamp bounds, one per column

UNARY_BINARY = [
    ("sqrt", lambda x: x.sqrt(), lambda x: x.sqrt(), [(3, 4)], _pos),
    ("exp", lambda x: x.exp(), lambda x: x.exp(), [(3, 4)], None),
    ("log", lambda x: x.log(), lambda x: x.log(), [(3, 4)], _pos),
    ("abs", lambda x: x.abs(), lambda x: x.abs(), [(3, 4)], None),
    ("abs_op", lambda x: abs(x), lambda x: abs(x), [(5,)], None),
    ("neg", lambda x: x.neg(), lambda x: x.neg(), [(3, 4)], None),
    ("pow_scalar", lambda x: x.pow(3), lambda x: x.pow(3), [(3, 4)], None),
    ("pow_frac", lambda x: x ** 1.5, lambda x: x ** 1.5, [(3, 4)], _pos),
    ("square", lambda x: x.square(), lambda x: x.square(), [(2, 3)], None),
    ("pow_tensor", lambda x, y: x ** y, lambda x, y: x ** y, [(3, 4), (4,)], _pos),
    ("rpow", lambda x: 2.0 ** x, lambda x: 2.0 ** x, [(3, 4)], None),
    ("maximum", lambda x, y: x.maximum(y), lambda x, y: x.maximum(y), [(3, 4), (3, 1)], None),
    ("minimum", lambda x, y: fastbp.minimum(x, y), lambda x, y: x.minimum(y), [(3, 4), (4,)], None),
    ("max_binary", lambda x, y: fastbp.max(x, y), lambda x, y: x.max(y), [(3, 4), (3, 4)], None),
    ("clamp", lambda x: x.clamp(-0.5, 0.7), lambda x: x.clamp(-0.5, 0.7), [(4, 5)], None),
    ("clamp_min", lambda x: x.clamp_min(0.1), lambda x: x.clamp_min(0.1), [(4, 5)], None),
    ("clamp_max", lambda x: fastbp.clamp(x, max=0.1), lambda x: x.clamp(max=0.1), [(4, 5)], None),
    ("clamp_tensor_bounds", lambda x: x.clamp(fastbp.tensor(_LO), fastbp.tensor(_LO + 0.5)),
     lambda x: x.clamp(_torch().tensor(_LO), _torch().tensor(_LO + 0.5)), [(4, 5)], None),
    ("cat_one", lambda x: fastbp.cat([x]) * 2, lambda x: _torch().cat([x]) * 2, [(2, 3)], None),
    ("where", lambda x, y: fastbp.where(x > y, x, y * 2), lambda x, y: x.where(x > y, y * 2), [(3, 4), (4,)], None),
    ("tensor_where", lambda x, y: x.where(y > 0, y), lambda x, y: x.where(y > 0, y), [(3, 4), (3, 4)], None),
    ("sum_dim", lambda x: x.sum(dim=1), lambda x: x.sum(dim=1), [(3, 4, 2)], None),
    ("sum_dims_keep", lambda x: x.sum(dim=(0, 2), keepdim=True), lambda x: x.sum(dim=(0, 2), keepdim=True),
     [(3, 4, 2)], None),
    ("sum_neg_dim", lambda x: x.sum(-1), lambda x: x.sum(-1), [(3, 4)], None),
    ("mean_dim", lambda x: x.mean(dim=0), lambda x: x.mean(dim=0), [(3, 4)], None),
    ("mean_list_dim", lambda x: x.mean([1, -1], keepdim=True), lambda x: x.mean([1, -1], keepdim=True),
     [(2, 3, 4)], None),
    ("max_all", lambda x: x.max(), lambda x: x.max(), [(3, 4)], None),
    ("min_all", lambda x: x.min(), lambda x: x.min(), [(3, 4)], None),
    ("max_dim", lambda x: x.max(dim=1).values, lambda x: x.max(dim=1).values, [(3, 5)], None),
    ("max_dim_keep", lambda x: x.max(0, keepdim=True)[0], lambda x: x.max(0, keepdim=True)[0], [(3, 5)], None),
    ("min_dim", lambda x: x.min(dim=-1).values, lambda x: x.min(dim=-1).values, [(2, 3, 4)], None),
    ("amax", lambda x: x.amax(dim=1), lambda x: x.amax(dim=1), [(3, 5)], None),
    ("cat", lambda x, y: fastbp.cat([x, y], dim=1), lambda x, y: _torch().cat([x, y], dim=1), [(2, 3), (2, 4)],
     None),
    ("cat_neg", lambda x, y: fastbp.cat((x, y, x), -1), lambda x, y: _torch().cat((x, y, x), -1),
     [(2, 3), (2, 1)], None),
    ("stack", lambda x, y: fastbp.stack([x, y], dim=1), lambda x, y: _torch().stack([x, y], dim=1),
     [(2, 3), (2, 3)], None),
    ("stack_last", lambda x, y: fastbp.stack([x, y, x], -1), lambda x, y: _torch().stack([x, y, x], -1),
     [(2, 3), (2, 3)], None),
    ("unsqueeze", lambda x: x.unsqueeze(1) * x.unsqueeze(-1), lambda x: x.unsqueeze(1) * x.unsqueeze(-1),
     [(2, 3)], None),
    ("squeeze", lambda x: x.squeeze(), lambda x: x.squeeze(), [(2, 1, 3, 1)], None),
    ("squeeze_dim", lambda x: x.squeeze(1), lambda x: x.squeeze(1), [(2, 1, 3, 1)], None),
    ("flatten", lambda x: x.flatten(1), lambda x: x.flatten(1), [(2, 3, 4)], None),
    ("flatten_mid", lambda x: fastbp.flatten(x, 1, 2), lambda x: x.flatten(1, 2), [(2, 3, 4, 5)], None),
    ("permute", lambda x: x.permute(2, 0, 1), lambda x: x.permute(2, 0, 1), [(2, 3, 4)], None),
    ("transpose3d", lambda x: x.transpose(0, 2), lambda x: x.transpose(0, 2), [(2, 3, 4)], None),
    ("transpose_neg", lambda x: x.transpose(-1, -2), lambda x: x.transpose(-1, -2), [(2, 3, 4)], None),
    ("t", lambda x: x.t(), lambda x: x.t(), [(2, 3)], None),
    ("view", lambda x: x.view(x.size(0), -1), lambda x: x.view(x.size(0), -1), [(2, 3, 4)], None),
    ("expand", lambda x: x.expand(4, -1, 3), lambda x: x.expand(4, -1, 3), [(2, 1)], None),
    ("expand_as", lambda x, y: x.expand_as(y) * y, lambda x, y: x.expand_as(y) * y, [(3, 1), (3, 4)], None),
    ("clone", lambda x: x.clone() * x, lambda x: x.clone() * x, [(3, 4)], None),
    ("contiguous", lambda x: x.t().contiguous(), lambda x: x.t().contiguous(), [(3, 4)], None),
    ("softmax_dim0", lambda x: F.softmax(x, dim=0), lambda x: _torch().nn.functional.softmax(x, dim=0),
     [(3, 4)], None),
    ("log_softmax_dim1", lambda x: F.log_softmax(x, dim=1), lambda x: _torch().nn.functional.log_softmax(x, dim=1),
     [(2, 3, 4)], None),
    ("softmax_method", lambda x: x.softmax(-1), lambda x: x.softmax(-1), [(3, 4)], None),
    ("nn_softmax", lambda x: nn.Softmax(dim=1)(x), lambda x: _torch().nn.Softmax(dim=1)(x), [(3, 4, 2)], None),
    ("nn_log_softmax", lambda x: nn.LogSoftmax(dim=0)(x), lambda x: _torch().nn.LogSoftmax(dim=0)(x),
     [(3, 4)], None),
    ("sign", lambda x: x.sign() * x, lambda x: x.sign() * x, [(3, 4)], None),
    ("var", lambda x: x.var(), lambda x: x.var(), [(3, 4)], None),
    ("var_dim", lambda x: x.var(1, keepdim=True), lambda x: x.var(1, keepdim=True), [(3, 4)], None),
    ("var_biased", lambda x: x.var(dim=(0, 2), unbiased=False), lambda x: x.var(dim=(0, 2), unbiased=False),
     [(2, 3, 4)], None),
    ("std", lambda x: x.std(0), lambda x: x.std(0), [(5, 3)], None),
    ("std_correction", lambda x: x.std(-1, correction=0), lambda x: x.std(-1, correction=0), [(5, 3)], None),
    ("repeat", lambda x: x.repeat(2, 1, 3), lambda x: x.repeat(2, 1, 3), [(3, 2)], None),
    ("split", lambda x: x.split(2, dim=1)[1] * x.split(2, dim=1)[0], lambda x: x.split(2, dim=1)[1] *
     x.split(2, dim=1)[0], [(3, 4)], None),
    ("split_sections", lambda x: x.split([1, 3], 1)[1], lambda x: x.split([1, 3], 1)[1], [(3, 4)], None),
    ("chunk", lambda x: x.chunk(3, 0)[-1], lambda x: x.chunk(3, 0)[-1], [(5, 2)], None),
    ("sort", lambda x: x.sort(dim=1).values, lambda x: x.sort(dim=1).values, [(3, 5)], None),
    ("sort_desc", lambda x: x.sort(0, descending=True)[0], lambda x: x.sort(0, descending=True)[0], [(4, 3)], None),
    ("topk", lambda x: x.topk(2).values, lambda x: x.topk(2).values, [(3, 5)], None),
    ("topk_smallest", lambda x: x.topk(3, dim=0, largest=False)[0], lambda x: x.topk(3, dim=0, largest=False)[0],
     [(4, 3)], None),
    ("gather", lambda x: x.gather(1, fastbp.tensor(_IDX)), lambda x: x.gather(1, _torch().tensor(_IDX)), [(3, 5)],
     None),
    ("masked_fill", lambda x: x.masked_fill(x > 0.2, 0.5), lambda x: x.masked_fill(x > 0.2, 0.5), [(3, 4)], None),
]


def _inputs(case, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [_randn(rng, *s) for s in case[3]]
    if case[4] is not None:
        arrays = [case[4](a) for a in arrays]
    return arrays


@pytest.mark.parametrize("case", UNARY_BINARY, ids=[c[0] for c in UNARY_BINARY])
def test_ops_gradcheck_float64(case):
    arrays = _inputs(case)
    assert gradcheck(case[1], [fastbp.tensor(a, requires_grad=True) for a in arrays])


@pytest.mark.parametrize("case", UNARY_BINARY, ids=[c[0] for c in UNARY_BINARY])
def test_ops_match_torch(case):
    torch = _torch()
    arrays = _inputs(case, seed=1)
    shape = tuple(case[2](*[torch.tensor(a) for a in arrays]).shape)
    proj = np.random.default_rng(2).standard_normal(shape)
    out_t, grads_t = _value_and_grads(case[2], arrays, torch, proj)
    out_f, grads_f = _value_and_grads(case[1], arrays, fastbp, proj)
    assert out_f.shape == out_t.shape
    np.testing.assert_allclose(out_f, out_t, rtol=1e-12, atol=1e-12)
    for gf, gt in zip(grads_f, grads_t):
        assert type(gf) is np.ndarray and gf.dtype == np.float64
        np.testing.assert_allclose(gf, gt, rtol=1e-12, atol=1e-12)


def test_ties_and_boundaries_follow_torch():
    """Gradients at the points where PyTorch picks a rule: clamp at its bounds (1), max/min over all with ties
    (shared evenly), max(dim) with ties (the returned, first index), maximum/minimum ties (half each), NaN."""
    torch = _torch()
    nan = float("nan")
    cases = [
        (lambda x: x.clamp(1.0, 2.0), [[0.0, 1.0, 1.5, 2.0, 3.0, nan]]),
        (lambda x: x.clamp(min=1.0), [[1.0, 0.5, 2.0]]),
        (lambda x: x.clamp(max=1.0), [[1.0, 0.5, 2.0]]),
        (lambda x: x.clamp(2.0, 1.0), [[0.0, 1.5, 3.0]]),  # min > max: every value becomes max, as torch
        (lambda x: x.max(), [[1.0, 3.0, 3.0, 2.0]]),
        (lambda x: x.min(), [[[1.0, 0.0], [0.0, 2.0]]]),
        (lambda x: x.max(), [[1.0, nan, 3.0, nan]]),
        (lambda x: x.max(dim=1).values, [[[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]]]),
        (lambda x: x.min(dim=0).values, [[[1.0, 3.0], [1.0, 2.0]]]),
        (lambda x: x.max(dim=0).values, [[[1.0, nan], [2.0, 0.0]]]),
        (lambda x, y: x.maximum(y), [[1.0, 2.0, nan, 4.0], [1.0, 3.0, 0.0, nan]]),
        (lambda x, y: x.minimum(y), [[1.0, 2.0, nan, 4.0], [1.0, 3.0, 0.0, nan]]),
        (lambda x: x.abs(), [[0.0, -1.0, 2.0]]),
        (lambda x: x.sqrt(), [[0.0, 4.0]]),
        (lambda x: x.pow(0), [[0.0, 2.0]]),
        (lambda x: x.pow(2.0), [[0.0, -2.0]]),
    ]
    for fn, data in cases:
        arrays = [np.array(d, dtype=np.float64) for d in data]
        shape = tuple(fn(*[torch.tensor(a) for a in arrays]).shape)
        proj = np.arange(1.0, 1.0 + int(np.prod(shape))).reshape(shape)
        out_t, grads_t = _value_and_grads(fn, arrays, torch, proj)
        out_f, grads_f = _value_and_grads(fn, arrays, fastbp, proj)
        np.testing.assert_allclose(out_f, out_t, rtol=1e-15, equal_nan=True)
        for gf, gt in zip(grads_f, grads_t):
            np.testing.assert_allclose(gf, gt, rtol=1e-15, equal_nan=True, err_msg=str(data))


def test_pow_tensor_exponent_at_zero_base_follows_torch():
    torch = _torch()
    fn = lambda x, y: x ** y  # noqa: E731
    arrays = [np.array([0.0, 0.0, 2.0, 3.0]), np.array([0.0, 2.0, 0.5, -1.0])]
    out_t, grads_t = _value_and_grads(fn, arrays, torch, np.ones(4))
    out_f, grads_f = _value_and_grads(fn, arrays, fastbp, np.ones(4))
    np.testing.assert_allclose(out_f, out_t)
    for gf, gt in zip(grads_f, grads_t):
        np.testing.assert_allclose(gf, gt, rtol=1e-15)


# ----- dim / keepdim ------------------------------------------------------------------------------------
def test_reductions_take_dim_keepdim_and_numpy_aliases():
    x = T(np.arange(24.0).reshape(2, 3, 4))
    a = x.data
    np.testing.assert_array_equal(x.sum(dim=1).data, a.sum(axis=1))
    np.testing.assert_array_equal(x.sum(1, True).data, a.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(x.sum(axis=1, keepdims=True).data, a.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(x.mean(dim=(0, 2)).data, a.mean(axis=(0, 2)))
    np.testing.assert_array_equal(x.mean(dim=[0, -1], keepdim=True).data, a.mean(axis=(0, 2), keepdims=True))
    np.testing.assert_array_equal(fastbp.sum(x, dim=2).data, a.sum(axis=2))
    np.testing.assert_array_equal(fastbp.mean(x).data, a.mean())
    with pytest.raises(TypeError, match="dim or its alias axis"):
        x.sum(dim=1, axis=1)
    with pytest.raises(IndexError, match="out of range"):
        x.sum(dim=3)
    with pytest.raises(ValueError, match="more than once"):
        x.sum(dim=(1, -2))
    # a 0-d tensor takes dim 0 / -1, as PyTorch
    assert x.sum().sum(0).item() == a.sum()
    assert T(2.5).mean(dim=-1).item() == 2.5
    # integer and bool sums stay integer (accuracy counting)
    assert fastbp.tensor([[1, 2], [3, 4]]).sum(1).dtype == np.int64
    assert fastbp.tensor([True, False, True]).sum().item() == 2
    with pytest.raises(TypeError, match="floating point"):
        fastbp.tensor([1, 2]).mean()
    assert fastbp.tensor([1, 2]).mean(dtype=fastbp.float64).item() == 1.5


def test_argmax_argmin_are_int64_with_dim_and_keepdim():
    torch = pytest.importorskip("torch")
    a = np.array([[1.0, 5.0, 5.0], [7.0, 0.0, np.nan], [2.0, 2.0, -1.0]])
    x, t = T(a), torch.tensor(a)
    for fn in ("argmax", "argmin"):
        for kw in ({}, {"dim": 0}, {"dim": 1}, {"dim": -1, "keepdim": True}, {"dim": None, "keepdim": True}):
            got, want = getattr(x, fn)(**kw), getattr(t, fn)(**kw)
            assert got.dtype == np.int64, (fn, kw)
            assert got.shape == tuple(want.shape), (fn, kw)
            np.testing.assert_array_equal(got.data, want.numpy(), err_msg=f"{fn} {kw}")
    assert T(3.0).argmax(0).item() == 0
    with pytest.raises(ValueError, match="empty"):
        fastbp.zeros(0).argmax()


def test_max_min_return_values_and_indices():
    x = T([[1.0, 3.0, 3.0], [4.0, 2.0, 0.0]], requires_grad=True)
    out = x.max(dim=1)
    assert isinstance(out, fastbp.return_types.max) and isinstance(out, tuple)
    values, indices = out
    np.testing.assert_array_equal(values.data, [3.0, 4.0])
    np.testing.assert_array_equal(indices.data, [1, 0])
    assert indices.dtype == np.int64 and not indices.requires_grad and values.requires_grad
    assert out.values is values and out.indices is indices
    mn = fastbp.min(x, 0, keepdim=True)
    assert mn.values.shape == (1, 3) and mn.indices.shape == (1, 3)
    np.testing.assert_array_equal(mn.indices.data, [[0, 1, 1]])
    assert x.max().shape == () and x.max().item() == 4.0
    # PyTorch's idiom: `_, predicted = torch.max(outputs.data, 1)` (here .data is the ndarray)
    _, predicted = fastbp.max(x.data, 1)
    np.testing.assert_array_equal(predicted.data, [1, 0])
    v, i = T(2.0).max(0)
    assert v.item() == 2.0 and i.item() == 0 and i.dtype == np.int64
    with pytest.raises(RuntimeError, match="no elements"):
        fastbp.zeros(0).max()


# ----- comparisons ----------------------------------------------------------------------------------------
def test_comparisons_are_elementwise_bool_tensors():
    x = T([1.0, 2.0, 3.0])
    y = T([1.0, 0.0, 4.0])
    for op, want in [(x == y, [1, 0, 0]), (x != y, [0, 1, 1]), (x < y, [0, 0, 1]), (x <= y, [1, 0, 1]),
                     (x > y, [0, 1, 0]), (x >= y, [1, 1, 0]), (x > 1.5, [0, 1, 1]), (2.0 <= x, [0, 1, 1]),
                     (x.eq(y), [1, 0, 0]), (x.ne(y), [0, 1, 1]), (x.lt(3), [1, 1, 0]), (x.le(y), [1, 0, 1]),
                     (x.gt(y), [0, 1, 0]), (x.ge(2), [0, 1, 1]), (np.array([1.0, 5.0, 3.0]) == x, [1, 0, 1]),
                     (fastbp.eq(x, y), [1, 0, 0])]:
        assert isinstance(op, fastbp.Tensor) and op.dtype == np.bool_
        assert not op.requires_grad
        np.testing.assert_array_equal(op.data, np.array(want, dtype=bool))
    # identity hashing, as torch.Tensor: usable in sets and as dict keys although == is elementwise
    assert len({x, y, x}) == 2
    assert {x: 1}[x] == 1
    assert (x == None) is False and (x != None) is True  # noqa: E711
    assert x.equal(T([1.0, 2.0, 3.0])) and not x.equal(y) and fastbp.equal(x, x)
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(x == y)
    assert bool(T(1.0) > 0) and not bool(T([0.0]))
    m = (x > 1) & (x < 3) | (x == 1)
    np.testing.assert_array_equal(m.data, [True, True, False])
    np.testing.assert_array_equal((~m).data, [False, False, True])
    assert (x > 1).any().item() and not (x > 5).any().item() and (x > 0).all().item()
    rows, = fastbp.where(x > 1.5)
    assert rows.dtype == np.int64 and rows.tolist() == [1, 2]
    assert fastbp.is_tensor(x) and not fastbp.is_tensor(x.data) and fastbp.allclose(x, x.data + 1e-9)
    assert np.asarray(x, dtype=np.float32).dtype == np.float32 and np.asarray(x, dtype=np.float64) is x.data
    with pytest.raises(ValueError, match="copy"):
        np.asarray(x, dtype=np.float32, copy=False)


# ----- shapes -------------------------------------------------------------------------------------------
def test_size_numel_dim_and_shape_ops_match_torch():
    torch = _torch()
    a = np.arange(24.0).reshape(2, 3, 4)
    x, t = T(a), torch.tensor(a)
    assert x.size() == tuple(t.size()) == x.shape
    assert x.size(0) == 2 and x.size(-1) == 4 and isinstance(x.size(1), int)
    assert x.numel() == 24 and x.dim() == 3 and x.ndim == 3 and fastbp.numel(x) == 24
    checks = [
        lambda m: m.unsqueeze(0), lambda m: m.unsqueeze(-1), lambda m: m.unsqueeze(2), lambda m: m.flatten(),
        lambda m: m.flatten(0, 1), lambda m: m.flatten(-2), lambda m: m.permute(1, 2, 0),
        lambda m: m.permute((2, 1, 0)), lambda m: m.transpose(1, 2), lambda m: m.transpose(0, -1),
        lambda m: m.view(4, -1), lambda m: m.view((6, 4)), lambda m: m.reshape(-1), lambda m: m.view(2, 12),
        lambda m: m[:, :1].squeeze(1), lambda m: m[:1].squeeze(), lambda m: m.squeeze(0),
        lambda m: m[:1, :, :1].squeeze((0, 2)), lambda m: m[:, :1].expand(2, 5, 4), lambda m: m.swapaxes(0, 1),
        lambda m: m.expand(3, 2, 3, 4), lambda m: m.unflatten(2, (2, 2)), lambda m: m.sum(0).t(),
    ]
    for k, fn in enumerate(checks):
        got, want = fn(x), fn(t)
        assert got.shape == tuple(want.shape), k
        np.testing.assert_array_equal(got.data, want.numpy(), err_msg=str(k))
    v = T(np.zeros((4, 6)))
    assert x.view_as(v).shape == (4, 6) and x.reshape_as(v).shape == (4, 6)
    assert T(5.0).flatten().shape == (1,) and T(5.0).unsqueeze(0).shape == (1,)


def test_shape_errors_name_the_shapes():
    x = T(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(4, -1\).*\(2, 3\)"):
        x.view(4, -1)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 3\)"):
        x.expand(4, 3)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        x.expand(3)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        fastbp.cat([x, T(np.zeros((2, 4)))])
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3,\)"):
        fastbp.cat([x, T(np.zeros(3))])
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        fastbp.stack([x, T(np.zeros((2, 4)))])
    with pytest.raises(ValueError, match="not a permutation"):
        x.permute(0, 0)
    with pytest.raises(ValueError, match=r"permute.*\(2, 3\)"):
        x.permute(0, 1, 2)
    with pytest.raises(IndexError, match="out of range"):
        x.transpose(0, 2)
    with pytest.raises(IndexError, match="out of range"):
        x.unsqueeze(3)
    with pytest.raises(ValueError, match="non-empty"):
        fastbp.cat([])
    with pytest.raises(TypeError, match="sequence"):
        fastbp.stack(x)
    with pytest.raises(ValueError, match="start_dim"):
        T(np.zeros((2, 3, 4))).flatten(2, 1)
    with pytest.raises(ValueError, match="<= 2 dims"):
        T(np.zeros((2, 3, 4))).t()


def test_expand_gradient_sums_and_cat_stack_grads_keep_dtypes():
    x = fastbp.tensor(np.array([[1.0], [2.0]]), requires_grad=True)
    y = x.expand(3, 2, 4)
    assert y.shape == (3, 2, 4) and np.shares_memory(y.data, x.data)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [[12.0], [12.0]])
    a = fastbp.tensor(np.ones((2, 2), np.float32), requires_grad=True)
    b = fastbp.tensor(np.ones((1, 2), np.float64), requires_grad=True)
    c = fastbp.cat([a, b])
    assert c.dtype == np.float64  # promoted, as torch.cat
    (c * 3).sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_array_equal(a.grad, np.full((2, 2), 3.0))
    s = fastbp.stack([a, a], dim=2)
    a.grad = None
    s.sum().backward()
    np.testing.assert_array_equal(a.grad, np.full((2, 2), 2.0))


# ----- graph bookkeeping, conversion ---------------------------------------------------------------------
def test_clone_contiguous_detach_item_tolist_numpy():
    x = fastbp.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    c = x.clone()
    assert c.requires_grad and not np.shares_memory(c.data, x.data)
    (c * 2).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full((2, 3), 2.0))
    assert x.contiguous() is x
    xt = x.t()
    assert not xt.is_contiguous() and xt.contiguous().is_contiguous()
    d = x.detach()
    assert not d.requires_grad and d.is_leaf and np.shares_memory(d.data, x.data)
    assert x.sum().item() == 15.0 and isinstance(x.sum().item(), float)
    assert x.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert x.numpy() is x.data and np.asarray(x) is x.data
    assert np.array(x, copy=True) is not x.data
    assert float(T(2.5)) == 2.5 and int(fastbp.tensor(3)) == 3 and [10, 20, 30][fastbp.tensor(1)] == 20
    y = fastbp.zeros(3)
    assert y.requires_grad_() is y and y.requires_grad
    with pytest.raises(TypeError, match="floating"):
        fastbp.tensor([1, 2]).requires_grad_()
    assert x.grad_fn is None and c.grad_fn is not None


def test_to_cpu_device_and_dtypes():
    x = fastbp.tensor(np.arange(3.0, dtype=np.float32), requires_grad=True)
    assert x.to("cpu") is x and x.cpu() is x and x.to(fastbp.device("cpu")) is x and x.to(x.device) is x
    assert x.device == fastbp.device("cpu") == "cpu" and str(x.device) == "cpu" and not x.is_cuda
    assert x.to(fastbp.float32) is x and x.float() is x
    d = x.to(fastbp.float64)
    assert d.dtype == np.float64 and d.requires_grad
    d.sum().backward()
    assert x.grad.dtype == np.float32  # the cast stays in the graph
    for arg in [np.float64, "float64", np.dtype("float64"), fastbp.double, fastbp.float64]:
        assert x.to(arg).dtype == np.float64
        assert x.to("cpu", arg).dtype == np.float64
    assert x.to(dtype=fastbp.float64, device="cpu").dtype == np.float64
    assert x.to(T([1.0])).dtype == np.float64 and x.type_as(T([1.0])).dtype == np.float64
    assert x.double().dtype == np.float64 and x.long().dtype == np.int64 and not x.long().requires_grad
    assert x.int().dtype == np.int32 and x.bool().dtype == np.bool_
    cp = x.to("cpu", copy=True)
    assert cp is not x and not np.shares_memory(cp.data, x.data) and cp.requires_grad
    for bad in ["cuda", "cuda:0", "mps", "cpu:1"]:
        with pytest.raises(ValueError, match="CPU library"):
            x.to(bad)
    with pytest.raises(ValueError, match="CPU library"):
        x.to(0)
    with pytest.raises(ValueError, match="CPU library"):
        x.cuda()
    with pytest.raises(ValueError, match="CPU library"):
        fastbp.device("cuda")
    with pytest.raises(ValueError, match="CPU library"):
        fastbp.zeros(3, device="cuda")
    assert pickle.loads(pickle.dumps(fastbp.device("cpu"))) == "cpu"
    # fastbp's dtypes are NumPy dtypes: usable with NumPy and compared by identity like torch dtypes
    assert np.zeros(2, dtype=fastbp.float32).dtype == np.float32
    assert fastbp.zeros(2).dtype is fastbp.float32 and fastbp.float is fastbp.float32
    assert fastbp.long is fastbp.int64 and fastbp.tensor([1]).dtype == fastbp.int64 and fastbp.bool == np.bool_
    # nn layers and set_default_dtype accept them too
    assert nn.Linear(2, 3, dtype=fastbp.float64).weight.dtype == np.float64


def test_in_place_methods_change_data_only_where_safe():
    x = fastbp.zeros(4)
    x[x == 0] = 2.0
    x[fastbp.tensor([0])] = 7.0
    assert x.add_(fastbp.ones(4), alpha=3) is x
    np.testing.assert_array_equal(x.data, [10.0, 5.0, 5.0, 5.0])
    x.sub_(1).mul_(2).div_(4).clamp_(max=4.0)
    np.testing.assert_array_equal(x.data, [4.0, 2.0, 2.0, 2.0])
    x.copy_(np.arange(4.0))
    np.testing.assert_array_equal(x.zero_().fill_(3).data, [3.0] * 4)
    p = fastbp.zeros(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="in-place"):
        p.fill_(1.0)
    with pytest.raises(RuntimeError, match="in-place"):
        p[0] = 1.0
    with fastbp.no_grad():
        fastbp.manual_seed(5)
        p.uniform_(-1, 1)
        a = p.data.copy()
        p.normal_(0, 2)
    fastbp.manual_seed(5)
    np.testing.assert_array_equal(a, np.random.default_rng(5).uniform(-1, 1, (2, 3)).astype(np.float32))
    assert np.all(np.abs(a) <= 1)
    q = p * 2  # a non-leaf: its data may be saved by the graph, so it stays unchanged even under no_grad
    with pytest.raises(RuntimeError, match="in-place"), fastbp.no_grad():
        q.add_(1)
    with pytest.raises(ValueError, match="read-only"):
        fastbp.ones(2, 1).expand(2, 3).zero_()
    assert [t.item() for t in fastbp.arange(3)] == [0, 1, 2]
    with pytest.raises(TypeError, match="0-d"):
        iter(fastbp.tensor(1.0))


def test_sort_topk_indices_and_imagenet_accuracy_snippet():
    torch = _torch()
    rng = np.random.default_rng(4)
    a = rng.standard_normal((5, 7))
    a[1, 2], a[3, :4], a[4, 0] = np.nan, 1.0, np.inf
    x, t = T(a), torch.tensor(a)
    for kw in ({}, {"dim": 0}, {"descending": True}, {"dim": 0, "descending": True}):
        v, i = x.sort(**kw)
        tv, ti = t.sort(stable=True, **kw)
        np.testing.assert_array_equal(v.data, tv.numpy())
        np.testing.assert_array_equal(i.data, ti.numpy())
        np.testing.assert_array_equal(x.argsort(**kw).data, ti.numpy())
        assert i.dtype == np.int64
    for k in (1, 3, 7):
        np.testing.assert_array_equal(x.topk(k, 1).values.data, t.topk(k, 1).values.numpy())
    with pytest.raises(ValueError, match="out of range"):
        x.topk(8)
    with pytest.raises(IndexError, match=r"\[0, 7\)"):
        x.gather(1, fastbp.tensor([[7]]))
    with pytest.raises(ValueError, match="dims"):
        x.gather(1, fastbp.tensor([1]))

    # pytorch/examples imagenet's accuracy(), written as there
    def accuracy(output, target, topk=(1,)):
        with fastbp.no_grad():
            maxk = max(topk)
            batch_size = target.size(0)
            _, pred = output.topk(maxk, 1, True, True)
            pred = pred.t()
            correct = pred.eq(target.view(1, -1).expand_as(pred))
            res = []
            for k in topk:
                correct_k = correct[:k].reshape(-1).float().sum(0, keepdim=True)
                res.append(correct_k.mul_(100.0 / batch_size))
            return res

    out = rng.standard_normal((16, 10))
    target = rng.integers(0, 10, 16)
    got = accuracy(fastbp.tensor(out), fastbp.tensor(target), topk=(1, 5))
    order = np.argsort(-out, axis=1)
    for k, acc in zip((1, 5), got):
        assert acc.shape == (1,)
        assert acc.item() == pytest.approx(100.0 * np.mean([target[n] in order[n, :k] for n in range(16)]))


def test_grad_mode_switches():
    x = fastbp.ones(2, requires_grad=True)
    with fastbp.set_grad_enabled(False):
        assert not (x * 2).requires_grad
        with fastbp.enable_grad():
            assert (x * 2).requires_grad
    assert fastbp.is_grad_enabled()
    fastbp.set_grad_enabled(False)
    try:
        assert not fastbp.is_grad_enabled()
    finally:
        fastbp.set_grad_enabled(True)
    with fastbp.inference_mode():
        assert not (x * 2).requires_grad
    with fastbp.inference_mode(False):
        assert (x * 2).requires_grad

    @fastbp.set_grad_enabled(False)
    def f(t):
        return t * 2
    assert fastbp.is_grad_enabled() and not f(x).requires_grad


def test_split_chunk_repeat_errors():
    x = T(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"sum to 4.*\(2, 5\)"):
        x.split([1, 3], dim=1)
    with pytest.raises(ValueError, match="> 0"):
        x.chunk(0)
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        x.repeat(2)
    assert [p.shape for p in x.chunk(2, dim=1)] == [(2, 3), (2, 2)]


def test_backward_gradient_and_retain_graph_keywords():
    x = fastbp.tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x * x
    y.backward(gradient=np.array([1.0, 10.0]), retain_graph=True)
    np.testing.assert_array_equal(x.grad, [2.0, 40.0])
    y.backward(gradient=fastbp.tensor([1.0, 1.0]))
    np.testing.assert_array_equal(x.grad, [4.0, 44.0])
    with pytest.raises(RuntimeError, match="second time"):
        y.backward(gradient=np.ones(2))
    with pytest.raises(NotImplementedError, match="create_graph"):
        (x * x).sum().backward(create_graph=True)


# ----- creation ------------------------------------------------------------------------------------------
def test_creation_functions_shapes_dtypes_and_requires_grad():
    torch = pytest.importorskip("torch")
    for name in ("zeros", "ones", "empty", "rand", "randn"):
        f = getattr(fastbp, name)
        for args in [(2, 3), ((2, 3),), ([2, 3],)]:
            t = f(*args)
            assert t.shape == (2, 3) and t.dtype == np.float32, (name, args)
        assert f(4, dtype=fastbp.float64).dtype == np.float64
        t = f(2, requires_grad=True)
        assert t.requires_grad and t.is_leaf
        assert f(()).shape == () and f(0).shape == (0,)
    np.testing.assert_array_equal(fastbp.zeros(2, 2).data, 0)
    np.testing.assert_array_equal(fastbp.ones(3).data, 1)
    with pytest.raises(ValueError, match=">= 0"):
        fastbp.zeros(-1)
    # full: dtype from the fill value, as torch
    for fill in (3, 2.5, True):
        assert fastbp.full((2,), fill).dtype == np.dtype(torch.full((2,), fill).numpy().dtype)
    np.testing.assert_array_equal(fastbp.full((2, 2), 7.0, dtype=fastbp.float64).data, np.full((2, 2), 7.0))
    # arange / linspace / eye against torch
    for args in [(5,), (1, 7), (0, 10, 3), (0.0, 1.0, 0.25), (1, 2.5, 0.5), (5, 0, -2), (0, 1, 0.1)]:
        got, want = fastbp.arange(*args), torch.arange(*args)
        assert got.dtype == np.dtype(want.numpy().dtype), args
        np.testing.assert_allclose(got.data, want.numpy(), rtol=1e-6, err_msg=str(args))
    with pytest.raises(ValueError, match="step"):
        fastbp.arange(0, 5, 0)
    np.testing.assert_allclose(fastbp.linspace(-1, 2, 7).data, torch.linspace(-1, 2, 7).numpy())
    assert fastbp.linspace(0, 1, 5).dtype == np.float32
    np.testing.assert_array_equal(fastbp.eye(3).data, np.eye(3))
    assert fastbp.eye(2, 4, dtype=fastbp.float64).shape == (2, 4)
    # randint: (high, size) and (low, high, size), int64
    r = fastbp.randint(10, (100,))
    assert r.dtype == np.int64 and r.shape == (100,) and 0 <= r.data.min() and r.data.max() < 10
    assert fastbp.randint(4, size=(3,)).shape == (3,) and fastbp.randint(high=4, size=(2,)).data.max() < 4
    r = fastbp.randint(-3, 3, (4, 5))
    assert r.shape == (4, 5) and -3 <= r.data.min() and r.data.max() < 3
    with pytest.raises(ValueError, match="greater"):
        fastbp.randint(3, 3, (2,))
    assert sorted(fastbp.randperm(6).tolist()) == list(range(6))
    # *_like keep shape and dtype
    base = fastbp.tensor(np.zeros((2, 3), np.float64))
    for name in ("zeros_like", "ones_like", "empty_like", "rand_like", "randn_like"):
        t = getattr(fastbp, name)(base)
        assert t.shape == (2, 3) and t.dtype == np.float64, name
    assert fastbp.full_like(base, 4).data.max() == 4 and fastbp.zeros_like(base, dtype=fastbp.int64).dtype == np.int64
    assert fastbp.randint_like(base, 5).dtype == np.float64
    assert base.new_zeros(3).dtype == np.float64 and base.new_ones((2, 2)).shape == (2, 2)
    assert base.new_full((2,), 3.0).data.tolist() == [3.0, 3.0] and base.new_tensor([1]).dtype == np.float64


def test_random_draws_follow_manual_seed():
    fastbp.manual_seed(123)
    a = [fastbp.rand(3).data, fastbp.randn(2, 2).data, fastbp.randint(0, 100, (5,)).data]
    fastbp.manual_seed(123)
    b = [fastbp.rand(3).data, fastbp.randn(2, 2).data, fastbp.randint(0, 100, (5,)).data]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(fastbp.rand(3).data, a[0])
    u = fastbp.rand(10000, dtype=fastbp.float64).data
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02


def test_tensor_copies_from_numpy_shares_and_numpy_scalars_keep_dtype():
    a = np.arange(3.0)
    t = fastbp.tensor(a)
    a[0] = 100.0
    assert t.data[0] == 0.0  # tensor() copies, as torch.tensor
    s = fastbp.from_numpy(a)
    a[1] = 50.0
    assert s.data[1] == 50.0 and s.dtype == np.float64  # from_numpy shares memory and keeps the dtype
    s.data[2] = -1.0
    assert a[2] == -1.0
    assert fastbp.as_tensor(a).data is a
    with pytest.raises(TypeError):
        fastbp.from_numpy([1.0])
    assert fastbp.tensor(np.float64(1.0)).dtype == np.float64
    assert fastbp.tensor(np.float32(1.0)).dtype == np.float32
    assert fastbp.tensor(1.0).dtype == np.float32 and fastbp.tensor([1.0, 2.0]).dtype == np.float32
    assert fastbp.tensor(1).dtype == np.int64 and fastbp.tensor(True).dtype == np.bool_
    assert fastbp.tensor([1.0], dtype=fastbp.float64).dtype == np.float64
    old = fastbp.tensor(np.ones(2), requires_grad=True)
    new = fastbp.tensor(old)
    assert not new.requires_grad and not np.shares_memory(new.data, old.data)


# ----- 0-d tensors ---------------------------------------------------------------------------------------
ZERO_D_OPS = [
    lambda x: x * 3, lambda x: 3 * x, lambda x: x + 1, lambda x: 1 - x, lambda x: x / 2, lambda x: 2 / x,
    lambda x: -x, lambda x: x ** 2, lambda x: x.exp(), lambda x: x.log(), lambda x: x.abs(), lambda x: x.sqrt(),
    lambda x: x.sign() + x, lambda x: x.clamp(0, 1), lambda x: x.maximum(T(0.5)), lambda x: x.minimum(T(0.5)),
    lambda x: fastbp.where(x > 0, x, x * 2), lambda x: x.sum(), lambda x: x.mean(), lambda x: x.max(),
    lambda x: x.reshape(1).sum(), lambda x: x.relu(), lambda x: x.sigmoid(), lambda x: x.tanh(),
    lambda x: F.leaky_relu(x), lambda x: F.elu(x), lambda x: F.softmax(x, dim=0), lambda x: F.log_softmax(x, dim=-1),
    lambda x: x.double(), lambda x: x.clone(), lambda x: x.expand(2, 3).sum(), lambda x: x.unsqueeze(0) @ T(np.ones(1)),
    lambda x: F.mse_loss(x, T(0.25)), lambda x: x * T(2.0) + T(1.0),
]


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("k", range(len(ZERO_D_OPS)))
def test_zero_d_tensors_stay_ndarrays_through_ops_and_backward(k, backend):
    fn = ZERO_D_OPS[k]
    with fastbp.backend(backend):
        x = fastbp.tensor(np.float64(0.7), requires_grad=True)
        y = fn(x)
        assert type(y.data) is np.ndarray, type(y.data)
        z = (y * 3).relu().sigmoid()  # the chain that failed with "x must be a numpy.ndarray"
        assert type(z.data) is np.ndarray
        z.sum().backward()
        assert type(x.grad) is np.ndarray and x.grad.shape == ()
        assert gradcheck(fn, [fastbp.tensor(np.float64(0.7), requires_grad=True)])


def test_zero_d_arithmetic_then_activation():
    y = (fastbp.tensor(2.0) * 3).relu()
    assert y.item() == 6.0 and type(y.data) is np.ndarray
    w = fastbp.tensor(1.5, requires_grad=True)
    loss = F.sigmoid(w * fastbp.tensor(2.0) - 1.0)
    loss.backward()
    s = 1 / (1 + np.exp(-2.0))
    assert abs(w.grad - 2 * s * (1 - s)) < 1e-6 and type(w.grad) is np.ndarray


# ----- softmax dim ---------------------------------------------------------------------------------------
def test_softmax_without_dim_follows_torch_legacy_rule_and_warns():
    torch = _torch()
    rng = np.random.default_rng(3)
    for shape in [(5,), (3, 4), (2, 3, 4), (2, 3, 4, 5)]:
        a = rng.standard_normal(shape)
        with pytest.warns(UserWarning, match="Implicit dimension"):
            got = F.softmax(T(a))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = torch.nn.functional.softmax(torch.tensor(a)).numpy()
            want_log = torch.nn.LogSoftmax()(torch.tensor(a)).numpy()
        np.testing.assert_allclose(got.data, want, rtol=1e-12, atol=1e-15)
        with pytest.warns(UserWarning, match="Implicit dimension"):
            np.testing.assert_allclose(fnn.LogSoftmax()(T(a)).data, want_log, rtol=1e-12, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.softmax(T(np.ones((2, 3))), dim=1)
        F.log_softmax(T(np.ones((2, 3))), 1)
        F.softmax(T(np.ones((2, 3))), axis=0)
        nn.Softmax(1)(T(np.ones((2, 3))))
    assert nn.Softmax(axis=0).dim == 0 and "dim=1" in repr(nn.LogSoftmax(dim=1))
    with pytest.raises(TypeError, match="alias"):
        F.softmax(T(np.ones(2)), dim=0, axis=0)
    assert F.softmax(T(np.ones((2, 3)), requires_grad=False), dim=1, dtype=fastbp.float32).dtype == np.float32


# ----- a PyTorch-style script runs unchanged --------------------------------------------------------------
def test_pytorch_style_snippet_runs_unchanged():
    """Lines as written in PyTorch's MNIST example (with fastbp for torch)."""
    torch = fastbp  # the only change a PyTorch user makes
    import fastbp.nn as nn  # noqa: F811
    import fastbp.nn.functional as F  # noqa: F811

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, 1)
            self.fc1 = nn.Linear(4 * 13 * 13, 10)

        def forward(self, x):
            x = self.conv1(x)
            x = F.relu(x)
            x = F.max_pool2d(x, 2)
            x = torch.flatten(x, 1)
            x = self.fc1(x)
            output = F.log_softmax(x, dim=1)
            return output

    device = torch.device("cpu")
    torch.manual_seed(1)
    model = Net()
    data = torch.randn(8, 1, 28, 28).to(device)
    target = torch.randint(0, 10, (8,)).to(device)
    output = model(data)
    loss = F.nll_loss(output, target)
    loss.backward()
    test_loss = F.nll_loss(output, target, reduction="sum").item()
    pred = output.argmax(dim=1, keepdim=True)
    correct = pred.eq(target.view_as(pred)).sum().item()
    assert isinstance(correct, int) and 0 <= correct <= 8
    assert correct == int((output.data.argmax(1) == target.data).sum())
    assert isinstance(test_loss, float)
    x = output.view(output.size(0), -1)
    assert x.shape == (8, 10)
    probs = F.softmax(output, dim=1)
    np.testing.assert_allclose(probs.sum(dim=1).data, np.ones(8), rtol=1e-5)
    _, predicted = torch.max(output.data, 1)
    total, correct2 = target.size(0), (predicted == target).sum().item()
    assert total == 8 and correct2 == correct
    assert all(p.grad is not None for p in model.parameters())
