"""Differential fuzzing of the op registry: the compiled kernels against the NumPy references on inputs
drawn by hypothesis. Used by tests/test_fuzz.py (a bounded, derandomized budget) and, run as a script, for
long campaigns that count every case instead of stopping at the first failure:

    FASTBP_FUZZ_EXAMPLES=2000 python tests/fuzzlib.py [op ...]

What varies, per registry entry:
  * the template: one of the entry's own samples (either dtype), which fixes its parameters (stride,
    reduction, weights, ...) and the number of dimensions of every array;
  * the shapes: a per-op shape model derived from all of the entry's samples (`ShapeModel`): positions
    (array, axis) that are equal in every sample with the same numbers of dimensions are one symbol and vary
    together, an axis that is 1 in all of them next to one that is not stays 1 (a broadcast axis such as a
    weight's (N, 1)), all others vary on their own --
    sizes 0 and 1, the template's size and its neighbours, odd sizes up to twice the template's;
  * the values: uniform in the template array's own range (so probabilities stay in [0, 1]), sometimes
    rounded to a coarse grid (ties for max-pool and maxout), integer labels in [0, C) with an occasional one
    out of range, and in the non-finite variant NaN, +inf and -inf at a few random positions;
  * the layout of every array, gradients included: C order, Fortran order, strided, negative strides,
    read-only, misaligned (offset by one byte) and broadcast (stride 0).

A case fails when one backend raises and the other does not, when an error is anything but ValueError or
TypeError, when shapes or dtypes differ, when NaN positions or infinities differ, when finite values differ by
more than the op's tolerance, or when an op modifies its inputs. Optimizer steps run a few steps on
identically laid out copies and compare the updated state."""
import copy
import os
import sys
import zlib
from dataclasses import dataclass

import numpy as np

if __package__ in (None, ""):  # run as a script: import fastbp from the tree the tests import it from
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastbp import _backend  # noqa: E402
from fastbp.registry import REGISTRY  # noqa: E402

C, R = _backend.compiled, _backend.reference
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
ACCEPTED_ERRORS = (ValueError, TypeError)
LAYOUTS = ("c", "fortran", "strided", "negstride", "readonly", "misaligned", "broadcast")
# FASTBP_FUZZ_LAYOUTS=c,strided,... restricts the layouts drawn (a drawn layout not listed becomes "c")
ALLOWED_LAYOUTS = set(os.environ.get("FASTBP_FUZZ_LAYOUTS", ",".join(LAYOUTS)).split(","))
MAX_ELEMENTS = 20000   # per array; larger drawn shapes are halved along their largest free symbol
STEP_RUNS = 3          # optimizer steps per case


class FuzzFailure(AssertionError):
    """A difference between the backends (the message describes the case)."""


# ----- templates and the shape model --------------------------------------------------------------------
def template_cases(spec, dtype):
    """The entry's samples for dtype, drawn with the same seeds as tests/test_registry.py."""
    rng = np.random.default_rng(zlib.crc32(f"{spec.name}/{np.dtype(dtype).name}".encode()))
    return tuple(spec.samples(rng, np.dtype(dtype)))


def slots(case):
    """The array arguments of a case: ("in", k) for inputs, ("param", name) for array-valued parameters."""
    out = [(("in", k), x) for k, x in enumerate(case.inputs) if isinstance(x, np.ndarray)]
    out += [(("param", k), v) for k, v in sorted(case.params.items()) if isinstance(v, np.ndarray)]
    return out


def signature(case):
    return tuple((key, x.ndim) for key, x in slots(case))


class ShapeModel:
    """Which dimensions of an entry's arrays vary, and which vary together, derived from its samples."""

    def __init__(self, spec):
        self.spec = spec
        self.templates = [(dt, c) for dt in DTYPES for c in template_cases(spec, dt)]
        rows = {}
        for _, case in self.templates:
            rows.setdefault(signature(case), []).append(
                {(key, ax): n for key, x in slots(case) for ax, n in enumerate(x.shape)})
        self.groups = {}
        for sig, rs in rows.items():
            classes = []
            for pos in sorted(rs[0]):
                for cls in classes:
                    if all(r[pos] == r[cls[0]] for r in rs):
                        cls.append(pos)
                        break
                else:
                    classes.append([pos])
            # a position that is 1 in every sample stays 1 if its array has a position that is not: a
            # broadcast axis (weight (N, 1)); an array of size 1 throughout stands for any size
            ones = {pos for pos in rs[0] if all(r[pos] == 1 for r in rs)}
            fixed = [all(pos in ones and any(q[0] == pos[0] and q not in ones for q in rs[0]) for pos in cls)
                     for cls in classes]
            self.groups[sig] = [(tuple(cls), fx) for cls, fx in zip(classes, fixed)]

    def symbols(self, case):
        """[(positions, fixed_at_one, template size)] for a template case."""
        sizes = {(key, ax): n for key, x in slots(case) for ax, n in enumerate(x.shape)}
        return [(cls, fx, sizes[cls[0]]) for cls, fx in self.groups[signature(case)]]

    def free_symbols(self):
        return sum(not fx for g in self.groups.values() for _, fx in g)

    def describe(self):
        lines = []
        for sig, classes in self.groups.items():
            names = {}
            for i, (cls, fx) in enumerate(classes):
                for pos in cls:
                    names[pos] = "1" if fx else f"d{i}"
            parts = []
            for key, nd in sig:
                label = f"in{key[1]}" if key[0] == "in" else key[1]
                parts.append(f"{label}({', '.join(names[(key, a)] for a in range(nd))})")
            lines.append(" ".join(parts))
        return lines


_MODELS = {}


def model(spec):
    if spec.name not in _MODELS:
        _MODELS[spec.name] = ShapeModel(spec)
    return _MODELS[spec.name]


# ----- drawing a case -----------------------------------------------------------------------------------
def _draw_size(draw, st, template):
    u = draw(st.integers(0, 99))
    if u < 4:
        return 0
    if u < 14:
        return 1
    if u < 60:
        return draw(st.sampled_from(sorted({max(template - 1, 1), template, template + 1})))
    return draw(st.integers(2, max(2 * template + 1, 9)))


def _round_up(n, k):
    return -(-n // k) * k


@dataclass
class ArrayRecipe:
    values: np.ndarray   # C-contiguous values the built array holds (before broadcasting)
    shape: tuple
    layout: str
    axis: int

    def build(self):
        v, shape = self.values.copy(), self.shape  # never a view of the recipe: steps write into it
        if self.layout == "fortran":
            return np.asfortranarray(v)
        if self.layout == "strided":
            return np.repeat(v, 2, axis=self.axis)[(slice(None),) * self.axis + (slice(None, None, 2),)]
        if self.layout == "negstride":
            return np.flip(np.ascontiguousarray(np.flip(v, self.axis)), self.axis)
        if self.layout == "readonly":
            a = v.copy()
            a.flags.writeable = False
            return a
        if self.layout == "misaligned":
            buf = np.zeros(v.nbytes + 1, np.uint8)
            a = buf[1:].view(v.dtype).reshape(shape)
            a[...] = v
            return a
        if self.layout == "broadcast":
            return np.broadcast_to(v, shape)
        return v

    def describe(self):
        ax = f"@{self.axis}" if self.layout in ("strided", "negstride", "broadcast") else ""
        return f"{self.values.dtype}{list(self.shape)}:{self.layout}{ax}"


def _draw_layout(draw, st, ndim):
    u = draw(st.integers(0, 99))
    layout = "c" if u < 35 else LAYOUTS[1 + u % (len(LAYOUTS) - 1)]
    if layout not in ALLOWED_LAYOUTS or (ndim == 0 and layout in ("strided", "negstride", "broadcast", "fortran")):
        layout = "c"
    axis = draw(st.integers(0, max(ndim - 1, 0)))
    return layout, axis


def _recipe(draw, st, values):
    """A random layout for an array holding `values` (a broadcast keeps only index 0 along its axis)."""
    layout, axis = _draw_layout(draw, st, values.ndim)
    shape = values.shape
    if layout == "broadcast":
        values = np.take(values, [0], axis=axis) if shape[axis] else values
    return ArrayRecipe(np.ascontiguousarray(values), tuple(shape), layout, axis)


def _specials(draw, st, rng, a, nonfinite):
    """Put a few special values at random positions of the float array a (in place)."""
    if a.size == 0:
        return
    if nonfinite and draw(st.integers(0, 99)) < 70:
        pool = [np.nan, np.inf, -np.inf]
    elif draw(st.integers(0, 99)) < 10:
        pool = [0.0, -0.0]
    else:
        return
    k = draw(st.integers(1, 3))
    flat = a.reshape(-1)
    for _ in range(k):
        flat[rng.integers(0, flat.size)] = pool[rng.integers(0, len(pool))]


def _float_values(draw, st, rng, template, shape, dtype, nonfinite):
    finite = template[np.isfinite(template)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    if lo == hi:
        lo, hi = lo - 1.0, hi + 1.0
    a = rng.uniform(lo, hi, shape)
    if draw(st.integers(0, 99)) < 20:  # a coarse grid: ties
        step = (hi - lo) / 8
        a = lo + np.round((a - lo) / step) * step
    a = a.astype(dtype)
    _specials(draw, st, rng, a, nonfinite)
    return a


def _labels(draw, st, rng, template, shape, n_classes):
    a = rng.integers(0, max(n_classes, 1), shape)
    if a.size and draw(st.integers(0, 99)) < 3:
        a.reshape(-1)[rng.integers(0, a.size)] = n_classes if draw(st.booleans()) else -1
    if np.issubdtype(template.dtype, np.unsignedinteger):
        a = np.where(a < 0, np.iinfo(template.dtype).max, a)
    return a.astype(template.dtype)


@dataclass
class Drawn:
    spec: object
    template_id: str
    dtype: np.dtype
    inputs: list      # ArrayRecipe or plain values
    params: dict      # ArrayRecipe or plain values
    grad: object      # draws the gradient once the output shape is known
    seed: int

    def build(self):
        ins = [r.build() if isinstance(r, ArrayRecipe) else copy.deepcopy(r) for r in self.inputs]
        ps = {k: (v.build() if isinstance(v, ArrayRecipe) else copy.deepcopy(v)) for k, v in self.params.items()}
        return ins, ps

    def describe(self):
        d = lambda v: v.describe() if isinstance(v, ArrayRecipe) else repr(v)  # noqa: E731
        ins = ", ".join(d(v) for v in self.inputs)
        ps = ", ".join(f"{k}={d(v)}" for k, v in self.params.items())
        return f"{self.spec.name} [{self.dtype}, template {self.template_id!r}] inputs ({ins}) params {{{ps}}}"


def draw_case(data, spec, nonfinite):
    """Draw one case for spec from a hypothesis `data` object."""
    from hypothesis import strategies as st
    draw = data.draw
    m = model(spec)
    dt, case = m.templates[draw(st.integers(0, len(m.templates) - 1))]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)

    # sizes per symbol, then per slot
    syms = m.symbols(case)
    size = [1 if fx else _draw_size(draw, st, t) for _, fx, t in syms]
    where = {pos: i for i, (cls, _, _) in enumerate(syms) for pos in cls}
    arrays = slots(case)
    if spec.name == "maxout":  # the only constraint the samples cannot show: last axis a multiple of pieces
        i = where[(("in", 0), case.inputs[0].ndim - 1)]
        if draw(st.integers(0, 99)) < 90:
            size[i] = _round_up(size[i], case.params["pieces"])

    def shape_of(key, x):
        return tuple(size[where[(key, ax)]] for ax in range(x.ndim))

    for _ in range(64):  # keep every array small: halve the largest free symbol of the largest array
        big = max(arrays, key=lambda kx: int(np.prod(shape_of(*kx))))
        shp = shape_of(*big)
        if int(np.prod(shp)) <= MAX_ELEMENTS:
            break
        i = max((where[(big[0], ax)] for ax in range(len(shp))), key=lambda j: size[j])
        size[i] = max(1, size[i] // 2)
        if spec.name == "maxout" and i == where[(("in", 0), case.inputs[0].ndim - 1)]:
            size[i] = _round_up(size[i], case.params["pieces"])

    n_classes = None
    if case.inputs and isinstance(case.inputs[0], np.ndarray) and case.inputs[0].ndim:
        n_classes = shape_of(("in", 0), case.inputs[0])[-1]
    def recipe_for(key, x):
        shp = shape_of(key, x)
        if np.issubdtype(x.dtype, np.integer):
            vals = _labels(draw, st, rng, x, shp, n_classes)
        else:
            vals = _float_values(draw, st, rng, x, shp, x.dtype, nonfinite)
        return _recipe(draw, st, vals)

    inputs = [recipe_for(("in", k), x) if isinstance(x, np.ndarray) else x for k, x in enumerate(case.inputs)]
    params = {k: (recipe_for(("param", k), v) if isinstance(v, np.ndarray) else v) for k, v in case.params.items()}

    def grad(shape, dtype):
        vals = rng.standard_normal(shape).astype(dtype)
        _specials(draw, st, rng, vals, nonfinite)
        return _recipe(draw, st, vals).build()

    return Drawn(spec, case.id, dt, inputs, params, grad, seed)


# ----- running and comparing ----------------------------------------------------------------------------
def _call(fn, *args, **kw):
    try:
        with np.errstate(all="ignore"):
            return fn(*args, **kw), None
    except Exception as exc:  # noqa: BLE001 -- classified by the caller
        return None, exc


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _both(what, rc, ec, rr, er):
    """None if both ran; True if both raised acceptable errors (the case ends there); raises otherwise."""
    if ec is None and er is None:
        return None
    if ec is not None and er is not None:
        if isinstance(ec, ACCEPTED_ERRORS) and isinstance(er, ACCEPTED_ERRORS):
            return True
        raise FuzzFailure(f"{what}: both raised, not both ValueError/TypeError: compiled {ec!r}, reference {er!r}")
    if ec is not None:
        raise FuzzFailure(f"{what}: compiled raised {ec!r}, reference returned")
    raise FuzzFailure(f"{what}: reference raised {er!r}, compiled returned")


def compare(a, b, rtol, atol, what):
    """Raise FuzzFailure unless a (compiled) matches b (reference)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise FuzzFailure(f"{what}: shape {a.shape} (compiled) != {b.shape} (reference)")
    if a.dtype != b.dtype:
        raise FuzzFailure(f"{what}: dtype {a.dtype} (compiled) != {b.dtype} (reference)")
    if not np.issubdtype(a.dtype, np.floating):
        if not np.array_equal(a, b):
            raise FuzzFailure(f"{what}: integer outputs differ at {int((a != b).sum())} positions")
        return
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    if not np.array_equal(nan_a, nan_b):
        idx = np.argwhere(nan_a != nan_b)[:3].tolist()
        raise FuzzFailure(f"{what}: NaN positions differ ({int((nan_a != nan_b).sum())} of {a.size}), e.g. at "
                          f"{idx}: compiled {[a64[tuple(i)] for i in idx]}, reference {[b64[tuple(i)] for i in idx]}")
    inf = (np.isinf(a64) | np.isinf(b64)) & ~nan_a
    if np.any(a64[inf] != b64[inf]):
        idx = np.argwhere(inf & (a64 != b64))[:3].tolist()
        raise FuzzFailure(f"{what}: infinities differ, e.g. at {idx}: compiled {[a64[tuple(i)] for i in idx]}, "
                          f"reference {[b64[tuple(i)] for i in idx]}")
    fin = ~(nan_a | inf)
    diff = np.abs(a64[fin] - b64[fin])
    bound = atol + rtol * np.abs(b64[fin])
    if np.any(diff > bound):
        j = int(np.argmax(diff - bound))
        raise FuzzFailure(f"{what}: {int((diff > bound).sum())} of {a.size} values outside rtol={rtol:g} "
                          f"atol={atol:g}; worst |diff| {diff[j]:.3e} (compiled {a64[fin][j]!r}, "
                          f"reference {b64[fin][j]!r})")


def _unchanged(before, after, what):
    for k, (x0, x1) in enumerate(zip(before, after)):
        if isinstance(x0, np.ndarray) and not np.array_equal(x0, x1, equal_nan=x0.dtype.kind == "f"):
            raise FuzzFailure(f"{what} modified input {k}")


def run_case(drawn):
    """Run one drawn case on both backends; raise FuzzFailure on any difference."""
    spec = drawn.spec
    rtol, atol = spec.tolerance(drawn.dtype)
    try:
        if spec.kind == "step":
            _run_step(drawn, rtol, atol)
        else:
            _run_op(drawn, rtol, atol)
    except FuzzFailure as exc:
        raise FuzzFailure(f"{exc}\n  case: {drawn.describe()} (value seed {drawn.seed})") from None


def _run_op(drawn, rtol, atol):
    spec = drawn.spec
    (ic, pc), (ir, pr) = drawn.build(), drawn.build()
    keep = [x.copy() if isinstance(x, np.ndarray) else x for x in ic]
    oc, ec = _call(spec.forward, C, *ic, **pc)
    orf, er = _call(spec.forward, R, *ir, **pr)
    if _both("forward", oc, ec, orf, er):
        return
    _unchanged(keep, ic, "compiled forward")
    _unchanged(keep, ir, "reference forward")
    for k, (a, b) in enumerate(zip(_tuple(oc), _tuple(orf))):
        compare(a, b, rtol, atol, f"forward output {k}")
    if spec.backward is None:
        return
    first = _tuple(orf)[0]
    g = drawn.grad(np.shape(first), np.asarray(first).dtype)
    gc, ec = _call(spec.backward, C, g, orf, *ic, **pc)
    gr, er = _call(spec.backward, R, g, orf, *ir, **pr)
    if _both("backward", gc, ec, gr, er):
        return
    _unchanged(keep, ic, "compiled backward")
    _unchanged(keep, ir, "reference backward")
    if len(gc) != len(gr):
        raise FuzzFailure(f"backward: {len(gc)} gradients (compiled) vs {len(gr)} (reference)")
    for k, (a, b) in enumerate(zip(gc, gr)):
        compare(a, b, rtol, atol, f"gradient {k} (of input {spec.diff_inputs[k]})")


def _run_step(drawn, rtol, atol):
    spec = drawn.spec
    (ic, pc), (ir, pr) = drawn.build(), drawn.build()
    for t in range(STEP_RUNS):
        rc, ec = _call(spec.forward, C, *ic, step_index=t, **pc)
        rr, er = _call(spec.forward, R, *ir, step_index=t, **pr)
        if _both(f"step {t + 1}", rc, ec, rr, er):
            return
        for k in spec.mutates:
            compare(ic[k], ir[k], rtol, atol, f"state {k} after step {t + 1}")


# ----- long runs ----------------------------------------------------------------------------------------
def campaign(spec, nonfinite, examples, seed=0):
    """Run `examples` cases of spec without stopping at failures; return (cases, failures by first line)."""
    from hypothesis import HealthCheck, Phase, given, settings, strategies as st
    stats = {"cases": 0, "failures": {}}

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        drawn = draw_case(data, spec, nonfinite)
        stats["cases"] += 1
        try:
            run_case(drawn)
        except FuzzFailure as exc:
            key = str(exc).splitlines()[0]
            key = key.split(":")[0] + ": " + key.split(":", 2)[1].split("(")[0].split(",")[0].strip()
            first = stats["failures"].setdefault(key, [0, str(exc)])
            first[0] += 1

    import random
    random.seed(seed)
    run()
    return stats


def main(argv):
    n = int(os.environ.get("FASTBP_FUZZ_EXAMPLES", "500"))
    names = argv or [s.name for s in REGISTRY]
    total = bad = 0
    for name in names:
        spec = next(s for s in REGISTRY if s.name == name)
        for nonfinite in (False, True):
            stats = campaign(spec, nonfinite, n)
            fails = sum(c for c, _ in stats["failures"].values())
            total, bad = total + stats["cases"], bad + fails
            print(f"{name:20s} {'nonfinite' if nonfinite else 'finite':9s} cases {stats['cases']:6d} "
                  f"failures {fails:5d}", flush=True)
            for key, (count, example) in sorted(stats["failures"].items()):
                print(f"    {count:5d} x {key}\n          e.g. {example.replace(chr(10), chr(10) + '          ')}",
                      flush=True)
    print(f"total cases {total}, failing {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
