#!/usr/bin/env python3
"""The Python call's overhead over the C++ call, for a resident-data profile.

One session over X (N×D float64, C order: read in place) and labels; a
linear softmax model D → K with bias. The same session times its C++
Profiler::profile in a C++ loop (Profiler._time_profile_calls: no Python in
the loop) and `prof.profile(weights)` from Python (the weights' conversion,
the GIL's release, the result's wrapping included), one of each per pair in
random order so both see the same machine state. The overhead is the median
of the pairs' differences; the same is measured at N = 2, where the
computation is tiny and the overhead stands out. On a loaded machine,
OpenMP's spinning workers add noise to the N = 4096 pairs: run it with
OMP_WAIT_POLICY=passive and --threads 1 to see the binding alone. Usage:

    .venv/bin/python bench/python_overhead.py [--n 4096] [--d 256] [--k 10] [--reps 200] [--rounds 10]
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

import gradnoise as gn


def measure(n, d, k, reps, rounds, threads):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    y = rng.integers(0, k, size=n)
    W = rng.normal(size=(k, d)) / np.sqrt(d)
    b = np.zeros(k)
    weights = [W, b]
    prof = gn.Profiler(X, y, loss="ce", device="cpu", threads=threads)
    assert prof.zero_copy, "float64 C-order X must be read in place"
    prof.profile(weights)  # warm-up: threads, caches, the rounding floor's one pass
    prof._time_profile_calls(weights, reps)
    cpp, py, diffs = [], [], []
    clock = time.perf_counter
    order = np.random.default_rng(1).integers(0, 2, size=reps * rounds)
    for python_first in order:
        # One C++ call timed in C++ and one Python call timed around it, in a
        # random order, so each pair sees the same machine state.
        if python_first:
            start = clock()
            prof.profile(weights)
            py.append(clock() - start)
            cpp.append(prof._time_profile_calls(weights, 1)[0])
        else:
            cpp.append(prof._time_profile_calls(weights, 1)[0])
            start = clock()
            prof.profile(weights)
            py.append(clock() - start)
        diffs.append(py[-1] - cpp[-1])
    return {
        "cpp_median_us": 1e6 * statistics.median(cpp),
        "py_median_us": 1e6 * statistics.median(py),
        "overhead_median_us": 1e6 * statistics.median(diffs),
        "calls": len(py),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: one per core)")
    args = parser.parse_args()
    print(f"gradnoise {gn.__version__}, Python {platform.python_version()}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    for n in (args.n, 2):
        r = measure(n, args.d, args.k, args.reps, args.rounds, args.threads)
        print(f"N = {n:5d}, D = {args.d}, K = {args.k}: C++ call median {r['cpp_median_us']:9.1f} us, "
              f"Python call median {r['py_median_us']:9.1f} us; overhead (median of paired "
              f"differences) {r['overhead_median_us']:+.1f} us ({r['calls']} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
