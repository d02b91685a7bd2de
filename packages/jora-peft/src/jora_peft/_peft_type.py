"""Adds ``PeftType.JORA`` to PEFT's enum, idempotently, before any ``JoraConfig`` exists."""

from __future__ import annotations

from aenum import extend_enum
from peft.utils import PeftType

PEFT_TYPE_NAME = "JORA"

if PEFT_TYPE_NAME not in PeftType.__members__:
    extend_enum(PeftType, PEFT_TYPE_NAME, PEFT_TYPE_NAME)

JORA_PEFT_TYPE: PeftType = PeftType[PEFT_TYPE_NAME]
