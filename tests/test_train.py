"""fastbp.train: fit, History, evaluate, predict, callbacks, cross_validate, and their error messages."""
import numpy as np
import pytest

import fastbp
from fastbp import nn, optim
from fastbp.data import DataLoader, TensorDataset
from fastbp.optim import lr_scheduler
from fastbp.train import (Callback, CallbackError, EarlyStopping, History, LearningRateMonitor, ModelCheckpoint,
                          cross_validate, evaluate, fit, load_checkpoint, predict, save_checkpoint)


def _blobs(n=240, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(k, d))
    y = np.arange(n) % k
    X = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    return X, y.astype(np.int64)


def _mlp(d=6, k=3, h=16):
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k))


class _Recorder(nn.Module):
    """Wraps a model and records, per forward, whether it ran in training mode and with grad recording."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def forward(self, x):
        self.calls.append((self.training, fastbp.is_grad_enabled()))
        return self.inner(x)


def test_fit_logs_history_switches_modes_and_evaluates_without_grad(capsys):
    X, y = _blobs()
    model = _Recorder(_mlp())
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hist = fit(model, nn.CrossEntropyLoss(), opt, (X[:180], y[:180]), val_data=(X[180:], y[180:]), epochs=4,
               batch_size=32, progress=False)
    assert capsys.readouterr().out == ""  # progress=False is silent
    assert isinstance(hist, History) and len(hist) == 4 and hist.epoch == [1, 2, 3, 4]
    d = hist.to_dict()
    assert list(d) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    assert d["loss"][-1] < d["loss"][0] and d["val_accuracy"][-1] > 0.9 and d["lr"] == [0.05] * 4
    train_calls = [c for c in model.calls if c[0]]
    val_calls = [c for c in model.calls if not c[0]]
    assert len(train_calls) == 4 * 6 and all(g for _, g in train_calls)  # 180 / 32 -> 6 batches per epoch
    assert len(val_calls) == 4 and not any(g for _, g in val_calls)
    assert model.training  # left in train mode after fit, as after a PyTorch loop
    # the validation numbers are evaluate()'s
    res = evaluate(model, (X[180:], y[180:]), nn.CrossEntropyLoss())
    assert res["loss"] == pytest.approx(d["val_loss"][-1], rel=1e-6) and res["accuracy"] == d["val_accuracy"][-1]


def test_history_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    hist = History([{"epoch": 1, "loss": 1.0, "val_loss": 1.2, "accuracy": 0.5},
                    {"epoch": 2, "loss": 0.5, "val_loss": 0.9, "accuracy": 0.7}])
    path = hist.plot(tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path == tmp_path / "loss.png"
    assert History.from_dict(hist.to_dict()).to_dict() == hist.to_dict()


def test_progress_modes(capsys):
    X, y = _blobs(64)
    kw = dict(epochs=2, batch_size=16)
    model = _mlp()
    fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters()), (X, y), progress=True, **kw)
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()  # not a terminal under pytest: one plain line per epoch
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  loss ") and "accuracy" in lines[0]
    assert out.err == ""
    fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters()), (X, y), progress="bar", **kw)
    out = capsys.readouterr()
    assert "epoch 2/2" in out.err and "samples/s" in out.err and out.out == ""


def test_scheduler_per_epoch_and_per_batch_and_lr_monitor():
    X, y = _blobs(64)
    model = _mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    mon = LearningRateMonitor()
    hist = fit(model, nn.CrossEntropyLoss(), opt, (X, y), epochs=4, batch_size=16, progress=False,
               scheduler=lr_scheduler.StepLR(opt, step_size=2, gamma=0.5), callbacks=[mon])
    assert hist["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.05])
    assert [r[2][0] for r in mon.lrs] == pytest.approx([0.1, 0.1, 0.05, 0.05])
    opt = optim.SGD(model.parameters(), lr=0.1)
    mon = LearningRateMonitor(per="batch")
    fit(model, nn.CrossEntropyLoss(), opt, (X, y), epochs=2, batch_size=16, progress=False, scheduler_step="batch",
        scheduler=lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=8), callbacks=[mon])
    assert [r[1] for r in mon.lrs] == list(range(1, 9))
    assert [r[2][0] for r in mon.lrs] == pytest.approx([0.1 * (1 - k / 8) for k in range(1, 9)])


def test_grad_clip_bounds_the_update_and_lbfgs_gets_a_closure():
    X, y = _blobs(32)
    X = X * 1000  # huge gradients
    model = _mlp()
    before = np.concatenate([p.data.ravel() for p in model.parameters()])
    fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1), (X, y), epochs=1, batch_size=32,
        grad_clip=1.0, progress=False, metrics=())
    after = np.concatenate([p.data.ravel() for p in model.parameters()])
    assert np.linalg.norm(after - before) <= 0.1 * 1.0 * (1 + 1e-5)
    X, y = _blobs(90)
    model = _mlp()
    hist = fit(model, nn.CrossEntropyLoss(), optim.LBFGS(model.parameters(), max_iter=5), (X, y), epochs=3,
               batch_size=90, progress=False)
    assert hist["loss"][-1] < hist["loss"][0] and hist["accuracy"][-1] > 0.9


def test_custom_metrics_evaluate_and_predict_restore_the_mode():
    X, y = _blobs(100)
    model = _mlp()

    def top2(out, target):
        return float(np.mean([t in np.argsort(o)[-2:] for o, t in zip(out, target)]))

    hist = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), 1e-2), (X, y), val_data=(X, y),
               epochs=2, metrics=[top2, "accuracy"], progress=False)
    assert {"top2", "val_top2", "accuracy", "val_accuracy"} <= set(hist.keys())
    model.train()
    out = predict(model, X, batch_size=7)
    assert model.training and out.shape == (100, 3)
    with fastbp.no_grad():
        np.testing.assert_allclose(out, model(fastbp.tensor(X)).numpy(), rtol=1e-6)
    model.eval()
    evaluate(model, DataLoader(TensorDataset(X, y), batch_size=30), nn.CrossEntropyLoss())
    assert not model.training


class _Scripted(Callback):
    """Overwrites the monitored value with a script, so stopping decisions are known in advance; keeps a copy
    of the weights of every epoch."""

    def __init__(self, values):
        self.values, self.weights = values, {}

    def on_epoch_end(self, state, logs):
        logs["val_loss"] = self.values[state.epoch - 1]
        self.weights[state.epoch] = {k: v.copy() for k, v in state.model.state_dict().items()}


def test_early_stopping_stops_says_why_and_restores_the_best_epoch(capsys):
    X, y = _blobs(64)
    model = _mlp()
    script = _Scripted([1.0, 0.8, 0.7, 0.75, 0.71, 0.9, 0.1, 0.1])
    es = EarlyStopping(patience=3)
    hist = fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05), (X, y), val_data=(X, y),
               epochs=8, callbacks=[script, es], progress="log")
    out = capsys.readouterr().out
    assert len(hist) == 6 and es.stopped_epoch == 6 and es.best_epoch == 3 and hist.stopped_epoch == 6
    assert "early stopping at epoch 6: val_loss has not improved by more than 0 for 3 epochs (patience 3); " \
           "best val_loss 0.7000 at epoch 3" in out
    assert "restored the weights of epoch 3" in out
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, script.weights[3][k])
    # min_delta: 0.75 -> 0.7 is not an improvement of more than 0.1
    es = EarlyStopping(patience=1, min_delta=0.1, restore_best_weights=False)
    fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05), (X, y), val_data=(X, y), epochs=5,
        callbacks=[_Scripted([0.75, 0.7, 0.5, 0.45, 0.3]), es], progress=False)
    assert es.stopped_epoch == 2 and es.best_epoch == 1


def test_model_checkpoint_best_only_weights_only_and_full(tmp_path):
    X, y = _blobs(64)
    model = _mlp()
    opt = optim.SGD(model.parameters(), 0.05, momentum=0.9)
    best = ModelCheckpoint(str(tmp_path / "best-{epoch:02d}.safetensors"), save_best_only=True, save_weights_only=True)
    every = ModelCheckpoint(tmp_path / "last.safetensors")
    fit(model, nn.CrossEntropyLoss(), opt, (X, y), val_data=(X, y), epochs=4, progress=False,
        callbacks=[_Scripted([1.0, 0.5, 0.7, 0.6]), best, every])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-01.safetensors", "best-02.safetensors",
                                                         "last.safetensors"]
    assert best.best_path.endswith("best-02.safetensors") and best.best == 0.5
    weights = fastbp.load(best.best_path)
    assert list(weights) == list(model.state_dict())
    fresh = _mlp()
    fresh_opt = optim.SGD(fresh.parameters(), 0.05, momentum=0.9)
    info = load_checkpoint(tmp_path / "last.safetensors", fresh, fresh_opt)
    assert info["epoch"] == 4 and info["step"] == 4 * 2 and len(info["history"]["loss"]) == 4
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [
    lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    lambda p: optim.Adam(p, lr=1e-2),
    lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True),
    lambda p: optim.Adagrad(p, lr=0.05),
    lambda p: optim.LBFGS(p, lr=1.0, max_iter=4, history_size=3, line_search_fn="strong_wolfe"),
], ids=["sgd-nesterov", "adam", "adamw", "rmsprop", "adagrad", "lbfgs"])
def test_every_optimizer_resumes_bit_identically_from_a_checkpoint(tmp_path, make):
    X, y = _blobs(96)

    def run(epochs, resume=None, save=None):
        fastbp.manual_seed(1)
        model = _mlp()
        opt = make(model.parameters())
        loader = DataLoader(TensorDataset(X, y), batch_size=48 if isinstance(opt, optim.LBFGS) else 16, shuffle=True)
        cbs = [ModelCheckpoint(save)] if save else []
        fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=epochs, resume=resume, callbacks=cbs, progress=False)
        return model

    straight = run(4)
    run(2, save=tmp_path / "ck.safetensors")
    fastbp.manual_seed(99)  # whatever the generator does in between, the checkpoint restores it
    resumed = run(4, resume=tmp_path / "ck.safetensors")
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert a.tobytes() == b.tobytes(), k


def test_loading_a_checkpoint_into_a_different_model_names_keys_and_shapes_and_changes_nothing(tmp_path):
    model = _mlp()
    save_checkpoint(tmp_path / "ck.safetensors", model, optim.SGD(model.parameters(), 0.1))
    wide = _mlp(h=20)
    before = {k: v.copy() for k, v in wide.state_dict().items()}
    with pytest.raises(ValueError, match=r"ck\.safetensors: does not fit the model: shapes differ for "
                                         r"0\.weight: \(16, 6\) in the file, \(20, 6\) in the model"):
        load_checkpoint(tmp_path / "ck.safetensors", wide)
    for k, v in wide.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    deeper = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3), nn.ReLU(), nn.Linear(3, 3))
    with pytest.raises(KeyError, match=r"missing keys \['4\.weight', '4\.bias'\], unexpected keys \[\]"):
        load_checkpoint(tmp_path / "ck.safetensors", deeper)
    fastbp.save(model.state_dict(), tmp_path / "weights.safetensors")
    with pytest.raises(fastbp.CheckpointError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "weights.safetensors", model)


def test_bad_input_errors():
    X, y = _blobs(40)
    model = _mlp()
    opt = optim.SGD(model.parameters(), 0.1)
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        fit(model, loss, opt, (X, y), epochs=0)
    with pytest.raises(ValueError, match=r"train_data yielded no batches in epoch 1 \(40 samples, batch_size=64, "
                                         r"drop_last=True\)"):
        fit(model, loss, opt, DataLoader(TensorDataset(X, y), batch_size=64, drop_last=True), progress=False)
    with pytest.raises(ValueError, match=r"EarlyStopping\(monitor='val_loss'\): fit never computes 'val_loss' "
                                         r"\(pass val_data to fit"):
        fit(model, loss, opt, (X, y), callbacks=[EarlyStopping()], progress=False)
    with pytest.raises(ValueError, match=r"EarlyStopping\(monitor='val_f1'\): fit never computes 'val_f1'"):
        fit(model, loss, opt, (X, y), val_data=(X, y), callbacks=[EarlyStopping("val_f1")], progress=False)
    with pytest.raises(ValueError, match="val_data yielded no batches"):
        fit(model, loss, opt, (X, y), val_data=(X[:0], y[:0]), progress=False)
    with pytest.raises(TypeError, match="train_data must be a DataLoader, a Dataset or a tuple"):
        fit(model, loss, opt, X, progress=False)

    class Boom(Callback):
        def on_epoch_end(self, state, logs):
            if state.epoch == 2:
                raise RuntimeError("disk full")

    with pytest.raises(CallbackError, match=r"callback Boom.on_epoch_end raised at epoch 2: RuntimeError: disk full"):
        fit(model, loss, opt, (X, y), epochs=5, callbacks=[Boom()], progress=False)


def test_cross_validate_trains_a_fresh_model_per_fold():
    X, y = _blobs(150)
    built = []

    def build():
        m = _mlp()
        built.append(m)
        return m, optim.Adam(m.parameters(), lr=1e-2)

    res = cross_validate(build, X, y, cv=5, loss_fn=nn.CrossEntropyLoss(), epochs=3, progress=False)
    assert len(built) == 5 and len({id(m) for m in built}) == 5
    assert len(res.scores) == 5 and len(res.histories) == 5 and all(len(h) == 3 for h in res.histories)
    accs = [s["val_accuracy"] for s in res.scores]
    assert res.mean["val_accuracy"] == pytest.approx(np.mean(accs)) and res.std["val_accuracy"] == pytest.approx(
        np.std(accs))
    val_parts = np.concatenate([v for _, v in res.folds])
    assert sorted(val_parts.tolist()) == list(range(150))
    for tr, va in res.folds:
        assert np.bincount(y[va]).tolist() == [10, 10, 10]  # stratified
    assert "mean" in res.table() and res.table().count("\n") == 6
    # a scikit-learn splitter, an optimizer factory and per-fold callbacks
    sk = pytest.importorskip("sklearn.model_selection")
    res = cross_validate(_mlp, X, y, cv=sk.KFold(3), loss_fn=nn.CrossEntropyLoss(),
                         optimizer=lambda p: optim.SGD(p, lr=0.05), callbacks=lambda: [EarlyStopping("val_loss")],
                         epochs=2, progress=False)
    assert len(res.scores) == 3
    with pytest.raises(ValueError, match=r"every class needs at least 5 members; too few in class\(es\) 2 \(1\)"):
        cross_validate(_mlp, X[:11], np.array([0] * 5 + [1] * 5 + [2]), cv=5, loss_fn=nn.CrossEntropyLoss(),
                       optimizer=lambda p: optim.SGD(p, lr=0.05), progress=False)
