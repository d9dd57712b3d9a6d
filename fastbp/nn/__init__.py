"""Neural-network modules, PyTorch-shaped."""
from . import functional, init
from .layers import CrossEntropyLoss, Linear, LogSoftmax, MSELoss, ReLU, Sigmoid, Softmax, Tanh
from .module import Module, Parameter, Sequential

__all__ = ["functional", "init", "Module", "Parameter", "Sequential", "Linear", "ReLU", "Sigmoid", "Tanh",
           "Softmax", "LogSoftmax", "CrossEntropyLoss", "MSELoss"]
