"""``JoraTrainerCallback``: wires the Hugging Face Trainer's schedule into JORA and logs selection progress."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from jora_peft.model import iter_jora_layers

__all__ = ["JoraTrainerCallback", "selection_progress"]

logger = logging.getLogger(__name__)


def selection_progress(model: nn.Module) -> dict[str, float]:
    """Selection progress over all active JORA adapters of ``model``.

    Returns ``jora/active_pair_fraction`` (active slots / all slots) and ``jora/frozen_side_fraction``.
    """
    active = slots = frozen = sides = 0
    for _, layer in iter_jora_layers(model):
        for adapter in layer._active_jora():
            for side in ("L", "R"):
                active += adapter.active_count(side)
                slots += adapter.S_L if side == "L" else adapter.S_R
                frozen += adapter.is_frozen(side)
                sides += 1
    return {
        "jora/active_pair_fraction": active / slots if slots else 1.0,
        "jora/frozen_side_fraction": frozen / sides if sides else 1.0,
    }


class JoraTrainerCallback(TrainerCallback):
    """Sets JORA's total steps from the Trainer and adds selection progress to the logs.

    JORA counts one step per backward call, so the total is ``max_steps × gradient_accumulation_steps``;
    that is what ``warmup_ratio`` and temperature annealing use. Selection itself needs no callback.
    """

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("JoraTrainerCallback needs the model (the Trainer passes it as `model`)")
        total = state.max_steps * args.gradient_accumulation_steps
        layers = list(iter_jora_layers(model))
        if not layers:
            raise ValueError("JoraTrainerCallback: the model has no JORA layers")
        for _, layer in layers:
            layer.set_total_steps(total)
        logger.info("JORA: total steps set to %d backward calls on %d layers", total, len(layers))

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None or logs is None:
            return
        progress = selection_progress(model)
        logs.update(progress)
        state.log_history[-1:] = [{**state.log_history[-1], **progress}] if state.log_history else []
