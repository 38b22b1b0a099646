#!/usr/bin/env python3
"""PyTorch baselines for scripts/bench-compare: what users run today to get
per-sample gradient statistics, each returning the statistics of gradnoise's
report.json (loss, grad_norm_sq, trace_cov, mean_sample_grad_norm_sq, and per
layer) for the MATH.md definitions: linear or two-layer linear model, loss a
mean over samples, squared loss ½‖f − y‖², parameters flattened W row-major
then b.

Methods (--method):
  vmap          torch.func.vmap(torch.func.grad(ℓ_i)) over all N at once
                (functorch's vmap/grad on PyTorch 1.13): N×P per-sample
                gradients, then their mean and population variance.
  vmap_chunked  the same with chunk_size=--chunk; where vmap has no
                chunk_size (functorch 1.13) the data are split into chunks of
                --chunk rows by hand and the results concatenated, which is
                what chunk_size does. The output is still N×P.
  materialised  per-sample gradients as Opacus and BackPACK compute them:
                module hooks keep each layer's input activations and output
                gradients, and grad_sample = einsum("ni,nj->nij", δ, a) per
                layer (N×P in memory). Implemented here in PyTorch; neither
                library is used.
  ghost         the "ghost norm" a careful user writes: per chunk of --chunk
                rows, output gradients δ_l by autograd, per-sample norms
                ‖g_i‖² = Σ_l ‖δ_l,i‖²(‖a_l−1,i‖² + 1) by einsum, G by matmul,
                all sums in float64, tr Σ = mean‖g_i‖² − ‖G‖² in float64.
                Memory O(P + chunk).
  read_floor    X.sum() and Y.sum(): one read of the data, the bandwidth floor
                (no statistics).

Data are the hash-defined values of bench/synthetic_data.hpp (bit-identical
to what bench_profile_once gives gradnoise), weights the float64 .npy files
that bench_profile_once --dump-weights wrote. Prints one JSON line.
Needs only torch (no NumPy).
"""

import argparse
import json
import os
import struct
import sys
import time


def die(sentence):
    print(f"torch_baselines: {sentence}", file=sys.stderr)
    sys.exit(2)


try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("torch_baselines: PyTorch is not installed for this Python; see the comment at the top "
          "of scripts/bench-compare for how to install it.", file=sys.stderr)
    sys.exit(3)

METHODS = ("vmap", "vmap_chunked", "materialised", "ghost", "read_floor")

# ---- vmap and grad: torch.func on PyTorch ≥ 2.0, functorch on 1.13 ----------
try:
    from torch.func import grad as func_grad, vmap as func_vmap
    FUNC_SOURCE = "torch.func"
except ImportError:
    try:
        from functorch import grad as func_grad, vmap as func_vmap
        FUNC_SOURCE = "functorch"
    except ImportError:
        func_grad = func_vmap = None
        FUNC_SOURCE = None


def vmap_has_chunk_size():
    import inspect
    return func_vmap is not None and "chunk_size" in inspect.signature(func_vmap).parameters


# ---- Data: the hash of bench/synthetic_data.hpp with int64 tensors ----------
MASK32 = 0xFFFFFFFF
INPUT_OFFSET = 0.25


def mul32(a, c):
    """(a · c) mod 2³² for a in [0, 2³²) without overflowing int64."""
    return (a * (c & 0xFFFF) + (((a * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def hash32(index, seed):
    h = mul32(index & MASK32, 2654435761) ^ (seed & MASK32) ^ mul32(index >> 32, 40503)
    h = h ^ (h >> 15)
    h = mul32(h, 2246822519)
    h = h ^ (h >> 13)
    h = mul32(h, 3266489917)
    return h ^ (h >> 16)


def uniform_pm1(index, seed):
    return (hash32(index, seed) >> 8).to(torch.float32) * (1.0 / 8388608.0) - 1.0


def hashed_matrix(rows, cols, device, value):
    """rows×cols float32 from value(flat index), in slices that bound the
    int64 temporaries."""
    out = torch.empty((rows, cols), dtype=torch.float32, device=device)
    step = max(1, (1 << 22) // cols)
    col_index = torch.arange(cols, dtype=torch.int64, device=device)
    for first in range(0, rows, step):
        r = torch.arange(first, min(rows, first + step), dtype=torch.int64, device=device)
        out[first:first + len(r)] = value(r[:, None] * cols + col_index[None, :])
    return out


def make_data(n, d, k, loss, seed, device, dtype):
    """X (n×d), and Y (n×k) or labels (n), as the C++ side makes them."""
    x = hashed_matrix(n, d, device, lambda j: INPUT_OFFSET + uniform_pm1(j, seed))
    if loss == "mse":
        y = hashed_matrix(n, k, device, lambda j: uniform_pm1(j, seed + 1))
    else:
        index = torch.arange(n, dtype=torch.int64, device=device)
        y = (hash32(index, seed + 2) % k).to(torch.int64)
    if dtype == torch.float64:
        x = x.double()
        if loss == "mse":
            y = y.double()
    return x, y


# ---- Weights: float64 .npy without NumPy -------------------------------------
def read_npy_f8(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:6] != b"\x93NUMPY":
        die(f"{path} is not a .npy file.")
    major = raw[6]
    header_len = struct.unpack("<H" if major == 1 else "<I", raw[8:10] if major == 1 else raw[8:12])[0]
    start = 10 + header_len if major == 1 else 12 + header_len
    header = raw[start - header_len:start].decode("latin1")
    if "'<f8'" not in header or "'fortran_order': False" not in header:
        die(f"{path}: expected a float64 C-order array (as bench_profile_once --dump-weights writes).")
    shape_text = header.split("'shape':")[1].split(")")[0].strip(" (")
    shape = tuple(int(s) for s in shape_text.split(",") if s.strip())
    values = torch.frombuffer(bytearray(raw[start:]), dtype=torch.float64)
    return values.reshape(shape)


def read_weights(directory, device, dtype):
    params = []
    layer = 1
    while os.path.exists(os.path.join(directory, f"W{layer}.npy")):
        w = read_npy_f8(os.path.join(directory, f"W{layer}.npy"))
        bias_path = os.path.join(directory, f"b{layer}.npy")
        if not os.path.exists(bias_path):
            die(f"{bias_path} is missing: the baselines expect a bias in every layer.")
        b = read_npy_f8(bias_path)
        params += [w.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)]
        layer += 1
    if not params:
        die(f"--weights {directory} holds no W1.npy.")
    return params


# ---- The model and its per-sample loss ----------------------------------------
def forward(params, x):
    a = x
    for w, b in zip(params[0::2], params[1::2]):
        a = a @ w.T + b
    return a


def per_sample_loss(f, y, loss):
    if loss == "mse":
        return 0.5 * ((f - y) ** 2).sum(-1)
    return F.cross_entropy(f, y, reduction="none")


# ---- Statistics from materialised per-sample gradients -------------------------
def stats_from_samples(grad_samples, losses, n):
    """grad_samples: per parameter (W1, b1, W2, ...) an N×... tensor of g_i.
    Σ's trace is the sum of population variances (torch.var, Welford), so
    nothing cancels; ‖g_i‖² comes from vector norms, without an N×P square."""
    layers = []
    for w_s, b_s in zip(grad_samples[0::2], grad_samples[1::2]):
        grad_norm_sq = trace_cov = mean_sq = 0.0
        for s in (w_s, b_s):
            s2 = s.reshape(n, -1)
            grad_norm_sq += float((s2.mean(0).double() ** 2).sum())
            trace_cov += float(torch.var(s2, dim=0, unbiased=False).double().sum())
            mean_sq += float((torch.linalg.vector_norm(s2, dim=1).double() ** 2).mean())
        layers.append({"grad_norm_sq": grad_norm_sq, "trace_cov": trace_cov,
                       "mean_sample_grad_norm_sq": mean_sq})
    return totals(layers, float(losses.double().mean()))


def totals(layers, loss):
    return {"loss": loss,
            "grad_norm_sq": sum(l["grad_norm_sq"] for l in layers),
            "trace_cov": sum(l["trace_cov"] for l in layers),
            "mean_sample_grad_norm_sq": sum(l["mean_sample_grad_norm_sq"] for l in layers),
            "layers": layers}


# ---- The methods -----------------------------------------------------------------
def vmap_grads(params, x, y, loss, chunk):
    def loss_one(p, xi, yi):
        return per_sample_loss(forward(p, xi[None]), yi[None], loss)[0]

    per_sample = func_vmap(func_grad(loss_one), in_dims=(None, 0, 0), **(
        {"chunk_size": chunk} if chunk and vmap_has_chunk_size() else {}))
    if chunk and not vmap_has_chunk_size():
        parts = [per_sample(tuple(params), x[i:i + chunk], y[i:i + chunk]) for i in range(0, len(x), chunk)]
        return [torch.cat(p) for p in zip(*parts)]
    return list(per_sample(tuple(params), x, y))


def method_vmap(params, x, y, loss, chunk):
    samples = vmap_grads(params, x, y, loss, chunk)
    losses = per_sample_loss(forward(params, x), y, loss)
    return stats_from_samples(samples, losses, len(x))


def method_materialised(params, x, y, loss, chunk):
    # Opacus's GradSampleModule / BackPACK's BatchGrad, written out: hooks on
    # nn.Linear keep activations and backprops, then one einsum per layer.
    layers = []
    for w, b in zip(params[0::2], params[1::2]):
        layer = torch.nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        layers.append(layer)
    model = torch.nn.Sequential(*layers)
    activations, backprops = {}, {}
    handles = []
    for layer in layers:
        handles.append(layer.register_forward_hook(
            lambda m, inp, out: activations.__setitem__(m, inp[0].detach())))
        handles.append(layer.register_full_backward_hook(
            lambda m, grad_in, grad_out: backprops.__setitem__(m, grad_out[0].detach())))
    try:
        losses = per_sample_loss(model(x), y, loss)
        losses.sum().backward()  # per-sample backprops (Opacus rescales a mean loss by N)
    finally:
        for h in handles:
            h.remove()
    samples = []
    for layer in layers:
        samples.append(torch.einsum("ni,nj->nij", backprops[layer], activations[layer]))
        samples.append(backprops[layer])
    return stats_from_samples(samples, losses.detach(), len(x))


def method_ghost(params, x, y, loss, chunk):
    n = len(x)
    weights = [p.detach().requires_grad_(True) for p in params]
    num_layers = len(weights) // 2
    grad_sums = [torch.zeros(p.shape, dtype=torch.float64, device=x.device) for p in weights]
    sample_sq = [torch.zeros((), dtype=torch.float64, device=x.device) for _ in range(num_layers)]
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    for first in range(0, n, chunk):
        a = x[first:first + chunk]
        inputs, outputs = [], []
        for w, b in zip(weights[0::2], weights[1::2]):
            inputs.append(a)
            a = a @ w.T + b
            outputs.append(a)
        losses = per_sample_loss(a, y[first:first + chunk], loss)
        deltas = torch.autograd.grad(losses.sum(), outputs)
        loss_sum += losses.detach().double().sum()
        for l, (a_in, delta) in enumerate(zip(inputs, deltas)):
            a_in = a_in.detach()
            norms = torch.einsum("ni,ni->n", delta, delta) * (torch.einsum("ni,ni->n", a_in, a_in) + 1)
            sample_sq[l] += norms.double().sum()
            grad_sums[2 * l] += (delta.T @ a_in).double()
            grad_sums[2 * l + 1] += delta.sum(0).double()
    layers = []
    for l in range(num_layers):
        grad_norm_sq = float(((grad_sums[2 * l] / n) ** 2).sum() + ((grad_sums[2 * l + 1] / n) ** 2).sum())
        mean_sq = float(sample_sq[l] / n)
        layers.append({"grad_norm_sq": grad_norm_sq, "trace_cov": mean_sq - grad_norm_sq,
                       "mean_sample_grad_norm_sq": mean_sq})
    return totals(layers, float(loss_sum / n))


def method_read_floor(params, x, y, loss, chunk):
    float(x.sum()) + float(y.sum())
    return None


# ---- Timing ---------------------------------------------------------------------
def reset_peak_rss():
    """Resets the kernel's RSS high-water mark (Linux ≥ 4.0) and returns the
    current RSS, so a later peak_rss() − this is what the run itself added."""
    try:
        # Freed data-generation temporaries stay resident in the heap, where
        # the run would reuse them unseen: hand them back first.
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status_bytes("VmRSS")
    except OSError:
        return None


def status_bytes(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def is_oom(error):
    if hasattr(torch.cuda, "OutOfMemoryError") and isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def estimated_bytes(method, n, params, itemsize):
    """Memory a method holds at once beyond the data (rough, for the host guard)."""
    p = sum(t.numel() for t in params)
    if method in ("vmap", "vmap_chunked", "materialised"):
        return 3 * n * p * itemsize  # the N×P gradients, a reshaped copy, the variance pass
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--loss", default="mse")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=1 << 16)
    parser.add_argument("--no-flush", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--host-mem-limit", type=float, default=8e9,
                        help="bytes; on the CPU a method estimated to need more is skipped")
    args = parser.parse_args()
    if args.method not in METHODS:
        die(f"--method '{args.method}' is not one of {', '.join(METHODS)}.")
    if args.loss not in ("mse", "ce"):
        die(f"--loss expects mse or ce, got '{args.loss}'.")
    if args.dtype not in ("float32", "float64"):
        die(f"--dtype expects float32 or float64, got '{args.dtype}'.")
    if args.device not in ("cpu", "cuda"):
        die(f"--device expects cpu or cuda, got '{args.device}'.")
    if args.n < 2 or args.reps < 1 or args.warmup < 0 or args.chunk < 1:
        die("--n must be at least 2, --reps and --chunk at least 1, --warmup at least 0.")

    out = {"method": args.method, "torch_version": torch.__version__}

    def emit(**fields):
        out.update(fields)
        print(json.dumps(out))
        sys.exit(0)

    if args.device == "cuda" and not torch.cuda.is_available():
        emit(status="error", note="torch sees no CUDA device")
    if args.method.startswith("vmap") and func_vmap is None:
        emit(status="skipped", note="neither torch.func nor functorch is available")
    torch.set_num_threads(args.threads)
    # Exact float32 products, like gradnoise and the cuBLAS baseline (TF32
    # would fail the agreement check).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    device = torch.device(args.device)
    params = read_weights(args.weights, device, dtype)
    d, k = params[0].shape[1], params[-1].shape[0]
    if args.loss == "ce" and k < 2:
        die("--loss ce needs at least two classes (K ≥ 2).")
    out["device_name"] = torch.cuda.get_device_name(device) if args.device == "cuda" else "cpu"
    notes = []
    if args.method.startswith("vmap"):
        notes.append(FUNC_SOURCE)
    if args.method == "vmap_chunked" and not vmap_has_chunk_size():
        notes.append(f"vmap has no chunk_size here: chunks of {min(args.chunk, args.n)} rows by hand")
    if args.method == "materialised":
        notes.append("Opacus/BackPACK method reimplemented in PyTorch (hooks + einsum)")

    need = estimated_bytes(args.method, args.n, params, torch.finfo(dtype).bits // 8)
    if args.device == "cpu" and need > args.host_mem_limit:
        emit(status="skipped", note=f"would need about {need / 2**30:.1f} GiB of host memory, over "
                                     f"--host-mem-limit {args.host_mem_limit / 2**30:.1f} GiB")
    try:
        x, y = make_data(args.n, d, k, args.loss, args.seed, device, dtype)
    except Exception as error:  # noqa: BLE001 (an OOM is a result, not a crash)
        if is_oom(error):
            emit(status="oom", note="the data itself does not fit in memory")
        raise
    run = {"vmap": method_vmap, "vmap_chunked": method_vmap, "materialised": method_materialised,
           "ghost": method_ghost, "read_floor": method_read_floor}[args.method]
    chunk = args.chunk if args.method in ("vmap_chunked", "ghost") else None
    chunk = min(chunk, args.n) if chunk else chunk
    cuda = args.device == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # First run: statistics and peak memory beyond the resident data.
    try:
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        rss_before = None if cuda else reset_peak_rss()
        stats = run(params, x, y, args.loss, chunk)
        sync()
        if cuda:
            peak = torch.cuda.max_memory_allocated() - base
            out["peak_mem_note"] = "torch.cuda.max_memory_allocated beyond the resident data"
        elif rss_before is not None:
            peak = status_bytes("VmHWM") - rss_before
            out["peak_mem_note"] = "peak RSS beyond the resident data (VmHWM after clear_refs)"
        else:
            peak = None
            out["peak_mem_note"] = "not measured (no /proc/self/clear_refs)"
        for _ in range(args.warmup):
            run(params, x, y, args.loss, chunk)
        sync()
        flush = torch.empty(256 << 20 if cuda else 64 << 20, dtype=torch.uint8, device=device)
        seconds = []
        for r in range(args.reps):
            if not args.no_flush:
                flush.fill_((r + 1) & 0xFF)
            sync()
            if cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run(params, x, y, args.loss, chunk)
                stop.record()
                stop.synchronize()
                seconds.append(start.elapsed_time(stop) * 1e-3)
            else:
                t0 = time.perf_counter()
                run(params, x, y, args.loss, chunk)
                seconds.append(time.perf_counter() - t0)
    except Exception as error:  # noqa: BLE001
        if is_oom(error):
            emit(status="oom", note="; ".join(notes + [str(error).splitlines()[0][:200]]))
        raise
    seconds.sort()
    mid = len(seconds) // 2
    median = seconds[mid] if len(seconds) % 2 else 0.5 * (seconds[mid - 1] + seconds[mid])
    emit(status="ok", stats=stats, median_s=median, min_s=seconds[0], reps=args.reps,
         peak_mem_bytes=None if peak is None else int(peak), note="; ".join(n for n in notes if n))


if __name__ == "__main__":
    main()
