"""DataLoader and samplers, shaped like torch.utils.data.

    loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)
    for xb, yb in loader:          # xb: float Tensor (64, ...); yb: int64 Tensor (64,)
        loss = loss_fn(model(xb), yb)

What a batch is: the default collate gives fastbp Tensors for every field, features and integer labels
alike (labels keep their integer dtype, requires_grad=False; the losses take them as they are, and
`yb.numpy()` is the NumPy array without a copy). Pass `collate_fn` to get anything else.

Cost: for a TensorDataset (or a Subset of one) with the default collate, a batch is made by one
fancy-indexing copy per array (a plain slice, no copy, when the order is sequential); other datasets are
read sample by sample (or through their `__getitems__`) and stacked.

Order and randomness: shuffle=True reshuffles every epoch. With neither `generator` nor `seed`, each
epoch's permutation is drawn from fastbp's generator (reproducible under `fastbp.manual_seed`); with
`seed=n` or `generator=np.random.default_rng(n)` the loader has a generator of its own. A custom `sampler`
(an iterable of indices with `__len__`, e.g. a distributed sampler with `set_epoch`) or `batch_sampler`
(an iterable of index lists) replaces the built-in order, with PyTorch's rules about which arguments
exclude each other. `loader.set_epoch(e)` forwards to the samplers that have `set_epoch`
(`fastbp.train.fit` calls it at the start of every epoch).

Resuming: `state_dict()` holds the sampler's generator state and, during an epoch, that epoch's order and
how many batches were already yielded; after `load_state_dict()`, the next iteration yields the rest of
that epoch, and later epochs continue exactly as in an uninterrupted run."""
import numbers

import numpy as np

from ..random import get_rng
from ..tensor import Tensor

__all__ = ["DataLoader", "Sampler", "SequentialSampler", "RandomSampler", "SubsetRandomSampler", "BatchSampler",
           "default_collate", "batches"]


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _own_generator(generator, seed, who):
    if generator is not None and seed is not None:
        raise ValueError(f"{who}: pass generator or seed, not both")
    if generator is not None:
        if isinstance(generator, numbers.Integral):
            return np.random.default_rng(int(generator))
        if not isinstance(generator, np.random.Generator):
            raise TypeError(f"{who}: generator must be a numpy Generator or an int seed, got "
                            f"{type(generator).__name__}")
        return generator
    if seed is not None:
        return np.random.default_rng(seed)
    return None


class Sampler:
    """Base class: an iterable of dataset indices with a length."""

    def __iter__(self):
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError


class SequentialSampler(Sampler):
    def __init__(self, data_source):
        self.data_source = data_source

    def _order(self):
        return np.arange(len(self.data_source), dtype=np.int64)

    def __iter__(self):
        return iter(self._order().tolist())

    def __len__(self):
        return len(self.data_source)


class RandomSampler(Sampler):
    """A new permutation every iteration (or num_samples draws with replacement). The generator is its
    own when given (a numpy Generator or an int seed), else each iteration draws from fastbp's."""

    def __init__(self, data_source, replacement=False, num_samples=None, generator=None, seed=None):
        self.data_source = data_source
        self.replacement = bool(replacement)
        if num_samples is not None:
            num_samples = _positive_int("num_samples", num_samples)
            if not self.replacement:
                raise ValueError("RandomSampler: num_samples is only for replacement=True")
        self._num_samples = num_samples
        self.generator = _own_generator(generator, seed, "RandomSampler")

    @property
    def num_samples(self):
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def _order(self):
        rng = self.generator if self.generator is not None else get_rng()
        n = len(self.data_source)
        if self.replacement:
            return rng.integers(0, n, size=self.num_samples, dtype=np.int64)
        return rng.permutation(n).astype(np.int64, copy=False)

    def __iter__(self):
        return iter(self._order().tolist())

    def __len__(self):
        return self.num_samples

    def state_dict(self):
        return {"generator": None if self.generator is None else self.generator.bit_generator.state}

    def load_state_dict(self, state):
        if state.get("generator") is not None:
            if self.generator is None:
                self.generator = np.random.default_rng()
            self.generator.bit_generator.state = state["generator"]


class SubsetRandomSampler(RandomSampler):
    """The given indices in a random order, a new one every iteration."""

    def __init__(self, indices, generator=None, seed=None):
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        super().__init__(self.indices, generator=generator, seed=seed)

    def _order(self):
        rng = self.generator if self.generator is not None else get_rng()
        return self.indices[rng.permutation(len(self.indices))]


class BatchSampler(Sampler):
    """Lists of `batch_size` indices from `sampler` (the last one shorter unless drop_last)."""

    def __init__(self, sampler, batch_size, drop_last=False):
        self.sampler = sampler
        self.batch_size = _positive_int("batch_size", batch_size)
        self.drop_last = bool(drop_last)

    def __iter__(self):
        batch = []
        for i in self.sampler:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def _as_tensor(value):
    if isinstance(value, Tensor):
        return value
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        return arr  # strings and objects pass through as arrays
    t = Tensor.__new__(Tensor)
    t.data, t.grad, t.requires_grad, t._node = arr, None, False, None
    return t


def default_collate(samples):
    """Stack a list of samples into a batch: tuples/lists field by field, dicts key by key, arrays, Tensors
    and numbers into one fastbp Tensor each."""
    first = samples[0]
    if isinstance(first, (tuple, list)):
        if any(len(s) != len(first) for s in samples):
            raise ValueError("default_collate: samples have different numbers of fields")
        fields = [default_collate([s[k] for s in samples]) for k in range(len(first))]
        return fields if isinstance(first, list) else tuple(fields)
    if isinstance(first, dict):
        return {k: default_collate([s[k] for s in samples]) for k in first}
    arrays = [s.data if isinstance(s, Tensor) else s for s in samples]
    return _as_tensor(np.stack([np.asarray(a) for a in arrays]))


class DataLoader:
    """DataLoader(dataset, batch_size=1, shuffle=False, sampler=None, batch_sampler=None, drop_last=False,
    collate_fn=None, generator=None, seed=None) -- see the module docstring."""

    def __init__(self, dataset, batch_size=1, shuffle=False, sampler=None, batch_sampler=None, num_workers=0,
                 collate_fn=None, drop_last=False, generator=None, seed=None):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"DataLoader needs a map-style dataset (with __getitem__ and __len__), got "
                            f"{type(dataset).__name__}")
        if num_workers:
            raise ValueError(f"num_workers={num_workers!r}: fastbp's DataLoader reads batches in the calling "
                             f"process (num_workers must be 0)")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, "
                                 "and drop_last")
            batch_size, drop_last = None, False
        elif batch_size is None:
            raise ValueError("batch_size=None (no batching) is not supported; use batch_size=1")
        else:
            batch_size = _positive_int("batch_size", batch_size)
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if sampler is not None and (generator is not None or seed is not None):
            raise ValueError("generator/seed are for the built-in shuffling; a custom sampler draws its own order")
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable, got {type(collate_fn).__name__}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = bool(drop_last)
        self.collate_fn = collate_fn
        if sampler is None and batch_sampler is None:
            sampler = RandomSampler(dataset, generator=generator, seed=seed) if shuffle else SequentialSampler(dataset)
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self._resume = None  # (order, bounds, position) of an epoch to finish, set by load_state_dict
        self._current = None  # [order, bounds, position] of the epoch being iterated

    # ----- length and epochs -------------------------------------------------------------------------
    def __len__(self):
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch):
        """Forward `set_epoch(epoch)` to the sampler and batch sampler that have it (distributed samplers)."""
        for s in (self.sampler, self.batch_sampler):
            if s is not None and hasattr(s, "set_epoch"):
                s.set_epoch(epoch)

    # ----- order ----------------------------------------------------------------------------------
    def _epoch_plan(self):
        """(order, bounds): the epoch's indices in order and the batch boundaries into it."""
        if self.batch_sampler is not None:
            batches = [np.asarray(b, dtype=np.int64).reshape(-1) for b in self.batch_sampler]
            order = np.concatenate(batches) if batches else np.empty(0, np.int64)
            bounds = np.concatenate([[0], np.cumsum([len(b) for b in batches])]).astype(np.int64)
            return order, bounds
        order_fn = getattr(self.sampler, "_order", None)
        order = order_fn() if order_fn is not None else np.fromiter((int(i) for i in self.sampler), dtype=np.int64)
        n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        bounds = np.arange(0, stop, self.batch_size, dtype=np.int64)
        bounds = np.append(bounds, stop) if stop > 0 else np.zeros(1, np.int64)
        return order, bounds

    def __iter__(self):
        if self._resume is not None:
            order, bounds, position = self._resume
            self._resume = None
        else:
            order, bounds = self._epoch_plan()
            position = 0
        return self._batches(order, bounds, position)

    def _batches(self, order, bounds, position):
        n = len(self.dataset)
        if len(order) and (order.min() < -n or order.max() >= n):
            bad = order[(order < -n) | (order >= n)][0]
            raise IndexError(f"DataLoader: the sampler gave index {int(bad)} for a dataset of {n} samples")
        fetch = getattr(self.dataset, "_fetch_batch", None) if self.collate_fn is None else None
        sequential = (fetch is not None and len(order) > 0 and order[0] == 0
                      and np.array_equal(order, np.arange(len(order))))
        getitems = getattr(self.dataset, "__getitems__", None)
        collate = self.collate_fn or default_collate
        state = self._current = [order, bounds, position]
        for k in range(position, len(bounds) - 1):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            if fetch is not None:
                idx = slice(lo, hi) if sequential and hasattr(self.dataset, "arrays") else order[lo:hi]
                if isinstance(idx, slice):
                    batch = tuple(a[idx] for a in self.dataset.arrays)
                else:
                    batch = fetch(idx)
                batch = tuple(_as_tensor(a) for a in batch)
            else:
                idx = order[lo:hi].tolist()
                samples = getitems(idx) if getitems is not None else [self.dataset[i] for i in idx]
                batch = collate(samples)
            state[2] = k + 1
            yield batch
        self._current = None

    # ----- state ----------------------------------------------------------------------------------
    def state_dict(self):
        """The sampler's generator state, and the current epoch's order and position if one is under way."""
        sd = {}
        for name in ("sampler", "batch_sampler"):
            s = getattr(self, name)
            if s is not None and hasattr(s, "state_dict"):
                sd[name] = s.state_dict()
        cur = self._current if self._current is not None else self._resume
        if cur is not None and cur[2] < len(cur[1]) - 1:
            sd["order"], sd["bounds"], sd["position"] = cur[0].copy(), cur[1].copy(), int(cur[2])
        return sd

    def load_state_dict(self, state):
        for name in ("sampler", "batch_sampler"):
            s = getattr(self, name)
            if name in state and s is not None and hasattr(s, "load_state_dict"):
                s.load_state_dict(state[name])
        if "order" in state:
            order = np.asarray(state["order"], dtype=np.int64)
            bounds = np.asarray(state["bounds"], dtype=np.int64)
            position = int(state["position"])
            if len(bounds) < 1 or bounds[-1] != len(order) or not 0 <= position < len(bounds):
                raise ValueError("DataLoader.load_state_dict: inconsistent order/bounds/position")
            self._resume = (order, bounds, position)
        else:
            self._resume = None
        self._current = None

    def __repr__(self):
        return (f"DataLoader({type(self.dataset).__name__} of {len(self.dataset)}, batch_size={self.batch_size}, "
                f"sampler={type(self.sampler).__name__ if self.sampler is not None else None}, "
                f"drop_last={self.drop_last})")


def batches(X, y, batch_size, shuffle=True, rng=None):
    """Yield (X_batch, y_batch) NumPy mini-batches; shuffled with fastbp's generator unless rng is given.
    (The plain-array helper that predates DataLoader.)"""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(X)
    if len(y) != n:
        raise ValueError(f"X has {n} samples but y has {len(y)}")
    order = (rng or get_rng()).permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield X[idx], y[idx]
