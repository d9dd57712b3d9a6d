"""cross_entropy_fused: forward and backward of softmax cross-entropy in one pass. Its results must be the
separate kernels' (cross_entropy_forward, then cross_entropy_backward on the forward's lse) bit for bit, on
every path: both dtypes, the three reductions, class weights, label smoothing, NaN/inf logits, non-finite
incoming gradients and weights, the serial and the OpenMP branches, and with out= buffers. (The comparison
with the NumPy reference and the gradient checks come from the registry entry, tests/test_registry.py.)"""
import tracemalloc

import numpy as np
import pytest

import fastbp
from fastbp import _backend
from fastbp._C import _runtime
from helpers import parallel_branches

C, R = _backend.compiled, _backend.reference
DTYPES = (np.float32, np.float64)
REDUCTIONS = ("mean", "sum", "none")
OPENMP = _runtime.openmp_enabled()


def _data(rng, n, c, dt, nonfinite):
    x = (rng.standard_normal((n, c)) * 2).astype(dt)
    y = rng.integers(0, c, n)
    w = rng.uniform(0, 2, c).astype(dt)
    if nonfinite:
        x.flat[rng.integers(0, x.size, max(1, x.size // 20))] = -np.inf
        x.flat[rng.integers(0, x.size, max(1, x.size // 80))] = np.inf
        x.flat[rng.integers(0, x.size, max(1, x.size // 80))] = np.nan
        w[0], w[min(1, c - 1)] = np.inf, 0.0
    return x, y, w


def _grads(rng, n, dt, reduction, nonfinite):
    """Incoming gradients to try: per row for "none" (with inf/NaN entries on non-finite samples), else
    scalars (inf and NaN among them on non-finite samples)."""
    if reduction == "none":
        g = rng.standard_normal(n).astype(dt)
        if nonfinite:
            g[::7], g[3::11] = np.inf, np.nan
        return [g]
    return [0.75, -2.0] + ([np.inf, np.nan] if nonfinite else [])


def _same(got, want, what):
    assert type(got) is np.ndarray, f"{what}: {type(got)}"
    assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype}{got.shape} vs {want.dtype}{want.shape}"
    assert got.tobytes() == want.tobytes(), f"{what}: not bit-identical\n{got}\n{want}"


def _check_against_separate(x, y, g, reduction, weight, eps, out=None):
    loss, lse = C.cross_entropy_forward(x, y, reduction, weight, eps)
    dx = C.cross_entropy_backward(g, x, y, lse, reduction, weight, eps)
    fl, flse, fdx = C.cross_entropy_fused(x, y, g, reduction, weight, eps, out=out)
    _same(fl, loss, "loss")
    _same(flse, lse, "lse")
    _same(fdx, dx, "dx")
    return fl, flse, fdx


@pytest.fixture(params=["serial", "parallel"])
def path(request):
    """"serial": the real parallel threshold (the samples here are below it); "parallel": threshold 0 on 2
    threads, so the fused kernel's prange branch runs (as the registry tests do)."""
    if request.param == "serial":
        yield request.param
        return
    with parallel_branches():
        yield request.param


@pytest.mark.parametrize("nonfinite", [False, True], ids=["finite", "nonfinite"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: np.dtype(d).name)
def test_fused_is_bit_identical_to_forward_then_backward(dt, reduction, weighted, eps, nonfinite, path):
    rng = np.random.default_rng(11)
    if path == "parallel" and OPENMP:
        assert _runtime._threads_used(10) == 2
    for n, c in [(1, 1), (1, 10), (7, 3), (64, 10), (33, 129)]:
        x, y, w = _data(rng, n, c, dt, nonfinite)
        for g in _grads(rng, n, dt, reduction, nonfinite):
            _check_against_separate(x, y, g, reduction, w if weighted else None, eps)


def test_fused_nonfinite_rows_give_pytorchs_pattern():
    # the rows the separate kernels treat specially (a -inf target logit, a -inf elsewhere with and without
    # smoothing, a NaN logit; an infinite incoming gradient takes the per-row PyTorch-order path)
    nf = np.array([[-np.inf, 1.0, 2.0], [0.5, -np.inf, 2.0], [np.nan, 0.0, 1.0], [1.0, 2.0, 0.0]])
    y = np.array([0, 0, 1, 2])
    for dt in DTYPES:
        for eps in (0.0, 0.1):
            for g in (np.ones(4, dt), np.array([1.0, np.inf, -np.inf, np.nan], dtype=dt)):
                loss, lse, dx = _check_against_separate(nf.astype(dt), y, g, "none", None, eps)
                assert np.isinf(loss[0]) and np.isnan(loss[2]) and np.isfinite(loss[3])
                assert np.isfinite(loss[1]) == (eps == 0)
                assert np.isnan(dx[2]).all()


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: np.dtype(d).name)
def test_large_input_takes_the_parallel_branch_at_the_real_threshold(dt):
    # 30000 x 10 = 300000 elements, above the default threshold (262144): the OpenMP branch without any
    # test hook; the results must still be the separate kernels' bits, on 1 thread and on 2
    rng = np.random.default_rng(3)
    n, c = 30000, 10
    threads = fastbp.get_num_threads()
    try:
        for nt in (1, 2):
            fastbp.set_num_threads(nt)
            if OPENMP:
                assert _runtime._threads_used(n * c) == nt
            runs = []
            for nonfinite in (False, True):
                x, y, w = _data(rng, n, c, dt, nonfinite)
                for reduction in REDUCTIONS:
                    for weight, eps in ((None, 0.0), (w, 0.05)):
                        g = _grads(rng, n, dt, reduction, nonfinite)[-1]
                        runs.append(_check_against_separate(x, y, g, reduction, weight, eps))
    finally:
        fastbp.set_num_threads(threads)


def test_parallel_min_lowered_from_the_environment():
    # FASTBP_PARALLEL_MIN=0 at import (how a user or CI forces the OpenMP branches): small inputs through the
    # parallel loop on 2 threads, bit-identical to the separate kernels
    from helpers import run_python
    code = """
import numpy as np
from fastbp import _backend
from fastbp._C import _runtime
C = _backend.compiled
assert _runtime._get_parallel_min() == 0
print(_runtime._threads_used(10))
rng = np.random.default_rng(0)
checked = 0
for dt in (np.float32, np.float64):
    for red in ("mean", "sum", "none"):
        for eps in (0.0, 0.2):
            x = (rng.standard_normal((50, 7)) * 3).astype(dt)
            x[0, 0], x[5, 2], x[9, 4] = -np.inf, np.nan, np.inf
            y = rng.integers(0, 7, 50)
            w = rng.uniform(0, 2, 7).astype(dt)
            g = rng.standard_normal(50).astype(dt) if red == "none" else 1.25
            loss, lse = C.cross_entropy_forward(x, y, red, w, eps)
            dx = C.cross_entropy_backward(g, x, y, lse, red, w, eps)
            f = C.cross_entropy_fused(x, y, g, red, w, eps)
            for a, b in zip(f, (loss, lse, dx)):
                assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), (dt, red, eps)
            checked += 1
print(checked)
"""
    out = run_python(["-c", code], {"FASTBP_PARALLEL_MIN": "0", "OMP_NUM_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    used, checked = out.stdout.split()
    assert checked == "12"
    assert used == ("2" if OPENMP else "1")


# ----- out= buffers ---------------------------------------------------------------------------------------
def _outs(n, c, dt, reduction):
    return (np.full((n,) if reduction == "none" else (), 7.0, dt), np.full(n, 7.0, dt), np.full((n, c), 7.0, dt))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: np.dtype(d).name)
def test_out_buffers_receive_the_results(dt, reduction, path):
    rng = np.random.default_rng(5)
    for nonfinite in (False, True):
        x, y, w = _data(rng, 40, 6, dt, nonfinite)
        g = _grads(rng, 40, dt, reduction, nonfinite)[-1]
        for eps in (0.0, 0.1):
            out = _outs(40, 6, dt, reduction)
            res = _check_against_separate(x, y, g, reduction, w, eps, out=out)
            assert all(r is o for r, o in zip(res, out))
            # None entries allocate, the others are written
            for k in range(3):
                part = tuple(o if j == k else None for j, o in enumerate(_outs(40, 6, dt, reduction)))
                res = _check_against_separate(x, y, g, reduction, w, eps, out=part)
                assert res[k] is part[k] and all(res[j] is not part[j] for j in range(3) if j != k)
            # the reference takes the same out= and gives the same shapes and dtypes
            rout = _outs(40, 6, dt, reduction)
            rres = R.cross_entropy_fused(x, y, g, reduction, w, eps, out=rout)
            assert all(r is o for r, o in zip(rres, rout))


def test_out_buffers_mean_no_result_allocations():
    # a replayed step passes its buffers: no result-sized array is allocated (only the per-row scratch, N doubles)
    rng = np.random.default_rng(8)
    x, y, _ = _data(rng, 256, 1000, np.float32, False)
    out = _outs(256, 1000, np.float32, "mean")
    C.cross_entropy_fused(x, y, 1.0, out=out)  # warm up
    tracemalloc.start()
    try:
        C.cross_entropy_fused(x, y, 1.0, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < out[2].nbytes // 8, peak
    tracemalloc.start()
    try:
        C.cross_entropy_fused(x, y, 1.0)
        _, peak_alloc = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_alloc >= out[2].nbytes  # the measurement does see numpy's allocations


@pytest.mark.parametrize("B", [C, R], ids=["compiled", "reference"])
def test_bad_out_buffers_raise_before_anything_is_written(B):
    rng = np.random.default_rng(9)
    x, y, _ = _data(rng, 5, 3, np.float32, False)
    f32, f64 = np.float32, np.float64
    bad = [
        ((np.zeros((), f32), np.zeros(5, f32), np.zeros((5, 4), f32)), ValueError, r"\(5, 4\).*expected \(5, 3\)"),
        ((np.zeros((), f32), np.zeros(5, f32), np.zeros((3, 5), f32)), ValueError, r"expected \(5, 3\)"),
        ((np.zeros((), f32), np.zeros(4, f32), np.zeros((5, 3), f32)), ValueError, r"expected \(5,\)"),
        ((np.zeros(1, f32), np.zeros(5, f32), np.zeros((5, 3), f32)), ValueError, r"expected \(\)"),
        ((np.zeros((), f32), np.zeros(5, f32), np.zeros((5, 3), f64)), TypeError, "float64, expected float32"),
        ((np.zeros((), f64), None, None), TypeError, "float64, expected float32"),
        ((None, None, np.zeros((5, 6), f32)[:, ::2]), ValueError, "C-contiguous"),
        ((None, None, [[0.0] * 3] * 5), TypeError, "numpy.ndarray"),
    ]
    for out, exc, match in bad:
        keep = [None if o is None else np.array(o, copy=True) for o in out]
        with pytest.raises(exc, match=match):
            B.cross_entropy_fused(x, y, 1.0, out=out)
        for o, k in zip(out, keep):  # nothing written: validation runs before the kernel
            if isinstance(o, np.ndarray):
                np.testing.assert_array_equal(o, k)
    for out in ([None, None, None], (None, None), np.zeros((5, 3), f32)):
        with pytest.raises(TypeError, match="tuple of 3"):
            B.cross_entropy_fused(x, y, 1.0, out=out)
    # "none": the loss buffer is per row
    with pytest.raises(ValueError, match=r"expected \(5,\)"):
        B.cross_entropy_fused(x, y, np.ones(5, f32), "none", out=(np.zeros((), f32), None, None))


def test_out_buffers_must_not_overlap_inputs_or_each_other():
    rng = np.random.default_rng(10)
    x, y, _ = _data(rng, 5, 3, np.float64, False)
    g = np.ones(5)
    lse = np.zeros(5)
    with pytest.raises(ValueError, match="overlaps"):
        C.cross_entropy_fused(x, y, g, "none", out=(lse, lse, None))
    with pytest.raises(ValueError, match="overlaps"):
        C.cross_entropy_fused(x, y, g, "none", out=(None, g, None))  # lse written while g is read
    with pytest.raises(ValueError, match="overlaps"):
        C.cross_entropy_fused(x, y, g, "none", out=(None, None, x))


@pytest.mark.parametrize("B", [C, R], ids=["compiled", "reference"])
def test_bad_arguments_raise_like_the_separate_kernels(B):
    rng = np.random.default_rng(12)
    x, y, w = _data(rng, 5, 3, np.float32, False)
    with pytest.raises(ValueError, match=r"grad_out must have shape \(5,\)"):
        B.cross_entropy_fused(x, y, 1.0, "none")
    with pytest.raises(ValueError, match="grad_out must be a scalar"):
        B.cross_entropy_fused(x, y, np.ones(5, np.float32), "mean")
    with pytest.raises(ValueError, match="out of range"):
        B.cross_entropy_fused(x, np.array([0, 1, 3, 0, 0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        B.cross_entropy_fused(x, y[:4])
    with pytest.raises(TypeError, match="dtype"):
        B.cross_entropy_fused(x, y, 1.0, "mean", w.astype(np.float64))
    with pytest.raises(ValueError, match="label_smoothing"):
        B.cross_entropy_fused(x, y, 1.0, "mean", None, 1.5)
    with pytest.raises(ValueError, match="reduction"):
        B.cross_entropy_fused(x, y, 1.0, "avg")
    with pytest.raises(ValueError, match="non-empty"):
        B.cross_entropy_fused(np.zeros((0, 3), np.float32), np.zeros(0, np.int64))


def test_noncontiguous_and_int32_inputs():
    rng = np.random.default_rng(13)
    for dt in DTYPES:
        x = (rng.standard_normal((9, 14)) * 2).astype(dt)[:, ::2]
        y = rng.integers(0, 7, 9).astype(np.int32)
        w = rng.uniform(0, 2, 14).astype(dt)[::2]
        _check_against_separate(x, y, 0.5, "mean", w, 0.3)
        _check_against_separate(np.asfortranarray(x), y.astype(np.uint8), 0.5, "sum", None, 0.0)


def test_overlap_check_agrees_with_numpy_on_views_of_one_buffer():
    # out= buffers are checked against the arrays the kernel reads by memory bounds (fastbp's own check,
    # np.may_share_memory's rule without its call overhead): logits, weight and buffers as views of one array
    base = np.arange(400, dtype=np.float64) / 100
    y = np.array([0, 2, 1, 1, 0])
    seen = set()
    for xs in (slice(0, 15), slice(100, 115)):
        x = base[xs].reshape(5, 3)
        w = base[50:53]
        want = C.cross_entropy_fused(x.copy(), y, 1.0, "mean", w.copy())
        for os_ in (slice(300, 315), slice(15, 30), slice(10, 25), slice(85, 100), slice(90, 105), slice(40, 55),
                    slice(53, 68), slice(114, 129)):
            o = base[os_].reshape(5, 3)
            expect = np.may_share_memory(o, x) or np.may_share_memory(o, w)
            seen.add(expect)
            keep = base.copy()
            if expect:
                with pytest.raises(ValueError, match="overlaps"):
                    C.cross_entropy_fused(x, y, 1.0, "mean", w, out=(None, None, o))
                np.testing.assert_array_equal(base, keep)
            else:
                got = C.cross_entropy_fused(x, y, 1.0, "mean", w, out=(None, None, o))
                assert got[2] is o and all(a.tobytes() == b.tobytes() for a, b in zip(got, want))
                base[:] = keep
    assert seen == {True, False}
    # a non-contiguous input is copied before the kernel reads it: a buffer in its gaps is no hazard
    x = base[200:230:2].reshape(5, 3)
    o = base[201:216].reshape(5, 3)
    want = C.cross_entropy_fused(x.copy(), y)
    got = C.cross_entropy_fused(x, y, out=(None, None, o))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(got, want))
