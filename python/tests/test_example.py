"""examples/train_fashion_mnist.py runs, writes its plot, and its first record
is the exact profile of the initial network."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (scripts/setup installs Debian's python3-torch)")
pytest.importorskip("matplotlib", reason="matplotlib is not installed (scripts/setup installs it)")

import gradnoise as gn  # noqa: E402
from gradnoise.torch import model_weights  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "train_fashion_mnist.py"


def test_fashion_mnist_example_writes_its_plot(tmp_path):
    try:
        X, y = gn.fashion_mnist("train", 500)
    except ValueError as error:
        pytest.skip(f"Fashion-MNIST is not installed (Debian's dataset-fashion-mnist): {error}")
    plot, history = tmp_path / "noise.png", tmp_path / "history.json"
    done = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "20", "--every", "10",
                           "--profile-n", "500", "--train-n", "2000", "--device", "cpu", "--out", str(plot),
                           "--history", str(history)],
                          capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert done.returncode == 0, done.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = json.loads(history.read_text())
    assert [r["step"] for r in records] == [0, 10, 20]
    # The same seed builds the same initial network: its exact profile is record 0.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.Linear(256, 10)).double()
    want = gn.Profiler(X, y, loss="ce", device="cpu").profile(model_weights(model))
    np.testing.assert_allclose(records[0]["trace_cov"], want.trace_cov, rtol=1e-9)
    np.testing.assert_allclose(records[0]["noise_scale_simple"], want.noise_scale_simple, rtol=1e-9)
    assert records[2]["loss"] < records[0]["loss"]
