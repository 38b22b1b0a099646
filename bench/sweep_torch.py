#!/usr/bin/env python3
"""The sweep `gradnoise sweep` runs, written in PyTorch the two ways a user would.

A grid of SGD runs of a linear model with bias (K x D weights, K biases,
started from zeros) on squared loss, per-sample loss ½‖f(x) − y‖², minibatch
loss the mean over the batch (MATH.md), plain SGD θ ← θ − λ g, minibatches of
b rows drawn with replacement. Runs are numbered as gradnoise numbers them:
run = ((batch index · #lrs) + lr index) · replicas + replica.

  --method loop   what a user writes: for each run, nn.Linear +
                  torch.optim.SGD, a Python loop of steps, torch.randint
                  minibatches, loss.backward().
  --method vmap   an ensemble: all runs of one batch size advanced together
                  with vmap(grad(loss)) (torch.func, or functorch on torch
                  1.13), per-run learning rates and per-run minibatches.

--indices torch draws minibatches with torch.randint (what is timed);
--indices philox draws exactly the rows gradnoise draws (Philox4x32-10 keyed by
the seed, counter {replica, 0x53570001, step, slot / 2}, row = ⌊w · N / 2⁶⁴⌋
of the slot's 64-bit word w; include/gradnoise/sweep.hpp, host/sweep.cpp), so
the final weights agree with gradnoise's run by run up to rounding.

Prints one JSON object: the timed seconds (the SGD steps only; the data
loading, index precomputation and the final full-data loss are outside),
run_steps_per_s = runs · steps / seconds, the process's CPU seconds over the
same steps, and every run's final training loss
L(θ) = (1/N) Σ_i ½‖f(x_i) − y_i‖².
"""

import argparse
import json
import math
import sys
import time


def die(sentence):
    print(f"sweep_torch.py: error: {sentence}", file=sys.stderr)
    sys.exit(2)


# ---- gradnoise's minibatch rows, reproduced in numpy ------------------------

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
SWEEP_INDICES_TAG = 0x53570000 | 1  # kSweepTag | Stream::indices
MASK32 = 0xFFFFFFFF


def philox4x32_10(counter, key):
    """Philox4x32-10 (Random123) on arrays: counter = 4 uint64 arrays holding
    32-bit words, key = 2 ints. Returns the 4 output words as uint64 arrays."""
    import numpy as np

    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = np.uint64(key[0] & MASK32), np.uint64(key[1] & MASK32)
    m0, m1, mask = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1), np.uint64(MASK32)
    for round_index in range(10):
        if round_index > 0:
            k0 = np.uint64((int(k0) + PHILOX_W0) & MASK32)
            k1 = np.uint64((int(k1) + PHILOX_W1) & MASK32)
        p0 = c0 * m0  # < 2^64: both factors are below 2^32
        p1 = c2 * m1
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & mask,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & mask)
    return c0, c1, c2, c3


def philox_rows(seed, replicas, steps, slots, n):
    """gradnoise's with-replacement rows: int64 array [replica, step, slot]
    for replicas 0..replicas−1, steps 0..steps−1, slots 0..slots−1."""
    import numpy as np

    blocks = (slots + 1) // 2
    rows = np.empty((replicas, steps, 2 * blocks), dtype=np.int64)
    replica = np.arange(replicas, dtype=np.uint64)[:, None]
    block = np.arange(blocks, dtype=np.uint64)[None, :]
    key = (seed & MASK32, (seed >> 32) & MASK32)
    n64 = np.uint64(n)
    for step in range(steps):
        shape = (replicas, blocks)
        counter = (np.broadcast_to(replica, shape), np.full(shape, SWEEP_INDICES_TAG, np.uint64),
                   np.full(shape, step, np.uint64), np.broadcast_to(block, shape))
        w0, w1, w2, w3 = philox4x32_10(counter, key)
        for half, (hi, lo) in enumerate(((w0, w1), (w2, w3))):
            # ⌊(hi·2³² + lo) · n / 2⁶⁴⌋ = ⌊(hi·n + ⌊lo·n / 2³²⌋) / 2³²⌋, all below 2⁶⁴.
            row = (hi * n64 + ((lo * n64) >> np.uint64(32))) >> np.uint64(32)
            rows[:, step, half::2] = row.astype(np.int64)
    return rows[:, :, :slots]


def check_philox():
    """Random123's known-answer vectors for Philox4x32-10."""
    vectors = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
               ((MASK32,) * 4, (MASK32, MASK32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
               ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
                (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in vectors:
        got = tuple(int(word[0]) for word in philox4x32_10([[c] for c in counter], key))
        if got != expected:
            raise RuntimeError(f"Philox4x32-10 self-check failed: {got} != {expected}")


# ---- the sweep in PyTorch ----------------------------------------------------


def load_npy(path, what):
    import numpy as np

    try:
        array = np.load(path)
    except (OSError, ValueError) as error:
        die(f"{what} {path} cannot be read as .npy ({error}).")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        die(f"{what} {path} must be a 2-D numeric array, not shape {array.shape} {array.dtype}.")
    if not np.isfinite(array).all():
        die(f"{what} {path} holds NaN or infinite values.")
    return array


def parse_list(text, cast, flag, positive=True):
    try:
        values = [cast(item) for item in text.split(",")]
    except ValueError:
        values = []
    if not values or (positive and not all(v > 0 and math.isfinite(v) for v in values)):
        die(f"{flag} {text} must be a comma-separated list of positive numbers, e.g. {flag} 8,32.")
    return values


def grid_runs(batch_sizes, lrs, replicas):
    """(run, batch_size, lr, replica) in gradnoise's run order."""
    runs = []
    for bi, b in enumerate(batch_sizes):
        for li, lr in enumerate(lrs):
            for r in range(replicas):
                runs.append(((bi * len(lrs) + li) * replicas + r, b, lr, r))
    return runs


def sweep_loop(torch, x, y, runs, steps, rows, seed, device):
    """One run after another, each a Python loop of SGD steps (what a user writes).
    rows: None (torch.randint) or a [replica, step, slot] tensor on `device`."""
    n, d = x.shape
    k = y.shape[1]
    finals = []
    generator = torch.Generator(device=device)
    for run, b, lr, replica in runs:
        model = torch.nn.Linear(d, k).to(device=device, dtype=x.dtype)
        with torch.no_grad():
            model.weight.zero_()
            model.bias.zero_()
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        generator.manual_seed(seed * 1_000_003 + run)
        for step in range(steps):
            if rows is None:
                index = torch.randint(0, n, (b,), device=device, generator=generator)
            else:
                index = rows[replica, step, :b]
            xb, yb = x[index], y[index]
            loss = 0.5 * ((model(xb) - yb) ** 2).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        finals.append((model.weight.detach(), model.bias.detach()))
    return finals


def vmap_and_grad(torch):
    try:
        from torch.func import grad, vmap  # torch ≥ 2.0
    except ImportError:
        from functorch import grad, vmap  # torch 1.13
    return vmap, grad


def sweep_vmap(torch, x, y, runs, steps, rows, seed, device):
    """All runs of one batch size advanced together: vmap(grad(loss)) over the
    runs' weights and minibatches, per-run learning rates."""
    vmap, grad = vmap_and_grad(torch)
    n, d = x.shape
    k = y.shape[1]

    def loss(weight, bias, xb, yb):
        return 0.5 * ((xb @ weight.T + bias - yb) ** 2).sum(dim=1).mean()

    batch_grad = vmap(grad(loss, argnums=(0, 1)))
    groups = []
    for b in sorted({b for _, b, _, _ in runs}):
        members = [(run, lr, replica) for run, bb, lr, replica in runs if bb == b]
        groups.append({
            "b": b,
            "runs": [m[0] for m in members],
            "weight": torch.zeros(len(members), k, d, dtype=x.dtype, device=device),
            "bias": torch.zeros(len(members), k, dtype=x.dtype, device=device),
            "lr": torch.tensor([m[1] for m in members], dtype=x.dtype, device=device),
            "replica": torch.tensor([m[2] for m in members], dtype=torch.int64, device=device),
        })
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    for step in range(steps):
        for group in groups:
            count, b = group["weight"].shape[0], group["b"]
            if rows is None:
                index = torch.randint(0, n, (count, b), device=device, generator=generator)
            else:
                index = rows[group["replica"], step, :b]
            grad_weight, grad_bias = batch_grad(group["weight"], group["bias"], x[index], y[index])
            group["weight"].sub_(group["lr"][:, None, None] * grad_weight)
            group["bias"].sub_(group["lr"][:, None] * grad_bias)
    finals = {}
    for group in groups:
        for i, run in enumerate(group["runs"]):
            finals[run] = (group["weight"][i], group["bias"][i])
    return [finals[run] for run, _, _, _ in runs]


def full_loss(x, y, weight, bias):
    return float(0.5 * ((x @ weight.T + bias - y) ** 2).sum(dim=1).mean())


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: sweep_torch.py --x X.npy --y Y.npy --method vmap --batch-sizes 8,32 "
               "--lrs 0.01,0.003 --replicas 16 --steps 200 --seed 1")
    parser.add_argument("--x", required=True, help="inputs X, N x D .npy")
    parser.add_argument("--y", required=True, help="targets Y, N x K .npy")
    parser.add_argument("--method", required=True, choices=["loop", "vmap"])
    parser.add_argument("--batch-sizes", required=True, help="e.g. 8,32,128,512")
    parser.add_argument("--lrs", required=True, help="e.g. 0.01,0.003")
    parser.add_argument("--replicas", type=int, default=1,
                        help="runs per grid point (replicas 0..R-1)")
    parser.add_argument("--steps", type=int, required=True, help="SGD steps of every run")
    parser.add_argument("--seed", type=int, default=0,
                        help="gradnoise's --seed (for --indices philox)")
    parser.add_argument("--indices", choices=["torch", "philox"], default="torch",
                        help="minibatch rows: torch.randint (timed), or exactly gradnoise's")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads (0: os.cpu_count())")
    args = parser.parse_args()

    batch_sizes = parse_list(args.batch_sizes, int, "--batch-sizes")
    lrs = parse_list(args.lrs, float, "--lrs")
    if args.replicas < 1:
        die("--replicas must be at least 1.")
    if args.steps < 1:
        die("--steps must be at least 1.")
    if not 0 <= args.seed < 2**64:
        die("--seed must lie in 0 .. 2^64 - 1.")
    if args.threads < 0:
        die("--threads must be ≥ 0 (0: one per CPU).")

    import os

    import numpy as np
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"sweep_torch.py: error: --device {args.device} was asked but this PyTorch "
              f"({torch.__version__}) sees no CUDA device.", file=sys.stderr)
        sys.exit(1)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        die(f"--device {args.device} is not a device PyTorch knows; use cpu or cuda.")
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]

    x_np, y_np = load_npy(args.x, "--x"), load_npy(args.y, "--y")
    if x_np.shape[0] != y_np.shape[0]:
        die(f"--x has {x_np.shape[0]} rows but --y has {y_np.shape[0]}.")
    n = x_np.shape[0]
    if max(batch_sizes) > n:
        die(f"--batch-sizes {args.batch_sizes} has a batch larger than the N = {n} samples.")
    x, y = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(device=device, dtype=dtype)
            for a in (x_np, y_np))

    rows = None
    if args.indices == "philox":
        check_philox()
        rows = philox_rows(args.seed, args.replicas, args.steps, max(batch_sizes), n)
        rows = torch.from_numpy(rows).to(device)

    runs = grid_runs(batch_sizes, lrs, args.replicas)
    sweep = {"loop": sweep_loop, "vmap": sweep_vmap}[args.method]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    finals = sweep(torch, x, y, runs, args.steps, rows, args.seed, device)
    sync()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    run_steps = len(runs) * args.steps
    print(json.dumps({
        "method": args.method,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "indices": args.indices,
        "n": n, "d": x.shape[1], "k": y.shape[1],
        "batch_sizes": batch_sizes, "lrs": lrs, "replicas": args.replicas,
        "runs": len(runs), "steps": args.steps, "run_steps": run_steps,
        "elapsed_s": elapsed,
        "cpu_s": cpu,  # CPU time of all this process's threads over the timed steps
        "run_steps_per_s": run_steps / elapsed if elapsed > 0 else None,
        "final": [{"run": run, "batch_size": b, "lr": lr, "replica": replica,
                   "train_loss": full_loss(x, y, weight, bias)}
                  for (run, b, lr, replica), (weight, bias) in zip(runs, finals)],
    }))


if __name__ == "__main__":
    main()
