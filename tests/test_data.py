"""fastbp.data: datasets, DataLoader and samplers, random_split, splits and K-fold splitters."""
import numpy as np
import pytest

import fastbp
from fastbp.data import (BatchSampler, DataLoader, Dataset, KFold, RandomSampler, StratifiedKFold, Subset,
                         TensorDataset, random_split, train_test_split, train_val_test_split)


def _xy(n=23, d=3):
    X = np.arange(n * d, dtype=np.float32).reshape(n, d)
    return X, np.arange(n, dtype=np.int64) % 4


def test_utils_data_is_the_same_namespace():
    from fastbp.utils.data import DataLoader as DL, TensorDataset as TD, random_split as rs
    assert DL is DataLoader and TD is TensorDataset and rs is random_split


def test_loader_batches_cover_the_data_once_and_yield_tensors():
    X, y = _xy()
    loader = DataLoader(TensorDataset(X, y), batch_size=5, shuffle=True)
    assert len(loader) == 5
    seen = []
    for xb, yb in loader:
        assert isinstance(xb, fastbp.Tensor) and isinstance(yb, fastbp.Tensor)
        assert xb.dtype == np.float32 and yb.dtype == np.int64 and not xb.requires_grad
        np.testing.assert_array_equal(xb.numpy()[:, 0] / 3, yb.numpy() + 4 * ((xb.numpy()[:, 0] / 3) // 4))
        seen.extend((xb.numpy()[:, 0] / 3).astype(int).tolist())
    assert sorted(seen) == list(range(23)) and [len(b[0]) for b in loader] == [5, 5, 5, 5, 3]
    assert len(DataLoader(TensorDataset(X, y), batch_size=5, drop_last=True)) == 4
    assert [len(b[0]) for b in DataLoader(TensorDataset(X, y), batch_size=5, drop_last=True)] == [5] * 4


def test_loader_reshuffles_every_epoch_and_is_reproducible_under_manual_seed():
    X, y = _xy(50)

    def two_epochs():
        loader = DataLoader(TensorDataset(X, y), batch_size=50, shuffle=True)
        return [next(iter(loader))[0].numpy()[:, 0].copy() for _ in range(2)]

    fastbp.manual_seed(3)
    a1, a2 = two_epochs()
    fastbp.manual_seed(3)
    b1, b2 = two_epochs()
    assert not np.array_equal(a1, a2)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    # a loader with a seed of its own does not depend on (or advance) the global generator
    l1 = DataLoader(TensorDataset(X, y), batch_size=50, shuffle=True, seed=9)
    l2 = DataLoader(TensorDataset(X, y), batch_size=50, shuffle=True, generator=np.random.default_rng(9))
    fastbp.manual_seed(1)
    state = fastbp.random.get_rng_state()
    np.testing.assert_array_equal(next(iter(l1))[1].numpy(), next(iter(l2))[1].numpy())
    assert fastbp.random.get_rng_state() == state


def test_sequential_batches_are_views_and_shuffled_ones_a_single_copy():
    X, y = _xy()
    xb, yb = next(iter(DataLoader(TensorDataset(X, y), batch_size=4)))
    assert np.shares_memory(xb.numpy(), X) and np.shares_memory(yb.numpy(), y)
    xb, _ = next(iter(DataLoader(TensorDataset(X, y), batch_size=4, shuffle=True)))
    assert not np.shares_memory(xb.numpy(), X) and xb.numpy().flags.c_contiguous


class _Squares(Dataset):
    """A dataset with per-sample __getitem__ returning (array, int) pairs: the generic collate path."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return np.full(2, float(i), dtype=np.float32), i * i


def test_generic_dataset_collate_and_custom_collate_fn():
    xb, yb = next(iter(DataLoader(_Squares(), batch_size=4)))
    np.testing.assert_array_equal(xb.numpy(), np.repeat(np.arange(4, dtype=np.float32)[:, None], 2, 1))
    np.testing.assert_array_equal(yb.numpy(), [0, 1, 4, 9])
    out = list(DataLoader(_Squares(), batch_size=3, collate_fn=lambda s: [t[1] for t in s]))
    assert out == [[0, 1, 4], [9, 16, 25], [36, 49, 64], [81]]


class _EpochSampler:
    """What a distributed sampler looks like to the loader: __iter__, __len__, set_epoch (here: every other
    index, rotated by the epoch)."""

    def __init__(self, n):
        self.n, self.epoch, self.calls = n, 0, []

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.calls.append(epoch)

    def __iter__(self):
        idx = np.arange(0, self.n, 2)
        return iter(np.roll(idx, self.epoch).tolist())

    def __len__(self):
        return len(range(0, self.n, 2))


def test_custom_sampler_and_batch_sampler_plug_in_and_fit_calls_set_epoch():
    X, y = _xy(10)
    s = _EpochSampler(10)
    loader = DataLoader(TensorDataset(X, y), batch_size=2, sampler=s)
    assert len(loader) == 3
    loader.set_epoch(1)
    assert [b[1].numpy().tolist() for b in loader] == [[0, 0], [2, 0], [2]]  # indices 8,0 | 2,4 | 6 -> labels %4
    bs = BatchSampler(RandomSampler(range(10), seed=0), batch_size=4, drop_last=True)
    loader = DataLoader(TensorDataset(X, y), batch_sampler=bs)
    batches = [b[0].numpy()[:, 0] / 3 for b in loader]
    assert len(loader) == 2 and [len(b) for b in batches] == [4, 4] and len(set(np.concatenate(batches))) == 8
    # fit forwards set_epoch (0-based) to the sampler each epoch
    s = _EpochSampler(10)
    model = fastbp.nn.Linear(3, 4)
    fastbp.train.fit(model, fastbp.nn.CrossEntropyLoss(), fastbp.optim.SGD(model.parameters(), lr=1e-3),
                     DataLoader(TensorDataset(X, y), batch_size=2, sampler=s), epochs=3, progress=False)
    assert s.calls == [0, 1, 2]


def test_loader_state_dict_resumes_mid_epoch_and_later_epochs(tmp_path):
    X, y = _xy(20)

    def make(seed):
        return DataLoader(TensorDataset(X, y), batch_size=3, shuffle=True, seed=seed)

    def firsts(batches):
        return [xb.numpy()[:, 0].tolist() for xb, _ in batches]

    straight = make(5)
    expected = [firsts(straight) for _ in range(3)]
    loader = make(5)
    got = [firsts(loader)]
    it = iter(loader)
    part = firsts([next(it) for _ in range(3)])
    state = loader.state_dict()
    assert state["position"] == 3
    resumed = make(123)  # a different seed: everything comes from the state
    fastbp.save(state, tmp_path / "loader.safetensors")  # through the file format, as a checkpoint does
    resumed.load_state_dict(fastbp.load(tmp_path / "loader.safetensors"))
    got.append(part + firsts(resumed))
    got.append(firsts(resumed))
    assert got == expected




def test_loader_bad_input_errors():
    X, y = _xy()
    ds = TensorDataset(X, y)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        DataLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(ds, sampler=range(3), shuffle=True)
    with pytest.raises(ValueError, match="batch_sampler option is mutually exclusive"):
        DataLoader(ds, batch_size=4, batch_sampler=[[0, 1]])
    with pytest.raises(ValueError, match=r"different lengths \[23, 22\]"):
        TensorDataset(X, y[:-1])
    with pytest.raises(IndexError, match="index 99 for a dataset of 23"):
        list(DataLoader(ds, sampler=[0, 99]))
    with pytest.raises(ValueError, match="num_workers"):
        DataLoader(ds, num_workers=2)


def test_random_split_lengths_and_fractions():
    ds = TensorDataset(*_xy(10))
    a, b = random_split(ds, [7, 3], generator=0)
    assert isinstance(a, Subset) and (len(a), len(b)) == (7, 3)
    assert sorted(np.concatenate([a.indices, b.indices]).tolist()) == list(range(10))
    parts = random_split(ds, [0.5, 0.3, 0.2], generator=np.random.default_rng(1))
    assert [len(p) for p in parts] == [5, 3, 2]
    # a Subset still gives whole batches through the loader
    xb, yb = next(iter(DataLoader(a, batch_size=7)))
    np.testing.assert_array_equal(xb.numpy()[:, 0] / 3, a.indices)
    with pytest.raises(ValueError, match=r"sum to 9, but the dataset has 10"):
        random_split(ds, [5, 4])
    with pytest.raises(ValueError, match="sum to 0.9"):
        random_split(ds, [0.5, 0.4])
    with pytest.raises(ValueError, match="leave part"):
        random_split(ds, [0.95, 0.05 - 1e-12, 1e-12])


def test_train_val_test_split_stratified_sizes_and_errors():
    y = np.repeat([0, 1, 2], [60, 30, 10])
    X = np.arange(100.0)[:, None]
    Xtr, Xva, Xte, ytr, yva, yte = train_val_test_split(X, y, val=0.2, test=0.1, stratify=True, seed=0)
    assert (len(Xtr), len(Xva), len(Xte)) == (70, 20, 10)
    assert np.bincount(yva).tolist() == [12, 6, 2] and np.bincount(yte).tolist() == [6, 3, 1]
    assert sorted(np.concatenate([Xtr, Xva, Xte])[:, 0].tolist()) == list(range(100))
    np.testing.assert_array_equal(y[Xtr[:, 0].astype(int)], ytr)
    again = train_val_test_split(X, y, val=0.2, test=0.1, stratify=True, seed=0)
    np.testing.assert_array_equal(again[0], Xtr)
    assert len(train_val_test_split(X, val=5, test=5)) == 3
    with pytest.raises(ValueError, match="nothing is left to train on"):
        train_val_test_split(X, y, val=0.5, test=0.5)
    with pytest.raises(ValueError, match=r"val=0.001 gives 0 of 100 samples"):
        train_val_test_split(X, y, val=0.001, test=0.1)
    with pytest.raises(ValueError, match="y has 99 labels but X has 100"):
        train_val_test_split(X, y[:-1])
    # the old two-way split keeps its results
    Xa, Xb, ya, yb = train_test_split(X, y, test_size=0.25, seed=0)
    perm = np.random.default_rng(0).permutation(100)
    np.testing.assert_array_equal(Xb[:, 0], perm[:25])


@pytest.mark.parametrize("shuffle", [False, True])
def test_kfold_matches_scikit_learn_fold_sizes_and_partitions(shuffle):
    X = np.zeros((23, 2))
    kf = KFold(5, shuffle=shuffle, seed=0)
    folds = list(kf.split(X))
    assert kf.get_n_splits() == 5 and [len(te) for _, te in folds] == [5, 5, 5, 4, 4]
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(23))
    for tr, te in folds:
        assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 23
    if not shuffle:
        sk = pytest.importorskip("sklearn.model_selection")
        for (a, b), (c, d) in zip(folds, sk.KFold(5).split(X)):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, d)


def test_stratified_kfold_keeps_class_proportions_and_checks_its_input():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    X = np.zeros((100, 1))
    skf = StratifiedKFold(5, shuffle=True, seed=1)
    for tr, te in skf.split(X, y):
        assert np.bincount(y[te]).tolist() == [10, 6, 4]
    with pytest.raises(ValueError, match=r"too few in class\(es\) 2 \(3\)"):
        list(StratifiedKFold(4).split(np.zeros((11, 1)), np.repeat([0, 1, 2], [4, 4, 3])))
    with pytest.raises(ValueError, match="n_splits must be an integer >= 2, got 1"):
        KFold(1)
    with pytest.raises(ValueError, match=r"n_splits=5 is more than the number of samples \(3\)"):
        list(KFold(5).split(np.zeros(3)))


def test_our_splitters_work_in_scikit_learn():
    ms = pytest.importorskip("sklearn.model_selection")
    from sklearn.linear_model import LogisticRegression
    X, y = fastbp.data.load_digits()
    scores = ms.cross_val_score(LogisticRegression(max_iter=200), X[:300], y[:300],
                                cv=StratifiedKFold(3, shuffle=True, seed=0))
    assert scores.shape == (3,) and scores.mean() > 0.8
