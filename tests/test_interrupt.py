"""Ctrl-C during a long kernel: KeyboardInterrupt arrives while the kernel runs, not when it returns.

A child process sizes one conv2d (or pooling) call to take several seconds, starts it, and the test sends
SIGINT 0.3 s later. The kernels poll for signals between samples (csrc/interrupt.h), so the exception must
arrive well before the call could have finished; the child then checks that the library still works (the
workspace lock and the BLAS thread count are restored by the wrappers' finally blocks)."""
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import fastbp

CHILD = r"""
import signal, sys, time
import numpy as np
from fastbp import _backend
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent runs with SIGINT ignored
C, R = _backend.compiled, _backend.reference
what, target = sys.argv[1], float(sys.argv[2])
rng = np.random.default_rng(0)

if what.startswith("conv"):
    w = rng.standard_normal((96, 96, 5, 5)).astype(np.float32)
    def make(n):
        x = rng.standard_normal((n, 96, 20, 20)).astype(np.float32)
        if what == "conv_forward":
            return lambda: C.conv2d_forward(x, w, None, padding=2)
        g = rng.standard_normal((n, 96, 20, 20)).astype(np.float32)
        return lambda: C.conv2d_backward(g, x, w, padding=2)
else:
    def make(n):
        x = rng.standard_normal((n, 32, 64, 64)).astype(np.float32)
        if what == "max_pool":
            return lambda: C.max_pool2d_forward(x, 9, 1, 4)
        return lambda: C.avg_pool2d_forward(x, 31, 1, 15)  # large windows: seconds without much memory

n0 = 4
small = make(n0)
small()
t = time.perf_counter(); small(); per = (time.perf_counter() - t) / n0
n = max(n0, int(target / per))
big = make(n)
print(f"ready {per * n:.3f}", flush=True)
try:
    big()
    print("finished", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
# the library still works after the interrupt (locks released, BLAS threads restored)
x = rng.standard_normal((2, 3, 9, 8)); w = rng.standard_normal((4, 3, 3, 3))
np.testing.assert_allclose(C.conv2d_forward(x, w, None, padding=1), R.conv2d_forward(x, w, None, padding=1),
                           rtol=1e-9, atol=1e-11)
x = rng.standard_normal((2, 3, 9, 8))
np.testing.assert_array_equal(C.max_pool2d_forward(x, 3, 1, 1)[0], R.max_pool2d_forward(x, 3, 1, 1)[0])
print("ok", flush=True)
"""

TARGET_SECONDS = 6.0   # the interrupted call, had it run to the end (estimated by the child)
BOUND_SECONDS = 1.5    # generous: the machine running the suite may be shared and busy


def _child_env():
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("what", ["conv_forward", "conv_backward", "max_pool", "avg_pool"])
def test_ctrl_c_interrupts_a_long_kernel(what):
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, what, str(TARGET_SECONDS)], cwd=cwd, env=_child_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert line.startswith("ready"), f"child failed: {line!r} {proc.stderr.read()}"
            estimate = float(line.split()[1])
            time.sleep(0.3)
            sent = time.perf_counter()
            proc.send_signal(signal.SIGINT)
            line = proc.stdout.readline()
            latency = time.perf_counter() - sent
            proc.wait(timeout=120)  # (communicate() would miss what readline already buffered)
            rest, err = proc.stdout.read(), proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert line.strip() == "interrupted", f"{what}: child printed {line!r}; stderr: {err}"
    assert rest.split() == ["ok"], (f"{what}: the library misbehaved after the interrupt (exit status "
                                    f"{proc.returncode}): {rest!r} {err}")
    assert estimate > 3.0, f"{what}: the call was sized to only {estimate:.1f} s; the test proves nothing"
    assert latency < BOUND_SECONDS, (f"{what}: KeyboardInterrupt arrived {latency:.2f} s after SIGINT (the call "
                                     f"would have taken ~{estimate:.1f} s)")


def test_pooling_in_chunks_matches_reference():
    """Large pooling calls run in chunks of samples (planes for the max-pool backward) with a signal check
    between them; results across chunk boundaries are the reference's. 300 samples of 8x32x32 with a 3x3
    window, stride 1, make three forward chunks (113 samples each: 2^23 window taps) and 19 max-pool
    backward chunks. One thread: this checks the chunking; the thread-count invariance of the pooling
    loops has its own tests."""
    from fastbp import _backend
    C, R = _backend.compiled, _backend.reference
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 8, 32, 32))
    threads = fastbp.get_num_threads()
    fastbp.set_num_threads(1)
    try:
        y, ind = C.max_pool2d_forward(x, 3, 1, 1)
        yr, indr = R.max_pool2d_forward(x, 3, 1, 1)
        np.testing.assert_array_equal(y, yr)
        np.testing.assert_array_equal(ind, indr)
        g = rng.standard_normal(y.shape)
        np.testing.assert_array_equal(C.max_pool2d_backward(g, ind, x.shape), R.max_pool2d_backward(g, indr, x.shape))
        a = C.avg_pool2d_forward(x, 3, 1, 1)
        np.testing.assert_allclose(a, R.avg_pool2d_forward(x, 3, 1, 1), rtol=1e-12, atol=1e-14)
        g = rng.standard_normal(a.shape)
        np.testing.assert_allclose(C.avg_pool2d_backward(g, x.shape, 3, 1, 1), R.avg_pool2d_backward(g, x.shape, 3, 1, 1),
                                   rtol=1e-12, atol=1e-14)
    finally:
        fastbp.set_num_threads(threads)
