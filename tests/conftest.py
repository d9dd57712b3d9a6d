import numpy as np
import pytest

import fastbp


@pytest.fixture(autouse=True)
def _restore_backend():
    """Every test starts on the compiled backend with a fixed seed, whatever the previous test did."""
    fastbp.set_backend("compiled")
    fastbp.manual_seed(0)
    yield
    fastbp.set_backend("compiled")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
