"""The low-rank-core fast path of the fused linear: a LoRA with rotated factors, folded into the weight.

``R_Lᵀ (α/r) A Bᵀ R_R = (α/r) Ã B̃ᵀ`` with ``Ã = R_Lᵀ A`` and ``B̃ = R_Rᵀ B`` (rotations of the factors'
rows through the sides' tables: O((n + m) r) work). The forward folds ``diag(s)(W + (α/r)(Ã B̃ᵀ − A₀ B₀ᵀ))``
into the weight (one ``n×r×m`` product in fp32 and one pass over ``W``, rounded once) and runs one matmul.
The backward reuses the folded weight for ``∂L/∂x`` and needs the four skinny token matmuls of a LoRA
backward, in the activations' dtype (fp32 accumulation, as a LoRA under autocast):
``∂L/∂Ã = (α/r) diag(s) gᵀ (x B̃)`` and ``∂L/∂B̃ = (α/r) xᵀ (g diag(s) Ã)``; closed-form chain rules through
the tables give the gradients of ``A``, ``B`` and the angles. The O(n + m) work runs as two pure functions
(compiled on CUDA, :mod:`jora_ops._compile`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jora_ops._compile import compile_enabled, run
from jora_ops._fold_common import (
    FoldState,
    folded_input_grad,
    folded_matmul,
    output_side_grads,
    rotate_rows,
    rotate_rows_vjp,
    side_tables,
    theta_grad,
)
from jora_ops.cores import CoreSpec
from jora_ops.rotation import rotation_cos_sin

__all__ = ["LowRankFold", "lowrank_fold_backward", "lowrank_fold_forward"]


@dataclass
class LowRankFold(FoldState):
    """What the forward keeps for the backward: the folded weight, the rotation tables and the factors the
    skinny matmuls need, ``s ⊙ Ã`` ``[n, r]`` and ``B̃`` ``[m, r]`` (fp32)."""

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
) -> tuple[torch.Tensor, ...]:
    """The folded weight, the six tables, ``s ⊙ Ã`` and ``B̃`` (a pure function: compiled on CUDA)."""
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
    s = scale.to(dtype) if scale is not None else torch.ones(n, dtype=dtype, device=weight.device)
    if layout == "linear":
        merged = (weight.to(dtype) + left @ right.T) * s[:, None]
    else:
        merged = (weight.to(dtype) + right @ left.T) * s[None, :]
    scaled_a = rotated_a * s[:, None]
    return merged.to(weight.dtype), partner_L, cos_L, sin_L, partner_R, cos_R, sin_R, scaled_a, rotated_b


def lowrank_fold_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
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
) -> tuple[torch.Tensor, LowRankFold]:
    """``y = x (diag(s)(W + ΔW))ᵀ + b`` for the low-rank core: one small product, one token matmul."""
    fold = LowRankFold(
        *run(
            _fold, compile_enabled(x), weight, layout, scale, params[0], params[1],
            offset[0] if offset else None, offset[1] if offset else None, core.scale, pairs_L, theta_L,
            pairs_R, theta_R, rotation_param,
        )
    )  # fmt: skip
    return folded_matmul(x, fold.folded, bias, layout), fold


def _factor_grads(
    factor: torch.Tensor,
    grad_product: torch.Tensor,
    row_scale: torch.Tensor | None,
    core_scale: float,
    partner: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pairs: torch.Tensor,
    theta: torch.Tensor,
    rotation_param: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of a factor and its side's angles (a pure function: compiled on CUDA).

    ``∂L/∂(Rᵀ factor) = core_scale · row_scale ⊙ grad_product``, with ``grad_product`` the skinny matmul's
    result (``gᵀ (x B̃)`` or ``xᵀ (g (s ⊙ Ã))``).
    """
    dtype = cos.dtype
    grad_rotated = core_scale * grad_product.to(dtype)
    if row_scale is not None:
        grad_rotated = grad_rotated * row_scale.to(dtype)[:, None]
    grad_factor, grad_cos, grad_sin = rotate_rows_vjp(
        factor.to(dtype), grad_rotated, partner, cos, sin, transpose=True
    )
    grad_theta = theta_grad(pairs, theta, cos, sin, grad_cos, grad_sin, rotation_param)
    return grad_factor.to(factor.dtype), grad_theta


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
    """Gradients of :func:`lowrank_fold_forward` (``x``, ``bias``, ``scale``, ``A``, ``B``, angles) and the
    selection statistics."""
    grads: dict[str, torch.Tensor | None] = dict.fromkeys(
        ("x", "bias", "scale", "A", "B", "theta_L", "theta_R")
    )
    if needs["x"]:
        grads["x"] = folded_input_grad(grad_out, fold.folded, layout, x.dtype)
    output_side_grads(grads, grad_out, x, out, bias, scale, needs, stats_in, stats_out, use_triton, 0)
    n, m = grad_out.shape[-1], x.shape[-1]
    g = grad_out.reshape(-1, n)
    xs = x.reshape(-1, m)
    compiled = compile_enabled(x)
    # Each side: two skinny matmuls in the activations' dtype, then the closed-form chain rule.
    if needs["A"] or needs["theta_L"]:
        x_b = (xs @ fold.rotated_b.to(xs.dtype)).to(g.dtype)  # [T, r]
        grads["A"], grads["theta_L"] = run(
            _factor_grads, compiled, params[0], g.T @ x_b, scale, core.scale, fold.partner_L, fold.cos_L,
            fold.sin_L, pairs_L, theta_L, rotation_param,
        )  # fmt: skip
    if needs["B"] or needs["theta_R"]:
        g_a = (g @ fold.scaled_a.to(g.dtype)).to(xs.dtype)  # [T, r]
        grads["B"], grads["theta_R"] = run(
            _factor_grads, compiled, params[1], xs.T @ g_a, None, core.scale, fold.partner_R, fold.cos_R,
            fold.sin_R, pairs_R, theta_R, rotation_param,
        )  # fmt: skip
    for key in ("A", "B", "theta_L", "theta_R"):
        if not needs[key]:
            grads[key] = None
    return grads
