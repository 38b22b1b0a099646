"""Every field of a profile against a NumPy brute force with materialised
per-sample gradients, and against the gradnoise CLI's report.json."""

import math

import numpy as np
import pytest

import gradnoise as gn
from conftest import (assert_close, brute_force, flat_weights, make_problem, read_json,
                      write_problem)

CASES = [
    ("mse", (5, 3), True),
    ("mse", (4, 6, 2), False),
    ("ce", (5, 4), True),
    ("ce", (6, 5, 3, 4), True),
    ("bce", (3, 4, 2), True),
]


@pytest.mark.parametrize("loss,widths,bias", CASES)
def test_every_field_matches_brute_force(loss, widths, bias):
    X, Y, layers = make_problem(loss, n=57, widths=widths, bias=bias, seed=len(widths))
    want = brute_force(X, Y, layers, loss)
    prof = gn.Profiler(X, Y, loss=loss, device="cpu", chunk_rows=16)
    got = prof.profile(flat_weights(layers), param_stats=True)
    for key in ("loss", "loss_var", "grad_norm_sq", "trace_cov", "mean_sample_grad_norm_sq",
                "noise_scale_simple"):
        assert_close(getattr(got, key), want[key], what=key)
    assert got.n == want["n"] and got.num_params == want["num_params"]
    assert_close(got.param_mean, want["param_mean"], atol=1e-13)
    assert_close(got.param_var, want["param_var"], atol=1e-13)
    assert len(got.layers) == len(layers)
    for l, (layer, ref) in enumerate(zip(got.layers, want["layers"]), start=1):
        assert layer.name == f"layer{l}"
        assert layer.num_params == ref["num_params"]
        for key in ("grad_norm_sq", "trace_cov", "mean_sample_grad_norm_sq", "noise_scale_simple"):
            assert_close(getattr(layer, key), ref[key], what=f"layer{l}.{key}")


def test_weights_forms_agree():
    X, Y, layers = make_problem("mse", widths=(4, 3, 2), bias=True)
    prof = gn.Profiler(X, Y, device="cpu")
    flat = prof.profile(flat_weights(layers))
    pairs = prof.profile(layers)
    lists = prof.profile([[W, b] for W, b in layers])
    for other in (pairs, lists):
        assert other.trace_cov == flat.trace_cov and other.grad_norm_sq == flat.grad_norm_sq


def test_single_matrix_and_missing_bias():
    X, Y, layers = make_problem("mse", widths=(4, 2), bias=False)
    want = brute_force(X, Y, layers, "mse")
    got = gn.Profiler(X, Y, device="cpu").profile(layers[0][0])
    assert_close(got.trace_cov, want["trace_cov"])
    # (W, None) is a layer without bias too.
    assert gn.Profiler(X, Y, device="cpu").profile([(layers[0][0], None)]).trace_cov == got.trace_cov


def test_curve_follows_the_minibatch_formulas():
    X, Y, layers = make_problem("ce", n=40, widths=(5, 3))
    got = gn.Profiler(X, Y, loss="ce", device="cpu").profile(layers)
    want = brute_force(X, Y, layers, "ce")
    n = 40
    curve = got.curve("all")
    b = np.arange(1, n + 1)
    assert np.array_equal(curve["batch_size"], b)
    c = (n - b) / (b * (n - 1))
    assert_close(curve["var_without_replacement"], c * want["trace_cov"], atol=1e-14)
    assert_close(curve["var_with_replacement"], want["trace_cov"] / b)
    assert_close(curve["loss_var_without_replacement"], c * want["loss_var"], atol=1e-14)
    assert_close(curve["loss_var_with_replacement"], want["loss_var"] / b)
    assert list(got.curve("pow2")["batch_size"]) == [1, 2, 4, 8, 16, 32, 40]
    assert list(got.curve([3, 7])["batch_size"]) == [3, 7]
    assert list(got.curve("1,10")["batch_size"]) == [1, 10]


def test_expected_minibatch_variance_by_enumeration():
    # E‖g_B − G‖² over every 2-subset, straight from the per-sample gradients.
    from itertools import combinations
    from conftest import per_sample_gradients

    X, Y, layers = make_problem("mse", n=9, widths=(3, 2))
    _, g = per_sample_gradients(X, Y, layers, "mse")
    G = g.mean(axis=0)
    pairs = [np.sum(((g[i] + g[j]) / 2 - G) ** 2) for i, j in combinations(range(9), 2)]
    curve = gn.Profiler(X, Y, device="cpu").profile(layers).curve([2])
    assert_close(curve["var_without_replacement"][0], np.mean(pairs))


def test_zero_gradient_reports_null_and_warns():
    # Zero weights, and targets with mean(y) = 0 and mean(y x) = 0: G = 0 exactly, g_i ≠ 0.
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    Y = np.array([[1.0], [1.0], [-1.0], [-1.0]])
    W = np.zeros((1, 2))
    b = np.zeros(1)
    with pytest.warns(RuntimeWarning, match="grad_norm_sq = 0"):
        r = gn.Profiler(X, Y, device="cpu").profile([W, b])
    assert r.grad_norm_sq == 0.0 and math.isinf(r.noise_scale_simple)
    assert r.to_dict()["noise_scale_simple"] is None
    assert any("zero" in w for w in r.warnings)


@pytest.mark.parametrize("loss,widths", [("mse", (5, 4, 2)), ("ce", (6, 3)), ("bce", (4, 3))])
def test_to_dict_matches_the_cli_report(tmp_path, cli, loss, widths):
    X, Y, layers = make_problem(loss, n=300, widths=widths, seed=3)
    layer_args = write_problem(tmp_path, X, Y, layers)
    cli("profile", "--x", tmp_path / "X.npy", "--y", tmp_path / "Y.npy", "--loss", loss, *layer_args,
        "--device", "cpu", "--out", tmp_path / "report.json")
    want = read_json(tmp_path / "report.json")
    got = gn.Profiler(X, Y, loss=loss, device="cpu").profile(flat_weights(layers)).to_dict()
    assert list(got) == list(want), "to_dict() must have report.json's keys in its order"
    for key, value in want.items():
        if key in ("elapsed_s", "data", "model", "options"):
            continue  # where and how long; the descriptions of inputs differ by design
        if key == "layers":
            assert [list(layer) for layer in got[key]] == [list(layer) for layer in value]
            for g, w in zip(got[key], value):
                for field, v in w.items():
                    if isinstance(v, float):
                        assert_close(g[field], v, rtol=1e-12, what=f"layers.{field}")
                    else:
                        assert g[field] == v
        elif key == "curve_preview":
            assert [list(p) for p in got[key]] == [list(p) for p in value]
            for g, w in zip(got[key], value):
                for field in w:
                    assert_close(g[field], w[field], rtol=1e-12, what=f"curve_preview.{field}")
        elif isinstance(value, float):
            assert_close(got[key], value, rtol=1e-12, what=key)
        else:
            assert got[key] == value, key
    assert got["model"]["widths"] == want["model"]["widths"]
    assert got["model"]["bias"] == want["model"]["bias"]
    assert got["options"]["chunk_rows"] == want["options"]["chunk_rows"]


def test_profile_is_repeatable_and_session_keeps_the_last_model():
    X, Y, layers = make_problem("ce", widths=(5, 3))
    prof = gn.Profiler(X, Y, loss="ce", device="cpu", threads=1)
    first = prof.profile(layers)
    second = prof.profile(layers)
    assert first.trace_cov == second.trace_cov and first.loss == second.loss
    one_shot = gn.profile(X, Y, layers, loss="ce", device="cpu", threads=1)
    assert one_shot.trace_cov == first.trace_cov


def test_profiler_properties():
    X, Y, layers = make_problem("ce", n=30, widths=(5, 4))
    prof = gn.Profiler(X, Y, loss="ce", device="cpu")
    assert (prof.n, prof.d, prof.k, prof.loss, prof.device) == (30, 5, int(Y.max()) + 1, "ce", "cpu")
    assert prof.chunk_rows == 1024
    assert gn.Profiler(X, Y, loss="ce", device="cpu", classes=7).k == 7
    assert "mse" in gn.losses() and isinstance(gn.__version__, str)
    assert gn.cuda_device_count() >= 0 and isinstance(gn.cuda_built(), bool)


def test_cov_apply_and_hessian_apply_against_dense_matrices():
    X, Y, layers = make_problem("mse", n=50, widths=(3, 2))
    want = brute_force(X, Y, layers, "mse")
    prof = gn.Profiler(X, Y, device="cpu")
    P = want["num_params"]
    V = np.random.default_rng(1).normal(size=(P, 3))
    assert_close(prof.cov_apply(layers, V), want["cov"] @ V, atol=1e-12)
    assert_close(prof.cov_apply(layers, V[:, 0]), want["cov"] @ V[:, 0], atol=1e-12)
    # Linear model, squared loss: H = I_K ⊗ (1/N) X̃ᵀX̃ in the k-major slots; as a check,
    # H v is the change of G along v (G is linear in θ here), by finite difference.
    v = V[:, 1]
    theta = np.concatenate([layers[0][0].ravel(), layers[0][1]])
    step = 1e-3
    moved = theta + step * v
    W2 = moved[:6].reshape(2, 3)
    b2 = moved[6:]
    G_moved = brute_force(X, Y, [(W2, b2)], "mse")["param_mean"]
    assert_close(prof.hessian_apply(layers, v), (G_moved - want["param_mean"]) / step, rtol=1e-7, atol=1e-9)
