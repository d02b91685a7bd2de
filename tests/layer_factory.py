"""Base layers for tests: nn.Linear and a transformers-like Conv1D built here (jora-core never imports transformers)."""

from __future__ import annotations

import torch
from torch import nn


class Conv1D(nn.Module):
    """Same layout as transformers' Conv1D: weight ``[in, out]``, ``y = x W + b``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def make_layer(
    kind: str, in_features: int, out_features: int, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """A random ``nn.Linear`` or Conv1D base layer."""
    layer = nn.Linear(in_features, out_features) if kind == "linear" else Conv1D(out_features, in_features)
    return layer.to(dtype)
