"""Registry entries for csrc/activations.pyx."""
import numpy as np

from . import NONFINITE, Case, OpSpec, away_from, noncontig, randn

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4), (1, 1), (300, 129)]
LARGE = (640, 512)  # 327,680 elements: above PARALLEL_MIN, so the OpenMP path runs
ACT_TOL = {np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-12, 1e-14)}
BLOCK = 4099  # prime, so a tiled block does not line up with rows


def tiled(make, shape):
    """A large sample made by tiling one random block of BLOCK values, `make((BLOCK,))`. Large samples exist to
    run the OpenMP path; the generated tests rebuild every sample of an op for each test, and drawing 300k
    fresh values each time made them several times slower."""
    return np.resize(make((BLOCK,)), shape)


def _elementwise_samples(kink=None, params=None):
    params = params or {}

    def gen(rng, dt):
        make = (lambda s: away_from(rng, s, dt, points=(kink,))) if kink is not None else \
            (lambda s: randn(rng, s, dt, scale=2.0))
        cases = [Case("x".join(map(str, s)), (make(s),), dict(params)) for s in SHAPES]
        cases.append(Case("noncontig", (noncontig(make((4, 6))),), dict(params)))
        cases.append(Case("large", (tiled(make, LARGE),), dict(params)))
        cases.append(Case("extremes", (np.array([-1000.0, -50.0, -1.0, 1.0, 50.0, 1000.0], dtype=dt),),
                          dict(params), gradcheck=False))
        cases.append(Case("nonfinite", (np.array(NONFINITE + (0.5, -2.0), dtype=dt),), dict(params), gradcheck=False))
        if kink is not None:
            # exactly at the kink: compiled and reference must apply the same rule there
            cases.append(Case("at_kink", (np.array([-1.0, -0.0, 0.0, 0.5], dtype=dt),), dict(params),
                              gradcheck=False))
        for k, v in (params.items() if params else ()):
            # a non-default parameter value, so the parameter is really passed through
            other = dict(params)
            other[k] = v * 17.5
            cases.append(Case(f"{k}_{other[k]:g}", (make((5, 7)),), other))
        cases.append(Case("0d", (make((1,)).reshape(()),), dict(params)))  # a 0-d array in, a 0-d array out
        return cases
    return gen


def _rows_samples(rng, dt):
    cases = [Case("x".join(map(str, s)), (randn(rng, s, dt, scale=2.0),))
             for s in [(1, 1), (3, 5), (7,), (2, 3, 4), (64, 10)]]
    cases.append(Case("noncontig", (noncontig(randn(rng, (4, 6), dt)),)))
    cases.append(Case("large_logits", (np.array([[1000.0, 0.0, -1000.0], [-1000.0, -999.0, -1000.0]], dtype=dt),),
                      gradcheck=False))
    # other axes: the kernel normalises strided lines in place of moving the axis
    cases.append(Case("2x3x4_axis0", (randn(rng, (2, 3, 4), dt, 2.0),), {"axis": 0}))
    cases.append(Case("2x3x4_axis1", (randn(rng, (2, 3, 4), dt, 2.0),), {"axis": 1}))
    cases.append(Case("3x5_axis-2", (randn(rng, (3, 5), dt, 2.0),), {"axis": -2}))
    cases.append(Case("1x1x6_axis1", (randn(rng, (1, 1, 6), dt, 2.0),), {"axis": 1}))
    cases.append(Case("noncontig_axis0", (noncontig(randn(rng, (5, 6), dt)),), {"axis": 0}))
    # a NaN in a line, +inf (with and without another +inf), -inf (one, and a whole line)
    nf = np.array([[np.nan, 0.0, 1.0], [np.inf, 0.0, 1.0], [np.inf, np.inf, 0.0], [-np.inf, 0.0, 1.0],
                   [-np.inf, -np.inf, -np.inf]], dtype=dt)
    cases.append(Case("nonfinite", (nf,), gradcheck=False))
    big = np.array([[1000.0, -1000.0], [0.0, -999.0], [-1000.0, 1000.0]], dtype=dt)
    cases.append(Case("large_logits_axis0", (big,), {"axis": 0}, gradcheck=False))
    cases.append(Case("large_axis1", (tiled(lambda s: randn(rng, s, dt, 2.0), (40, 128, 70)),), {"axis": 1}))
    return cases


def _unary(name, saves_output, kink=None, params=None):
    fwd = getattr
    return OpSpec(
        name=name,
        kernels=(f"{name}_forward", f"{name}_backward"),
        forward=lambda B, x, **p: fwd(B, f"{name}_forward")(x, **p),
        backward=(lambda B, g, out, x, **p: (fwd(B, f"{name}_backward")(g, out, **p),)) if saves_output else
                 (lambda B, g, out, x, **p: (fwd(B, f"{name}_backward")(g, x, **p),)),
        samples=_rows_samples if name in ("softmax", "log_softmax") else _elementwise_samples(kink, params),
        tol=dict(ACT_TOL),
    )


def _maxout_samples(rng, dt):
    cases = []
    for shape, k in [((1, 3), 3), ((5, 12), 4), ((2, 3, 8), 2), ((7, 5), 1), ((4, 30), 5), ((1, 2), 2)]:
        cases.append(Case(f"{'x'.join(map(str, shape))}_k{k}", (randn(rng, shape, dt),), {"pieces": k}))
    cases.append(Case("noncontig", (noncontig(randn(rng, (3, 8), dt)),), {"pieces": 4}))
    # large: above PARALLEL_MIN; no gradcheck, since among 131k random triples some pieces lie within
    # a finite-difference step of each other
    cases.append(Case("large", (tiled(lambda s: randn(rng, s, dt), (512, 768)),), {"pieces": 3}, gradcheck=False))
    # ties: the first maximal piece receives the gradient, in both backends
    ties = np.array([[1.0, 1.0, 0.0, 2.0, 2.0, 2.0], [-1.0, 0.5, 0.5, 0.0, 0.0, 0.0]], dtype=dt)
    cases.append(Case("ties", (ties,), {"pieces": 3}, gradcheck=False))
    cases.append(Case("extremes", (np.array([[-1000.0, 1000.0, 0.0, -1000.0]], dtype=dt),), {"pieces": 2},
                      gradcheck=False))
    # NaN is a maximum (the first NaN wins), infinities compare as usual
    nf = np.array([[np.nan, 1.0, 2.0, np.nan, np.inf, 1.0], [-np.inf, -np.inf, 0.0, np.inf, -np.inf, 3.0]], dtype=dt)
    cases.append(Case("nonfinite", (nf,), {"pieces": 3}, gradcheck=False))
    return cases


SPECS = [
    _unary("relu", saves_output=False, kink=0.0),
    _unary("leaky_relu", saves_output=False, kink=0.0, params={"negative_slope": 0.01}),
    _unary("elu", saves_output=False, kink=0.0, params={"alpha": 1.0}),
    _unary("sigmoid", saves_output=True),
    _unary("tanh", saves_output=True),
    _unary("softmax", saves_output=True),
    _unary("log_softmax", saves_output=True),
    OpSpec(
        name="maxout",
        kernels=("maxout_forward", "maxout_backward"),
        # the argmax output is an integer array, so the registered forward returns y only and the backward
        # asks the same backend for the argmax again
        forward=lambda B, x, pieces: B.maxout_forward(x, pieces)[0],
        backward=lambda B, g, out, x, pieces: (B.maxout_backward(g, B.maxout_forward(x, pieces)[1], pieces),),
        samples=_maxout_samples,
        tol=dict(ACT_TOL),
    ),
]
