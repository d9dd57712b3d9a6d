"""Neural-network modules, PyTorch-shaped."""
from . import functional, init, utils
from .layers import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, ELU, L1Loss, LeakyReLU, Linear, LogSoftmax,
                     Maxout, MSELoss, MultiMarginLoss, NLLLoss, ReLU, Sigmoid, Softmax, Tanh)
from .module import Module, Parameter, Sequential
from .conv import AvgPool2d, Conv2d, Flatten, GlobalAvgPool2d, MaxPool2d

__all__ = ["functional", "init", "utils", "Module", "Parameter", "Sequential", "Linear", "ReLU", "Sigmoid", "Tanh",
           "Softmax", "LogSoftmax", "CrossEntropyLoss", "MSELoss", "LeakyReLU", "ELU", "Maxout", "L1Loss",
           "NLLLoss", "BCELoss", "BCEWithLogitsLoss", "MultiMarginLoss"]
__all__ += ["Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten"]
