"""L-BFGS for full-batch problems, with PyTorch's closure API and optional strong-Wolfe line search.

Unlike the other optimizers this one is plain Python/NumPy over one flattened copy of all parameters and
gradients: its cost is dominated by the closure (a full forward and backward pass per evaluation), and
its own work is a handful of dot products and axpys per iteration. The search direction and curvature
history are kept in float64 whatever the parameters' dtype; the parameters themselves are updated in
their own dtype. Dot products use `np.einsum` (NumPy's own loop, not multithreaded BLAS) so results do
not depend on the number of threads.

The algorithm follows torch.optim.LBFGS step for step (same defaults, the same first step length
min(1, 1/|g|_1) * lr, the same curvature test y.s > 1e-10, the same stopping tests and the same line
search: bracketing with cubic interpolation, then zoom with a safeguard against insufficient progress,
Nocedal & Wright, Numerical Optimization, 2nd ed., algorithms 3.5 and 3.6)."""
import math

import numpy as np

from ..tensor import Tensor
from .optimizer import Optimizer, _check_nonneg


def _dot(a, b):
    return float(np.einsum("i,i->", a, b))


def _loss_value(loss):
    if isinstance(loss, Tensor):
        loss = loss.data
    arr = np.asarray(loss, dtype=np.float64)
    if arr.size != 1:
        raise ValueError(f"the LBFGS closure must return a scalar loss, got shape {arr.shape}")
    return float(arr.reshape(-1)[0])


def cubic_minimizer(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimiser of the cubic through (x1, f1) and (x2, f2) with slopes g1, g2, clipped to `bounds`
    (default: the interval between x1 and x2). When the cubic has no minimiser (or the points
    coincide) the midpoint of the bounds is returned. Nocedal & Wright eq. (3.59)."""
    lo, hi = bounds if bounds is not None else (min(x1, x2), max(x1, x2))
    if x1 == x2:
        return (lo + hi) / 2
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    disc = d1 * d1 - g1 * g2
    if not disc >= 0:
        return (lo + hi) / 2
    d2 = math.sqrt(disc)
    if x1 <= x2:
        den = g2 - g1 + 2 * d2
        x = x2 - (x2 - x1) * (g2 + d2 - d1) / den if den != 0 else (lo + hi) / 2
    else:
        den = g1 - g2 + 2 * d2
        x = x1 - (x1 - x2) * (g1 + d2 - d1) / den if den != 0 else (lo + hi) / 2
    return min(max(x, lo), hi)


def strong_wolfe(phi, t, f0, g0, gtd0, d_norm, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """Line search for a step t along a descent direction d satisfying the strong Wolfe conditions
    f(t) <= f0 + c1 t gtd0 and |f'(t)| <= c2 |gtd0|.

    `phi(t)` returns (loss, flat gradient, directional derivative) at x + t d; f0, g0, gtd0 are those at
    t = 0 and d_norm is max|d|. Returns (loss, gradient, t, number of phi evaluations). If no acceptable
    point is found within max_ls evaluations, the best point seen in the final bracket is returned
    (possibly t = 0), as PyTorch does."""
    f_new, g_new, gtd_new = phi(t)
    evals = 1
    prev = (0.0, f0, g0, gtd0)
    done = False
    it = 0
    bracket = None
    # phase 1: grow the step until an interval containing acceptable points is bracketed
    while it < max_ls:
        cur = (t, f_new, g_new, gtd_new)
        if f_new > f0 + c1 * t * gtd0 or (it > 1 and f_new >= prev[1]):
            bracket = [prev, cur]
            break
        if abs(gtd_new) <= -c2 * gtd0:
            bracket = [cur]
            done = True
            break
        if gtd_new >= 0:
            bracket = [prev, cur]
            break
        t_next = cubic_minimizer(prev[0], prev[1], prev[3], t, f_new, gtd_new,
                                 bounds=(t + 0.01 * (t - prev[0]), t * 10))
        prev = cur
        t = t_next
        f_new, g_new, gtd_new = phi(t)
        evals += 1
        it += 1
    if it == max_ls:
        bracket = [(0.0, f0, g0, gtd0), (t, f_new, g_new, gtd_new)]

    # phase 2 (zoom): shrink the bracket by safeguarded cubic interpolation
    low, high = (0, 1) if bracket[0][1] <= bracket[-1][1] else (1, 0)
    insufficient = False
    while not done and it < max_ls:
        (a, fa, _, gtda), (b, fb, _, gtdb) = bracket
        if abs(b - a) * d_norm < tolerance_change:
            break
        t = cubic_minimizer(a, fa, gtda, b, fb, gtdb)
        lo, hi = min(a, b), max(a, b)
        margin = 0.1 * (hi - lo)
        if min(hi - t, t - lo) < margin:
            # t is close to an end of the bracket: accept once, then push it inside
            if insufficient or t >= hi or t <= lo:
                t = hi - margin if abs(t - hi) < abs(t - lo) else lo + margin
                insufficient = False
            else:
                insufficient = True
        else:
            insufficient = False
        f_new, g_new, gtd_new = phi(t)
        evals += 1
        it += 1
        cur = (t, f_new, g_new, gtd_new)
        if f_new > f0 + c1 * t * gtd0 or f_new >= bracket[low][1]:
            bracket[high] = cur
            low, high = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd0:
                done = True
            elif gtd_new * (bracket[high][0] - bracket[low][0]) >= 0:
                bracket[high] = bracket[low]
            bracket[low] = cur
    t, f_new, g_new, _ = bracket[low]
    return f_new, g_new, t, evals


def two_loop_direction(grad, s_hist, y_hist, rho, h_diag):
    """-H grad for the L-BFGS inverse-Hessian approximation H built from the pairs (s_i, y_i), oldest
    first, rho_i = 1 / (y_i . s_i), and the initial scaling H0 = h_diag * I (two-loop recursion)."""
    q = -np.asarray(grad, dtype=np.float64)
    alpha = [0.0] * len(s_hist)
    for i in range(len(s_hist) - 1, -1, -1):
        alpha[i] = rho[i] * _dot(s_hist[i], q)
        q = q - alpha[i] * y_hist[i]
    r = q * h_diag
    for i in range(len(s_hist)):
        beta = rho[i] * _dot(y_hist[i], r)
        r = r + (alpha[i] - beta) * s_hist[i]
    return r


class LBFGS(Optimizer):
    """LBFGS(params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
    history_size=100, line_search_fn=None) -- torch.optim.LBFGS for full-batch problems.

    `step(closure)` runs up to `max_iter` L-BFGS iterations (at most `max_eval` closure calls, default
    max_iter * 5 // 4). The closure clears the gradients, computes the loss, calls backward() and
    returns the loss:

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(X), y)
            loss.backward()
            return loss
        opt.step(closure)

    line_search_fn=None takes fixed steps of length lr (the first one scaled by min(1, 1/|g|_1));
    "strong_wolfe" searches each step with the strong Wolfe conditions (c1=1e-4, c2=0.9). Iterations stop
    early when max|grad| <= tolerance_grad, or when the loss or the step changes by less than
    tolerance_change. Returns the loss from the first closure call, as PyTorch does.

    Implementation: Python/NumPy over a flattened float64 copy of the parameters and gradients (see the
    module docstring); the per-element kernels of the other optimizers would gain nothing here because
    the closure dominates the cost. One parameter group only. Differences from PyTorch: an unknown
    line_search_fn raises ValueError when the optimizer is built (PyTorch raises at the first step)."""

    def __init__(self, params, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None):
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        super().__init__(params, dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                                      tolerance_change=tolerance_change, history_size=history_size,
                                      line_search_fn=line_search_fn))
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._plist = self.param_groups[0]["params"]

    def _check_group(self, g):
        _check_nonneg(lr=g["lr"], tolerance_grad=g["tolerance_grad"], tolerance_change=g["tolerance_change"])
        for key in ("max_iter", "max_eval", "history_size"):
            v = g[key]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Invalid {key} value: {v!r} (must be an integer >= 1)")
        if g["line_search_fn"] not in (None, "strong_wolfe"):
            raise ValueError(f"Invalid line_search_fn: {g['line_search_fn']!r} (None or 'strong_wolfe')")

    # ----- flat views over all parameters ------------------------------------------------------------
    def _gather_flat_grad(self):
        parts = [np.zeros(p.data.size) if p.grad is None else np.asarray(p.grad, dtype=np.float64).reshape(-1)
                 for p in self._plist]
        return np.concatenate(parts) if parts else np.zeros(0)

    def _add_step(self, t, d):
        offset = 0
        for p in self._plist:
            n = p.data.size
            p.data += (t * d[offset:offset + n]).reshape(p.data.shape)
            offset += n

    def _directional_evaluate(self, closure, x0, t, d):
        self._add_step(t, d)
        loss = _loss_value(closure())
        g = self._gather_flat_grad()
        for p, x in zip(self._plist, x0):
            p.data[...] = x
        return loss, g, _dot(g, d)

    def step(self, closure):
        """Run up to max_iter L-BFGS iterations; `closure` re-evaluates the loss and its gradients."""
        if closure is None:
            raise RuntimeError("LBFGS.step needs a closure that clears the gradients, computes the loss, "
                               "calls backward() and returns the loss")
        group = self.param_groups[0]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
        history_size, line_search = group["history_size"], group["line_search_fn"]

        state = self.state.setdefault(id(self._plist[0]), {"func_evals": 0, "n_iter": 0})
        orig_loss = closure()
        loss = _loss_value(orig_loss)
        evals = 1
        state["func_evals"] += 1
        flat_grad = self._gather_flat_grad()
        if np.abs(flat_grad).max(initial=0.0) <= tol_grad:
            return orig_loss

        d, t = state.get("d"), state.get("t")
        s_hist, y_hist, rho = state.get("old_stps"), state.get("old_dirs"), state.get("ro")
        h_diag, prev_flat_grad, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            # search direction
            if state["n_iter"] == 1:
                d = -flat_grad
                s_hist, y_hist, rho = [], [], []
                h_diag = 1.0
            else:
                y = flat_grad - prev_flat_grad
                s = d * t
                ys = _dot(y, s)
                if ys > 1e-10:  # keep the pair only if it carries positive curvature
                    if len(s_hist) == history_size:
                        s_hist.pop(0)
                        y_hist.pop(0)
                        rho.pop(0)
                    s_hist.append(s)
                    y_hist.append(y)
                    rho.append(1.0 / ys)
                    h_diag = ys / _dot(y, y)
                d = two_loop_direction(flat_grad, s_hist, y_hist, rho, h_diag)
            prev_flat_grad = flat_grad.copy()
            prev_loss = loss

            # step length
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / float(np.abs(flat_grad).sum())) * lr
            else:
                t = lr
            gtd = _dot(flat_grad, d)
            if gtd > -tol_change:  # not a descent direction (any more)
                break

            opt_cond = False
            ls_evals = 0
            if line_search == "strong_wolfe":
                x0 = [p.data.copy() for p in self._plist]
                loss, flat_grad, t, ls_evals = strong_wolfe(
                    lambda step: self._directional_evaluate(closure, x0, step, d), t, loss, flat_grad, gtd,
                    float(np.abs(d).max()))
                self._add_step(t, d)
                opt_cond = np.abs(flat_grad).max() <= tol_grad
            else:
                self._add_step(t, d)
                if n_iter != max_iter:
                    loss = _loss_value(closure())
                    flat_grad = self._gather_flat_grad()
                    opt_cond = np.abs(flat_grad).max() <= tol_grad
                    ls_evals = 1
            evals += ls_evals
            state["func_evals"] += ls_evals

            if n_iter == max_iter or evals >= max_eval or opt_cond:
                break
            if np.abs(d * t).max() <= tol_change:  # the step became negligible
                break
            if abs(loss - prev_loss) < tol_change:  # the loss stopped changing
                break

        state.update(d=d, t=t, old_dirs=y_hist, old_stps=s_hist, ro=rho, H_diag=h_diag,
                     prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss
