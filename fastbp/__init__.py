"""fastbp: backpropagation with a compiled Cython core and a NumPy reference for every op.

    import fastbp
    from fastbp import nn, optim
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    loss = nn.CrossEntropyLoss()(model(fastbp.tensor(X)), y)
    loss.backward()
"""
from ._version import __version__
from ._backend import backend, get_backend, set_backend
from ._dtype import (get_default_dtype, set_default_dtype, float16, float32, float64, int8, int16, int32, int64,
                     uint8)
from ._dtype import bool_ as bool  # noqa: A001  (torch.bool; shadows the builtin only as fastbp.bool)
from ._device import device
from .tensor import Function, Tensor, enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled, tensor
from .random import manual_seed
from ._config import get_num_threads, set_num_threads, show_config
from .gradcheck import GradcheckError, gradcheck
from .creation import (arange, as_tensor, empty, empty_like, eye, from_numpy, full, full_like, linspace, ones,
                       ones_like, rand, rand_like, randint, randint_like, randn, randn_like, randperm, zeros,
                       zeros_like)
# torch-style functions; abs, max, min, pow, sum shadow the builtins only as fastbp.abs, fastbp.max, ...
from .functions import (abs, allclose, amax, amin, argmax, argmin, cat, clamp, clip, concat, concatenate, eq,
                        equal, exp, flatten, ge, gt, is_tensor, isnan, le, log, log_softmax, lt, matmul, max,
                        maximum, mean, min, minimum, mm, ne, neg, numel, permute, pow, relu, reshape, sigmoid, sign,
                        softmax, sqrt, squeeze, stack, sum, tanh, transpose, unsqueeze, where)
from . import return_types
from . import nn, optim, data, utils, train
from .serialization import CheckpointError, load, save
from . import distributed  # MPI data parallelism; mpi4py is imported only by distributed.init()

# PyTorch's dtype aliases
float = float32  # noqa: A001
double = float64
half = float16
long = int64
int = int32  # noqa: A001
short = int16

__all__ = ["__version__", "Tensor", "tensor", "Function", "no_grad", "enable_grad", "set_grad_enabled",
           "inference_mode", "is_grad_enabled", "manual_seed",
           "set_backend", "get_backend", "backend", "show_config", "set_num_threads", "get_num_threads",
           "get_default_dtype", "set_default_dtype", "nn", "optim", "data", "utils", "train", "save", "load",
           "CheckpointError", "distributed", "gradcheck", "GradcheckError",
           "device", "return_types", "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
           "bool", "float", "double", "half", "long", "int", "short"]
from . import creation as _creation, functions as _functions  # noqa: E402
__all__ += _creation.__all__ + _functions.__all__
