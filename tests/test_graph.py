"""The graph layer: Tensor API, gradients through arithmetic (with broadcasting), fan-out accumulation,
deterministic order, freeing, no_grad, and PyTorch's error for backward() on a non-scalar."""
import numpy as np
import pytest

import fastbp
from fastbp import Tensor, tensor


def numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (f(xp) - f(xm)) / (2 * eps)
    return g


def test_tensor_basics():
    t = tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    assert t.dtype == np.float32 and t.shape == (2, 2) and t.requires_grad and t.grad is None
    assert tensor(np.zeros(3)).dtype == np.float64  # float ndarrays keep their dtype
    assert tensor([1, 2]).dtype.kind == "i"          # integer data stays integer (labels)
    assert tensor([1.0], dtype=np.float64).dtype == np.float64
    assert t.numpy() is t.data
    assert t.sum().item() == 10.0
    d = (t * 2).detach()
    assert not d.requires_grad and d.is_leaf
    with pytest.raises(TypeError):
        tensor([1, 2], requires_grad=True)
    with pytest.raises(ValueError):
        t.item()


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "radd", "rsub", "rmul", "rdiv", "neg", "pow", "matmul",
                                "sum_axis", "mean", "mean_axis", "reshape", "T", "transpose", "index", "exp", "log",
                                "abs"])
def test_arithmetic_gradients_match_central_differences(op):
    rng = np.random.default_rng(0)
    a0 = rng.uniform(0.5, 2.0, (3, 4))
    b0 = rng.uniform(0.5, 2.0, (1, 4))  # broadcasts along the first axis
    m0 = rng.standard_normal((4, 5))
    fns = {
        "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b, "radd": lambda a, b: 2.0 + a, "rsub": lambda a, b: 2.0 - a,
        "rmul": lambda a, b: 3.0 * a, "rdiv": lambda a, b: 1.0 / a, "neg": lambda a, b: -a,
        "pow": lambda a, b: a ** 3, "matmul": lambda a, b: a @ m0, "sum_axis": lambda a, b: a.sum(axis=1),
        "mean": lambda a, b: a.mean(), "mean_axis": lambda a, b: a.mean(axis=0, keepdims=True),
        "reshape": lambda a, b: a.reshape(2, 6), "T": lambda a, b: a.T, "transpose": lambda a, b: a.transpose(1, 0),
        "index": lambda a, b: a[1:, ::2], "exp": lambda a, b: a.exp() if isinstance(a, Tensor) else np.exp(a),
        "log": lambda a, b: a.log() if isinstance(a, Tensor) else np.log(a),
        "abs": lambda a, b: (a - 1.0).abs() if isinstance(a, Tensor) else np.abs(a - 1.0),
    }
    f = fns[op]
    W = rng.standard_normal(np.shape(f(a0, b0)))

    a = tensor(a0, requires_grad=True)
    b = tensor(b0, requires_grad=True)
    out = f(a, b)
    (out * W).sum().backward()
    ga = numeric_grad(lambda x: float(np.sum(np.asarray(f(x, b0)) * W)), a0)
    np.testing.assert_allclose(a.grad, ga, rtol=1e-6, atol=1e-8)
    if op in ("add", "sub", "mul", "div"):
        gb = numeric_grad(lambda x: float(np.sum(np.asarray(f(a0, x)) * W)), b0)
        np.testing.assert_allclose(b.grad, gb, rtol=1e-6, atol=1e-8)
        assert b.grad.shape == b0.shape


def test_fan_out_accumulates_and_residual():
    x = tensor(np.array([[1.0, -2.0, 3.0]]), requires_grad=True)
    y = x * x + x           # x used three times
    z = y + x.relu()        # residual-style reuse
    z.sum().backward()
    expected = 2 * x.data + 1 + (x.data > 0)
    np.testing.assert_allclose(x.grad, expected)


def test_grad_accumulates_across_backward_calls_until_zeroed():
    w = tensor(np.ones(3), requires_grad=True)
    (w * 2).sum().backward()
    (w * 3).sum().backward()
    np.testing.assert_allclose(w.grad, 5 * np.ones(3))
    w.grad = None
    (w * 4).sum().backward()
    np.testing.assert_allclose(w.grad, 4 * np.ones(3))


def test_leaf_grads_are_not_aliased():
    a = tensor(np.ones(3), requires_grad=True)
    b = tensor(np.ones(3), requires_grad=True)
    (a + b).sum().backward()
    a.grad[0] = 100.0
    assert b.grad[0] == 1.0


@pytest.mark.parametrize("make", [lambda g: g, lambda g: g[:, ::2], lambda g: g.reshape(2, 4, 3)[1]],
                         ids=["whole", "strided_view", "reshaped_view"])
def test_backward_with_a_given_gradient_never_aliases_or_changes_it(make):
    # backward(grad) does not copy the caller's array; the engine must then neither write into it nor
    # store it (or a view of it) in a leaf's .grad
    base = np.arange(24.0).reshape(4, 6)
    g = make(base)
    before = base.copy()
    x = tensor(np.ones(g.shape), requires_grad=True)
    w = tensor(np.ones(g.shape), requires_grad=True)
    (x + w).backward(g)  # Add hands the incoming gradient to both inputs unchanged
    assert not np.shares_memory(x.grad, base) and not np.shares_memory(w.grad, base)
    x.grad += 1
    w.grad *= 3
    np.testing.assert_array_equal(base, before)
    np.testing.assert_array_equal(x.grad, g + 1)
    leaf = tensor(np.ones(g.shape), requires_grad=True)
    leaf.backward(g)  # a leaf as the root
    assert not np.shares_memory(leaf.grad, base)
    np.testing.assert_array_equal(leaf.grad, g)


def test_backward_requires_grad_for_non_scalar():
    x = tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="scalar"):
        y.backward()
    y.backward(np.ones((2, 3)))
    np.testing.assert_allclose(x.grad, 2 * np.ones((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        (x * 2).backward(np.ones((3, 2)))


def test_saved_arrays_are_freed_and_second_backward_raises():
    x = tensor(np.ones(4), requires_grad=True)
    y = (x * x).sum()
    node = y._node
    y.backward()
    assert not node.__dict__  # saved arrays and input references released
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()
    x.grad = None
    y2 = (x * x).sum()
    y2.backward(retain_graph=True)
    y2.backward()
    np.testing.assert_allclose(x.grad, 4 * np.ones(4))


def test_no_grad_records_nothing():
    x = tensor(np.ones(3), requires_grad=True)
    with fastbp.no_grad():
        y = x * 2
        assert not fastbp.is_grad_enabled()
    assert fastbp.is_grad_enabled()
    assert not y.requires_grad and y._node is None

    @fastbp.no_grad()
    def f(t):
        return t * 3
    assert not f(x).requires_grad


def test_deep_graph_has_no_recursion_limit():
    x = tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.ones(2))


def test_backward_order_is_deterministic():
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((5, 5)).astype(np.float32)
    results = []
    for _ in range(3):
        x = tensor(x0, requires_grad=True)
        h = [x * float(i) for i in range(1, 8)]
        s = h[0]
        for t in h[1:]:
            s = s + t @ x
        s.sum().backward()
        results.append(x.grad.copy())
    for r in results[1:]:
        np.testing.assert_array_equal(results[0], r)


def test_float32_stays_float32_through_graph():
    x = tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    y = ((x * 2.5 + 1.0) / 3.0 - 0.5) ** 2
    assert y.dtype == np.float32
    y.mean().backward()
    assert x.grad.dtype == np.float32


def test_matmul_ranks():
    rng = np.random.default_rng(1)
    a0, v0 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    a = tensor(a0, requires_grad=True)
    v = tensor(v0, requires_grad=True)
    (a @ v).sum().backward()
    np.testing.assert_allclose(a.grad, np.tile(v0, (3, 1)))
    np.testing.assert_allclose(v.grad, a0.sum(axis=0))
    bat = tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
    m = tensor(rng.standard_normal((4, 5)), requires_grad=True)
    (bat @ m).sum().backward()
    np.testing.assert_allclose(m.grad, bat.data.sum(axis=(0, 1))[:, None] * np.ones((1, 5)))


def test_custom_function():
    class Cube(fastbp.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.x = x
            return x ** 3

        @staticmethod
        def backward(ctx, g):
            return (3 * ctx.x ** 2 * g,)

    x = tensor(np.array([1.0, 2.0]), requires_grad=True)
    Cube.apply(x).sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 12.0])
