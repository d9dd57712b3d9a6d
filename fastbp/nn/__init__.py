"""Neural-network modules, PyTorch-shaped."""
from . import functional, init, utils
from .layers import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, ELU, L1Loss, LeakyReLU, Linear, LogSoftmax,
                     Maxout, MSELoss, MultiMarginLoss, NLLLoss, ReLU, Sigmoid, Softmax, Tanh)
from .module import Module, ModuleDict, ModuleList, Parameter, RemovableHandle, Sequential, StateDictError
from .conv import AvgPool2d, Conv2d, Flatten, GlobalAvgPool2d, MaxPool2d
from .norm import AdaptiveAvgPool2d, BatchNorm1d, BatchNorm2d, Dropout, Dropout2d, Identity

__all__ = ["functional", "init", "utils", "Module", "Parameter", "Sequential", "Linear", "ReLU", "Sigmoid", "Tanh",
           "Softmax", "LogSoftmax", "CrossEntropyLoss", "MSELoss", "LeakyReLU", "ELU", "Maxout", "L1Loss",
           "NLLLoss", "BCELoss", "BCEWithLogitsLoss", "MultiMarginLoss"]
__all__ += ["Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten"]
__all__ += ["ModuleList", "ModuleDict", "RemovableHandle", "StateDictError", "BatchNorm1d", "BatchNorm2d", "Dropout",
            "Dropout2d", "Identity", "AdaptiveAvgPool2d"]
