"""Type stubs of gradnoise's C++ module (python/src/module.cpp)."""

from typing import Any, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

BatchSizes = Union[str, Sequence[int]]
Weights = Any  # [W1, b1, W2, b2, ...], [(W1, b1), (W2, None), ...] or one 2-D W

def version() -> str: ...
def cuda_built() -> bool: ...
def cuda_device_count() -> int: ...
def losses() -> list[str]: ...
def fashion_mnist(split: str = "train", limit: int = 0) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]]:
    """Fashion-MNIST (Debian's dataset-fashion-mnist): X N×784 in [0, 1], int32 labels."""

class LayerProfile:
    """One layer's share of a profile."""
    @property
    def name(self) -> str: ...
    @property
    def num_params(self) -> int: ...
    @property
    def grad_norm_sq(self) -> float: ...
    @property
    def trace_cov(self) -> float: ...
    @property
    def mean_sample_grad_norm_sq(self) -> float: ...
    @property
    def noise_scale_simple(self) -> float: ...

class Profile:
    """The exact gradient-noise profile at one θ (docs/MATH.md)."""
    @property
    def n(self) -> int: ...
    @property
    def num_params(self) -> int: ...
    @property
    def loss(self) -> float: ...
    @property
    def loss_var(self) -> float: ...
    @property
    def grad_norm_sq(self) -> float: ...
    @property
    def trace_cov(self) -> float: ...
    @property
    def mean_sample_grad_norm_sq(self) -> float: ...
    @property
    def noise_scale_simple(self) -> float:
        """tr Σ / ‖G‖²: inf when ‖G‖² = 0, NaN at an exact fit (None in to_dict())."""
    @property
    def layers(self) -> list[LayerProfile]: ...
    @property
    def param_mean(self) -> npt.NDArray[np.float64]:
        """G per parameter, W1 row-major, b1, W2, b2, ... (read-only view)."""
    @property
    def param_var(self) -> Optional[npt.NDArray[np.float64]]:
        """diag Σ per parameter; None unless profile(..., param_stats=True)."""
    @property
    def device(self) -> str: ...
    @property
    def elapsed_s(self) -> float: ...
    @property
    def loss_kind(self) -> str: ...
    @property
    def warnings(self) -> list[str]: ...
    def curve(self, batch_sizes: BatchSizes = "all") -> dict[str, np.ndarray]:
        """E‖g_B − G‖² (and the minibatch loss's variance) per batch size, with and
        without replacement: batch_size, var_without_replacement, var_with_replacement,
        loss_var_without_replacement, loss_var_with_replacement."""
    def to_dict(self) -> dict[str, Any]:
        """report.json as `gradnoise profile --out` writes it (its keys, in its order)."""

class _Profiler:
    def __init__(self, X: Any, Y: Any, loss: str = "mse", device: str = "auto",
                 chunk_rows: int = 0, threads: int = 0, classes: int = 0,
                 gpu_dtype: str = "float32") -> None: ...
    @property
    def device(self) -> str:
        """'cpu', or the GPU's name."""
    @property
    def loss(self) -> str: ...
    @property
    def chunk_rows(self) -> int: ...
    @property
    def n(self) -> int: ...
    @property
    def d(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def zero_copy(self) -> bool:
        """X is handed to the engine in place (float64 C order on the host, float32
        C order on a GPU); else it is converted chunk by chunk (host) or once on the device."""
    @property
    def on_cuda(self) -> bool:
        """The data are CUDA tensors, profiled where they lie by the GPU engine."""
    @property
    def input_address(self) -> int:
        """The address of the X memory the engine reads (the caller's own)."""
    def profile(self, weights: Weights, param_stats: bool = False) -> Profile:
        """The exact profile at `weights` (param_var too when param_stats)."""
    def shape(self, weights: Optional[Weights], spectrum: int, theta: float, hessian: str,
              exact_trace_sq: bool, batch_sizes: Optional[BatchSizes],
              estimators: Optional[Sequence[int]], seed: int) -> tuple[dict, dict, Profile]: ...
    def apply(self, weights: Weights, vectors: Any, covariance: bool,
              gauss_newton: bool) -> npt.NDArray[np.float64]: ...
    def _time_profile_calls(self, weights: Weights, reps: int) -> list[float]: ...

def _sweep(X: Any, Y: Any, batch_sizes: BatchSizes, lrs: Sequence[float], replicas: int, steps: int,
           weights: Optional[Weights], hidden: Sequence[int], bias: bool, init: str, loss: str,
           sampling: str, label_noise: float, weight_decay: float, momentum: float, log_every: int,
           seed: int, profile: bool, device: str, threads: int, test: Optional[tuple],
           first_replica: int, divergence_factor: float) -> tuple[dict, dict, np.ndarray]: ...
