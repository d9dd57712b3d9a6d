"""Kernels fused into the blocked matrix product, and the product's blocking: linear_forward(activation="relu")
gives exactly the bits of linear_forward followed by relu_forward on every blocking path (1, 2 or 4 blocks,
rows or columns), serial and threaded, and every product is bit-identical for any thread count."""
import contextlib

import numpy as np
import pytest
import threadpoolctl

import fastbp
from fastbp._C import _runtime, gemm
from fastbp.reference import gemm as rgemm
from helpers import parallel_branches


@pytest.fixture(params=[1, 2, 4], ids=lambda b: f"blocks{b}")
def gemm_blocks(request):
    """Products split in at most 1, 2 or 4 blocks (the count a 1-, 2- or 4-CPU machine uses)."""
    previous = _runtime._set_gemm_blocks_max(request.param)
    yield request.param
    _runtime._set_gemm_blocks_max(previous)


@pytest.mark.parametrize("shape", [(256, 784, 256), (64, 784, 256), (300, 100, 1000)],
                         ids=lambda s: "x".join(map(str, s)))
def test_products_identical_for_any_thread_count(shape, gemm_blocks):
    """Whatever the block count, 1, 2 and 3 threads give the same bits (forward and backward)."""
    n, fin, fout = shape
    rng = np.random.default_rng(0)
    g = rng.standard_normal((n, fout)).astype(np.float32)
    x = rng.standard_normal((n, fin)).astype(np.float32)
    w = rng.standard_normal((fout, fin)).astype(np.float32)
    b = rng.standard_normal(fout).astype(np.float32)
    before = fastbp.get_num_threads()
    results = []
    # without the BLAS thread hook (a serial build, another BLAS) products use the BLAS's own threads, whose
    # rounding may change with their count (README, Threads): there the BLAS is held at one thread
    hooked = fastbp._config._conv_blas_thread_hook()
    try:
        for threads in (1, 2, 3):
            fastbp.set_num_threads(threads)  # sets the BLAS's threads too: hold them at one after it
            with contextlib.nullcontext() if hooked else threadpoolctl.threadpool_limits(1, user_api="blas"):
                results.append((gemm.linear_forward(x, w, b),) + gemm.linear_backward(g, x, w))
    finally:
        fastbp.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            np.testing.assert_array_equal(a, c)


# ----- linear_forward(activation="relu"): bias and ReLU in the product's epilogue ------------------------
from fastbp._C import activations  # noqa: E402

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
    with parallel_branches():
        rng = np.random.default_rng(4)
        x, w, b = rng.standard_normal((40, 9)), rng.standard_normal((70, 9)), rng.standard_normal(70)
        y, h = np.empty((40, 70)), np.empty((40, 70))
        res = gemm.linear_forward(x, w, b, out=y, activation="relu", activation_out=h)
        assert res[0] is y and res[1] is h
        np.testing.assert_array_equal(h, activations.relu_forward(gemm.linear_forward(x, w, b)))


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
