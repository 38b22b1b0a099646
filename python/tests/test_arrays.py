"""Inputs are read where they lie (no copy of X), in every dtype and layout
the module accepts; bad inputs raise ValueError with one clear sentence."""

import numpy as np
import pytest

import gradnoise as gn
from conftest import assert_close, brute_force, flat_weights, make_problem


def test_float64_c_order_is_read_in_place():
    X, Y, layers = make_problem("mse", n=50, widths=(4, 2))
    prof = gn.Profiler(X, Y, device="cpu")
    assert prof.zero_copy
    assert prof.input_address == X.ctypes.data
    # The session holds X itself: new values in X change the next profile.
    before = prof.profile(layers).trace_cov
    X *= 2.0
    after = prof.profile(layers)
    assert after.trace_cov != before
    assert_close(after.trace_cov, brute_force(X, Y, layers, "mse")["trace_cov"])


@pytest.mark.parametrize("layout", ["float32", "fortran", "strided", "float32-fortran", "reversed"])
def test_other_layouts_are_read_chunk_by_chunk_without_a_copy(layout):
    X64, Y, layers = make_problem("ce", n=70, widths=(5, 3))
    if layout == "float32":
        X = X64.astype(np.float32)
    elif layout == "fortran":
        X = np.asfortranarray(X64)
    elif layout == "float32-fortran":
        X = np.asfortranarray(X64.astype(np.float32))
    elif layout == "strided":
        wide = np.zeros((70, 10))
        wide[:, ::2] = X64
        X = wide[:, ::2]
    else:
        X = X64[::-1]
        Y = Y[::-1]
    prof = gn.Profiler(X, Y, loss="ce", device="cpu", chunk_rows=16)
    assert not prof.zero_copy  # converted per chunk, not handed over in place ...
    # ... and still X's own memory, not a converted copy of it.
    assert prof.input_address == X.__array_interface__["data"][0]
    want = brute_force(np.asarray(X, np.float64), Y, layers, "ce")
    got = prof.profile(layers)
    assert_close(got.trace_cov, want["trace_cov"])
    assert_close(got.grad_norm_sq, want["grad_norm_sq"])
    # Live view: the next profile reads what X holds then.
    X[0] += 1
    assert prof.profile(layers).loss != got.loss


def test_float32_weights_and_targets():
    X, Y, layers = make_problem("mse", n=40, widths=(3, 2), dtype=np.float32)
    weights32 = [(W.astype(np.float32), b.astype(np.float32)) for W, b in layers]
    got = gn.Profiler(X, Y, device="cpu").profile(weights32)
    want = brute_force(X, Y, [(W.astype(np.float32), b.astype(np.float32)) for W, b in layers], "mse")
    assert_close(got.trace_cov, want["trace_cov"])


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int16])
def test_integer_labels_of_any_width(dtype):
    X, Y, layers = make_problem("ce", n=40, widths=(3, 4))
    got = gn.Profiler(X, Y.astype(dtype), loss="ce", device="cpu").profile(layers)
    assert_close(got.trace_cov, brute_force(X, Y, layers, "ce")["trace_cov"])


def test_vector_targets_are_one_column():
    X, Y, layers = make_problem("mse", n=30, widths=(3, 1))
    got = gn.Profiler(X, Y[:, 0], device="cpu").profile(layers)
    assert got.trace_cov == gn.Profiler(X, Y, device="cpu").profile(layers).trace_cov


def test_the_arrays_stay_alive_with_the_session():
    import gc
    import weakref

    class Held(np.ndarray):
        pass

    X, Y, layers = make_problem("mse", n=30, widths=(3, 2))
    X = X.view(Held)
    ref = weakref.ref(X)
    prof = gn.Profiler(X, Y, device="cpu")
    want = prof.profile(layers).trace_cov
    del X
    gc.collect()
    assert ref() is not None, "the session must keep X alive"
    assert prof.profile(layers).trace_cov == want
    del prof
    gc.collect()
    assert ref() is None, "X must be released with the session"


# ---- Bad input --------------------------------------------------------------------------

def _problem():
    return make_problem("ce", n=20, widths=(4, 3))


@pytest.mark.parametrize("make,message", [
    (lambda X, Y: (X.astype(np.int64), Y), "X holds int64 values; expected float32 or float64"),
    (lambda X, Y: (X.astype(np.float16), Y), "X holds float16"),
    (lambda X, Y: (X[:, :, None], Y), "X has 3 dimensions"),
    (lambda X, Y: (X[0], Y), "expected an N×D matrix"),
    (lambda X, Y: (X, Y[:-1]), "Y has 19 rows but X has 20 samples"),
    (lambda X, Y: (X, Y.astype(np.float64)), "expected integer class labels"),
    (lambda X, Y: (X, -Y - 1), "expected class labels in [0, K)"),
    (lambda X, Y: ("not an array", Y), "X is a str; expected an array"),
    (lambda X, Y: (X[:0], Y[:0]), "X is empty"),
])
def test_bad_data_raise_value_error(make, message):
    X, Y, _ = _problem()
    with pytest.raises(ValueError, match=_escape(message)):
        gn.Profiler(*make(X, Y), loss="ce", device="cpu")


@pytest.mark.parametrize("weights,message", [
    (lambda L: [L[0][0][:, :3], L[0][1]], "features but the first layer takes 3 inputs"),
    (lambda L: [L[0][1]], "does not follow a weight matrix"),
    (lambda L: [L[0][0], L[0][1][:2]], "weights[1] has 2 entries but its weight has 3 rows"),
    (lambda L: [L[0][0].astype(np.int32)], "weights[0] holds int32 values; expected float32 or float64"),
    (lambda L: [], "weights is empty"),
    (lambda L: [(L[0][0], L[0][1], L[0][1])], "weights[0] has 3 items; expected (W,) or (W, b)"),
    (lambda L: [np.full((3, 4), np.nan)], "non-finite weight"),
    (lambda L: [np.zeros((3, 4, 1))], "weights[0] has 3 dimensions"),
])
def test_bad_weights_raise_value_error(weights, message):
    X, Y, layers = _problem()
    prof = gn.Profiler(X, Y, loss="ce", device="cpu")
    with pytest.raises(ValueError, match=_escape(message)):
        prof.profile(weights(layers))


def test_bad_options_raise_value_error():
    X, Y, layers = _problem()
    with pytest.raises(ValueError, match="loss"):
        gn.Profiler(X, Y, loss="hinge")
    with pytest.raises(ValueError, match=_escape("device='tpu' is not known")):
        gn.Profiler(X, Y, loss="ce", device="tpu")
    with pytest.raises(ValueError, match=_escape("gpu_dtype 'float16' is not known; expected 'float32' or 'float64'")):
        gn.Profiler(X, Y, loss="ce", device="cpu", gpu_dtype="float16")
    # Either precision is accepted wherever the session runs (the CPU ignores it).
    for dtype in ("float32", "float64"):
        r = gn.Profiler(X, Y, loss="ce", device="cpu", gpu_dtype=dtype).profile(flat_weights(layers))
        assert r.trace_cov == gn.Profiler(X, Y, loss="ce", device="cpu").profile(flat_weights(layers)).trace_cov
    with pytest.raises(ValueError, match="chunk_rows"):
        gn.Profiler(X, Y, loss="ce", chunk_rows=-1)
    with pytest.raises(ValueError, match="expected float32 or float64 real targets"):
        gn.Profiler(X, Y, loss="mse")
    with pytest.raises(ValueError, match="the labels name 3 classes but the last layer has 2 outputs"):
        gn.Profiler(X, Y, loss="ce", device="cpu", classes=3).profile(layers[0][0][:2])
    prof = gn.Profiler(X, Y, loss="ce", device="cpu")
    r = prof.profile(layers)
    with pytest.raises(ValueError, match="outside 1..20"):
        r.curve([0, 5])
    with pytest.raises(ValueError, match="batch_sizes"):
        r.curve(["a"])


def test_non_finite_input_names_the_sample():
    X, Y, layers = _problem()
    X[7, 2] = np.inf
    with pytest.raises(ValueError, match="sample 7 gives a non-finite model output"):
        gn.Profiler(X, Y, loss="ce", device="cpu").profile(layers)


def test_cuda_without_a_gpu_is_a_runtime_error():
    if gn.cuda_device_count() > 0:
        pytest.skip("a GPU is present")
    X, Y, _ = _problem()
    with pytest.raises(RuntimeError):
        gn.Profiler(X, Y, loss="ce", device="cuda")


@pytest.mark.parametrize("gpu_dtype", ["float32", "float64"])
def test_numpy_data_kept_on_the_gpu_matches_the_cpu(gpu_dtype):
    if gn.cuda_device_count() == 0:
        pytest.skip("no CUDA device")
    X, Y, layers = make_problem("ce", n=300, widths=(6, 5, 3), seed=8)
    X = X.astype(np.float32).astype(np.float64)  # values float32 holds exactly
    want = gn.Profiler(X, Y, loss="ce", device="cpu").profile(flat_weights(layers), param_stats=True)
    prof = gn.Profiler(X, Y, loss="ce", device="cuda", gpu_dtype=gpu_dtype)
    for _ in range(2):  # the second call reads the copy the first one made
        got = prof.profile(flat_weights(layers), param_stats=True)
        for key in ("loss", "loss_var", "grad_norm_sq", "trace_cov", "mean_sample_grad_norm_sq"):
            assert_close(getattr(got, key), getattr(want, key), rtol=1e-9, what=key)
        assert_close(got.param_var, want.param_var, rtol=1e-9,
                     atol=1e-12 * np.abs(want.param_var).max(), what="param_var")


def test_a_huge_request_is_a_memory_error():
    X, Y, layers = _problem()
    prof = gn.Profiler(X, Y, loss="ce", device="cpu")
    # Σ·V for 2^40 vectors of P doubles cannot be allocated.
    with pytest.raises(MemoryError):
        prof.cov_apply(layers, np.broadcast_to(np.zeros(1), (15, 1 << 40)))


def _escape(text):
    import re
    return re.escape(text)
