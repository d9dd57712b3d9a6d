"""Optimizers: each step() is one fused in-place kernel call per parameter."""
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD"]
