"""Splitting arrays: train/test and train/validation/test splits, K-fold and stratified K-fold.

The splitters follow scikit-learn's interface (`split(X, y=None, groups=None)` yields (train_index,
test_index) pairs of int64 arrays, `get_n_splits()`), so a scikit-learn splitter works wherever fastbp
takes one, and these work in scikit-learn's `cross_val_score`/`GridSearchCV`.

Randomness: every function takes a `seed` (an int, or a numpy Generator). seed=None draws from fastbp's
generator, so `fastbp.manual_seed(n)` makes the split reproducible."""
import numbers

import numpy as np

from ..random import get_rng

__all__ = ["train_test_split", "train_val_test_split", "KFold", "StratifiedKFold"]


def _generator(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng(get_rng().integers(2**63))
    return np.random.default_rng(seed)


def _n_samples(X, name="X"):
    try:
        return len(X)
    except TypeError:
        raise TypeError(f"{name} must be an array-like with a length, got {type(X).__name__}") from None


def _part_size(value, n, name):
    """An int count or a float fraction of n -> a count (fractions round to the nearest sample)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an int count or a float fraction, got {value!r}")
    if isinstance(value, numbers.Integral):
        count = int(value)
    else:
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name}={value!r}: a fraction must be in (0, 1)")
        count = int(round(value * n))
    if not 0 < count < n:
        raise ValueError(f"{name}={value!r} gives {count} of {n} samples: every part must be non-empty")
    return count


def _check_labels(y, n, name="y"):
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one label per sample (1-D), got shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"{name} has {len(y)} labels but X has {n} samples")
    return y


def _take(a, idx):
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return a[idx]
    if hasattr(a, "data") and isinstance(getattr(a, "data"), np.ndarray):  # a fastbp Tensor
        from ..tensor import Tensor
        return Tensor(a.data[idx])
    return np.asarray(a)[idx]


def _stratified_counts(class_sizes, total):
    """Split `total` samples over classes in proportion to their sizes (largest remainder), never giving a
    class more than it has."""
    class_sizes = np.asarray(class_sizes, dtype=np.int64)
    exact = class_sizes * (total / class_sizes.sum())
    counts = np.floor(exact).astype(np.int64)
    rest = total - counts.sum()
    order = np.argsort(-(exact - counts), kind="stable")
    for c in order:
        if rest == 0:
            break
        if counts[c] < class_sizes[c]:
            counts[c] += 1
            rest -= 1
    return counts


def _split_indices(n, sizes, rng, labels=None):
    """Random disjoint index arrays with the given sizes (the remainder is the last part), stratified by
    `labels` when given. Each part's indices are in random order."""
    if labels is None:
        perm = rng.permutation(n)
        parts, start = [], 0
        for s in sizes:
            parts.append(perm[start:start + s])
            start += s
        parts.append(perm[start:])
        return parts
    classes, inverse = np.unique(labels, return_inverse=True)
    members = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(classes))]
    remaining = np.array([len(m) for m in members], dtype=np.int64)
    taken = np.zeros(len(classes), dtype=np.int64)
    parts = []
    for s in sizes:
        counts = _stratified_counts(remaining, s)
        parts.append(np.concatenate([m[t:t + k] for m, t, k in zip(members, taken, counts)]))
        taken += counts
        remaining -= counts
    parts.append(np.concatenate([m[t:] for m, t in zip(members, taken)]))
    return [rng.permutation(p) for p in parts]


def train_test_split(X, y, test_size, seed=0, stratify=None):
    """Shuffle and split off `test_size` samples (an int) or fraction (a float).
    Returns X_train, X_test, y_train, y_test. `stratify`: labels to keep in proportion (or True for y)."""
    n = _n_samples(X)
    if y is not None:
        _check_labels(y, n)
    n_test = _part_size(test_size, n, "test_size")
    labels = _stratify_labels(stratify, y, n)
    test, train = _split_indices(n, [n_test], _generator(seed), labels)
    return _take(X, train), _take(X, test), _take(y, train), _take(y, test)


def _stratify_labels(stratify, y, n):
    if stratify is None or stratify is False:
        return None
    if stratify is True:
        if y is None:
            raise ValueError("stratify=True needs y")
        stratify = y
    return _check_labels(stratify, n, "stratify")


def train_val_test_split(X, y=None, val=0.1, test=0.1, stratify=None, seed=0):
    """Split into train / validation / test parts in one go (the training set is what is left).

    `val` and `test` are counts (ints) or fractions of all samples (floats); every part must be non-empty.
    `stratify`: labels whose proportions every part keeps (True means y). Returns
    (X_train, X_val, X_test) or, with y, (X_train, X_val, X_test, y_train, y_val, y_test)."""
    n = _n_samples(X)
    if y is not None:
        _check_labels(y, n)
    n_val = _part_size(val, n, "val")
    n_test = _part_size(test, n, "test")
    if n_val + n_test >= n:
        raise ValueError(f"val={val!r} and test={test!r} take {n_val} + {n_test} of {n} samples: nothing is left "
                         f"to train on (fractions must sum to less than 1)")
    labels = _stratify_labels(stratify, y, n)
    val_idx, test_idx, train_idx = _split_indices(n, [n_val, n_test], _generator(seed), labels)
    xs = (_take(X, train_idx), _take(X, val_idx), _take(X, test_idx))
    if y is None:
        return xs
    return xs + (_take(y, train_idx), _take(y, val_idx), _take(y, test_idx))


def _check_n_splits(n_splits):
    if isinstance(n_splits, bool) or not isinstance(n_splits, numbers.Integral) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2, got {n_splits!r}")
    return int(n_splits)


class KFold:
    """K folds of consecutive samples (shuffled first when shuffle=True); each fold is the test set once.

    As scikit-learn's KFold: the first n % n_splits folds have one sample more. `seed` (alias
    `random_state`) is used only with shuffle=True."""

    def __init__(self, n_splits=5, shuffle=False, seed=None, random_state=None):
        self.n_splits = _check_n_splits(n_splits)
        self.shuffle = bool(shuffle)
        self.seed = seed if seed is not None else random_state

    def get_n_splits(self, X=None, y=None, groups=None):
        return self.n_splits

    def _check_n(self, X):
        n = _n_samples(X)
        if self.n_splits > n:
            raise ValueError(f"n_splits={self.n_splits} is more than the number of samples ({n})")
        return n

    def _order(self, n):
        return _generator(self.seed).permutation(n) if self.shuffle else np.arange(n)

    def _fold_ids(self, X, y):
        n = self._check_n(X)
        order = self._order(n)
        sizes = np.full(self.n_splits, n // self.n_splits, dtype=np.int64)
        sizes[:n % self.n_splits] += 1
        fold = np.empty(n, dtype=np.int64)
        fold[order] = np.repeat(np.arange(self.n_splits), sizes)
        return fold

    def split(self, X, y=None, groups=None):
        fold = self._fold_ids(X, y)
        for k in range(self.n_splits):
            test = self._test_order(fold, k)
            yield np.flatnonzero(fold != k), test

    def _test_order(self, fold, k):
        return np.flatnonzero(fold == k)

    def __repr__(self):
        return f"{type(self).__name__}(n_splits={self.n_splits}, shuffle={self.shuffle}, seed={self.seed})"


class StratifiedKFold(KFold):
    """K folds that keep each class's proportion: the members of each class (shuffled when shuffle=True)
    are dealt round-robin onto the folds, classes one after another, so per-class counts and fold sizes
    differ by at most one between folds. Every class needs at least n_splits members (an error otherwise)."""

    def _fold_ids(self, X, y):
        n = self._check_n(X)
        if y is None:
            raise ValueError("StratifiedKFold.split needs the labels y")
        y = _check_labels(y, n)
        classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        small = [(c, k) for c, k in zip(classes.tolist(), counts.tolist()) if k < self.n_splits]
        if small:
            raise ValueError(f"n_splits={self.n_splits}: every class needs at least {self.n_splits} members; "
                             f"too few in class(es) {', '.join(f'{c!r} ({k})' for c, k in small)}")
        rng = _generator(self.seed) if self.shuffle else None
        order = np.concatenate([rng.permutation(np.flatnonzero(inverse == c)) if rng is not None
                                else np.flatnonzero(inverse == c) for c in range(len(classes))])
        fold = np.empty(n, dtype=np.int64)
        fold[order] = np.arange(n) % self.n_splits
        return fold
