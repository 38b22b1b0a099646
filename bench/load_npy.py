"""Loading a .npy: gradnoise against numpy.load, paired (docs/BENCHMARKS.md).

    python bench/load_npy.py DIR [--rounds 5] [--cli build/gradnoise ...]

DIR holds X64.npy (float64), X32.npy (float32) and y.npy (int labels), e.g.
2^19 x 784 made by `python bench/load_npy.py DIR --make 524288 784`. Each round
runs, for each file, in turn: numpy.load timed inside Python; build/bench_load_npy
(gradnoise's --x/--y loader alone, timed inside the process); and each --cli
binary's `profile --device cpu`, whose wall time minus the engine's
elapsed_s (report.json) is its loading and setup. The page cache is warm
for all (the file is read just before each run); the load average is
printed, since other work on the machine moves the figures. Medians over
the rounds.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def numpy_load_s(path):
    start = time.perf_counter()
    np.load(path)
    return time.perf_counter() - start


def bench_load_s(binary, x, y):
    out = subprocess.run([binary, x, y, "ce"], check=True, capture_output=True, text=True).stdout
    return float(out.split()[1])


def cli_s(binary, x, y, report):
    start = time.perf_counter()
    subprocess.run([binary, "profile", "--x", x, "--y", y, "--loss", "ce", "--device", "cpu",
                    "--quiet", "--out", report], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    with open(report) as f:
        engine = json.load(f)["elapsed_s"]
    return wall, wall - engine


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bench", default=os.path.join(os.path.dirname(__file__), "..", "build",
                                                        "bench_load_npy"))
    parser.add_argument("--cli", action="append", default=[], help="gradnoise binaries to run")
    parser.add_argument("--make", nargs=2, type=int, metavar=("N", "D"),
                        help="write X64.npy, X32.npy and y.npy (N x D, 10 classes) first")
    args = parser.parse_args()
    files = {name: os.path.join(args.dir, name + ".npy") for name in ("X64", "X32")}
    labels = os.path.join(args.dir, "y.npy")
    if args.make:
        n, d = args.make
        rng = np.random.default_rng(0)
        x = np.empty((n, d))
        for i in range(0, n, 1 << 15):
            x[i:i + (1 << 15)] = rng.standard_normal((min(1 << 15, n - i), d))
        np.save(files["X64"], x)
        np.save(files["X32"], x.astype(np.float32))
        np.save(labels, rng.integers(0, 10, n))
        del x

    times = {}
    report = os.path.join(tempfile.mkdtemp(), "r.json")

    def warm(path):
        # Read just before each timed run: a kernel that reclaims cold page
        # cache (DAMON on this VM) otherwise evicts a file between rounds.
        with open(path, "rb") as f:
            while f.read(1 << 26):
                pass

    for _ in range(args.rounds):
        for name, path in files.items():
            warm(path)
            times.setdefault((name, "numpy.load"), []).append(numpy_load_s(path))
            # Again at once: the freed pages are reused, so this is numpy.load
            # without the first touch of fresh memory (see BENCHMARKS.md).
            times.setdefault((name, "numpy.load, at once again"), []).append(numpy_load_s(path))
            warm(path)
            times.setdefault((name, "bench_load_npy"), []).append(bench_load_s(args.bench, path, labels))
            for binary in args.cli:
                warm(path)
                wall, rest = cli_s(binary, path, labels, report)
                times.setdefault((name, binary + " wall"), []).append(wall)
                times.setdefault((name, binary + " wall - engine"), []).append(rest)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {args.rounds} rounds, warm cache")
    for (name, what), values in times.items():
        print(f"{name:4} {what:50} median {statistics.median(values):6.3f} s  "
              f"runs {' '.join(f'{v:.3f}' for v in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
