"""Registry entries for csrc/optim.pyx (kind "step": trajectories compared over repeated steps)."""
import numpy as np

from . import Case, OpSpec, randn

SGD_SETTINGS = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2),
    dict(lr=0.01, weight_decay=0.1),
]


def _sgd_samples(rng, dt):
    cases = []
    for shape in [(1,), (7, 3), (300000,)]:  # 300000 crosses the OpenMP threshold
        for i, s in enumerate(SGD_SETTINGS):
            p = randn(rng, shape, dt)
            cases.append(Case(f"{'x'.join(map(str, shape))}_cfg{i}", (p, randn(rng, shape, dt), np.zeros_like(p)), s))
    return cases


def _sgd_forward(B, p, g, buf, step_index=0, lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    B.sgd_step(p, g, buf if momentum else None, lr, momentum, dampening, weight_decay, nesterov, step_index == 0)


SPECS = [
    OpSpec(
        name="sgd_step",
        kernels=("sgd_step",),
        kind="step",
        forward=_sgd_forward,
        samples=_sgd_samples,
        mutates=(0, 2),
        tol={np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-12, 1e-13)},
    ),
]
