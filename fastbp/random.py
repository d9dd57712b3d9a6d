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


def get_rng_state():
    """The state of fastbp's generator (a dict of plain numbers and strings, as NumPy's
    `bit_generator.state`), for checkpoints; `set_rng_state` puts it back."""
    return _rng.bit_generator.state


def set_rng_state(state):
    """Restore a state from `get_rng_state()` into fastbp's generator (in place)."""
    if not isinstance(state, dict) or "bit_generator" not in state:
        raise ValueError(f"set_rng_state expects a dict from get_rng_state(), got {type(state).__name__}")
    if state["bit_generator"] != type(_rng.bit_generator).__name__:
        raise ValueError(f"set_rng_state: the state is of a {state['bit_generator']} generator, fastbp uses "
                         f"{type(_rng.bit_generator).__name__}")
    _rng.bit_generator.state = state
