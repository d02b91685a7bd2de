"""The low-rank-core fast path of the fused linear: a LoRA with rotated factors, folded into the weight.

``R_Lᵀ (α/r) A Bᵀ R_R = (α/r) Ã B̃ᵀ`` with ``Ã = R_Lᵀ A`` and ``B̃ = R_Rᵀ B`` (rotations of the factors'
rows through the sides' tables: O((n + m) r) work). The forward folds ``diag(s)(W + (α/r)(Ã B̃ᵀ − A₀ B₀ᵀ))``
into the weight (one ``n×r×m`` product in the weight's dtype, fp32 accumulation, and one pass over ``W`` in
fp32, rounded once) and runs one matmul.
The backward reuses the folded weight for ``∂L/∂x`` and needs the four skinny token matmuls of a LoRA
backward, in the activations' dtype (fp32 accumulation, as a LoRA under autocast):
``∂L/∂Ã = (α/r) diag(s) gᵀ (x B̃)`` and ``∂L/∂B̃ = (α/r) xᵀ (g diag(s) Ã)``; closed-form chain rules through
the tables give the gradients of ``A``, ``B`` and the angles. The O((n + m) r) work runs as one pure function
per direction (compiled on CUDA, :mod:`jora_ops._compile`: a handful of fused kernels and one call's host cost).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jora_ops._compile import compile_enabled, run
from jora_ops._fold_common import (
    FoldState,
    output_side_grads,
    rotate_rows,
    rotate_rows_vjp,
    side_tables,
    theta_grad,
)
from jora_ops.cores import CoreSpec
from jora_ops.rotation import rotation_cos_sin

__all__ = ["LowRankFold", "lowrank_fold", "lowrank_fold_backward"]


@dataclass
class LowRankFold(FoldState):
    """What the forward keeps for the backward: the folded weight, the rotation tables and the factors the
    skinny matmuls need, ``s ⊙ Ã`` ``[n, r]`` and ``B̃`` ``[m, r]`` (in the activations' dtype)."""

    scaled_a: torch.Tensor
    rotated_b: torch.Tensor


def _fold(
    weight: torch.Tensor,
    layout: str,
    scale: torch.Tensor | None,
    factor_a: torch.Tensor,
    factor_b: torch.Tensor,
    offset_a: torch.Tensor | None,
    offset_b: torch.Tensor | None,
    core_scale: float,
    pairs_L: torch.Tensor,
    theta_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    rotation_param: str,
    activation_dtype: torch.dtype,
) -> tuple[torch.Tensor, ...]:
    """The folded weight, the six tables, ``s ⊙ Ã`` and ``B̃`` (a pure function: compiled on CUDA).

    The rank-``2r`` product runs in the weight's dtype (for bf16 its factors' rounding stays under the folded
    weight's own); the sum with ``W`` and the scale in fp32.
    """
    n, m = factor_a.shape[0], factor_b.shape[0]
    dtype = torch.promote_types(weight.dtype, torch.float32)
    partner_L, cos_L, sin_L = side_tables(pairs_L, *rotation_cos_sin(theta_L, rotation_param), n, dtype)
    partner_R, cos_R, sin_R = side_tables(pairs_R, *rotation_cos_sin(theta_R, rotation_param), m, dtype)
    rotated_a = rotate_rows(factor_a.to(dtype), partner_L, cos_L, sin_L, transpose=True)
    rotated_b = rotate_rows(factor_b.to(dtype), partner_R, cos_R, sin_R, transpose=True)
    left, right = core_scale * rotated_a, rotated_b
    if offset_a is not None and offset_b is not None:
        left = torch.cat([left, -core_scale * offset_a.to(dtype)], dim=1)
        right = torch.cat([right, offset_b.to(dtype)], dim=1)
    left, right = left.to(weight.dtype), right.to(weight.dtype)
    merged = weight.to(dtype) + ((left @ right.T) if layout == "linear" else (right @ left.T)).to(dtype)
    scaled_a = rotated_a
    if scale is not None:
        s = scale.to(dtype)
        merged = merged * (s[:, None] if layout == "linear" else s[None, :])
        scaled_a = rotated_a * s[:, None]
    return (
        merged.to(weight.dtype), partner_L, cos_L, sin_L, partner_R, cos_R, sin_R, scaled_a.to(activation_dtype),
        rotated_b.to(activation_dtype),
    )  # fmt: skip


def lowrank_fold(
    x: torch.Tensor,
    weight: torch.Tensor,
    layout: str,
    scale: torch.Tensor | None,
    params: tuple[torch.Tensor, ...],
    offset: tuple[torch.Tensor, ...] | None,
    core: CoreSpec,
    pairs_L: torch.Tensor,
    theta_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    rotation_param: str,
) -> LowRankFold:
    """``diag(s)(W + ΔW)`` for the low-rank core (one small product, one weight pass), the rotation tables and
    the skinny matmuls' factors; ``x`` is the input."""
    return LowRankFold(
        *run(
            _fold, compile_enabled(x), weight, layout, scale, params[0], params[1],
            offset[0] if offset else None, offset[1] if offset else None, core.scale, pairs_L, theta_L,
            pairs_R, theta_R, rotation_param, x.dtype,
        )
    )  # fmt: skip


def _factor_grads(
    factor_a: torch.Tensor,
    factor_b: torch.Tensor,
    product_a: torch.Tensor,
    product_b: torch.Tensor,
    scale: torch.Tensor | None,
    core_scale: float,
    partner_L: torch.Tensor,
    cos_L: torch.Tensor,
    sin_L: torch.Tensor,
    partner_R: torch.Tensor,
    cos_R: torch.Tensor,
    sin_R: torch.Tensor,
    pairs_L: torch.Tensor,
    theta_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    rotation_param: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``A``, ``B``, ``θ_L`` and ``θ_R`` (a pure function: compiled on CUDA).

    ``product_a = gᵀ (x B̃)`` and ``product_b = xᵀ (g (s ⊙ Ã))`` are the skinny matmuls' results:
    ``∂L/∂Ã = (α/r) s ⊙ product_a`` and ``∂L/∂B̃ = (α/r) product_b``.
    """
    dtype = cos_L.dtype
    grad_rotated_a = core_scale * product_a.to(dtype)
    if scale is not None:
        grad_rotated_a = grad_rotated_a * scale.to(dtype)[:, None]
    grad_rotated_b = core_scale * product_b.to(dtype)
    grad_a, grad_cos_L, grad_sin_L = rotate_rows_vjp(
        factor_a.to(dtype), grad_rotated_a, partner_L, cos_L, sin_L, transpose=True
    )
    grad_b, grad_cos_R, grad_sin_R = rotate_rows_vjp(
        factor_b.to(dtype), grad_rotated_b, partner_R, cos_R, sin_R, transpose=True
    )
    return (
        grad_a.to(factor_a.dtype),
        grad_b.to(factor_b.dtype),
        theta_grad(pairs_L, theta_L, cos_L, sin_L, grad_cos_L, grad_sin_L, rotation_param),
        theta_grad(pairs_R, theta_R, cos_R, sin_R, grad_cos_R, grad_sin_R, rotation_param),
    )


def lowrank_fold_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    out: torch.Tensor | None,
    fold: LowRankFold,
    bias: torch.Tensor | None,
    layout: str,
    scale: torch.Tensor | None,
    params: tuple[torch.Tensor, ...],
    core: CoreSpec,
    pairs_L: torch.Tensor,
    theta_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    rotation_param: str,
    needs: dict[str, bool],
    stats_in: torch.Tensor | None = None,
    stats_out: torch.Tensor | None = None,
    use_triton: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Gradients of ``y = x (lowrank_fold(…).folded)ᵀ + b`` for ``bias``, ``scale`` (as ``s ⊙ ∂L/∂s``),
    ``A``, ``B`` and the angles, and the selection statistics (``∂L/∂x`` comes from the folded weight, in
    ``jora_ops.fused``)."""
    grads: dict[str, torch.Tensor | None] = dict.fromkeys(
        ("bias", "scale_weighted", "A", "B", "theta_L", "theta_R")
    )
    output_side_grads(grads, grad_out, x, out, bias, scale, needs, stats_in, stats_out, use_triton, 0)
    wanted = [key for key in ("A", "B", "theta_L", "theta_R") if needs[key]]
    if not wanted:
        return grads
    n, m = grad_out.shape[-1], x.shape[-1]
    g = grad_out.reshape(-1, n)
    xs = x.reshape(-1, m)
    # The four skinny token matmuls of a LoRA backward, in the activations' dtype.
    product_a = g.T @ (xs @ fold.rotated_b).to(g.dtype)  # [n, r]
    product_b = xs.T @ (g @ fold.scaled_a.to(g.dtype)).to(xs.dtype)  # [m, r]
    factor_grads = run(
        _factor_grads, compile_enabled(x), params[0], params[1], product_a, product_b, scale, core.scale,
        fold.partner_L, fold.cos_L, fold.sin_L, fold.partner_R, fold.cos_R, fold.sin_R, pairs_L, theta_L,
        pairs_R, theta_R, rotation_param,
    )  # fmt: skip
    for key, value in zip(("A", "B", "theta_L", "theta_R"), factor_grads, strict=True):
        grads[key] = value if key in wanted else None
    return grads
