"""Training checkpoints: everything needed to continue a run exactly, in one safetensors file.

A checkpoint (written with `fastbp.save`, so atomic and pickle-free) holds
    "model"      model.state_dict() (parameters, and buffers where the model has them)
    "optimizer"  optimizer.state_dict() (any fastbp optimizer, L-BFGS's history included)
    "scheduler"  scheduler.state_dict() or None
    "rng"        fastbp's generator state (parameter init, shuffling without a seed, ...)
    "loader"     the training DataLoader's state_dict() (its own generator; the order and position when
                 saved mid-epoch) or None
    "epoch", "step", "history" (History.to_dict()), "callbacks" (each callback's state_dict(), by position)
    "extra"      anything else the caller passes (same rules as fastbp.save)
"""
from .. import random as _random
from ..serialization import CheckpointError, load, save

__all__ = ["save_checkpoint", "load_checkpoint", "check_state_dict"]

_KIND = "fastbp-training-checkpoint"


def save_checkpoint(path, model, optimizer=None, scheduler=None, train_data=None, epoch=0, step=0, history=None,
                    callbacks=(), extra=None):
    """Write a training checkpoint to `path` (atomically; the previous file stays valid until the rename)."""
    hist = history.to_dict() if hasattr(history, "to_dict") else (history or {})
    cbs = []
    for cb in callbacks or ():
        sd = cb.state_dict() if hasattr(cb, "state_dict") else None
        cbs.append({"type": type(cb).__name__, "state": sd})
    ckpt = {
        "kind": _KIND,
        "version": 1,
        "model": dict(model.state_dict()),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": _random.get_rng_state(),
        "loader": train_data.state_dict() if hasattr(train_data, "state_dict") else None,
        "epoch": int(epoch),
        "step": int(step),
        "history": hist,
        "callbacks": cbs,
        "extra": extra,
    }
    save(ckpt, path, metadata={"fastbp_kind": _KIND})
    return path


def check_state_dict(model, state_dict, source="the state dict"):
    """Raise (naming `source`, the keys and the shapes) unless `state_dict` has exactly the model's keys
    with the same shapes -- checked before anything is copied, so a mismatch never half-loads a model."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise KeyError(f"{source}: does not fit the model: missing keys {missing}, unexpected keys {unexpected}")
    bad = [f"{k}: {tuple(getattr(state_dict[k], 'shape', ()))} in the file, {tuple(v.shape)} in the model"
           for k, v in own.items() if tuple(getattr(state_dict[k], "shape", ())) != tuple(v.shape)]
    if bad:
        raise ValueError(f"{source}: does not fit the model: shapes differ for {'; '.join(bad)}")


def load_checkpoint(path, model, optimizer=None, scheduler=None, train_data=None, callbacks=(), restore_rng=True):
    """Load a checkpoint from `save_checkpoint` into the given objects (built the same way as for the
    saved run) and return {"epoch", "step", "history", "extra"}. Everything is checked before anything is
    changed where the objects allow it: a model whose keys or shapes differ raises naming them."""
    ckpt = load(path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != _KIND:
        raise CheckpointError(f"{path}: not a training checkpoint (use fastbp.load for plain files)")
    check_state_dict(model, ckpt["model"], path)
    model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        if ckpt["optimizer"] is None:
            raise CheckpointError(f"{path}: the checkpoint has no optimizer state")
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        if ckpt["scheduler"] is None:
            raise CheckpointError(f"{path}: the checkpoint has no scheduler state")
        scheduler.load_state_dict(ckpt["scheduler"])
    if train_data is not None and ckpt.get("loader") is not None and hasattr(train_data, "load_state_dict"):
        train_data.load_state_dict(ckpt["loader"])
    saved_cbs = ckpt.get("callbacks") or []
    for k, cb in enumerate(callbacks or ()):
        if k < len(saved_cbs) and saved_cbs[k]["type"] == type(cb).__name__ and saved_cbs[k]["state"] is not None \
                and hasattr(cb, "load_state_dict"):
            cb.load_state_dict(saved_cbs[k]["state"])
    if restore_rng:
        _random.set_rng_state(ckpt["rng"])
    return {"epoch": ckpt["epoch"], "step": ckpt["step"], "history": ckpt["history"], "extra": ckpt.get("extra")}
