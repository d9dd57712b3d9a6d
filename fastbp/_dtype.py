"""The default floating dtype (float32, as PyTorch)."""
import numpy as np

_default = np.dtype(np.float32)


def get_default_dtype():
    return _default


def set_default_dtype(dtype):
    global _default
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"default dtype must be float32 or float64, got {dtype}")
    _default = dtype
