"""Helpers shared by test modules: a plain module, imported as `from helpers import ...` (pyproject's
pytest `pythonpath` puts tests/ on sys.path in every import mode). Fixtures stay in conftest.py, which is
never imported as a module."""
import contextlib
import os
import subprocess
import sys
import tempfile

import fastbp


def python_env(env_update=None, drop=()):
    """The environment for a child Python that imports the same fastbp the tests import (the installed
    package in CI, not the source tree next to the tests)."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(env_update or {})
    return env


def run_python(args, env_update=None, drop=(), timeout=None):
    """Run `python <args>` in a neutral directory; returns the CompletedProcess (text output)."""
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, *args], env=python_env(env_update, drop), cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)


def run_code(code, env_update=None, cwd=None, timeout=300):
    """Run `python -c code` in a neutral directory (or `cwd`); returns the CompletedProcess (text output)."""
    if cwd is not None:
        return subprocess.run([sys.executable, "-c", code], env=python_env(env_update), cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    return run_python(["-c", code], env_update, timeout=timeout)


@contextlib.contextmanager
def parallel_branches(threads=2):
    """Run the block with the parallel threshold at 0 and `threads` OpenMP threads, so every kernel loop
    takes its OpenMP branch even on small inputs; restores both afterwards."""
    from fastbp._C import _runtime
    before_threads = _runtime.get_num_threads()
    previous = _runtime._set_parallel_min(0)
    _runtime.set_num_threads(threads)
    try:
        yield
    finally:
        _runtime._set_parallel_min(previous)
        _runtime.set_num_threads(before_threads)
