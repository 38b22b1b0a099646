"""gradnoise for PyTorch: profile an nn.Sequential of nn.Linear layers, and
monitor the exact gradient noise of a training loop.

    from gradnoise.torch import GradNoiseMonitor
    monitor = GradNoiseMonitor(model, X_prof, y_prof, loss="ce", every=100)
    for step, (x, y) in enumerate(loader):
        ...; optimizer.step()
        stats = monitor.step()          # a dict every 100 steps, else None
        if stats: writer.add_scalars("gradnoise", stats, step)

The model must be a chain of affine maps: nn.Linear layers, with nn.Identity
and nn.Flatten allowed between them (nn.Flatten only flattens the samples'
features, N×... to N×D, which the profiling set gets as a view). Anything
else (an activation, a convolution, dropout) is refused: gradnoise's exact
per-sample algebra holds for affine chains only (docs/MATH.md).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from . import Profile, Profiler

__all__ = ["linear_layers", "model_weights", "profile", "GradNoiseMonitor"]

_LOSS_NAMES = {"mse": "mse", "ce": "ce", "bce": "bce", "cross_entropy": "ce", "squared": "mse"}


def linear_layers(model: nn.Module) -> Tuple[List[nn.Linear], bool]:
    """The nn.Linear layers of ``model`` (an nn.Linear or an nn.Sequential of
    nn.Linear, nn.Identity and nn.Flatten), and whether the inputs must be
    flattened first. Raises ValueError naming the first module that is none of these.
    """
    if isinstance(model, nn.Linear):
        return [model], False
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"gradnoise profiles an nn.Linear or an nn.Sequential of nn.Linear layers; got "
            f"{type(model).__name__}"
        )
    layers: List[nn.Linear] = []
    flatten = False
    for index, module in enumerate(model):
        if isinstance(module, nn.Linear):
            layers.append(module)
        elif isinstance(module, nn.Identity):
            continue
        elif isinstance(module, nn.Flatten):
            if layers:
                raise ValueError(
                    f"model[{index}] is nn.Flatten after a linear layer; expected nn.Flatten only "
                    "before the first nn.Linear (it flattens the inputs)"
                )
            if module.start_dim != 1 or module.end_dim != -1:
                raise ValueError(
                    f"model[{index}] is nn.Flatten(start_dim={module.start_dim}, "
                    f"end_dim={module.end_dim}); expected the default nn.Flatten() (N×... to N×D)"
                )
            flatten = True
        else:
            raise ValueError(
                f"model[{index}] is {type(module).__name__}, which gradnoise cannot profile exactly; "
                "expected only nn.Linear, nn.Identity and nn.Flatten (a chain of affine layers, "
                "docs/MATH.md)"
            )
    if not layers:
        raise ValueError("the model has no nn.Linear layer; expected at least one")
    return layers, flatten


def model_weights(model: nn.Module) -> List[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """[(W1, b1), (W2, b2), ...] of the model's nn.Linear layers, detached (no copy)."""
    layers, _ = linear_layers(model)
    return [
        (layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
        for layer in layers
    ]


def _inputs(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    _, flatten = linear_layers(model)
    if flatten or X.dim() > 2:
        # A view when X is contiguous: the profiling set is not copied.
        return X.reshape(X.shape[0], -1)
    return X


def profile(model: nn.Module, X: Any, Y: Any, loss: str = "ce", device: str = "auto",
            *, param_stats: bool = False, **options: Any) -> Profile:
    """The exact profile of ``model`` on (X, Y): tr Σ, ‖G‖², B_simple, per layer."""
    prof = Profiler(_inputs(model, X), Y, _LOSS_NAMES.get(loss, loss), device, **options)
    return prof.profile(model_weights(model), param_stats)


def _record(result: Profile, step: int) -> Dict[str, float]:
    record: Dict[str, float] = {
        "step": step,
        "loss": result.loss,
        "grad_norm_sq": result.grad_norm_sq,
        "trace_cov": result.trace_cov,
        "noise_scale_simple": result.noise_scale_simple,
    }
    for layer in result.layers:
        record[f"{layer.name}/grad_norm_sq"] = layer.grad_norm_sq
        record[f"{layer.name}/trace_cov"] = layer.trace_cov
        record[f"{layer.name}/noise_scale_simple"] = layer.noise_scale_simple
    return record


class GradNoiseMonitor:
    """Profiles a model's current weights exactly, every ``every`` steps.

    The profiling set (X, Y) is fixed and held by a gradnoise session for the
    monitor's life (uploaded once when it is on a GPU; never copied when it is
    float64 C-order or a float32 CUDA tensor, else read chunk by chunk).
    ``step()`` counts a training step and, every ``every`` steps (and at the
    first), returns a plain dict

        {"step", "loss", "grad_norm_sq", "trace_cov", "noise_scale_simple",
         "layer1/grad_norm_sq", "layer1/trace_cov", "layer1/noise_scale_simple", ...}

    (B_simple = tr Σ / ‖G‖² at the current θ, for the full loss on the
    profiling set), which is also appended to ``history`` and passed to
    ``logger``: a callable taking the dict, or an object with
    ``add_scalar(tag, value, step)`` such as TensorBoard's SummaryWriter
    (tags are ``prefix + key``). Between due steps ``step()`` returns None
    and costs nothing. ``measure()`` profiles now, whatever the count.
    """

    def __init__(
        self,
        model: nn.Module,
        X: Any,
        Y: Any,
        loss: str = "ce",
        every: int = 100,
        device: str = "auto",
        logger: Any = None,
        prefix: str = "gradnoise/",
        **options: Any,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be a number of steps ≥ 1; got {every}")
        linear_layers(model)  # refuses a model it cannot profile, now rather than at the first step
        self.model = model
        self.every = every
        self.logger = logger
        self.prefix = prefix
        self.history: List[Dict[str, float]] = []
        self.steps = 0
        self.profiler = Profiler(_inputs(model, X), Y, _LOSS_NAMES.get(loss, loss), device, **options)

    def measure(self) -> Dict[str, float]:
        """Profiles the current weights now and records the result."""
        result = self.profiler.profile(model_weights(self.model))
        record = _record(result, self.steps)
        self.history.append(record)
        self._log(record)
        return record

    def step(self) -> Optional[Dict[str, float]]:
        """Counts one training step; profiles when the count is a multiple of ``every``."""
        due = self.steps % self.every == 0
        record = self.measure() if due else None
        self.steps += 1
        return record

    def _log(self, record: Dict[str, float]) -> None:
        if self.logger is None:
            return
        if hasattr(self.logger, "add_scalar"):
            for key, value in record.items():
                if key != "step":
                    self.logger.add_scalar(self.prefix + key, value, record["step"])
        elif callable(self.logger):
            self.logger(record)
        else:
            raise ValueError("logger must be a callable or have add_scalar(tag, value, step)")
