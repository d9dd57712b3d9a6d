"""Helpers shared by test modules: a plain module, imported as `from helpers import ...` (pyproject's
pytest `pythonpath` puts tests/ on sys.path in every import mode). Fixtures stay in conftest.py, which is
never imported as a module."""
import fastbp


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
