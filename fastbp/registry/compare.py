"""`python -m fastbp compare`: run every registry op on the compiled kernels and the NumPy references
with the registry's sample inputs, and report the largest differences against each op's tolerance."""
import copy
import zlib

import numpy as np

from .. import _backend
from . import REGISTRY


def _cases(spec, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{spec.name}/{np.dtype(dtype).name}".encode()))
    return spec.samples(rng, np.dtype(dtype))


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _excess(a, b, rtol, atol):
    """max |a - b| and the worst ratio |a - b| / (atol + rtol |b|) (<= 1 means within tolerance)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return np.inf, np.inf
    diff = np.abs(a - b)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    diff = np.where(both_nan | same_inf, 0.0, diff)
    return float(diff.max(initial=0.0)), float((diff / (atol + rtol * np.abs(np.nan_to_num(b)))).max(initial=0.0))


def compare_spec(spec, dtype):
    """Largest forward and backward (or step-state) differences over the spec's samples."""
    C, R = _backend.compiled, _backend.reference
    if C is None:
        raise RuntimeError("the compiled kernels are not loaded; nothing to compare")
    rtol, atol = spec.tolerance(dtype)
    worst = {"forward": (0.0, 0.0), "backward": (0.0, 0.0)}

    def note(kind, pair):
        worst[kind] = (max(worst[kind][0], pair[0]), max(worst[kind][1], pair[1]))

    rng = np.random.default_rng(0)
    cases = _cases(spec, dtype)
    for case in cases:
        if spec.kind == "step":
            cc, cr = copy.deepcopy(case), copy.deepcopy(case)
            for t in range(spec.steps):
                spec.forward(C, *cc.inputs, step_index=t, **cc.params)
                spec.forward(R, *cr.inputs, step_index=t, **cr.params)
            for k in spec.mutates:
                note("forward", _excess(cc.inputs[k], cr.inputs[k], rtol, atol))
            continue
        oc = spec.forward(C, *case.inputs, **case.params)
        orf = spec.forward(R, *case.inputs, **case.params)
        for a, b in zip(_as_tuple(oc), _as_tuple(orf)):
            note("forward", _excess(a, b, rtol, atol))
        if spec.backward is not None:
            g = rng.standard_normal(np.shape(_as_tuple(orf)[0])).astype(dtype)
            for a, b in zip(spec.backward(C, g, orf, *case.inputs, **case.params),
                            spec.backward(R, g, orf, *case.inputs, **case.params)):
                note("backward", _excess(a, b, rtol, atol))
    return {"op": spec.name, "dtype": np.dtype(dtype).name, "cases": len(cases),
            "forward_max_abs": worst["forward"][0],
            "backward_max_abs": worst["backward"][0] if spec.backward is not None else None,
            "ok": max(worst["forward"][1], worst["backward"][1]) <= 1.0}


def main(names=()):
    specs = [s for s in REGISTRY if not names or s.name in names]
    unknown = set(names) - {s.name for s in REGISTRY}
    if unknown:
        print(f"unknown ops: {sorted(unknown)}; known: {', '.join(s.name for s in REGISTRY)}")
        return 2
    print(f"{'op':24s} {'dtype':8s} {'cases':>5s} {'fwd max |diff|':>15s} {'bwd max |diff|':>15s}  within tolerance")
    failed = 0
    for spec in specs:
        for dt in (np.float32, np.float64):
            r = compare_spec(spec, dt)
            failed += not r["ok"]
            bwd = "-" if r["backward_max_abs"] is None else f"{r['backward_max_abs']:.3e}"
            print(f"{r['op']:24s} {r['dtype']:8s} {r['cases']:5d} {r['forward_max_abs']:15.3e} "
                  f"{bwd:>15s}  {'yes' if r['ok'] else 'NO'}")
    print(f"{len(specs)} ops, {failed} outside tolerance")
    return 1 if failed else 0
