"""Activations, losses and regularizers through the graph API (fastbp.nn, fastbp.nn.functional), on both
backends, against PyTorch's definitions written out below in plain NumPy / math (loops, float64): values,
gradients (central differences of the definition), reductions, the rules at kinks, +-1000 extremes, and the
errors bad input raises. Comparisons against torch itself, when it is installed, are extra checks at the end;
nothing here depends on them."""
import math

import numpy as np
import pytest

import fastbp
from fastbp import nn, tensor
from fastbp.nn import functional as F

BACKENDS = ("compiled", "reference")
DTYPES = (np.float32, np.float64)


@pytest.fixture(params=BACKENDS)
def backend(request):
    with fastbp.backend(request.param):
        yield request.param


def _tol(dt):
    return dict(rtol=2e-5, atol=1e-6) if dt == np.float32 else dict(rtol=1e-10, atol=1e-12)


# ----- PyTorch's definitions, written out -----------------------------------------------------------------
def _reduce(values, reduction, denom=None):
    values = np.asarray(values, dtype=np.float64)
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    return values.sum() / (values.size if denom is None else denom)


def _log_softmax_row(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def def_cross_entropy(x, y, weight=None, label_smoothing=0.0, reduction="mean"):
    """torch.nn.functional.cross_entropy with class-index targets: weighted mean divides by sum w[y_n]."""
    n, c = x.shape
    w = [1.0] * c if weight is None else [float(v) for v in weight]
    eps = label_smoothing
    rows = []
    for i in range(n):
        logp = _log_softmax_row([float(v) for v in x[i]])
        nll = -w[y[i]] * logp[y[i]]
        smooth = sum(-w[j] * logp[j] for j in range(c))
        rows.append((1 - eps) * nll + eps / c * smooth)
    return _reduce(rows, reduction, denom=sum(w[y[i]] for i in range(n)))


def def_nll(logp, y, weight=None, reduction="mean"):
    n, c = logp.shape
    w = [1.0] * c if weight is None else [float(v) for v in weight]
    rows = [-w[y[i]] * float(logp[i, y[i]]) for i in range(n)]
    return _reduce(rows, reduction, denom=sum(w[y[i]] for i in range(n)))


def def_multi_margin(x, y, p=1, margin=1.0, weight=None, reduction="mean", normalization="classes"):
    """PyTorch's MultiMarginLoss (normalization="classes"): sum_{j != y} w[y] max(0, margin - x_y + x_j)^p / C;
    "sum" is the same without the 1/C (the multiclass SVM loss)."""
    n, c = x.shape
    w = [1.0] * c if weight is None else [float(v) for v in weight]
    d = c if normalization == "classes" else 1
    rows = []
    for i in range(n):
        total = 0.0
        for j in range(c):
            if j != y[i]:
                total += w[y[i]] * max(0.0, margin - float(x[i, y[i]]) + float(x[i, j])) ** p
        rows.append(total / d)
    return _reduce(rows, reduction)


def def_l1(a, b, reduction="mean"):
    return _reduce([abs(float(u) - float(v)) for u, v in zip(a.ravel(), b.ravel())], reduction).reshape(
        a.shape if reduction == "none" else ())


def _clamped_log(v):
    return max(math.log(v), -100.0) if v > 0 else -100.0


def def_bce(p, t, weight=None, reduction="mean"):
    """-w (t log p + (1 - t) log(1 - p)), each log clamped at -100, as PyTorch."""
    w = np.broadcast_to(1.0 if weight is None else weight, p.shape).ravel()
    vals = [-float(wi) * (float(ti) * _clamped_log(float(pi)) + (1 - float(ti)) * _clamped_log(1 - float(pi)))
            for pi, ti, wi in zip(p.ravel(), t.ravel(), w)]
    return _reduce(vals, reduction).reshape(p.shape if reduction == "none" else ())


def def_bce_logits(x, t, weight=None, pos_weight=None, reduction="mean"):
    """-w (pw t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))), evaluated naively (moderate x only)."""
    w = np.broadcast_to(1.0 if weight is None else weight, x.shape).ravel()
    pw = np.broadcast_to(1.0 if pos_weight is None else pos_weight, x.shape).ravel()
    vals = []
    for xi, ti, wi, pwi in zip(x.ravel(), t.ravel(), w, pw):
        s = 1 / (1 + math.exp(-float(xi)))
        vals.append(-float(wi) * (float(pwi) * float(ti) * math.log(s) + (1 - float(ti)) * math.log(1 - s)))
    return _reduce(vals, reduction).reshape(x.shape if reduction == "none" else ())


def numeric_grad(f, x, g=None, eps=1e-6):
    """Central differences of sum(g * f(x)) in float64."""
    x = np.array(x, dtype=np.float64)
    out = np.asarray(f(x))
    g = np.ones(out.shape) if g is None else g
    grad = np.zeros_like(x)
    for j in range(x.size):
        xp, xm = x.copy(), x.copy()
        xp.flat[j] += eps
        xm.flat[j] -= eps
        grad.flat[j] = (np.sum(g * f(xp)) - np.sum(g * f(xm))) / (2 * eps)
    return grad


def _graph_grad(fn, x, g=None, *args, **kwargs):
    t = tensor(x, requires_grad=True)
    out = fn(t, *args, **kwargs)
    out.backward(np.ones(out.shape, dtype=x.dtype) if g is None else g.astype(x.dtype))
    return out.data, t.grad


# ----- activations ----------------------------------------------------------------------------------------
def def_leaky_relu(x, slope):
    return np.array([v if v > 0 else slope * v for v in x.ravel()]).reshape(x.shape)


def def_elu(x, alpha):
    return np.array([v if v > 0 else alpha * (math.exp(v) - 1) for v in x.ravel()]).reshape(x.shape)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("name,fn,ref,param", [
    ("leaky_relu", F.leaky_relu, def_leaky_relu, 0.01),
    ("leaky_relu", F.leaky_relu, def_leaky_relu, 0.2),
    ("elu", F.elu, def_elu, 1.0),
    ("elu", F.elu, def_elu, 0.7),
])
def test_parametric_activations_match_definition(backend, dt, name, fn, ref, param):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5)) * 2
    x[0, :3] = [-1000.0, 1000.0, -30.0]
    x64 = x.astype(dt).astype(np.float64)
    g = rng.standard_normal(x.shape)
    y, grad = _graph_grad(lambda t: fn(t, param), x.astype(dt), g)
    assert y.dtype == dt and grad.dtype == dt
    np.testing.assert_allclose(y, ref(x64, param), **_tol(dt))
    expected = numeric_grad(lambda v: ref(v, param), x64, g)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6 if dt == np.float64 else 1e-5)


@pytest.mark.parametrize("dt", DTYPES)
def test_rules_at_zero_follow_pytorch(backend, dt):
    """At exactly 0 the x <= 0 branch applies: relu'(0) = 0, leaky_relu'(0) = slope, elu'(0) = alpha (also for -0.0)."""
    x = np.array([0.0, -0.0], dtype=dt)
    cases = [(F.relu, 0.0), (lambda t: F.leaky_relu(t, 0.3), 0.3), (lambda t: F.elu(t, 2.5), 2.5),
             (lambda t: F.elu(t), 1.0), (lambda t: F.leaky_relu(t), 0.01)]
    for fn, slope in cases:
        y, grad = _graph_grad(fn, x)
        np.testing.assert_array_equal(y, [0.0, 0.0])
        np.testing.assert_allclose(grad, [slope, slope], rtol=1e-7)


@pytest.mark.parametrize("dt", DTYPES)
def test_activations_propagate_nan(backend, dt):
    x = np.array([np.nan, 1.0, -1.0], dtype=dt)
    for fn in (F.relu, F.leaky_relu, F.elu, F.sigmoid, F.tanh):
        assert np.isnan(fn(tensor(x)).data[0]), fn


@pytest.mark.parametrize("dt", DTYPES)
def test_saturating_activations_at_pm_1000(backend, dt):
    x = np.array([-1000.0, -40.0, 40.0, 1000.0], dtype=dt)
    y, grad = _graph_grad(F.sigmoid, x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(grad))
    np.testing.assert_array_equal(y[[0, 3]], [0.0, 1.0])
    np.testing.assert_allclose(y[1], math.exp(-40.0), rtol=1e-5)  # exp(x)/(1+exp(x)): no cancellation
    np.testing.assert_array_equal(grad[[0, 3]], [0.0, 0.0])
    y, grad = _graph_grad(F.tanh, x)
    np.testing.assert_array_equal(y, [-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_array_equal(grad, [0.0, 0.0, 0.0, 0.0])
    y, grad = _graph_grad(F.elu, x)
    np.testing.assert_array_equal(y, [-1.0, -1.0, 40.0, 1000.0])
    np.testing.assert_allclose(grad, [0.0, math.exp(-40.0), 1.0, 1.0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("dt", DTYPES)
def test_log_softmax_and_softmax_at_pm_1000(backend, dt):
    x = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -999.0, -1000.0]], dtype=dt)
    y = F.log_softmax(tensor(x), dim=1).data
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y[0], [0.0, -1000.0, -2000.0])
    lse = math.log(2 * math.exp(-1.0) + 1.0)  # row 2 shifted by its max -999
    np.testing.assert_allclose(y[1], [-1.0 - lse, -lse, -1.0 - lse], rtol=1e-6)
    y, grad = _graph_grad(lambda t: F.softmax(t, dim=1), x, np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]))
    np.testing.assert_array_equal(y[0], [1.0, 0.0, 0.0])
    assert np.all(np.isfinite(grad))
    y, grad = _graph_grad(lambda t: F.log_softmax(t, axis=0), x.T.copy(), np.ones((3, 2)))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad.sum(axis=0), [3 - 3.0, 3 - 3.0], atol=1e-5)  # g - softmax * sum(g)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_softmax_over_any_axis_matches_definition(backend, axis):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5))[:, ::-1, :]  # non-contiguous

    def ref_log_softmax(v):
        moved = np.moveaxis(v, axis, -1)
        out = np.array([_log_softmax_row(list(r)) for r in moved.reshape(-1, moved.shape[-1])])
        return np.moveaxis(out.reshape(moved.shape), -1, axis)

    g = rng.standard_normal(x.shape)
    y, grad = _graph_grad(lambda t: F.log_softmax(t, axis=axis), x, g)
    np.testing.assert_allclose(y, ref_log_softmax(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, numeric_grad(ref_log_softmax, x, g), rtol=1e-6, atol=1e-8)
    y, grad = _graph_grad(lambda t: F.softmax(t, axis=axis), x, g)
    np.testing.assert_allclose(y, np.exp(ref_log_softmax(x)), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, numeric_grad(lambda v: np.exp(ref_log_softmax(v)), x, g), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(nn.Softmax(axis)(tensor(x)).data, y)


def test_softmax_bad_axis(backend):
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        F.softmax(tensor(np.zeros((2, 3))), axis=2)
    with pytest.raises(TypeError, match="axis must be an int"):
        F.log_softmax(tensor(np.zeros((2, 3))), axis=0.5)


# ----- Maxout ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
def test_maxout_layer_is_max_over_linear_pieces(backend, dt):
    fastbp.manual_seed(11)
    m = nn.Maxout(6, 4, pieces=3, dtype=dt)
    assert m.linear.weight.shape == (12, 6)
    assert [n for n, _ in m.named_parameters()] == ["linear.weight", "linear.bias"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6)).astype(dt)
    W, b = m.linear.weight.data.astype(np.float64), m.linear.bias.data.astype(np.float64)
    z = x.astype(np.float64) @ W.T + b
    expected = np.array([[max(z[n, f * 3 + j] for j in range(3)) for f in range(4)] for n in range(5)])
    xt = tensor(x, requires_grad=True)
    y = m(xt)
    assert y.shape == (5, 4) and y.dtype == dt
    np.testing.assert_allclose(y.data, expected, rtol=1e-5 if dt == np.float32 else 1e-12, atol=1e-6)
    g = rng.standard_normal((5, 4))
    y.backward(g.astype(dt))
    # d/dx = sum over outputs of g * W[winning row]
    win = np.array([[f * 3 + int(np.argmax(z[n, f * 3:f * 3 + 3])) for f in range(4)] for n in range(5)])
    dx = np.array([sum(g[n, f] * W[win[n, f]] for f in range(4)) for n in range(5)])
    np.testing.assert_allclose(xt.grad, dx, rtol=1e-4 if dt == np.float32 else 1e-10, atol=1e-5)
    db = np.zeros(12)
    for n in range(5):
        for f in range(4):
            db[win[n, f]] += g[n, f]
    np.testing.assert_allclose(m.linear.bias.grad, db, rtol=1e-4 if dt == np.float32 else 1e-10, atol=1e-5)
    assert "pieces=3" in repr(m)


def test_maxout_ties_send_gradient_to_first_piece(backend):
    z = tensor(np.array([[2.0, 2.0, 1.0, -1.0, 3.0, 3.0]]), requires_grad=True)
    y = F.maxout(z, 3)
    np.testing.assert_array_equal(y.data, [[2.0, 3.0]])
    y.backward(np.array([[10.0, 20.0]]))
    np.testing.assert_array_equal(z.grad, [[10.0, 0.0, 0.0, 0.0, 20.0, 0.0]])


def test_maxout_bad_input(backend):
    with pytest.raises(ValueError, match="not a multiple of pieces=4"):
        F.maxout(tensor(np.zeros((2, 6))), 4)
    with pytest.raises(ValueError, match="pieces must be >= 1"):
        F.maxout(tensor(np.zeros((2, 6))), 0)
    with pytest.raises(ValueError, match="pieces"):
        nn.Maxout(3, 2, 0)
    with pytest.raises(TypeError, match="dtype"):
        F.maxout(tensor(np.zeros((2, 6), dtype=np.int64)), 2)


# ----- losses: values and reductions ------------------------------------------------------------------------
REDUCTIONS = ("mean", "sum", "none")


def _data(seed=0, n=7, c=5):
    rng = np.random.default_rng(seed)
    return rng, rng.standard_normal((n, c)) * 2, rng.integers(0, c, n), 0.3 + rng.random(c) * 2


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted,eps", [(False, 0.0), (True, 0.0), (False, 0.2), (True, 0.35)])
def test_cross_entropy_weight_and_label_smoothing(backend, dt, reduction, weighted, eps):
    rng, x, y, w = _data(1)
    w = w if weighted else None
    g = rng.standard_normal(len(y)) if reduction == "none" else np.array(1.7)
    f = lambda t: F.cross_entropy(t, y, weight=w, reduction=reduction, label_smoothing=eps)  # noqa: E731
    out, grad = _graph_grad(f, x.astype(dt), g)
    x64 = x.astype(dt).astype(np.float64)
    np.testing.assert_allclose(out, def_cross_entropy(x64, y, w, eps, reduction), **_tol(dt))
    expected = numeric_grad(lambda v: def_cross_entropy(v, y, w, eps, reduction), x64, g)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
    # the module form is the same function
    mod = nn.CrossEntropyLoss(weight=w, reduction=reduction, label_smoothing=eps)
    np.testing.assert_array_equal(mod(tensor(x.astype(dt)), y).data, out)


def test_cross_entropy_weighted_mean_divides_by_target_weights(backend):
    x = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    y = np.array([0, 1, 1])
    w = np.array([1.0, 3.0])
    # every row's loss is w[y] log 2; the mean divides by 1 + 3 + 3, not by N = 3
    assert F.cross_entropy(tensor(x), y, weight=w).item() == pytest.approx(math.log(2))
    assert F.cross_entropy(tensor(x), y, weight=w, reduction="sum").item() == pytest.approx(7 * math.log(2))
    # label smoothing 1.0 is the uniform-target loss: eps/C sum_c w_c (-log p_c) = (1 + 3) / 2 log 2 per row
    assert F.cross_entropy(tensor(x), y, weight=w, label_smoothing=1.0, reduction="sum").item() == \
        pytest.approx(3 * 2 * math.log(2))


@pytest.mark.parametrize("dt", DTYPES)
def test_cross_entropy_at_pm_1000(backend, dt):
    x = np.array([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]], dtype=dt)
    y = np.array([0, 2])
    loss, grad = _graph_grad(lambda t: F.cross_entropy(t, y, reduction="none"), x)
    np.testing.assert_array_equal(loss, [0.0, 1000.0])
    np.testing.assert_array_equal(grad, [[0.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    loss, grad = _graph_grad(lambda t: F.cross_entropy(t, y, reduction="none", label_smoothing=0.3), x)
    np.testing.assert_allclose(loss, [0.1 * 3000.0, 0.7 * 1000.0 + 0.1 * 3000.0], rtol=1e-6)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss(backend, dt, reduction, weighted):
    rng, x, y, w = _data(2)
    w = w if weighted else None
    logp = np.array([_log_softmax_row(list(r)) for r in x]).astype(dt)
    g = rng.standard_normal(len(y)) if reduction == "none" else np.array(0.6)
    out, grad = _graph_grad(lambda t: F.nll_loss(t, y, weight=w, reduction=reduction), logp, g)
    lp64 = logp.astype(np.float64)
    np.testing.assert_allclose(out, def_nll(lp64, y, w, reduction), **_tol(dt))
    np.testing.assert_allclose(grad, numeric_grad(lambda v: def_nll(v, y, w, reduction), lp64, g), rtol=1e-5, atol=1e-7)
    # log_softmax + nll_loss == cross_entropy
    ce = F.cross_entropy(tensor(x.astype(dt)), y, weight=w, reduction=reduction).data
    np.testing.assert_allclose(nn.NLLLoss(weight=w, reduction=reduction)(F.log_softmax(tensor(x.astype(dt)), dim=1), y).data,
                               ce, rtol=1e-5 if dt == np.float32 else 1e-12)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", [{}, {"p": 2}, {"margin": 0.4, "normalization": "sum"},
                                  {"p": 2, "margin": 2.0, "normalization": "sum"}, {"weight": True}])
def test_multi_margin_loss(backend, dt, reduction, opts):
    rng, x, y, w = _data(3)
    opts = dict(opts)
    if opts.pop("weight", False):
        opts["weight"] = w
    g = rng.standard_normal(len(y)) if reduction == "none" else np.array(1.3)
    out, grad = _graph_grad(lambda t: F.multi_margin_loss(t, y, reduction=reduction, **opts), x.astype(dt), g)
    x64 = x.astype(dt).astype(np.float64)
    np.testing.assert_allclose(out, def_multi_margin(x64, y, reduction=reduction, **opts), **_tol(dt))
    expected = numeric_grad(lambda v: def_multi_margin(v, y, reduction=reduction, **opts), x64, g)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
    mod = nn.MultiMarginLoss(reduction=reduction, **opts)
    np.testing.assert_array_equal(mod(tensor(x.astype(dt)), y).data, out)


def test_multi_margin_normalizations_on_the_classic_svm_example(backend):
    """Scores (3.2, 5.1, -1.7) with correct class 0: hinge terms max(0, 5.1 - 3.2 + 1) = 2.9 and
    max(0, -1.7 - 3.2 + 1) = 0. The SVM loss ("sum") is 2.9; PyTorch's MultiMarginLoss divides by C = 3."""
    s = tensor(np.array([[3.2, 5.1, -1.7]]))
    assert F.multi_margin_loss(s, np.array([0]), normalization="sum").item() == pytest.approx(2.9)
    assert F.multi_margin_loss(s, np.array([0])).item() == pytest.approx(2.9 / 3)
    s.requires_grad_()
    F.multi_margin_loss(s, np.array([0]), normalization="sum").backward()
    np.testing.assert_allclose(s.grad, [[-1.0, 1.0, 0.0]])


def test_multi_margin_gradient_is_zero_at_the_hinge(backend):
    # z = margin - s_y + s_j = 1 - 1 + 0 = 0 for j = 1: inactive (gradient 0); j = 2: z = -3
    s = tensor(np.array([[1.0, 0.0, -3.0]]), requires_grad=True)
    loss = F.multi_margin_loss(s, np.array([0]), reduction="sum")
    assert loss.item() == 0.0
    loss.backward()
    np.testing.assert_array_equal(s.grad, [[0.0, 0.0, 0.0]])


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_l1_loss(backend, dt, reduction):
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((3, 4)).astype(dt), rng.standard_normal((3, 4)).astype(dt)
    g = rng.standard_normal((3, 4)) if reduction == "none" else np.array(2.0)
    at, bt = tensor(a, requires_grad=True), tensor(b, requires_grad=True)
    out = nn.L1Loss(reduction=reduction)(at, bt)
    out.backward(g.astype(dt))
    np.testing.assert_allclose(out.data, def_l1(a.astype(np.float64), b, reduction), **_tol(dt))
    sign = np.sign(a.astype(np.float64) - b)
    scale = g / a.size if reduction == "mean" else g
    np.testing.assert_allclose(at.grad, sign * scale, **_tol(dt))
    np.testing.assert_allclose(bt.grad, -sign * scale, **_tol(dt))


def test_l1_gradient_is_zero_where_equal(backend):
    a = tensor(np.array([1.0, 2.0, -3.0]), requires_grad=True)
    F.l1_loss(a, tensor(np.array([1.0, 1.0, -2.0])), reduction="sum").backward()
    np.testing.assert_array_equal(a.grad, [0.0, 1.0, -1.0])


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_shape", [None, (3, 4), (4,)])
def test_binary_cross_entropy(backend, dt, reduction, weight_shape):
    rng = np.random.default_rng(6)
    p = (0.02 + 0.96 * rng.random((3, 4))).astype(dt)
    t = rng.random((3, 4)).astype(dt)
    w = None if weight_shape is None else rng.random(weight_shape)
    g = rng.standard_normal((3, 4)) if reduction == "none" else np.array(0.9)
    out, grad = _graph_grad(lambda v: F.binary_cross_entropy(v, tensor(t), weight=w, reduction=reduction), p, g)
    p64, t64 = p.astype(np.float64), t.astype(np.float64)
    np.testing.assert_allclose(out, def_bce(p64, t64, w, reduction), **_tol(dt))
    expected = numeric_grad(lambda v: def_bce(v, t64, w, reduction), p64, g)
    np.testing.assert_allclose(grad, expected, rtol=1e-5 if dt == np.float64 else 1e-4, atol=1e-7)
    np.testing.assert_array_equal(nn.BCELoss(weight=w, reduction=reduction)(tensor(p), tensor(t)).data, out)


@pytest.mark.parametrize("dt", DTYPES)
def test_binary_cross_entropy_clamps_logs_at_minus_100(backend, dt):
    p = np.array([0.0, 1.0, 0.0, 1.0, 0.5], dtype=dt)
    t = np.array([0.0, 1.0, 1.0, 0.0, 0.25], dtype=dt)
    loss, grad = _graph_grad(lambda v: F.binary_cross_entropy(v, tensor(t), reduction="none"), p)
    np.testing.assert_allclose(loss, [0.0, 0.0, 100.0, 100.0, math.log(2)], rtol=1e-6)
    # PyTorch's gradient (p - t) / max(p (1 - p), 1e-12): finite at the ends
    np.testing.assert_allclose(grad, [0.0, 0.0, -1e12, 1e12, 1.0], rtol=1e-6)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted,pos", [(False, False), (True, False), (False, True), (True, True)])
def test_binary_cross_entropy_with_logits(backend, dt, reduction, weighted, pos):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((5, 4)) * 3).astype(dt)
    t = rng.random((5, 4)).astype(dt)
    w = rng.random((5, 1)) if weighted else None
    pw = 3 * rng.random(4) if pos else None
    g = rng.standard_normal((5, 4)) if reduction == "none" else np.array(1.1)
    f = lambda v: F.binary_cross_entropy_with_logits(v, tensor(t), weight=w, reduction=reduction,  # noqa: E731
                                                     pos_weight=pw)
    out, grad = _graph_grad(f, x, g)
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    np.testing.assert_allclose(out, def_bce_logits(x64, t64, w, pw, reduction), rtol=2e-5 if dt == np.float32 else 1e-9,
                               atol=1e-6 if dt == np.float32 else 1e-12)
    expected = numeric_grad(lambda v: def_bce_logits(v, t64, w, pw, reduction), x64, g)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)
    mod = nn.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw)
    np.testing.assert_array_equal(mod(tensor(x), tensor(t)).data, out)


@pytest.mark.parametrize("dt", DTYPES)
def test_binary_cross_entropy_with_logits_at_pm_1000(backend, dt):
    x = np.array([-1000.0, -1000.0, 1000.0, 1000.0, -20.0, 0.0], dtype=dt)
    t = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.5], dtype=dt)
    loss, grad = _graph_grad(lambda v: F.binary_cross_entropy_with_logits(v, tensor(t), reduction="none"), x)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss[:4], [0.0, 1000.0, 1000.0, 0.0], rtol=1e-7, atol=0)
    # log(1 + e^-20) ~ 2.06e-9: computed as softplus, not as the difference of two numbers near 20
    np.testing.assert_allclose(loss[4], math.log1p(math.exp(-20.0)), rtol=1e-6)
    np.testing.assert_allclose(loss[5], math.log(2), rtol=1e-6)
    np.testing.assert_array_equal(grad[:4], [0.0, -1.0, 1.0, 0.0])
    loss, _ = _graph_grad(lambda v: F.binary_cross_entropy_with_logits(v, tensor(t), reduction="none",
                                                                       pos_weight=np.full(6, 3.0)), x)
    np.testing.assert_allclose(loss[:4], [0.0, 3000.0, 1000.0, 0.0], rtol=1e-7, atol=0)


@pytest.mark.parametrize("fn,make", [
    (lambda x, y, r: F.cross_entropy(x, y, reduction=r), "labels"),
    (lambda x, y, r: F.multi_margin_loss(x, y, reduction=r), "labels"),
    (lambda x, y, r: F.l1_loss(x, y, reduction=r), "values"),
    (lambda x, y, r: F.mse_loss(x, y, reduction=r), "values"),
    (lambda x, y, r: F.binary_cross_entropy_with_logits(x, y, reduction=r), "probs"),
])
def test_reductions_are_consistent(backend, fn, make):
    rng, x, y, _ = _data(8)
    target = y if make == "labels" else tensor(rng.random(x.shape))
    none = fn(tensor(x), target, "none").data
    assert none.shape == (x.shape[0],) if make == "labels" else x.shape
    assert fn(tensor(x), target, "sum").item() == pytest.approx(none.sum(), rel=1e-12)
    assert fn(tensor(x), target, "mean").item() == pytest.approx(none.mean(), rel=1e-12)


# ----- losses: bad input ------------------------------------------------------------------------------------
def test_loss_errors(backend):
    x = tensor(np.zeros((4, 3)))
    y = np.array([0, 1, 2, 1])
    with pytest.raises(ValueError, match="out of range for 3 classes"):
        F.cross_entropy(x, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="out of range for 3 classes"):
        F.nll_loss(x, np.array([0, -1, 2, 0]))
    with pytest.raises(ValueError, match="out of range for 3 classes"):
        F.multi_margin_loss(x, np.array([0, 1, 2, 7], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        F.cross_entropy(x, np.array([0, 1]))
    with pytest.raises(TypeError, match="labels must be an integer array"):
        F.nll_loss(x, np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"weight has shape \(2,\)"):
        F.cross_entropy(x, y, weight=np.ones(2))
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        F.cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="must be 2-D"):
        F.cross_entropy(tensor(np.zeros((2, 3, 4))), np.array([0, 1]))
    with pytest.raises(TypeError, match="float32 or float64"):
        F.cross_entropy(tensor(np.zeros((4, 3), dtype=np.int64)), y)
    with pytest.raises(TypeError, match="the third argument is the class weight"):
        F.cross_entropy(x, y, "sum")
    with pytest.raises(TypeError, match="first argument of this loss is the weight"):
        nn.CrossEntropyLoss("sum")
    with pytest.raises(ValueError, match="reduction must be"):
        F.nll_loss(x, y, reduction="avg")
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        F.multi_margin_loss(x, y, p=3)
    with pytest.raises(ValueError, match="normalization must be 'classes'"):
        F.multi_margin_loss(x, y, normalization="batch")
    with pytest.raises(ValueError, match=r"has shape \(4, 3\) but target has shape \(3, 4\)"):
        F.l1_loss(x, tensor(np.zeros((3, 4))))
    with pytest.raises(TypeError, match="dtype"):
        F.l1_loss(x, tensor(np.zeros((4, 3), dtype=np.float32)))


def test_binary_cross_entropy_rejects_values_outside_0_1(backend):
    p = tensor(np.array([0.2, 1.5, 0.3]))
    t = tensor(np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]; element \(1,\) is 1.5"):
        F.binary_cross_entropy(p, t)
    with pytest.raises(ValueError, match="probs must lie in"):
        F.binary_cross_entropy(tensor(np.array([0.5, np.nan])), tensor(np.array([0.0, 1.0])))
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
        F.binary_cross_entropy(tensor(np.array([0.5, 0.5])), tensor(np.array([0.0, -0.1])))
    with pytest.raises(ValueError, match="cannot be broadcast"):
        F.binary_cross_entropy(tensor(np.array([0.5, 0.5])), tensor(np.array([0.0, 1.0])), weight=np.ones(3))
    # targets outside [0, 1] are allowed with logits, as in PyTorch
    assert np.isfinite(F.binary_cross_entropy_with_logits(tensor(np.array([0.5])), tensor(np.array([2.0]))).item())


def test_bce_target_requiring_grad_is_refused(backend):
    t = tensor(np.array([0.0, 1.0]), requires_grad=True)
    p = tensor(np.array([0.3, 0.6]), requires_grad=True)
    with pytest.raises(ValueError, match="with respect to the target are not supported"):
        F.binary_cross_entropy(p, t)
    with pytest.raises(ValueError, match="with respect to the target are not supported"):
        F.binary_cross_entropy_with_logits(p, t)
    with fastbp.no_grad():
        assert F.binary_cross_entropy(p, t).item() > 0
    assert F.binary_cross_entropy(p, t.detach()).requires_grad


def test_loss_weights_are_cast_and_get_no_gradient(backend):
    x = tensor(np.zeros((2, 3), dtype=np.float32), requires_grad=True)
    w = tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)  # float64 weight, float32 logits
    loss = F.cross_entropy(x, np.array([0, 2]), weight=w)
    assert loss.dtype == np.float32
    loss.backward()
    assert w.grad is None and x.grad is not None


# ----- regularizers -----------------------------------------------------------------------------------------
def _params(dt=np.float64):
    rng = np.random.default_rng(9)
    a = rng.standard_normal((3, 4)).astype(dt)
    a[0, 0] = 0.0
    return [tensor(a, requires_grad=True), tensor(rng.standard_normal(5).astype(dt), requires_grad=True)]


@pytest.mark.parametrize("dt", DTYPES)
def test_penalties_values_and_gradients(backend, dt):
    for name, fn, l1, l2 in [("l1", lambda ps: F.l1_penalty(ps, 0.3), 0.3, 0.0),
                             ("l2", lambda ps: F.l2_penalty(ps, 0.2), 0.0, 0.2),
                             ("elastic", lambda ps: F.elastic_net_penalty(ps, 0.5, l1_ratio=0.25), 0.125, 0.375)]:
        ps = _params(dt)
        value = fn(ps)
        data = [p.data.astype(np.float64) for p in ps]
        expected = sum(l1 * np.abs(d).sum() + l2 * (d * d).sum() for d in data)
        assert value.shape == () and value.dtype == dt
        assert value.item() == pytest.approx(expected, rel=1e-6 if dt == np.float32 else 1e-12), name
        value.backward()
        for p, d in zip(ps, data):
            np.testing.assert_allclose(p.grad, l1 * np.sign(d) + 2 * l2 * d, rtol=1e-6, atol=1e-7, err_msg=name)
        assert ps[0].grad[0, 0] == 0.0  # sign(0) = 0 for the L1 term


def test_penalties_with_a_model_and_edge_cases(backend):
    fastbp.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    x = tensor(np.random.default_rng(0).standard_normal((5, 4)))
    loss = F.cross_entropy(model(x), np.array([0, 1, 1, 0, 1])) + F.l2_penalty(model.parameters(), 1e-2)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # l2_penalty(coeff=wd/2) adds wd * p to the gradient, as SGD's weight_decay=wd
    p = tensor(np.array([1.0, -2.0, 0.5]), requires_grad=True)
    F.l2_penalty([p], 0.05).backward()
    np.testing.assert_allclose(p.grad, 0.1 * p.data)
    assert F.l1_penalty([], 1.0).item() == 0.0
    assert F.l1_penalty(p, 1.0).item() == pytest.approx(3.5)  # a single tensor is accepted
    with pytest.raises(ValueError, match="coeff must be a finite number >= 0"):
        F.l2_penalty([p], -1.0)
    with pytest.raises(ValueError, match="l1_ratio must be in"):
        F.elastic_net_penalty([p], 1.0, l1_ratio=1.5)
    with pytest.raises(TypeError, match="params must be Tensors"):
        F.l1_penalty([np.ones(3)], 1.0)


# ----- determinism and float32 ----------------------------------------------------------------------------
def test_large_losses_do_not_depend_on_thread_count():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((600, 500)).astype(np.float32)
    t = rng.random((600, 500)).astype(np.float32)
    logits, labels = rng.standard_normal((40000, 10)).astype(np.float32), rng.integers(0, 10, 40000)
    runs = []
    before = fastbp.get_num_threads()
    try:
        for n in (1, 2):
            fastbp.set_num_threads(n)
            runs.append([F.binary_cross_entropy_with_logits(tensor(x), tensor(t)).data,
                         F.l1_loss(tensor(x), tensor(t)).data,
                         F.l2_penalty(tensor(x), 0.1).data,
                         F.cross_entropy(tensor(logits), labels, label_smoothing=0.1).data,
                         F.multi_margin_loss(tensor(logits), labels).data])
    finally:
        fastbp.set_num_threads(before)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_float32_losses_are_close_to_float64(backend):
    rng, x, y, w = _data(12, n=64, c=10)
    x32 = x.astype(np.float32)
    for fn in (lambda v: F.cross_entropy(v, y, weight=w, label_smoothing=0.1),
               lambda v: F.multi_margin_loss(v, y, p=2),
               lambda v: F.binary_cross_entropy_with_logits(v, tensor((x > 0).astype(v.dtype))),
               lambda v: F.l1_loss(v, tensor(np.zeros(x.shape, dtype=v.dtype)))):
        assert fn(tensor(x32)).item() == pytest.approx(fn(tensor(x32.astype(np.float64))).item(), rel=1e-6)


# ----- supplementary: the same definitions checked against torch itself, when installed -----------------------
def test_against_torch(backend):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    rng, x, y, w = _data(13)
    T = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    Y = torch.tensor(y)
    pairs = [
        (F.cross_entropy(tensor(x), y, weight=w, label_smoothing=0.2), tf.cross_entropy(T(x), Y, weight=T(w),
                                                                                        label_smoothing=0.2)),
        (F.nll_loss(F.log_softmax(tensor(x), dim=1), y, weight=w), tf.nll_loss(tf.log_softmax(T(x), 1), Y, weight=T(w))),
        (F.multi_margin_loss(tensor(x), y, p=2, margin=0.7, weight=w),
         tf.multi_margin_loss(T(x), Y, p=2, margin=0.7, weight=T(w))),
        (F.leaky_relu(tensor(x), 0.2), tf.leaky_relu(T(x), 0.2)),
        (F.elu(tensor(x), 1.5), tf.elu(T(x), 1.5)),
    ]
    p, t = 0.05 + 0.9 * rng.random(x.shape), rng.random(x.shape)
    pairs.append((F.binary_cross_entropy(tensor(p), tensor(t), weight=w), tf.binary_cross_entropy(T(p), T(t),
                                                                                                 weight=T(w))))
    pairs.append((F.binary_cross_entropy_with_logits(tensor(x), tensor(t), pos_weight=w),
                  tf.binary_cross_entropy_with_logits(T(x), T(t), pos_weight=T(w))))
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours.data, theirs.numpy(), rtol=1e-12, atol=1e-12)
    # gradients at the kinks
    z = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    tf.elu(z, alpha=2.5).backward()
    zt = tensor(np.zeros(1), requires_grad=True)
    F.elu(zt, 2.5).backward()
    assert zt.grad[0] == z.grad.item()
