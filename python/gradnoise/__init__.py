"""gradnoise: the exact gradient noise of linear and deep linear models.

From the per-sample gradients g_i it computes, in one streaming pass and
without materialising them, the mean gradient G, tr Σ (the trace of the
per-sample gradient covariance), their per-layer and per-parameter
versions, B_simple = tr Σ / ‖G‖², and E‖g_B − G‖² for every batch size.
Definitions: docs/MATH.md and docs/DEFINITIONS.md; the Python API:
docs/PYTHON.md.

    import gradnoise as gn
    prof = gn.Profiler(X, Y, loss="ce")          # the data are read where they lie
    r = prof.profile([W1, b1, W2, b2])            # or [(W1, b1), (W2, b2)]
    r.trace_cov, r.grad_norm_sq, r.noise_scale_simple, r.layers[0].trace_cov
    r.curve("pow2")                               # dict of NumPy arrays
    s = prof.shape(spectrum=10, theta=0.5)        # at the weights last profiled

Errors are ValueError (bad input), RuntimeError (no GPU, device failures)
and MemoryError, each with one sentence saying what was expected.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from ._gradnoise import (
    LayerProfile,
    Profile,
    _Profiler,
    _sweep,
    cuda_built,
    cuda_device_count,
    fashion_mnist,
    losses,
    version,
)

__version__: str = version()

__all__ = [
    "Profiler",
    "Profile",
    "LayerProfile",
    "Shape",
    "SweepResult",
    "profile",
    "sweep",
    "cuda_built",
    "cuda_device_count",
    "fashion_mnist",
    "losses",
    "__version__",
]

BatchSizes = Union[str, Sequence[int]]


class Profiler(_Profiler):
    """A profiling session: the data, held where they lie, and a device.

    ``Profiler(X, Y, loss="mse", device="auto", *, chunk_rows=0, threads=0, classes=0, gpu_dtype="float32")``

    X is N×D (one sample per row); Y is N×K real targets for ``loss="mse"``
    (squared error) or ``"bce"`` (binary cross-entropy with logits, targets
    in [0, 1]), or a vector of N integer class labels for ``"ce"`` (softmax
    cross-entropy; ``classes`` fixes K, else it is the largest label + 1).

    Arrays are NumPy arrays, PyTorch tensors or anything with ``__dlpack__``
    or the buffer protocol, float32 or float64, and are never copied whole:

    * float64 C-order X is read in place (``zero_copy`` is True);
    * float32, Fortran order or any strided view is converted chunk by chunk
      as it streams (a chunk's worth of memory, never a copy of X);
    * a CUDA tensor goes straight to the GPU engine (float32 C-order: no copy
      at all; another dtype or layout is converted once on the device).

    The arrays are held, not copied: writing new values into X changes the
    next profile; resizing it is not allowed while the session lives.

    ``device``: "auto" (the GPU when one is usable, else the CPU), "cpu" or
    "cuda" (RuntimeError without a GPU). ``chunk_rows``: rows per streamed
    chunk (0: 1024 on the CPU, 65536 on a GPU). ``threads``: CPU threads
    (0: one per core). ``gpu_dtype``: on a GPU, the session copies host
    arrays to the device once, at the first call, and keeps them there, in
    "float32" (half the bytes; every sum is still float64) or "float64". The
    GIL is released while the library computes.
    """

    def __init__(
        self,
        X: Any,
        Y: Any,
        loss: str = "mse",
        device: str = "auto",
        *,
        chunk_rows: int = 0,
        threads: int = 0,
        classes: int = 0,
        gpu_dtype: str = "float32",
    ) -> None:
        super().__init__(X, Y, loss, device, chunk_rows, threads, classes, gpu_dtype)

    def shape(
        self,
        weights: Any = None,
        *,
        spectrum: int = 10,
        theta: float = 0.0,
        hessian: str = "full",
        exact_trace_sq: bool = False,
        batch_sizes: Optional[BatchSizes] = None,
        estimators: Optional[Sequence[int]] = None,
        seed: int = 0,
    ) -> "Shape":
        """The noise's shape at ``weights`` (default: the weights last profiled).

        ``spectrum=K``: the K largest eigenvalues of Σ (model and per layer) and
        of the Hessian (``hessian="full"`` or ``"gn"``), tr(Σ²), the effective
        rank, tr H, B_noise = tr(HΣ)/(GᵀHG) and the Σ–H cosine (0 skips them).
        ``theta=T``: the population norm, inner-product and orthogonality
        batch-size tests at ``batch_sizes`` (default 1, 2, 4, ..., N), the
        smallest batch size passing each, and the gradient SNR.
        ``estimators=(b_small, b_big[, pairs])``: the two-batch estimators of
        ‖G‖², tr Σ and B_simple from real minibatch pairs against the exact
        values. Σ·V, H·V and ĜᵀΣĜ run on the session's device.
        """
        keys, arrays, profile = _Profiler.shape(
            self, weights, spectrum, theta, hessian, exact_trace_sq, batch_sizes, estimators, seed
        )
        return Shape(keys, arrays, profile)

    def cov_apply(self, weights: Any, V: Any) -> np.ndarray:
        """Σ·V at ``weights`` for V of shape (P,) or (P, m): one pass over the data."""
        return self.apply(weights, V, True, False)

    def hessian_apply(self, weights: Any, V: Any, *, gauss_newton: bool = False) -> np.ndarray:
        """H·V (or the Gauss–Newton matrix's) at ``weights`` for V of shape (P,) or (P, m)."""
        return self.apply(weights, V, False, gauss_newton)

    def __repr__(self) -> str:
        return (
            f"Profiler(n={self.n}, d={self.d}, k={self.k}, loss='{self.loss}', "
            f"device='{self.device}', zero_copy={self.zero_copy})"
        )


def profile(X: Any, Y: Any, weights: Any, loss: str = "mse", device: str = "auto",
            *, param_stats: bool = False, **options: Any) -> Profile:
    """One profile: ``Profiler(X, Y, loss, device, **options).profile(weights, param_stats)``."""
    return Profiler(X, Y, loss, device, **options).profile(weights, param_stats)


_EIGENVALUE_KEYS = ("cov_top_eigenvalues", "hessian_top_eigenvalues", "cov_eigen_residuals")


class Shape:
    """The noise's shape at one θ: spectra, curvature, batch-size tests.

    Every key of the report (``to_dict()``, which is ``gradnoise profile
    --spectrum K --theta T --estimators ... --out`` 's report.json) is also an
    attribute; eigenvalue lists are NumPy arrays. ``profile`` is the profile
    at the same θ; ``tests`` a dict of arrays (batch_size, norm_test,
    inner_product_test, orthogonality_test) and ``gsnr`` G_j² / Σ_jj per
    parameter, when ``theta`` was given.
    """

    def __init__(self, keys: dict, arrays: dict, profile: Profile) -> None:
        self._keys = keys
        self.profile = profile
        self.tests: Optional[dict] = arrays.get("tests")
        self.gsnr: Optional[np.ndarray] = arrays.get("gsnr")

    def __getattr__(self, name: str) -> Any:
        keys = self.__dict__.get("_keys", {})
        if name not in keys:
            raise AttributeError(
                f"Shape has no '{name}'; it has {', '.join(sorted(keys))} "
                "(a key appears only when its analysis was asked for)"
            )
        value = keys[name]
        if name in _EIGENVALUE_KEYS:
            return np.array([np.nan if v is None else v for v in value], dtype=np.float64)
        return value

    def __dir__(self) -> Iterable[str]:
        return list(super().__dir__()) + list(self._keys)

    def to_dict(self) -> dict:
        """The profile's report with the shape's keys, as report.json has them."""
        report = self.profile.to_dict()
        # report.json closes with the process count and its traffic.
        closing = {k: report.pop(k) for k in ("ranks", "bytes_communicated", "reduction") if k in report}
        report.update(self._keys)
        report.update(closing)
        return report

    def __repr__(self) -> str:
        shown = {k: self._keys[k] for k in ("cov_top_eigenvalues", "min_batch_norm_test", "gsnr_mean")
                 if k in self._keys}
        return f"Shape({shown})"


class SweepResult:
    """A sweep: real SGD runs over batch sizes × learning rates × replicas.

    ``rows``: a dict of NumPy arrays, one entry per run and logged step, with
    the columns of ``gradnoise sweep --out`` (``diverged`` is a 0/1 column in
    place of ``status``; absent values are NaN). ``grid`` and ``divergences``
    as in ``to_dict()``, which is ``--summary`` 's JSON. ``final_weights``:
    runs × P, the flattening W1 row-major, b1, W2, b2, ...
    """

    def __init__(self, summary: dict, rows: dict, final_weights: np.ndarray) -> None:
        self._summary = summary
        self.rows = rows
        self.final_weights = final_weights

    @property
    def grid(self) -> list:
        return self._summary["grid"]

    @property
    def divergences(self) -> list:
        return self._summary["divergences"]

    def to_dict(self) -> dict:
        return self._summary

    def __repr__(self) -> str:
        return (f"SweepResult(num_runs={self._summary['num_runs']}, "
                f"run_steps={self._summary['run_steps']}, device='{self._summary['config']['device']}')")


def sweep(
    X: Any,
    Y: Any,
    *,
    batch_sizes: BatchSizes,
    lrs: Union[float, Sequence[float]],
    steps: int,
    replicas: int = 1,
    model: Any = None,
    hidden: Sequence[int] = (),
    bias: bool = True,
    init: str = "gaussian",
    loss: str = "mse",
    sampling: str = "with",
    label_noise: float = 0.0,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    log_every: int = 0,
    seed: int = 0,
    profile: bool = True,
    device: str = "cpu",
    threads: int = 0,
    test: Optional[tuple] = None,
    first_replica: int = 0,
    divergence_factor: float = 1e6,
) -> SweepResult:
    """Many real SGD runs from one start, advanced together (``gradnoise sweep``).

    The model is ``model`` (weights as for ``Profiler.profile``) or built with
    widths (D, *hidden, K) and ``init`` ("gaussian": W ~ N(0, 1/in) from
    ``seed``; "zeros"; "lstsq": the least-squares fit, mse only). Every
    (batch size, learning rate) pair runs ``replicas`` times for ``steps``
    steps with minibatches drawn ``sampling`` "with" replacement, "without"
    (reshuffled each epoch) or "fixed"; every ``log_every`` steps (default
    steps/20) each run's exact ‖G‖², tr Σ and B_simple are recorded
    (``profile=False`` skips them). Each run is reproducible bit for bit.
    The data are copied once (a sweep keeps float64 copies). docs/SWEEP.md.
    """
    if isinstance(lrs, (int, float)):
        lrs = [float(lrs)]
    summary, rows, final_weights = _sweep(
        X, Y, batch_sizes, [float(lr) for lr in lrs], replicas, steps, model, list(hidden), bias,
        init, loss, sampling, label_noise, weight_decay, momentum, log_every, seed, profile,
        device, threads, test, first_replica, divergence_factor,
    )
    return SweepResult(summary, rows, final_weights)
