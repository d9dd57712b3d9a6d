"""Modules, SGD, backend switching, configuration and bad input for the issue-2 core."""
import math

import numpy as np
import pytest

import fastbp
from fastbp import nn, optim, tensor
import fastbp.nn.functional as F
from helpers import run_python


def mlp(dtype=None):
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))


# ----- modules -----------------------------------------------------------------------------------------
def test_linear_shapes_and_default_init():
    fastbp.manual_seed(0)
    lin = nn.Linear(400, 30)
    assert lin.weight.shape == (30, 400) and lin.bias.shape == (30,)
    assert lin.weight.dtype == np.float32
    bound = 1 / math.sqrt(400)  # kaiming_uniform(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(lin.weight.data).max() <= bound and np.abs(lin.weight.data).max() > 0.95 * bound
    assert abs(lin.weight.data.std() - bound / math.sqrt(3)) < 0.05 * bound
    assert np.abs(lin.bias.data).max() <= bound
    assert nn.Linear(3, 2, bias=False).bias is None


def test_manual_seed_reproducible():
    fastbp.manual_seed(42)
    a = mlp().state_dict()
    fastbp.manual_seed(42)
    b = mlp().state_dict()
    fastbp.manual_seed(43)
    c = mlp().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_state_dict_keys_roundtrip_and_errors():
    m = mlp()
    sd = m.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    sd["0.weight"] += 1  # a copy: the model is untouched
    assert not np.array_equal(sd["0.weight"], m.state_dict()["0.weight"])
    m2 = mlp()
    m2.load_state_dict(sd)
    np.testing.assert_array_equal(m2.state_dict()["0.weight"], sd["0.weight"])
    bad = dict(sd)
    bad["2.weight"] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="2.weight"):
        m2.load_state_dict(bad)
    missing = dict(sd)
    del missing["4.bias"]
    with pytest.raises(KeyError, match="4.bias"):
        m2.load_state_dict(missing)
    extra = dict(sd, **{"9.weight": np.zeros(1)})
    with pytest.raises(KeyError, match="9.weight"):
        m2.load_state_dict(extra)


def test_named_parameters_nested_modules_train_eval_zero_grad():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.body(x)) + x[:, :2]  # residual-style

    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["body.0.weight", "body.0.bias", "head.weight", "head.bias"]
    net.eval()
    assert not net.training and not net.body[0].training
    net.train()
    assert net.head.training
    out = net(tensor(np.ones((3, 4), dtype=np.float32)))
    F.cross_entropy(out, np.array([0, 1, 1])).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_to_dtype_converts_parameters():
    m = mlp().double()
    assert all(p.dtype == np.float64 for p in m.parameters())
    out = m(tensor(np.ones((2, 6))))
    assert out.dtype == np.float64
    m.float()
    assert all(p.dtype == np.float32 for p in m.parameters())
    with pytest.raises(TypeError):
        m.to(np.int32)


# ----- SGD against PyTorch's rule written out ---------------------------------------------------------
@pytest.mark.parametrize("cfg", [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9, nesterov=True),
                                 dict(lr=0.05, momentum=0.5, dampening=0.2, weight_decay=0.01)])
def test_sgd_matches_pytorch_rule(cfg):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(6)]
    p = nn.Parameter(p0.copy())
    opt = optim.SGD([p], **cfg)
    mom, damp, wd, nest = cfg.get("momentum", 0), cfg.get("dampening", 0), cfg.get("weight_decay", 0), cfg.get("nesterov", False)
    q, buf = p0.copy(), None
    for t, g in enumerate(grads):
        p.grad = g.copy()
        opt.step()
        d = g + wd * q
        if mom:
            buf = d.copy() if buf is None else mom * buf + (1 - damp) * d
            d = d + mom * buf if nest else buf
        q = q - cfg["lr"] * d
        np.testing.assert_allclose(p.data, q, rtol=1e-12, err_msg=f"step {t}")


def test_sgd_validation_and_state_dict_resume():
    p = nn.Parameter(np.ones(3))
    for bad in (dict(lr=-1.0), dict(lr=0.1, momentum=-0.5), dict(lr=0.1, weight_decay=-1), dict(lr=0.1, nesterov=True)):
        with pytest.raises(ValueError):
            optim.SGD([p], **bad)
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)
    g = np.array([0.5, -1.0, 2.0])
    a = nn.Parameter(np.ones(3))
    oa = optim.SGD([a], lr=0.1, momentum=0.9)
    for _ in range(3):
        a.grad = g.copy()
        oa.step()
    b = nn.Parameter(a.data.copy())
    ob = optim.SGD([b], lr=0.1, momentum=0.9)
    ob.load_state_dict(oa.state_dict())
    for _ in range(3):
        a.grad = g.copy()
        b.grad = g.copy()
        oa.step()
        ob.step()
    np.testing.assert_array_equal(a.data, b.data)


# ----- backend switch --------------------------------------------------------------------------------
def _train(steps=5, dtype=np.float64):
    fastbp.manual_seed(7)
    m = mlp().to(dtype)
    opt = optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 6)).astype(dtype)
    y = rng.integers(0, 3, 16)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(m(tensor(X)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, m.state_dict()


def test_compiled_and_reference_backends_train_identically():
    assert fastbp.get_backend() == "compiled"
    lc, sc = _train()
    with fastbp.backend("reference"):
        assert fastbp.get_backend() == "reference"
        lr_, sr = _train()
    assert fastbp.get_backend() == "compiled"
    np.testing.assert_allclose(lc, lr_, rtol=1e-12)
    for k in sc:
        np.testing.assert_allclose(sc[k], sr[k], rtol=1e-10, atol=1e-12)
    fastbp.set_backend("reference")
    assert fastbp.get_backend() == "reference"
    fastbp.set_backend("compiled")
    with pytest.raises(ValueError):
        fastbp.set_backend("cuda")


def test_reference_backend_via_environment():
    out = run_python(["-c", "import fastbp; print(fastbp.get_backend())"], {"FASTBP_BACKEND": "reference"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "reference"


def test_missing_extension_is_a_loud_error():
    """Hide fastbp._C.gemm: import must fail with a rebuild hint, not fall back silently."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'fastbp._C.gemm': raise ImportError('simulated missing extension')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import fastbp\n"
    )
    out = run_python(["-c", code], drop=("FASTBP_BACKEND",))
    assert out.returncode != 0
    assert "Rebuild" in out.stderr and "FASTBP_BACKEND=reference" in out.stderr
    out = run_python(["-c", code + "print(fastbp.get_backend())"], {"FASTBP_BACKEND": "reference"})
    assert out.returncode == 0 and out.stdout.strip() == "reference", out.stderr


# ----- configuration --------------------------------------------------------------------------------------
def test_show_config_and_cli(capsys):
    fastbp.show_config()
    text = capsys.readouterr().out
    for needle in ("fastbp", "compiled kernels loaded: yes", "OpenMP", "GEMM BLAS"):
        assert needle in text
    out = run_python(["-m", "fastbp", "info"])
    assert out.returncode == 0, out.stderr
    assert "compiled kernels loaded: yes" in out.stdout
    # the instruction-set variant of the conv transforms the loader picked, said in `fastbp info`
    variant = fastbp._config.config()["conv_transforms_variant"]
    assert variant in ("avx512f", "avx2", "baseline", "baseline (built without clones)")
    assert f"conv transforms:         {variant} variant" in out.stdout


_GUEST_CODE = """
import json, os, sys
import numpy as np
import threadpoolctl  # imported first (its own KMP_DUPLICATE_LIB_OK side effect is not fastbp's)

def numpy_blas_threads():
    return [p["num_threads"] for p in threadpoolctl.threadpool_info()
            if p["user_api"] == "blas" and "numpy" in p["filepath"]]

env0, np0 = dict(os.environ), numpy_blas_threads()
import fastbp
from fastbp import nn, optim
env1, np1 = dict(os.environ), numpy_blas_threads()
fastbp.manual_seed(0)
rng = np.random.default_rng(0)
# a conv net and an MLP large enough to reach the OpenMP (prange) and threaded-BLAS paths
model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(8 * 32 * 32, 512), nn.ReLU(), nn.Linear(512, 10))
opt = optim.Adam(model.parameters(), lr=1e-3)
x = rng.random((64, 1, 64, 64)).astype(np.float32)
y = rng.integers(0, 10, 64)
for _ in range(2):
    opt.zero_grad()
    loss = nn.CrossEntropyLoss()(model(fastbp.tensor(x)), y)
    loss.backward()
    opt.step()
c = fastbp._config.config()
env2, np2 = dict(os.environ), numpy_blas_threads()
changed = sorted(k for k in set(env0) | set(env2) if env0.get(k) != env2.get(k))
print(json.dumps({"changed_at_import": sorted(k for k in set(env0) | set(env1) if env0.get(k) != env1.get(k)),
                  "changed": changed, "np": [np0, np1, np2], "loss": float(loss.item()),
                  "omp": c["omp_wait_policy"], "openblas": c["openblas_thread_timeout"]}))
"""


def test_import_and_a_training_step_leave_environment_and_numpy_blas_alone():
    """A guest in the user's process: importing fastbp and training sets no environment variable (other
    libraries read OMP_WAIT_POLICY, OPENBLAS_THREAD_TIMEOUT, KMP_DUPLICATE_LIB_OK, ... when they load) and
    does not change NumPy's BLAS thread count."""
    import json
    drop = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT",
            "KMP_DUPLICATE_LIB_OK", "OMP_NUM_THREADS")
    out = run_python(["-c", _GUEST_CODE], drop=drop)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.splitlines()[-1])
    assert r["changed_at_import"] == [] and r["changed"] == [], r
    assert r["np"][0] == r["np"][1] == r["np"][2] and r["np"][0], r
    assert np.isfinite(r["loss"])
    assert "fastbp does not set it" in r["omp"] and "fastbp does not set it" in r["openblas"]
    # without threadpoolctl imported first, fastbp's own use of it leaves no KMP_DUPLICATE_LIB_OK behind
    code = ("import os; e = dict(os.environ); import fastbp; fastbp.show_config(); "
            "print(sorted(k for k in set(e) | set(os.environ) if e.get(k) != os.environ.get(k)))")
    out = run_python(["-c", code], drop=drop)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"
    if fastbp._config.config()["openmp"]:  # a serial build prints no OpenMP settings
        assert "OpenMP wait policy:      not set" in out.stdout


def test_info_reports_wait_settings_the_user_chose():
    code = "import fastbp; c = fastbp._config.config(); print(c['omp_wait_policy']); print(c['openblas_thread_timeout'])"
    out = run_python(["-c", code], {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"},
                     drop=("GOMP_SPINCOUNT", "GOTO_THREAD_TIMEOUT"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["OMP_WAIT_POLICY=PASSIVE (set by the user)",
                                       "OPENBLAS_THREAD_TIMEOUT=4 (set by the user)"]


def test_threads_adaptive_rule_and_switch():
    """Parallel regions drop to one thread while the 1-minute load average is >= 2 x CPUs + 1 (back below
    2 x CPUs); the switch is process-wide and off unless asked for (FASTBP_THREADS_ADAPTIVE=1 or
    set_threads_adaptive(True))."""
    rt = fastbp._config._runtime()
    assert rt._busy_for_load(5.0, 2, False) and not rt._busy_for_load(4.9, 2, False)
    assert rt._busy_for_load(4.0, 2, True) and not rt._busy_for_load(3.9, 2, True)   # hysteresis
    assert rt._busy_for_load(17.0, 8, False) and not rt._busy_for_load(16.5, 8, False)
    assert fastbp.get_threads_adaptive() is False
    assert rt.effective_threads() == fastbp.get_num_threads()
    try:
        assert fastbp.set_threads_adaptive(True) is False
        assert fastbp.get_threads_adaptive() is True
        assert rt.effective_threads() in (1, fastbp.get_num_threads())
    finally:
        fastbp.set_threads_adaptive(False)
    code = ("import os, fastbp; print(fastbp.get_threads_adaptive()); "
            "busy = os.getloadavg()[0] >= 2 * os.cpu_count() + 1; "
            "print(fastbp._config._runtime().effective_threads() == (1 if busy else fastbp.get_num_threads()) "
            "or 'borderline')")
    out = run_python(["-c", code], drop=("FASTBP_THREADS_ADAPTIVE",))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "False", out.stdout   # off by default
    out = run_python(["-c", code], {"FASTBP_THREADS_ADAPTIVE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "True" and out.stdout.split()[1] in ("True", "borderline"), out.stdout
    if fastbp._config.config()["openmp"]:  # a serial build prints no thread policy
        assert "while the machine is oversubscribed" in run_python(["-m", "fastbp", "info"],
                                                                   {"FASTBP_THREADS_ADAPTIVE": "1"}).stdout


def test_set_num_threads_leaves_numpy_blas_alone():
    """set_num_threads sets fastbp's pools (OpenMP, scipy's OpenBLAS behind GEMM), not NumPy's BLAS."""
    import json
    code = ("import json, threadpoolctl, fastbp\n"
            "f = lambda: {p['filepath']: p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas'}\n"
            "a = f(); fastbp.set_num_threads(1); b = f(); print(json.dumps([fastbp.get_num_threads(), a, b]))")
    out = run_python(["-c", code], drop=("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    assert out.returncode == 0, out.stderr
    n, before, after = json.loads(out.stdout.splitlines()[-1])
    assert n == 1
    assert any("scipy.libs" in p for p in after) and all(v == 1 for p, v in after.items() if "scipy.libs" in p), after
    assert {p: v for p, v in before.items() if "scipy.libs" not in p} == {p: v for p, v in after.items() if "scipy.libs" not in p}


def test_compare_command_reports_every_requested_op():
    # public names (a function, an optimizer class) and registry names ("sgd_step") both select ops
    out = run_python(["-m", "fastbp", "compare", "relu", "sgd_step", "nll_loss", "linear"])
    assert out.returncode == 0, out.stderr
    rows = [l for l in out.stdout.splitlines() if l.split() and l.split()[0] in ("relu", "SGD", "nll_loss", "linear")]
    # linear has three registry entries (with bias, without, and fused with a ReLU): 6 ops x float32/float64
    assert len(rows) == 12 and all(l.endswith("yes") for l in rows), out.stdout
    assert sum("linear (bias=None)" in l for l in rows) == 2
    assert sum("linear (followed by relu" in l for l in rows) == 2
    assert "6 ops, 0 outside tolerance" in out.stdout
    assert run_python(["-m", "fastbp", "compare", "no_such_op"]).returncode == 2


def test_compare_json_uses_public_names_and_fails_out_of_tolerance(monkeypatch, capsys):
    import json
    from fastbp import _backend
    from fastbp.registry import REGISTRY, compare

    # every op's public name is something a user can call
    for spec in REGISTRY:
        op, path, _ = compare.public_name(spec.name)
        obj = fastbp
        for part in path.split(".")[1:]:
            obj = getattr(obj, part)
        assert callable(obj) and path.rsplit(".", 1)[-1] in (op, "step", "__matmul__"), (spec.name, path)
    assert compare.main(("relu", "nll_loss"), as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["outside_tolerance"] == 0 and data["ops"] == 2
    assert {r["op"] for r in data["results"]} == {"relu", "nll_loss"}
    assert {r["function"] for r in data["results"]} == {"fastbp.nn.functional.relu", "fastbp.nn.functional.nll_loss"}
    # a kernel that is off by one: reported, and a non-zero exit
    good = _backend.compiled.relu_forward
    monkeypatch.setattr(_backend.compiled, "relu_forward", lambda x, *a, **k: good(x, *a, **k) + 1)
    assert compare.main(("relu",), as_json=True) == 1
    data = json.loads(capsys.readouterr().out)
    assert not data["ok"] and data["outside_tolerance"] == 2
    assert all(not r["ok"] and r["forward_max_abs"] == pytest.approx(1.0) for r in data["results"])
    assert compare.main(("relu",)) == 1
    assert "1 ops, 1 outside tolerance" in capsys.readouterr().out


def test_version_and_info_json():
    import json
    out = run_python(["-m", "fastbp", "--version"])
    assert out.returncode == 0 and out.stdout.strip() == f"fastbp {fastbp.__version__}", out
    out = run_python(["-m", "fastbp", "info", "--json"])
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["version"] == fastbp.__version__ and info["compiled_kernels_loaded"] is True
    assert info["openmp"] == fastbp._config.config()["openmp"]
    assert info["conv_transforms_variant"] == fastbp._config.config()["conv_transforms_variant"]
    assert info["gemm_blas"] and all(b["library"] and b["version"] for b in info["gemm_blas"])
    build = info["build"]  # recorded by setup.py when the modules were built
    assert build, "no fastbp/_C/_build_info.json: modules not built by this setup.py"
    assert build["version"] == fastbp.__version__
    assert build["openmp"] == info["openmp"]
    assert build["compiler_version"] and build["extra_compile_args"]
    assert build["instruction_set_clones"] == (not info["conv_transforms_variant"].endswith("without clones)"))


def test_info_describes_the_build():
    out = run_python(["-m", "fastbp", "info"])
    assert out.returncode == 0, out.stderr
    text = out.stdout
    if fastbp._config.config()["openmp"]:
        assert "OpenMP:                  on" in text
    else:  # a serial build claims no parallel work and no OpenMP settings
        assert "built without OpenMP" in text
        assert "in parallel" not in text and "OMP_WAIT_POLICY" not in text
        assert not fastbp._config._conv_blas_thread_hook()
    assert "built with:" in text and "no build record" not in text


def test_blas_hook_recognises_scipy_bundled_libraries_on_every_platform():
    from fastbp._config import _is_scipy_bundled
    assert _is_scipy_bundled("/venv/lib/python3.12/site-packages/scipy.libs/libscipy_openblas-68440149.so")
    assert _is_scipy_bundled("/venv/lib/python3.12/site-packages/scipy/.dylibs/libscipy_openblas.dylib")
    assert _is_scipy_bundled("C:\\venv\\Lib\\site-packages\\scipy.libs\\libscipy_openblas-5b1ec8b9.dll")
    assert not _is_scipy_bundled("/venv/lib/python3.12/site-packages/numpy/.dylibs/libscipy_openblas64_.dylib")
    assert not _is_scipy_bundled("/venv/lib/python3.12/site-packages/numpy.libs/libscipy_openblas64_-ff651d7f.so")
    assert not _is_scipy_bundled(None)


def test_import_hint_names_a_source_tree_that_shadows_the_installed_package(tmp_path):
    """A checkout without built modules on sys.path before an installed fastbp: the error says so."""
    import os
    import shutil
    import subprocess
    import sys
    src = os.path.dirname(os.path.abspath(fastbp.__file__))
    tree = tmp_path / "checkout"
    shutil.copytree(src, tree / "fastbp", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    site = tmp_path / "site"  # a minimal installed copy: package dir and dist-info with a RECORD
    (site / "fastbp").mkdir(parents=True)
    (site / "fastbp" / "__init__.py").write_text("")
    info = site / f"fastbp-{fastbp.__version__}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fastbp\nVersion: {fastbp.__version__}\n")
    (info / "RECORD").write_text("fastbp/__init__.py,,\n")
    env = {k: v for k, v in os.environ.items() if k != "FASTBP_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(site)])
    out = subprocess.run([sys.executable, "-c", "import fastbp"], cwd=tree, env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "has no compiled modules" in out.stderr and "hides the installed fastbp" in out.stderr, out.stderr
    assert str(site / "fastbp") in out.stderr and "Run Python from another directory" in out.stderr
    # without the fake copy: the message names the real installed fastbp (CI: the wheel), or says there is none
    env["PYTHONPATH"] = str(tree)
    out = subprocess.run([sys.executable, "-c", "import fastbp"], cwd=tree, env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "has no compiled modules" in out.stderr, out.stderr
    # which installed copy the child finds depends on its sys.path (this process may see another one, e.g.
    # an egg-info in the directory pytest runs from): the message names an existing one, or says there is none
    import re
    named = re.search(r"hides the installed fastbp in (\S+)\. Run Python", out.stderr)
    if named is None:
        assert "no installed fastbp was found" in out.stderr, out.stderr
    else:
        assert os.path.isdir(named.group(1)) and named.group(1) != str(tree / "fastbp"), out.stderr


def test_set_num_threads_controls_openmp():
    before = fastbp.get_num_threads()
    try:
        fastbp.set_num_threads(1)
        assert fastbp.get_num_threads() == 1
    finally:
        fastbp.set_num_threads(before)
    with pytest.raises(ValueError):
        fastbp.set_num_threads(0)


def test_thread_count_does_not_change_results():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 300)).astype(np.float32)
    before = fastbp.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            fastbp.set_num_threads(n)
            outs.append(fastbp._backend.compiled.relu_forward(x))
        np.testing.assert_array_equal(outs[0], outs[1])
    finally:
        fastbp.set_num_threads(before)


# (m, n, k): split by columns (n >= m), by rows (m > n), odd sizes not multiples of the 16-column blocks,
# and one below the split threshold
GEMM_SHAPES = [(64, 256, 784), (300, 47, 200), (33, 1000, 70), (257, 129, 65), (8, 8, 8)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_gemm_split_over_openmp_threads_matches_reference_and_one_thread(m, n, k, dtype):
    """matmul / linear forward / linear backward: computed in blocks over 2 OpenMP threads (BLAS
    single-threaded inside) they give the same bits as on one thread, for every transpose combination and
    Fortran-ordered inputs, and match a float64 product."""
    if fastbp._config._scipy_openblas_thread_functions() is None or not fastbp._config._runtime().openmp_enabled():
        pytest.skip("BLAS thread setter not found (or no OpenMP): GEMMs run on the BLAS's own threads")
    C = fastbp._backend.compiled
    before = fastbp.get_num_threads()
    outs = {}
    try:
        for nt in (1, 2):
            fastbp.set_num_threads(nt)
            res = []
            for ta in (False, True):
                for tb in (False, True):
                    r = np.random.default_rng(ta * 2 + tb)
                    a = r.standard_normal((k, m) if ta else (m, k)).astype(dtype)
                    b = r.standard_normal((n, k) if tb else (k, n)).astype(dtype)
                    c = C.matmul(a, b, trans_a=ta, trans_b=tb)
                    ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
                    np.testing.assert_allclose(c, ref, rtol=1e-4, atol=1e-3 if dtype == np.float32 else 1e-10)
                    res.append(c)
            res.append(C.matmul(np.asfortranarray(a), b, trans_a=True, trans_b=True))  # last a, b: both transposed
            rng = np.random.default_rng(m + n + k)
            x = rng.standard_normal((m, k)).astype(dtype)
            w = rng.standard_normal((n, k)).astype(dtype)
            bias = rng.standard_normal(n).astype(dtype)
            g = rng.standard_normal((m, n)).astype(dtype)
            y = C.linear_forward(x, w, bias)
            np.testing.assert_allclose(y, x.astype(np.float64) @ w.T + bias, rtol=1e-4, atol=1e-3)
            res.append(y)
            res.extend(C.linear_backward(g, x, w))
            outs[nt] = res
    finally:
        fastbp.set_num_threads(before)
    for a1, a2 in zip(outs[1], outs[2]):
        np.testing.assert_array_equal(a1, a2)


def test_gemm_restores_the_blas_thread_count_under_concurrent_calls():
    """Several Python threads multiplying at once (the kernels release the GIL): during the calls scipy's
    OpenBLAS runs single-threaded, afterwards it has the count it had before (2 and 1 tried)."""
    import threading
    if fastbp._config._scipy_openblas_thread_functions() is None:
        pytest.skip("BLAS thread setter not found")
    fset, fget = fastbp._config._scipy_openblas_thread_functions()
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    expected = a.astype(np.float64) @ a
    errors = []

    def work():
        try:
            for _ in range(20):
                np.testing.assert_allclose(fastbp._backend.compiled.matmul(a, a), expected, rtol=1e-4, atol=1e-3)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    before = fget()
    try:
        for count in (2, 1):
            fset(count)
            threads = [threading.Thread(target=work) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            assert fget() == count
    finally:
        fset(before)


# ----- bad input -------------------------------------------------------------------------------------------
BACKENDS = ["compiled", "reference"]


@pytest.mark.parametrize("name", BACKENDS)
def test_bad_input_raises_clear_errors(name):
    B = getattr(fastbp._backend, name)
    f32 = np.ones((4, 3), dtype=np.float32)
    w = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(2, 5\)"):
        B.linear_forward(f32, np.ones((2, 5), dtype=np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        B.linear_forward(np.ones((4, 3), dtype=np.int64), w)
    with pytest.raises(TypeError, match="dtype"):
        B.linear_forward(f32, w.astype(np.float64))
    with pytest.raises(ValueError, match="bias"):
        B.linear_forward(f32, w, np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="empty batch"):
        B.linear_forward(np.ones((0, 3), dtype=np.float32), w)
    with pytest.raises(ValueError, match="2-D"):
        B.linear_forward(np.ones(3, dtype=np.float32), w)
    with pytest.raises(TypeError):
        B.relu_forward([1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        B.relu_backward(np.ones(3, dtype=np.float32), np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError, match="inner dimensions"):
        B.matmul(f32, f32)
    logits = np.zeros((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="out of range"):
        B.cross_entropy_forward(logits, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="out of range"):
        B.cross_entropy_forward(logits, np.array([0, -1, 2, 0]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        B.cross_entropy_forward(logits, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integer"):
        B.cross_entropy_forward(logits, np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="non-empty"):
        B.cross_entropy_forward(np.zeros((0, 3), dtype=np.float32), np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="reduction"):
        B.cross_entropy_forward(logits, np.array([0, 1, 2, 0]), "avg")
    with pytest.raises(ValueError, match="shape"):
        B.mse_forward(f32, np.ones((3, 4), dtype=np.float32))
    p = np.ones(3, dtype=np.float32)
    with pytest.raises(ValueError, match=">= 0"):
        B.sgd_step(p, p.copy(), None, -0.1)
    with pytest.raises(ValueError, match="shape"):
        B.sgd_step(p, np.ones(4, dtype=np.float32), None, 0.1)
    with pytest.raises(ValueError, match="C-contiguous"):
        B.sgd_step(np.ones(6, dtype=np.float32)[::2], p.copy(), None, 0.1)
    with pytest.raises(ValueError, match="momentum_buffer"):
        B.sgd_step(p, p.copy(), None, 0.1, 0.9)


def test_layer_level_errors():
    m = nn.Linear(5, 2)
    with pytest.raises(ValueError, match="in_features"):
        m(tensor(np.ones((3, 4), dtype=np.float32)))
    with pytest.raises(ValueError, match="out of range"):
        nn.CrossEntropyLoss()(tensor(np.zeros((2, 3), dtype=np.float32)), tensor(np.array([0, 5])))


def test_labels_as_tensor_or_ndarray():
    logits = tensor(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    a = F.cross_entropy(logits, np.array([0, 1, 2, 1])).item()
    b = F.cross_entropy(logits, tensor(np.array([0, 1, 2, 1]))).item()
    assert a == b


@pytest.mark.parametrize("name", BACKENDS)
def test_nan_and_inf_follow_documented_rules(name):
    """Documented: NaN propagates through activations and losses (as NumPy/PyTorch); infinities saturate
    sigmoid/tanh; the loss of a row containing NaN is NaN."""
    B = getattr(fastbp._backend, name)
    x = np.array([np.nan, np.inf, -np.inf, 0.0, 2.0], dtype=np.float32)
    r = B.relu_forward(x)
    assert np.isnan(r[0]) and r[1] == np.inf and r[2] == 0 and r[3] == 0 and r[4] == 2
    s = B.sigmoid_forward(x)
    assert np.isnan(s[0]) and s[1] == 1 and s[2] == 0
    t = B.tanh_forward(x)
    assert np.isnan(t[0]) and t[1] == 1 and t[2] == -1
    loss, _ = B.cross_entropy_forward(np.array([[np.nan, 0.0], [1.0, 2.0]], dtype=np.float32), np.array([0, 1]))
    assert np.isnan(loss)


def test_relu_gradient_at_zero_is_zero():
    for B in (fastbp._backend.compiled, fastbp._backend.reference):
        x = np.array([-1.0, 0.0, 1.0], dtype=np.float64)
        np.testing.assert_array_equal(B.relu_backward(np.ones(3), x), [0.0, 0.0, 1.0])
    t = tensor(np.array([0.0, 0.0]), requires_grad=True)
    F.relu(t).sum().backward()
    np.testing.assert_array_equal(t.grad, [0.0, 0.0])


def test_stable_sigmoid_and_log_softmax_at_extremes():
    for B in (fastbp._backend.compiled, fastbp._backend.reference):
        x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0], dtype=np.float32)
        s = B.sigmoid_forward(x)
        assert np.all(np.isfinite(s)) and s[0] == 0 and s[-1] == 1 and s[2] == 0.5
        ls = B.log_softmax_forward(np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32))
        np.testing.assert_allclose(ls, [[0.0, -1000.0, -2000.0]])
