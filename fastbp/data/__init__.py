"""Data: datasets, loaders, splits and the bundled data sets (PyTorch's names and semantics).

Rooms: `dataset` (Dataset, TensorDataset, Subset, ConcatDataset, random_split), `loader` (DataLoader and
samplers), `splits` (train/validation/test splits, KFold, StratifiedKFold), `datasets` (digits, MNIST 5k).
`fastbp.utils.data` is the same namespace under PyTorch's import path."""
from .dataset import ConcatDataset, Dataset, Subset, TensorDataset, random_split
from .datasets import load_digits, load_mnist_5k
from .loader import (BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler, SubsetRandomSampler,
                     batches, default_collate)
from .splits import KFold, StratifiedKFold, train_test_split, train_val_test_split

__all__ = ["Dataset", "TensorDataset", "Subset", "ConcatDataset", "random_split", "DataLoader", "Sampler",
           "SequentialSampler", "RandomSampler", "SubsetRandomSampler", "BatchSampler", "default_collate",
           "batches", "KFold", "StratifiedKFold", "train_test_split", "train_val_test_split", "load_digits",
           "load_mnist_5k"]
