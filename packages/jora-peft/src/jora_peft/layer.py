"""``JoraLayer``: the PEFT tuner layer wrapping an ``nn.Linear`` or transformers ``Conv1D``.

Each adapter of a layer is one :class:`jora_core.JoraAdapter` (parameters and integer buffers together) kept
in the ``jora_adapters`` ModuleDict keyed by adapter name: integer buffers inside a per-adapter module
survive PEFT's save/load on every supported version.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from jora_core.adapter import JoraAdapter
from jora_core.layers import get_in_out_features, weight_layout
from jora_peft.config import JoraConfig

__all__ = ["JoraLayer", "Linear", "layer_seed"]


def layer_seed(base_seed: int, layer_name: str) -> int:
    """Per-layer seed from the config's ``seed`` and the module name (identical on every rank and run)."""
    return (int(base_seed) * 1_000_003 + zlib.crc32(layer_name.encode())) & 0x7FFFFFFFFFFFFFFF


class JoraLayer(BaseTunerLayer):
    """Tuner-layer mixin holding the JORA adapters of one base layer."""

    adapter_layer_names: tuple[str, ...] = ("jora_adapters",)
    other_param_names: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module, layer_name: str = "") -> None:
        self.base_layer = base_layer
        self.jora_adapters = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.layer_name = layer_name
        in_features, out_features = get_in_out_features(self.get_base_layer())
        self.in_features = in_features
        self.out_features = out_features

    def update_layer(self, adapter_name: str, config: JoraConfig, inference_mode: bool = False) -> None:
        """Create the adapter ``adapter_name`` from ``config`` on this layer."""
        base = self.get_base_layer()
        self.jora_adapters[adapter_name] = JoraAdapter(
            base.weight,
            weight_layout(base),
            config.to_settings(),
            seed=layer_seed(config.seed, self.layer_name),
            name=self.layer_name or type(base).__name__,
        )
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _move_adapter_to_device_of_base_layer(
        self, adapter_name: str, device: torch.device | None = None
    ) -> None:
        """Move to the base layer's device only: JORA keeps fp32 parameters and statistics on any base dtype.

        An adapter whose parameters are on ``meta`` (created by ``low_cpu_mem_usage=True``) is left there: PEFT's
        state-dict load assigns its tensors."""
        target = device if device is not None else self.get_base_layer().weight.device
        if target.type == "meta" or adapter_name not in self.jora_adapters:
            return
        adapter = self.jora_adapters[adapter_name]
        if any(param.is_meta for param in adapter.parameters()):
            return
        adapter.to(target)

    def _active_jora(self) -> list[JoraAdapter]:
        return [self.jora_adapters[name] for name in self.active_adapters if name in self.jora_adapters]

    def _selected(self, adapter_name: str | None) -> list[JoraAdapter]:
        if adapter_name is None:
            return list(self.jora_adapters.values())
        if adapter_name not in self.jora_adapters:
            raise ValueError(f"adapter {adapter_name!r} not found; available: {list(self.jora_adapters)}")
        return [self.jora_adapters[adapter_name]]

    # ------------------------------------------------------------------ merging
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold adapters into the base weight exactly (``W ← diag(s)(W + ΔW)``, in activation order).

        Args:
            safe_merge: compute on a copy and raise if it contains NaN/inf before writing it.
            adapter_names: adapters to merge (default: the active ones).
        """
        adapter_names = check_adapters_to_merge(self, adapter_names)
        weight = self.get_base_layer().weight
        for name in adapter_names:
            if name not in self.jora_adapters:
                continue
            merged = self.jora_adapters[name].merged_weight(weight.data)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(
                    f"NaNs detected in the merged weights. The adapter {name} seems to be broken"
                )
            weight.data = merged.contiguous()
            self.merged_adapters.append(name)

    def check_unmergeable(self) -> None:
        """Raise ``ValueError`` if a merged adapter cannot be unmerged (see ``JoraAdapter.check_unmergeable``)."""
        for name in self.merged_adapters:
            if name in self.jora_adapters:
                self.jora_adapters[name].check_unmergeable()

    def unmerge(self) -> None:
        """Undo all merges, last merged first (nothing is changed if one of them cannot be undone)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        self.check_unmergeable()
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.jora_adapters:
                weight.data = self.jora_adapters[name].unmerged_weight(weight.data).contiguous()

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """What merging ``adapter_name`` adds to the current base weight: ``diag(s)(W + ΔW) − W``."""
        weight = self.get_base_layer().weight
        (adapter,) = self._selected(adapter_name)
        compute_dtype = torch.promote_types(weight.dtype, torch.float32)
        current = weight.data.to(compute_dtype)
        return (adapter.merged_weight(current) - current).to(weight.dtype)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Base output when disabled or merged; otherwise the active adapters composed in order (JORA.md §1)."""
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("JORA does not support mixed-adapter batches (adapter_names)")
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        adapters = self._active_jora()
        if self.merged or not adapters:
            return self.base_layer(x, *args, **kwargs)
        base = self.get_base_layer()
        if not torch.is_autocast_enabled(x.device.type):  # under autocast jora_linear casts x to its dtype:
            x = self._cast_input_dtype(x, base.weight.dtype)  # a bf16 x would go up to fp32 and back down
        hidden: torch.Tensor | None = None
        last = len(adapters) - 1
        for index, adapter in enumerate(adapters):
            hidden = adapter(
                x,
                base.weight if hidden is None else None,
                base.bias if index == last else None,
                base_output=hidden,
            )
        assert hidden is not None
        return hidden

    # ------------------------------------------------------------------ JORA-specific
    def compute_delta(self, x: torch.Tensor, adapter_name: str | None = None) -> torch.Tensor:
        """``ΔW x`` of ``adapter_name`` (default: the first active adapter)."""
        name = adapter_name or self.active_adapters[0]
        (adapter,) = self._selected(name)
        return adapter.compute_delta(x)

    def maybe_apply_magnitude(self, out: torch.Tensor, adapter_name: str | None = None) -> torch.Tensor:
        """``s ⊙ out`` with the scale of ``adapter_name`` (default: the first active adapter)."""
        name = adapter_name or self.active_adapters[0]
        (adapter,) = self._selected(name)
        return adapter.maybe_apply_magnitude(out)

    def update_step(self, total_steps: int | None = None, adapter_name: str | None = None) -> None:
        """Run one selection round on this layer's adapters (or the named one)."""
        for adapter in self._selected(adapter_name):
            adapter.update_step(total_steps)

    def update_temperature(
        self, current_step: int, total_steps: int, adapter_name: str | None = None
    ) -> None:
        """Set the magnitude temperature for ``current_step`` of ``total_steps``."""
        for adapter in self._selected(adapter_name):
            adapter.update_temperature(current_step, total_steps)

    def init_random_pairs(
        self, n_pairs_L: int | None = None, n_pairs_R: int | None = None, adapter_name: str | None = None
    ) -> None:
        """Fill empty slots with random disjoint pairs (see :meth:`jora_core.JoraAdapter.init_random_pairs`)."""
        for adapter in self._selected(adapter_name):
            adapter.init_random_pairs(n_pairs_L, n_pairs_R)

    def set_total_steps(self, total_steps: int | None, adapter_name: str | None = None) -> None:
        """Total number of steps (backward calls) for ``warmup_ratio`` and annealing."""
        for adapter in self._selected(adapter_name):
            adapter.set_total_steps(total_steps)


class Linear(nn.Module, JoraLayer):
    """JORA on an ``nn.Linear`` or transformers ``Conv1D`` base layer."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: JoraConfig,
        layer_name: str = "",
    ) -> None:
        super().__init__()
        JoraLayer.__init__(self, base_layer, layer_name=layer_name)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return JoraLayer.forward(self, x, *args, **kwargs)

    def __repr__(self) -> str:
        return "jora." + super().__repr__()
