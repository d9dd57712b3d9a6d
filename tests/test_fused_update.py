"""linear_backward(update=...): the optimizer step applied inside the backward, block by block as the weight
gradient is written. It must give exactly the bits of linear_backward followed by the separate step, on
every blocking path (one block, row blocks, column blocks), serial and threaded, and the NumPy reference
must agree with it."""
import numpy as np
import pytest

import fastbp
from fastbp._C import _runtime, gemm, optim
from fastbp.reference import gemm as rgemm, optim as roptim

# (batch, in, out): one product block with a threaded update pass (1x784x256: 200,704 elements), column
# blocks of the weight gradient (out < in), row blocks (out > in), a small one, and odd sizes
SHAPES = [(1, 784, 256), (64, 784, 256), (128, 128, 513), (5, 3, 4), (33, 257, 65)]

STEPS = {
    "sgd": lambda st, first: ("sgd_step", (None, 0.05, 0.0, 0.0, 0.0, False, first)),
    "sgd_momentum": lambda st, first: ("sgd_step", (st[0], 0.05, 0.9, 0.0, 0.0, False, first)),
    "sgd_nesterov_wd": lambda st, first: ("sgd_step", (st[0], 0.02, 0.5, 0.0, 0.05, True, first)),
    "sgd_dampening": lambda st, first: ("sgd_step", (st[0], 0.05, 0.8, 0.3, 1e-2, False, first)),
    "adam": lambda st, first: ("adam_step", (st[0], st[1], None, 3, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False)),
    "adamw_amsgrad": lambda st, first: ("adam_step", (st[0], st[1], st[2], 2, 1e-2, 0.8, 0.99, 1e-6, 0.1, True,
                                                      True)),
    "adam_l2": lambda st, first: ("adam_step", (st[0], st[1], None, 7, 1e-3, 0.9, 0.999, 1e-8, 1e-2, False, False)),
}


def _state(rng, p):
    # nonzero state so that every term of the rules matters; the second moment must stay >= 0
    return [rng.standard_normal(p.shape).astype(p.dtype) * 0.1, np.abs(rng.standard_normal(p.shape)).astype(p.dtype),
            np.abs(rng.standard_normal(p.shape)).astype(p.dtype)]


def _problem(shape, dtype, seed=0):
    n, fin, fout = shape
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, fout)).astype(dtype)
    x = rng.standard_normal((n, fin)).astype(dtype)
    w = rng.standard_normal((fout, fin)).astype(dtype)
    b = rng.standard_normal(fout).astype(dtype)
    return g, x, w, b, _state(rng, w), _state(rng, b)


def _copy(arrs):
    return [a.copy() for a in arrs]


def _fused_and_separate(kernels, shape, dtype, kind, first=False):
    g, x, w, b, sw, sb = _problem(shape, dtype)
    # fused
    w1, b1, sw1, sb1 = w.copy(), b.copy(), _copy(sw), _copy(sb)
    name, aw = STEPS[kind](sw1, first)
    _, ab = STEPS[kind](sb1, first)
    res1 = kernels[0].linear_backward(g, x, w1, True, True, True, update=((name, w1, aw), (name, b1, ab)))
    # separate
    w2, b2, sw2, sb2 = w.copy(), b.copy(), _copy(sw), _copy(sb)
    res2 = kernels[0].linear_backward(g, x, w2, True, True, True)
    _, aw2 = STEPS[kind](sw2, first)
    _, ab2 = STEPS[kind](sb2, first)
    getattr(kernels[1], name)(w2, res2[1], *aw2)
    getattr(kernels[1], name)(b2, res2[2], *ab2)
    return (list(res1) + [w1, b1] + sw1 + sb1), (list(res2) + [w2, b2] + sw2 + sb2)


@pytest.fixture(params=[1, 2, 4], ids=lambda b: f"blocks{b}")
def gemm_blocks(request):
    """Products split in at most 1, 2 or 4 blocks (the count a 1-, 2- or 4-CPU machine uses)."""
    previous = _runtime._set_gemm_blocks_max(request.param)
    yield request.param
    _runtime._set_gemm_blocks_max(previous)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", sorted(STEPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fused_step_is_bit_identical_to_separate(shape, dtype, kind, threads, gemm_blocks):
    before = fastbp.get_num_threads()
    fastbp.set_num_threads(threads)
    try:
        fused, separate = _fused_and_separate((gemm, optim), shape, dtype, kind)
    finally:
        fastbp.set_num_threads(before)
    for k, (a, c) in enumerate(zip(fused, separate)):
        np.testing.assert_array_equal(a, c, err_msg=f"array {k}")


@pytest.mark.parametrize("kind", ["sgd_momentum", "adamw_amsgrad"])
def test_fused_step_parallel_branches_small(kind):
    """The threaded update and the blocked product on small inputs (parallel threshold lowered)."""
    previous = _runtime._set_parallel_min(0)
    before = fastbp.get_num_threads()
    fastbp.set_num_threads(2)
    try:
        for shape in [(40, 9, 7), (3, 50, 60)]:
            fused, separate = _fused_and_separate((gemm, optim), shape, np.float64, kind)
            for a, c in zip(fused, separate):
                np.testing.assert_array_equal(a, c)
    finally:
        _runtime._set_parallel_min(previous)
        fastbp.set_num_threads(before)


@pytest.mark.parametrize("shape", [(256, 784, 256), (64, 784, 256), (300, 100, 1000)],
                         ids=lambda s: "x".join(map(str, s)))
def test_products_identical_for_any_thread_count(shape, gemm_blocks):
    """Whatever the block count, 1, 2 and 3 threads give the same bits (forward and backward)."""
    g, x, w, b, _, _ = _problem(shape, np.float32)
    before = fastbp.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            fastbp.set_num_threads(threads)
            results.append((gemm.linear_forward(x, w, b),) + gemm.linear_backward(g, x, w))
    finally:
        fastbp.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            np.testing.assert_array_equal(a, c)


def test_first_sgd_step_fused():
    fused, separate = _fused_and_separate((gemm, optim), (64, 784, 256), np.float32, "sgd_momentum", first=True)
    for a, c in zip(fused, separate):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("kind", sorted(STEPS))
@pytest.mark.parametrize("shape", [(5, 3, 4), (64, 784, 256)], ids=lambda s: "x".join(map(str, s)))
def test_reference_agrees(shape, kind):
    """The NumPy reference (float64) against the compiled fused kernel."""
    fused, _ = _fused_and_separate((gemm, optim), shape, np.float64, kind)
    ref, _ = _fused_and_separate((rgemm, roptim), shape, np.float64, kind)
    for k, (a, r) in enumerate(zip(fused, ref)):
        np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12, err_msg=f"array {k}")


def test_dx_uses_the_weight_before_the_step():
    g, x, w, b, sw, _ = _problem((6, 5, 4), np.float64)
    expected_dx = g @ w
    dx, dw, _ = gemm.linear_backward(g, x, w, True, True, False,
                                     update=(("sgd_step", w, (None, 0.5)), None))
    np.testing.assert_array_equal(dx, expected_dx)
    assert not np.array_equal(w, _problem((6, 5, 4), np.float64)[2])  # the weight did change


def test_out_buffers_with_update():
    g, x, w, b, sw, sb = _problem((64, 784, 256), np.float32)
    outs = (np.empty_like(x), np.empty_like(w), np.empty_like(b))
    res = gemm.linear_backward(g, x, w, True, True, True, out=outs,
                               update=(("sgd_step", w, (sw[0], 0.1, 0.9)), ("sgd_step", b, (sb[0], 0.1, 0.9))))
    assert all(r is o for r, o in zip(res, outs))


@pytest.mark.parametrize("mod", [gemm, rgemm], ids=["compiled", "reference"])
def test_update_errors(mod):
    g, x, w, b, sw, sb = _problem((4, 3, 2), np.float64)
    with pytest.raises(ValueError, match="must update .weight. itself"):
        mod.linear_backward(g, x, w, update=(("sgd_step", w.copy(), (None, 0.1)), None))
    with pytest.raises(ValueError, match="bias gradient"):
        mod.linear_backward(g, x, w, True, True, False, update=(None, ("sgd_step", b, (None, 0.1))))
    with pytest.raises(TypeError, match="update must be a tuple"):
        mod.linear_backward(g, x, w, update=[None, None])
    if mod is gemm:  # the compiled wrapper checks before any nogil loop
        with pytest.raises(ValueError, match="unknown optimizer step"):
            mod.linear_backward(g, x, w, update=(("lbfgs", w, ()), None))
        with pytest.raises(ValueError, match="shape"):
            mod.linear_backward(g, x, w, update=(None, ("sgd_step", np.zeros(5), (None, 0.1))))
        with pytest.raises(ValueError, match="momentum_buffer"):
            mod.linear_backward(g, x, w, update=(("sgd_step", w, (None, 0.1, 0.9)), None))
        with pytest.raises(ValueError, match="exp_avg_sq has shape"):
            mod.linear_backward(g, x, w, update=(("adam_step", w, (sw[0], np.zeros(3), None, 1, 1e-3)), None))
        with pytest.raises(ValueError, match="overlaps"):
            mod.linear_backward(g, x, w, update=(None, ("sgd_step", g[0], (None, 0.1))))


# ----- linear_forward(activation="relu"): bias and ReLU in the product's epilogue ------------------------
from fastbp._C import activations  # noqa: E402
from fastbp.reference import activations as ractivations  # noqa: E402

FWD_SHAPES = [(1, 784, 256), (64, 784, 256), (256, 100, 700), (7, 0, 5), (5, 3, 4), (33, 257, 65)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", FWD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_relu_epilogue_is_bit_identical(shape, dtype, bias, threads, gemm_blocks):
    n, fin, fout = shape
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, fin)).astype(dtype)
    w = rng.standard_normal((fout, fin)).astype(dtype)
    b = rng.standard_normal(fout).astype(dtype) if bias else None
    if x.size:
        x.flat[::97] = np.nan   # NaN rows/columns stay NaN through the product and the ReLU
    before = fastbp.get_num_threads()
    fastbp.set_num_threads(threads)
    try:
        y, h = gemm.linear_forward(x, w, b, activation="relu")
        y2 = gemm.linear_forward(x, w, b)
        h2 = activations.relu_forward(y2)
    finally:
        fastbp.set_num_threads(before)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(h, h2)
    ry, rh = rgemm.linear_forward(x.astype(np.float64), w.astype(np.float64),
                                  None if b is None else b.astype(np.float64), activation="relu")
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(h, rh, rtol=tol, atol=tol * max(1, fin))


def test_relu_epilogue_parallel_small_and_out():
    previous = _runtime._set_parallel_min(0)
    before = fastbp.get_num_threads()
    fastbp.set_num_threads(2)
    try:
        rng = np.random.default_rng(4)
        x, w, b = rng.standard_normal((40, 9)), rng.standard_normal((70, 9)), rng.standard_normal(70)
        y, h = np.empty((40, 70)), np.empty((40, 70))
        res = gemm.linear_forward(x, w, b, out=y, activation="relu", activation_out=h)
        assert res[0] is y and res[1] is h
        np.testing.assert_array_equal(h, activations.relu_forward(gemm.linear_forward(x, w, b)))
    finally:
        _runtime._set_parallel_min(previous)
        fastbp.set_num_threads(before)


@pytest.mark.parametrize("mod", [gemm, rgemm], ids=["compiled", "reference"])
def test_relu_epilogue_errors(mod):
    x, w = np.ones((3, 4)), np.ones((2, 4))
    with pytest.raises(ValueError, match="activation must be None or 'relu'"):
        mod.linear_forward(x, w, activation="gelu")
    with pytest.raises(ValueError, match="without an activation"):
        mod.linear_forward(x, w, activation_out=np.empty((3, 2)))
    with pytest.raises(ValueError, match="out has shape"):
        mod.linear_forward(x, w, activation="relu", activation_out=np.empty((2, 3)))
    if mod is gemm:
        y = np.empty((3, 2))
        with pytest.raises(ValueError, match="overlaps"):
            mod.linear_forward(x, w, out=y, activation="relu", activation_out=y)
