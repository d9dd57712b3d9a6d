"""Sums along long softmax lines are blocked and pairwise: a 300,007-value float64 line stays close to an
exact sum (math.fsum) where a running sum drifted by ~1e-6."""
import math

import numpy as np

from fastbp import _backend

C, R = _backend.compiled, _backend.reference
N = 300_007


def test_float64_log_softmax_backward_long_line_close_to_exact():
    rng = np.random.default_rng(0)
    ly = C.log_softmax_forward(rng.standard_normal((1, N)))
    g = rng.standard_normal((1, N)) + 1e6  # a sum of ~3e11 whose naive running error reached 1.8e-6 here
    exact = g - np.exp(ly) * math.fsum(g[0].tolist())
    err = np.abs(C.log_softmax_backward(g, ly) - exact).max()
    assert err <= 3e-8, err
    assert err <= 2 * np.abs(R.log_softmax_backward(g, ly) - exact).max() + 1e-12


def test_float64_softmax_backward_and_forward_long_line_close_to_exact():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, N))
    y = C.softmax_forward(x)
    e = np.exp(x - x.max())
    np.testing.assert_allclose(y, e / math.fsum(e[0].tolist()), rtol=1e-14, atol=0)
    g = rng.standard_normal((1, N)) + 1e6
    exact = y * (g - math.fsum((g * y)[0].tolist()))  # products rounded once, summed exactly
    assert np.abs(C.softmax_backward(g, y) - exact).max() <= 1e-10


def test_long_strided_lines_match_contiguous_ones():
    """The blocked sum follows the line through its stride (softmax over axis 0)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1000, 3))
    g = rng.standard_normal((1000, 3)) + 100
    y0 = C.softmax_forward(x, axis=0)
    np.testing.assert_array_equal(y0, C.softmax_forward(np.ascontiguousarray(x.T), axis=1).T)
    np.testing.assert_array_equal(C.softmax_backward(g, y0, axis=0),
                                  C.softmax_backward(np.ascontiguousarray(g.T), np.ascontiguousarray(y0.T), axis=1).T)
