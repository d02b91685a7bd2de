"""jora-core: the JORA cores and the per-adapter JORA module, without any PEFT dependency.

Built on :mod:`jora_ops`. Use :class:`JoraLinear` to adapt a single layer by hand, or ``jora-peft`` for
``get_peft_model``.
"""

from jora_core._version import __version__
from jora_core.adapter import SIDES, JoraAdapter
from jora_core.cores import BlockCore, DiagCore, JoraCore, LowRankCore, build_core
from jora_core.layers import SUPPORTED_LAYERS, get_in_out_features, is_conv1d, linear_forward, weight_layout
from jora_core.linear import JoraLinear
from jora_core.settings import MAGNITUDE_TYPES, SELECTION_TYPES, JoraSettings

__all__ = [
    "MAGNITUDE_TYPES",
    "SELECTION_TYPES",
    "SIDES",
    "SUPPORTED_LAYERS",
    "BlockCore",
    "DiagCore",
    "JoraAdapter",
    "JoraCore",
    "JoraLinear",
    "JoraSettings",
    "LowRankCore",
    "__version__",
    "build_core",
    "get_in_out_features",
    "is_conv1d",
    "linear_forward",
    "weight_layout",
]
