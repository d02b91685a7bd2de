"""Triton kernels of the diag-core fused linear: one kernel and one matmul forward, one matmul and three kernels backward.

The math is that of :mod:`jora_ops._diag_fold` (read its docstring first): ``ΔW`` of the diag core has at most
four non-zeros per row, so the forward folds ``diag(s)(W + ΔW)`` into the weight and runs one cuBLAS matmul,
and the backward needs one more matmul (``∂L/∂x``) and token sums only. Here the O(n + m) bookkeeping runs
inside the kernels instead of as dozens of small torch ops:

- ``_fold_kernel`` (forward): each program takes a block of rows, computes their scale ``s`` (the OER/ECD
  normaliser is a reduction over all rows, recomputed per program from L2 instead of costing a launch), looks
  up the rows' rotation partners directly in the slot tables (a compare against every slot: no scatter, no
  dense tables, empty ``-1`` slots never match) and writes ``s ⊙ (W + ΔW)`` in one pass over ``W``.
- ``_token_sums_kernel`` (backward): per split of tokens, column programs stream ``g``, ``y`` and ``x`` once
  (``Σg·y``, ``Σg``, ``Σ g_k x_k`` and the statistics ``Σg²``, ``Σx²``), and gather programs beside them sum
  ``g[t, row] x[t, col]`` at the ``2 S_R + 4 S_L`` off-diagonal entries that depend on an angle.
- ``_coordinate_grads_kernel``: reduces the splits and applies the closed-form chain rule per coordinate
  (bias, scale, diag and the per-coordinate table gradients; statistics added to their buffers).
- ``_slot_grads_kernel`` (one program): the magnitude logits' VJP (a reduction over rows) and the angle
  gradients of every slot (gathers of the table gradients at the slot's two coordinates; empty slots get 0).

No host-device synchronisation: counts are shapes, everything else stays on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import triton
import triton.language as tl

from jora_ops.triton_kernels import host_cdiv as _cdiv

if TYPE_CHECKING:
    from jora_ops.fused import Magnitude  # fused imports this module lazily: no cycle at run time

__all__ = ["DIAG_TRITON_DTYPES", "diag_linear_triton"]

DIAG_TRITON_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)

# scale modes (constexpr): no scale, a given scale tensor, OER softmax, ECD tanh
_NO_SCALE, _GIVEN_SCALE, _OER, _ECD = 0, 1, 2, 3
_MAGNITUDE_MODES = {"oer_softmax": _OER, "ecd_tanh": _ECD}
_N_COLUMN_SUMS = 5  # per split: Σg·y, Σg, Σg_k x_k, Σg², Σx² (each of width max(n, m)), then the entry sums
_ENTRY_BLOCK = 64
# block shapes (rows, columns) of the fold per weight layout, and (coordinates, tokens) of the token sums
FOLD_BLOCKS: dict[str, tuple[int, int]] = {"linear": (16, 256), "conv1d": (64, 64)}
TOKEN_SUM_BLOCKS: tuple[int, int] = (128, 16)
_SLOT_BLOCK = 32


def _next_power_of_2(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


@triton.jit
def _cos_sin(theta, CAYLEY: tl.constexpr):
    if CAYLEY:
        quarter_sq = 0.25 * theta * theta
        inv = 1.0 / (1.0 + quarter_sq)
        return (1.0 - quarter_sq) * inv, theta * inv
    else:
        return tl.cos(theta), tl.sin(theta)


@triton.jit
def _lookup(k, pairs_ptr, theta_ptr, n_slots, CAYLEY: tl.constexpr, BLOCK_S: tl.constexpr):
    """``(partner, cos, sin, entry)`` of coordinates ``k`` under one side: ``(R v)_k = cos v_k + sin v_partner``.

    ``entry`` is ``2·slot + position`` of ``k`` in the table (``-1`` where ``k`` is unpaired).
    """
    partner = k
    entry = k * 0 - 1
    cos = k.to(tl.float32) * 0.0 + 1.0
    sin = k.to(tl.float32) * 0.0
    for start in range(0, n_slots, BLOCK_S):
        slots = start + tl.arange(0, BLOCK_S)
        ok = slots < n_slots
        i = tl.load(pairs_ptr + 2 * slots, mask=ok, other=-1).to(tl.int32)
        j = tl.load(pairs_ptr + 2 * slots + 1, mask=ok, other=-1).to(tl.int32)
        c, s = _cos_sin(tl.load(theta_ptr + slots, mask=ok, other=0.0).to(tl.float32), CAYLEY)
        hit_i = (k[:, None] == i[None, :]) & (i[None, :] >= 0)
        hit_j = (k[:, None] == j[None, :]) & (j[None, :] >= 0)
        partner += tl.sum(
            tl.where(hit_i, j[None, :] - k[:, None], 0) + tl.where(hit_j, i[None, :] - k[:, None], 0), 1
        )
        entry += tl.sum(
            tl.where(hit_i, 2 * slots[None, :] + 1, 0) + tl.where(hit_j, 2 * slots[None, :] + 2, 0), 1
        )
        cos += tl.sum(tl.where(hit_i | hit_j, c[None, :] - 1.0, 0.0), 1)
        sin += tl.sum(tl.where(hit_i, s[None, :], 0.0) - tl.where(hit_j, s[None, :], 0.0), 1)
    return partner, cos, sin, entry


@triton.jit
def _tanh(v):
    return 1.0 - 2.0 / (tl.exp(2.0 * v) + 1.0)


@triton.jit
def _magnitude_normaliser(
    logits_ptr, norms_ptr, energy_ptr, temp_ptr, n_out, eps, alpha, MODE: tl.constexpr, BLOCK_N: tl.constexpr
):
    """OER: ``logsumexp_j(2 log ν_j + w_j/T) − log E_incl``; ECD: ``sqrt(E_incl / Σ (ν_j g_j)²)``."""
    temperature = tl.load(temp_ptr).to(tl.float32)
    excluded = tl.zeros((BLOCK_N,), tl.float32)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    run_max = -1e30
    for start in range(0, n_out, BLOCK_N):
        idx = start + tl.arange(0, BLOCK_N)
        ok = idx < n_out
        nu = tl.load(norms_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        w = tl.load(logits_ptr + idx, mask=ok, other=0.0).to(tl.float32) / temperature
        included = ok & (nu > eps)
        excluded += tl.where(ok & (nu <= eps), nu * nu, 0.0)
        if MODE == 2:
            v = tl.where(included, 2.0 * tl.log(tl.where(included, nu, 1.0)) + w, -float("inf"))
            new_max = tl.maximum(run_max, tl.max(v, 0))
            acc = acc * tl.exp(run_max - new_max) + tl.exp(v - new_max)
            run_max = new_max
        else:
            gain = tl.where(included, 1.0 + alpha * _tanh(w), 0.0)
            acc += nu * nu * gain * gain
    energy = tl.load(energy_ptr).to(tl.float32) - tl.sum(excluded, 0)
    if MODE == 2:
        return run_max + tl.log(tl.sum(acc, 0)) - tl.log(energy)
    else:
        return tl.sqrt(energy / tl.sum(acc, 0))


@triton.jit
def _row_scale(
    rows, row_ok, scale_ptr, logits_ptr, norms_ptr, temp_ptr, normaliser, eps, alpha, MODE: tl.constexpr
):
    if MODE == 0:
        return rows.to(tl.float32) * 0.0 + 1.0
    elif MODE == 1:
        return tl.load(scale_ptr + rows, mask=row_ok, other=1.0).to(tl.float32)
    else:
        temperature = tl.load(temp_ptr).to(tl.float32)
        nu = tl.load(norms_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        w = tl.load(logits_ptr + rows, mask=row_ok, other=0.0).to(tl.float32) / temperature
        if MODE == 2:
            s = tl.exp(0.5 * (w - normaliser))
        else:
            s = (1.0 + alpha * _tanh(w)) * normaliser
        return tl.where(nu > eps, s, 1.0)


@triton.jit
def _fold_kernel(
    w_ptr, folded_ptr, scale_out_ptr, scale_ptr, logits_ptr, norms_ptr, energy_ptr, temp_ptr,
    diag_ptr, offset_ptr, pairs_L_ptr, theta_L_ptr, n_L, pairs_R_ptr, theta_R_ptr, n_R,
    n_out, n_in, n_diag, stride_row, stride_col, eps, alpha,
    MODE: tl.constexpr, HAS_OFFSET: tl.constexpr, CAYLEY: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """``folded = diag(s)(W + ΔW)`` for a block of rows (logical ``[n, m]``; any strides); writes ``s``."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < n_out
    normaliser = 0.0
    if MODE >= 2:
        normaliser = _magnitude_normaliser(
            logits_ptr, norms_ptr, energy_ptr, temp_ptr, n_out, eps, alpha, MODE, BLOCK_N
        )
    s = _row_scale(rows, row_ok, scale_ptr, logits_ptr, norms_ptr, temp_ptr, normaliser, eps, alpha, MODE)
    if MODE >= 2:
        tl.store(scale_out_ptr + rows, s, mask=row_ok)
    q, cos_L, sin_L, _ = _lookup(rows, pairs_L_ptr, theta_L_ptr, n_L, CAYLEY, BLOCK_S)
    partner_k, cos_Rk, sin_Rk, _ = _lookup(rows, pairs_R_ptr, theta_R_ptr, n_R, CAYLEY, BLOCK_S)
    partner_q, cos_Rq, sin_Rq, _ = _lookup(q, pairs_R_ptr, theta_R_ptr, n_R, CAYLEY, BLOCK_S)
    c_k = tl.load(diag_ptr + rows, mask=rows < n_diag, other=0.0).to(tl.float32)
    c_q = tl.load(diag_ptr + q, mask=row_ok & (q < n_diag), other=0.0).to(tl.float32)
    e1 = c_k * cos_L * cos_Rk
    if HAS_OFFSET:
        e1 -= tl.load(offset_ptr + rows, mask=rows < n_diag, other=0.0).to(tl.float32)
    e2 = c_k * cos_L * sin_Rk
    e3 = -sin_L * c_q * cos_Rq
    e4 = -sin_L * c_q * sin_Rq
    row_off = rows[:, None].to(tl.int64) * stride_row
    for start in range(0, n_in, BLOCK_COLS):
        cols = start + tl.arange(0, BLOCK_COLS)
        mask = row_ok[:, None] & (cols < n_in)[None, :]
        offsets = row_off + cols[None, :].to(tl.int64) * stride_col
        w = tl.load(w_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        c = cols[None, :]
        w += tl.where(c == rows[:, None], e1[:, None], 0.0) + tl.where(
            c == partner_k[:, None], e2[:, None], 0.0
        )
        w += tl.where(c == q[:, None], e3[:, None], 0.0) + tl.where(c == partner_q[:, None], e4[:, None], 0.0)
        tl.store(folded_ptr + offsets, (w * s[:, None]).to(folded_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _token_sums_kernel(
    g_ptr, y_ptr, x_ptr, partial_ptr, split_stride, pairs_L_ptr, n_L, pairs_R_ptr, theta_R_ptr, n_R,
    n_tokens, n_out, n_in, width, stride_g, stride_y, stride_x, tokens_per_split, n_col_blocks,
    HAS_Y: tl.constexpr, PARAMS: tl.constexpr, STATS_OUT: tl.constexpr, STATS_IN: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Partial token sums of one split of tokens (fp32).

    Programs ``pid < n_col_blocks`` take a block of coordinates ``k`` and stream ``g``, ``y``, ``x`` with
    contiguous loads: ``Σg·y``, ``Σg``, ``Σ g_k x_k``, ``Σg²``, ``Σx²`` (rows 0-4 of ``width``). The others
    take a block of rotation entries — ``(row, column)`` positions of ``ΔW`` that depend on an angle, off the
    diagonal — and gather ``Σ_t g[t, row] x[t, column]`` (after row ``5·width``: ``G2`` for the ``2 S_R``
    entries of ``R``'s pairs, then ``G3`` and ``G4`` for the ``2 S_L`` entries each of ``L``'s). They run
    beside the column programs of the same split, so their gathers mostly hit L2.
    """
    split = tl.program_id(1)
    block = tl.program_id(0)
    first = split * tokens_per_split
    base = partial_ptr + split * split_stride
    if block < n_col_blocks:
        k = block * BLOCK_C + tl.arange(0, BLOCK_C)
        out_ok = k < n_out
        in_ok = k < n_in
        # 2-D accumulators: one reduction over tokens at the end instead of one per token block
        acc_gy = tl.zeros((BLOCK_T, BLOCK_C), tl.float32)
        acc_g = tl.zeros((BLOCK_T, BLOCK_C), tl.float32)
        acc_gx = tl.zeros((BLOCK_T, BLOCK_C), tl.float32)
        acc_gg = tl.zeros((BLOCK_T, BLOCK_C), tl.float32)
        acc_xx = tl.zeros((BLOCK_T, BLOCK_C), tl.float32)
        for offset in range(0, tokens_per_split, BLOCK_T):
            t = first + offset + tl.arange(0, BLOCK_T)
            t_ok = (t < n_tokens) & (t < first + tokens_per_split)
            t64 = t[:, None].to(tl.int64)
            g = tl.load(g_ptr + t64 * stride_g + k[None, :], mask=t_ok[:, None] & out_ok[None, :], other=0.0)
            g = g.to(tl.float32)
            acc_g += g
            if HAS_Y:
                y = tl.load(
                    y_ptr + t64 * stride_y + k[None, :], mask=t_ok[:, None] & out_ok[None, :], other=0.0
                )
                acc_gy += g * y.to(tl.float32)
            if STATS_OUT:
                acc_gg += g * g
            if PARAMS or STATS_IN:
                x = tl.load(
                    x_ptr + t64 * stride_x + k[None, :], mask=t_ok[:, None] & in_ok[None, :], other=0.0
                )
                x = x.to(tl.float32)
                if STATS_IN:
                    acc_xx += x * x
                if PARAMS:
                    acc_gx += g * x
        ok = k < width
        tl.store(base + k, tl.sum(acc_gy, 0), mask=ok)
        tl.store(base + width + k, tl.sum(acc_g, 0), mask=ok)
        tl.store(base + 2 * width + k, tl.sum(acc_gx, 0), mask=ok)
        tl.store(base + 3 * width + k, tl.sum(acc_gg, 0), mask=ok)
        tl.store(base + 4 * width + k, tl.sum(acc_xx, 0), mask=ok)
    else:
        e = (block - n_col_blocks) * BLOCK_E + tl.arange(0, BLOCK_E)
        n_R2 = 2 * n_R
        n_L2 = 2 * n_L
        in_R = e < n_R2
        in_L = (e >= n_R2) & (e < n_R2 + 2 * n_L2)
        is_G3 = e < n_R2 + n_L2
        e_L = tl.where(in_L, tl.where(is_G3, e - n_R2, e - n_R2 - n_L2), 0)
        e_R = tl.where(in_R, e, 0)
        # G2 entries: (k, partner_R(k)) for k in R's pairs; G3/G4: (k, q) and (k, partner_R(q)), q = partner_L(k)
        row_R = tl.load(pairs_R_ptr + e_R, mask=in_R, other=-1).to(tl.int32)
        col_R = tl.load(pairs_R_ptr + (e_R ^ 1), mask=in_R, other=-1).to(tl.int32)
        row_L = tl.load(pairs_L_ptr + e_L, mask=in_L, other=-1).to(tl.int32)
        q = tl.load(pairs_L_ptr + (e_L ^ 1), mask=in_L, other=-1).to(tl.int32)
        partner_q, _, _, _ = _lookup(q, pairs_R_ptr, theta_R_ptr, n_R, False, BLOCK_S)
        row = tl.where(in_R, row_R, row_L)
        col = tl.where(in_R, col_R, tl.where(is_G3, q, partner_q))
        valid = (row >= 0) & (row < n_out) & (col >= 0) & (col < n_in)
        row = tl.where(valid, row, 0)
        col = tl.where(valid, col, 0)
        acc = tl.zeros((BLOCK_T, BLOCK_E), tl.float32)
        for offset in range(0, tokens_per_split, BLOCK_T):
            t = first + offset + tl.arange(0, BLOCK_T)
            t_ok = (t < n_tokens) & (t < first + tokens_per_split)
            t64 = t[:, None].to(tl.int64)
            mask = t_ok[:, None] & valid[None, :]
            g = tl.load(g_ptr + t64 * stride_g + row[None, :], mask=mask, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + t64 * stride_x + col[None, :], mask=mask, other=0.0).to(tl.float32)
            acc += g * x
        tl.store(base + 5 * width + e, tl.sum(acc, 0), mask=e < n_R2 + 2 * n_L2)


@triton.jit
def _split_sum(ptr, index, mask, split_stride, n_splits, BLOCK_SPLITS: tl.constexpr):
    """``Σ_split ptr[split · split_stride + index]``: one 2-D load (independent loads in flight)."""
    splits = tl.arange(0, BLOCK_SPLITS)
    offsets = splits[:, None] * split_stride + index[None, :]
    tile = tl.load(ptr + offsets, mask=(splits[:, None] < n_splits) & mask[None, :], other=0.0)
    return tl.sum(tile, 0)


@triton.jit
def _coordinate_grads_kernel(
    partial_ptr, n_splits, split_stride, width, scale_ptr, bias_ptr, bias_grad_ptr, scale_grad_ptr,
    stats_out_ptr, stats_in_ptr, inv_tokens, diag_ptr, diag_grad_ptr, table_grad_ptr,
    pairs_L_ptr, theta_L_ptr, n_L, pairs_R_ptr, theta_R_ptr, n_R, n_out, n_in, n_diag,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, SCALE_GRAD: tl.constexpr, BIAS_GRAD: tl.constexpr,
    PARAMS: tl.constexpr, STATS_OUT: tl.constexpr, STATS_IN: tl.constexpr, CAYLEY: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
):  # fmt: skip
    """Per coordinate: bias and scale gradients, statistics, diag gradient and the table gradients."""
    k = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    out_ok = k < n_out
    in_ok = k < n_in
    g_sum = _split_sum(partial_ptr + width, k, out_ok, split_stride, n_splits, BLOCK_SPLITS)
    if BIAS_GRAD:
        tl.store(bias_grad_ptr + k, g_sum, mask=out_ok)
    if HAS_SCALE:
        s = tl.load(scale_ptr + k, mask=out_ok, other=1.0).to(tl.float32)
    else:
        s = k.to(tl.float32) * 0.0 + 1.0
    if SCALE_GRAD:  # Σ_t g ⊙ h with h = (y − b)/s
        weighted = _split_sum(partial_ptr, k, out_ok, split_stride, n_splits, BLOCK_SPLITS)
        if HAS_BIAS:
            weighted -= tl.load(bias_ptr + k, mask=out_ok, other=0.0).to(tl.float32) * g_sum
        tl.store(scale_grad_ptr + k, weighted / s, mask=out_ok)
    if STATS_OUT:
        gg = _split_sum(partial_ptr + 3 * width, k, out_ok, split_stride, n_splits, BLOCK_SPLITS)
        tl.store(stats_out_ptr + k, tl.load(stats_out_ptr + k, mask=out_ok) + gg * inv_tokens, mask=out_ok)
    if STATS_IN:
        xx = _split_sum(partial_ptr + 4 * width, k, in_ok, split_stride, n_splits, BLOCK_SPLITS)
        tl.store(stats_in_ptr + k, tl.load(stats_in_ptr + k, mask=in_ok) + xx * inv_tokens, mask=in_ok)
    if PARAMS:
        q, cos_L, sin_L, entry_L = _lookup(k, pairs_L_ptr, theta_L_ptr, n_L, CAYLEY, BLOCK_S)
        _, cos_Rk, sin_Rk, entry_R = _lookup(k, pairs_R_ptr, theta_R_ptr, n_R, CAYLEY, BLOCK_S)
        _, cos_Rq, sin_Rq, _ = _lookup(q, pairs_R_ptr, theta_R_ptr, n_R, CAYLEY, BLOCK_S)
        # upstream gradients of the four entries of row k (Σ_t (g s)_k x_col), and G3, G4 of row q; the
        # rotation entries of a row are 0 where no rotation touches it (their coefficients vanish there)
        pair_ptr = partial_ptr + 5 * width
        rotated_R = out_ok & (entry_R >= 0)
        rotated_L = out_ok & (entry_L >= 0)
        G1 = _split_sum(partial_ptr + 2 * width, k, out_ok, split_stride, n_splits, BLOCK_SPLITS) * s
        G2 = (
            _split_sum(
                pair_ptr, tl.where(rotated_R, entry_R, 0), rotated_R, split_stride, n_splits, BLOCK_SPLITS
            )
            * s
        )
        e3 = tl.where(rotated_L, 2 * n_R + entry_L, 0)
        G3 = _split_sum(pair_ptr, e3, rotated_L, split_stride, n_splits, BLOCK_SPLITS) * s
        G4 = _split_sum(pair_ptr, e3 + 2 * n_L, rotated_L, split_stride, n_splits, BLOCK_SPLITS) * s
        if HAS_SCALE:
            s_q = tl.load(scale_ptr + q, mask=out_ok, other=1.0).to(tl.float32)
        else:
            s_q = s
        sin_Lq = -sin_L  # partner_L is an involution: sin_L(q) = −sin_L(k) (both 0 when unpaired)
        e3_q = tl.where(rotated_L, 2 * n_R + (entry_L ^ 1), 0)  # q's entry: the other position of k's slot
        a_q = _split_sum(pair_ptr, e3_q, rotated_L, split_stride, n_splits, BLOCK_SPLITS) * s_q * sin_Lq
        b_q = (
            _split_sum(pair_ptr, e3_q + 2 * n_L, rotated_L, split_stride, n_splits, BLOCK_SPLITS)
            * s_q
            * sin_Lq
        )
        c_k = tl.load(diag_ptr + k, mask=k < n_diag, other=0.0).to(tl.float32)
        c_q = tl.load(diag_ptr + q, mask=out_ok & (q < n_diag), other=0.0).to(tl.float32)
        own = G1 * cos_Rk + G2 * sin_Rk
        tl.store(diag_grad_ptr + k, cos_L * own - (a_q * cos_Rk + b_q * sin_Rk), mask=k < n_diag)
        ok = k < width
        tl.store(table_grad_ptr + k, tl.where(out_ok, c_k * own, 0.0), mask=ok)
        tl.store(
            table_grad_ptr + width + k, tl.where(out_ok, -c_q * (G3 * cos_Rq + G4 * sin_Rq), 0.0), mask=ok
        )
        tl.store(table_grad_ptr + 2 * width + k, tl.where(out_ok, c_k * (G1 * cos_L - a_q), 0.0), mask=ok)
        tl.store(table_grad_ptr + 3 * width + k, tl.where(out_ok, c_k * (G2 * cos_L - b_q), 0.0), mask=ok)


@triton.jit
def _theta_grads(
    pairs_ptr,
    theta_ptr,
    n_slots,
    grad_cos_ptr,
    grad_sin_ptr,
    out_ptr,
    CAYLEY: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Chain rule from the per-coordinate tables to the angles: ``cos[i] = cos[j]``, ``sin[i] = −sin[j]``."""
    for start in range(0, n_slots, BLOCK_S):
        slots = start + tl.arange(0, BLOCK_S)
        ok = slots < n_slots
        i = tl.load(pairs_ptr + 2 * slots, mask=ok, other=-1)
        j = tl.load(pairs_ptr + 2 * slots + 1, mask=ok, other=-1)
        active = ok & (i >= 0)
        grad_cos = tl.load(grad_cos_ptr + i, mask=active, other=0.0) + tl.load(
            grad_cos_ptr + j, mask=active, other=0.0
        )
        grad_sin = tl.load(grad_sin_ptr + i, mask=active, other=0.0) - tl.load(
            grad_sin_ptr + j, mask=active, other=0.0
        )
        theta = tl.load(theta_ptr + slots, mask=ok, other=0.0).to(tl.float32)
        cos, sin = _cos_sin(theta, CAYLEY)
        grad = cos * grad_sin - sin * grad_cos
        if CAYLEY:
            grad = grad / (1.0 + 0.25 * theta * theta)  # dφ/dθ for φ = 2·atan(θ/2)
        tl.store(out_ptr + slots, tl.where(active, grad, 0.0), mask=ok)


@triton.jit
def _slot_grads_kernel(
    scale_ptr, scale_grad_ptr, logits_ptr, norms_ptr, energy_ptr, temp_ptr, logits_grad_ptr, n_out, eps, alpha,
    table_grad_ptr, width, pairs_L_ptr, theta_L_ptr, n_L, theta_L_grad_ptr,
    pairs_R_ptr, theta_R_ptr, n_R, theta_R_grad_ptr,
    MODE: tl.constexpr, LOGITS_GRAD: tl.constexpr, THETA_L_GRAD: tl.constexpr, THETA_R_GRAD: tl.constexpr,
    CAYLEY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """One program: the magnitude logits' gradient (closed form, see ``scale_vjp``) and the angles'."""
    if LOGITS_GRAD:
        temperature = tl.load(temp_ptr).to(tl.float32)
        excluded = tl.zeros((BLOCK_N,), tl.float32)
        dot = tl.zeros((BLOCK_N,), tl.float32)
        norm_sq = tl.zeros((BLOCK_N,), tl.float32)
        for start in range(0, n_out, BLOCK_N):
            idx = start + tl.arange(0, BLOCK_N)
            ok = idx < n_out
            nu = tl.load(norms_ptr + idx, mask=ok, other=0.0).to(tl.float32)
            included = ok & (nu > eps)
            excluded += tl.where(ok & (nu <= eps), nu * nu, 0.0)
            grad = tl.where(included, tl.load(scale_grad_ptr + idx, mask=ok, other=0.0), 0.0)
            if MODE == 2:
                dot += grad * tl.load(scale_ptr + idx, mask=ok, other=0.0)
            else:
                gain = tl.where(
                    included,
                    1.0
                    + alpha
                    * _tanh(tl.load(logits_ptr + idx, mask=ok, other=0.0).to(tl.float32) / temperature),
                    0.0,
                )
                dot += grad * gain
                norm_sq += nu * nu * gain * gain
        energy = tl.load(energy_ptr).to(tl.float32) - tl.sum(excluded, 0)
        total = tl.sum(dot, 0)
        total_norm_sq = tl.sum(norm_sq, 0)
        for start in range(0, n_out, BLOCK_N):
            idx = start + tl.arange(0, BLOCK_N)
            ok = idx < n_out
            nu = tl.load(norms_ptr + idx, mask=ok, other=0.0).to(tl.float32)
            included = ok & (nu > eps)
            grad = tl.where(included, tl.load(scale_grad_ptr + idx, mask=ok, other=0.0), 0.0)
            if MODE == 2:
                s = tl.load(scale_ptr + idx, mask=ok, other=0.0)
                p = s * s * nu * nu / energy
                result = (grad * s - p * total) / (2.0 * temperature)
            else:
                t = _tanh(tl.load(logits_ptr + idx, mask=ok, other=0.0).to(tl.float32) / temperature)
                gain = 1.0 + alpha * t
                kappa = tl.sqrt(energy / total_norm_sq)
                d_gain = alpha * (1.0 - t * t) / temperature
                result = d_gain * kappa * (grad - nu * nu * gain * total / total_norm_sq)
            tl.store(logits_grad_ptr + idx, tl.where(included, result, 0.0), mask=ok)
    if THETA_L_GRAD:
        _theta_grads(
            pairs_L_ptr,
            theta_L_ptr,
            n_L,
            table_grad_ptr,
            table_grad_ptr + width,
            theta_L_grad_ptr,
            CAYLEY,
            BLOCK_S,
        )
    if THETA_R_GRAD:
        _theta_grads(
            pairs_R_ptr,
            theta_R_ptr,
            n_R,
            table_grad_ptr + 2 * width,
            table_grad_ptr + 3 * width,
            theta_R_grad_ptr,
            CAYLEY,
            BLOCK_S,
        )


def _as_device_scalar(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.full((), float(value), dtype=torch.float32, device=like.device)


class _DiagLinearTriton(torch.autograd.Function):
    """``y = x (diag(s)(W + ΔW))ᵀ + b`` for the diag core; gradients for x, bias, scale/logits, θ and c."""

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
        diag: torch.Tensor,
    ) -> torch.Tensor:
        pairs_L, pairs_R, mode = config["pairs_L"], config["pairs_R"], config["mode"]
        n, m = config["n"], config["m"]
        linear = config["layout"] == "linear"
        weight, theta_L, theta_R, diag = (
            weight.contiguous(),
            theta_L.contiguous(),
            theta_R.contiguous(),
            diag.contiguous(),
        )
        if scale_or_logits is not None:
            scale_or_logits = scale_or_logits.contiguous()
        folded = torch.empty_like(weight)
        scale = torch.empty(n, dtype=torch.float32, device=x.device) if mode >= _OER else scale_or_logits
        logits = scale_or_logits if mode >= _OER else None
        offset = config["offset"]
        block_rows, block_cols = FOLD_BLOCKS[config["layout"]]
        _fold_kernel[(_cdiv(n, block_rows),)](
            weight, folded, scale, scale_or_logits, logits, config["norms"], config["energy"], config["temperature"],
            diag, offset, pairs_L, theta_L, pairs_L.shape[0], pairs_R, theta_R, pairs_R.shape[0],
            n, m, min(n, m), m if linear else 1, 1 if linear else n, config["eps"], config["alpha"],
            MODE=mode, HAS_OFFSET=offset is not None, CAYLEY=config["cayley"],
            BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, BLOCK_N=1024, BLOCK_S=_SLOT_BLOCK,
        )  # fmt: skip
        if linear:
            out = torch.nn.functional.linear(x, folded, bias)
        else:
            out = x @ folded
            if bias is not None:
                out = out + bias
        ctx.config = config
        keep_out = mode != _NO_SCALE and ctx.needs_input_grad[6]
        ctx.save_for_backward(
            x, folded, bias, theta_R, theta_L, scale_or_logits, diag, scale if mode >= _OER else None,
            out if keep_out else None,
        )  # fmt: skip
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        config = ctx.config
        x, folded, bias, theta_R, theta_L, scale_or_logits, diag, inner_scale, out = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mode, n, m = config["mode"], config["n"], config["m"]
        pairs_L, pairs_R = config["pairs_L"], config["pairs_R"]
        linear = config["layout"] == "linear"
        grad_x = None
        if needs[1]:
            grad_x = (grad_out @ folded if linear else grad_out @ folded.T).to(x.dtype)
        stats_in, stats_out = config["stats_in"], config["stats_out"]
        params = needs[4] or needs[5] or needs[7]
        scale_grad = mode != _NO_SCALE and needs[6]
        if not (params or scale_grad or needs[3] or stats_in is not None or stats_out is not None):
            if config["on_backward"] is not None:
                config["on_backward"]()
            return None, grad_x, None, None, None, None, None, None

        g = grad_out.reshape(-1, n).contiguous()
        xs = x.reshape(-1, m).contiguous()
        y = out.reshape(-1, n).contiguous() if out is not None else g
        tokens = g.shape[0]
        width = max(n, m)
        block_c, block_t = TOKEN_SUM_BLOCKS
        splits = max(1, min(64, _cdiv(tokens, 256)))
        tokens_per_split = _cdiv(_cdiv(max(tokens, 1), splits), block_t) * block_t
        splits = max(1, _cdiv(tokens, tokens_per_split))
        entries = 2 * pairs_R.shape[0] + 4 * pairs_L.shape[0] if params else 0
        split_stride = _N_COLUMN_SUMS * width + entries
        partial = torch.empty(splits * split_stride, dtype=torch.float32, device=x.device)
        # one small fp32 workspace for the table gradients and the gradient vectors (kept by .grad)
        sizes = (4 * width, min(n, m), n, n, n, pairs_L.shape[0], pairs_R.shape[0])
        workspace = torch.empty(sum(sizes), dtype=torch.float32, device=x.device)
        table_grads, diag_grad, bias_grad, scale_grad_buf, logits_grad, theta_L_grad, theta_R_grad = (
            workspace.split(sizes)
        )
        cayley = config["cayley"]
        col_blocks = _cdiv(width, block_c)
        _token_sums_kernel[(col_blocks + _cdiv(entries, _ENTRY_BLOCK), splits)](
            g, y, xs, partial, split_stride, pairs_L, pairs_L.shape[0], pairs_R, theta_R, pairs_R.shape[0],
            tokens, n, m, width, g.stride(0), y.stride(0), xs.stride(0), tokens_per_split, col_blocks,
            HAS_Y=out is not None, PARAMS=params, STATS_OUT=stats_out is not None, STATS_IN=stats_in is not None,
            BLOCK_T=block_t, BLOCK_C=block_c, BLOCK_E=_ENTRY_BLOCK, BLOCK_S=_SLOT_BLOCK,
        )  # fmt: skip
        scale = inner_scale if mode >= _OER else scale_or_logits
        block = 64
        _coordinate_grads_kernel[(_cdiv(width, block),)](
            partial, splits, split_stride, width, scale, bias, bias_grad, scale_grad_buf, stats_out, stats_in,
            1.0 / max(tokens, 1), diag, diag_grad, table_grads, pairs_L, theta_L, pairs_L.shape[0], pairs_R,
            theta_R, pairs_R.shape[0], n, m, min(n, m),
            HAS_SCALE=mode != _NO_SCALE, HAS_BIAS=bias is not None, SCALE_GRAD=scale_grad, BIAS_GRAD=needs[3],
            PARAMS=params, STATS_OUT=stats_out is not None, STATS_IN=stats_in is not None, CAYLEY=cayley,
            BLOCK=block, BLOCK_S=_SLOT_BLOCK, BLOCK_SPLITS=_next_power_of_2(splits),
        )  # fmt: skip
        logits_wanted = scale_grad and mode >= _OER
        if logits_wanted or needs[4] or needs[5]:
            _slot_grads_kernel[(1,)](
                scale, scale_grad_buf, scale_or_logits, config["norms"], config["energy"], config["temperature"],
                logits_grad, n, config["eps"], config["alpha"], table_grads, width, pairs_L, theta_L,
                pairs_L.shape[0], theta_L_grad, pairs_R, theta_R, pairs_R.shape[0], theta_R_grad,
                MODE=mode, LOGITS_GRAD=logits_wanted, THETA_L_GRAD=needs[5], THETA_R_GRAD=needs[4],
                CAYLEY=cayley, BLOCK_N=1024, BLOCK_S=_SLOT_BLOCK, num_warps=8,
            )  # fmt: skip
        if config["on_backward"] is not None:
            config["on_backward"]()
        grad_scale_slot = None
        if scale_grad:
            grad_scale_slot = (logits_grad if mode >= _OER else scale_grad_buf).to(scale_or_logits.dtype)
        return (
            None,
            grad_x,
            None,
            bias_grad.to(bias.dtype) if needs[3] and bias is not None else None,
            theta_R_grad.to(theta_R.dtype) if needs[4] else None,
            theta_L_grad.to(theta_L.dtype) if needs[5] else None,
            grad_scale_slot,
            diag_grad.to(diag.dtype) if needs[7] else None,
        )


def diag_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    layout: str,
    diag: torch.Tensor,
    diag_offset: torch.Tensor | None,
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
    """The diag-core fused linear through the Triton kernels (arguments checked by ``jora_linear``).

    Pair tables may hold empty ``-1`` slots (their angles get a zero gradient).
    """
    n = weight.shape[0] if layout == "linear" else weight.shape[1]
    m = x.shape[-1]
    if magnitude is not None:
        mode = _MAGNITUDE_MODES[magnitude.kind]
        scale_slot = magnitude.logits
        norms, energy = magnitude.row_norms, _as_device_scalar(magnitude.total_energy, x)
        temperature, eps, alpha = (
            _as_device_scalar(magnitude.temperature, x),
            magnitude.eps,
            magnitude.ecd_alpha,
        )
    else:
        mode = _GIVEN_SCALE if scale is not None else _NO_SCALE
        scale_slot, norms, energy, temperature, eps, alpha = scale, None, None, None, 0.0, 0.0
    config = {
        "pairs_L": pairs_L.contiguous(),
        "pairs_R": pairs_R.contiguous(),
        "mode": mode,
        "n": n,
        "m": m,
        "layout": layout,
        "offset": diag_offset,
        "norms": norms,
        "energy": energy,
        "temperature": temperature,
        "eps": float(eps),
        "alpha": float(alpha),
        "cayley": rotation_param == "cayley",
        "stats_in": stats_in,
        "stats_out": stats_out,
        "on_backward": on_backward,
    }
    return _DiagLinearTriton.apply(config, x, weight, bias, theta_R, theta_L, scale_slot, diag)
