"""N-fold cross-validation: train on N-1 folds, validate on the held-out fold, rotate, average.

    def build():
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        return model, optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)

    result = cross_validate(build, X, y, cv=5, loss_fn=nn.CrossEntropyLoss(), epochs=20, batch_size=32)
    print(result.table())             # one row per fold, then mean +- std
    result.mean["val_accuracy"], result.std["val_accuracy"], result.histories[0]

`build()` is called once per fold and returns a fresh model, or (model, optimizer), or
(model, loss_fn, optimizer), or a dict with those keys (and optionally "scheduler"). Instead of building
them, the optimizer may be passed as `optimizer=` a callable taking the parameters, and a scheduler as
`scheduler=` a callable taking the optimizer. `callbacks=` may be a callable returning a fresh list per
fold (e.g. ModelCheckpoint paths per fold). Every other keyword goes to `fit`.

`cv`: the number of folds (StratifiedKFold when stratified=True, else KFold, both shuffled with `seed`),
or any splitter with `split(X, y)` -- scikit-learn's included. The fold's score is `evaluate` on its
held-out part after training (so after EarlyStopping restored its best weights)."""
import numbers

import numpy as np

from ..data.splits import KFold, StratifiedKFold, _take
from .loop import _metric_fns, evaluate, fit

__all__ = ["cross_validate", "CVResult"]


class CVResult:
    """scores (one dict per fold: val_loss, val_<metric>), mean and std (dicts over folds, std with
    ddof=0 as scikit-learn), histories (each fold's History), folds ((train_index, val_index) pairs)."""

    def __init__(self, scores, histories, folds):
        self.scores, self.histories, self.folds = scores, histories, folds
        keys = list(scores[0])
        self.mean = {k: float(np.mean([s[k] for s in scores])) for k in keys}
        self.std = {k: float(np.std([s[k] for s in scores])) for k in keys}

    def __getitem__(self, key):
        return getattr(self, key)

    def table(self):
        keys = list(self.mean)
        head = "fold  " + "  ".join(f"{k:>16}" for k in keys)
        rows = [head]
        for i, s in enumerate(self.scores):
            rows.append(f"{i + 1:>4}  " + "  ".join(f"{s[k]:>16.4f}" for k in keys))
        rows.append("mean  " + "  ".join(f"{self.mean[k]:.4f} +- {self.std[k]:.4f}".rjust(16) for k in keys))
        return "\n".join(rows)

    def __repr__(self):
        return f"CVResult({len(self.scores)} folds, mean={self.mean}, std={self.std})"


def _unpack(built, fit_kwargs):
    if isinstance(built, dict):
        model = built["model"]
        loss_fn, opt, sched = built.get("loss_fn"), built.get("optimizer"), built.get("scheduler")
    elif isinstance(built, tuple):
        if len(built) == 2:
            (model, opt), loss_fn = built, None
        elif len(built) == 3:
            model, loss_fn, opt = built
        else:
            raise ValueError(f"build() returned a tuple of {len(built)}; expected (model, optimizer) or "
                             f"(model, loss_fn, optimizer)")
        sched = None
    else:
        model, loss_fn, opt, sched = built, None, None, None
    loss_fn = loss_fn if loss_fn is not None else fit_kwargs.get("loss_fn")
    if loss_fn is None:
        raise ValueError("cross_validate needs a loss: return it from build() or pass loss_fn=")
    if opt is None:
        factory = fit_kwargs.get("optimizer")
        if factory is None or not callable(factory):
            raise ValueError("cross_validate needs an optimizer: return it from build() or pass optimizer= a "
                             "callable taking the model's parameters")
        opt = factory(model.parameters())
    if sched is None and fit_kwargs.get("scheduler") is not None:
        sched = fit_kwargs["scheduler"](opt)
    return model, loss_fn, opt, sched


def cross_validate(build, X, y, cv=5, stratified=True, seed=0, **fit_kwargs):
    """Cross-validate the model that `build()` makes; returns a CVResult. See the module docstring."""
    n = len(X)
    y_arr = np.asarray(y.data if hasattr(y, "data") and not isinstance(y, np.ndarray) else y)
    if len(y_arr) != n:
        raise ValueError(f"cross_validate: X has {n} samples but y has {len(y_arr)}")
    if isinstance(cv, numbers.Integral) and not isinstance(cv, bool):
        splitter = (StratifiedKFold if stratified else KFold)(n_splits=int(cv), shuffle=True, seed=seed)
    elif hasattr(cv, "split"):
        splitter = cv
    else:
        raise TypeError(f"cv must be a number of folds or a splitter with split(X, y), got {cv!r}")
    metrics = fit_kwargs.get("metrics", ("accuracy",))
    metric_fns = _metric_fns(metrics)
    callbacks = fit_kwargs.get("callbacks", ())
    batch_size = fit_kwargs.get("batch_size", 32)
    fkw = {k: v for k, v in fit_kwargs.items() if k not in ("loss_fn", "optimizer", "scheduler", "callbacks",
                                                             "val_data", "resume")}
    scores, histories, folds = [], [], []
    for train_idx, val_idx in splitter.split(X, y_arr):
        train_idx, val_idx = np.asarray(train_idx), np.asarray(val_idx)
        model, loss_fn, opt, sched = _unpack(build(), fit_kwargs)
        cbs = callbacks() if callable(callbacks) else callbacks
        val = (_take(X, val_idx), _take(y_arr, val_idx))
        hist = fit(model, loss_fn, opt, (_take(X, train_idx), _take(y_arr, train_idx)), val_data=val,
                   scheduler=sched, callbacks=cbs, **fkw)
        res = evaluate(model, val, loss_fn, metric_fns, batch_size=max(batch_size, 256), _name="val_data")
        scores.append({f"val_{k}": v for k, v in res.items()})
        histories.append(hist)
        folds.append((train_idx, val_idx))
    if not scores:
        raise ValueError("cross_validate: the splitter yielded no folds")
    return CVResult(scores, histories, folds)
