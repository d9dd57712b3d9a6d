"""PyTorch-shaped import paths: `from fastbp.utils.data import DataLoader, TensorDataset`."""
from . import data

__all__ = ["data"]
