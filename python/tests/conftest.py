"""Shared references for the Python tests: a NumPy brute force with
materialised per-sample gradients (docs/MATH.md, written from the formulas,
not from the library), random problems, and the gradnoise CLI."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


# ---- Problems ------------------------------------------------------------------------

def make_problem(loss, n=64, widths=(5, 3), bias=True, seed=0, dtype=np.float64):
    """X (n×D), targets for `loss` and weights [(W1, b1), ...] for widths (D, ..., K)."""
    rng = np.random.default_rng(seed)
    d, k = widths[0], widths[-1]
    X = rng.normal(size=(n, d)).astype(dtype)
    if loss == "ce":
        Y = rng.integers(0, k, size=n)
    elif loss == "bce":
        Y = rng.uniform(size=(n, k)).astype(dtype)
    else:
        Y = rng.normal(size=(n, k)).astype(dtype)
    layers = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        W = rng.normal(size=(fan_out, fan_in)) / np.sqrt(fan_in)
        b = rng.normal(size=fan_out) * 0.1 if bias else None
        layers.append((W, b))
    return X, Y, layers


def flat_weights(layers):
    """[W1, b1, W2, b2, ...] (a layer without bias contributes W only)."""
    out = []
    for W, b in layers:
        out.append(W)
        if b is not None:
            out.append(b)
    return out


# ---- Brute force -------------------------------------------------------------------------

def per_sample_gradients(X, Y, layers, loss):
    """(losses ℓ_i, gradients g_i as an N×P matrix in the W1 row-major, b1, ... order)."""
    X = np.asarray(X, dtype=np.float64)
    acts = [X]
    for W, b in layers:
        z = acts[-1] @ np.asarray(W, np.float64).T
        if b is not None:
            z = z + np.asarray(b, np.float64)
        acts.append(z)
    z = acts[-1]
    n, k = z.shape
    if loss == "mse":
        Yr = np.asarray(Y, np.float64).reshape(n, k)
        losses = 0.5 * np.sum((z - Yr) ** 2, axis=1)
        delta = z - Yr
    elif loss == "ce":
        labels = np.asarray(Y).astype(np.int64)
        shifted = z - z.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        losses = -logp[np.arange(n), labels]
        delta = np.exp(logp)
        delta[np.arange(n), labels] -= 1.0
    elif loss == "bce":
        Yr = np.asarray(Y, np.float64).reshape(n, k)
        softplus = np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))
        losses = np.sum(softplus - Yr * z, axis=1)
        delta = 1.0 / (1.0 + np.exp(-z)) - Yr
    else:
        raise ValueError(loss)
    blocks = [None] * len(layers)
    for l in range(len(layers) - 1, -1, -1):
        W, b = layers[l]
        a = acts[l]
        gw = (delta[:, :, None] * a[:, None, :]).reshape(n, -1)
        blocks[l] = [gw] + ([delta.copy()] if b is not None else [])
        delta = delta @ np.asarray(W, np.float64)
    grads = np.concatenate([g for block in blocks for g in block], axis=1)
    return losses, grads


def brute_force(X, Y, layers, loss):
    """Every profile field from materialised g_i (docs/MATH.md "Moments")."""
    losses, g = per_sample_gradients(X, Y, layers, loss)
    n = g.shape[0]
    G = g.mean(axis=0)
    centred = g - G
    result = {
        "n": n,
        "num_params": g.shape[1],
        "loss": losses.mean(),
        "loss_var": losses.var(),
        "grad_norm_sq": G @ G,
        "trace_cov": np.sum(centred ** 2) / n,
        "mean_sample_grad_norm_sq": np.sum(g ** 2) / n,
        "param_mean": G,
        "param_var": np.mean(centred ** 2, axis=0),
        "cov": centred.T @ centred / n,
        "layers": [],
    }
    result["noise_scale_simple"] = result["trace_cov"] / result["grad_norm_sq"]
    offset = 0
    for W, b in layers:
        size = np.asarray(W).size + (0 if b is None else np.asarray(b).size)
        sl = slice(offset, offset + size)
        Gl = G[sl]
        tr = np.sum(centred[:, sl] ** 2) / n
        result["layers"].append({
            "num_params": size,
            "grad_norm_sq": Gl @ Gl,
            "trace_cov": tr,
            "mean_sample_grad_norm_sq": np.sum(g[:, sl] ** 2) / n,
            "noise_scale_simple": tr / (Gl @ Gl),
        })
        offset += size
    return result


def assert_close(got, want, rtol=1e-10, atol=0.0, what=""):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


# ---- The CLI -------------------------------------------------------------------------------

def cli_path():
    """The gradnoise tool built beside the module ($GRADNOISE, as ctest sets it, or build*/)."""
    if os.environ.get("GRADNOISE"):
        return pathlib.Path(os.environ["GRADNOISE"])
    for candidate in sorted(ROOT.glob("build*/gradnoise")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
def cli():
    path = cli_path()
    if path is None:
        pytest.skip("the gradnoise tool is not built (build/gradnoise); scripts/setup builds it")

    def run(*args, cwd=None):
        done = subprocess.run([str(path), *map(str, args)], cwd=cwd, capture_output=True, text=True)
        if done.returncode != 0:
            raise AssertionError(f"gradnoise {' '.join(map(str, args))} failed: {done.stderr}")
        return done

    return run


def write_problem(tmp_path, X, Y, layers):
    """X.npy, Y.npy and one W{l}.npy[:b{l}.npy] per layer; returns the --layer arguments."""
    np.save(tmp_path / "X.npy", np.asarray(X))
    np.save(tmp_path / "Y.npy", np.asarray(Y))
    args = []
    for l, (W, b) in enumerate(layers, start=1):
        np.save(tmp_path / f"W{l}.npy", np.asarray(W, np.float64))
        spec = str(tmp_path / f"W{l}.npy")
        if b is not None:
            np.save(tmp_path / f"b{l}.npy", np.asarray(b, np.float64))
            spec += ":" + str(tmp_path / f"b{l}.npy")
        args += ["--layer", spec]
    return args


def read_json(path):
    return json.loads(pathlib.Path(path).read_text())
