"""Threads and processes: the thread count is process-wide, grad mode is per thread, forked children run
the kernels correctly, and large inputs (above the real parallel threshold) give the reference's results
on the parallel branches."""
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

import fastbp
from fastbp import _backend
from fastbp._C import _runtime

C, R = _backend.compiled, _backend.reference
TWO_THREADS = pytest.mark.skipif(not _runtime.openmp_enabled(), reason="serial build (no OpenMP)")


@pytest.fixture
def restore_threads():
    n = fastbp.get_num_threads()
    yield
    fastbp.set_num_threads(n)


# ----- large inputs: the parallel branches at the real threshold ------------------------------------------
@TWO_THREADS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padded_pooling_above_threshold_matches_reference(restore_threads, dtype):
    """8 x 64 planes of 32x32 (524,288 elements): two threads share the planes. The window bounds used to
    be shared between the threads (assigned through pointers inside prange): wrong maxima, reads outside
    the input."""
    fastbp.set_num_threads(2)
    x = np.random.default_rng(0).standard_normal((8, 64, 32, 32)).astype(dtype)
    g = np.random.default_rng(1).standard_normal((8, 64, 32, 32)).astype(dtype)
    assert x.size >= _runtime._get_parallel_min()
    for _ in range(3):
        y, ind = C.max_pool2d_forward(x, 3, 1, 1)
        yr, indr = R.max_pool2d_forward(x, 3, 1, 1)
        np.testing.assert_array_equal(y, yr)
        np.testing.assert_array_equal(ind, indr)
        np.testing.assert_array_equal(C.max_pool2d_backward(g, ind, x.shape), R.max_pool2d_backward(g, indr, x.shape))
        tol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(C.avg_pool2d_forward(x, 3, 1, 1), R.avg_pool2d_forward(x, 3, 1, 1), rtol=tol, atol=tol)
        np.testing.assert_allclose(C.avg_pool2d_backward(g, x.shape, 3, 1, 1), R.avg_pool2d_backward(g, x.shape, 3, 1, 1),
                                   rtol=tol, atol=tol)


@TWO_THREADS
def test_large_elementwise_softmax_loss_and_step_match_reference_and_one_thread(restore_threads):
    """A few samples above the real threshold (no test knob): activations, softmax, a loss, an optimizer
    step; 2 threads give the reference's values and the same bits as 1 thread."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((600, 512)).astype(np.float32)  # 307,200 elements
    labels = rng.integers(0, 512, 600)
    p = rng.standard_normal(300_000).astype(np.float32)
    gr = rng.standard_normal(300_000).astype(np.float32)

    def run():
        m, v = np.zeros_like(p), np.zeros_like(p)
        pp = p.copy()
        C.adam_step(pp, gr, m, v, np.zeros(1, np.float32), 1, 1e-3)
        return [C.relu_forward(x), C.softmax_forward(x, 1), *C.cross_entropy_forward(x, labels), pp]

    fastbp.set_num_threads(1)
    one = run()
    fastbp.set_num_threads(2)
    two = run()
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(two[0], R.relu_forward(x))
    np.testing.assert_allclose(two[1], R.softmax_forward(x, 1), rtol=1e-5, atol=1e-7)
    for a, b in zip(two[2:4], R.cross_entropy_forward(x, labels)):
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_every_kernel_module_uses_the_process_wide_thread_settings():
    """Each kernel module binds itself to fastbp._C._runtime's settings at import; one that does not keeps a
    private serial default, so fastbp.set_num_threads (and the tests' parallel threshold) never reach its
    loops. BatchNorm's module once missed it: every BatchNorm ran on one thread."""
    assert _runtime._bound_modules() == 1 + len(_backend.compiled_modules)


@TWO_THREADS
@pytest.mark.parametrize("shape", [(8, 16, 48, 48), (4096, 80), (2000, 40, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_batch_norm_relu_above_threshold_matches_reference_and_one_thread(restore_threads, dtype, shape):
    """BatchNorm and its fused ReLU forms above the real parallel threshold (294,912 / 327,680 / 320,000
    elements): the plane path, and the row path (planes under 8 values) with 3 and 2 blocks of channels for
    the threads. 2 threads give the same bits as 1 and the reference's values."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype) + dtype(3)
    g = rng.standard_normal(x.shape).astype(dtype)
    c = shape[1]
    w, b = (1 + 0.3 * rng.standard_normal(c)).astype(dtype), rng.standard_normal(c).astype(dtype)

    def run(B):
        rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
        y, mean, invstd, r = B.batch_norm_forward(x, w, b, rm, rv, True, out=np.empty_like(x), activation="relu")
        return [y, mean, invstd, r, rm, rv, *B.batch_norm_backward(g, x, w, mean, invstd, True),
                *B.batch_norm_backward(g, x, w, mean, invstd, True, relu_output=r)]

    fastbp.set_num_threads(1)
    one = run(C)
    fastbp.set_num_threads(2)
    two = run(C)
    ref = run(R)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-10)
    for k, (a, b_, c) in enumerate(zip(one, two, ref)):
        np.testing.assert_array_equal(a, b_, err_msg=f"output {k}")
        np.testing.assert_allclose(b_, c, err_msg=f"output {k}", **tol)


@TWO_THREADS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_products_do_not_depend_on_thread_count(restore_threads, dtype):
    """linear and matmul above the BLAS's own threading threshold: OpenBLAS's threaded sgemm rounds
    differently from its single-threaded one, so the kernels split large products themselves into blocks
    fixed by the shape and run BLAS single-threaded (when the BLAS thread hook is found)."""
    from fastbp._C import conv
    if not conv._blas_thread_hooks_set():
        pytest.skip("no BLAS thread hook: products use the BLAS's own threads")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((256, 784)).astype(dtype)
    w = rng.standard_normal((300, 784)).astype(dtype)
    b = rng.standard_normal(300).astype(dtype)
    g = rng.standard_normal((256, 300)).astype(dtype)
    a2 = rng.standard_normal((40, 1500)).astype(dtype)  # few rows: split by columns
    b2 = rng.standard_normal((1500, 600)).astype(dtype)
    runs = {}
    for n in (1, 2):
        fastbp.set_num_threads(n)
        runs[n] = [C.linear_forward(x, w, b), *C.linear_backward(g, x, w), C.matmul(a2, b2),
                   C.matmul(b2, a2, trans_a=True, trans_b=True)]
    for one, two in zip(runs[1], runs[2]):
        np.testing.assert_array_equal(two, one)
    from fastbp import _config
    assert [p["num_threads"] for p in _config._scipy_blas_pools()] == [2] * len(_config._scipy_blas_pools())
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(runs[2][0], R.linear_forward(x, w, b), rtol=tol, atol=tol * 30)
    np.testing.assert_allclose(runs[2][4], a2.astype(np.float64) @ b2, rtol=tol, atol=tol * 40)
    np.testing.assert_allclose(runs[2][5], (a2.astype(np.float64) @ b2).T, rtol=tol, atol=tol * 40)


# ----- one thread count for the whole process -------------------------------------------------------------
@TWO_THREADS
def test_set_num_threads_holds_in_other_python_threads(restore_threads):
    """omp_set_num_threads is per-thread state: the setting must reach kernels called from other threads."""
    big = 10 * _runtime._get_parallel_min()
    seen = []

    def probe():
        seen.append((_runtime._threads_used(big), fastbp.get_num_threads()))

    for n in (1, 2, 1):
        fastbp.set_num_threads(n)
        t = threading.Thread(target=probe)
        t.start()
        t.join()
        assert seen[-1] == (n, n)
        assert _runtime._threads_used(big) == n
    assert _runtime._threads_used(1) == 1  # small work stays serial


@TWO_THREADS
def test_omp_num_threads_and_parallel_min_read_at_start_up():
    from helpers import run_python
    code = ("import fastbp; from fastbp._C import _runtime as r; "
            "print(fastbp.get_num_threads(), r._threads_used(10**7), r._get_parallel_min(), r._threads_used(0))")
    out = run_python(["-c", code], {"OMP_NUM_THREADS": "1"}, drop=("FASTBP_PARALLEL_MIN",))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "262144", "1"]
    out = run_python(["-c", code], {"OMP_NUM_THREADS": "2", "FASTBP_PARALLEL_MIN": "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2", "0", "2"]


# ----- grad mode is per thread ----------------------------------------------------------------------------
def test_no_grad_in_one_thread_does_not_stop_recording_in_another():
    w = fastbp.tensor(np.ones(3), requires_grad=True)
    inside, go_on, results = threading.Event(), threading.Event(), {}

    def holder():
        with fastbp.no_grad():
            inside.set()
            go_on.wait(10)
            results["holder"] = (w * 2).requires_grad

    t = threading.Thread(target=holder)
    t.start()
    assert inside.wait(10)
    results["main"] = (w * 2).requires_grad and fastbp.is_grad_enabled()
    go_on.set()
    t.join()
    assert results == {"main": True, "holder": False}
    assert fastbp.is_grad_enabled()


def test_interleaved_no_grad_in_threads_restores_each_threads_mode():
    """Enter in A, enter in B, exit in A, exit in B: both threads end with recording on (with a shared
    global flag, B restored the False it saw and left it off for good)."""
    steps = [threading.Event() for _ in range(4)]
    ends = {}

    def a():
        with fastbp.no_grad():
            steps[0].set()
            steps[1].wait(10)
        steps[2].set()
        ends["a"] = fastbp.is_grad_enabled()

    def b():
        steps[0].wait(10)
        with fastbp.no_grad():
            steps[1].set()
            steps[2].wait(10)
        ends["b"] = fastbp.is_grad_enabled()

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert ends == {"a": True, "b": True}
    assert fastbp.is_grad_enabled()


def test_enable_grad_and_set_grad_enabled():
    w = fastbp.tensor(np.ones(2), requires_grad=True)
    with fastbp.no_grad():
        assert not (w * 1).requires_grad
        with fastbp.enable_grad():
            assert (w * 1).requires_grad
        assert not fastbp.is_grad_enabled()
    assert fastbp.is_grad_enabled()
    with fastbp.set_grad_enabled(False):
        assert not (w * 1).requires_grad
    assert fastbp.is_grad_enabled()
    fastbp.set_grad_enabled(False)
    try:
        assert not fastbp.is_grad_enabled()
    finally:
        fastbp.set_grad_enabled(True)
    assert fastbp.is_grad_enabled()

    @fastbp.set_grad_enabled(False)
    def f():
        return fastbp.is_grad_enabled()

    assert fastbp.is_grad_enabled()  # decorating does not switch it off
    assert f() is False and fastbp.is_grad_enabled()

    @fastbp.no_grad()
    def g():
        return (w * 1).requires_grad

    assert g() is False and fastbp.is_grad_enabled()
    shared = fastbp.no_grad()  # one instance, nested: each exit restores its own entry's value
    with shared:
        with fastbp.enable_grad():
            with shared:
                assert not fastbp.is_grad_enabled()
            assert fastbp.is_grad_enabled()
        assert not fastbp.is_grad_enabled()
    assert fastbp.is_grad_enabled()


# ----- fork -----------------------------------------------------------------------------------------------
def _pool_check(x):
    """Run in a child: the padded max pool of x on the parallel branch; the result's checksum."""
    y, _ = C.max_pool2d_forward(x, 3, 1, 1)
    return float(np.asarray(y, dtype=np.float64).sum()), fastbp.get_num_threads()


def _wait(pid, timeout):
    """waitpid with a deadline: kill the child and fail if it has not exited (a hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"forked child {pid} did not finish within {timeout} s (hung in a parallel region?)")


@pytest.fixture
def big_input():
    return np.random.default_rng(0).standard_normal((8, 64, 32, 32)).astype(np.float32)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_forked_child_runs_kernels_after_parent_used_threads(restore_threads, big_input):
    fastbp.set_num_threads(2)
    expected, _ = _pool_check(big_input)  # the parent's OpenMP pool is now running
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(r)
            total, threads = _pool_check(big_input)
            dx = C.max_pool2d_backward(np.ones((8, 64, 32, 32), np.float32), C.max_pool2d_forward(big_input, 3, 1, 1)[1],
                                       big_input.shape)
            os.write(w, f"{total!r} {threads} {float(dx.sum())!r}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    assert _wait(pid, 60) == 0
    with os.fdopen(r) as f:
        total, threads, dxsum = f.read().split()
    assert float(total) == expected
    assert int(threads) == 1  # the child runs the kernels on one thread
    assert float(dxsum) == 8 * 64 * 32 * 32
    # the parent keeps its setting (a serial build always reports 1)
    assert fastbp.get_num_threads() == (2 if _runtime.openmp_enabled() else 1)
    assert _pool_check(big_input)[0] == expected


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork start method")
def test_multiprocessing_fork_workers_run_kernels(restore_threads, big_input):
    fastbp.set_num_threads(2)
    expected, _ = _pool_check(big_input)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        results = [pool.apply_async(_pool_check, (big_input,)) for _ in range(2)]
        got = [res.get(timeout=60) for res in results]
    assert [g[0] for g in got] == [expected, expected]


# ----- misaligned buffers ---------------------------------------------------------------------------------
def _misaligned(a):
    """A copy of a whose data starts one byte past an aligned address (a view into a byte buffer)."""
    buf = np.zeros(a.nbytes + 1, dtype=np.uint8)
    v = buf[1:].view(a.dtype).reshape(a.shape)
    v[...] = a
    assert not v.flags.aligned or a.itemsize == 1
    return v


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_kernels_read_misaligned_inputs_through_an_aligned_copy(dtype):
    x = _misaligned(np.arange(12, dtype=dtype).reshape(3, 4))
    got = _runtime._kernel_input(x, floating=np.dtype(dtype).kind == "f")
    assert got.flags.aligned and got.flags.c_contiguous
    assert not np.shares_memory(got, x)
    np.testing.assert_array_equal(got, x)
    ok = np.arange(12, dtype=dtype)
    assert _runtime._kernel_input(ok, floating=np.dtype(dtype).kind == "f") is ok  # aligned: no copy


def _registry_ops():
    from fastbp.registry import REGISTRY
    return [s for s in REGISTRY if s.kind == "op"]


@pytest.mark.parametrize("spec", _registry_ops(), ids=lambda s: s.name)
def test_every_op_gives_the_same_results_on_misaligned_inputs(spec):
    rng = np.random.default_rng(5)
    case = spec.samples(rng, np.dtype(np.float32))[0]
    bad = tuple(_misaligned(x) if isinstance(x, np.ndarray) and x.itemsize > 1 else x for x in case.inputs)
    out = spec.forward(C, *case.inputs, **case.params)
    out_bad = spec.forward(C, *bad, **case.params)
    outs = [out] if not isinstance(out, tuple) else list(out)
    outs_bad = [out_bad] if not isinstance(out_bad, tuple) else list(out_bad)
    if spec.backward is not None:
        first = outs[0]
        g = rng.standard_normal(np.shape(first)).astype(np.float32)
        outs += list(spec.backward(C, g, out, *case.inputs, **case.params))
        outs_bad += list(spec.backward(C, _misaligned(g), out_bad, *bad, **case.params))
    for a, b in zip(outs, outs_bad):
        np.testing.assert_array_equal(b, a)


def test_optimizer_steps_reject_misaligned_state_updated_in_place():
    p = _misaligned(np.ones(5, np.float32))
    with pytest.raises(ValueError, match="aligned"):
        C.sgd_step(p, np.ones(5, np.float32), None, 0.1)
    m = _misaligned(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="aligned"):
        C.adam_step(np.ones(5, np.float32), np.ones(5, np.float32), m, np.zeros(5, np.float32), None, 1, 1e-3)
    q = np.ones(5, np.float32)
    C.sgd_step(q, _misaligned(np.ones(5, np.float32)), None, 0.5)  # a misaligned gradient is only read
    np.testing.assert_array_equal(q, np.full(5, 0.5, np.float32))
