"""dtypes: the default floating dtype (float32, as PyTorch) and the dtype names fastbp exports.

fastbp.float32, fastbp.float64, fastbp.int64, ... are NumPy dtype objects, so they work anywhere NumPy takes
a dtype (np.zeros(3, dtype=fastbp.float32)), anywhere fastbp does (fastbp.zeros(3, dtype=fastbp.float64),
x.to(fastbp.float64)), and compare equal to a tensor's dtype (x.dtype == fastbp.float32; for the native
byte order also `x.dtype is fastbp.float32`, as with torch dtypes)."""
import numpy as np

_default = np.dtype(np.float32)

float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
float16 = np.dtype(np.float16)
int8 = np.dtype(np.int8)
int16 = np.dtype(np.int16)
int32 = np.dtype(np.int32)
int64 = np.dtype(np.int64)
uint8 = np.dtype(np.uint8)
bool_ = np.dtype(np.bool_)

# PyTorch's aliases (torch.float is float32, torch.double float64, torch.long int64, torch.int int32, ...)
ALIASES = {"float": float32, "double": float64, "half": float16, "long": int64, "int": int32, "short": int16,
           "bool": bool_}


def get_default_dtype():
    return _default


def set_default_dtype(dtype):
    global _default
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"default dtype must be float32 or float64, got {dtype}")
    _default = dtype


def as_dtype(dtype):
    """A dtype argument (fastbp.float32, np.float64, "float32", float, ...) as a numpy dtype; None stays None.
    As in PyTorch and NumPy, dtype=float means float64, int int64 and bool bool."""
    if dtype is None or type(dtype) is np.dtype:
        return dtype
    if dtype is float:
        return np.dtype(np.float64)
    if dtype is int:
        return int64
    if dtype is bool:
        return bool_
    if isinstance(dtype, str) and dtype in ALIASES:
        return ALIASES[dtype]
    try:
        return np.dtype(dtype)
    except TypeError:
        raise TypeError(f"not a dtype: {dtype!r} (use fastbp.float32, fastbp.float64, fastbp.int64, ... or a "
                        f"numpy dtype)") from None
