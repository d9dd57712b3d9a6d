"""fastbp.gradcheck: its own behaviour (passes, failures and their messages, directions, warnings), and the
check run through the graph-level functional form of every differentiable op in the registry, on both
backends. GRAPH_FORMS maps each registry op to its graph form; a test fails when an op has no entry."""
import re
import warnings
import zlib

import numpy as np
import pytest

import fastbp
from fastbp import Function, GradcheckError, gradcheck, tensor
from fastbp.nn import functional as F
from fastbp.ops.nn import MaskScale
from fastbp.registry import REGISTRY


# ----- gradcheck's own behaviour ---------------------------------------------------------------------------
class Square(Function):
    """x**2 with a backward that can be made wrong by `factor` (correct: 2)."""
    factor = 2.0

    @staticmethod
    def forward(ctx, x):
        ctx.x = x
        return x * x

    @staticmethod
    def backward(ctx, g):
        return (Square.factor * g * ctx.x,)


@pytest.fixture
def wrong_square():
    Square.factor = 1.0
    yield Square
    Square.factor = 2.0


def _x(shape, seed=0, dtype=np.float64, requires_grad=True):
    return tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype), requires_grad=requires_grad)


def test_passes_on_correct_gradients():
    assert gradcheck(Square.apply, [_x((3, 4))]) is True
    assert gradcheck(lambda a, b: (a * a).sum() + F.tanh(a @ b.T).mean(), [_x((3, 4), 1), _x((2, 4), 2)]) is True


def test_reports_input_element_values_and_tolerance(wrong_square):
    with pytest.raises(GradcheckError) as err:
        gradcheck(Square.apply, [_x((3, 4))])
    msg = str(err.value)
    for part in ("input 0 (shape (3, 4))", "12 of 12 checks fail", "worst at element (", "analytic ", "numerical ",
                 "tolerance", "atol=1e-05", "rtol=0.001", "eps=1e-06"):
        assert part in msg, (part, msg)
    # the reported worst element is where |analytic - numerical| = |x| exceeds the tolerance most
    # (the projection v weights the elements: analytic v x, numerical 2 v x)
    x = _x((3, 4)).data
    v = np.random.default_rng(0).standard_normal(x.shape)  # gradcheck's projection for seed=0
    excess = np.abs(v * x) - (1e-5 + 1e-3 * np.abs(2 * v * x))
    worst = np.unravel_index(np.argmax(excess), x.shape)
    assert f"element {tuple(int(k) for k in worst)}" in msg
    found = re.search(r"analytic (\S+) vs numerical (\S+),", msg)
    assert float(found.group(1)) == pytest.approx(v[worst] * x[worst], rel=1e-12)
    assert float(found.group(2)) == pytest.approx(2 * v[worst] * x[worst], rel=1e-6)


def test_return_false_instead_of_raising(wrong_square):
    assert gradcheck(Square.apply, [_x((2, 2))], raise_exception=False) is False


def test_names_the_failing_input(wrong_square):
    # input 1 goes through the wrong op, input 0 through a correct one
    with pytest.raises(GradcheckError, match=r"input 1 \(shape \(3,\)\)") as err:
        gradcheck(lambda a, b: a * 3.0 + Square.apply(b), [_x((3,), 1), _x((3,), 2)])
    assert "input 0" not in str(err.value)


def test_random_directions_for_large_inputs(wrong_square):
    big = _x((40, 30))  # 1200 > max_elements: 16 random directions
    with pytest.raises(GradcheckError, match=r"worst at random direction \d+ of 16"):
        gradcheck(Square.apply, [big])
    with pytest.raises(GradcheckError, match=r"random direction \d+ of 3"):
        gradcheck(Square.apply, [_x((2, 2))], n_directions=3)
    Square.factor = 2.0
    assert gradcheck(Square.apply, [big]) is True
    assert gradcheck(Square.apply, [_x((5,))], n_directions=2) is True


def test_small_errors_within_tolerance_pass_and_larger_fail():
    class Off(Function):
        delta = 0.0

        @staticmethod
        def forward(ctx, x):
            return x * 1.0

        @staticmethod
        def backward(ctx, g):
            return (g * (1.0 + Off.delta),)

    x = _x((4,))
    Off.delta = 1e-5  # relative error 1e-5 < rtol 1e-3
    assert gradcheck(Off.apply, [x])
    Off.delta = 1e-2
    assert not gradcheck(Off.apply, [x], raise_exception=False)
    assert gradcheck(Off.apply, [x], rtol=2e-2)


def test_float32_inputs_warn_and_are_checked_in_float64():
    x32 = _x((3,), dtype=np.float32)
    seen = []

    def fn(t):
        seen.append(t.dtype)
        return F.tanh(t)

    with pytest.warns(UserWarning, match="input 0 has dtype float32; checking gradients on a float64 copy"):
        assert gradcheck(fn, [x32])
    assert set(seen) == {np.dtype(np.float64)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gradcheck(F.tanh, [_x((3,))])


def test_leaves_the_callers_tensors_alone():
    x = _x((2, 3))
    before = x.data.copy()
    gradcheck(F.sigmoid, [x])
    assert x.grad is None
    np.testing.assert_array_equal(x.data, before)


def test_constants_labels_and_tuple_outputs():
    logits = _x((4, 3))
    labels = np.array([0, 2, 1, 1])
    assert gradcheck(lambda z, y: F.cross_entropy(z, y), [logits, labels])
    const = _x((4, 3), seed=5, requires_grad=False)
    assert gradcheck(lambda z, c: (z * c, F.relu(z + 3.0)), [logits, const])
    # an output that does not depend on the input: analytic and numerical gradients are both zero
    assert gradcheck(lambda z, c: c * 2.0, [logits, const])


def test_a_detached_path_is_caught():
    x = _x((3,))
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda t: tensor(t.data * 2.0), [x])


def test_bad_arguments():
    with pytest.raises(ValueError, match="no input is a floating-point Tensor with requires_grad=True"):
        gradcheck(F.tanh, [_x((2,), requires_grad=False)])
    with pytest.raises(TypeError, match="must return a Tensor"):
        gradcheck(lambda t: t.data, [_x((2,))])
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        gradcheck(F.tanh, [_x((2,))], eps=0)
    with pytest.raises(ValueError, match="n_directions"):
        gradcheck(F.tanh, [_x((2,))], n_directions=0)
    with pytest.raises(TypeError, match="callable"):
        gradcheck(3, [_x((2,))])


def test_seed_makes_failures_reproducible(wrong_square):
    msgs = []
    for _ in range(2):
        with pytest.raises(GradcheckError) as err:
            gradcheck(Square.apply, [_x((30, 30))], seed=4)
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1]


# ----- every differentiable op in the registry, through its graph-level form ---------------------------------
def _matmul(a, b, trans_a=False, trans_b=False):
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def _penalty(p, l1=0.0, l2=0.0):
    return F.l1_penalty(p, l1) + F.l2_penalty(p, l2)


class FusedCrossEntropy(Function):
    """cross_entropy_fused as a graph op (the form a captured step runs): the loss from the fused kernel, and
    as gradient the fused kernel's dx for the incoming gradient."""

    @staticmethod
    def forward(ctx, logits, labels, reduction="mean", weight=None, label_smoothing=0.0):
        g = np.ones(len(labels), logits.dtype) if reduction == "none" else 1.0
        ctx.args = (logits, labels, reduction, weight, label_smoothing)
        return fastbp._backend.current.cross_entropy_fused(logits, labels, g, reduction, weight, label_smoothing)[0]

    @staticmethod
    def backward(ctx, g):
        logits, labels, reduction, weight, label_smoothing = ctx.args
        return (fastbp._backend.current.cross_entropy_fused(logits, labels, g, reduction, weight, label_smoothing)[2],
                None)


# registry op name -> graph-level form, called as form(*inputs, **case.params)
GRAPH_FORMS = {
    "linear": lambda x, w, b: F.linear(x, w, b),
    "linear_nobias": lambda x, w: F.linear(x, w),
    "linear_relu": lambda x, w, b: F.relu(F.linear(x, w, b)),  # what a captured step fuses into one call
    "matmul": _matmul,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
    "softmax": lambda x, axis=-1: F.softmax(x, axis),
    "log_softmax": lambda x, axis=-1: F.log_softmax(x, axis),
    "maxout": F.maxout,
    "cross_entropy": F.cross_entropy,
    "cross_entropy_fused": lambda x, y, **p: FusedCrossEntropy.apply(x, y, **p),
    "nll": F.nll_loss,
    "multi_margin": F.multi_margin_loss,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "bce": F.binary_cross_entropy,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
    "norm_penalty": _penalty,
    "conv2d": lambda x, w, b, **p: F.conv2d(x, w, b, **p),
    "conv2d_nobias": lambda x, w, **p: F.conv2d(x, w, None, **p),
    "max_pool2d": F.max_pool2d,
    "avg_pool2d": F.avg_pool2d,
    "global_avg_pool2d": F.global_avg_pool2d,
    "batch_norm_train": lambda x, w, b, rm, rv, **p: F.batch_norm(x, rm.data.copy(), rv.data.copy(), w, b, True, **p),
    "batch_norm_eval": lambda x, w, b, rm, rv, **p: F.batch_norm(x, rm, rv, w, b, False, **p),
    "batch_norm_noaffine": lambda x, **p: F.batch_norm(x, None, None, None, None, True, **p),
    # what a captured step fuses into one call each way
    "batch_norm_relu_train": lambda x, w, b, rm, rv, **p: F.relu(F.batch_norm(x, rm.data.copy(), rv.data.copy(), w, b,
                                                                              True, **p)),
    "batch_norm_relu_eval": lambda x, w, b, rm, rv, **p: F.relu(F.batch_norm(x, rm, rv, w, b, False, **p)),
    "dropout_mask_scale": lambda x, mask, scale: MaskScale.apply(x, mask=mask, scale=scale),  # F.dropout's op
}

DIFFERENTIABLE = [s for s in REGISTRY if s.kind == "op"]
MAX_CASES = 10      # per op: one sample per parameter variant, plus a non-contiguous one when the op has it
MAX_ELEMENTS = 400  # keep the finite differences cheap


def test_every_differentiable_registry_op_has_a_graph_form():
    names = {s.name for s in DIFFERENTIABLE}
    missing = sorted(names - set(GRAPH_FORMS))
    assert not missing, f"registry ops without a graph form in tests/test_gradcheck.py GRAPH_FORMS: {missing}"
    stale = sorted(set(GRAPH_FORMS) - names)
    assert not stale, f"GRAPH_FORMS names ops the registry does not have: {stale}"


def _size(case):
    return sum(np.size(x) for x in case.inputs if isinstance(x, np.ndarray) and x.dtype.kind == "f")


def _variant(case):
    """What distinguishes a sample beyond its shape: its parameters (arrays by presence only)."""
    return tuple(sorted((k, "array" if isinstance(v, np.ndarray) else repr(v)) for k, v in case.params.items()))


def _selected_cases(spec):
    """Small samples of one op, one per parameter variant (smallest first, but samples of fewer than 10
    values only when nothing larger has that variant), plus a non-contiguous one."""
    rng = np.random.default_rng(zlib.crc32(f"gradcheck/{spec.name}".encode()))
    small = [c for c in spec.samples(rng, np.dtype(np.float64)) if c.gradcheck and _size(c) <= MAX_ELEMENTS]
    chosen, variants = [], set()
    for c in sorted(small, key=lambda c: (_size(c) < 10, _size(c))):
        if _variant(c) not in variants and len(chosen) < MAX_CASES:
            variants.add(_variant(c))
            chosen.append(c)
    chosen += [c for c in small if "noncontig" in c.id and c not in chosen][:1]
    return chosen


def _params():
    out = []
    for spec in DIFFERENTIABLE:
        if spec.name not in GRAPH_FORMS:
            continue
        for case in _selected_cases(spec):
            out.append(pytest.param(spec, case, id=f"{spec.name}-{case.id}"))
    return out


@pytest.mark.parametrize("backend_name", ["compiled", "reference"])
@pytest.mark.parametrize("spec,case", _params())
def test_gradcheck_through_the_graph(spec, case, backend_name):
    form = GRAPH_FORMS[spec.name]
    inputs = []
    for k, x in enumerate(case.inputs):
        if k in spec.diff_inputs:
            inputs.append(tensor(x, requires_grad=True))
        elif isinstance(x, np.ndarray) and x.dtype.kind == "f":
            inputs.append(tensor(x))  # a float constant (a regression target)
        else:
            inputs.append(x)  # integer labels stay arrays
    with fastbp.backend(backend_name):
        assert gradcheck(lambda *ts: form(*ts, **case.params), inputs)


def test_every_op_is_checked_on_at_least_one_case():
    unchecked = [s.name for s in DIFFERENTIABLE if not _selected_cases(s)]
    assert not unchecked, f"no small gradcheck-able sample for: {unchecked}"
