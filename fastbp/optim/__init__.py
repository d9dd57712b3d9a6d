"""Optimizers: each step() is one fused in-place kernel call per parameter (L-BFGS, whose cost is in
its closure, is NumPy over the flattened parameters). Learning-rate schedules are in
`fastbp.optim.lr_scheduler`."""
from . import lr_scheduler
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .lbfgs import LBFGS
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adadelta", "Adagrad", "RMSprop", "Adam", "AdamW", "LBFGS", "lr_scheduler"]
