"""Exact resume across processes and determinism across thread counts.

6 epochs straight vs 3 epochs + checkpoint + a NEW process that loads it and trains 3 more: the parameters
are bit-identical, for SGD with momentum under a step schedule (stepped per epoch) and for Adam under a
cosine schedule behind a linear warm-up (stepped per batch). The data loader shuffles from fastbp's global
generator, so the run also depends on the generator state the checkpoint restores."""
import numpy as np
import pytest

import fastbp
from helpers import run_code

_SCRIPT = r"""
import sys
import numpy as np
import fastbp
from fastbp import nn, optim
from fastbp.optim import lr_scheduler
from fastbp.data import DataLoader, TensorDataset
from fastbp.train import fit, ModelCheckpoint, EarlyStopping

def run(kind, epochs, save=None, resume=None):
    fastbp.manual_seed(0)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 12)).astype(np.float32)
    y = (X[:, :3].sum(axis=1) > 0).astype(np.int64) + (X[:, 3] > 1)
    model = nn.Sequential(nn.Linear(12, 32), nn.Tanh(), nn.Linear(32, 3))
    if kind == "sgd":
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        sched, per = lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), "epoch"
    else:
        opt = optim.Adam(model.parameters(), lr=3e-3)
        sched = lr_scheduler.LinearWarmup(opt, warmup_steps=10, after=lr_scheduler.CosineAnnealingLR(opt, T_max=60))
        per = "batch"
    loader = DataLoader(TensorDataset(X[:160], y[:160]), batch_size=16, shuffle=True)
    cbs = [EarlyStopping(patience=10)] + ([ModelCheckpoint(save)] if save else [])
    hist = fit(model, nn.CrossEntropyLoss(), opt, loader, val_data=(X[160:], y[160:]), epochs=epochs,
               scheduler=sched, scheduler_step=per, callbacks=cbs, resume=resume, progress=False)
    return model, opt, hist

mode, kind, path, out = sys.argv[1:5]
if mode == "straight_and_first":
    model, opt, hist = run(kind, 6)
    fastbp.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "history": hist.to_dict()}, out)
    run(kind, 3, save=path)
else:
    model, opt, hist = run(kind, 6, resume=path)
    fastbp.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "history": hist.to_dict()}, out)
print("done")
"""


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_resume_in_a_new_process_is_bit_identical(tmp_path, kind):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT)
    ck, straight, resumed = (str(tmp_path / n) for n in ("ck.safetensors", "straight.st", "resumed.st"))
    for mode, out in (("straight_and_first", straight), ("resume", resumed)):
        r = run_code("import sys; sys.argv = ['run.py', %r, %r, %r, %r]; exec(open(%r).read())"
                     % (mode, kind, ck, out, str(script)))
        assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr[-3000:]
    a, b = fastbp.load(straight), fastbp.load(resumed)
    for k in a["model"]:
        assert a["model"][k].tobytes() == b["model"][k].tobytes(), k
    for i, s in a["optimizer"]["state"].items():
        for key, v in s.items():
            assert np.asarray(v).tobytes() == np.asarray(b["optimizer"]["state"][i][key]).tobytes(), (i, key)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    ha, hb = a["history"], b["history"]
    assert ha["epoch"] == hb["epoch"] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "val_loss", "val_accuracy", "lr"):
        assert ha[key] == hb[key], key  # the resumed run carries the first three epochs' history too


def _lenet_run(threads, steps=36, blas_threads=None):
    """The same script and seed: LeNet-5, `steps` SGD steps of batch 32 through fit; returns the weights.
    `blas_threads` caps the BLAS pool after fastbp.set_num_threads (which sets it and OpenMP together)."""
    import contextlib

    from threadpoolctl import threadpool_limits

    from fastbp import nn, optim
    from fastbp.data import DataLoader, TensorDataset
    from fastbp.train import fit

    previous = fastbp.get_num_threads()
    fastbp.set_num_threads(threads)
    blas = threadpool_limits(blas_threads, user_api="blas") if blas_threads else contextlib.nullcontext()
    try:
        with blas:
            fastbp.manual_seed(0)
            rng = np.random.default_rng(0)
            X = rng.random((steps * 32, 1, 28, 28), dtype=np.float32)
            y = rng.integers(0, 10, len(X))
            model = nn.Sequential(
                nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
            opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            fit(model, nn.CrossEntropyLoss(), opt, DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True),
                epochs=1, progress=False)
            return model.state_dict()
    finally:
        fastbp.set_num_threads(previous)


def test_lenet_fastbp_kernels_give_the_same_bits_on_one_and_two_threads():
    """fastbp's own kernels (OpenMP conv, pooling, activations, losses, optimizer) on 1 and 2 threads, with
    the BLAS pool held at one thread: identical bits."""
    one, two = _lenet_run(1, blas_threads=1), _lenet_run(2, blas_threads=1)
    for k in one:
        assert one[k].tobytes() == two[k].tobytes(), k


@pytest.fixture(scope="module")
def lenet_two_threads():
    return _lenet_run(2)


def test_lenet_training_is_bit_identical_when_repeated(lenet_two_threads):
    again = _lenet_run(2)
    for k in again:
        assert again[k].tobytes() == lenet_two_threads[k].tobytes(), k


def test_lenet_training_is_bit_identical_on_one_and_two_threads(lenet_two_threads):
    # without the BLAS thread hook (a serial build, another BLAS) products use the BLAS's own threads, whose
    # rounding may change with their count (README, Threads): there both runs hold the BLAS at one thread
    if fastbp._config._conv_blas_thread_hook():
        one, two = _lenet_run(1), lenet_two_threads
    else:
        one, two = _lenet_run(1, blas_threads=1), _lenet_run(2, blas_threads=1)
    for k in one:
        assert one[k].tobytes() == two[k].tobytes(), k
