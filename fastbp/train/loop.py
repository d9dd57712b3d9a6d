"""The training loop: fit, evaluate, predict and History.

    history = fit(model, nn.CrossEntropyLoss(), optim.Adam(model.parameters(), 1e-3),
                  DataLoader(TensorDataset(X_train, y_train), batch_size=64, shuffle=True),
                  val_data=(X_val, y_val), epochs=20,
                  callbacks=[EarlyStopping(patience=3), ModelCheckpoint("ckpt.safetensors")])
    history.plot("loss.png")

Data arguments (`train_data`, `val_data`, `data`) take a DataLoader, a Dataset, or a tuple (X, y) of arrays
(wrapped in a DataLoader with `batch_size`; the training data shuffled). Each epoch, `fit`: puts the model
in train() mode, calls `set_epoch(epoch)` on the loader's samplers that have it, runs every batch
(zero_grad, forward, loss, backward, optional gradient clipping, optimizer step -- with a closure for
L-BFGS -- and, with scheduler_step="batch", scheduler.step()), steps a per-epoch scheduler, evaluates the
validation data in eval() mode under no_grad, records the epoch in the History, and runs the callbacks.

Logged names per epoch: "loss" (mean training loss over the epoch's samples), each metric (computed on
the training batches' outputs as they went by), "val_loss" and "val_<metric>" with validation data,
"lr" (the first parameter group's learning rate as the epoch began) and "seconds". A metric is
"accuracy" or a callable `f(outputs, targets) -> float` over NumPy arrays (name: the callable's
__name__, or pass a dict {name: callable}).

Progress: progress=True shows a tqdm bar per epoch (running loss, samples/s) when stderr is a terminal,
and otherwise prints one plain line per epoch; progress="bar" / "log" force either; progress=False is
silent.

Resuming: `fit(..., resume=path)` loads a training checkpoint (see `save_checkpoint`) and continues from
the epoch after the saved one up to `epochs`; with the same data, model, optimizer and scheduler set-up
the run is bit-identical to one that was never interrupted."""
import math
import numbers
import sys
import time

import numpy as np

from ..data.dataset import TensorDataset
from ..data.loader import DataLoader
from ..nn.utils import clip_grad_norm_
from ..optim.lbfgs import LBFGS
from ..tensor import Tensor, no_grad

__all__ = ["fit", "evaluate", "predict", "History", "TrainingState", "CallbackError", "accuracy"]


class CallbackError(RuntimeError):
    """An exception raised inside a callback; fit stops and names the callback, the hook and the epoch."""


# ----- metrics --------------------------------------------------------------------------------------------
def accuracy(outputs, targets):
    """Fraction of correct predictions: argmax over classes for (N, C) outputs with C > 1, and for one output
    per sample (N,) or (N, 1), a positive logit means class 1."""
    outputs = np.asarray(outputs)
    targets = np.asarray(targets)
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        pred = outputs.argmax(axis=1)
    else:
        pred = (outputs.reshape(len(outputs)) > 0).astype(np.int64)
        targets = targets.reshape(len(targets))
    return float(np.mean(pred == targets))


_METRICS = {"accuracy": accuracy, "acc": accuracy}


def _metric_fns(metrics):
    if metrics is None:
        return {}
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    if isinstance(metrics, dict):
        items = list(metrics.items())
    else:
        items = []
        for m in metrics:
            if isinstance(m, str):
                if m not in _METRICS:
                    raise ValueError(f"unknown metric {m!r}; known: {sorted(_METRICS)}, or pass a callable")
                items.append((m, _METRICS[m]))
            elif callable(m):
                items.append((getattr(m, "__name__", "metric"), m))
            else:
                raise TypeError(f"a metric is a name or a callable, got {m!r}")
    for name, fn in items:
        if not callable(fn):
            raise TypeError(f"metric {name!r} is not callable")
        if name.startswith("val_") or name in ("loss", "lr", "seconds", "epoch"):
            raise ValueError(f"metric name {name!r} clashes with a logged name")
    return dict(items)


# ----- data -----------------------------------------------------------------------------------------------
def _as_loader(data, name, batch_size, shuffle):
    if data is None:
        return None
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, tuple) and len(data) in (1, 2):
        return DataLoader(TensorDataset(*data), batch_size=batch_size, shuffle=shuffle)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (np.ndarray, Tensor, list)):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle)
    if hasattr(data, "__iter__") and not isinstance(data, (np.ndarray, Tensor, list)):
        return data  # any iterable of (x, y) batches (re-iterable each epoch)
    raise TypeError(f"{name} must be a DataLoader, a Dataset or a tuple (X, y), got {type(data).__name__}")


def _split_batch(batch, name):
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, (tuple, list)) and len(batch) == 1:
        return batch[0], None
    raise ValueError(f"{name} must yield (inputs, targets) batches, got a {type(batch).__name__}"
                     + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else ""))


def _to_input(x):
    if isinstance(x, Tensor):
        return x
    return Tensor(x)


def _np(x):
    return x.data if isinstance(x, Tensor) else np.asarray(x)


def _n_of(x):
    return len(x.data) if isinstance(x, Tensor) else len(x)


def _describe(loader):
    try:
        return f" ({len(loader.dataset)} samples, batch_size={loader.batch_size}, drop_last={loader.drop_last})"
    except (AttributeError, TypeError):
        return ""


# ----- History --------------------------------------------------------------------------------------------
class History:
    """What fit logged, one entry per epoch: `history["val_loss"]` is a list, `history.epoch` the epoch
    numbers (1-based), `history.to_dict()` a plain dict of lists, `history.plot(path)` a PNG."""

    def __init__(self, records=None):
        self.records = [dict(r) for r in (records or [])]

    def append(self, logs):
        self.records.append(dict(logs))

    @property
    def epoch(self):
        return [r["epoch"] for r in self.records]

    @property
    def history(self):
        return self.to_dict()

    def keys(self):
        keys = []
        for r in self.records:
            keys.extend(k for k in r if k not in keys)
        return keys

    def __getitem__(self, key):
        if key not in self.keys():
            raise KeyError(f"{key!r} was not logged; logged: {self.keys()}")
        return [r.get(key, math.nan) for r in self.records]

    def __len__(self):
        return len(self.records)

    def to_dict(self):
        return {k: self[k] for k in self.keys()}

    @classmethod
    def from_dict(cls, d):
        keys = list(d)
        n = len(d[keys[0]]) if keys else 0
        return cls([{k: d[k][i] for k in keys} for i in range(n)])

    def plot(self, path, title=None, mark_epoch=None):
        """Write the loss curves (and, in a second panel, the metrics) to a PNG; `mark_epoch` draws a dashed
        line at that epoch (e.g. the best one). Needs matplotlib."""
        try:
            import matplotlib
            matplotlib.use("Agg", force=False)
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib") from exc
        if not self.records:
            raise ValueError("History.plot: nothing was logged")
        keys = self.keys()
        metric_keys = [k for k in keys if k not in ("epoch", "loss", "val_loss", "lr", "seconds")]
        fig = Figure(figsize=(10 if metric_keys else 6, 4))
        axes = fig.subplots(1, 2 if metric_keys else 1, squeeze=False)[0]
        ep = self.epoch
        for k in ("loss", "val_loss"):
            if k in keys:
                axes[0].plot(ep, self[k], marker="o", ms=3, label=k)
        axes[0].set_xlabel("epoch")
        axes[0].set_ylabel("loss")
        axes[0].legend()
        axes[0].grid(alpha=0.3)
        if metric_keys:
            for k in metric_keys:
                axes[1].plot(ep, self[k], marker="o", ms=3, label=k)
            axes[1].set_xlabel("epoch")
            axes[1].legend()
            axes[1].grid(alpha=0.3)
        from matplotlib.ticker import MaxNLocator
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if mark_epoch is not None:
                ax.axvline(mark_epoch, color="gray", linestyle="--", linewidth=1)
        if mark_epoch is not None:
            axes[0].text(mark_epoch, axes[0].get_ylim()[1], f" epoch {mark_epoch}", va="top", color="gray")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return path

    def __repr__(self):
        return f"History({len(self.records)} epochs, keys={self.keys()})"


# ----- the state callbacks see ----------------------------------------------------------------------------
class TrainingState:
    """What callbacks see and may change. Attributes: model, loss_fn, optimizer, scheduler, train_loader,
    val_loader, history, callbacks, epoch (the current/last completed epoch, 1-based), step (optimizer
    steps so far), epochs (the last epoch), logged (the names logged every epoch), stop_training (set True
    to stop after this epoch) and stop_reason (a sentence fit prints when it stops early)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.stop_training = False
        self.stop_reason = None
        self._pending_saves = []

    def stop(self, reason):
        self.stop_training = True
        self.stop_reason = reason

    def save_checkpoint(self, path, **extra):
        """Ask fit to write a training checkpoint to `path` once every callback has seen this epoch (so the
        file includes their state)."""
        self._pending_saves.append((path, extra))

    def _write_pending(self):
        from .checkpoint import save_checkpoint
        saves, self._pending_saves = self._pending_saves, []
        for path, extra in saves:
            save_checkpoint(path, self.model, self.optimizer, scheduler=self.scheduler, train_data=self.train_loader,
                            epoch=self.epoch, step=self.step, history=self.history, callbacks=self.callbacks,
                            extra=extra or None)


def _call(callbacks, hook, state, *args):
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is None:
            continue
        if hook == "on_train_begin":
            fn(state, *args)  # set-up checks (e.g. a monitored name fit never logs) raise as they are
            continue
        try:
            fn(state, *args)
        except Exception as exc:
            raise CallbackError(f"callback {type(cb).__name__}.{hook} raised at epoch {state.epoch}: "
                                f"{type(exc).__name__}: {exc}") from exc


# ----- progress -------------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, mode, epochs):
        if mode is True or mode == "auto":
            mode = "bar" if _isatty(sys.stderr) else "log"
        if mode not in (False, None, "bar", "log"):
            raise ValueError(f"progress must be True, False, 'bar' or 'log', got {mode!r}")
        self.mode = mode or None
        self.epochs = epochs
        self.bar = None
        self.rate = 0.0

    def start_epoch(self, epoch, total):
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=f"epoch {epoch}/{self.epochs}", unit="batch", leave=True,
                            dynamic_ncols=True)

    def batch(self, loss, rate):
        self.rate = rate
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}, {rate:,.0f} samples/s", refresh=False)
            self.bar.update(1)

    def end_epoch(self, logs):
        text = "  ".join(_fmt(k, v) for k, v in logs.items() if k != "epoch")
        if self.bar is not None:
            self.bar.set_postfix_str(f"{text}  {self.rate:,.0f} samples/s", refresh=True)
            self.bar.close()
            self.bar = None
        elif self.mode == "log":
            print(f"epoch {logs['epoch']}/{self.epochs}  {text}", flush=True)

    def message(self, text):
        if self.mode is not None:
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _fmt(k, v):
    if k == "seconds":
        return f"{v:.2f}s"
    if k == "lr":
        return f"lr {v:.3g}"
    return f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"


# ----- fit ------------------------------------------------------------------------------------------------
def _check_epochs(epochs):
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    return int(epochs)


def fit(model, loss_fn, optimizer, train_data, val_data=None, epochs=1, scheduler=None, callbacks=(),
        metrics=("accuracy",), grad_clip=None, progress=True, scheduler_step="epoch", batch_size=32,
        resume=None):
    """Train `model` and return its History; see the module docstring. `grad_clip`: max total gradient
    norm (clip_grad_norm_) or None. `scheduler_step`: "epoch" or "batch". `batch_size`: for data given as
    arrays or a Dataset. `resume`: path of a training checkpoint to continue from."""
    epochs = _check_epochs(epochs)
    if scheduler_step not in ("epoch", "batch"):
        raise ValueError(f"scheduler_step must be 'epoch' or 'batch', got {scheduler_step!r}")
    if grad_clip is not None and not (isinstance(grad_clip, numbers.Real) and grad_clip > 0):
        raise ValueError(f"grad_clip must be a positive number (max gradient norm) or None, got {grad_clip!r}")
    train_loader = _as_loader(train_data, "train_data", batch_size, shuffle=True)
    val_loader = _as_loader(val_data, "val_data", max(batch_size, 256), shuffle=False)
    metric_fns = _metric_fns(metrics)
    callbacks = list(callbacks or ())
    logged = ["epoch", "loss", *metric_fns]
    if val_loader is not None:
        logged += ["val_loss", *(f"val_{m}" for m in metric_fns)]
    logged += ["lr", "seconds"]
    history = History()
    state = TrainingState(model=model, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
                          train_loader=train_loader, val_loader=val_loader, history=history, callbacks=callbacks,
                          epoch=0, step=0, epochs=epochs, logged=logged)
    if resume is not None:
        from .checkpoint import load_checkpoint
        info = load_checkpoint(resume, model, optimizer, scheduler=scheduler, train_data=train_loader,
                               callbacks=callbacks)
        state.epoch, state.step = info["epoch"], info["step"]
        history.records = History.from_dict(info["history"]).records if info["history"] else []
    first_epoch = state.epoch + 1
    is_lbfgs = isinstance(optimizer, LBFGS)
    bar = _Progress(progress, epochs)
    state._verbose = bar.mode is not None
    _call(callbacks, "on_train_begin", state)
    try:
        for epoch in range(first_epoch, epochs + 1):
            state.epoch = epoch
            t0 = time.perf_counter()
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch - 1)
            _call(callbacks, "on_epoch_begin", state)
            model.train()
            lr = optimizer.param_groups[0]["lr"]
            total_loss, n_seen = 0.0, 0
            msums = dict.fromkeys(metric_fns, 0.0)
            try:
                n_batches = len(train_loader)
            except TypeError:
                n_batches = None
            bar.start_epoch(epoch, n_batches)
            for b, batch in enumerate(train_loader):
                xb, yb = _split_batch(batch, "train_data")
                x = _to_input(xb)
                n = _n_of(x)
                out_holder = []

                def closure():
                    optimizer.zero_grad()
                    out = model(x)
                    loss = loss_fn(out, yb)
                    loss.backward()
                    if grad_clip is not None:
                        clip_grad_norm_(model.parameters(), grad_clip)
                    if not out_holder:
                        out_holder.append((out, loss))
                    return loss

                if is_lbfgs:
                    optimizer.step(closure)
                else:
                    closure()
                    optimizer.step()
                out, loss = out_holder[0]
                state.step += 1
                if scheduler is not None and scheduler_step == "batch":
                    scheduler.step()
                lv = float(loss.item())
                if not math.isfinite(lv):
                    raise FloatingPointError(f"the training loss is {lv} at epoch {epoch}, batch {b + 1}")
                total_loss += lv * n
                n_seen += n
                if metric_fns and yb is not None:
                    o, t = _np(out), _np(yb)
                    for name, fn in metric_fns.items():
                        msums[name] += float(fn(o, t)) * n
                bar.batch(total_loss / n_seen, n_seen / max(time.perf_counter() - t0, 1e-9))
                _call(callbacks, "on_batch_end", state, b, lv)
            if n_seen == 0:
                raise ValueError(f"train_data yielded no batches in epoch {epoch}{_describe(train_loader)}")
            if scheduler is not None and scheduler_step == "epoch":
                scheduler.step()
            logs = {"epoch": epoch, "loss": total_loss / n_seen}
            logs.update({name: s / n_seen for name, s in msums.items()})
            if val_loader is not None:
                vals = evaluate(model, val_loader, loss_fn, metric_fns, _name="val_data")
                logs.update({f"val_{k}": v for k, v in vals.items()})
            logs["lr"] = lr
            logs["seconds"] = time.perf_counter() - t0
            history.append(logs)
            bar.end_epoch(logs)
            _call(callbacks, "on_epoch_end", state, logs)
            state._write_pending()
            if state.stop_training:
                if state.stop_reason:
                    bar.message(state.stop_reason)
                break
        _call(callbacks, "on_train_end", state)
        state._write_pending()
    finally:
        bar.close()
    history.stop_reason = state.stop_reason
    history.stopped_epoch = state.epoch if state.stop_training else None
    return history


# ----- evaluate / predict ---------------------------------------------------------------------------------
def evaluate(model, data, loss_fn=None, metrics=("accuracy",), batch_size=256, _name="data"):
    """Mean loss (weighted by batch size) and metrics of `model` over `data`, in eval() mode under no_grad;
    the model's train/eval mode is restored afterwards. Returns {"loss": ..., metric: ...}."""
    loader = _as_loader(data, _name, batch_size, shuffle=False)
    metric_fns = metrics if isinstance(metrics, dict) and all(callable(v) for v in metrics.values()) \
        else _metric_fns(metrics)
    was_training = getattr(model, "training", False)
    model.eval()
    total_loss, n_seen = 0.0, 0
    outs, targets = [], []
    try:
        with no_grad():
            for batch in loader:
                xb, yb = _split_batch(batch, _name)
                x = _to_input(xb)
                out = model(x)
                n = _n_of(x)
                if loss_fn is not None:
                    total_loss += float(loss_fn(out, yb).item()) * n
                n_seen += n
                if metric_fns:
                    outs.append(_np(out))
                    targets.append(_np(yb))
    finally:
        model.train(was_training)
    if n_seen == 0:
        raise ValueError(f"{_name} yielded no batches{_describe(loader)}")
    result = {}
    if loss_fn is not None:
        result["loss"] = total_loss / n_seen
    if metric_fns:
        o, t = np.concatenate(outs), np.concatenate(targets)
        for name, fn in metric_fns.items():
            result[name] = float(fn(o, t))
    return result


def predict(model, X, batch_size=256):
    """The model's outputs for X (an array, a Tensor, a Dataset or a DataLoader: the first field of each
    batch is the input), as one NumPy array, in eval() mode under no_grad (the mode is restored)."""
    if isinstance(X, (np.ndarray, Tensor, list)):
        loader = DataLoader(TensorDataset(np.asarray(_np(X))), batch_size=batch_size)
    else:
        loader = _as_loader(X, "X", batch_size, shuffle=False)
    was_training = getattr(model, "training", False)
    model.eval()
    outs = []
    try:
        with no_grad():
            for batch in loader:
                xb = batch[0] if isinstance(batch, (tuple, list)) else batch
                outs.append(_np(model(_to_input(xb))))
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("predict: X has no samples")
    return np.concatenate(outs)
