"""Callbacks for `fit`: EarlyStopping, ModelCheckpoint, LearningRateMonitor, and the protocol to write more.

The protocol. A callback is any object with some of these methods; fit calls them in list order:

    on_train_begin(state)              before the first epoch (after a resume: before the next one)
    on_epoch_begin(state)              state.epoch is the epoch about to run (1-based)
    on_batch_end(state, batch, loss)   after each optimizer step; batch is 0-based, loss a float
    on_epoch_end(state, logs)          logs: this epoch's {"epoch", "loss", metrics, "val_loss", ..., "lr",
                                       "seconds"} (already appended to state.history)
    on_train_end(state)                after the last epoch, also when stopped early
    state_dict() / load_state_dict(d)  optional: saved in and restored from training checkpoints

`state` is a `TrainingState` (model, optimizer, scheduler, history, epoch, step, logged, ...). To stop, call
`state.stop("why")`: fit finishes the epoch, prints the reason and returns. `state.save_checkpoint(path)`
asks fit to write a training checkpoint after every callback has seen the epoch. An exception raised by
a callback stops fit with a CallbackError naming the callback, the hook and the epoch (except in
on_train_begin, where set-up checks raise their own ValueError/TypeError before any training).

Subclassing `Callback` is optional; it provides empty hooks."""
import copy
import math
import os

from ..serialization import save

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "LearningRateMonitor"]


class Callback:
    def on_train_begin(self, state):
        pass

    def on_epoch_begin(self, state):
        pass

    def on_batch_end(self, state, batch, loss):
        pass

    def on_epoch_end(self, state, logs):
        pass

    def on_train_end(self, state):
        pass


def _mode_for(monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if any(w in monitor for w in ("acc", "auc", "f1", "score", "precision", "recall")) else "min"
    return mode


def _check_monitor(who, monitor, state):
    if monitor not in state.logged:
        hint = " (pass val_data to fit to compute it)" if monitor.startswith("val_") else ""
        raise ValueError(f"{who}(monitor={monitor!r}): fit never computes {monitor!r}{hint}; it logs "
                         f"{[k for k in state.logged if k not in ('epoch', 'seconds')]}")


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs, and (with
    restore_best_weights, the default) put back the weights of the best epoch when training ends, whether
    it stopped early or ran out of epochs -- the lecture's rule: keep the model from the epoch where the
    validation loss was lowest. mode "auto" maximizes names containing acc/score/auc/f1, else minimizes.
    After fit: best_epoch, best, stopped_epoch (None if it ran to the end) and reason."""

    def __init__(self, monitor="val_loss", mode="auto", patience=5, min_delta=0.0, restore_best_weights=True,
                 verbose=True):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 0, got {patience!r}")
        if not min_delta >= 0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0, got {min_delta!r}")
        self.monitor = monitor
        self.mode = _mode_for(monitor, mode)
        self.patience = patience
        self.min_delta = float(min_delta)
        self.restore_best_weights = bool(restore_best_weights)
        self.verbose = verbose
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None
        self.wait = 0
        self.stopped_epoch = None
        self.reason = None
        self.best_weights = None

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_train_begin(self, state):
        _check_monitor("EarlyStopping", self.monitor, state)
        if state.epoch == 0:
            self._reset()

    def on_epoch_end(self, state, logs):
        value = logs[self.monitor]
        if math.isnan(value):
            self.wait += 1
        elif self._improved(value):
            self.best, self.best_epoch, self.wait = float(value), state.epoch, 0
            if self.restore_best_weights:
                self.best_weights = copy.deepcopy(dict(state.model.state_dict()))
        else:
            self.wait += 1
        if self.wait > 0 and self.wait >= self.patience:
            self.stopped_epoch = state.epoch
            self.reason = (f"early stopping at epoch {state.epoch}: {self.monitor} has not improved by more than "
                           f"{self.min_delta:g} for {self.wait} epoch{'s' if self.wait != 1 else ''} "
                           f"(patience {self.patience}); best {self.monitor} {self.best:.4f} at epoch "
                           f"{self.best_epoch}")
            state.stop(self.reason)

    def on_train_end(self, state):
        if self.restore_best_weights and self.best_weights is not None and self.best_epoch != state.epoch:
            state.model.load_state_dict(self.best_weights)
            if self.verbose and getattr(state, "_verbose", True):
                msg = f"restored the weights of epoch {self.best_epoch} ({self.monitor} {self.best:.4f})"
                print(msg, flush=True)

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, d):
        self.best, self.best_epoch, self.wait = d["best"], d["best_epoch"], d["wait"]
        self.stopped_epoch, self.best_weights = d["stopped_epoch"], d["best_weights"]


class ModelCheckpoint(Callback):
    """Write a checkpoint at the end of every epoch (or only when `monitor` improves, save_best_only=True).

    `path` may hold format fields filled from the epoch's logs, e.g. "ckpt-{epoch:03d}-{val_loss:.3f}.st".
    By default the file is a full training checkpoint (model, optimizer, scheduler, RNG, loader, epoch,
    history, callbacks) that `fit(..., resume=path)` continues from; with save_weights_only=True it is the
    model's state_dict alone (a plain safetensors file PyTorch can read). Every write is atomic.
    After fit: `last_path`, `best_path`, `best`."""

    def __init__(self, path, monitor="val_loss", mode="auto", save_best_only=False, save_weights_only=False):
        self.path = os.fspath(path)
        self.monitor = monitor
        self.mode = _mode_for(monitor, mode)
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.last_path = None
        self.best_path = None

    def on_train_begin(self, state):
        if self.save_best_only:
            _check_monitor("ModelCheckpoint", self.monitor, state)
        if state.epoch == 0:  # a new run (not a resume): forget an earlier run's best
            self.best = math.inf if self.mode == "min" else -math.inf
            self.last_path = self.best_path = None

    def on_epoch_end(self, state, logs):
        improved = False
        if self.monitor in logs:
            v = logs[self.monitor]
            improved = v < self.best if self.mode == "min" else v > self.best
        if self.save_best_only and not improved:
            return
        try:
            path = self.path.format(**logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"ModelCheckpoint: cannot fill the path {self.path!r} from the logs "
                             f"{sorted(logs)}: {exc}") from None
        if improved:
            self.best = float(logs[self.monitor])
            self.best_path = path
        self.last_path = path
        if self.save_weights_only:
            save(dict(state.model.state_dict()), path)
        else:
            state.save_checkpoint(path)

    def state_dict(self):
        return {"best": self.best, "last_path": self.last_path, "best_path": self.best_path}

    def load_state_dict(self, d):
        self.best, self.last_path, self.best_path = d["best"], d["last_path"], d["best_path"]


class LearningRateMonitor(Callback):
    """Record the learning rate of every parameter group, per epoch (default) or per batch, in `.lrs`
    (a list of (epoch, step, [lr of group 0, ...])); verbose=True also prints it each epoch."""

    def __init__(self, per="epoch", verbose=False):
        if per not in ("epoch", "batch"):
            raise ValueError(f"LearningRateMonitor: per must be 'epoch' or 'batch', got {per!r}")
        self.per = per
        self.verbose = verbose
        self.lrs = []

    def _record(self, state):
        self.lrs.append((state.epoch, state.step, [g["lr"] for g in state.optimizer.param_groups]))

    def on_epoch_begin(self, state):
        if self.per == "epoch":
            self._record(state)
            if self.verbose:
                print(f"epoch {state.epoch}: lr {', '.join(f'{v:.4g}' for v in self.lrs[-1][2])}", flush=True)

    def on_batch_end(self, state, batch, loss):
        if self.per == "batch":
            self._record(state)

    def state_dict(self):
        return {"lrs": [list(r) for r in self.lrs]}

    def load_state_dict(self, d):
        self.lrs = [tuple(r) for r in d["lrs"]]
