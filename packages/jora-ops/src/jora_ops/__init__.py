"""jora-ops: stateless tensor functions and kernels of JORA (rotations, selection, magnitude, fused linear).

Depends on torch only; Triton kernels come with the ``triton`` extra. Nothing here holds state or knows
about modules, configs or PEFT, so other adapters can reuse these functions on plain tensors.
"""

from jora_ops._version import __version__
from jora_ops.cores import CORE_KINDS, CoreSpec, core_apply, core_dense
from jora_ops.fused import WEIGHT_LAYOUTS, Magnitude, base_linear, jora_delta, jora_linear
from jora_ops.magnitude import (
    MAGNITUDE_KINDS,
    compute_ecd_scale,
    compute_oer_scale_softmax,
    compute_scale,
    linear_temperature_anneal,
    logits_grad_from_weighted,
    scale_vjp,
)
from jora_ops.rotation import (
    IMPLS,
    ROTATION_PARAMS,
    apply_rotations,
    cayley_cos_sin,
    rotation_cos_sin,
    rotation_matrix,
    validate_pairs,
)
from jora_ops.selection import (
    PAIRING_STRATEGIES,
    compute_allowed_pairs,
    ema_update,
    select_random_pairs,
    select_top_k_pairs_gpu,
)

__all__ = [
    "CORE_KINDS",
    "IMPLS",
    "MAGNITUDE_KINDS",
    "PAIRING_STRATEGIES",
    "ROTATION_PARAMS",
    "WEIGHT_LAYOUTS",
    "CoreSpec",
    "Magnitude",
    "__version__",
    "apply_rotations",
    "base_linear",
    "cayley_cos_sin",
    "compute_allowed_pairs",
    "compute_ecd_scale",
    "compute_oer_scale_softmax",
    "compute_scale",
    "core_apply",
    "core_dense",
    "ema_update",
    "jora_delta",
    "jora_linear",
    "linear_temperature_anneal",
    "logits_grad_from_weighted",
    "rotation_cos_sin",
    "rotation_matrix",
    "scale_vjp",
    "select_random_pairs",
    "select_top_k_pairs_gpu",
    "validate_pairs",
]
