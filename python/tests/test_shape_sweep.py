"""Profiler.shape() and gradnoise.sweep() against the gradnoise CLI (the same
library calls behind `profile --spectrum/--theta/--estimators` and `sweep`),
and the batch-size tests against their definitions from a brute force."""

import numpy as np
import pytest

import gradnoise as gn
from conftest import assert_close, brute_force, flat_weights, make_problem, read_json, write_problem


def test_shape_matches_the_cli(tmp_path, cli):
    X, Y, layers = make_problem("ce", n=200, widths=(5, 4, 3), seed=4)
    layer_args = write_problem(tmp_path, X, Y, layers)
    cli("profile", "--x", tmp_path / "X.npy", "--y", tmp_path / "Y.npy", "--loss", "ce", *layer_args,
        "--device", "cpu", "--spectrum", "4", "--theta", "0.5", "--estimators", "4,32,20",
        "--quiet", "--out", tmp_path / "report.json")
    want = read_json(tmp_path / "report.json")
    prof = gn.Profiler(X, Y, loss="ce", device="cpu")
    prof.profile(flat_weights(layers))
    shape = prof.shape(spectrum=4, theta=0.5, estimators=(4, 32, 20))
    got = shape.to_dict()
    assert list(got) == list(want)
    for key in ("cov_top_eigenvalues", "hessian_top_eigenvalues"):
        assert_close(getattr(shape, key), want[key], rtol=1e-8, what=key)
    for key in ("trace_hessian", "grad_cov_grad", "gsnr_mean", "trace_cov_sq_lower_bound"):
        assert_close(got[key], want[key], rtol=1e-9, what=key)
    for key in ("min_batch_norm_test", "min_batch_inner_product_test", "min_batch_orthogonality_test"):
        assert got[key] == want[key], key
    for key in ("mean", "std", "exact"):
        assert_close(got["estimators"]["trace_cov"][key], want["estimators"]["trace_cov"][key], rtol=1e-9)


def test_batch_tests_follow_their_definitions():
    X, Y, layers = make_problem("mse", n=80, widths=(4, 2), seed=5)
    ref = brute_force(X, Y, layers, "mse")
    shape = gn.Profiler(X, Y, device="cpu").shape(layers, spectrum=0, theta=0.5, batch_sizes=[1, 5, 80])
    G, cov, n = ref["param_mean"], ref["cov"], 80
    unit = G / np.linalg.norm(G)
    gcg = unit @ cov @ unit
    assert_close(shape.grad_cov_grad, gcg)
    b = np.array([1, 5, 80])
    c = (n - b) / (b * (n - 1))
    assert_close(shape.tests["norm_test"], c * ref["trace_cov"] / (G @ G), atol=1e-14)
    assert_close(shape.tests["inner_product_test"], c * gcg / (G @ G), atol=1e-14)
    assert_close(shape.tests["orthogonality_test"], c * (ref["trace_cov"] - gcg) / (G @ G), atol=1e-14)
    norm_ratio = ref["trace_cov"] / (G @ G)
    all_b = np.arange(1, n + 1)
    first_pass = all_b[(n - all_b) / (all_b * (n - 1)) * norm_ratio <= 0.25][0]
    assert shape.min_batch_norm_test == first_pass
    assert_close(shape.gsnr, G ** 2 / ref["param_var"])
    assert shape.profile.param_var is not None


def test_spectrum_against_dense_eigenvalues():
    X, Y, layers = make_problem("mse", n=60, widths=(3, 2), seed=6)
    ref = brute_force(X, Y, layers, "mse")
    shape = gn.Profiler(X, Y, device="cpu").shape(layers, spectrum=3)
    dense = np.sort(np.linalg.eigvalsh(ref["cov"]))[::-1][:3]
    assert_close(shape.cov_top_eigenvalues, dense, rtol=1e-8)


def test_shape_needs_weights_first():
    X, Y, _ = make_problem("mse", n=20, widths=(3, 2))
    with pytest.raises(ValueError, match="needs weights"):
        gn.Profiler(X, Y, device="cpu").shape()
    with pytest.raises(AttributeError, match="has no 'trace_hessian'"):
        gn.Profiler(X, Y, device="cpu").shape(make_problem("mse", n=20, widths=(3, 2))[2], spectrum=0,
                                              theta=0.5).trace_hessian


def test_sweep_matches_the_cli(tmp_path, cli):
    X, Y, _ = make_problem("mse", n=128, widths=(6, 1), seed=7)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "Y.npy", Y)
    cli("sweep", "--x", tmp_path / "X.npy", "--y", tmp_path / "Y.npy", "--batch-sizes", "4,16",
        "--lrs", "0.05,0.02", "--replicas", "3", "--steps", "40", "--log-every", "10", "--seed", "3",
        "--init", "gaussian", "--threads", "1", "--quiet", "--out", tmp_path / "runs.csv",
        "--summary", tmp_path / "summary.json", "--final-weights", tmp_path / "W.npy")
    want = read_json(tmp_path / "summary.json")
    got = gn.sweep(X, Y, batch_sizes=[4, 16], lrs=[0.05, 0.02], replicas=3, steps=40, log_every=10,
                   seed=3, init="gaussian", threads=1)
    summary = got.to_dict()
    assert list(summary) == list(want)
    assert summary["grid"] == want["grid"]  # bit for bit: the same runs
    assert summary["start"] == want["start"]
    assert summary["num_runs"] == want["num_runs"] == 12
    np.testing.assert_array_equal(got.final_weights, np.load(tmp_path / "W.npy"))
    csv = np.genfromtxt(tmp_path / "runs.csv", delimiter=",", names=True, dtype=None, encoding=None)
    for column in ("run", "batch_size", "step", "train_loss", "trace_cov", "grad_norm_sq",
                   "minibatch_loss", "weight_norm_sq"):
        np.testing.assert_array_equal(got.rows[column], csv[column], err_msg=column)


def test_sweep_rejects_bad_configs():
    X, Y, _ = make_problem("mse", n=32, widths=(3, 1))
    with pytest.raises(ValueError, match="outside 1..32"):
        gn.sweep(X, Y, batch_sizes=[64], lrs=0.1, steps=5)
    with pytest.raises(ValueError, match="sampling='sometimes' is not known"):
        gn.sweep(X, Y, batch_sizes=[4], lrs=0.1, steps=5, sampling="sometimes")
    with pytest.raises(ValueError, match="init='ones' is not known"):
        gn.sweep(X, Y, batch_sizes=[4], lrs=0.1, steps=5, init="ones")
