"""Triton kernels (optional extra ``jora-ops[triton]``).

The kernels run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests them; set the
variable before this module is imported). They must match the torch reference of :mod:`jora_ops.rotation`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from jora_ops._triton_launch import launch
from jora_ops.rotation import rotation_cos_sin

__all__ = ["apply_rotations_triton", "host_cdiv"]


def host_cdiv(a: int, b: int) -> int:
    """Host-side ceiling division (``triton.cdiv`` is a constexpr function, slow to call from Python)."""
    return -(-a // b)


@triton.jit
def _rotate_pairs_kernel(
    x_ptr,
    out_ptr,
    idx_i_ptr,
    idx_j_ptr,
    cos_ptr,
    sin_ptr,
    n_rows,
    n_pairs,
    row_stride,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_PAIRS: tl.constexpr,
):
    """out[r, i_p] = c x[r, i_p] + s x[r, j_p]; out[r, j_p] = c x[r, j_p] − s x[r, i_p] for active pairs."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    slots = tl.program_id(1) * BLOCK_PAIRS + tl.arange(0, BLOCK_PAIRS)
    slot_ok = slots < n_pairs
    idx_i = tl.load(idx_i_ptr + slots, mask=slot_ok, other=-1)
    idx_j = tl.load(idx_j_ptr + slots, mask=slot_ok, other=-1)
    cos = tl.load(cos_ptr + slots, mask=slot_ok, other=1.0)
    sin = tl.load(sin_ptr + slots, mask=slot_ok, other=0.0)
    active = slot_ok & (idx_i >= 0)
    mask = (rows[:, None] < n_rows) & active[None, :]
    base = rows[:, None].to(tl.int64) * row_stride
    off_i = base + idx_i[None, :]
    off_j = base + idx_j[None, :]
    xi = tl.load(x_ptr + off_i, mask=mask, other=0.0).to(tl.float32)
    xj = tl.load(x_ptr + off_j, mask=mask, other=0.0).to(tl.float32)
    new_i = cos[None, :] * xi + sin[None, :] * xj
    new_j = cos[None, :] * xj - sin[None, :] * xi
    tl.store(out_ptr + off_i, new_i.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + off_j, new_j.to(out_ptr.dtype.element_ty), mask=mask)


def _rotate(x: torch.Tensor, pairs: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    dim = x.shape[-1]
    rows = x.reshape(-1, dim).contiguous()
    out = rows.clone()
    n_rows, n_pairs = rows.shape[0], pairs.shape[0]
    if n_rows and n_pairs:
        idx_i = pairs[:, 0].contiguous().to(torch.int64)
        idx_j = pairs[:, 1].contiguous().to(torch.int64)
        block_rows, block_pairs = 32, 32
        grid = (host_cdiv(n_rows, block_rows), host_cdiv(n_pairs, block_pairs))
        launch(
            _rotate_pairs_kernel,
            grid,
            rows,
            out,
            idx_i,
            idx_j,
            cos.contiguous(),
            sin.contiguous(),
            n_rows,
            n_pairs,
            rows.stride(0),
            BLOCK_ROWS=block_rows,
            BLOCK_PAIRS=block_pairs,
        )
    return out.reshape(x.shape)


class _ApplyRotationsTriton(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        pairs: torch.Tensor,
        thetas: torch.Tensor,
        rotation_param: str,
        transpose: bool,
    ) -> torch.Tensor:
        cos, sin = rotation_cos_sin(thetas, rotation_param)
        ctx.save_for_backward(x, pairs, thetas)
        ctx.rotation_param = rotation_param
        ctx.transpose = transpose
        return _rotate(x, pairs, cos, -sin if transpose else sin)

    @staticmethod
    @once_differentiable  # a double backward raises instead of returning wrong second-order gradients
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, pairs, thetas = ctx.saved_tensors
        grad_x = grad_theta = None
        with torch.enable_grad():
            theta = thetas.detach().requires_grad_(ctx.needs_input_grad[2])
            cos, sin = rotation_cos_sin(theta, ctx.rotation_param)
            sin = -sin if ctx.transpose else sin
        if ctx.needs_input_grad[0]:
            grad_x = _rotate(grad_out, pairs, cos.detach(), -sin.detach())  # Rᵀ g
        if ctx.needs_input_grad[2]:
            active = pairs[:, 0] >= 0
            idx_i = pairs[:, 0].clamp_min(0).long()
            idx_j = pairs[:, 1].clamp_min(0).long()
            dim = x.shape[-1]
            xs, gs = x.reshape(-1, dim).float(), grad_out.reshape(-1, dim).float()
            xi, xj = xs.index_select(1, idx_i), xs.index_select(1, idx_j)
            gi, gj = gs.index_select(1, idx_i), gs.index_select(1, idx_j)
            grad_cos = torch.where(active, (gi * xi + gj * xj).sum(0), 0.0)
            grad_sin = torch.where(active, (gi * xj - gj * xi).sum(0), 0.0)
            (grad_theta,) = torch.autograd.grad((cos, sin), (theta,), (grad_cos, grad_sin))
            grad_theta = grad_theta.to(thetas.dtype)
        return grad_x, None, grad_theta, None, None


def apply_rotations_triton(
    x: torch.Tensor, pairs: torch.Tensor, thetas: torch.Tensor, *, rotation_param: str, transpose: bool
) -> torch.Tensor:
    """Triton implementation of :func:`jora_ops.rotation.apply_rotations` (same contract)."""
    return _ApplyRotationsTriton.apply(x, pairs, thetas, rotation_param, transpose)
