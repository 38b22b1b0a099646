#!/usr/bin/env python3
"""Comparison benchmark driver (run it through scripts/bench-compare): for
each size, gradnoise (bench_profile_once) and the baselines users run today
(bench/torch_baselines.py; bench_two_pass_cublas on a GPU) profile the same
hash-defined data with the same weights. Every baseline's statistics are
checked against gradnoise's first; one that disagrees gets no time. Writes a
CSV (one row per method and size), a metadata JSON beside it, a Markdown
table, and a log-log plot of time against N.

Only the standard library is needed here; the plot needs matplotlib.
"""

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_METHODS = ("ghost", "vmap", "vmap_chunked", "materialised", "read_floor")
ALL_METHODS = ("gradnoise", "two_pass_cublas") + TORCH_METHODS
STAT_KEYS = ("loss", "grad_norm_sq", "trace_cov", "mean_sample_grad_norm_sq")
CSV_COLUMNS = ("method", "device", "model", "loss", "n", "d", "k", "h", "dtype", "median_s", "min_s",
               "reps", "peak_mem_bytes", "gbps", "ratio_to_gradnoise", "agrees", "note")
SKIP = 77  # CTest's SKIP_RETURN_CODE


def die(sentence, code=2):
    print(f"bench-compare: {sentence}", file=sys.stderr)
    sys.exit(code)


def parse_list(text, flag, allowed=None):
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        die(f"{flag} expects a comma-separated list, got '{text}'.")
    if allowed is not None:
        for item in items:
            if item not in allowed:
                die(f"{flag}: '{item}' is not one of {', '.join(allowed)}.")
    return items


def parse_ints(text, flag, minimum=1):
    values = []
    for item in parse_list(text, flag):
        try:
            value = int(item)
        except ValueError:
            die(f"{flag} expects integers, got '{item}'.")
        if value < minimum:
            die(f"{flag} values must be at least {minimum}, got {value}.")
        values.append(value)
    return values


def parse_log2_range(text, flag):
    """'10:14' -> [2^10, ..., 2^14]; '20' -> [2^20]."""
    try:
        lo, _, hi = text.partition(":")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        die(f"{flag} expects A:B (powers of two 2^A..2^B), got '{text}'.")
    if not 1 <= lo <= hi <= 40:
        die(f"{flag} expects 1 ≤ A ≤ B ≤ 40, got '{text}'.")
    return [1 << e for e in range(lo, hi + 1)]


PRESETS = {
    # The CPU-only machine: small sizes that exercise every path end to end.
    "cpu": dict(log2n="10:14", linear="256x1,784x10", twolayer="784x256x10", latency_n="256,1024,4096"),
    # The grid (until a baseline runs out of memory).
    "gpu": dict(log2n="14:24", linear="256x1,256x10,256x1000,784x1,784x10,784x1000,4096x1,4096x10,4096x1000",
                twolayer=",".join(f"{d}x{h}x{k}" for d in (256, 784, 4096) for h in (256, 1024)
                                  for k in (1, 10, 1000)),
                latency_n="256,1024,4096"),
    # The headline point and its neighbours, in minutes rather than hours.
    "gpu-target": dict(log2n="14:22", linear="256x1,784x10", twolayer="784x256x10", latency_n="256,1024,4096"),
    # A few seconds: does every baseline agree with gradnoise?
    "smoke": dict(log2n="9:9", linear="16x3", twolayer="16x8x3", latency_n=""),
}


def parse_configs(linear, twolayer):
    configs = []
    for item in (linear.split(",") if linear else []):
        parts = item.split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            die(f"--linear expects DxK items such as 784x10, got '{item}'.")
        configs.append(("linear", int(parts[0]), int(parts[1]), 0))
    for item in (twolayer.split(",") if twolayer else []):
        parts = item.split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            die(f"--twolayer expects DxHxK items such as 784x256x10, got '{item}'.")
        configs.append(("twolayer", int(parts[0]), int(parts[2]), int(parts[1])))
    return configs


def run_json(command, timeout):
    """Runs a worker; returns its JSON line, or a record saying why there is none."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "note": f"timed out after {timeout} s"}
    except OSError as error:
        return {"status": "error", "note": f"cannot run {command[0]}: {error.strerror}"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1][:300]
    if proc.returncode in (-9, 137):
        return {"status": "oom", "note": "killed (out of host memory)"}
    if proc.returncode == 3 and "PyTorch is not installed" in proc.stderr:
        return {"status": "skipped", "note": "PyTorch is not installed"}
    return {"status": "error", "note": f"exit {proc.returncode}: {last}"}


def relative_error(got, want):
    return abs(got - want) / max(abs(want), 1e-300)


def compare(stats, reference, rtol):
    """Largest relative error over the shared statistics, and the worst key."""
    worst, worst_key = 0.0, ""
    pairs = [(k, stats.get(k), reference.get(k)) for k in STAT_KEYS]
    for l, (mine, ref) in enumerate(zip(stats.get("layers", []), reference.get("layers", []))):
        if len(stats.get("layers", [])) > 1:
            pairs += [(f"layer{l + 1}.{k}", mine.get(k), ref.get(k)) for k in STAT_KEYS[1:]]
    for key, got, want in pairs:
        if got is None or want is None:
            continue
        err = relative_error(got, want)
        if err > worst or math.isnan(err):
            worst, worst_key = err, key
    return worst <= rtol, worst, worst_key


def machine_info(device, torch_python):
    info = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "host": platform.node(), "platform": platform.platform(), "cpu_cores": os.cpu_count()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        info["commit"] = commit + ("+uncommitted changes" if dirty else "")
    except OSError:
        info["commit"] = "unknown"
    if device == "cuda" and shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip().splitlines()
        if smi:
            name, driver, memory = [s.strip() for s in smi[0].split(",")]
            info.update(gpu=name, driver=driver, gpu_memory=memory)
    if torch_python:
        probe = subprocess.run([torch_python, "-c", "import torch,sys; print(torch.__version__, torch.version.cuda,"
                                " sys.version.split()[0])"], capture_output=True, text=True).stdout.split()
        if len(probe) == 3:
            info.update(torch=probe[0], torch_cuda=probe[1], torch_python=probe[2])
    return info


def load_average():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "unknown"


def data_bytes(n, d, k, loss):
    """The float32 inputs and targets (int32 labels): what one read moves."""
    return 4 * n * (d + (k if loss == "mse" else 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--preset", help="cpu, gpu (the issue's grid), gpu-target or smoke; "
                                         "default: cpu or gpu-target by --device")
    parser.add_argument("--smoke", action="store_true", help="tiny float64 agreement check (exit 77 without torch)")
    parser.add_argument("--methods", default=None, help="default: all ("
                        + ", ".join(ALL_METHODS) + "); with --smoke the ones that give statistics")
    parser.add_argument("--log2n", help="N range as powers of two, A:B")
    parser.add_argument("--linear", help="linear models, DxK[,DxK...]; '' for none")
    parser.add_argument("--twolayer", help="two-layer models, DxHxK[,...]; '' for none")
    parser.add_argument("--loss", default="mse", help="mse, ce or mse,ce")
    parser.add_argument("--dtype", default=None, help="the baselines' precision: float32 (default) or float64")
    parser.add_argument("--rtol", type=float, help="agreement tolerance (default 1e-4 float32, 1e-8 float64)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=None,
                        help="rows per chunk for ghost and vmap_chunked (default: gradnoise's own chunk, "
                             "1024 on the CPU, 65536 on the GPU)")
    parser.add_argument("--latency", action="store_true", help="also time small linear problems back to back")
    parser.add_argument("--latency-reps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    parser.add_argument("--torch-python", default=None, help="a Python with torch (default: this one)")
    parser.add_argument("--host-mem-limit", type=float, default=None,
                        help="bytes a CPU baseline may plan to use (default: 40%% of MemAvailable)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per worker")
    parser.add_argument("--out", help="CSV path (metadata goes to the same name with .meta.json)")
    parser.add_argument("--table", help="write the Markdown table here")
    parser.add_argument("--plot", help="write the log-log PNG here")
    parser.add_argument("--from-csv", metavar="CSV", help="run nothing: redraw --table and --plot from a CSV "
                                                          "this script wrote (and its .meta.json)")
    args = parser.parse_args()

    if args.from_csv:
        if not (args.plot or args.table):
            die("--from-csv needs --table OUT.md and/or --plot OUT.png.")
        try:
            rows = list(csv.DictReader(open(args.from_csv)))
            meta = os.path.splitext(args.from_csv)[0] + ".meta.json"
            info = json.load(open(meta)) if os.path.exists(meta) else {}
        except OSError as error:
            die(f"cannot read --from-csv {args.from_csv}: {error.strerror}.")
        if args.table:
            with open(args.table, "w") as f:
                f.write(markdown_table(rows, info))
        if args.plot:
            plot(rows, args.plot, title=info.get("gpu") or info.get("cpu") or os.path.basename(args.from_csv))
        return 0

    if args.device not in ("cpu", "cuda"):
        die(f"--device expects cpu or cuda, got '{args.device}'.")
    preset = PRESETS.get(args.preset or ("smoke" if args.smoke else "cpu" if args.device == "cpu" else "gpu-target"))
    if preset is None:
        die(f"--preset '{args.preset}' is not one of {', '.join(PRESETS)}.")
    default_methods = [m for m in ALL_METHODS if m != "read_floor"] if args.smoke else ALL_METHODS
    methods = parse_list(args.methods or ",".join(default_methods), "--methods", ALL_METHODS)
    if "gradnoise" not in methods:
        die("--methods must include gradnoise: every baseline is checked against it.")
    # The smoke check's N = 512 spans three chunks of 200.
    chunk = 200 if args.smoke else args.chunk or (1024 if args.device == "cpu" else 1 << 16)
    if chunk < 1:
        die("--chunk must be at least 1.")
    losses = parse_list(args.loss if not args.smoke else "mse,ce", "--loss", ("mse", "ce"))
    dtype = args.dtype or ("float64" if args.smoke else "float32")
    if dtype not in ("float32", "float64"):
        die(f"--dtype expects float32 or float64, got '{dtype}'.")
    rtol = args.rtol if args.rtol is not None else (1e-8 if dtype == "float64" else 1e-4)
    ns = parse_log2_range(args.log2n or preset["log2n"], "--log2n")
    configs = parse_configs(preset["linear"] if args.linear is None else args.linear,
                            preset["twolayer"] if args.twolayer is None else args.twolayer)
    if not configs:
        die("no model to run: give --linear and/or --twolayer.")
    if args.reps < 1 or args.warmup < 0:
        die("--reps must be at least 1 and --warmup at least 0.")
    reps, warmup = (1, 0) if args.smoke else (args.reps, args.warmup)
    if args.smoke and args.device != "cpu":
        die("--smoke runs on the CPU only.")

    bench_once = os.path.join(args.build_dir, "bench_profile_once")
    two_pass = os.path.join(args.build_dir, "bench_two_pass_cublas")
    if not os.access(bench_once, os.X_OK):
        die(f"{bench_once} is missing; build the target bench_profile_once first.", 1)
    torch_python = args.torch_python or sys.executable
    have_torch = subprocess.run([torch_python, "-c", "import torch"], capture_output=True).returncode == 0
    torch_wanted = [m for m in methods if m in TORCH_METHODS]
    if torch_wanted and not have_torch:
        message = (f"{torch_python} cannot import torch, so the PyTorch baselines ({', '.join(torch_wanted)}) "
                   "are skipped; install it as the comment in scripts/bench-compare says.")
        if args.smoke:
            print(f"bench-compare: SKIP: {message}", file=sys.stderr)
            return SKIP
        print(f"bench-compare: {message}", file=sys.stderr)
    if "two_pass_cublas" in methods and args.device == "cuda" and not os.access(two_pass, os.X_OK):
        print(f"bench-compare: {two_pass} is missing (no CUDA build?); two_pass_cublas is skipped.", file=sys.stderr)
        methods.remove("two_pass_cublas")
    host_limit = args.host_mem_limit
    if host_limit is None:
        try:
            available = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemAvailable"))
        except (OSError, StopIteration):
            available = 8 << 30
        host_limit = 0.4 * available

    info = machine_info(args.device, torch_python if have_torch else None)
    info["command"] = os.environ.get("BENCH_COMPARE_COMMAND") or " ".join(["bench/bench_compare.py"] + sys.argv[1:])
    info["load_average_before"] = load_average()
    info.update(dtype=dtype, rtol=rtol, reps=reps, warmup=warmup, chunk=chunk, seed=args.seed)

    work = tempfile.mkdtemp(prefix="bench-compare-")
    if args.device == "cuda":  # one clear sentence now rather than an error per case
        probe = os.path.join(work, "probe")
        subprocess.run([bench_once, "--dump-weights", probe, "--widths", "2,2"], check=True)
        result = run_json([bench_once, "--device", "cuda", "--weights", probe, "--n", "2", "--reps", "1",
                           "--warmup", "0", "--no-flush"], args.timeout)
        if result.get("status") != "ok":
            shutil.rmtree(work, ignore_errors=True)
            die(f"--device cuda: gradnoise cannot run on a GPU here ({result.get('note', 'no reason given')}).", 1)
    for path in (args.out, args.table, args.plot):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    rows = []
    failures = []
    try:
        cases = [(c, loss, n, False) for c in configs for loss in losses for n in ns
                 if not (loss == "ce" and c[2] < 2)]
        if args.latency and preset["latency_n"]:
            cases += [(("linear", 256, k, 0), "mse", n, True) for k in (1, 10)
                      for n in parse_ints(preset["latency_n"], "latency sizes")]
        out_of_memory = {}  # (method, config, loss) -> the N at which it ran out
        for (model, d, k, h), loss, n, latency in cases:
            widths = [d] + ([h] if h else []) + [k]
            weights = os.path.join(work, "w_" + "_".join(map(str, widths)))
            if not os.path.isdir(weights):
                subprocess.run([bench_once, "--dump-weights", weights, "--widths", ",".join(map(str, widths)),
                                "--seed", str(args.seed)], check=True)
            case_reps, case_warmup = (args.latency_reps, 10) if latency else (reps, warmup)
            common = ["--weights", weights, "--n", str(n), "--loss", loss, "--seed", str(args.seed),
                      "--reps", str(case_reps), "--warmup", str(case_warmup)]
            if latency:
                common.append("--no-flush")
            base = dict(device=args.device, model=model, loss=loss, n=n, d=d, k=k, h=h or "")
            label = f"{model} d={d}{f' h={h}' if h else ''} k={k} {loss} n={n}{' (latency)' if latency else ''}"
            print(f"== {label}", file=sys.stderr)
            reference = None
            reference_time = None
            for method in methods:
                key = (method, model, d, k, h, loss, latency)
                row = dict(base, method=method, dtype="float64" if method == "gradnoise" and args.device == "cpu"
                           else "float32" if method in ("gradnoise", "two_pass_cublas") else dtype)
                if latency and method not in ("gradnoise", "ghost", "two_pass_cublas"):
                    continue
                if method == "two_pass_cublas" and (args.device != "cuda" or model != "linear"):
                    continue
                if method in TORCH_METHODS and not have_torch:
                    continue
                if key in out_of_memory:
                    result = {"status": "oom", "note": f"ran out of memory at N = {out_of_memory[key]}; not tried"}
                elif method == "gradnoise":
                    result = run_json([bench_once, "--device", args.device] + common, args.timeout)
                elif method == "two_pass_cublas":
                    result = run_json([two_pass] + common, args.timeout)
                else:
                    result = run_json([torch_python, os.path.join(ROOT, "bench", "torch_baselines.py"),
                                       "--method", method, "--device", args.device, "--dtype", dtype,
                                       "--chunk", str(chunk), "--host-mem-limit", str(host_limit)] + common,
                                      args.timeout)
                status = result.get("status")
                note = result.get("note", "")
                if status == "oom" and key not in out_of_memory:
                    out_of_memory[key] = n
                stats = result.get("stats")
                agrees = ""
                if status == "ok" and method == "gradnoise":
                    reference, agrees = stats, "reference"
                    reference_time = result["median_s"]
                elif status == "ok" and stats is None:
                    agrees = "n/a (no statistics)"
                elif status == "ok" and reference is None:
                    agrees, status = "no reference", "unchecked"
                    note = (note + "; " if note else "") + "gradnoise gave no statistics to check against"
                elif status == "ok":
                    ok, worst, worst_key = compare(stats, reference, rtol)
                    agrees = "yes" if ok else "NO"
                    note = (note + "; " if note else "") + f"max rel. diff {worst:.1e} ({worst_key})"
                    if not ok:
                        status = "disagrees"
                        failures.append(f"{label} {method}: {worst_key} differs by {worst:.1e} relative")
                elif status == "error":
                    failures.append(f"{label} {method}: {note}")
                timed = status == "ok"
                row.update(
                    median_s=f"{result['median_s']:.6g}" if timed else "",
                    min_s=f"{result['min_s']:.6g}" if timed else "",
                    reps=result.get("reps", "") if timed else "",
                    peak_mem_bytes=result.get("peak_mem_bytes", "") if status == "ok" else "",
                    gbps=f"{data_bytes(n, d, k, loss) / result['median_s'] / 1e9:.4g}" if timed else "",
                    ratio_to_gradnoise=(f"{result['median_s'] / reference_time:.3g}"
                                        if timed and reference_time else ""),
                    agrees=agrees,
                    note=("latency: back-to-back calls, no flush; " if latency else "") +
                         (status.upper() + (": " if note else "") if status not in ("ok",) else "") + note)
                if result.get("device_name"):
                    info.setdefault("device_name", result["device_name"])
                rows.append(row)
                shown = f"{float(row['median_s']) * 1e3:10.3f} ms" if timed else f"{'-':>13s}"
                print(f"   {method:16s} {shown}  {row['agrees'] or status:10s} {note}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info["load_average_after"] = load_average()

    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        meta = os.path.splitext(args.out)[0] + ".meta.json"
        with open(meta, "w") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        print(f"wrote {args.out} and {meta}", file=sys.stderr)
    table = markdown_table(rows, info)
    if args.table:
        with open(args.table, "w") as f:
            f.write(table)
        print(f"wrote {args.table}", file=sys.stderr)
    elif not args.smoke:
        print(table)
    if args.plot:
        plot(rows, args.plot, title=info.get("gpu") or info.get("cpu", args.device))
    if failures:
        print("bench-compare: " + str(len(failures)) + " check(s) failed:\n  " + "\n  ".join(failures),
              file=sys.stderr)
        return 1
    if args.smoke:
        checked = sum(1 for r in rows if r["agrees"] == "yes")
        print(f"bench-compare --smoke: {checked} baseline runs agree with gradnoise to {rtol:g}", file=sys.stderr)
    return 0


def fmt_bytes(text):
    if text in ("", None):
        return ""
    value = float(text)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024


def fmt_ms(ms):
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def pivot_table(rows):
    """One row per case, one column per method: median ms and × gradnoise,
    or why there is no time."""
    methods = [m for m in ALL_METHODS if any(r["method"] == m for r in rows)]
    cases = []
    for r in rows:
        case = (r["model"], r["loss"], r["n"], r["d"], r["h"], r["k"], r["note"].startswith("latency"))
        if case not in cases:
            cases.append(case)
    lines = ["| model | loss | N | D | H | K | " + " | ".join(methods) + " |",
             "|---|---|---:|---:|---:|---:|" + "---:|" * len(methods)]
    for case in cases:
        cells = []
        for m in methods:
            r = next((r for r in rows if r["method"] == m and
                      (r["model"], r["loss"], r["n"], r["d"], r["h"], r["k"], r["note"].startswith("latency")) == case),
                     None)
            if r is None:
                cells.append("")
            elif r["median_s"]:
                ratio = "" if m == "gradnoise" else f" ({r['ratio_to_gradnoise']}×)"
                cells.append(f"{fmt_ms(float(r['median_s']) * 1e3)}{ratio}")
            else:
                status = r["note"].split(":")[0] if r["note"] else r["agrees"]
                if status.startswith("latency"):
                    status = r["note"].split("; ", 1)[-1].split(":")[0]
                cells.append(status.lower())
        model, loss, n, d, h, k, latency = case
        lines.append(f"| {model}{' (latency)' if latency else ''} | {loss} | {n} | {d} | {h or '–'} | {k} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(rows, info):
    lines = ["Median ms per profile (× gradnoise's time); a method with no time says why.", "",
             pivot_table(rows), "Every run:", "", "| model | loss | N | D | H | K | method | median ms | min ms | peak mem | GB/s | × gradnoise | agrees | note |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        ms = lambda s: f"{float(s) * 1e3:.3f}" if s else "–"  # noqa: E731
        lines.append(f"| {r['model']} | {r['loss']} | {r['n']} | {r['d']} | {r['h'] or '–'} | {r['k']} | "
                     f"{r['method']} | {ms(r['median_s'])} | {ms(r['min_s'])} | {fmt_bytes(r['peak_mem_bytes']) or '–'} | "
                     f"{r['gbps'] or '–'} | {r['ratio_to_gradnoise'] or '–'} | {r['agrees'] or '–'} | "
                     f"{r['note'].replace('|', '/')} |")
    keys = ("device_name", "gpu", "driver", "cpu", "cpu_cores", "torch", "torch_cuda", "commit", "date_utc",
            "load_average_before", "load_average_after", "command")
    lines.append("")
    lines += [f"- {k}: {info[k]}" for k in keys if k in info]
    return "\n".join(lines) + "\n"


def plot(rows, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"bench-compare: this Python has no matplotlib, so no plot; rerun with "
              f"--from-csv CSV --plot {path} under one that has it.", file=sys.stderr)
        return
    timed = [r for r in rows if r["median_s"] and not r["note"].startswith("latency")]
    panels = sorted({(r["model"], r["loss"], int(r["d"]), str(r["h"]), int(r["k"])) for r in timed},
                    key=lambda p: (p[0] != "linear", p[2], p[3], p[4], p[1] != "mse"))
    if not panels:
        print("bench-compare: nothing timed, so no plot.", file=sys.stderr)
        return
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.2 * rows_n), squeeze=False)
    markers = dict(zip(ALL_METHODS, "os^v<>Dx"))
    for ax, (model, loss, d, h, k) in zip(axes.flat, panels):
        for method in ALL_METHODS:
            pts = sorted((int(r["n"]), float(r["median_s"])) for r in timed
                         if r["method"] == method and (r["model"], r["loss"], int(r["d"]), str(r["h"]), int(r["k"]))
                         == (model, loss, d, h, k))
            if pts:
                ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker=markers[method], label=method,
                          linewidth=2.5 if method == "gradnoise" else 1.2)
        shape = f"{d}→{h}→{k}" if h else f"{d}→{k}"
        ax.set_title(f"{model} {shape}, {loss}", fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (samples)")
        ax.set_ylabel("time per profile (s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"gradnoise vs baselines: median time, {title}", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
