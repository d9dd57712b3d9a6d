"""BatchNorm and Dropout: module semantics (train/eval, momentum None, affine False, track_running_stats
False), the thread-count independence of the compiled kernels (above the OpenMP threshold), the dropout
mask's statistics and reproducibility, Identity and AdaptiveAvgPool2d, and bad input. The kernels against
their NumPy references are covered by tests/test_registry.py (entries in fastbp/registry/norm.py)."""
import numpy as np
import pytest

import fastbp
from fastbp import _backend, nn, tensor
import fastbp.nn.functional as F

C, R = _backend.compiled, _backend.reference


def _np_bn(x, w, b, eps, axes):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    shape = [1] * x.ndim
    shape[1] = -1
    return (x - mean) / np.sqrt(var + eps) * w.reshape(shape) + b.reshape(shape)


# ----- thread-count independence -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_kernels_bit_identical_on_1_and_2_threads(dtype):
    rng = np.random.default_rng(3)
    shape = (16, 12, 40, 40)  # 307200 elements > PARALLEL_MIN: the parallel branch runs on 2 threads
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(12).astype(dtype), rng.standard_normal(12).astype(dtype)
    mask = rng.random(shape) >= 0.3
    runs = []
    before = fastbp.get_num_threads()
    try:
        for n in (1, 2):
            fastbp.set_num_threads(n)
            rm, rv = np.zeros(12, dtype), np.ones(12, dtype)
            y, mean, invstd = C.batch_norm_forward(x, w, b, rm, rv, True, 0.1, 1e-5)
            grads = C.batch_norm_backward(g, x, w, mean, invstd, True)
            ye, _, _ = C.batch_norm_forward(x, w, b, rm, rv, False, 0.1, 1e-5)
            d = C.dropout_mask_scale(x, mask, 1 / 0.7)
            runs.append([y, mean, invstd, rm, rv, *grads, ye, d])
    finally:
        fastbp.set_num_threads(before)
    for k, (a, c) in enumerate(zip(*runs)):
        np.testing.assert_array_equal(a, c, err_msg=f"output {k} differs between 1 and 2 threads")


# ----- BatchNorm module semantics --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_batchnorm2d_train_and_eval(backend):
    fastbp.set_backend(backend)
    rng = np.random.default_rng(0)
    bn = nn.BatchNorm2d(3, eps=1e-3, momentum=0.2).double()
    bn.weight.data[...] = [1.0, 2.0, 0.5]
    bn.bias.data[...] = [0.0, -1.0, 3.0]
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(3):
        x = rng.standard_normal((4, 3, 5, 6)) * (step + 1) + step
        y = bn(tensor(x))
        np.testing.assert_allclose(y.data, _np_bn(x, bn.weight.data, bn.bias.data, 1e-3, (0, 2, 3)), rtol=1e-10,
                                   atol=1e-12)
        rm = 0.8 * rm + 0.2 * x.mean(axis=(0, 2, 3))
        rv = 0.8 * rv + 0.2 * x.var(axis=(0, 2, 3), ddof=1)  # unbiased, as PyTorch
    np.testing.assert_allclose(bn.running_mean.data, rm, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.data, rv, rtol=1e-12)
    assert bn.num_batches_tracked.data == 3 and bn.num_batches_tracked.data.dtype == np.int64
    bn.eval()
    x = rng.standard_normal((2, 3, 4, 4))
    expected = (x - rm.reshape(1, 3, 1, 1)) / np.sqrt(rv.reshape(1, 3, 1, 1) + 1e-3) * \
        bn.weight.data.reshape(1, 3, 1, 1) + bn.bias.data.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(bn(tensor(x)).data, expected, rtol=1e-10, atol=1e-12)
    assert bn.num_batches_tracked.data == 3  # eval does not count
    np.testing.assert_allclose(bn.running_mean.data, rm, rtol=1e-12)  # nor update


def test_batchnorm_momentum_none_is_cumulative_average():
    rng = np.random.default_rng(1)
    bn = nn.BatchNorm1d(4, momentum=None).double()
    xs = [rng.standard_normal((8, 4)) + k for k in range(5)]
    for x in xs:
        bn(tensor(x))
    np.testing.assert_allclose(bn.running_mean.data, np.mean([x.mean(0) for x in xs], axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.data, np.mean([x.var(0, ddof=1) for x in xs], axis=0), rtol=1e-12)


def test_batchnorm_affine_false_and_no_running_stats():
    rng = np.random.default_rng(2)
    bn = nn.BatchNorm1d(3, affine=False).double()
    assert bn.weight is None and bn.bias is None and list(bn.parameters()) == []
    assert list(bn.state_dict()) == ["running_mean", "running_var", "num_batches_tracked"]
    x = rng.standard_normal((6, 3, 5))
    np.testing.assert_allclose(bn(tensor(x)).data, _np_bn(x, np.ones(3), np.zeros(3), 1e-5, (0, 2)), rtol=1e-10,
                               atol=1e-12)
    nt = nn.BatchNorm2d(3, track_running_stats=False).double()
    assert nt.running_mean is None and list(nt.buffers()) == [] and list(nt.state_dict()) == ["weight", "bias"]
    x = rng.standard_normal((2, 3, 4, 4)) + 5
    for mode in (True, False):  # batch statistics in both modes
        nt.train(mode)
        np.testing.assert_allclose(nt(tensor(x)).data, _np_bn(x, np.ones(3), np.zeros(3), 1e-5, (0, 2, 3)),
                                   rtol=1e-10, atol=1e-12)


def test_batchnorm_gradients_reach_input_weight_and_bias():
    rng = np.random.default_rng(3)
    bn = nn.BatchNorm2d(2).double()
    x = tensor(rng.standard_normal((3, 2, 4, 4)), requires_grad=True)
    w = rng.standard_normal((3, 2, 4, 4))
    (bn(x) * tensor(w)).sum().backward()
    assert x.grad.shape == x.shape and bn.weight.grad.shape == (2,) and bn.bias.grad.shape == (2,)
    np.testing.assert_allclose(bn.bias.grad, w.sum(axis=(0, 2, 3)), rtol=1e-12)
    # the normalised output is invariant to shifting a channel, so dx sums to zero per channel
    np.testing.assert_allclose(x.grad.sum(axis=(0, 2, 3)), 0, atol=1e-12)


def test_batchnorm_float32_and_to_double_converts_buffers_not_counter():
    bn = nn.BatchNorm2d(4)
    assert bn.running_mean.dtype == np.float32 and bn.weight.dtype == np.float32
    y = bn(tensor(np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)))
    assert y.dtype == np.float32
    bn.double()
    assert bn.running_mean.dtype == np.float64 and bn.running_var.dtype == np.float64
    assert bn.num_batches_tracked.dtype == np.int64
    bn.float()
    assert bn.running_var.dtype == np.float32


def test_batchnorm_bad_input():
    bn = nn.BatchNorm2d(16)
    with pytest.raises(ValueError, match=r"expected input with 16 channels.*got 8"):
        bn(tensor(np.zeros((2, 8, 4, 4), np.float32)))
    with pytest.raises(ValueError, match="expected 4D input"):
        bn(tensor(np.zeros((2, 16), np.float32)))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        nn.BatchNorm1d(5)(tensor(np.zeros((1, 5), np.float32)))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn(tensor(np.zeros((1, 16, 1, 1), np.float32)))
    bn.eval()
    assert bn(tensor(np.ones((1, 16, 1, 1), np.float32))).shape == (1, 16, 1, 1)  # fine in eval mode
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm2d(3, momentum=1.5)
    with pytest.raises(ValueError, match="num_features"):
        nn.BatchNorm2d(0)
    for B in (C, R):
        x = np.zeros((2, 3, 4), np.float32)
        with pytest.raises(ValueError, match=r"weight has shape \(4,\), expected \(3,\)"):
            B.batch_norm_forward(x, np.ones(4, np.float32), None, None, None, True)
        with pytest.raises(TypeError, match="dtype"):
            B.batch_norm_forward(x, np.ones(3), None, None, None, True)
        with pytest.raises(ValueError, match="needs running_mean"):
            B.batch_norm_forward(x, None, None, None, None, False)
        with pytest.raises(ValueError, match="at least 2 dimensions"):
            B.batch_norm_forward(np.zeros(3, np.float32), None, None, None, None, True)
        with pytest.raises(ValueError, match="writeable C-contiguous"):
            B.batch_norm_forward(x, None, None, np.zeros(6, np.float32)[::2], np.ones(3, np.float32), True)
        # the fused forms and out= buffers (captured steps): bad values name what is wrong
        with pytest.raises(ValueError, match="activation must be None or 'relu'"):
            B.batch_norm_forward(x, None, None, None, None, True, activation="tanh")
        with pytest.raises(ValueError, match="activation_out is given but activation is None"):
            B.batch_norm_forward(x, None, None, None, None, True, activation_out=np.empty_like(x))
        with pytest.raises(ValueError, match=r"activation_out has shape \(2, 3, 5\), expected \(2, 3, 4\)"):
            B.batch_norm_forward(x, None, None, None, None, True, activation="relu",
                                 activation_out=np.empty((2, 3, 5), np.float32))
        with pytest.raises(ValueError, match=r"out has shape \(2, 3\), expected \(2, 3, 4\)"):
            B.batch_norm_forward(x, None, None, None, None, True, out=np.empty((2, 3), np.float32))
        m, s = np.zeros(3, np.float32), np.ones(3, np.float32)
        with pytest.raises(ValueError, match=r"relu_output has shape \(2, 3, 5\) but x has shape \(2, 3, 4\)"):
            B.batch_norm_backward(x, x, None, m, s, True, relu_output=np.zeros((2, 3, 5), np.float32))
        with pytest.raises(TypeError, match="dtype"):
            B.batch_norm_backward(x, x, None, m, s, True, relu_output=np.zeros((2, 3, 4)))
        with pytest.raises(ValueError, match="out must be a tuple of three arrays"):
            B.batch_norm_backward(x, x, None, m, s, True, out=(np.empty_like(x),))


def test_batchnorm_nan_propagates_to_its_channel_only():
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    x[1, 1, 2] = np.nan
    y = nn.BatchNorm1d(3)(tensor(x)).data
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()


# ----- Dropout ---------------------------------------------------------------------------------------------
def test_dropout_train_eval_scale_and_statistics():
    x = np.ones((400, 500), np.float32)
    d = nn.Dropout(0.3)
    y = d(tensor(x)).data
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    d.eval()
    t = tensor(x)
    assert d(t) is t
    assert F.dropout(t, 0.0, training=True) is t
    assert (F.dropout(t, 1.0).data == 0).all()


def test_dropout_backward_uses_the_same_mask():
    x = tensor(np.random.default_rng(0).standard_normal((30, 40)), requires_grad=True)
    y = F.dropout(x, 0.5)
    y.sum().backward()
    kept = y.data != 0
    np.testing.assert_array_equal(x.grad, np.where(kept, 2.0, 0.0))


def test_dropout_mask_is_seeded_and_backend_independent():
    x = np.random.default_rng(0).standard_normal((8, 3, 5, 5))
    outs = []
    for backend in ("compiled", "reference", "compiled"):
        fastbp.set_backend(backend)
        fastbp.manual_seed(7)
        outs.append((F.dropout(tensor(x), 0.4).data, F.dropout2d(tensor(x), 0.4).data))
    for a, b in zip(outs[0], outs[1]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(outs[0], outs[2]):
        np.testing.assert_array_equal(a, b)


def test_dropout2d_zeroes_whole_channels():
    x = np.ones((50, 20, 4, 3))
    y = nn.Dropout2d(0.5)(tensor(x)).data
    per_plane = y.reshape(50, 20, -1)
    assert ((per_plane == 0).all(axis=2) | (per_plane == 2.0).all(axis=2)).all()
    assert 0.4 < (per_plane[:, :, 0] == 0).mean() < 0.6
    y3 = F.dropout2d(tensor(np.ones((20, 4, 3))), 0.5).data  # unbatched (C, H, W)
    assert ((y3 == 0).all(axis=(1, 2)) | (y3 == 2.0).all(axis=(1, 2))).all()


def test_dropout_nan_stays_nan_and_bad_p():
    x = np.array([np.nan, np.inf, 1.0] * 100)
    y = F.dropout(tensor(x), 0.5).data
    assert np.isnan(y[0::3]).all()  # NaN * 0 and NaN * 2 are NaN, as in PyTorch's input * mask / (1 - p)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
            nn.Dropout(p)
        with pytest.raises(ValueError, match="dropout probability"):
            F.dropout(tensor(x), p)
    with pytest.raises(ValueError, match="dropout2d"):
        F.dropout2d(tensor(np.ones((2, 3))), 0.5)
    for B in (C, R):
        with pytest.raises(ValueError, match="leading part"):
            B.dropout_mask_scale(np.ones((2, 3)), np.ones((3,), bool), 2.0)
        with pytest.raises(TypeError, match="bool"):
            B.dropout_mask_scale(np.ones((2, 3)), np.ones((2, 3), np.uint8), 2.0)


def test_relu_inplace_accepted_and_identity_and_adaptive_pool():
    x = tensor(np.array([[-1.0, 2.0]]))
    np.testing.assert_array_equal(F.relu(x, inplace=True).data, [[0.0, 2.0]])
    np.testing.assert_array_equal(nn.ReLU(inplace=True)(x).data, [[0.0, 2.0]])
    assert nn.Identity(3, foo=1)(x) is x
    z = np.random.default_rng(0).standard_normal((2, 3, 6, 4))
    np.testing.assert_allclose(nn.AdaptiveAvgPool2d(1)(tensor(z)).data, z.mean(axis=(2, 3), keepdims=True),
                               rtol=1e-12)
    np.testing.assert_allclose(F.adaptive_avg_pool2d(tensor(z), (3, 2)).data,
                               z.reshape(2, 3, 3, 2, 2, 2).mean(axis=(3, 5)), rtol=1e-12)
    np.testing.assert_allclose(F.adaptive_avg_pool2d(tensor(z), (None, 1)).data, z.mean(axis=3, keepdims=True),
                               rtol=1e-12)
    with pytest.raises(NotImplementedError, match="divide"):
        F.adaptive_avg_pool2d(tensor(z), 4)


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5), (3, 2, 4, 4), (2, 40, 3, 3), (3, 40, 2, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_relu_fused_forms_give_the_separate_kernels_bits(shape, dtype):
    """activation="relu" writes relu_forward(y)'s bits (and y when out= is given); relu_output= gives
    batch_norm_backward(relu_backward(g, r))'s bits, with NaN, inf and exact zeros in play: row path
    (planes under 8 values; (3, 40, 2, 2): two blocks of channels) and plane path, both modes."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[::7] = 0
    x.flat[3], x.flat[-2] = np.nan, np.inf
    g = rng.standard_normal(shape).astype(dtype)
    g.flat[5] = np.nan
    c = shape[1]
    w, b = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), (0.5 + rng.random(c)).astype(dtype)
    for training in (True, False):
        y, mean, invstd = C.batch_norm_forward(x, w, b, rm.copy(), rv.copy(), training)
        y2, mean2, invstd2, r = C.batch_norm_forward(x, w, b, rm.copy(), rv.copy(), training,
                                                     out=np.empty_like(x), activation="relu")
        none, _, _, r3 = C.batch_norm_forward(x, w, b, rm.copy(), rv.copy(), training, activation="relu")
        assert none is None
        for a, e in [(y2, y), (mean2, mean), (invstd2, invstd), (r, C.relu_forward(y)), (r3, r)]:
            np.testing.assert_array_equal(a, e)
        separate = C.batch_norm_backward(C.relu_backward(g, r), x, w, mean, invstd, training)
        bufs = (np.empty_like(x), np.empty(c, dtype), np.empty(c, dtype))
        fused = C.batch_norm_backward(g, x, w, mean, invstd, training, relu_output=r, out=bufs)
        for a, e, buf in zip(fused, separate, bufs):
            assert a is buf
            np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_saved_mean_with_an_infinite_first_element(dtype):
    """The batch mean of a channel holding +-inf is +-inf (PyTorch's, the reference's), also when the channel's
    first element is the infinite one: the kernel's shifted sums once gave NaN there (inf - inf)."""
    x = np.array([[1.0, -np.inf, np.nan], [2.0, 3.0, 1.0], [0.5, 1.0, 2.0], [np.inf, 0.0, 1.0]], dtype=dtype)
    for first in (-np.inf, np.inf):
        x[0, 1] = first
        out = {B.name: B.batch_norm_forward(x, None, None, None, None, True) for B in (C, R)}
        for k in range(3):
            np.testing.assert_array_equal(out["compiled"][k], out["reference"][k])
        assert out["compiled"][1][1] == first and out["compiled"][1][0] == np.inf and np.isnan(out["compiled"][1][2])
