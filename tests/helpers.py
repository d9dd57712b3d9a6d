"""Helpers shared by test modules (imported as `from helpers import ...` -- tests/ is on sys.path under
pytest's default rootdir-based import mode -- or loaded by path)."""
import os
import subprocess
import sys
import tempfile

import fastbp


def python_env(env_update=None):
    """The environment for a child Python that imports the same fastbp the tests import."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(env_update or {})
    return env


def run_code(code, env_update=None, cwd=None, timeout=300):
    """Run `python -c code` in a neutral directory; returns the CompletedProcess (text output)."""
    with tempfile.TemporaryDirectory() as tmp:
        return subprocess.run([sys.executable, "-c", code], env=python_env(env_update), cwd=cwd or tmp,
                              capture_output=True, text=True, timeout=timeout)
