import numpy as np
import pytest

import fastbp


@pytest.fixture(autouse=True, scope="session")
def _fixed_thread_count():
    """The suite must reach the parallel (OpenMP) paths even when it runs on a loaded machine: no dropping to
    one thread under load (fastbp.set_threads_adaptive, off by default; also if FASTBP_THREADS_ADAPTIVE=1)."""
    previous = fastbp.set_threads_adaptive(False)
    yield
    fastbp.set_threads_adaptive(previous)


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
