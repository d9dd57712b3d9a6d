"""Registry entries for csrc/losses.pyx."""
import numpy as np

from . import Case, OpSpec, noncontig, randn

REDUCTIONS = ("mean", "sum", "none")


def _ce_samples(rng, dt):
    cases = []
    for n, c in [(1, 1), (1, 10), (5, 3), (64, 10), (9, 33)]:
        for red in REDUCTIONS:
            cases.append(Case(f"n{n}_c{c}_{red}", (randn(rng, (n, c), dt, 2.0), rng.integers(0, c, n)),
                              {"reduction": red}))
    x = randn(rng, (4, 6), dt)
    cases.append(Case("noncontig", (noncontig(x), rng.integers(0, 6, 4).astype(np.int32))))
    cases.append(Case("large_logits", (np.array([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0]], dtype=dt),
                                       np.array([0, 2])), gradcheck=False))
    return cases


def _mse_samples(rng, dt):
    cases = []
    for s in [(1,), (5, 3), (2, 3, 4), (128, 10)]:
        for red in REDUCTIONS:
            cases.append(Case(f"{'x'.join(map(str, s))}_{red}", (randn(rng, s, dt), randn(rng, s, dt)),
                              {"reduction": red}))
    cases.append(Case("noncontig", (noncontig(randn(rng, (3, 4), dt)), randn(rng, (3, 4), dt))))
    return cases


SPECS = [
    OpSpec(
        name="cross_entropy",
        kernels=("cross_entropy_forward", "cross_entropy_backward"),
        forward=lambda B, x, y, reduction="mean": B.cross_entropy_forward(x, y, reduction),
        backward=lambda B, g, out, x, y, reduction="mean": (B.cross_entropy_backward(g, x, y, out[1], reduction),),
        samples=_ce_samples,
    ),
    OpSpec(
        name="mse",
        kernels=("mse_forward", "mse_backward"),
        forward=lambda B, p, t, reduction="mean": B.mse_forward(p, t, reduction),
        backward=lambda B, g, out, p, t, reduction="mean": (B.mse_backward(g, p, t, reduction),),
        samples=_mse_samples,
    ),
]
