"""jora-peft: JORA as a PEFT tuner.

``import jora_peft`` registers the method with PEFT (idempotently). Afterwards ``from peft import
JoraConfig, get_peft_model`` works, and so do ``PeftConfig.from_pretrained`` and
``PeftModel.from_pretrained`` for saved JORA adapters.
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import register_peft_method

import peft
from jora_peft._peft_type import JORA_PEFT_TYPE
from jora_peft._version import __version__
from jora_peft.callback import JoraTrainerCallback, selection_progress
from jora_peft.config import JoraConfig
from jora_peft.layer import JoraLayer, Linear
from jora_peft.model import JoraModel, iter_jora_layers

__all__ = [
    "JoraConfig",
    "JoraLayer",
    "JoraModel",
    "JoraTrainerCallback",
    "Linear",
    "__version__",
    "iter_jora_layers",
    "selection_progress",
]

if JORA_PEFT_TYPE not in PEFT_TYPE_TO_CONFIG_MAPPING:
    register_peft_method(name="jora", config_cls=JoraConfig, model_cls=JoraModel, prefix="jora_")
for _name in ("JoraConfig", "JoraModel"):
    setattr(peft, _name, globals()[_name])
