import numpy as np
import pytest

import fastbp


@pytest.fixture(autouse=True, scope="session")
def _fixed_thread_count():
    """The suite must reach the parallel (OpenMP) paths even when it runs on a loaded machine: no dropping to
    one thread under load (fastbp.set_threads_adaptive) while tests run."""
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


def run_python(args, env_update=None, drop=()):
    """Run `python <args>` in a neutral directory, importing the same fastbp the tests import (the
    installed package in CI, not the source tree next to the tests)."""
    import os
    import subprocess
    import sys
    import tempfile

    env = {k: v for k, v in os.environ.items() if k not in drop}
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(env_update or {})
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True)
