"""Tests generated from the op registry (fastbp.registry.REGISTRY): every compiled op against its NumPy
reference, forward and backward, float32 and float64, plus float64 central-difference gradient checks,
linearity of backward in the incoming gradient, and inputs left unmodified.

The registry's samples are small, below the kernels' parallel threshold, so the comparisons with the
reference run twice: as they come ("serial") and with the threshold lowered to 0 on 2 threads
("parallel"), so that every sample also runs the OpenMP branches. Results must also be bit-identical on 1
and 2 threads (test_results_do_not_depend_on_thread_count)."""
import contextlib
import copy
import inspect
import os
import zlib

import numpy as np
import pytest
import threadpoolctl

import fastbp
from fastbp import _backend
from fastbp._C import _runtime
from fastbp.registry import REGISTRY
from helpers import parallel_branches

C, R = _backend.compiled, _backend.reference
DTYPES = (np.float32, np.float64)
OPS = [s for s in REGISTRY if s.kind == "op"]
STEPS = [s for s in REGISTRY if s.kind == "step"]


_CASES = {}


def _cases(spec, dtype):
    """The spec's samples for dtype, generated once per session (callers deep-copy before use)."""
    key = (spec.name, np.dtype(dtype).name)
    if key not in _CASES:
        rng = np.random.default_rng(zlib.crc32(f"{spec.name}/{np.dtype(dtype).name}".encode()))
        _CASES[key] = tuple(spec.samples(rng, np.dtype(dtype)))
    return _CASES[key]


def _params(specs):
    out = []
    for spec in specs:
        for dt in DTYPES:
            for i, case in enumerate(_cases(spec, dt)):
                out.append(pytest.param(spec, dt, i, id=f"{spec.name}-{np.dtype(dt).name}-{case.id}"))
    return out


def _case(spec, dt, i):
    return copy.deepcopy(_cases(spec, dt)[i])


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _close(actual, expected, rtol, atol, what):
    assert actual is not None and expected is not None, what
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def _grad_out(rng, out, dtype):
    return rng.standard_normal(np.shape(out)).astype(dtype)


@pytest.fixture(params=["serial", "parallel"])
def path(request):
    """"serial": the real parallel threshold (every registry sample is below it); "parallel": threshold 0
    and 2 OpenMP threads, so every loop of every kernel takes its OpenMP branch."""
    if request.param == "serial":
        yield request.param
        return
    with parallel_branches():
        yield request.param


@pytest.mark.parametrize("spec,dt,i", _params(OPS))
def test_forward_matches_reference(spec, dt, i, path):
    case = _case(spec, dt, i)
    rtol, atol = spec.tolerance(dt)
    oc = spec.forward(C, *case.inputs, **case.params)
    orf = spec.forward(R, *case.inputs, **case.params)
    oc_t = oc if isinstance(oc, tuple) else (oc,)
    or_t = orf if isinstance(orf, tuple) else (orf,)
    for k, (a, b) in enumerate(zip(oc_t, or_t)):
        assert np.asarray(a).dtype == np.dtype(dt), f"output {k} has dtype {np.asarray(a).dtype}"
        assert type(a) is np.ndarray and type(b) is np.ndarray, f"output {k}: {type(a)}, {type(b)} (not ndarray)"
        _close(a, b, rtol, atol, f"{spec.name} forward output {k}")


@pytest.mark.parametrize("spec,dt,i", _params(OPS))
def test_backward_matches_reference(spec, dt, i, path):
    case = _case(spec, dt, i)
    rtol, atol = spec.tolerance(dt)
    rng = np.random.default_rng(i)
    out = spec.forward(R, *case.inputs, **case.params)
    g = _grad_out(rng, _first(out), dt)
    gc = spec.backward(C, g, out, *case.inputs, **case.params)
    gr = spec.backward(R, g, out, *case.inputs, **case.params)
    assert len(gc) == len(spec.diff_inputs) == len(gr)
    for k, idx in enumerate(spec.diff_inputs):
        assert type(gc[k]) is np.ndarray and type(gr[k]) is np.ndarray, f"grad {k}: {type(gc[k])}, {type(gr[k])}"
        assert gc[k].dtype == np.dtype(dt)
        assert gc[k].shape == np.shape(case.inputs[idx])
        _close(gc[k], gr[k], rtol, atol, f"{spec.name} grad of input {idx}")


@pytest.mark.parametrize("spec,dt,i", _params(OPS))
def test_backward_is_linear_in_grad(spec, dt, i):
    case = _case(spec, dt, i)
    rtol, atol = spec.tolerance(dt)
    rng = np.random.default_rng(100 + i)
    out = spec.forward(R, *case.inputs, **case.params)
    g1, g2 = _grad_out(rng, _first(out), dt), _grad_out(rng, _first(out), dt)
    a, b = dt(0.75), dt(-1.5)
    for B in (C, R):
        lhs = spec.backward(B, np.asarray(a * g1 + b * g2, dtype=dt), out, *case.inputs, **case.params)
        r1 = spec.backward(B, g1, out, *case.inputs, **case.params)
        r2 = spec.backward(B, g2, out, *case.inputs, **case.params)
        for k in range(len(lhs)):
            scale = max(1.0, float(np.abs(lhs[k]).max(initial=0)))
            _close(lhs[k], a * r1[k] + b * r2[k], rtol * 10, atol * 10 * scale, f"{spec.name}/{B.name} linearity {k}")


@pytest.mark.parametrize("spec,dt,i", _params(OPS))
def test_inputs_not_modified(spec, dt, i):
    case = _case(spec, dt, i)
    before = copy.deepcopy(case.inputs)
    for B in (C, R):
        out = spec.forward(B, *case.inputs, **case.params)
        g = _grad_out(np.random.default_rng(0), _first(out), dt)
        spec.backward(B, g, out, *case.inputs, **case.params)
        for k, (x0, x1) in enumerate(zip(before, case.inputs)):
            np.testing.assert_array_equal(np.asarray(x0), np.asarray(x1), err_msg=f"{B.name} modified input {k}")


def _loss(B, spec, inputs, params, G):
    return float(np.sum(np.asarray(_first(spec.forward(B, *inputs, **params)), dtype=np.float64) * G))


# float64 only, and only samples not marked as extremes (where finite differences say nothing)
GRADCHECK_PARAMS = [p for p in _params(OPS) if p.values[1] is np.float64 and _cases(*p.values[:2])[p.values[2]].gradcheck]


@pytest.mark.parametrize("spec,dt,i", GRADCHECK_PARAMS)
@pytest.mark.parametrize("backend_name", ["compiled", "reference"])
def test_gradcheck_float64(spec, dt, i, backend_name):
    """Analytic gradients of both backends against central differences of the reference forward."""
    case = _case(spec, dt, i)
    B = _backend.compiled if backend_name == "compiled" else R
    rng = np.random.default_rng(7 + i)
    inputs = [np.array(x, dtype=x.dtype) if isinstance(x, np.ndarray) else x for x in case.inputs]
    out = spec.forward(R, *inputs, **case.params)
    G = rng.standard_normal(np.shape(_first(out)))
    grads = spec.backward(B, G, out, *inputs, **case.params)
    eps = 1e-6
    rtol, atol = spec.gradcheck_tol
    for k, idx in enumerate(spec.diff_inputs):
        x = inputs[idx]
        analytic = np.asarray(grads[k], dtype=np.float64)
        if x.size <= 60:
            directions = [np.eye(1, x.size, j).reshape(x.shape) for j in range(x.size)]
        else:
            directions = [rng.standard_normal(x.shape) for _ in range(4)]
        for d in directions:
            xp, xm = inputs.copy(), inputs.copy()
            xp[idx], xm[idx] = np.asarray(x + eps * d), np.asarray(x - eps * d)  # 0-d stays an ndarray
            numeric = (_loss(R, spec, xp, case.params, G) - _loss(R, spec, xm, case.params, G)) / (2 * eps)
            exact = float(np.sum(analytic * d))
            assert abs(numeric - exact) <= atol + rtol * max(abs(numeric), abs(exact), 1.0), \
                f"{spec.name} input {idx}: analytic {exact!r} vs numeric {numeric!r}"


@pytest.mark.parametrize("spec,dt,i", _params(STEPS))
def test_step_trajectory_matches_reference(spec, dt, i, path):
    rtol, atol = spec.tolerance(dt)
    case_c, case_r = _case(spec, dt, i), _case(spec, dt, i)
    untouched = [k for k in range(len(case_c.inputs)) if k not in spec.mutates]
    before = copy.deepcopy(case_c.inputs)
    for t in range(spec.steps):
        spec.forward(C, *case_c.inputs, step_index=t, **case_c.params)
        spec.forward(R, *case_r.inputs, step_index=t, **case_r.params)
        for k in spec.mutates:
            _close(case_c.inputs[k], case_r.inputs[k], rtol, atol, f"{spec.name} state {k} after step {t + 1}")
    for k in untouched:
        np.testing.assert_array_equal(before[k], case_c.inputs[k], err_msg=f"{spec.name} modified input {k}")
    assert not np.array_equal(before[spec.mutates[0]], case_c.inputs[spec.mutates[0]]), "step changed nothing"


def _run_all(spec, case, dt):
    """Every output of the op on the compiled backend: forward outputs and gradients (ops), or the state
    after each step (steps)."""
    if spec.kind == "step":
        states = []
        for t in range(spec.steps):
            spec.forward(C, *case.inputs, step_index=t, **case.params)
            states.extend(np.array(case.inputs[k]) for k in spec.mutates)
        return states
    out = spec.forward(C, *case.inputs, **case.params)
    outs = list(out) if isinstance(out, tuple) else [out]
    if spec.backward is not None:
        g = _grad_out(np.random.default_rng(3), _first(out), dt)
        outs.extend(spec.backward(C, g, out, *case.inputs, **case.params))
    return outs


@pytest.fixture
def restore_threads():
    threads, parallel_min = fastbp.get_num_threads(), _runtime._get_parallel_min()
    yield
    fastbp.set_num_threads(threads)
    _runtime._set_parallel_min(parallel_min)


@pytest.mark.parametrize("dt", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("spec", REGISTRY, ids=lambda s: s.name)
def test_results_do_not_depend_on_thread_count(spec, dt, restore_threads):
    """Every registry op, every sample, with the parallel threshold at 0: the same bits on 1 thread as on 2
    (OpenMP and BLAS; fastbp.set_num_threads sets both). NaN positions must agree too."""
    _runtime._set_parallel_min(0)
    # without the BLAS thread hook (a serial build, or a BLAS other than scipy's OpenBLAS) products run on the
    # BLAS's own threads, whose last bits may change with its thread count (README, "Threads"): there only
    # fastbp's own thread count varies, the BLAS stays at one thread
    hooked = fastbp._config._conv_blas_thread_hook()
    results = {}
    for n in (1, 2):
        fastbp.set_num_threads(n)
        with contextlib.nullcontext() if hooked else threadpoolctl.threadpool_limits(1, user_api="blas"):
            results[n] = [_run_all(spec, _case(spec, dt, i), dt) for i in range(len(_cases(spec, dt)))]
    for i, (one, two) in enumerate(zip(results[1], results[2])):
        for k, (a, b) in enumerate(zip(one, two)):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=(
                f"{spec.name} sample {_cases(spec, dt)[i].id}, output {k}: 2 threads differ from 1"))


# ----- meta-tests: the registry covers every kernel, and both backends expose the same API -------------
def test_every_compiled_kernel_has_a_registry_entry():
    covered = {k for s in REGISTRY for k in s.kernels}
    exported = set()
    for mod in _backend.compiled_modules:
        exported |= set(_backend.public_functions(mod))
    missing = sorted(exported - covered)
    assert not missing, f"kernels exported from fastbp._C with no registry entry: {missing}"
    unknown = sorted(covered - exported)
    assert not unknown, f"registry names kernels that fastbp._C does not export: {unknown}"


def test_reference_mirrors_compiled_names_and_signatures():
    from fastbp import reference
    for fam, mod in zip(_backend.FAMILIES, _backend.compiled_modules):
        cfun = _backend.public_functions(mod)
        rfun = _backend.public_functions(getattr(reference, fam))
        assert set(cfun) == set(rfun), f"{fam}: compiled {sorted(cfun)} vs reference {sorted(rfun)}"
        for name in cfun:
            sc, sr = inspect.signature(cfun[name]), inspect.signature(rfun[name])
            assert list(sc.parameters) == list(sr.parameters), f"{fam}.{name}: {sc} vs {sr}"
            for p in sc.parameters:
                assert sc.parameters[p].default == sr.parameters[p].default, f"{fam}.{name}({p}) default differs"


def test_entries_running_the_same_kernels_share_tolerances():
    """Tolerances follow from a kernel's arithmetic, so entries that call the same kernels (conv2d and
    conv2d_nobias, linear and linear_nobias) must use the same ones."""
    for a in REGISTRY:
        for b in REGISTRY:
            if a.name < b.name and set(a.kernels) & set(b.kernels):
                assert a.tol == b.tol, f"{a.name} {a.tol} vs {b.name} {b.tol}"


def test_every_csrc_family_is_built_and_listed():
    csrc = os.path.join(os.path.dirname(__file__), os.pardir, "csrc")
    if not os.path.isdir(csrc):
        pytest.skip("no source tree next to the tests")
    pyx = {os.path.splitext(f)[0] for f in os.listdir(csrc) if f.endswith(".pyx") and not f.startswith("_")}
    assert pyx == set(_backend.FAMILIES), f"csrc families {sorted(pyx)} vs backend FAMILIES {_backend.FAMILIES}"
