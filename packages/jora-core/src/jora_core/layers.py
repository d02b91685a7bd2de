"""Helpers for the frozen base layers JORA adapts: ``nn.Linear`` and transformers' ``Conv1D``.

``Conv1D`` (GPT-2 style, weight stored as ``[in, out]``) is recognised by its class name and attributes, so
this module never imports transformers.
"""

from __future__ import annotations

import torch
from torch import nn

SUPPORTED_LAYERS = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")

__all__ = ["SUPPORTED_LAYERS", "get_in_out_features", "is_conv1d", "linear_forward", "weight_layout"]


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (weight ``[in, out]``), recognised without importing transformers."""
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and isinstance(module.weight, torch.Tensor)
    )


def _unsupported(module: nn.Module) -> TypeError:
    return TypeError(
        f"JORA cannot adapt a module of type {type(module).__module__}.{type(module).__qualname__}; "
        f"supported types are {', '.join(SUPPORTED_LAYERS)}"
    )


def weight_layout(module: nn.Module) -> str:
    """``"linear"`` (weight ``[out, in]``) or ``"conv1d"`` (weight ``[in, out]``)."""
    if isinstance(module, nn.Linear):
        return "linear"
    if is_conv1d(module):
        return "conv1d"
    raise _unsupported(module)


def get_in_out_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Linear or Conv1D layer; ``TypeError`` for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        in_features, out_features = module.weight.shape
        return int(in_features), int(out_features)
    raise _unsupported(module)


def linear_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The base layer's own output ``W x + b`` for Linear or Conv1D."""
    if isinstance(module, nn.Linear):
        return nn.functional.linear(x, module.weight, module.bias)
    if is_conv1d(module):
        out = x @ module.weight
        return out + module.bias if module.bias is not None else out
    raise _unsupported(module)
