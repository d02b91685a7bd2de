"""``JoraLinear``: JORA on one ``nn.Linear``/``Conv1D`` without PEFT."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jora_core.adapter import JoraAdapter
from jora_core.settings import JoraSettings

__all__ = ["JoraLinear"]


class JoraLinear(nn.Module):
    """A frozen base layer plus one JORA adapter: ``y = s ⊙ ((W + ΔW) x) + b``.

    Example:
        ```python
        layer = JoraLinear(nn.Linear(512, 256), S_L=16, S_R=16, k=4, core="diag")
        y = layer(x)          # train as usual: selection runs once per backward
        layer.merge()         # W ← diag(s)(W + ΔW); forward is now the plain layer
        ```

    Args:
        base_layer: ``nn.Linear`` or transformers ``Conv1D``; its parameters are frozen.
        settings: knobs (``JoraSettings``); keyword ``knobs`` override single fields.
        seed: per-layer seed (random pairs, Gumbel noise).
    """

    def __init__(
        self, base_layer: nn.Module, settings: JoraSettings | None = None, *, seed: int = 0, **knobs: Any
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        base_layer.requires_grad_(False)
        self.adapter = JoraAdapter.from_layer(
            base_layer, settings, seed=seed, name=type(base_layer).__name__, **knobs
        )
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapted output (the base layer alone once merged)."""
        if self.merged:
            return self.base_layer(x)
        return self.adapter(x, self.base_layer.weight, self.base_layer.bias)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the base weight exactly: ``W ← diag(s)(W + ΔW)``."""
        if not self.merged:
            self.base_layer.weight.data = self.adapter.merged_weight(self.base_layer.weight)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight from a merged one."""
        if self.merged:
            self.base_layer.weight.data = self.adapter.unmerged_weight(self.base_layer.weight)
            self.merged = False
