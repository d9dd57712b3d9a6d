"""Datasets, shaped like torch.utils.data: Dataset, TensorDataset, Subset, ConcatDataset and random_split.

A map-style dataset has `__getitem__(i)` and `__len__()`. A dataset may also offer `__getitems__(indices)`
(as in PyTorch >= 2.1): a list of samples for a list of indices, which the DataLoader then calls once per
batch instead of once per sample. TensorDataset and Subset go one step further: they hand the loader whole
batches made by one fancy-indexing copy per array (see `DataLoader`)."""
import math
import numbers

import numpy as np

from ..tensor import Tensor
from .splits import _generator

__all__ = ["Dataset", "TensorDataset", "Subset", "ConcatDataset", "random_split"]


class Dataset:
    """Base class of map-style datasets: subclasses implement `__getitem__` and `__len__`."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} has no __getitem__")

    def __add__(self, other):
        return ConcatDataset([self, other])


def _array(a, k):
    if isinstance(a, Tensor):
        return a.data
    if isinstance(a, np.ndarray):
        return a
    try:
        arr = np.asarray(a)
    except Exception as exc:
        raise TypeError(f"TensorDataset: array {k} is a {type(a).__name__}, not an array") from exc
    if arr.dtype == object:
        raise TypeError(f"TensorDataset: array {k} has dtype object (ragged or non-numeric data)")
    return arr


class TensorDataset(Dataset):
    """Samples from arrays (ndarrays or fastbp Tensors) that share their first dimension: item i is
    (arrays[0][i], arrays[1][i], ...). The arrays are kept as they are (no copy)."""

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        self.arrays = tuple(_array(a, k) for k, a in enumerate(arrays))
        for k, a in enumerate(self.arrays):
            if a.ndim == 0:
                raise ValueError(f"TensorDataset: array {k} is a scalar; every array needs a sample dimension")
        n = len(self.arrays[0])
        lengths = [len(a) for a in self.arrays]
        if any(m != n for m in lengths):
            raise ValueError(f"TensorDataset: the arrays have different lengths {lengths} (size of dimension 0)")
        self.tensors = self.arrays  # PyTorch's attribute name

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)

    def __getitems__(self, indices):
        return [self[i] for i in indices]

    def _fetch_batch(self, indices):
        """Arrays of the batch `indices` (an int64 array), one fancy-indexing copy per array."""
        return tuple(a[indices] for a in self.arrays)

    def __repr__(self):
        return f"TensorDataset({', '.join(f'{a.dtype}{list(a.shape)}' for a in self.arrays)})"


class Subset(Dataset):
    """The samples of `dataset` at `indices` (in that order)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, (list, np.ndarray)):
            return self.dataset[self.indices[index]]
        return self.dataset[int(self.indices[index])]

    def __getitems__(self, indices):
        mapped = self.indices[np.asarray(indices, dtype=np.int64)]
        inner = getattr(self.dataset, "__getitems__", None)
        if inner is not None:
            return inner(mapped.tolist())
        return [self.dataset[int(i)] for i in mapped]

    @property
    def _fetch_batch(self):
        inner = getattr(self.dataset, "_fetch_batch", None)
        if inner is None:
            raise AttributeError("_fetch_batch")
        return lambda indices: inner(self.indices[indices])


class ConcatDataset(Dataset):
    """Datasets one after another."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset needs at least one dataset")
        self.cumulative_sizes = np.cumsum([len(d) for d in self.datasets]).tolist()

    def __len__(self):
        return self.cumulative_sizes[-1]

    def __getitem__(self, index):
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a ConcatDataset of {len(self)} samples")
        k = int(np.searchsorted(self.cumulative_sizes, index, side="right"))
        start = self.cumulative_sizes[k - 1] if k else 0
        return self.datasets[k][index - start]


def random_split(dataset, lengths, generator=None):
    """Split a dataset into non-overlapping random Subsets of the given lengths.

    `lengths`: ints summing to len(dataset), or fractions summing to 1 (as PyTorch: each part gets
    floor(fraction * n), the samples left over go one each to the parts in order). `generator`: a numpy
    Generator or an int seed; None draws from fastbp's generator (reproducible under fastbp.manual_seed)."""
    n = len(dataset)
    lengths = list(lengths)
    if not lengths:
        raise ValueError("random_split: lengths is empty")
    for v in lengths:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or v < 0:
            raise ValueError(f"random_split: lengths must be non-negative ints or fractions, got {lengths!r}")
    if all(isinstance(v, numbers.Integral) for v in lengths):
        counts = [int(v) for v in lengths]
        if sum(counts) != n:
            raise ValueError(f"random_split: lengths {counts} sum to {sum(counts)}, but the dataset has {n} samples")
    else:
        if not math.isclose(sum(lengths), 1.0, abs_tol=1e-9):
            raise ValueError(f"random_split: fractions {lengths} sum to {sum(lengths)}, not 1")
        counts = [int(math.floor(n * f)) for f in lengths]
        for k in range(n - sum(counts)):
            counts[k % len(counts)] += 1
        empty = [k for k, c in enumerate(counts) if c == 0]
        if empty:
            raise ValueError(f"random_split: fractions {lengths} of {n} samples leave part(s) {empty} empty")
    perm = _generator(generator).permutation(n)
    out, start = [], 0
    for c in counts:
        out.append(Subset(dataset, perm[start:start + c]))
        start += c
    return out
