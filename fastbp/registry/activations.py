"""Registry entries for csrc/activations.pyx."""
import numpy as np

from . import Case, OpSpec, away_from, noncontig, randn

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4), (1, 1), (300, 129)]


def _elementwise_samples(kink=None):
    def gen(rng, dt):
        make = (lambda s: away_from(rng, s, dt, points=(kink,))) if kink is not None else \
            (lambda s: randn(rng, s, dt, scale=2.0))
        cases = [Case("x".join(map(str, s)), (make(s),)) for s in SHAPES]
        cases.append(Case("noncontig", (noncontig(make((4, 6))),)))
        cases.append(Case("extremes", (np.array([-1000.0, -50.0, -1.0, 1.0, 50.0, 1000.0], dtype=dt),),
                          gradcheck=False))
        return cases
    return gen


def _rows_samples(rng, dt):
    cases = [Case("x".join(map(str, s)), (randn(rng, s, dt, scale=2.0),)) for s in [(1, 1), (3, 5), (7,), (2, 3, 4), (64, 10)]]
    cases.append(Case("noncontig", (noncontig(randn(rng, (4, 6), dt)),)))
    cases.append(Case("large_logits", (np.array([[1000.0, 0.0, -1000.0], [-1000.0, -999.0, -1000.0]], dtype=dt),),
                      gradcheck=False))
    return cases


def _unary(name, saves_output, kink=None):
    fwd = getattr
    return OpSpec(
        name=name,
        kernels=(f"{name}_forward", f"{name}_backward"),
        forward=lambda B, x: fwd(B, f"{name}_forward")(x),
        backward=(lambda B, g, out, x: (fwd(B, f"{name}_backward")(g, out),)) if saves_output else
                 (lambda B, g, out, x: (fwd(B, f"{name}_backward")(g, x),)),
        samples=_rows_samples if name in ("softmax", "log_softmax") else _elementwise_samples(kink),
        tol={np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-12, 1e-14)},
    )


SPECS = [
    _unary("relu", saves_output=False, kink=0.0),
    _unary("sigmoid", saves_output=True),
    _unary("tanh", saves_output=True),
    _unary("softmax", saves_output=True),
    _unary("log_softmax", saves_output=True),
]
