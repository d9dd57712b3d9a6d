"""Functional forms of the layers: each takes Tensors (or ndarrays) and records the graph."""
import numpy as np

from ..ops import nn as _ops
from ..tensor import Tensor


def _labels(target):
    return target.data if isinstance(target, Tensor) else np.asarray(target)


def linear(x, weight, bias=None):
    """x @ weight.T + bias, weight of shape (out_features, in_features)."""
    return _ops.Linear.apply(x, weight, bias)


def relu(x):
    return _ops.Relu.apply(x)


def sigmoid(x):
    return _ops.Sigmoid.apply(x)


def tanh(x):
    return _ops.Tanh.apply(x)


def softmax(x, axis=-1):
    return _ops.Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    return _ops.LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits, target, reduction="mean"):
    """Softmax cross-entropy of logits (N, C) against integer class labels (N,) (ndarray or Tensor)."""
    return _ops.CrossEntropy.apply(logits, _labels(target), reduction=reduction)


def mse_loss(input, target, reduction="mean"):
    return _ops.MSELoss.apply(input, target, reduction=reduction)
