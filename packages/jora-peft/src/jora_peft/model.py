"""``JoraModel``: the PEFT tuner that injects :class:`~jora_peft.layer.JoraLayer` into a model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from jora_core.layers import SUPPORTED_LAYERS, get_in_out_features
from jora_peft.config import JoraConfig
from jora_peft.layer import JoraLayer, Linear

__all__ = ["JoraModel", "iter_jora_layers"]


def iter_jora_layers(model: nn.Module) -> Iterator[tuple[str, JoraLayer]]:
    """``(name, layer)`` for every JORA layer inside ``model`` (any wrapper: PeftModel, DDP, ...)."""
    for name, module in model.named_modules():
        if isinstance(module, JoraLayer):
            yield name, module


class JoraModel(BaseTuner):
    """Creates JORA adapters on the target ``nn.Linear``/``Conv1D`` modules of a model.

    Use it through ``peft.get_peft_model(model, JoraConfig(...))``. Besides PEFT's methods (``set_adapter``,
    ``merge_and_unload``, ``unload``, ``delete_adapter``, ``disable_adapter``...), it offers
    :meth:`set_total_steps`, :meth:`jora_update_step`, :meth:`jora_update_temperature` and
    :meth:`jora_state`, all reachable through the returned ``PeftModel``.
    """

    prefix: str = "jora_"
    tuner_layer_cls = JoraLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(
        self,
        jora_config: JoraConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if current_key is None:
            raise ValueError("current_key must not be None")
        if isinstance(target, JoraLayer):
            target.update_layer(adapter_name, jora_config)
            return
        try:
            get_in_out_features(target)
        except TypeError as err:
            raise ValueError(
                f"Target module {current_key!r} of type {type(target).__name__} is not supported by JORA; "
                f"supported types are {', '.join(SUPPORTED_LAYERS)}"
            ) from err
        new_module = Linear(target, adapter_name, jora_config, layer_name=current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an additional adapter is not trainable until set active
        self._replace_module(parent, target_name, new_module, target)

    def _layers(self) -> Iterator[JoraLayer]:
        for _, layer in iter_jora_layers(self.model):
            yield layer

    def unmerge_adapter(self) -> None:
        """PEFT's ``unmerge_adapter``, once every layer is known to be unmergeable: a layer whose merge erased
        rows of its base weight raises ``ValueError`` before any layer is changed."""
        for layer in self._layers():
            layer.check_unmergeable()
        super().unmerge_adapter()

    def set_total_steps(self, total_steps: int | None, adapter_name: str | None = None) -> None:
        """Total number of steps, counted in backward calls, for ``warmup_ratio`` and temperature annealing."""
        for layer in self._layers():
            if adapter_name is None or adapter_name in layer.jora_adapters:
                layer.set_total_steps(total_steps, adapter_name)

    def jora_update_step(self, total_steps: int | None = None, adapter_name: str | None = None) -> None:
        """Run one selection round by hand on every layer (training runs them automatically)."""
        for layer in self._layers():
            if adapter_name is None or adapter_name in layer.jora_adapters:
                layer.update_step(total_steps, adapter_name)

    def jora_update_temperature(
        self, current_step: int, total_steps: int, adapter_name: str | None = None
    ) -> None:
        """Set every layer's magnitude temperature for ``current_step`` of ``total_steps``."""
        for layer in self._layers():
            if adapter_name is None or adapter_name in layer.jora_adapters:
                layer.update_temperature(current_step, total_steps, adapter_name)

    def jora_state(self, adapter_name: str | None = None) -> dict[str, dict[str, Any]]:
        """``{module_name: state}`` for ``adapter_name`` (default: the first active adapter).

        Each state has ``pairs_L``, ``pairs_R`` (active pairs, LongTensor ``[a, 2]``), ``theta_L``,
        ``theta_R`` (their angles), ``scale`` (the n-vector s), ``frozen_L``, ``frozen_R`` (bool), ``step``.
        """
        name = adapter_name or self.active_adapters[0]
        return {
            module_name: layer.jora_adapters[name].state_summary()
            for module_name, layer in iter_jora_layers(self.model)
            if name in layer.jora_adapters
        }

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> Any:
        """Delegate to the wrapped model (generation support)."""
        return self.model.prepare_inputs_for_generation(*args, **kwargs)
