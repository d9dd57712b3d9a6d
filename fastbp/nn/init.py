"""Parameter initialisation, seeded by fastbp.manual_seed. Draws happen in float64 and are cast to the
parameter's dtype, so float32 and float64 models start from the same values (up to rounding)."""
import math

import numpy as np

from ..random import get_rng


def _fans(shape):
    if len(shape) < 2:
        raise ValueError(f"fan in/out need at least 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fill(t, values):
    t.data[...] = values.astype(t.data.dtype)
    return t


def uniform_(t, a=0.0, b=1.0):
    return _fill(t, get_rng().uniform(a, b, size=t.shape))


def kaiming_uniform_(t, a=0.0, mode="fan_in", nonlinearity="leaky_relu"):
    """PyTorch's kaiming_uniform_: bound = gain * sqrt(3 / fan), gain = sqrt(2 / (1 + a^2)) for leaky_relu."""
    fan_in, fan_out = _fans(t.shape)
    fan = fan_in if mode == "fan_in" else fan_out
    gain = math.sqrt(2.0 / (1 + a * a)) if nonlinearity == "leaky_relu" else math.sqrt(2.0)
    bound = gain * math.sqrt(3.0 / fan) if fan > 0 else 0.0
    return uniform_(t, -bound, bound)
