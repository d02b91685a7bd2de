"""Triton kernels of the lowrank-core fused linear: two kernels and one matmul forward, five matmuls and three
kernels backward.

The math is that of :mod:`jora_ops._lowrank_fold` (read its docstring first): ``ΔW = (α/r)(Ã B̃ᵀ − A₀ B₀ᵀ)``
with the rotated factors ``Ã = R_Lᵀ A`` and ``B̃ = R_Rᵀ B``. The O((n + m) r) bookkeeping, which the torch
path runs as compiled torch ops, runs here in two small kernels, so that a layer costs a few launches of host
time:

- ``_lowrank_factors_kernel`` (forward): per block of coordinates, the row scale ``s`` (with the magnitude's
  normaliser, :func:`jora_ops._sparse_core_triton._forward_scale`), the factors' rows rotated through their
  partners (looked up in the slot tables), and the two factors of the fold's rank-``2r`` update
  ``[(α/r) s ⊙ Ã, −(α/r) s ⊙ A₀]`` and ``[B̃, B₀]`` (zero-padded to a ``tl.dot`` width), plus ``s ⊙ Ã`` and
  ``B̃`` in the activations' dtype for the backward's skinny matmuls.
- ``_lowrank_fold_kernel`` (forward): ``folded = s ⊙ W + left rightᵀ`` per tile, one read and one write of
  ``W`` (the product on the tensor cores for bf16/fp16 weights; exact fp32 for fp32 weights).
- backward: ``∂L/∂x`` through the folded weight, the diag path's token sums and per-coordinate kernel (bias,
  scale and magnitude-logit gradients, statistics; no core there), the four skinny token matmuls of a LoRA
  backward (cuBLAS, the activations' dtype), and ``_lowrank_factor_grads_kernel``: per coordinate the
  factors' gradients (``∂L/∂A = R_L ∂L/∂Ã``) and its share of its slot's angle gradient (two atomic adds on a
  zero per slot: deterministic).

No host-device synchronisation: counts are shapes, everything else stays on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from jora_ops._fold_common import folded_matmul, kept_for_backward
from jora_ops._sparse_core_triton import (
    _NO_SCALE,
    _OER,
    _SLOT_BLOCK,
    _SPLIT_COUNTERS,
    FOLD_NORMALISER_BLOCK,
    _add_angle_grads,
    _as_2d,
    _cast,
    _forward_scale,
    _lookup,
    _next_power_of_2,
    finish_backward,
    forward_scale_buffer,
    grad_input_beside,
    launch_config,
    sums_and_coordinate_grads,
)
from jora_ops._triton_launch import launch
from jora_ops.triton_kernels import host_cdiv as _cdiv

if TYPE_CHECKING:
    from jora_ops.fused import Magnitude

__all__ = ["LOWRANK_FOLD_BLOCKS", "LOWRANK_ROWS", "TRITON_MAX_RANK", "lowrank_linear_triton"]

# ranks up to this run here (larger ones fold with torch ops); coordinates per program of the factor kernels;
# (rows, columns, warps, update columns per tl.dot step) of the fold's tiles per tl.dot precision: "tf32" for
# bf16/fp16 weights (tensor cores; the precision names only fp32 operands), "ieee" for exact fp32 products
# (FMA; in the sm_90 compile check 64x128 tiles or 32-wide steps spilled, these need no stack)
TRITON_MAX_RANK = 128
LOWRANK_ROWS = 32
LOWRANK_FOLD_BLOCKS: dict[str, tuple[int, int, int, int]] = {
    "tf32": (64, 128, 8, 64),
    "ieee": (64, 64, 8, 16),
}
_MIN_DOT_WIDTH = 16  # tl.dot's smallest inner dimension: the rank-2r update is zero-padded to it


@triton.jit
def _rotated_rows(rows, ok, factor_ptr, rank, pairs_ptr, theta_ptr, n_slots, CAYLEY: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):  # fmt: skip
    """Rows ``rows`` of ``Rᵀ factor`` (fp32 ``[ROWS, BLOCK_R]``, ``factor`` is ``[size, rank]``) and the mask."""
    partner, cos, sin, _ = _lookup(rows, pairs_ptr, theta_ptr, n_slots, CAYLEY, BLOCK_S)
    r = tl.arange(0, BLOCK_R)[None, :]
    mask = ok[:, None] & (r < rank)
    own = tl.load(factor_ptr + rows[:, None] * rank + r, mask=mask, other=0.0).to(tl.float32)
    other = tl.load(factor_ptr + partner[:, None] * rank + r, mask=mask, other=0.0).to(tl.float32)
    return cos[:, None] * own - sin[:, None] * other, mask


@triton.jit
def _store_update_rows(update_ptr, rows, ok, first, offset_part, rank, HAS_OFFSET: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """Rows of a factor of the fold's update: ``[first, offset_part, 0…]`` (``BLOCK_K`` wide)."""
    r = tl.arange(0, BLOCK_R)[None, :]
    mask = ok[:, None] & (r < rank)
    base = update_ptr + rows[:, None] * BLOCK_K
    tl.store(base + r, first.to(update_ptr.dtype.element_ty), mask=mask)
    used = rank
    if HAS_OFFSET:
        tl.store(base + rank + r, offset_part.to(update_ptr.dtype.element_ty), mask=mask)
        used = 2 * rank
    pad = tl.arange(0, BLOCK_K)[None, :]
    tl.store(base + pad, tl.zeros((1, BLOCK_K), tl.float32).to(update_ptr.dtype.element_ty),
             mask=ok[:, None] & (pad >= used))  # fmt: skip


@triton.jit
def _lowrank_factors_kernel(
    a_ptr, b_ptr, a0_ptr, b0_ptr, left_ptr, right_ptr, scaled_a_ptr, rotated_b_ptr,
    scale_out_ptr, scale_ptr, logits_ptr, norms_ptr, energy_ptr, temp_ptr,
    pairs_L_ptr, theta_L_ptr, n_L, pairs_R_ptr, theta_R_ptr, n_R, n_out, n_in, rank, core_scale, eps, alpha,
    MODE: tl.constexpr, HAS_OFFSET: tl.constexpr, CAYLEY: tl.constexpr, BLOCK_ROWS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    SPLIT_COUNTERS: tl.constexpr,
):  # fmt: skip
    """Coordinates ``k`` of a block: ``s_k`` (and what the backward needs beside it), ``left[k]`` and
    ``scaled_a[k]`` for ``k < n``, ``right[k]`` and ``rotated_b[k]`` for ``k < m``."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    out_ok = rows < n_out
    in_ok = rows < n_in
    r = tl.arange(0, BLOCK_R)[None, :]
    s = _forward_scale(
        rows, out_ok, scale_out_ptr, scale_ptr, logits_ptr, norms_ptr, energy_ptr, temp_ptr, n_out, eps, alpha,
        MODE, BLOCK_N, SPLIT_COUNTERS,
    )[:, None]  # fmt: skip
    rotated_a, mask_a = _rotated_rows(rows, out_ok, a_ptr, rank, pairs_L_ptr, theta_L_ptr, n_L, CAYLEY, BLOCK_R,
                                      BLOCK_S)  # fmt: skip
    tl.store(scaled_a_ptr + rows[:, None] * rank + r, (s * rotated_a).to(scaled_a_ptr.dtype.element_ty),
             mask=mask_a)  # fmt: skip
    offset_a = rotated_a
    if HAS_OFFSET:
        offset_a = (
            -core_scale
            * s
            * tl.load(a0_ptr + rows[:, None] * rank + r, mask=mask_a, other=0.0).to(tl.float32)
        )
    _store_update_rows(left_ptr, rows, out_ok, core_scale * s * rotated_a, offset_a, rank, HAS_OFFSET, BLOCK_R,
                       BLOCK_K)  # fmt: skip
    rotated_b, mask_b = _rotated_rows(rows, in_ok, b_ptr, rank, pairs_R_ptr, theta_R_ptr, n_R, CAYLEY, BLOCK_R,
                                      BLOCK_S)  # fmt: skip
    tl.store(
        rotated_b_ptr + rows[:, None] * rank + r, rotated_b.to(rotated_b_ptr.dtype.element_ty), mask=mask_b
    )
    offset_b = rotated_b
    if HAS_OFFSET:
        offset_b = tl.load(b0_ptr + rows[:, None] * rank + r, mask=mask_b, other=0.0).to(tl.float32)
    _store_update_rows(right_ptr, rows, in_ok, rotated_b, offset_b, rank, HAS_OFFSET, BLOCK_R, BLOCK_K)


@triton.jit
def _lowrank_fold_kernel(
    w_ptr, folded_ptr, left_ptr, right_ptr, s_ptr, n_out, n_in, stride_row, stride_col,
    HAS_SCALE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    K_STEP: tl.constexpr, INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
):  # fmt: skip
    """``folded = s ⊙ W + left rightᵀ`` on a ``[BLOCK_M, BLOCK_N]`` tile (logical ``[n, m]``; any strides); the
    update's ``BLOCK_K`` columns in steps of ``K_STEP``."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_out
    col_ok = cols < n_in
    update = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for start in tl.static_range(0, BLOCK_K, K_STEP):
        k = start + tl.arange(0, K_STEP)[None, :]
        left = tl.load(left_ptr + rows[:, None] * BLOCK_K + k, mask=row_ok[:, None], other=0.0)
        right = tl.load(right_ptr + cols[:, None] * BLOCK_K + k, mask=col_ok[:, None], other=0.0)
        if DOT_IN_FP32:  # the interpreter multiplies bf16 operands as their raw bits (numpy has no bfloat16)
            left, right = left.to(tl.float32), right.to(tl.float32)
        update = tl.dot(left, tl.trans(right), acc=update, input_precision=INPUT_PRECISION)
    mask = row_ok[:, None] & col_ok[None, :]
    offsets = rows[:, None].to(tl.int64) * stride_row + cols[None, :].to(tl.int64) * stride_col
    w = tl.load(w_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        w = w * tl.load(s_ptr + rows, mask=row_ok, other=1.0).to(tl.float32)[:, None]
    tl.store(folded_ptr + offsets, (w + update).to(folded_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _factor_rows_grads(rows, ok, product_ptr, factor_ptr, s_ptr, grad_ptr, pairs_ptr, theta_ptr, n_slots,
                       theta_grad_ptr, rank, core_scale, HAS_SCALE: tl.constexpr, THETA_GRAD: tl.constexpr,
                       CAYLEY: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):  # fmt: skip
    """Rows of ``∂L/∂factor = R G`` with ``G = (α/r) s ⊙ product`` (``= ∂L/∂(Rᵀ factor)``), and the rows'
    shares of their slots' angle gradients."""
    partner, cos, sin, entry = _lookup(rows, pairs_ptr, theta_ptr, n_slots, CAYLEY, BLOCK_S)
    r = tl.arange(0, BLOCK_R)[None, :]
    mask = ok[:, None] & (r < rank)
    own = tl.load(product_ptr + rows[:, None] * rank + r, mask=mask, other=0.0).to(tl.float32) * core_scale
    other = (
        tl.load(product_ptr + partner[:, None] * rank + r, mask=mask, other=0.0).to(tl.float32) * core_scale
    )
    if HAS_SCALE:
        own *= tl.load(s_ptr + rows, mask=ok, other=1.0).to(tl.float32)[:, None]
        other *= tl.load(s_ptr + partner, mask=ok, other=1.0).to(tl.float32)[:, None]
    tl.store(grad_ptr + rows[:, None] * rank + r, cos[:, None] * own + sin[:, None] * other, mask=mask)
    if THETA_GRAD:  # (Rᵀ f)_k = cos_k f_k − sin_k f_partner: ∂/∂cos_k = G_k·f_k, ∂/∂sin_k = −G_k·f_partner
        f_own = tl.load(factor_ptr + rows[:, None] * rank + r, mask=mask, other=0.0).to(tl.float32)
        f_other = tl.load(factor_ptr + partner[:, None] * rank + r, mask=mask, other=0.0).to(tl.float32)
        grad_cos = tl.sum(own * f_own, 1)
        grad_sin = -tl.sum(own * f_other, 1)
        _add_angle_grads(theta_grad_ptr, theta_ptr, entry, ok, cos, sin, grad_cos, grad_sin, CAYLEY)


@triton.jit
def _lowrank_factor_grads_kernel(
    product_a_ptr, product_b_ptr, a_ptr, b_ptr, s_ptr, grad_a_ptr, grad_b_ptr, pairs_L_ptr, theta_L_ptr, n_L,
    pairs_R_ptr, theta_R_ptr, n_R, theta_L_grad_ptr, theta_R_grad_ptr, n_out, n_in, rank, core_scale,
    HAS_SCALE: tl.constexpr, THETA_L_GRAD: tl.constexpr, THETA_R_GRAD: tl.constexpr, CAYLEY: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Coordinates ``k`` of a block: ``∂L/∂A[k]`` (``k < n``) and ``∂L/∂B[k]`` (``k < m``) from
    ``product_a = gᵀ (x B̃)`` and ``product_b = xᵀ (g (s ⊙ Ã))``, and the angle gradients' shares (the angle
    gradients are zero at the launch)."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    _factor_rows_grads(rows, rows < n_out, product_a_ptr, a_ptr, s_ptr, grad_a_ptr, pairs_L_ptr, theta_L_ptr, n_L,
                       theta_L_grad_ptr, rank, core_scale, HAS_SCALE, THETA_L_GRAD, CAYLEY, BLOCK_R,
                       BLOCK_S)  # fmt: skip
    _factor_rows_grads(rows, rows < n_in, product_b_ptr, b_ptr, s_ptr, grad_b_ptr, pairs_R_ptr, theta_R_ptr, n_R,
                       theta_R_grad_ptr, rank, core_scale, False, THETA_R_GRAD, CAYLEY, BLOCK_R,
                       BLOCK_S)  # fmt: skip


def _fold(
    config: dict[str, Any],
    dtype: torch.dtype,
    weight: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    scale: torch.Tensor | None,
) -> torch.Tensor:
    """The folded weight ``s ⊙ W + left rightᵀ`` in ``dtype`` (a wider weight is read in its own dtype);
    ``left``/``right`` from :func:`_lowrank_factors_kernel`, ``scale`` its ``s`` (or the given scale)."""
    n, m = config["n"], config["m"]
    linear = config["layout"] == "linear"
    weight = weight.contiguous()
    folded = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    precision = "ieee" if dtype == torch.float32 else "tf32"
    block_m, block_n, warps, k_step = LOWRANK_FOLD_BLOCKS[precision]
    block_k = left.shape[1]
    launch(
        _lowrank_fold_kernel, (_cdiv(n, block_m), _cdiv(m, block_n)),
        weight, folded, left, right, scale, n, m, m if linear else 1, 1 if linear else n,
        HAS_SCALE=config["mode"] != _NO_SCALE, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        K_STEP=min(block_k, k_step), INPUT_PRECISION=precision, DOT_IN_FP32=not weight.is_cuda, num_warps=warps,
    )  # fmt: skip
    return folded


class _LowRankLinearTriton(torch.autograd.Function):
    """``y = x (diag(s)(W + ΔW))ᵀ + b`` for the lowrank core; gradients for x, bias, scale/logits, θ, A, B."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        config: dict[str, Any],
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        theta_R: torch.Tensor,
        theta_L: torch.Tensor,
        scale_or_logits: torch.Tensor | None,
        factor_a: torch.Tensor,
        factor_b: torch.Tensor,
    ) -> torch.Tensor:
        mode, n, m, rank = config["mode"], config["n"], config["m"], config["rank"]
        # the weight stays as given (the folds read it contiguous): saved as it is, maybe refolded from
        theta_L, theta_R = theta_L.contiguous(), theta_R.contiguous()
        factor_a, factor_b = factor_a.contiguous(), factor_b.contiguous()
        if scale_or_logits is not None:
            scale_or_logits = scale_or_logits.contiguous()
        offset = config["offset"]
        scale = forward_scale_buffer(mode, n, scale_or_logits)
        block_k = max(_MIN_DOT_WIDTH, _next_power_of_2(rank * (2 if offset is not None else 1)))
        # the update and the folded weight in x's dtype (the weight may be wider: read in its own)
        left = torch.empty(n, block_k, dtype=x.dtype, device=x.device)
        right = torch.empty(m, block_k, dtype=x.dtype, device=x.device)
        scaled_a = torch.empty(n, rank, dtype=x.dtype, device=x.device)
        rotated_b = torch.empty(m, rank, dtype=x.dtype, device=x.device)
        pairs_L, pairs_R = config["pairs_L"], config["pairs_R"]
        block_r = _next_power_of_2(rank)
        launch(
            _lowrank_factors_kernel, (_cdiv(max(n, m), LOWRANK_ROWS),),
            factor_a, factor_b, offset[0] if offset is not None else None,
            offset[1] if offset is not None else None, left, right, scaled_a, rotated_b, scale, scale_or_logits,
            scale_or_logits if mode >= _OER else None, config["norms"], config["energy"], config["temperature"],
            pairs_L, theta_L, pairs_L.shape[0], pairs_R, theta_R, pairs_R.shape[0], n, m, rank,
            config["core_scale"], config["eps"], config["alpha"],
            MODE=mode, HAS_OFFSET=offset is not None, CAYLEY=config["cayley"], BLOCK_ROWS=LOWRANK_ROWS,
            BLOCK_R=block_r, BLOCK_K=block_k, BLOCK_N=min(FOLD_NORMALISER_BLOCK, _next_power_of_2(n)),
            BLOCK_S=_SLOT_BLOCK, SPLIT_COUNTERS=_SPLIT_COUNTERS,
        )  # fmt: skip
        folded = _fold(config, x.dtype, weight, left, right, scale)
        out = folded_matmul(x, folded, bias, config["layout"])
        ctx.config = config
        needs = ctx.needs_input_grad
        keep_out, keep_folded = kept_for_backward(mode != _NO_SCALE and needs[6], needs[1])
        # the update's factors are O((n + m) r): kept to fold again when the folded weight is not
        ctx.save_for_backward(
            x, weight, folded if keep_folded else None, None if keep_folded else left,
            None if keep_folded else right, bias, theta_R, theta_L, scale_or_logits,
            scale if mode >= _OER else None, out if keep_out else None, scaled_a, rotated_b, factor_a, factor_b,
        )  # fmt: skip
        return out

    @staticmethod
    @once_differentiable  # a double backward raises instead of returning wrong second-order gradients
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        config = ctx.config
        x, weight, folded, left, right, *vectors = ctx.saved_tensors
        bias, theta_R, theta_L, scale_or_logits, inner_scale, out, scaled_a, rotated_b, a, b = vectors
        needs = ctx.needs_input_grad
        mode, n, m, rank = config["mode"], config["n"], config["m"], config["rank"]
        scale = inner_scale if mode >= _OER else scale_or_logits
        if needs[1] and folded is None:  # not kept by the forward: fold again (bit for bit the forward's)
            folded = _fold(config, x.dtype, weight, left, right, scale)
        pairs_L, pairs_R = config["pairs_L"], config["pairs_R"]
        linear = config["layout"] == "linear"
        stats_in, stats_out = config["stats_in"], config["stats_out"]
        scale_grad = mode != _NO_SCALE and needs[6]
        factors = needs[7] or needs[8] or needs[4] or needs[5]
        g = _as_2d(grad_out, n)
        xs = _as_2d(x, m)
        n_L, n_R = pairs_L.shape[0], pairs_R.shape[0]
        # one fp32 workspace: the angle gradients first (the token sums zero them), the bias, scale and logits
        # gradients, the factors' gradients
        sizes = (n_L, n_R, n, n, n, n * rank, m * rank)
        workspace = torch.empty(sum(sizes), dtype=torch.float32, device=x.device)
        theta_L_grad, theta_R_grad, bias_grad, scale_grad_buf, logits_grad, grad_a, grad_b = (
            torch.split_with_sizes(workspace, sizes)
        )
        grads = (bias_grad, theta_R_grad, theta_L_grad, scale_grad_buf, logits_grad)
        grad_x, fork = grad_input_beside(grad_out, folded, linear, x, needs[1], max(n, m))
        output_side = scale_grad or needs[3] or stats_in is not None or stats_out is not None
        if output_side:
            sums_and_coordinate_grads(
                config, needs, g, _as_2d(out, n) if out is not None else None, xs, theta_R, theta_L,
                scale_or_logits, inner_scale, bias, grads, (workspace, n_L + n_R), None,
            )  # fmt: skip
        elif factors:  # the angle gradients accumulate from zero
            workspace[: n_L + n_R].zero_()
        if factors:  # the four skinny token matmuls of a LoRA backward, in the activations' dtype
            product_a = g.T @ _cast(xs @ rotated_b, g.dtype)  # [n, r]
            product_b = xs.T @ _cast(g @ _cast(scaled_a, g.dtype), xs.dtype)  # [m, r]
            launch(
                _lowrank_factor_grads_kernel, (_cdiv(max(n, m), LOWRANK_ROWS),),
                product_a, product_b, a, b, scale, grad_a, grad_b, pairs_L, theta_L, n_L, pairs_R, theta_R, n_R,
                theta_L_grad, theta_R_grad, n, m, rank, config["core_scale"],
                HAS_SCALE=mode != _NO_SCALE, THETA_L_GRAD=needs[5], THETA_R_GRAD=needs[4], CAYLEY=config["cayley"],
                BLOCK_ROWS=LOWRANK_ROWS, BLOCK_R=_next_power_of_2(rank), BLOCK_S=_SLOT_BLOCK,
            )  # fmt: skip
        shared = finish_backward(
            config, needs, fork, grad_x, bias, theta_R, theta_L, scale_or_logits, grads
        )  # fmt: skip
        return (
            *shared,
            _cast(grad_a.view(n, rank), a.dtype) if needs[7] else None,
            _cast(grad_b.view(m, rank), b.dtype) if needs[8] else None,
        )


def lowrank_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    layout: str,
    core_values: tuple[torch.Tensor, ...],
    core_offset: tuple[torch.Tensor, ...] | None,
    core_scale: float,
    pairs_L: torch.Tensor,
    theta_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    scale: torch.Tensor | None,
    magnitude: Magnitude | None,
    rotation_param: str,
    stats_in: torch.Tensor | None,
    stats_out: torch.Tensor | None,
    on_backward: Callable[[], None] | None,
) -> torch.Tensor:
    """The lowrank-core fused linear through the Triton kernels (arguments checked by ``jora_linear``).

    ``core_values`` is ``(A, B)`` with ``A`` ``[n, r]``, ``B`` ``[m, r]``; ``core_offset`` the same form;
    ``core_scale`` is ``α / r`` and ``r`` at most :data:`TRITON_MAX_RANK`. Pair tables may hold empty ``-1``
    slots (their angles get a zero gradient).
    """
    factor_a, factor_b = core_values
    n, rank = factor_a.shape
    if not 1 <= rank <= TRITON_MAX_RANK:
        raise ValueError(f"the rank must be in [1, {TRITON_MAX_RANK}] here, got {rank}")
    scale_slot, config = launch_config(
        x,
        layout,
        pairs_L,
        pairs_R,
        core_offset,
        scale,
        magnitude,
        rotation_param,
        stats_in,
        stats_out,
        on_backward,
    )
    config |= {"n": n, "m": factor_b.shape[0], "rank": rank, "core_scale": float(core_scale)}
    return _LowRankLinearTriton.apply(
        config, x, weight, bias, theta_R, theta_L, scale_slot, factor_a, factor_b
    )
