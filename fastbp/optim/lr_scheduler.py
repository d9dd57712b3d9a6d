"""Learning-rate schedules, shaped like torch.optim.lr_scheduler.

Every schedule here is a closed form: the learning rate of each parameter group at step t is a function
of t and the group's base learning rate (`lr_at(t)`), never the product of earlier updates. That makes
`state_dict()` tiny, resume exact, and composition simple. Values are PyTorch's closed forms where
PyTorch has one (StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR, SequentialLR).

Usage, per epoch or per iteration -- the schedule only counts `step()` calls:

    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = lr_scheduler.LinearWarmup(opt, warmup_steps=500,
                                      after=lr_scheduler.CosineAnnealingLR(opt, T_max=9500))
    for batch in batches:
        ...; opt.step(); sched.step()        # or once per epoch, after the epoch's last opt.step()
    sched.get_last_lr()                      # [lr of group 0, ...]

Constructing a scheduler records each group's starting lr as `initial_lr` (the base lr, shared by all
schedulers on that optimizer) and sets the lr for step 0. Composition: `LinearWarmup(opt, W, after=S)`
ramps linearly from `start_factor * base` up to `base` over steps 0..W-1, then runs S from its own step
0 at global step W (S sees "steps since warm-up ended"). `SequentialLR(opt, [S0, S1, ...], milestones)`
does the same for any chain. Differences from PyTorch: two independent schedulers on one optimizer do
not multiply (the one stepped last sets the lr); compose them with LinearWarmup or SequentialLR instead.
`InverseSqrtLR` and `LinearWarmup` have no PyTorch counterpart; their formulas are in their docstrings.
"""
import bisect
import copy
import math

from .optimizer import Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR",
           "InverseSqrtLR", "SequentialLR", "LinearWarmup"]


def _positive_int(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


class LRScheduler:
    """Base class. Subclasses implement `lr_at(t)`: the list of group learning rates at step t >= 0."""

    _children = ()  # attribute names holding nested schedulers (saved through their own state_dict)
    _not_saved = ("optimizer",)  # references that state_dict() leaves out

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__} needs a fastbp Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        else:
            for k, g in enumerate(optimizer.param_groups):
                if "initial_lr" not in g:
                    raise KeyError(f"param group {k} has no 'initial_lr'; resuming with last_epoch={last_epoch} "
                                   f"needs the optimizer state of the run being resumed")
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._last_lr = [g["lr"] for g in optimizer.param_groups]
        self.step()

    def lr_at(self, t):
        """Learning rate of every parameter group at step t (no side effects)."""
        raise NotImplementedError

    def step(self):
        """Advance one step (an iteration or an epoch, as you choose) and set the groups' lr."""
        self.last_epoch += 1
        self._apply(self.lr_at(self.last_epoch))

    def _apply(self, lrs):
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        self._last_lr = list(lrs)

    def get_last_lr(self):
        """The learning rates set by the last step() (or by construction)."""
        return list(self._last_lr)

    def state_dict(self):
        sd = {k: copy.deepcopy(v) for k, v in self.__dict__.items()
              if k not in self._not_saved and k not in self._children}
        for name in self._children:
            child = getattr(self, name)
            if isinstance(child, (list, tuple)):
                sd[name] = [c.state_dict() for c in child]
            else:
                sd[name] = None if child is None else child.state_dict()
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        for name in self._children:
            saved = state_dict.pop(name, None)
            child = getattr(self, name)
            if isinstance(child, (list, tuple)):
                if saved is None or len(saved) != len(child):
                    raise ValueError(f"load_state_dict: {name} has {len(child)} schedulers, the state dict "
                                     f"{0 if saved is None else len(saved)}")
                for c, s in zip(child, saved):
                    c.load_state_dict(s)
            elif child is not None and saved is not None:
                child.load_state_dict(saved)
        self.__dict__.update(copy.deepcopy(state_dict))

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, last_lr={self._last_lr})"


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (t // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t):
        return [b * self.gamma ** (t // self.step_size) for b in self.base_lrs]


class MultiStepLR(LRScheduler):
    """lr = base_lr * gamma ** (number of milestones <= t); a milestone listed twice counts twice."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t):
        return [b * self.gamma ** bisect.bisect_right(self.milestones, t) for b in self.base_lrs]


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** t."""

    def __init__(self, optimizer, gamma, last_epoch=-1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t):
        return [b * self.gamma ** t for b in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2 (PyTorch's closed form; past
    T_max it rises again, with period 2 * T_max, as PyTorch's does)."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max = _positive_int("T_max", T_max)
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t):
        c = (1 + math.cos(math.pi * t / self.T_max)) / 2
        return [self.eta_min + (b - self.eta_min) * c for b in self.base_lrs]


class LinearLR(LRScheduler):
    """lr = base_lr * (start_factor + (end_factor - start_factor) * min(t, total_iters) / total_iters).

    PyTorch's LinearLR. Linear decay to zero over N steps: LinearLR(opt, 1.0, 0.0, total_iters=N)."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        if not 0 < start_factor <= 1:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
        if not 0 <= end_factor <= 1:
            raise ValueError(f"end_factor must be in [0, 1], got {end_factor}")
        self.start_factor, self.end_factor = start_factor, end_factor
        self.total_iters = _positive_int("total_iters", total_iters)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t):
        f = self.start_factor + (self.end_factor - self.start_factor) * min(t, self.total_iters) / self.total_iters
        return [b * f for b in self.base_lrs]


class InverseSqrtLR(LRScheduler):
    """lr = base_lr * sqrt(timescale / (timescale + t)): base_lr at t = 0, then decaying like 1/sqrt(t).

    Behind a warm-up of W steps with timescale=W, `LinearWarmup(opt, W, after=InverseSqrtLR(opt, W))`,
    this is the Transformer/fairseq "inverse_sqrt" schedule: base_lr * sqrt(W / t) for t >= W."""

    def __init__(self, optimizer, timescale=1, last_epoch=-1):
        if not timescale > 0:
            raise ValueError(f"timescale must be > 0, got {timescale}")
        self.timescale = timescale
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t):
        f = math.sqrt(self.timescale / (self.timescale + t))
        return [b * f for b in self.base_lrs]


class SequentialLR(LRScheduler):
    """Run schedulers[0] until milestones[0], then schedulers[1] from its own step 0, and so on
    (PyTorch's SequentialLR: at global step t, scheduler i runs at step t - milestones[i-1])."""

    _children = ("_schedulers",)

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        schedulers = list(schedulers)
        milestones = [int(m) for m in milestones]
        if not schedulers:
            raise ValueError("SequentialLR needs at least one scheduler")
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR needs len(schedulers) - 1 = {len(schedulers) - 1} milestones, "
                             f"got {len(milestones)}")
        if any(b <= a for a, b in zip(milestones, milestones[1:])) or any(m < 1 for m in milestones):
            raise ValueError(f"milestones must be increasing and >= 1, got {milestones}")
        for k, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler) or s.optimizer is not optimizer:
                raise ValueError(f"scheduler {k} of SequentialLR must be an LRScheduler of the same optimizer")
        self._schedulers = schedulers
        self._milestones = milestones
        super().__init__(optimizer, last_epoch)

    def _locate(self, t):
        i = bisect.bisect_right(self._milestones, t)
        return i, t - (self._milestones[i - 1] if i > 0 else 0)

    def lr_at(self, t):
        i, local = self._locate(t)
        return self._schedulers[i].lr_at(local)

    def step(self):
        super().step()
        i, local = self._locate(self.last_epoch)
        self._schedulers[i].last_epoch = local
        self._schedulers[i]._last_lr = list(self._last_lr)


class LinearWarmup(SequentialLR):
    """Linear warm-up that composes with any schedule:

        t < warmup_steps:  lr = base_lr * (start_factor + (1 - start_factor) * t / warmup_steps)
        t >= warmup_steps: lr = after.lr_at(t - warmup_steps)   (base_lr when after is None)

    `after` is any scheduler built on the same optimizer (build it first); it starts from its own step 0
    when warm-up ends. start_factor=0 (the default) makes the very first step use lr = 0."""

    def __init__(self, optimizer, warmup_steps, after=None, start_factor=0.0, last_epoch=-1):
        self.warmup_steps = _positive_int("warmup_steps", warmup_steps)
        if not 0 <= start_factor <= 1:
            raise ValueError(f"start_factor must be in [0, 1], got {start_factor}")
        self.start_factor = start_factor
        if after is None:
            after = _Constant(optimizer)
        super().__init__(optimizer, [_Warmup(optimizer, self), after], [self.warmup_steps], last_epoch)

    @property
    def after(self):
        return self._schedulers[1]


class _Warmup(LRScheduler):
    """The ramp part of LinearWarmup (reads warmup_steps and start_factor from its owner)."""

    _not_saved = ("optimizer", "_owner")

    def __init__(self, optimizer, owner):
        self._owner = owner
        super().__init__(optimizer)

    def lr_at(self, t):
        w, s = self._owner.warmup_steps, self._owner.start_factor
        f = s + (1 - s) * min(t, w) / w
        return [b * f for b in self.base_lrs]


class _Constant(LRScheduler):
    def lr_at(self, t):
        return list(self.base_lrs)
