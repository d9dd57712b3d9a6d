"""Registry entries for csrc/losses.pyx."""
import numpy as np

from . import Case, OpSpec, away_from, noncontig, randn
from .activations import tiled

REDUCTIONS = ("mean", "sum", "none")


def _shape_id(s):
    return "x".join(map(str, s))


def _class_weight(rng, c, dt):
    return (0.2 + 2 * rng.random(c)).astype(dt)


# ----- row losses: logits/scores (N, C) with integer labels ---------------------------------------------
def _ce_samples(rng, dt):
    cases = []
    for n, c in [(1, 1), (1, 10), (5, 3), (64, 10), (9, 33)]:
        for red in REDUCTIONS:
            cases.append(Case(f"n{n}_c{c}_{red}", (randn(rng, (n, c), dt, 2.0), rng.integers(0, c, n)),
                              {"reduction": red}))
    for n, c, reds in [(5, 3, REDUCTIONS), (9, 33, ("mean", "none")), (1, 4, ("mean",))]:
        for red in reds:
            x, y = randn(rng, (n, c), dt, 2.0), rng.integers(0, c, n)
            w = _class_weight(rng, c, dt)
            cases.append(Case(f"n{n}_c{c}_{red}_weight", (x, y), {"reduction": red, "weight": w}))
            cases.append(Case(f"n{n}_c{c}_{red}_smooth", (x, y), {"reduction": red, "label_smoothing": 0.1}))
            cases.append(Case(f"n{n}_c{c}_{red}_weight_smooth", (x, y),
                              {"reduction": red, "weight": w, "label_smoothing": 0.25}))
    x = randn(rng, (4, 6), dt)
    cases.append(Case("noncontig", (noncontig(x), rng.integers(0, 6, 4).astype(np.int32))))
    cases.append(Case("noncontig_weight", (noncontig(x), rng.integers(0, 6, 4).astype(np.uint8)),
                      {"weight": noncontig(_class_weight(rng, 6, dt)), "label_smoothing": 1.0}))
    big = np.array([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]], dtype=dt)
    cases.append(Case("large_logits", (big, np.array([0, 2])), gradcheck=False))
    cases.append(Case("large_logits_smooth", (big, np.array([0, 2])),
                      {"label_smoothing": 0.1, "weight": np.array([1.0, 2.0, 0.5], dtype=dt)}, gradcheck=False))
    cases.append(Case("large", (tiled(lambda s: randn(rng, s, dt, 2.0), (30000, 10)), rng.integers(0, 10, 30000)),
                      {"label_smoothing": 0.05}))
    # PyTorch's values: a -inf target logit gives +inf; a -inf elsewhere drops out without smoothing (its
    # smoothing term is absent, not 0 * inf) and gives +inf with it; a NaN logit makes its row NaN
    nf = np.array([[-np.inf, 1.0, 2.0], [0.5, -np.inf, 2.0], [np.nan, 0.0, 1.0], [1.0, 2.0, 0.0]], dtype=dt)
    for ls in (0.0, 0.1):
        cases.append(Case(f"nonfinite_smooth{ls:g}", (nf, np.array([0, 0, 1, 2])),
                          {"reduction": "none", "label_smoothing": ls}, gradcheck=False))
    return cases


def _fused_grad(x, reduction):
    """A fixed incoming gradient for cross_entropy_fused's forward: per row for "none", else a scalar."""
    if reduction == "none":
        return np.linspace(-1.5, 2.0, x.shape[0]).astype(x.dtype)
    return 0.75


def _nll_samples(rng, dt):
    def logp(n, c):
        x = rng.standard_normal((n, c)) * 2
        x = x - x.max(axis=1, keepdims=True)
        return (x - np.log(np.exp(x).sum(axis=1, keepdims=True))).astype(dt)
    cases = []
    for n, c in [(1, 1), (5, 3), (64, 10), (9, 33)]:
        for red in REDUCTIONS:
            cases.append(Case(f"n{n}_c{c}_{red}", (logp(n, c), rng.integers(0, c, n)), {"reduction": red}))
            cases.append(Case(f"n{n}_c{c}_{red}_weight", (logp(n, c), rng.integers(0, c, n)),
                              {"reduction": red, "weight": _class_weight(rng, c, dt)}))
    cases.append(Case("noncontig", (noncontig(logp(4, 6)), rng.integers(0, 6, 4).astype(np.int16)),
                      {"weight": noncontig(_class_weight(rng, 6, dt))}))
    return cases


MM_SETTINGS = [
    {},
    {"p": 2},
    {"margin": 0.5, "normalization": "sum"},
    {"p": 2, "margin": 2.0, "normalization": "sum"},
    {"margin": 0.0},
]


def _mm_samples(rng, dt):
    cases = []
    for i, s in enumerate(MM_SETTINGS):
        for red in REDUCTIONS:
            cases.append(Case(f"n6_c5_cfg{i}_{red}", (randn(rng, (6, 5), dt), rng.integers(0, 5, 6)),
                              dict(s, reduction=red)))
    for n, c in [(1, 1), (1, 4), (64, 10)]:
        cases.append(Case(f"n{n}_c{c}", (randn(rng, (n, c), dt), rng.integers(0, c, n))))
        cases.append(Case(f"n{n}_c{c}_cfg3_none", (randn(rng, (n, c), dt), rng.integers(0, c, n)),
                          dict(MM_SETTINGS[3], reduction="none")))
    for n, c in [(6, 5), (64, 10)]:
        cases.append(Case(f"n{n}_c{c}_weight", (randn(rng, (n, c), dt), rng.integers(0, c, n)),
                          {"weight": _class_weight(rng, c, dt), "p": 2}))
    x = randn(rng, (4, 6), dt)
    cases.append(Case("noncontig", (noncontig(x), rng.integers(0, 6, 4)),
                      {"weight": noncontig(_class_weight(rng, 6, dt))}))
    # margins exactly at the hinge (z == 0): gradient 0 there, in both backends
    cases.append(Case("at_hinge", (np.array([[1.0, 0.0, -3.0], [0.5, 0.5, 2.0]], dtype=dt), np.array([0, 2])),
                      {"margin": 1.0}, gradcheck=False))
    cases.append(Case("extremes", (np.array([[1000.0, -1000.0, 0.0]], dtype=dt), np.array([1])), gradcheck=False))
    # PyTorch's rule: a term counts only where margin - s_y + s_j > 0, so a NaN score contributes nothing
    nf = np.array([[np.nan, 2.0, 0.5], [1.0, np.nan, 0.5], [np.inf, 0.0, 1.0], [0.0, -np.inf, 1.0],
                   [0.0, np.inf, 1.0]], dtype=dt)
    cases.append(Case("nonfinite", (nf, np.array([0, 0, 0, 0, 0])), {"reduction": "none"}, gradcheck=False))
    cases.append(Case("large", (tiled(lambda s: randn(rng, s, dt), (30000, 10)), rng.integers(0, 10, 30000)), {"p": 2}))
    return cases


# ----- elementwise losses -------------------------------------------------------------------------------
ELEM_SHAPES = [(1,), (5, 3), (2, 3, 4), (128, 10)]


def _elem_cases(shapes=ELEM_SHAPES):
    """(shape, reduction) pairs: every reduction on two shapes, "mean" on the others."""
    return [(s, red) for s in shapes for red in (REDUCTIONS if s in ((5, 3), (2, 3, 4)) else ("mean",))]
LARGE = (600, 500)  # 300,000 elements: above PARALLEL_MIN (tiled from a small random block, see `tiled`)
BLOCK_PAIR = 4001  # prime, and not BLOCK, so pred and target tiles do not repeat in step


def _mse_samples(rng, dt):
    cases = []
    for s, red in _elem_cases():
        cases.append(Case(f"{_shape_id(s)}_{red}", (randn(rng, s, dt), randn(rng, s, dt)), {"reduction": red}))
    cases.append(Case("noncontig", (noncontig(randn(rng, (3, 4), dt)), randn(rng, (3, 4), dt))))
    cases.append(Case("large", (tiled(lambda s: randn(rng, s, dt), LARGE), tiled(lambda s: randn(rng, s, dt), LARGE))))
    return cases


def _l1_pair(rng, s, dt):
    # pred - target kept away from 0, where |d| has its kink
    t = randn(rng, s, dt)
    return (t.astype(np.float64) + away_from(rng, s, np.float64)).astype(dt), t


def _l1_samples(rng, dt):
    cases = []
    for s, red in _elem_cases():
        cases.append(Case(f"{_shape_id(s)}_{red}", _l1_pair(rng, s, dt), {"reduction": red}))
    p, t = _l1_pair(rng, (3, 4), dt)
    cases.append(Case("noncontig", (noncontig(p), noncontig(t))))
    p, t = _l1_pair(rng, (BLOCK_PAIR,), dt)
    cases.append(Case("large", (np.resize(p, LARGE), np.resize(t, LARGE))))
    eq = np.array([1.0, -2.0, 0.0, 3.0], dtype=dt)
    cases.append(Case("at_kink", (eq, np.array([1.0, 0.0, 0.0, 3.5], dtype=dt)), {"reduction": "sum"}, gradcheck=False))
    return cases


def _probs(rng, s, dt):
    return (0.05 + 0.9 * rng.random(s)).astype(dt)


def _bce_samples(rng, dt):
    cases = []
    for s, red in _elem_cases():
        cases.append(Case(f"{_shape_id(s)}_{red}", (_probs(rng, s, dt), rng.random(s).astype(dt)), {"reduction": red}))
    cases.append(Case("weight_full", (_probs(rng, (5, 3), dt), rng.random((5, 3)).astype(dt)),
                      {"weight": rng.random((5, 3)).astype(dt)}))
    cases.append(Case("weight_broadcast_none", (_probs(rng, (5, 3), dt), rng.random((5, 3)).astype(dt)),
                      {"weight": rng.random(3).astype(dt), "reduction": "none"}))
    cases.append(Case("hard_targets", (_probs(rng, (4, 4), dt), rng.integers(0, 2, (4, 4)).astype(dt))))
    cases.append(Case("noncontig", (noncontig(_probs(rng, (3, 4), dt)), noncontig(rng.random((3, 4)).astype(dt)))))
    cases.append(Case("large", (tiled(lambda s: _probs(rng, s, dt), LARGE),
                                tiled(lambda s: rng.random(s).astype(dt), LARGE))))
    # probabilities at 0 and 1: log clamped at -100, gradient (p - t) / max(p (1 - p), 1e-12)
    edge = np.array([0.0, 1.0, 0.0, 1.0, 1e-30, 1 - 1e-7], dtype=dt)
    cases.append(Case("clamped", (edge, np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0], dtype=dt)), {"reduction": "none"},
                      gradcheck=False))
    return cases


def _bcel_samples(rng, dt):
    cases = []
    for s, red in _elem_cases():
        cases.append(Case(f"{_shape_id(s)}_{red}", (randn(rng, s, dt, 3.0), rng.random(s).astype(dt)),
                          {"reduction": red}))
    cases.append(Case("weight_pos_weight", (randn(rng, (6, 4), dt, 3.0), rng.random((6, 4)).astype(dt)),
                      {"weight": rng.random((6, 1)).astype(dt), "pos_weight": (3 * rng.random(4)).astype(dt)}))
    cases.append(Case("pos_weight_none", (randn(rng, (6, 4), dt, 3.0), rng.integers(0, 2, (6, 4)).astype(dt)),
                      {"pos_weight": (3 * rng.random(4)).astype(dt), "reduction": "none"}))
    cases.append(Case("noncontig", (noncontig(randn(rng, (3, 4), dt)), noncontig(rng.random((3, 4)).astype(dt))),
                      {"pos_weight": noncontig((3 * rng.random(4)).astype(dt))}))
    cases.append(Case("large", (tiled(lambda s: randn(rng, s, dt, 3.0), LARGE),
                                tiled(lambda s: rng.random(s).astype(dt), LARGE))))
    big = np.array([-1000.0, -1000.0, 1000.0, 1000.0, -30.0, 30.0, 0.0], dtype=dt)
    cases.append(Case("extremes", (big, np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.5], dtype=dt)),
                      {"reduction": "none", "pos_weight": np.full(7, 2.0, dtype=dt)}, gradcheck=False))
    # PyTorch's values, from (1 - t) x + (1 + (pw - 1) t) softplus(-x): x = +inf, t < 1: +inf; wherever a
    # 0 meets an infinity (x = +inf, t = 1; x = -inf): NaN; a NaN logit: NaN
    x = np.array([np.inf, np.inf, np.inf, -np.inf, -np.inf, -np.inf, np.nan, 1.0], dtype=dt)
    t = np.array([0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 0.5, 0.5], dtype=dt)
    cases.append(Case("nonfinite", (x, t), {"reduction": "none"}, gradcheck=False))
    cases.append(Case("nonfinite_pos_weight", (x, t), {"reduction": "none", "pos_weight": np.full(8, 2.0, dtype=dt)},
                      gradcheck=False))
    return cases


# ----- penalties ----------------------------------------------------------------------------------------
PENALTY_SETTINGS = [{"l1": 0.1}, {"l2": 0.3}, {"l1": 0.05, "l2": 0.5}, {}]


def _penalty_samples(rng, dt):
    cases = []
    for s in [(1,), (7, 3), (2, 3, 4)]:
        for i, st in enumerate(PENALTY_SETTINGS):
            cases.append(Case(f"{_shape_id(s)}_cfg{i}", (away_from(rng, s, dt),), dict(st)))
    cases.append(Case("noncontig", (noncontig(away_from(rng, (3, 4), dt)),), {"l1": 0.2, "l2": 0.1}))
    cases.append(Case("large", (tiled(lambda s: away_from(rng, s, dt), LARGE),), {"l1": 1e-3, "l2": 1e-2}))
    cases.append(Case("at_zero", (np.array([0.0, -0.0, 1.0, -2.0], dtype=dt),), {"l1": 0.5, "l2": 0.25},
                      gradcheck=False))
    return cases


def _pair_loss(name, samples, **extra):
    """An elementwise (pred, target) loss whose kernels take (pred, target, reduction, **options)."""
    fwd_name, bwd_name = f"{name}_forward", f"{name}_backward"
    return OpSpec(
        name=name,
        kernels=(fwd_name, bwd_name),
        forward=lambda B, p, t, reduction="mean", **kw: getattr(B, fwd_name)(p, t, reduction, **kw),
        backward=lambda B, g, out, p, t, reduction="mean", **kw: (getattr(B, bwd_name)(g, p, t, reduction, **kw),),
        samples=samples,
        **extra,
    )


SPECS = [
    OpSpec(
        name="cross_entropy",
        kernels=("cross_entropy_forward", "cross_entropy_backward"),
        forward=lambda B, x, y, reduction="mean", weight=None, label_smoothing=0.0:
            B.cross_entropy_forward(x, y, reduction, weight, label_smoothing),
        backward=lambda B, g, out, x, y, reduction="mean", weight=None, label_smoothing=0.0:
            (B.cross_entropy_backward(g, x, y, out[1], reduction, weight, label_smoothing),),
        samples=_ce_samples,
    ),
    # forward and backward in one kernel: the forward test compares (loss, lse, dx) for a fixed incoming
    # gradient, the backward tests take dx for theirs
    OpSpec(
        name="cross_entropy_fused",
        kernels=("cross_entropy_fused",),
        forward=lambda B, x, y, reduction="mean", weight=None, label_smoothing=0.0:
            B.cross_entropy_fused(x, y, _fused_grad(x, reduction), reduction, weight, label_smoothing),
        backward=lambda B, g, out, x, y, reduction="mean", weight=None, label_smoothing=0.0:
            (B.cross_entropy_fused(x, y, g, reduction, weight, label_smoothing)[2],),
        samples=_ce_samples,
    ),
    OpSpec(
        name="nll",
        kernels=("nll_forward", "nll_backward"),
        forward=lambda B, x, y, reduction="mean", weight=None: B.nll_forward(x, y, reduction, weight),
        backward=lambda B, g, out, x, y, reduction="mean", weight=None: (B.nll_backward(g, x, y, reduction, weight),),
        samples=_nll_samples,
    ),
    OpSpec(
        name="multi_margin",
        kernels=("multi_margin_forward", "multi_margin_backward"),
        forward=lambda B, x, y, reduction="mean", **kw: B.multi_margin_forward(x, y, reduction, **kw),
        backward=lambda B, g, out, x, y, reduction="mean", **kw: (B.multi_margin_backward(g, x, y, reduction, **kw),),
        samples=_mm_samples,
    ),
    _pair_loss("mse", _mse_samples),
    _pair_loss("l1", _l1_samples),
    _pair_loss("bce", _bce_samples),
    _pair_loss("bce_with_logits", _bcel_samples),
    OpSpec(
        name="norm_penalty",
        kernels=("norm_penalty_forward", "norm_penalty_backward"),
        forward=lambda B, p, **kw: B.norm_penalty_forward(p, **kw),
        backward=lambda B, g, out, p, **kw: (B.norm_penalty_backward(g, p, **kw),),
        samples=_penalty_samples,
    ),
]


# ----- 0-d inputs: elementwise losses and the penalty take a 0-d pred/target and return 0-d arrays -----------
from dataclasses import replace  # noqa: E402


def _zero_d(a):
    return np.asarray(a).reshape(())


_ZERO_D = {
    "mse": lambda rng, dt: (randn(rng, (1,), dt), randn(rng, (1,), dt)),
    "l1": lambda rng, dt: _l1_pair(rng, (1,), dt),
    "bce": lambda rng, dt: (_probs(rng, (1,), dt), rng.random(1).astype(dt)),
    "bce_with_logits": lambda rng, dt: (randn(rng, (1,), dt, 3.0), rng.random(1).astype(dt)),
    "norm_penalty": lambda rng, dt: (away_from(rng, (1,), dt),),
}


def _with_zero_d(samples, make, reductions):
    def gen(rng, dt):
        cases = list(samples(rng, dt))
        for red in reductions:
            params = {} if red is None else {"reduction": red}
            cases.append(Case(f"0d_{red or 'default'}", tuple(_zero_d(a) for a in make(rng, dt)), params))
        return cases
    return gen


SPECS = [replace(s, samples=_with_zero_d(s.samples, _ZERO_D[s.name],
                                         (None,) if s.name == "norm_penalty" else ("mean", "none")))
         if s.name in _ZERO_D else s for s in SPECS]
