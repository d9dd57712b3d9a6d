"""fastbp.save / fastbp.load: the safetensors format, nested objects, PyTorch interchange, refusing pickles,
atomic writes (a writer killed at random points) and clear errors for truncated or corrupted files."""
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from collections import OrderedDict

import numpy as np
import pytest

import fastbp
from fastbp import nn
from fastbp.serialization import CheckpointError
from helpers import python_env


def _same(a, b):
    """Deep equality with arrays compared by dtype, shape and bits (nan == nan)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, np.generic):
        assert type(a) is type(b) and a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b
    else:
        assert type(a) is type(b) and a == b


def test_state_dict_round_trip_keeps_keys_order_dtypes_and_bits(tmp_path):
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    sd = model.state_dict()
    sd["extra.half"] = np.arange(4, dtype=np.float16)  # dtypes survive (a plain dict of arrays, not a model's)
    fastbp.save(sd, tmp_path / "m.safetensors")
    back = fastbp.load(tmp_path / "m.safetensors")
    assert isinstance(back, OrderedDict) and list(back) == ["0.weight", "0.bias", "2.weight", "2.bias", "extra.half"]
    _same(dict(sd), dict(back))
    del back["extra.half"]
    other = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    other.load_state_dict(back)
    x = np.random.default_rng(0).normal(size=(2, 5))
    np.testing.assert_array_equal(model(fastbp.tensor(x)).numpy(), other(fastbp.tensor(x)).numpy())


def test_nested_objects_round_trip(tmp_path):
    obj = {
        "state": {0: {"step": 7, "exp_avg": np.arange(6, dtype=np.float32).reshape(2, 3)}, 3: {}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "nesterov": False, "params": [0, 1]}],
        "rng": {"bit_generator": "PCG64", "state": {"state": 2**127 + 12345, "inc": -(2**70)}},
        "special": [float("nan"), float("inf"), -float("inf"), -0.0, 1e-310, None, "text ü", ""],
        "scalars": (np.float32(1.5), np.int64(-3), np.bool_(True), np.float64(np.pi)),
        "arrays": [np.zeros((0, 3)), np.array(2.5), np.array([True, False]), np.arange(4, dtype=np.uint8),
                   np.arange(3, dtype=np.float16), np.arange(5, dtype=">i4")[::2], fastbp.tensor([1.0, 2.0])],
        "empty": {"list": [], "tuple": (), "dict": {}},
    }
    fastbp.save(obj, tmp_path / "c.safetensors")
    back = fastbp.load(tmp_path / "c.safetensors")
    expected = dict(obj)
    expected["arrays"] = [np.asarray(a.data if isinstance(a, fastbp.Tensor) else a) for a in obj["arrays"]]
    expected["arrays"][5] = np.arange(5, dtype=np.int32)[::2]  # big-endian stored little-endian, same values
    _same(expected, back)
    assert back["special"][3] == 0.0 and str(back["special"][3]) == "-0.0"


def test_unsupported_objects_are_refused_naming_where(tmp_path):
    with pytest.raises(TypeError, match=r"cannot store a set \(at a/1\)"):
        fastbp.save({"a": [1, {2}]}, tmp_path / "x")
    with pytest.raises(TypeError, match=r"dtype object"):
        fastbp.save({"w": np.array([None, 1])}, tmp_path / "x")
    with pytest.raises(TypeError, match=r"dict keys must be str or int, got tuple"):
        fastbp.save({(1, 2): 3}, tmp_path / "x")
    assert not os.listdir(tmp_path)  # nothing written, no temporary left behind


def test_files_are_valid_safetensors_for_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    sd = {"0.weight": np.ones((3, 2), np.float32), "0.bias": np.arange(3, dtype=np.float64)}
    fastbp.save(sd, tmp_path / "ours.safetensors")
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    _same(sd, dict(theirs))
    st.save_file({"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.ones(2, np.float32)},
                 str(tmp_path / "theirs.safetensors"))
    back = fastbp.load(tmp_path / "theirs.safetensors")
    assert back["a"].dtype == np.int16 and back["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    # a nested checkpoint is still a safetensors file, its arrays under path-like names
    fastbp.save({"model": sd, "epoch": 3}, tmp_path / "ckpt.safetensors")
    assert sorted(st.load_file(str(tmp_path / "ckpt.safetensors"))) == ["model/0.bias", "model/0.weight"]


def test_pytorch_reads_our_weights_and_we_read_pytorchs(tmp_path):
    torch = pytest.importorskip("torch")
    storch = pytest.importorskip("safetensors.torch")
    fastbp.manual_seed(0)
    ours = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    fastbp.save(ours.state_dict(), tmp_path / "fastbp.safetensors")
    tm = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    tm.load_state_dict(storch.load_file(str(tmp_path / "fastbp.safetensors")))
    x = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    with torch.no_grad():
        t_out = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(fastbp.tensor(x)).numpy(), t_out, rtol=1e-5, atol=1e-6)
    # and the other way: a PyTorch model saved with safetensors loads into the same fastbp architecture
    torch.manual_seed(3)
    tm2 = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    storch.save_file(tm2.state_dict(), str(tmp_path / "torch.safetensors"))
    ours.load_state_dict(fastbp.load(tmp_path / "torch.safetensors"))
    with torch.no_grad():
        t_out = tm2(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours(fastbp.tensor(x)).numpy(), t_out, rtol=1e-5, atol=1e-6)
    # bfloat16 (no NumPy dtype) is widened to float32 exactly
    bf = torch.tensor([1.5, -2.25, 3e38], dtype=torch.bfloat16)
    storch.save_file({"w": bf}, str(tmp_path / "bf16.safetensors"))
    np.testing.assert_array_equal(fastbp.load(tmp_path / "bf16.safetensors")["w"], bf.float().numpy())


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("protocol", [2, 5])
def test_pickle_payload_is_refused_and_never_run(tmp_path, protocol, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"weight": _Payload()}, protocol=protocol))
    with pytest.raises(CheckpointError, match=r"evil\.pt: this is a pickle.*never unpickles"):
        fastbp.load(path)
    assert not (tmp_path / "PWNED").exists()


def test_torch_save_zip_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.ones(2)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt: this is a zip archive"):
        fastbp.load(tmp_path / "model.pt")


def test_truncated_files_give_a_clear_error_naming_the_path(tmp_path):
    obj = {"model": {"w": np.arange(40, dtype=np.float32)}, "epoch": 2}
    path = tmp_path / "ckpt.safetensors"
    fastbp.save(obj, path)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for n in sorted({0, 3, 8, 9, 20, len(data) // 2, len(data) - 161, len(data) - 1}):
        cut.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=r"cut\.safetensors: (truncated|corrupted|not a safetensors)"):
            fastbp.load(cut)


def test_every_flipped_byte_is_detected(tmp_path):
    obj = {"model": {"w": np.linspace(0, 1, 16, dtype=np.float32)}, "lr": 0.125, "step": 12}
    path = tmp_path / "c.safetensors"
    fastbp.save(obj, path)
    data = bytearray(path.read_bytes())
    (hlen,) = struct.unpack("<Q", data[:8])
    bad = tmp_path / "bad.safetensors"
    undetected = []
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        bad.write_bytes(bytes(flipped))
        try:
            got = fastbp.load(bad)
        except CheckpointError as exc:
            assert "bad.safetensors" in str(exc)
            continue
        except Exception as exc:  # anything else is a crash, not a clear error
            pytest.fail(f"byte {i}: {type(exc).__name__}: {exc}")
        try:
            _same(obj, got)
        except AssertionError:
            undetected.append(i)
    assert undetected == [], (undetected, hlen)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        fastbp.load(tmp_path / "nope.safetensors")


_WRITER = r"""
import sys, numpy as np, fastbp
path = sys.argv[1]
k = 0
while True:
    # each version is self-consistent: every element equals k, and "version" says k
    fastbp.save({"version": k, "w": np.full(1_000_000, k, dtype=np.float32), "b": np.full(7, k, np.int64)}, path)
    if k == 0:
        print("ready", flush=True)
    k += 1
"""


def test_a_writer_killed_at_random_points_always_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    rng = np.random.default_rng(2024)
    versions = []
    for trial in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                                env=python_env(), cwd=tmp_path)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(float(rng.uniform(0.0, 0.15)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        ck = fastbp.load(path)
        k = ck["version"]
        assert (ck["w"] == k).all() and ck["w"].shape == (1_000_000,) and (ck["b"] == k).all()
        versions.append(k)
    assert max(versions) > 0  # the kills did land after later saves, not only after the first


def test_header_lengths_that_look_like_a_pickle_opcode_still_load(tmp_path):
    """A header of 640 bytes starts the file with 0x80 0x02, a pickle's first two bytes: still safetensors."""
    path = tmp_path / "x.safetensors"
    for n in range(1, 2000, 4):
        obj = {"k" * n: np.arange(3), "v": 1}
        fastbp.save(obj, path)
        head = path.read_bytes()[:2]
        _same(obj, fastbp.load(path))
        if head in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
            break
    else:
        pytest.fail("no header length of the form 0x0?80 was produced")
