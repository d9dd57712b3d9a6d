"""Neural-network modules, PyTorch-shaped."""
from . import functional, init, utils
from .layers import CrossEntropyLoss, Linear, LogSoftmax, MSELoss, ReLU, Sigmoid, Softmax, Tanh
from .module import Module, Parameter, Sequential

__all__ = ["functional", "init", "utils", "Module", "Parameter", "Sequential", "Linear", "ReLU", "Sigmoid", "Tanh",
           "Softmax", "LogSoftmax", "CrossEntropyLoss", "MSELoss"]
