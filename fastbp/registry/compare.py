"""`python -m fastbp compare`: run every registry op on the compiled kernels and the NumPy references
with the registry's sample inputs, and report the largest differences against each op's tolerance.

Ops are named as users call them: the public function (`fastbp.nn.functional.nll_loss` -> "nll_loss"), the
optimizer class whose step runs the kernel ("SGD"), or the operator ("matmul", Tensor's `@`). Registry
entries that test one function in two forms (with and without bias) appear as that function with a variant.
Registry names are accepted on the command line too."""
import copy
import json
import sys
import zlib

import numpy as np

from .. import _backend
from . import REGISTRY


# registry name -> (public name, dotted path of what a user calls, variant or None). An entry not listed
# here is a function of fastbp.nn.functional of the same name (a test checks every path resolves).
PUBLIC_NAMES = {
    "linear_nobias": ("linear", "fastbp.nn.functional.linear", "bias=None"),
    "linear_relu": ("linear", "fastbp.nn.functional.linear", "followed by relu, fused (captured steps)"),
    "matmul": ("matmul", "fastbp.Tensor.__matmul__", None),
    "cross_entropy_fused": ("cross_entropy", "fastbp.nn.functional.cross_entropy", "fused forward+backward"),
    "nll": ("nll_loss", "fastbp.nn.functional.nll_loss", None),
    "multi_margin": ("multi_margin_loss", "fastbp.nn.functional.multi_margin_loss", None),
    "mse": ("mse_loss", "fastbp.nn.functional.mse_loss", None),
    "l1": ("l1_loss", "fastbp.nn.functional.l1_loss", None),
    "bce": ("binary_cross_entropy", "fastbp.nn.functional.binary_cross_entropy", None),
    "bce_with_logits": ("binary_cross_entropy_with_logits",
                        "fastbp.nn.functional.binary_cross_entropy_with_logits", None),
    "norm_penalty": ("elastic_net_penalty", "fastbp.nn.functional.elastic_net_penalty", None),
    "sgd_step": ("SGD", "fastbp.optim.SGD.step", None),
    "adagrad_step": ("Adagrad", "fastbp.optim.Adagrad.step", None),
    "rmsprop_step": ("RMSprop", "fastbp.optim.RMSprop.step", None),
    "adam_step": ("Adam", "fastbp.optim.Adam.step", None),
    "adadelta_step": ("Adadelta", "fastbp.optim.Adadelta.step", None),
    "batch_norm_train": ("batch_norm", "fastbp.nn.functional.batch_norm", "training=True"),
    "batch_norm_eval": ("batch_norm", "fastbp.nn.functional.batch_norm", "training=False"),
    "batch_norm_noaffine": ("batch_norm", "fastbp.nn.functional.batch_norm", "weight=None, bias=None"),
    "batch_norm_relu_train": ("batch_norm", "fastbp.nn.functional.batch_norm",
                              "training=True, followed by relu, fused (captured steps)"),
    "batch_norm_relu_eval": ("batch_norm", "fastbp.nn.functional.batch_norm",
                             "training=False, followed by relu, fused (captured steps)"),
    "dropout_mask_scale": ("dropout", "fastbp.nn.functional.dropout", None),
    "conv2d_nobias": ("conv2d", "fastbp.nn.functional.conv2d", "bias=None"),
}


def public_name(spec_name):
    """(public name, dotted path, variant) of a registry entry."""
    return PUBLIC_NAMES.get(spec_name, (spec_name, f"fastbp.nn.functional.{spec_name}", None))


def select(names):
    """Registry entries matching public or registry names; (specs, unknown names)."""
    specs = [s for s in REGISTRY if not names or s.name in names or public_name(s.name)[0] in names]
    known = {s.name for s in REGISTRY} | {public_name(s.name)[0] for s in REGISTRY}
    return specs, sorted(set(names) - known)


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
    op, function, variant = public_name(spec.name)
    return {"op": op, "variant": variant, "function": function, "registry_name": spec.name,
            "kernels": list(spec.kernels), "dtype": np.dtype(dtype).name, "cases": len(cases),
            "rtol": rtol, "atol": atol,
            "forward_max_abs": worst["forward"][0],
            "backward_max_abs": worst["backward"][0] if spec.backward is not None else None,
            "ok": max(worst["forward"][1], worst["backward"][1]) <= 1.0}


def main(names=(), as_json=False):
    """Print the comparison; 0 when every op is within tolerance, 1 when any is not, 2 for unknown names."""
    specs, unknown = select(names)
    if unknown:
        known = sorted({public_name(s.name)[0] for s in REGISTRY})
        print(f"unknown ops: {unknown}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    results = [compare_spec(spec, dt) for spec in specs for dt in (np.float32, np.float64)]
    failed = [r for r in results if not r["ok"]]
    if as_json:
        print(json.dumps({"ops": len(specs), "results": results, "outside_tolerance": len(failed),
                          "ok": not failed}, indent=1))
        return 1 if failed else 0
    print(f"{'op':34s} {'dtype':8s} {'cases':>5s} {'fwd max |diff|':>15s} {'bwd max |diff|':>15s}  within tolerance")
    for r in results:
        bwd = "-" if r["backward_max_abs"] is None else f"{r['backward_max_abs']:.3e}"
        name = r["op"] + (f" ({r['variant']})" if r["variant"] else "")
        print(f"{name:34s} {r['dtype']:8s} {r['cases']:5d} {r['forward_max_abs']:15.3e} "
              f"{bwd:>15s}  {'yes' if r['ok'] else 'NO'}")
    print(f"{len(specs)} ops, {len({(r['op'], r['variant']) for r in failed})} outside tolerance")
    return 1 if failed else 0
