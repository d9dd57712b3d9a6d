"""The op registry: one entry per compiled op, each naming the kernels it verifies, how to call them,
sample inputs and tolerances. tests/test_registry.py generates its tests from REGISTRY, and a
meta-test fails when a kernel in fastbp._C is named by no entry.

Entry kinds:
  * "op":   forward(B, *inputs, **params) -> output (or a tuple whose first item is the differentiable
            output); backward(B, grad, out, *inputs, **params) -> one gradient per index in diff_inputs.
  * "step": forward(B, *inputs, **params) updates the arrays at `mutates` in place (optimizer steps);
            tests run it repeatedly on both backends and compare the trajectories.
`B` is a backend namespace (fastbp._backend.compiled or .reference), so the same entry drives both.

The families are listed here explicitly (no registration by import side effect)."""
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

DEFAULT_TOL = {np.dtype(np.float32): (2e-4, 2e-5), np.dtype(np.float64): (1e-9, 1e-11)}


@dataclass(frozen=True)
class Case:
    id: str
    inputs: tuple
    params: dict = field(default_factory=dict)
    gradcheck: bool = True  # False where the sample sits on a point the rule makes non-smooth on purpose


@dataclass(frozen=True)
class OpSpec:
    name: str
    kernels: tuple
    forward: Callable
    samples: Callable  # (rng, dtype) -> list[Case]
    backward: Optional[Callable] = None
    diff_inputs: tuple = (0,)
    kind: str = "op"
    mutates: tuple = ()
    steps: int = 20
    tol: dict = field(default_factory=lambda: dict(DEFAULT_TOL))
    gradcheck_tol: tuple = (1e-5, 1e-7)  # (rtol, atol) of analytic vs central differences in float64

    def tolerance(self, dtype):
        return self.tol[np.dtype(dtype)]


# ----- helpers for sample generators ----------------------------------------------------------------
def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def away_from(rng, shape, dtype, points=(0.0,), gap=1e-2, scale=1.0):
    """Normal samples nudged at least `gap` away from each of `points` (kinks of piecewise ops)."""
    x = rng.standard_normal(shape) * scale
    for p in points:
        d = x - p
        close = np.abs(d) < gap
        x[close] = p + np.where(d[close] >= 0, gap, -gap) * (1 + rng.random(close.sum()))
    return x.astype(dtype)


# Non-finite values every family's samples include ("nonfinite" cases): both backends must give the same
# values there, NaN in the same places (the generated tests compare with equal_nan, which checks that).
NONFINITE = (np.nan, np.inf, -np.inf)


def noncontig(a):
    """A non-contiguous view with the same values as `a` (every other element of a wider array)."""
    wide = np.repeat(a, 2, axis=-1) if a.ndim else a
    view = wide[..., ::2]
    assert not view.flags.c_contiguous or a.size <= 1
    return view


def transposed(a):
    """An F-ordered view with the same values as the 2-D array `a`."""
    return np.ascontiguousarray(a.T).T


def _families():
    from . import activations, conv, gemm, losses, norm, optim, pool
    return (gemm, activations, losses, optim, conv, pool, norm)


def build():
    specs = []
    for fam in _families():
        specs.extend(fam.SPECS)
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RuntimeError(f"duplicate registry names: {sorted(dup)}")
    return tuple(specs)


REGISTRY = build()


def by_name(name):
    for s in REGISTRY:
        if s.name == name:
            return s
    raise KeyError(name)
