"""The library's random number generator: `fastbp.manual_seed(n)` makes initialisation reproducible."""
import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed):
    """Seed the generator used by parameter initialisation (and anything else in fastbp that draws)."""
    global _rng
    _rng = np.random.default_rng(int(seed))
    return _rng


def get_rng():
    return _rng
