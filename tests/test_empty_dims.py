"""Zero-size dimensions: every kernel family, on both backends. Either both backends return the same
result, or both raise the same exception type (a clear ValueError where an op needs a non-empty input).
Empty dimensions are settled in the wrappers before any pointer into an array is taken; in a FASTBP_DEBUG=1
build a bounds error inside a kernel helper aborts the process (checked here by simulation)."""
import sys

import numpy as np
import pytest

from fastbp import _backend

C, R = _backend.compiled, _backend.reference


def z(*shape):
    return np.zeros(shape, np.float32)


def lab(n):
    return np.zeros(n, np.int64)


CALLS = {
    "linear_out0": lambda B: B.linear_forward(z(3, 4), z(0, 4), z(0)),
    "linear_out0_nobias": lambda B: B.linear_forward(z(3, 4), z(0, 4)),
    "linear_in0": lambda B: B.linear_forward(z(3, 0), z(2, 0), z(2)),
    "linear_in0_nobias": lambda B: B.linear_forward(z(3, 0), z(2, 0)),
    "linear_batch0": lambda B: B.linear_forward(z(0, 4), z(2, 4), z(2)),
    "linear_backward_out0": lambda B: B.linear_backward(z(3, 0), z(3, 4), z(0, 4)),
    "linear_backward_in0": lambda B: B.linear_backward(z(3, 2), z(3, 0), z(2, 0)),
    "matmul_m0": lambda B: B.matmul(z(0, 3), z(3, 2)),
    "matmul_k0": lambda B: B.matmul(z(2, 0), z(0, 2)),
    "matmul_n0": lambda B: B.matmul(z(2, 3), z(3, 0)),
    "relu": lambda B: B.relu_forward(z(0, 3)),
    "relu_backward": lambda B: B.relu_backward(z(0, 3), z(0, 3)),
    "elu": lambda B: B.elu_forward(z(2, 0)),
    "sigmoid_backward": lambda B: B.sigmoid_backward(z(0), z(0)),
    "softmax_rows0": lambda B: B.softmax_forward(z(0, 3)),
    "softmax_axis0_empty": lambda B: B.softmax_forward(z(3, 0)),
    "softmax_backward_axis_empty": lambda B: B.softmax_backward(z(3, 0), z(3, 0)),
    "log_softmax_axis_empty": lambda B: B.log_softmax_forward(z(3, 0)),
    "log_softmax_backward_rows0": lambda B: B.log_softmax_backward(z(0, 3), z(0, 3)),
    "maxout_rows0": lambda B: B.maxout_forward(z(0, 4), 2),
    "maxout_backward_rows0": lambda B: B.maxout_backward(z(0, 2), np.zeros((0, 2), np.int64), 2),
    "cross_entropy_rows0": lambda B: B.cross_entropy_forward(z(0, 3), lab(0), reduction="none"),
    "cross_entropy_fused_rows0": lambda B: B.cross_entropy_fused(z(0, 3), lab(0), z(0), reduction="none"),
    "cross_entropy_fused_classes0": lambda B: B.cross_entropy_fused(z(2, 0), lab(2)),
    "nll_rows0": lambda B: B.nll_forward(z(0, 3), lab(0), reduction="sum"),
    "multi_margin_rows0": lambda B: B.multi_margin_forward(z(0, 3), lab(0), reduction="sum"),
    "mse_empty": lambda B: B.mse_forward(z(0), z(0), reduction="sum"),
    "l1_empty": lambda B: B.l1_forward(z(0, 2), z(0, 2), reduction="none"),
    "bce_empty": lambda B: B.bce_forward(z(0), z(0), reduction="sum"),
    "bce_with_logits_backward_empty": lambda B: B.bce_with_logits_backward(np.float32(1), z(0), z(0), reduction="sum"),
    "norm_penalty_empty": lambda B: B.norm_penalty_forward(z(0), 0.1, 0.1),
    "norm_penalty_backward_empty": lambda B: B.norm_penalty_backward(np.float32(1), z(0), 0.1, 0.1),
    "conv_batch0": lambda B: B.conv2d_forward(z(0, 2, 5, 5), z(3, 2, 3, 3), z(3)),
    "conv_backward_batch0": lambda B: B.conv2d_backward(z(0, 3, 3, 3), z(0, 2, 5, 5), z(3, 2, 3, 3)),
    "conv_height0": lambda B: B.conv2d_forward(z(1, 2, 0, 5), z(3, 2, 1, 1), z(3)),
    "conv_out_channels0": lambda B: B.conv2d_forward(z(1, 2, 5, 5), z(0, 2, 3, 3), z(0)),
    "max_pool_batch0": lambda B: B.max_pool2d_forward(z(0, 2, 4, 4), 2),
    "max_pool_channels0": lambda B: B.max_pool2d_forward(z(2, 0, 4, 4), 2),
    "max_pool_backward_batch0": lambda B: B.max_pool2d_backward(z(0, 2, 2, 2), np.zeros((0, 2, 2, 2), np.int64),
                                                                (0, 2, 4, 4)),
    "avg_pool_batch0": lambda B: B.avg_pool2d_forward(z(0, 2, 4, 4), 2),
    "avg_pool_backward_batch0": lambda B: B.avg_pool2d_backward(z(0, 2, 2, 2), (0, 2, 4, 4), 2),
    "global_avg_pool_batch0": lambda B: B.global_avg_pool2d_forward(z(0, 2, 4, 4)),
    "global_avg_pool_backward_batch0": lambda B: B.global_avg_pool2d_backward(z(0, 2, 1, 1), (0, 2, 4, 4)),
    "global_avg_pool_height0": lambda B: B.global_avg_pool2d_forward(z(1, 2, 0, 4)),
    "sgd_empty": lambda B: B.sgd_step(z(0), z(0), z(0), 0.1, 0.9),
    "adam_empty": lambda B: B.adam_step(z(0), z(0), z(0), z(0), None, 1, 1e-3),
    "adagrad_empty": lambda B: B.adagrad_step(z(0), z(0), z(0), 1, 0.1),
    "rmsprop_empty": lambda B: B.rmsprop_step(z(0), z(0), z(0), None, None, 0.1),
}


def _run(B, fn):
    try:
        return "ok", fn(B)
    except Exception as exc:  # noqa: BLE001  (the type is what we compare)
        return "raised", type(exc)


def _flat(out):
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_empty_dimensions_same_on_both_backends(name):
    kc, oc = _run(C, CALLS[name])
    kr, orf = _run(R, CALLS[name])
    assert kc == kr, f"{name}: compiled {kc} {oc if kc == 'raised' else ''}, reference {kr} {orf if kr == 'raised' else ''}"
    if kc == "raised":
        assert oc is orf and issubclass(oc, ValueError), f"{name}: compiled raised {oc}, reference {orf}"
        return
    for a, b in zip(_flat(oc), _flat(orf)):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert np.shape(a) == np.shape(b) and np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(a, b)


def test_debug_build_aborts_on_an_error_inside_a_kernel_helper():
    """Simulated: a FASTBP_DEBUG=1 build installs a hook that aborts on an exception Cython could only print
    as "Exception ignored in 'fastbp._C...'" (a bounds error in a noexcept helper). Checked by hand on a
    real debug build: linear_forward with out_features == 0 before the fix printed the IndexError and
    aborted."""
    from helpers import run_python
    code = ("import fastbp; from fastbp import _config\n"
            "_config._runtime().debug_build = lambda: True\n"
            "assert _config._install_debug_abort()\n"
            "class K:\n"
            "    def __del__(self):\n"
            "        raise IndexError('Out of bounds on buffer access (axis 0)')\n"
            "K.__del__.__qualname__ = 'fastbp._C.gemm._linear_forward_nogil'\n"
            "K()\n"
            "print('not aborted')\n")
    out = run_python(["-c", code])
    assert out.returncode != 0 and "not aborted" not in out.stdout, (out.returncode, out.stdout, out.stderr)
    assert "aborting" in out.stderr
    # an unrelated unraisable exception is only printed
    code2 = code.replace("fastbp._C.gemm._linear_forward_nogil", "somewhere.else")
    out = run_python(["-c", code2])
    assert out.returncode == 0 and "not aborted" in out.stdout, out.stderr
    if sys.platform.startswith("linux"):
        assert _backend.compiled is not None
