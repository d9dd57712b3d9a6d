"""Gradient checking for users: analytic gradients from backward() against central differences, in float64.

    x = fastbp.tensor(np.random.randn(4, 3), requires_grad=True)
    fastbp.gradcheck(lambda t: fastbp.nn.functional.elu(t, alpha=2.0), [x])

The output is reduced to a scalar by a fixed random projection, phi = sum(v * fn(x)), so one backward
pass gives the analytic gradient of phi with respect to every input; each element of it is compared with
(phi(x + eps e_j) - phi(x - eps e_j)) / (2 eps). For inputs with many elements, random unit directions d
replace the basis vectors e_j: the directional derivative <grad, d> is compared with
(phi(x + eps d) - phi(x - eps d)) / (2 eps), a few evaluations of fn instead of two per element.
"""
import math
import numbers
import warnings

import numpy as np

from .tensor import Tensor, no_grad


class GradcheckError(RuntimeError):
    """Raised by gradcheck when analytic and numerical gradients disagree."""


def _outputs(out):
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not outs:
        raise TypeError("gradcheck: fn returned an empty sequence; it must return a Tensor")
    for k, o in enumerate(outs):
        if not isinstance(o, Tensor):
            raise TypeError(f"gradcheck: fn must return a Tensor (or a tuple of Tensors), output {k} is "
                            f"{type(o).__name__}")
        if o.dtype.kind != "f":
            raise TypeError(f"gradcheck: output {k} has dtype {o.dtype}; it must be floating point")
    return outs


def _as_float64(item, index, checked_dtypes):
    """A float64 copy of a floating Tensor (keeping requires_grad) or float ndarray; anything else unchanged."""
    if isinstance(item, Tensor):
        if item.dtype.kind != "f":
            return item
        if item.requires_grad:
            checked_dtypes.append((index, item.dtype))
        return Tensor(np.array(item.data, dtype=np.float64, copy=True), requires_grad=item.requires_grad)
    if isinstance(item, np.ndarray) and item.dtype.kind == "f":
        return np.array(item, dtype=np.float64, copy=True)
    return item


def _directions(rng, shape, count):
    for _ in range(count):
        d = rng.standard_normal(shape)
        yield d / np.linalg.norm(d)


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, n_directions=None,
              max_elements=512, seed=0):
    """Check the gradients that `fn` computes by backward against central differences, in float64.

    fn: called as fn(*inputs); returns a Tensor (or a tuple of Tensors).
    inputs: a Tensor or a sequence. Tensors with requires_grad=True are the inputs checked; other items
        (integer labels, constants) are passed through. Floating Tensors and ndarrays are replaced by float64
        copies, so the caller's tensors and their .grad are never touched; a checked input that is not
        float64 triggers a warning (finite differences in float32 cannot judge a gradient).
    eps: the finite-difference step. An element passes when
        |analytic - numerical| <= atol + rtol * |numerical|.
    raise_exception: on failure raise GradcheckError (default) or return False, as PyTorch's gradcheck.
    n_directions: None (default) checks every element of inputs with at most `max_elements` elements and
        16 random unit directions for larger ones; an int checks that many random directions for every input.
    seed: seeds the output projection and the directions, so a failure is reproducible.

    The failure message names the input, the worst element (or direction), the analytic and numerical
    values and the tolerance. Returns True when every checked input passes."""
    if not callable(fn):
        raise TypeError(f"gradcheck: fn must be callable, got {type(fn).__name__}")
    for name, v in (("eps", eps), ("atol", atol), ("rtol", rtol)):
        if not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0 or (name == "eps" and v == 0):
            bound = "> 0" if name == "eps" else ">= 0"
            raise ValueError(f"gradcheck: {name} must be a finite number {bound}, got {v!r}")
    if n_directions is not None and (isinstance(n_directions, bool) or not isinstance(n_directions, numbers.Integral)
                                     or n_directions < 1):
        raise ValueError(f"gradcheck: n_directions must be None or an int >= 1, got {n_directions!r}")
    items = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    low_precision = []
    xs = [_as_float64(item, i, low_precision) for i, item in enumerate(items)]
    checked = [i for i, x in enumerate(xs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input is a floating-point Tensor with requires_grad=True")
    for i, dt in low_precision:
        if dt != np.float64:
            warnings.warn(f"gradcheck: input {i} has dtype {dt}; checking gradients on a float64 copy "
                          f"(finite differences in {dt} are too coarse to judge a gradient)", stacklevel=2)
    rng = np.random.default_rng(seed)

    # analytic: one backward pass of phi = sum_k <v_k, out_k>
    outs = _outputs(fn(*xs))
    projections = [rng.standard_normal(o.shape) for o in outs]
    live = [(o, v) for o, v in zip(outs, projections) if o.requires_grad]
    for k, (o, v) in enumerate(live):
        o.backward(v.astype(o.dtype), retain_graph=k < len(live) - 1)
    analytic = {i: (np.zeros(xs[i].shape) if xs[i].grad is None else np.asarray(xs[i].grad, dtype=np.float64))
                for i in checked}

    def phi():
        with no_grad():
            values = _outputs(fn(*xs))
        if [v.shape for v in values] != [v.shape for v in projections]:
            raise RuntimeError("gradcheck: fn returned outputs of different shapes on perturbed inputs")
        return sum(float(np.sum(o.data.astype(np.float64) * v)) for o, v in zip(values, projections))

    failures = []
    for i in checked:
        data = xs[i].data
        a = analytic[i]
        if n_directions is None and data.size <= max_elements:
            flat = data.reshape(-1)  # a view: xs[i].data is our own contiguous float64 copy
            numeric = np.empty(data.size)
            for j in range(data.size):
                orig = flat[j]
                flat[j] = orig + eps
                up = phi()
                flat[j] = orig - eps
                down = phi()
                flat[j] = orig
                numeric[j] = (up - down) / (2 * eps)
            exact = a.reshape(-1)
            labels = [f"element {tuple(int(k) for k in np.unravel_index(j, data.shape))}" for j in range(data.size)]
        else:
            orig = data.copy()
            count = 16 if n_directions is None else int(n_directions)
            numeric, exact = np.empty(count), np.empty(count)
            for k, d in enumerate(_directions(rng, data.shape, count)):
                data[...] = orig + eps * d
                up = phi()
                data[...] = orig - eps * d
                down = phi()
                data[...] = orig
                numeric[k] = (up - down) / (2 * eps)
                exact[k] = float(np.sum(a * d))
            labels = [f"random direction {k} of {count}" for k in range(count)]
        tol = atol + rtol * np.abs(numeric)
        err = np.abs(exact - numeric)
        bad = ~(err <= tol)  # NaN fails
        if bad.any():
            excess = np.where(np.isnan(err), np.inf, err - tol)
            w = int(np.argmax(excess))
            failures.append(
                f"input {i} (shape {data.shape}): {int(bad.sum())} of {bad.size} checks fail; worst at "
                f"{labels[w]}: analytic {float(exact[w])!r} vs numerical {float(numeric[w])!r}, "
                f"|difference| {err[w]:.3g} > tolerance {tol[w]:.3g} "
                f"(atol={atol:g} + rtol={rtol:g} * |numerical|), eps={eps:g}")
    if failures:
        if raise_exception:
            raise GradcheckError("gradcheck: analytic and numerical gradients differ for " + "; ".join(failures))
        return False
    return True
