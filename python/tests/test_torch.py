"""gradnoise.torch and PyTorch tensors: zero-copy inputs, nn.Sequential
models, the training-loop monitor; values against torch.func per-sample
gradients (an independent reference) and the NumPy brute force. CUDA tests
skip without a GPU."""

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (scripts/setup installs Debian's python3-torch)")
from torch import nn  # noqa: E402

import gradnoise as gn  # noqa: E402
from gradnoise.torch import GradNoiseMonitor, linear_layers, model_weights  # noqa: E402
import gradnoise.torch as gnt  # noqa: E402
from conftest import assert_close, brute_force  # noqa: E402

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or gn.cuda_device_count() == 0,
    reason="needs a CUDA device and gradnoise's CUDA backend")


def _data(n=64, d=6, k=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, k, (n,), generator=g)
    return X, y


def _autograd_reference(model, X, y):
    """tr Σ and ‖G‖² from per-sample gradients by autograd, one sample at a time."""
    grads = []
    for i in range(X.shape[0]):
        model.zero_grad()
        nn.functional.cross_entropy(model(X[i:i + 1].double()), y[i:i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
    g = torch.stack(grads)
    G = g.mean(0)
    return float(((g - G) ** 2).sum(1).mean()), float(G @ G)


def test_sequential_profile_matches_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Identity(), nn.Linear(5, 3)).double()
    X, y = _data()
    got = gnt.profile(model, X.reshape(64, 2, 3), y, loss="ce", device="cpu")
    trace_cov, grad_norm_sq = _autograd_reference(model, X, y)
    assert_close(got.trace_cov, trace_cov, rtol=1e-10)
    assert_close(got.grad_norm_sq, grad_norm_sq, rtol=1e-10)
    assert [layer.name for layer in got.layers] == ["layer1", "layer2"]


def test_tensors_are_not_copied():
    X, y = _data(dtype=torch.float64)
    prof = gn.Profiler(X, y, loss="ce", device="cpu")
    assert prof.zero_copy and prof.input_address == X.data_ptr()
    X32 = X.float()
    prof32 = gn.Profiler(X32, y, loss="ce", device="cpu")
    assert prof32.input_address == X32.data_ptr() and not prof32.zero_copy
    Xt = X.t().contiguous().t()  # Fortran order, same values
    assert gn.Profiler(Xt, y, loss="ce", device="cpu").input_address == Xt.data_ptr()


def test_parameters_that_require_grad_are_accepted():
    model = nn.Linear(6, 3).double()
    X, y = _data()
    got = gn.Profiler(X, y, loss="ce", device="cpu").profile([model.weight, model.bias])
    want = brute_force(X.numpy(), y.numpy(),
                       [(model.weight.detach().numpy(), model.bias.detach().numpy())], "ce")
    assert_close(got.trace_cov, want["trace_cov"])


def test_models_gradnoise_cannot_profile_are_refused():
    with pytest.raises(ValueError, match=r"model\[1\] is ReLU.*expected only nn.Linear, nn.Identity and nn.Flatten"):
        linear_layers(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="got Conv1d"):
        linear_layers(nn.Conv1d(1, 1, 3))
    with pytest.raises(ValueError, match="no nn.Linear"):
        linear_layers(nn.Sequential(nn.Identity()))
    with pytest.raises(ValueError, match="nn.Flatten after a linear layer"):
        linear_layers(nn.Sequential(nn.Linear(4, 4), nn.Flatten()))
    assert len(model_weights(nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2)))) == 2


def test_monitor_on_a_tiny_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3)).double()
    X, y = _data(n=48)
    logged = []
    monitor = GradNoiseMonitor(model, X, y, loss="ce", every=3, device="cpu", logger=logged.append)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    for step in range(7):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X[:8]), y[:8]).backward()
        record = monitor.step()
        if record is not None:
            # Profiled before this step's update: the weights the record describes.
            weights = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in model]
            records.append((record, brute_force(X.numpy(), y.numpy(), weights, "ce")))
        optimizer.step()
    assert [r["step"] for r, _ in records] == [0, 3, 6]
    assert logged == [r for r, _ in records] == monitor.history
    for record, want in records:
        assert_close(record["trace_cov"], want["trace_cov"])
        assert_close(record["grad_norm_sq"], want["grad_norm_sq"])
        assert_close(record["noise_scale_simple"], want["noise_scale_simple"])
        assert_close(record["layer2/trace_cov"], want["layers"][1]["trace_cov"])
    assert records[0][0]["trace_cov"] != records[1][0]["trace_cov"]  # the weights moved


def test_monitor_writes_to_a_summary_writer_like_logger():
    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    writer = Writer()
    model = nn.Linear(6, 3).double()
    X, y = _data(n=20)
    monitor = GradNoiseMonitor(model, X, y, every=10, device="cpu", logger=writer)
    monitor.step()
    tags = {tag for tag, _, _ in writer.scalars}
    assert {"gradnoise/noise_scale_simple", "gradnoise/trace_cov", "gradnoise/layer1/grad_norm_sq"} <= tags
    with pytest.raises(ValueError, match="every must be"):
        GradNoiseMonitor(model, X, y, every=0)


@needs_cuda
def test_cuda_tensor_goes_to_the_gpu_engine_without_a_copy():
    X, y = _data(dtype=torch.float32)
    Xc, yc = X.cuda(), y.int().cuda()
    prof = gn.Profiler(Xc, yc, loss="ce", device="cuda")
    assert prof.on_cuda and prof.zero_copy and prof.input_address == Xc.data_ptr()
    model = nn.Linear(6, 3)
    got = prof.profile(model_weights(model.cuda()))
    want = gn.Profiler(X.double(), y, loss="ce", device="cpu").profile(model_weights(model.cpu()))
    assert_close(got.trace_cov, want.trace_cov, rtol=1e-5)
    assert_close(got.grad_norm_sq, want.grad_norm_sq, rtol=1e-5)


@needs_cuda
def test_cuda_int64_labels_are_converted_on_the_device():
    X, y = _data(dtype=torch.float32)
    prof = gn.Profiler(X.cuda(), y.cuda(), loss="ce", device="cuda")
    assert prof.on_cuda and not prof.zero_copy
    model = nn.Linear(6, 3)
    got = prof.profile(model_weights(model))
    want = gn.Profiler(X.double(), y, loss="ce", device="cpu").profile(model_weights(model))
    assert_close(got.trace_cov, want.trace_cov, rtol=1e-5)
    assert_close(prof.shape(spectrum=2).profile.trace_cov, want.trace_cov, rtol=1e-5)
