#!/usr/bin/python3
"""The seed papers' predictions, tested with `gradnoise sweep` and `gradnoise profile`.

    experiments/run qian_klabjan | ziyin | smith_elsen_de  [--update-committed]

Each experiment reads experiments/<name>/config.json, runs the gradnoise binary
(GRADNOISE, else build/gradnoise), and writes its raw outputs, result.png and
results.json to experiments/<name>/out/ (not committed). With
--update-committed, result.png and results.json replace the committed copies
in experiments/<name>/, which its RESULT.md discusses.
"""
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GRADNOISE = os.environ.get("GRADNOISE", str(ROOT / "build" / "gradnoise"))


def fail(message):
    print(f"experiments/run: {message}", file=sys.stderr)
    sys.exit(2)


def gradnoise(*args):
    """Runs the binary; its stdout on success, one clear message otherwise."""
    command = [GRADNOISE, *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def sweep(out, name, *args):
    """`gradnoise sweep ... --out <name>.csv --summary <name>.json`: (rows, summary)."""
    csv_path, summary_path = out / f"{name}.csv", out / f"{name}.json"
    gradnoise("sweep", *args, "--quiet", "--out", csv_path, "--summary", summary_path)
    rows = np.genfromtxt(csv_path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return rows, json.loads(summary_path.read_text())


def lists(values):
    return ",".join(str(v) for v in values)


# Where result.png and results.json go: the experiment's out/ folder, or with
# --update-committed the experiment's folder itself (set by main).
DEST = {}


def save_results(experiment, results):
    path = DEST[experiment] / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- Qian & Klabjan ---------------------------------------------------------------


def qian_klabjan(config, out):
    plt = pyplot()
    b_list = config["batch_sizes"]
    results = {"models": {}}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for row, (label, model) in enumerate(config["models"].items()):
        x, y = out / f"{label}_X.npy", out / f"{label}_Y.npy"
        gradnoise("synth", "--n", model["n"], "--d", model["d"], "--k", model["k"],
                  "--spectrum", model["spectrum"], "--label-noise", model["label_noise"],
                  "--seed", model["data_seed"], "--x-out", x, "--y-out", y)
        args = ["--x", x, "--y", y, "--init", model["init"], "--seed", config["seed"],
                "--batch-sizes", lists(b_list), "--lrs", model["lr"],
                "--replicas", config["replicas"], "--steps", config["steps"],
                "--log-every", config["log_every"], "--sampling", config["sampling"]]
        if model["hidden"]:
            args += ["--hidden", model["hidden"]]
        _, summary = sweep(out, label, *args)
        steps = [p["step"] for p in summary["grid"][0]["trajectory"]]
        var = np.array([[p["grad_var"] for p in g["trajectory"]] for g in summary["grid"]])
        expected = np.array([[p["expected_minibatch_noise"] for p in g["trajectory"]]
                             for g in summary["grid"]])
        # Monte-Carlo standard error of a sample variance over R replicas, at
        # most sqrt(2/(R-1)) relative (one direction; a trace averages more).
        rel_se = np.sqrt(2.0 / (config["replicas"] - 1))
        ordered = var[1:, 1:] < var[:-1, 1:]  # b_{i+1} below b_i, every step after 0
        clearly = var[1:, 1:] < var[:-1, 1:] * (1 - 2 * rel_se)
        # grad_var(b) at each step ≈ gamma + alpha/b + beta/b²: is gamma ≈ 0?
        # Weighted by 1/grad_var, since its relative error is about the same
        # for every b; gamma is reported in units of the smallest variance.
        inv_b = 1.0 / np.array(b_list, dtype=float)
        design = np.stack([np.ones_like(inv_b), inv_b, inv_b**2], axis=1)
        gammas = []
        for t in range(1, len(steps)):
            weights = 1.0 / var[:, t]
            coef, *_ = np.linalg.lstsq(design * weights[:, None], var[:, t] * weights, rcond=None)
            gammas.append(coef[0] / var[-1, t])
        results["models"][label] = {
            "lr": model["lr"], "hidden": model["hidden"],
            "logged_steps": steps,
            "grad_var": {str(b): var[i].tolist() for i, b in enumerate(b_list)},
            "pairs_decreasing_fraction": float(ordered.mean()),
            "pairs_decreasing_beyond_2se_fraction": float(clearly.mean()),
            "relative_standard_error_bound": rel_se,
            "constant_term_over_smallest_variance": {"median": float(np.median(gammas)),
                                                     "max_abs": float(np.max(np.abs(gammas)))},
            "diverged_runs": len(summary["divergences"]),
        }
        ax = axes[row][0]
        for i, b in enumerate(b_list):
            ax.semilogy(steps, var[i], marker=".", label=f"b={b}")
        ax.set_title(f"{label}: Var(g_t) across {config['replicas']} replicas")
        ax.set_xlabel("step t")
        ax.set_ylabel("tr Cov(g_t)")
        ax.legend(fontsize=7, ncol=2)
        ax = axes[row][1]
        for t in [1, len(steps) // 2, len(steps) - 1]:
            ax.loglog(b_list, var[:, t], marker="o", label=f"measured, t={steps[t]}")
            ax.loglog(b_list, expected[:, t], ls="--", color=ax.lines[-1].get_color(),
                      label=f"mean tr Σ(θ_t)/b, t={steps[t]}")
        ax.set_title(f"{label}: variance against batch size")
        ax.set_xlabel("batch size b")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DEST["qian_klabjan"] / "result.png", dpi=110)
    save_results("qian_klabjan", results)


# ---- Ziyin et al. -------------------------------------------------------------------


def ziyin_theory(a_matrix, lr, s, sigma_sq):
    """Theorem 2: stationary loss, tr Σ_w and stability for input covariance A."""
    d = a_matrix.shape[0]
    g = 2 * np.eye(d) - (1 + 1 / s) * lr * a_matrix
    if np.min(np.linalg.eigvalsh((g + g.T) / 2)) <= 0:
        return None
    g_inv = np.linalg.inv(g)
    u = np.trace(lr * a_matrix @ g_inv)
    if u / s >= 1:
        return None
    kappa = u / (1 - u / s)
    sigma_w = (sigma_sq / s) * (1 + kappa / s) * lr * g_inv
    return {"loss": sigma_sq / 2 * (1 + kappa / s), "weight_var": float(np.trace(sigma_w))}


def stationary(summary, steps):
    """Per grid point: the loss (summary) and the weight variance across replicas,
    averaged over the logged steps in the second half."""
    measured = []
    for point in summary["grid"]:
        late = [p for p in point["trajectory"] if 2 * p["step"] >= steps and p["weight_var"] is not None]
        measured.append({
            "batch_size": point["batch_size"], "lr": point["lr"],
            "loss": point["train_loss_mean"],
            "weight_var": float(np.mean([p["weight_var"] for p in late])) if late else None,
            "diverged_fraction": point["diverged_fraction"],
        })
    return measured


def ziyin(config, out):
    plt = pyplot()
    results = {}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))

    # One dimension: x ~ N(0, 1) scaled so that a = mean x² = 1 exactly, y = w* x.
    c = config["one_d"]
    rng = np.random.default_rng(c["data_seed"])
    x = rng.standard_normal((c["n"], 1))
    x /= np.sqrt(np.mean(x**2))
    np.save(out / "1d_X.npy", x)
    np.save(out / "1d_Y.npy", c["teacher"] * x)
    _, summary = sweep(out, "1d", "--x", out / "1d_X.npy", "--y", out / "1d_Y.npy", "--no-bias",
                       "--init", "zeros", "--batch-sizes", lists(c["batch_sizes"]),
                       "--lrs", lists(c["lrs"]), "--replicas", c["replicas"],
                       "--steps", c["steps"], "--log-every", c["log_every"], "--sampling", "with",
                       "--label-noise", c["sigma"], "--seed", config["seed"], "--no-profile")
    a = np.array([[1.0]])
    rows = []
    for m in stationary(summary, c["steps"]):
        theory = ziyin_theory(a, m["lr"], m["batch_size"], c["sigma"] ** 2)
        rows.append({**m, "theory_loss": theory and theory["loss"],
                     "theory_weight_var": theory and theory["weight_var"],
                     "edge": 2 * m["batch_size"] / (m["batch_size"] + 2)})
    results["one_d"] = rows
    check = next(r for r in rows if r["batch_size"] == 2 and r["lr"] == 0.5)
    results["one_d_check"] = {"lr": 0.5, "S": 2, "sigma_sq": 1.0,
                              "paper_weight_var": 0.25, "paper_loss": 0.625,
                              "measured_weight_var": check["weight_var"],
                              "measured_loss": check["loss"]}
    ax = axes[0]
    lr_fine = np.linspace(0.01, 2.0, 400)
    for s in c["batch_sizes"]:
        theory = [ziyin_theory(a, lr, s, c["sigma"] ** 2) for lr in lr_fine]
        line, = ax.plot(lr_fine, [t["loss"] if t else np.nan for t in theory], lw=1)
        pts = [r for r in rows if r["batch_size"] == s]
        ok = [r for r in pts if r["loss"] is not None and r["diverged_fraction"] == 0]
        ax.plot([r["lr"] for r in ok], [r["loss"] for r in ok], "o", color=line.get_color(),
                label=f"S={s} (edge λ={2 * s / (s + 2):.2f})")
        bad = [r for r in pts if r["diverged_fraction"] > 0]
        ax.plot([r["lr"] for r in bad], [3.0] * len(bad), "x", color=line.get_color())
    ax.plot([0.5], [0.625], "k*", ms=12, label="paper: λ=0.5, S=2 → 0.625")
    ax.set_ylim(0.45, 3.1)
    ax.set_xlabel("learning rate λ")
    ax.set_ylabel("stationary training loss")
    ax.set_title("1-D: loss vs (σ²/2)(1+κ/S); x = diverged")
    ax.legend(fontsize=7)

    # d dimensions: A is the data's own second moment.
    c = config["multi_d"]
    xd, yd = out / "md_X.npy", out / "md_Y.npy"
    gradnoise("synth", "--n", c["n"], "--d", c["d"], "--spectrum", c["spectrum"],
              "--seed", c["data_seed"], "--x-out", xd, "--y-out", yd)
    x = np.load(xd)
    a = x.T @ x / x.shape[0]
    _, summary = sweep(out, "md", "--x", xd, "--y", yd, "--no-bias", "--init", "zeros",
                       "--batch-sizes", lists(c["batch_sizes"]), "--lrs", lists(c["lrs"]),
                       "--replicas", c["replicas"], "--steps", c["steps"],
                       "--log-every", c["log_every"], "--sampling", "with",
                       "--label-noise", c["sigma"], "--seed", config["seed"], "--no-profile")
    rows = []
    for m in stationary(summary, c["steps"]):
        theory = ziyin_theory(a, m["lr"], m["batch_size"], c["sigma"] ** 2)
        rows.append({**m, "theory_loss": theory and theory["loss"],
                     "theory_weight_var": theory and theory["weight_var"]})
    results["multi_d"] = rows
    for ax, key, label in [(axes[1], "loss", "stationary loss"),
                           (axes[2], "weight_var", "tr Σ_w (weight variance)")]:
        for s in c["batch_sizes"]:
            pts = [r for r in rows if r["batch_size"] == s]
            stable = [r for r in pts if r["theory_loss"] is not None]
            line, = ax.plot([r["lr"] for r in stable], [r["theory_" + key] for r in stable], "-",
                            lw=1, label=f"theory S={s}")
            ok = [r for r in pts if r[key] is not None and r["diverged_fraction"] == 0]
            ax.plot([r["lr"] for r in ok], [r[key] for r in ok], "o", color=line.get_color(),
                    label=f"measured S={s}")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate λ")
        ax.set_title(f"d={c['d']} ({c['spectrum']}): {label}")
        ax.legend(fontsize=7)

    # Near a minimum Σ ≈ (2 L / S) H for S = 1: gradnoise's noise_curvature_ratio.
    c = config["minimum_check"]
    xm, ym = out / "min_X.npy", out / "min_Y.npy"
    gradnoise("synth", "--n", c["n"], "--d", c["d"], "--spectrum", c["spectrum"],
              "--label-noise", c["sigma"], "--seed", c["data_seed"], "--x-out", xm, "--y-out", ym)
    gradnoise("profile", "--x", xm, "--y", ym, "--no-bias", "--init", "lstsq", "--spectrum", "3",
              "--device", "cpu", "--out", out / "min_report.json")
    report = json.loads((out / "min_report.json").read_text())
    results["minimum_check"] = {k: report.get(k) for k in
                                ["loss", "trace_cov", "noise_curvature_ratio", "cov_hessian_cosine",
                                 "noise_scale_simple", "noise_scale_b_noise"]}
    fig.tight_layout()
    fig.savefig(DEST["ziyin"] / "result.png", dpi=110)
    save_results("ziyin", results)


# ---- Smith, Elsen & De -----------------------------------------------------------------


def fashion_mnist(split, limit, pool):
    """Images in [0, 1], pooled pool×pool, and labels, from Debian's dataset-fashion-mnist."""
    root = Path(os.environ.get("GRADNOISE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:limit]
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:limit]
    side = 28 // pool
    pooled = images.reshape(-1, side, pool, side, pool).mean(axis=(2, 4)) / 255.0
    return pooled.reshape(len(pooled), -1).astype(np.float64), labels.astype(np.int64)


def smith_elsen_de(config, out):
    plt = pyplot()
    x, y = fashion_mnist("train", config["n_train"], config["pool"])
    xt, yt = fashion_mnist("test", config["n_test"], config["pool"])
    for name, values in [("X", x), ("Y", y), ("Xt", xt), ("Yt", yt)]:
        np.save(out / f"{name}.npy", values)
    n, d = x.shape
    k = 10
    grid = []
    for b in config["batch_sizes"]:
        steps = int(round(config["epochs"] * n / b))
        _, summary = sweep(out, f"b{b}", "--x", out / "X.npy", "--y", out / "Y.npy",
                           "--test-x", out / "Xt.npy", "--test-y", out / "Yt.npy",
                           "--loss", config["loss"], "--init", "zeros",
                           "--batch-sizes", b, "--lrs", lists(config["lrs"]),
                           "--replicas", config["replicas"], "--steps", steps,
                           "--log-every", steps, "--sampling", config["sampling"],
                           "--seed", config["seed"], "--final-weights", out / f"w{b}.npy")
        for index, point in enumerate(summary["grid"]):
            last = point["trajectory"][-1]
            grid.append({"batch_size": b, "lr": point["lr"], "steps": steps,
                         "test_accuracy": last["test_accuracy_mean"],
                         "test_loss": last["test_loss_mean"],
                         "train_loss": last["train_loss_mean"],
                         "diverged_fraction": point["diverged_fraction"], "index": index})
    best = []
    for b in config["batch_sizes"]:
        pts = [g for g in grid if g["batch_size"] == b and g["diverged_fraction"] == 0
               and g["test_accuracy"] is not None]
        top = max(pts, key=lambda g: g["test_accuracy"])
        top_loss = min(pts, key=lambda g: g["train_loss"])
        best.append({"batch_size": b, "best_lr_test_accuracy": top["lr"],
                     "test_accuracy": top["test_accuracy"], "best_lr_train_loss": top_loss["lr"],
                     "train_loss": top_loss["train_loss"], "index": top["index"]})

    # The noise scales where training ends: at the weights of the best run of
    # the middle batch size, B_simple and B_noise (dense: P ≤ 2048) by gradnoise.
    middle = best[len(best) // 2]
    weights = np.load(out / f"w{middle['batch_size']}.npy")[middle["index"] * config["replicas"]]
    np.save(out / "W.npy", weights[: k * d].reshape(k, d))
    np.save(out / "b.npy", weights[k * d:])
    gradnoise("profile", "--x", out / "X.npy", "--y", out / "Y.npy", "--loss", config["loss"],
              "--layer", f"{out / 'W.npy'}:{out / 'b.npy'}", "--spectrum", "1", "--device", "cpu",
              "--out", out / "end_report.json")
    report = json.loads((out / "end_report.json").read_text())
    top_hessian = (report.get("hessian_top_eigenvalues") or [None])[0]
    scales = {"at": f"best run of b={middle['batch_size']} after {config['epochs']} epochs",
              "hessian_top_eigenvalue": top_hessian,
              "curvature_lr_limit": 2 / top_hessian if top_hessian else None,
              "noise_scale_simple": report["noise_scale_simple"],
              "noise_scale_b_noise": report.get("noise_scale_b_noise"),
              "cov_hessian_cosine": report.get("cov_hessian_cosine")}
    gradnoise("profile", "--x", out / "X.npy", "--y", out / "Y.npy", "--loss", config["loss"],
              "--init", "zeros", "--spectrum", "1", "--device", "cpu", "--out", out / "start_report.json")
    start = json.loads((out / "start_report.json").read_text())
    scales_start = {"noise_scale_simple": start["noise_scale_simple"],
                    "noise_scale_b_noise": start.get("noise_scale_b_noise")}

    # Where the best learning rate stops growing ∝ b: the first b whose best
    # lr (by test accuracy) is no larger than the previous batch size's.
    b_arr = np.array([r["batch_size"] for r in best], float)
    lr_arr = np.array([r["best_lr_test_accuracy"] for r in best], float)
    slope = float(np.polyfit(np.log(b_arr[:4]), np.log(lr_arr[:4]), 1)[0])
    linear = np.exp(np.mean(np.log(lr_arr[:4] / b_arr[:4]))) * b_arr  # ∝ b through the first four
    bend = next((int(b) for b, lr, previous in zip(b_arr[1:], lr_arr[1:], lr_arr[:-1])
                 if lr <= previous), None)
    results = {"grid": grid, "best": best, "small_batch_log_slope": slope,
               "bend_batch_size": bend, "noise_scales_end": scales, "noise_scales_start": scales_start,
               "n_train": n, "d": d, "epochs": config["epochs"]}

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    lrs = config["lrs"]
    acc = np.full((len(config["batch_sizes"]), len(lrs)), np.nan)
    for g in grid:
        if g["diverged_fraction"] == 0 and g["test_accuracy"] is not None:
            acc[config["batch_sizes"].index(g["batch_size"]), lrs.index(g["lr"])] = g["test_accuracy"]
    image = ax.imshow(acc.T, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(config["batch_sizes"])), config["batch_sizes"], fontsize=7)
    ax.set_yticks(range(len(lrs)), [f"{v:g}" for v in lrs], fontsize=7)
    ax.set_xlabel("batch size")
    ax.set_ylabel("learning rate")
    ax.set_title(f"test accuracy after {config['epochs']} epochs (blank: diverged)")
    fig.colorbar(image, ax=ax)
    ax = axes[1]
    ax.loglog(b_arr, lr_arr, "o-", label="best lr (test accuracy)")
    ax.loglog(b_arr, [r["best_lr_train_loss"] for r in best], "s--", label="best lr (train loss)")
    ax.loglog(b_arr, linear, ":", color="gray", label="∝ b, fitted to the four smallest batches")
    for value, label, style in [(scales["noise_scale_simple"], "B_simple (end)", "-"),
                                (scales["noise_scale_b_noise"], "B_noise (end)", "--"),
                                (scales_start["noise_scale_simple"], "B_simple (start)", ":"),
                                (scales_start["noise_scale_b_noise"], "B_noise (start)", "-.")]:
        if value:
            ax.axvline(value, color="red", ls=style, lw=1, label=f"{label} = {value:.0f}")
    if scales["curvature_lr_limit"]:
        ax.axhline(scales["curvature_lr_limit"], color="black", lw=1, ls="-.",
                   label=f"2/λ_max(H) (end) = {scales['curvature_lr_limit']:.2f}")
    ax.set_xlabel("batch size b")
    ax.set_ylabel("learning rate")
    ax.set_title("best learning rate against batch size")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DEST["smith_elsen_de"] / "result.png", dpi=110)
    save_results("smith_elsen_de", results)


EXPERIMENTS = {"qian_klabjan": qian_klabjan, "ziyin": ziyin, "smith_elsen_de": smith_elsen_de}


def main():
    args = sys.argv[1:]
    update = "--update-committed" in args
    args = [a for a in args if a != "--update-committed"]
    if len(args) != 1 or args[0] not in EXPERIMENTS:
        fail(f"usage: experiments/run {' | '.join(EXPERIMENTS)} [--update-committed]")
    if not Path(GRADNOISE).exists():
        fail(f"no gradnoise binary at {GRADNOISE}; build it first (scripts/setup) or set GRADNOISE.")
    name = args[0]
    config = json.loads((HERE / name / "config.json").read_text())
    out = HERE / name / "out"
    out.mkdir(exist_ok=True)
    DEST[name] = HERE / name if update else out
    start = time.time()
    EXPERIMENTS[name](config, out)
    print(f"{name}: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
