#!/usr/bin/env python3
"""Train a 784 → 256 → 10 linear network on Fashion-MNIST with SGD and watch
its exact gradient noise: every --every steps a GradNoiseMonitor profiles the
current weights on a fixed profiling set (the first --profile-n training
images) and records B_simple = tr Σ / ‖G‖², tr Σ and ‖G‖², whole model and per
layer. Plots B_simple and tr Σ against the step.

    .venv/bin/python examples/train_fashion_mnist.py --out fashion_noise.png

Needs PyTorch and matplotlib (scripts/setup installs Debian's) and
Debian's dataset-fashion-mnist (or $GRADNOISE_FASHION_MNIST_DIR).
"""

import argparse
import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import gradnoise as gn  # noqa: E402
from gradnoise.torch import GradNoiseMonitor  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="SGD steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--every", type=int, default=100, help="profile every this many steps")
    parser.add_argument("--profile-n", type=int, default=10000, help="size of the profiling set")
    parser.add_argument("--train-n", type=int, default=0, help="training images (0: all 60000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="where the profiles run: auto, cpu or cuda")
    parser.add_argument("--out", default="fashion_noise.png", help="the plot (PNG)")
    parser.add_argument("--history", default="", help="also write the monitor's records as JSON")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    X_np, y_np = gn.fashion_mnist("train", args.train_n)
    # float64 C-order arrays: torch.from_numpy and the monitor share their memory.
    X, y = torch.from_numpy(X_np), torch.from_numpy(y_np).long()
    profile_n = min(args.profile_n, X.shape[0])
    model = nn.Sequential(nn.Linear(784, 256), nn.Linear(256, 10)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    monitor = GradNoiseMonitor(model, X[:profile_n], y[:profile_n], loss="ce", every=args.every,
                               device=args.device)
    print(f"profiling set: {profile_n} images on {monitor.profiler.device} "
          f"(zero copy: {monitor.profiler.zero_copy}); P = "
          f"{sum(p.numel() for p in model.parameters())}")

    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for step in range(args.steps + 1):
        record = monitor.step()
        if record is not None:
            print(f"step {record['step']:5d}  loss {record['loss']:.4f}  trace_cov {record['trace_cov']:.4g}  "
                  f"grad_norm_sq {record['grad_norm_sq']:.4g}  B_simple {record['noise_scale_simple']:.4g}",
                  flush=True)
        if step == args.steps:
            break
        batch = torch.randint(0, X.shape[0], (args.batch_size,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(X[batch]), y[batch]).backward()
        optimizer.step()
    print(f"{args.steps} steps and {len(monitor.history)} exact profiles in "
          f"{time.perf_counter() - start:.1f} s")

    history = monitor.history
    steps = [r["step"] for r in history]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(steps, [r["noise_scale_simple"] for r in history], "o-", label="model")
    for name in ("layer1", "layer2"):
        top.plot(steps, [r[f"{name}/noise_scale_simple"] for r in history], ".--", label=name)
    top.set_ylabel("B_simple = tr Σ / ‖G‖²")
    top.set_yscale("log")
    top.legend()
    top.set_title(f"Fashion-MNIST, 784→256→10 linear, SGD b={args.batch_size}, lr={args.lr}: exact noise")
    bottom.plot(steps, [r["trace_cov"] for r in history], "o-", label="tr Σ")
    bottom.plot(steps, [r["grad_norm_sq"] for r in history], "s-", label="‖G‖²")
    bottom.set_yscale("log")
    bottom.set_xlabel("SGD step")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    if args.history:
        with open(args.history, "w") as out:
            json.dump(history, out, indent=1)
        print(f"wrote {args.history}")


if __name__ == "__main__":
    main()
