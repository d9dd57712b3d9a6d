"""fastbp: backpropagation with a compiled Cython core and a NumPy reference for every op.

    import fastbp
    from fastbp import nn, optim
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    loss = nn.CrossEntropyLoss()(model(fastbp.tensor(X)), y)
    loss.backward()
"""
from ._version import __version__
from ._backend import backend, get_backend, set_backend
from ._dtype import get_default_dtype, set_default_dtype
from .tensor import Function, Tensor, is_grad_enabled, no_grad, tensor
from .random import manual_seed
from ._config import get_num_threads, set_num_threads, show_config, set_threads_adaptive, get_threads_adaptive
from .gradcheck import GradcheckError, gradcheck
from . import nn, optim, data

float32 = "float32"
float64 = "float64"

__all__ = ["__version__", "Tensor", "tensor", "Function", "no_grad", "is_grad_enabled", "manual_seed",
           "set_backend", "get_backend", "backend", "show_config", "set_num_threads", "get_num_threads",
           "set_threads_adaptive", "get_threads_adaptive",
           "get_default_dtype", "set_default_dtype", "nn", "optim", "data", "gradcheck", "GradcheckError"]
