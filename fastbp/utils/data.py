"""Alias of `fastbp.data` under PyTorch's path (`torch.utils.data`): the same objects, not copies."""
from ..data import *  # noqa: F401,F403
from ..data import __all__  # noqa: F401
