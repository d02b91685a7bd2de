"""The low-rank-core fast path of the fused linear: a LoRA with rotated factors, folded into the weight.

``R_Lᵀ (α/r) A Bᵀ R_R = (α/r) Ã B̃ᵀ`` with ``Ã = R_Lᵀ A`` and ``B̃ = R_Rᵀ B`` (rotations of the factors'
rows: O((n + m) r) work). The forward folds ``diag(s)(W + (α/r)(Ã B̃ᵀ − A₀ B₀ᵀ))`` into the weight (an
``n×r×m`` product, negligible next to the token matmul) and runs one matmul. The backward reuses the folded
weight for ``∂L/∂x`` and needs the four skinny token matmuls a LoRA backward needs:
``∂L/∂Ã = (α/r) diag(s) gᵀ (x B̃)`` and ``∂L/∂B̃ = (α/r) xᵀ (g diag(s) Ã)``; autograd over the small
factor rotations gives the gradients of A, B and the angles.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jora_ops._fold_common import folded_input_grad, folded_matmul, output_side_grads
from jora_ops.cores import CoreSpec
from jora_ops.rotation import apply_rotations_reference, rotation_cos_sin

__all__ = ["LowRankFold", "lowrank_fold_backward", "lowrank_fold_forward"]


@dataclass
class LowRankFold:
    """What the forward keeps for the backward: the folded weight."""

    folded: torch.Tensor


def _rotated_factors(
    factor_a: torch.Tensor,
    factor_b: torch.Tensor,
    pairs_L: torch.Tensor,
    theta_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    rotation_param: str,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R_Lᵀ A, R_Rᵀ B)`` in ``dtype``: the rotations act on the factors' rows (differentiable)."""
    factor_a, factor_b = factor_a.to(dtype), factor_b.to(dtype)
    cos_L, sin_L = rotation_cos_sin(theta_L, rotation_param)
    cos_R, sin_R = rotation_cos_sin(theta_R, rotation_param)
    rotated_a = apply_rotations_reference(factor_a.T, pairs_L, cos_L, sin_L, transpose=True).T
    rotated_b = apply_rotations_reference(factor_b.T, pairs_R, cos_R, sin_R, transpose=True).T
    return rotated_a, rotated_b


def _fold(
    weight: torch.Tensor,
    layout: str,
    scale: torch.Tensor | None,
    rotated_a: torch.Tensor,
    rotated_b: torch.Tensor,
    offset: tuple[torch.Tensor, torch.Tensor] | None,
    core_scale: float,
) -> torch.Tensor:
    compute_dtype = torch.promote_types(weight.dtype, torch.float32)
    delta = rotated_a.to(compute_dtype) @ rotated_b.to(compute_dtype).T
    if offset is not None:
        delta = delta - offset[0].to(compute_dtype) @ offset[1].to(compute_dtype).T
    merged = weight.to(compute_dtype) + core_scale * (delta if layout == "linear" else delta.T)
    if scale is not None:
        s = scale.to(compute_dtype)
        merged = merged * (s[:, None] if layout == "linear" else s[None, :])
    return merged.to(weight.dtype)


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
    compute_dtype = torch.promote_types(weight.dtype, torch.float32)
    rotated_a, rotated_b = _rotated_factors(
        params[0], params[1], pairs_L, theta_L, pairs_R, theta_R, rotation_param, compute_dtype
    )
    folded = _fold(
        weight, layout, scale, rotated_a, rotated_b, (offset[0], offset[1]) if offset else None, core.scale
    )
    return folded_matmul(x, folded, bias, layout), LowRankFold(folded)


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
    factors = (params[0], params[1])
    core_scale = core.scale
    wanted = [k for k in ("A", "B", "theta_L", "theta_R") if needs[k]]
    if not wanted:
        return grads
    leaves = {"A": factors[0], "B": factors[1], "theta_L": theta_L, "theta_R": theta_R}
    with torch.enable_grad():
        inputs = {k: v.detach().requires_grad_(k in wanted) for k, v in leaves.items()}
        rotated_a, rotated_b = _rotated_factors(
            inputs["A"],
            inputs["B"],
            pairs_L,
            inputs["theta_L"],
            pairs_R,
            inputs["theta_R"],
            rotation_param,
            torch.promote_types(fold.folded.dtype, torch.float32),
        )
    compute_dtype = rotated_a.dtype
    n, m = grad_out.shape[-1], x.shape[-1]
    g = grad_out.reshape(-1, n).to(compute_dtype)
    xs = x.reshape(-1, m).to(compute_dtype)
    s = scale.to(compute_dtype) if scale is not None else None
    a_scaled = rotated_a.detach() * s[:, None] if s is not None else rotated_a.detach()
    grad_a = g.T @ (xs @ rotated_b.detach())  # [n, r]
    if s is not None:
        grad_a = grad_a * s[:, None]
    grad_b = xs.T @ (g @ a_scaled)  # [m, r]
    results = torch.autograd.grad(
        (rotated_a, rotated_b),
        [inputs[k] for k in wanted],
        (core_scale * grad_a, core_scale * grad_b),
        allow_unused=True,
    )
    for key, value in zip(wanted, results, strict=True):
        grads[key] = (value if value is not None else torch.zeros_like(leaves[key])).to(leaves[key].dtype)
    return grads
