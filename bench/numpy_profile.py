#!/usr/bin/python3
"""The NumPy float64 baseline for bench/bench_cpu_profile: the same statistics
(docs: /work/shared/MATH.md) written the way a careful user would, with
matrix products over the whole data set instead of a loop over samples.

Per layer l (a_0 = x): forward A_l = A_{l-1} W_lᵀ + b_l; output errors
Δ_L = f − Y (squared) or softmax(f) − onehot (cross-entropy); backward
Δ_{l-1} = Δ_l W_l; mean gradient G_l = Δ_lᵀ A_{l-1} / N. The per-sample
gradient δ aᵀ (and δ for the bias) has rank one, so tr Σ is taken centred:
‖δ aᵀ − G‖² + ‖δ − g_b‖² = ‖δ‖²(‖a‖²+1) − 2(δᵀ G a + δᵀ g_b) + ‖G‖² + ‖g_b‖².

Usage:
  numpy_profile.py --loss {squared,cross_entropy} --layer W1.npy[:b1.npy] ...
Prints one JSON line with the statistics and the best of --repeat timings.
Use Debian's /usr/bin/python3 (python3-numpy).
"""

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx_gz(path, header_bytes):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes)


def load_fashion_mnist(directory, split, limit):
    prefix = "train" if split == "train" else "t10k"
    pixels = read_idx_gz(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), 16)
    labels = read_idx_gz(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), 8)
    x = pixels.reshape(-1, 784).astype(np.float64) / 255.0
    labels = labels.astype(np.int64)
    if limit > 0:
        x, labels = x[:limit], labels[:limit]
    return np.ascontiguousarray(x), labels


def load_layers(specs):
    layers = []
    for spec in specs:
        weight_path, _, bias_path = spec.partition(":")
        weight = np.ascontiguousarray(np.load(weight_path), dtype=np.float64)
        bias = np.load(bias_path).astype(np.float64) if bias_path else None
        layers.append((weight, bias))
    return layers


def profile(x, labels, layers, loss, num_classes=10):
    n = x.shape[0]
    # Forward: keep every layer's input A_{l-1}.
    activations = [x]
    for weight, bias in layers:
        a = activations[-1] @ weight.T
        if bias is not None:
            a += bias
        activations.append(a)
    f = activations.pop()

    # Output errors and per-sample losses.
    rows = np.arange(n)
    if loss == "squared":
        delta = f.copy()
        delta[rows, labels] -= 1.0  # one-hot targets
        sample_loss = 0.5 * np.einsum("ij,ij->i", delta, delta)
    else:
        shifted = f - f.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1)
        sample_loss = np.log(total) - shifted[rows, labels]
        delta = exp / total[:, None]
        delta[rows, labels] -= 1.0

    grad_norm_sq = 0.0
    trace_cov = 0.0
    per_layer = []
    for l in range(len(layers) - 1, -1, -1):
        weight, bias = layers[l]
        a = activations[l]
        grad_w = (delta.T @ a) / n  # G_l
        delta_sq = np.einsum("ij,ij->i", delta, delta)
        a_sq = np.einsum("ij,ij->i", a, a)
        # δ_iᵀ G a_i for every i: one more product, then a row-wise dot.
        cross = np.einsum("ij,ij->i", a @ grad_w.T, delta)
        g_sq = np.einsum("ij,ij->", grad_w, grad_w)
        sample_sq = delta_sq * a_sq
        if bias is not None:
            grad_b = delta.mean(axis=0)
            cross += delta @ grad_b
            g_sq += grad_b @ grad_b
            sample_sq += delta_sq
        layer_trace = np.mean(sample_sq - 2.0 * cross) + g_sq
        per_layer.append({"name": f"layer{l + 1}", "grad_norm_sq": float(g_sq),
                          "trace_cov": float(layer_trace)})
        grad_norm_sq += g_sq
        trace_cov += layer_trace
        if l > 0:
            delta = delta @ weight  # Δ_{l-1} = Δ_l W_l
    per_layer.reverse()

    return {
        "n": n,
        "loss": float(sample_loss.mean()),
        "loss_var": float(sample_loss.var()),
        "grad_norm_sq": float(grad_norm_sq),
        "trace_cov": float(trace_cov),
        "mean_sample_grad_norm_sq": float(grad_norm_sq + trace_cov),
        "layers": per_layer,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", choices=["squared", "cross_entropy"], required=True)
    parser.add_argument("--layer", action="append", required=True, metavar="W.npy[:b.npy]",
                        help="one per layer, input to output")
    parser.add_argument("--dataset-dir",
                        default=os.environ.get("GRADNOISE_FASHION_MNIST_DIR", DEFAULT_DIR))
    parser.add_argument("--split", choices=["train", "test"], default="train")
    parser.add_argument("--limit", type=int, default=0, help="keep the first LIMIT samples")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    parser.add_argument("--case", default="", help="a name echoed in the output")
    args = parser.parse_args()

    try:
        x, labels = load_fashion_mnist(args.dataset_dir, args.split, args.limit)
    except OSError as e:
        sys.exit(f"numpy_profile.py: cannot read Fashion-MNIST in {args.dataset_dir} ({e}).")
    layers = load_layers(args.layer)

    times = []
    result = None
    for _ in range(max(args.repeat, 1)):
        start = time.perf_counter()
        result = profile(x, labels, layers, args.loss)
        times.append(time.perf_counter() - start)
    result["case"] = args.case
    result["seconds"] = min(times)
    result["seconds_all"] = times
    result["numpy"] = np.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
