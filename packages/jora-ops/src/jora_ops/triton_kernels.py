"""Triton kernels (optional extra ``jora-ops[triton]``).

The kernels run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests them; set the
variable before this module is imported). They must match the torch reference of :mod:`jora_ops.rotation`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from jora_ops.rotation import rotation_cos_sin

__all__ = ["apply_rotations_triton", "column_sums_triton"]


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
        _rotate_pairs_kernel[grid](
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


@triton.jit
def _column_sums_kernel(
    g_ptr,
    y_ptr,
    x_ptr,
    out_ptr,
    n_rows,
    n_out,
    n_in,
    n_diag,
    stride_g,
    stride_y,
    stride_x,
    rows_per_program,
    HAS_Y: tl.constexpr,
    HAS_X: tl.constexpr,
    STATS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    """Partial token sums of one row split: Σg·y, Σg, Σg·x (first n_diag), Σg², Σx² per column (fp32)."""
    split = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    out_ok = cols < n_out
    in_ok = cols < n_in
    diag_ok = cols < n_diag
    acc_gy = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    acc_g = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    acc_gx = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    acc_gg = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    acc_xx = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    row_start = split * rows_per_program
    for offset in range(0, rows_per_program, BLOCK_ROWS):
        rows = row_start + offset + tl.arange(0, BLOCK_ROWS)
        row_ok = (rows < n_rows) & (rows < row_start + rows_per_program)
        row_base = rows[:, None].to(tl.int64)
        g = tl.load(
            g_ptr + row_base * stride_g + cols[None, :], mask=row_ok[:, None] & out_ok[None, :], other=0.0
        )
        g = g.to(tl.float32)
        acc_g += g
        if HAS_Y:
            y = tl.load(
                y_ptr + row_base * stride_y + cols[None, :], mask=row_ok[:, None] & out_ok[None, :], other=0.0
            )
            acc_gy += g * y.to(tl.float32)
        if HAS_X or STATS:
            x = tl.load(
                x_ptr + row_base * stride_x + cols[None, :], mask=row_ok[:, None] & in_ok[None, :], other=0.0
            )
            x = x.to(tl.float32)
            if HAS_X:
                acc_gx += tl.where(diag_ok[None, :], g * x, 0.0)
            if STATS:
                acc_xx += x * x
        if STATS:
            acc_gg += g * g
    width = tl.maximum(n_out, n_in)
    base = out_ptr + split * 5 * width
    tl.store(base + cols, tl.sum(acc_gy, 0), mask=out_ok)
    tl.store(base + width + cols, tl.sum(acc_g, 0), mask=out_ok)
    tl.store(base + 2 * width + cols, tl.sum(acc_gx, 0), mask=diag_ok)
    tl.store(base + 3 * width + cols, tl.sum(acc_gg, 0), mask=out_ok)
    tl.store(base + 4 * width + cols, tl.sum(acc_xx, 0), mask=in_ok)


def column_sums_triton(
    grad: torch.Tensor, out: torch.Tensor | None, x: torch.Tensor | None, n_diag: int, stats: bool
) -> dict[str, torch.Tensor]:
    """Token sums over 2-D ``grad`` [T, n], ``out`` [T, n], ``x`` [T, m] in one pass (fp32 results).

    Returns ``g_y`` = Σg·out, ``g`` = Σg, ``g_x`` = Σg·x over the first ``n_diag`` columns, and with
    ``stats`` also ``g_g`` = Σg² and ``x_x`` = Σx². Row splits are summed afterwards (deterministic).
    """
    n_rows, n_out = grad.shape
    n_in = x.shape[1] if x is not None else 0
    width = max(n_out, n_in)
    block_cols, block_rows = 128, 16
    splits = max(1, min(64, host_cdiv(n_rows, 256)))
    rows_per_program = host_cdiv(host_cdiv(n_rows, splits), block_rows) * block_rows
    splits = host_cdiv(n_rows, rows_per_program) if n_rows else 1
    partial = torch.zeros(splits, 5, width, device=grad.device, dtype=torch.float32)
    grad = grad.contiguous()
    y = out.contiguous() if out is not None else grad
    xs = x.contiguous() if x is not None else grad
    grid = (host_cdiv(width, block_cols), splits)
    _column_sums_kernel[grid](
        grad,
        y,
        xs,
        partial,
        n_rows,
        n_out,
        n_in,
        n_diag,
        grad.stride(0),
        y.stride(0),
        xs.stride(0),
        rows_per_program,
        HAS_Y=out is not None,
        HAS_X=x is not None and n_diag > 0,
        STATS=stats and x is not None,
        BLOCK_ROWS=block_rows,
        BLOCK_COLS=block_cols,
    )
    total = partial.sum(0)
    return {
        "g_y": total[0, :n_out],
        "g": total[1, :n_out],
        "g_x": total[2, :n_diag],
        "g_g": total[3, :n_out],
        "x_x": total[4, :n_in],
    }
