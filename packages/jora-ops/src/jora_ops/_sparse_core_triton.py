"""Triton kernels of the diag- and block-core fused linear: one kernel and one matmul forward, one matmul and
two kernels backward.

The math is that of :mod:`jora_ops._block_fold` (read its docstring first); the diag core is the block core
with ``b = 1``. Row ``k`` of the core has ``b`` slots ``t`` (its block row; the remainder diagonal and the
diag core use slot 0 only) at columns ``col(k, t)``, so ``ΔW`` has at most ``4b`` non-zeros per row: the
forward folds ``diag(s)(W + ΔW)`` into the weight and runs one cuBLAS matmul, and the backward needs one
more matmul (``∂L/∂x``) and token sums only. Here the O((n + m)·b) bookkeeping runs inside the kernels
instead of as dozens of small torch ops:

- ``_fold_kernel`` (forward): each program takes a block of rows, computes their scale ``s`` (the OER/ECD
  normaliser is a reduction over all rows, recomputed per program from L2 instead of costing a launch),
  streams ``s ⊙ W`` into the folded weight as a plain scaled copy (one read and one write of ``W``), then,
  after a barrier, writes ``s ⊙ (W + ΔW)`` at each row's ``≤ 4b`` entries, whose rotation partners it looks
  up directly in the slot tables (a compare against every slot: no scatter, empty ``-1`` slots never
  match); for the backward it keeps every coordinate's rotation under ``L`` and ``R`` in small dense tables.
- ``_token_sums_kernel`` (backward): per split of tokens, column programs stream ``g``, ``y`` and ``x`` once
  (``Σg·y``, ``Σg`` with a bias, the statistics ``Σg²``, ``Σx²`` and the block-diagonal sums ``Σ g_k x_col(k, t)``), and
  gather programs beside them sum ``g[t, row] x[t, col]`` at the ``b (2 S_R + 4 S_L)`` entries that depend
  on an angle; with a magnitude, each split's last column program (an arrival counter) also sums the split's
  total of ``Σ g (y − b)``, which the logits' gradient needs in every coordinate.
- ``_coordinate_grads_kernel``: reduces the splits and applies the closed-form chain rule per coordinate
  (bias, scale, magnitude-logit and core gradients; statistics added to their buffers), reading each
  coordinate's rotations from the fold's tables (no compare against every slot), and adds each
  coordinate's share of its slots' angle gradients. Its programs are independent: the one global sum of the
  logits' gradient comes from the per-split totals that the token sums write, and each angle gradient is the
  sum of exactly two atomic adds on a zero (the same in either order, so the backward stays deterministic).

From ``OVERLAP_MIN_ELEMENTS`` tokens × width on (CUDA), the backward's ``∂L/∂x`` matmul runs on a second
stream beside the token sums (:func:`grad_input_beside`): the compute-bound matmul and the memory-bound sums
need nothing from each other; the token sums take the SMs first and the matmul's tiles enter as they drain, so
the two overlap for the sums' tail (H200 kernel timeline: ``benchmarks/gpu_timeline.py``); the streams join
before the gradients are returned. On sm_90+ the backward's kernels are programmatic dependent launches:
the token sums launch as the kernel before them on their stream ends, and the per-coordinate kernel as the
token sums end; it reads what the forward wrote (scale, rotations, core values) before it waits for them.

Block sizes up to :data:`TRITON_MAX_BLOCK_SIZE` run here (slot dimensions are padded to a power of two).
No host-device synchronisation: counts are shapes, everything else stays on the device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from jora_ops._dispatch import triton_interpreting
from jora_ops._fold_common import folded_matmul, kept_for_backward
from jora_ops._triton_launch import launch
from jora_ops.triton_kernels import host_cdiv as _cdiv

if TYPE_CHECKING:
    from jora_ops.fused import Magnitude  # fused imports this module lazily: no cycle at run time

__all__ = [
    "SPARSE_CORE_TRITON_DTYPES",
    "TRITON_MAX_BLOCK_SIZE",
    "column_sums_triton",
    "sparse_core_linear_triton",
]

SPARSE_CORE_TRITON_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
TRITON_MAX_BLOCK_SIZE = 16

# scale modes (constexpr): no scale, a given scale tensor, OER softmax, ECD tanh
_NO_SCALE, _GIVEN_SCALE, _OER, _ECD = 0, 1, 2, 3
_MAGNITUDE_MODES = {"oer_softmax": _OER, "ecd_tanh": _ECD}
_N_COLUMN_SUMS = 4  # per split: Σg·y, Σg, Σg², Σx² (each of width max(n, m)), the slot sums, the entry sums
_ENTRY_BLOCK = 64
ENTRY_TOKEN_BLOCK = 8  # tokens per tile of the gather programs (entries per tile: _ENTRY_BLOCK)
# block shapes (rows, columns) of the fold per weight layout, and (coordinates, tokens) of the token sums,
# for b = 1; the column / coordinate blocks shrink with the padded slot count
FOLD_BLOCKS: dict[str, tuple[int, int]] = {"linear": (16, 512), "conv1d": (64, 64)}
FOLD_WARPS = 8
# rows per step of the in-kernel OER/ECD normaliser (H200, d=4096: 4096 rows in one step, 99 registers,
# 25.8 -> 23.5 µs; it spilled with the v7 fold's registers)
FOLD_NORMALISER_BLOCK = 4096
TOKEN_SUM_BLOCKS: tuple[int, int] = (128, 8)
BLOCK_TOKEN_SUM_BLOCKS: tuple[int, int] = (128, 16)  # b > 1 (else coordinates / b where b is no power of two)
# warps of the token sums for b = 1 and b > 1: one warp per column program for b = 1 with two accumulators
# (Σg·y, Σg·x: the steady state; H200, T=8192: no cross-warp reduction at the end, 71.3 -> 66.7 µs at d=4096,
# 48.2 -> 49.4 µs at d=2048, layer rows 1.16 -> 1.15 x and 1.33 -> 1.34 x frozen); two warps when the
# statistics or Σg add accumulators (one warp would spill: 255 registers)
TOKEN_SUM_WARPS, BLOCK_TOKEN_SUM_WARPS = 1, 4
MORE_ACCUMULATORS_TOKEN_SUM_WARPS = 2
# b = 1 with long splits (from this many tokens per split): larger tiles on 4 warps (H200, T=32768, d=4096, 512
# tokens per split: 291 -> 258-266 µs; at 128 and 256 tokens per split they were slower, 71 -> 80 µs at T=8192)
LONG_SPLIT_TOKENS = 512
LONG_SPLIT_TOKEN_SUM_BLOCKS: tuple[int, int] = (128, 16)
LONG_SPLIT_TOKEN_SUM_WARPS = 4
# the one-warp column programs' accumulators up to this width: one row, each token tile summed as it comes, else a
# row per token of the tile, reduced once at the end (H200, T=8192, in one process: d=2048 layer 1.339 -> 1.294 x
# frozen, token sums 49.2 -> 46.2 µs; at d=4096 the token sums 68.7 -> 74.2 µs)
REDUCED_TILES_MAX_WIDTH = 2048
# programmatic dependent launch of the backward's two kernels (sm_90+): the token sums launch as the ∂L/∂x matmul
# ends and the per-coordinate kernel as the token sums end, reading the forward's values before its wait (H200,
# T=8192, in one process: layer 1.154 -> 1.148 x frozen at d=4096, 1.356 -> 1.339 x at d=2048)
LAUNCH_PDL = True
TOKEN_SUM_UNROLL = 2  # token tiles per loop step of the gather programs (the column programs load two)
# token splits of the token sums (programs per column block). H200, T=8192, d=4096: 128 tokens per split
# (64 splits) 89 -> 76 µs, the per-coordinate kernel that reduces them 14.5 -> 18 µs; 128 splits at T=32768
# would save more there but spill in the per-coordinate kernel
TOKENS_PER_SPLIT, MAX_SPLITS = 128, 64
# b = 1 from this width on, without long splits: shorter splits, up to 128 of them (H200, T=8192, in one process:
# 96 tokens per split at d=4096: layer 1.1507 -> 1.1445 x frozen, 64 tokens 1.147 x; d=8192 0.004 ms faster,
# the ratio within the rounds' spread; at d=2048 96 tokens 1.294 -> 1.345 x, so not there)
WIDE_TOKENS_PER_SPLIT, WIDE_MAX_SPLITS, WIDE_MIN_WIDTH = 96, 128, 4096
# arrival counters of the token sums' splits, kept after the scale by the fold: at most this many splits
_SPLIT_COUNTERS = 128
_OUTER_ACCUMULATOR = 4096  # values per program of the block outer-product accumulator (registers)
# coordinates per program and warps of the per-coordinate kernel: b = 1 (H200, T=8192, d=4096, steady state:
# 16 coordinates on 4 warps 11.9 µs, 8 on one warp 9.0, with the rotation tables 8.7, 4 on one warp 7.6, 2 on
# one warp 7.3 (d=2048: 4.5): every reduction inside the warp; 16 on one or two warps spill), and b > 1 (16 //
# the padded slot count, at least 4)
COORDINATE_LAUNCH: tuple[int, int] = (2, 1)
BLOCK_COORDINATE_LAUNCH: tuple[int, int] = (16, 4)
_SLOT_BLOCK = 32
# the backward's ∂L/∂x matmul on a second stream, beside the token sums (CUDA, from this many tokens × width on;
# None: never). H200, T=8192, in one process, two runs: layer 1.304 -> 1.234 x frozen at d=2048, 1.140 -> 1.115 x
# at d=4096, T=32768 d=4096 1.105 -> 1.095 x, d=8192 within noise. Slower: the matmul's stream at a higher
# priority (d=4096 1.23 x), cuBLASLt's SM count target leaving 16 or 32 SMs to the token sums (1.15, 1.23 x), the
# token sums on the second stream instead (1.22 x)
OVERLAP_MIN_ELEMENTS: int | None = 1 << 24


def _next_power_of_2(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def _coordinate_launch(slots: int) -> tuple[int, int]:
    """``(coordinates per program, warps)`` of :func:`_coordinate_grads_kernel` for a padded slot count."""
    if slots == 1:
        return COORDINATE_LAUNCH
    block, warps = BLOCK_COORDINATE_LAUNCH
    return max(4, block // slots), warps


def _programmatic_launch(device: torch.device) -> bool:
    """Whether the backward's kernels on ``device`` launch as programmatic dependents of the kernel before
    them: ``LAUNCH_PDL`` and :func:`_grid_dependency_control`."""
    return LAUNCH_PDL and _grid_dependency_control(device)


@functools.lru_cache(maxsize=16)
def _grid_dependency_control(device: torch.device) -> bool:
    """Whether compiled kernels on ``device`` can use grid-dependency control: a CUDA device of compute
    capability 9.0 or later, not under the interpreter, and a Triton that has it."""
    return (
        device.type == "cuda"
        and not triton_interpreting()
        and torch.cuda.get_device_capability(device)[0] >= 9
        and hasattr(getattr(tl.extra, "cuda", None), "gdc_wait")
    )


def _pdl_options(pdl: bool) -> dict[str, Any]:
    """The launch option of a programmatic dependent launch (none otherwise: older Triton lacks the option)."""
    return {"launch_pdl": True} if pdl else {}


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
    """``(partner, cos, sin, entry)`` of coordinates ``k`` (1-D) under one side: ``(R v)_k = cos v_k + sin v_partner``.

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
def _lookup_2d(k, pairs_ptr, theta_ptr, n_slots, CAYLEY: tl.constexpr, BLOCK_S: tl.constexpr,
               ROWS: tl.constexpr, SLOTS: tl.constexpr):  # fmt: skip
    """:func:`_lookup` of a ``[ROWS, SLOTS]`` block of coordinates."""
    partner, cos, sin, entry = _lookup(
        tl.reshape(k, (ROWS * SLOTS,)), pairs_ptr, theta_ptr, n_slots, CAYLEY, BLOCK_S
    )
    return (
        tl.reshape(partner, (ROWS, SLOTS)),
        tl.reshape(cos, (ROWS, SLOTS)),
        tl.reshape(sin, (ROWS, SLOTS)),
        tl.reshape(entry, (ROWS, SLOTS)),
    )


@triton.jit
def _table_rotation(k, tables_ptr, width, SIDE: tl.constexpr):
    """:func:`_lookup` of coordinates ``k`` (any shape) under side ``SIDE`` (0: ``L``, 1: ``R``), read from the
    per-coordinate tables that the fold wrote (:func:`_write_rotation_tables`); identity outside them."""
    ok = (k >= 0) & (k < width)
    ints = tables_ptr.to(tl.pointer_type(tl.int32))
    partner = tl.where(ok, tl.load(ints + (2 * SIDE) * width + k, mask=ok, other=0), k)
    entry = tl.load(ints + (2 * SIDE + 1) * width + k, mask=ok, other=-1)
    cos = tl.load(tables_ptr + (4 + 2 * SIDE) * width + k, mask=ok, other=1.0)
    sin = tl.load(tables_ptr + (5 + 2 * SIDE) * width + k, mask=ok, other=0.0)
    return partner, cos, sin, entry


@triton.jit
def _store_rotation(k, ok, tables_ptr, width, partner, cos, sin, entry, SIDE: tl.constexpr):
    """Store coordinates ``k``'s rotation under side ``SIDE`` into the per-coordinate tables (``[8, width]``:
    partner and entry under ``L``, under ``R`` (int32), then cos and sin under ``L``, under ``R``)."""
    ints = tables_ptr.to(tl.pointer_type(tl.int32))
    tl.store(ints + (2 * SIDE) * width + k, partner, mask=ok)
    tl.store(ints + (2 * SIDE + 1) * width + k, entry, mask=ok)
    tl.store(tables_ptr + (4 + 2 * SIDE) * width + k, cos, mask=ok)
    tl.store(tables_ptr + (5 + 2 * SIDE) * width + k, sin, mask=ok)


@triton.jit
def _write_rotation_tables(k, tables_ptr, width, pairs_L_ptr, theta_L_ptr, n_L, pairs_R_ptr, theta_R_ptr, n_R,
                           CAYLEY: tl.constexpr, BLOCK_S: tl.constexpr):  # fmt: skip
    """Look up coordinates ``k``'s rotations under ``L`` and ``R`` and store them (:func:`_store_rotation`)."""
    ok = k < width
    partner, cos, sin, entry = _lookup(k, pairs_L_ptr, theta_L_ptr, n_L, CAYLEY, BLOCK_S)
    _store_rotation(k, ok, tables_ptr, width, partner, cos, sin, entry, 0)
    partner, cos, sin, entry = _lookup(k, pairs_R_ptr, theta_R_ptr, n_R, CAYLEY, BLOCK_S)
    _store_rotation(k, ok, tables_ptr, width, partner, cos, sin, entry, 1)


@triton.jit
def _split_counters(scale_ptr, n_out):
    """The token sums' per-split arrival counters (int32) in the fold's scale buffer: ``s`` (``n_out``),
    ``E_incl`` and ECD's ``κ``, then the counters."""
    return (scale_ptr + n_out + 2).to(tl.pointer_type(tl.int32))


@triton.jit
def _slot_ok(k, t, full, n_diag, BLOCK_SIZE: tl.constexpr):
    """Whether core row ``k`` has slot ``t``: a block row (``k < full``) has ``b``, the remainder diagonal one."""
    return ((k >= 0) & (k < full) & (t < BLOCK_SIZE)) | ((k >= full) & (k < n_diag) & (t == 0))


@triton.jit
def _slot_column(k, t, full, BLOCK_SIZE: tl.constexpr):
    """Column of slot ``t`` of core row ``k`` (for a column ``j``: the ``t``-th row of ``j``'s block)."""
    return tl.where(k < full, (k // BLOCK_SIZE) * BLOCK_SIZE + t, k)


@triton.jit
def _slot_value(blocks_ptr, tail_ptr, k, t, ok, full, BLOCK_SIZE: tl.constexpr):
    """Core value of slot ``t`` of row ``k`` (fp32; 0 where ``ok`` is false)."""
    value = tl.load(blocks_ptr + k * BLOCK_SIZE + t, mask=ok & (k < full), other=0.0).to(tl.float32)
    return value + tl.load(tail_ptr + (k - full), mask=ok & (k >= full), other=0.0).to(tl.float32)


@triton.jit
def _value_index(k, t, full, BLOCK_SIZE: tl.constexpr):
    """Index of slot ``(k, t)`` in the flat core gradient: the blocks (``[full, b]``), then the tail."""
    return tl.where(k < full, k * BLOCK_SIZE + t, full * BLOCK_SIZE + (k - full))


@triton.jit
def _row_slots(
    rows, row_ok, pairs_L_ptr, theta_L_ptr, n_L, pairs_R_ptr, theta_R_ptr, n_R, full, n_diag, tables_ptr, width,
    blocks_ptr, tail_ptr, CAYLEY: tl.constexpr, BLOCK_SIZE: tl.constexpr, SLOTS: tl.constexpr, BLOCK_S: tl.constexpr,
    ROWS: tl.constexpr, FROM_TABLES: tl.constexpr,
):  # fmt: skip
    """The geometry of core rows ``k`` (1-D) that the fold and the chain rule share.

    Returns ``q = partner_L(k)`` with ``k``'s ``L`` rotation and table entry, and per slot ``t``
    (``[ROWS, SLOTS]``): whether ``k`` and ``q`` have it, its columns ``col(k, t)``, ``col(q, t)``, the ``R``
    rotation at those columns (partner, cos, sin; the table entry for ``col(k, t)``), and the core values of
    ``k``'s and ``q``'s slots. Rotations are looked up in the pair tables, or with ``FROM_TABLES`` read from
    the per-coordinate tables.
    """
    if FROM_TABLES:
        q, cos_L, sin_L, entry_L = _table_rotation(rows, tables_ptr, width, 0)
    else:
        q, cos_L, sin_L, entry_L = _lookup(rows, pairs_L_ptr, theta_L_ptr, n_L, CAYLEY, BLOCK_S)
    t = tl.arange(0, SLOTS)[None, :]
    k2 = rows[:, None]
    q2 = q[:, None]
    ok_k = row_ok[:, None] & _slot_ok(k2, t, full, n_diag, BLOCK_SIZE)
    ok_q = row_ok[:, None] & _slot_ok(q2, t, full, n_diag, BLOCK_SIZE)
    col_k = _slot_column(k2, t, full, BLOCK_SIZE)
    col_q = _slot_column(q2, t, full, BLOCK_SIZE)
    if FROM_TABLES:
        partner_k, cos_Rk, sin_Rk, entry_Rk = _table_rotation(col_k, tables_ptr, width, 1)
        partner_q, cos_Rq, sin_Rq, _ = _table_rotation(col_q, tables_ptr, width, 1)
    else:
        partner_k, cos_Rk, sin_Rk, entry_Rk = _lookup_2d(
            col_k, pairs_R_ptr, theta_R_ptr, n_R, CAYLEY, BLOCK_S, ROWS, SLOTS
        )
        partner_q, cos_Rq, sin_Rq, _ = _lookup_2d(
            col_q, pairs_R_ptr, theta_R_ptr, n_R, CAYLEY, BLOCK_S, ROWS, SLOTS
        )
    value_k = _slot_value(blocks_ptr, tail_ptr, k2, t, ok_k, full, BLOCK_SIZE)
    value_q = _slot_value(blocks_ptr, tail_ptr, q2, t, ok_q, full, BLOCK_SIZE)
    return (
        q, cos_L, sin_L, entry_L, ok_k, ok_q, col_k, col_q, partner_k, cos_Rk, sin_Rk, entry_Rk, partner_q,
        cos_Rq, sin_Rq, value_k, value_q,
    )  # fmt: skip


@triton.jit
def _tanh(v):
    return 1.0 - 2.0 / (tl.exp(2.0 * v) + 1.0)


@triton.jit
def _magnitude_normaliser(
    logits_ptr, norms_ptr, energy_ptr, temp_ptr, n_out, eps, alpha, MODE: tl.constexpr, BLOCK_N: tl.constexpr
):
    """``(normaliser, E_incl)``: OER ``logsumexp_j(2 log ν_j + w_j/T) − log E_incl``, ECD
    ``κ = sqrt(E_incl / Σ_j (ν_j g_j)²)``; ``E_incl`` is the energy of the included rows (``ν > eps``)."""
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
        return run_max + tl.log(tl.sum(acc, 0)) - tl.log(energy), energy
    else:
        return tl.sqrt(energy / tl.sum(acc, 0)), energy


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
def _forward_scale(
    rows, row_ok, scale_out_ptr, scale_ptr, logits_ptr, norms_ptr, energy_ptr, temp_ptr, n_out, eps, alpha,
    MODE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_COUNTERS: tl.constexpr,
):  # fmt: skip
    """``s`` at ``rows`` in a forward kernel (1 without a scale, the given one, or from the magnitude logits).

    With a magnitude it is also stored to ``scale_out``, and program 0 stores ``E_incl`` and ECD's ``κ`` after
    it (``scale_out[n:n + 2]``, for the backward) and zeroes the ``SPLIT_COUNTERS`` arrival counters of the
    backward's token sums after those.
    """
    normaliser = 0.0
    if MODE >= 2:
        normaliser, energy = _magnitude_normaliser(
            logits_ptr, norms_ptr, energy_ptr, temp_ptr, n_out, eps, alpha, MODE, BLOCK_N
        )
        if tl.program_id(0) == 0:
            tl.store(scale_out_ptr + n_out, energy)
            tl.store(scale_out_ptr + n_out + 1, normaliser)
            counters = tl.arange(0, SPLIT_COUNTERS)
            tl.store(_split_counters(scale_out_ptr, n_out) + counters, tl.zeros((SPLIT_COUNTERS,), tl.int32))
    s = _row_scale(rows, row_ok, scale_ptr, logits_ptr, norms_ptr, temp_ptr, normaliser, eps, alpha, MODE)
    if MODE >= 2:
        tl.store(scale_out_ptr + rows, s, mask=row_ok)
    return s


@triton.jit
def _fold_kernel(
    w_ptr, folded_ptr, scale_out_ptr, scale_ptr, logits_ptr, norms_ptr, energy_ptr, temp_ptr,
    blocks_ptr, tail_ptr, offset_blocks_ptr, offset_tail_ptr, pairs_L_ptr, theta_L_ptr, n_L,
    pairs_R_ptr, theta_R_ptr, n_R, n_out, n_in, n_diag, full, stride_row, stride_col, eps, alpha, tables_ptr,
    MODE: tl.constexpr, HAS_OFFSET: tl.constexpr, CAYLEY: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    SLOTS: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr, TABLES: tl.constexpr, SPLIT_COUNTERS: tl.constexpr,
):  # fmt: skip
    """``folded = diag(s)(W + ΔW)`` for a block of rows (logical ``[n, m]``; any strides); writes ``s`` and what
    the backward needs beside it (:func:`_forward_scale`), and with ``TABLES`` the rotation tables of every
    coordinate (:func:`_write_rotation_tables`, for the per-coordinate kernel of the backward; the programs
    share the ``max(n, m)`` coordinates).

    Row ``k``'s entries, per slot ``t`` (``q = partner_L(k)``, ``j = col(k, t)``, ``j' = col(q, t)``):
    ``E1`` at ``j``, ``E2`` at ``partner_R(j)``, ``E3`` at ``j'``, ``E4`` at ``partner_R(j')``.
    """
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < n_out
    s = _forward_scale(
        rows, row_ok, scale_out_ptr, scale_ptr, logits_ptr, norms_ptr, energy_ptr, temp_ptr, n_out, eps, alpha,
        MODE, BLOCK_N, SPLIT_COUNTERS,
    )  # fmt: skip
    row_off = rows[:, None].to(tl.int64) * stride_row
    # 1. the scaled copy s ⊙ W: a pure stream (no per-element index work, few registers); two tiles loaded
    # before either is stored (the compiler may not move a load above a store to a pointer it cannot tell apart)
    for start in range(0, n_in, 2 * BLOCK_COLS):
        cols_a = start + tl.arange(0, BLOCK_COLS)
        cols_b = cols_a + BLOCK_COLS
        mask_a = row_ok[:, None] & (cols_a < n_in)[None, :]
        mask_b = row_ok[:, None] & (cols_b < n_in)[None, :]
        offsets_a = row_off + cols_a[None, :].to(tl.int64) * stride_col
        offsets_b = row_off + cols_b[None, :].to(tl.int64) * stride_col
        w_a = tl.load(w_ptr + offsets_a, mask=mask_a, other=0.0).to(tl.float32)
        w_b = tl.load(w_ptr + offsets_b, mask=mask_b, other=0.0).to(tl.float32)
        tl.store(folded_ptr + offsets_a, (w_a * s[:, None]).to(folded_ptr.dtype.element_ty), mask=mask_a)
        tl.store(folded_ptr + offsets_b, (w_b * s[:, None]).to(folded_ptr.dtype.element_ty), mask=mask_b)
    # 2. the ≤ 4b entries of ΔW per row: s ⊙ (W + the sum of the entries at that column) over the copy; the
    # barrier orders these stores after the copy's (the same program owns the rows; entries that share a
    # column write the same value)
    tl.debug_barrier()
    t = tl.arange(0, SLOTS)[None, :]
    k2 = rows[:, None]
    # looked up here (the fold writes the tables: theta_L and n_out stand in for them, unread)
    (
        q, cos_L, sin_L, entry_L, ok_k, _, col_k, col_q, partner_k, cos_Rk, sin_Rk, entry_Rk, partner_q, cos_Rq,
        sin_Rq, value_k, value_q,
    ) = _row_slots(
        rows, row_ok, pairs_L_ptr, theta_L_ptr, n_L, pairs_R_ptr, theta_R_ptr, n_R, full, n_diag, theta_L_ptr,
        n_out, blocks_ptr, tail_ptr, CAYLEY, BLOCK_SIZE, SLOTS, BLOCK_S, BLOCK_ROWS, False,
    )  # fmt: skip
    e1 = cos_L[:, None] * value_k * cos_Rk
    if HAS_OFFSET:
        e1 -= _slot_value(offset_blocks_ptr, offset_tail_ptr, k2, t, ok_k, full, BLOCK_SIZE)
    e2 = cos_L[:, None] * value_k * sin_Rk
    e3 = -sin_L[:, None] * value_q * cos_Rq
    e4 = -sin_L[:, None] * value_q * sin_Rq
    _fold_entries(w_ptr, folded_ptr, row_off, row_ok, s, n_in, stride_col, col_k, col_k, partner_k, col_q,
                  partner_q, e1, e2, e3, e4)  # fmt: skip
    _fold_entries(w_ptr, folded_ptr, row_off, row_ok, s, n_in, stride_col, partner_k, col_k, partner_k, col_q,
                  partner_q, e1, e2, e3, e4)  # fmt: skip
    _fold_entries(w_ptr, folded_ptr, row_off, row_ok, s, n_in, stride_col, col_q, col_k, partner_k, col_q,
                  partner_q, e1, e2, e3, e4)  # fmt: skip
    _fold_entries(w_ptr, folded_ptr, row_off, row_ok, s, n_in, stride_col, partner_q, col_k, partner_k, col_q,
                  partner_q, e1, e2, e3, e4)  # fmt: skip
    if TABLES:
        width = tl.maximum(n_out, n_in)
        first = 0
        if SLOTS == 1:  # b = 1: col(k, 0) = k, so the rows' rotations under both sides are those above
            _store_rotation(rows, row_ok, tables_ptr, width, q, cos_L, sin_L, entry_L, 0)
            _store_rotation(rows, row_ok, tables_ptr, width, tl.reshape(partner_k, (BLOCK_ROWS,)),
                            tl.reshape(cos_Rk, (BLOCK_ROWS,)), tl.reshape(sin_Rk, (BLOCK_ROWS,)),
                            tl.reshape(entry_Rk, (BLOCK_ROWS,)), 1)  # fmt: skip
            first = n_out  # the columns past the rows (n < m) are left
        for start in range(first + tl.program_id(0) * BLOCK_ROWS, width, tl.num_programs(0) * BLOCK_ROWS):
            _write_rotation_tables(start + tl.arange(0, BLOCK_ROWS), tables_ptr, width, pairs_L_ptr, theta_L_ptr,
                                   n_L, pairs_R_ptr, theta_R_ptr, n_R, CAYLEY, BLOCK_S)  # fmt: skip


@triton.jit
def _entries_at(col, entry_col, entry):
    """Per ``[rows, slots]`` column ``col``: the sum of the ``entry`` values whose ``entry_col`` equals it."""
    return tl.sum(tl.where(col[:, :, None] == entry_col[:, None, :], entry[:, None, :], 0.0), 2)


@triton.jit
def _fold_entries(w_ptr, folded_ptr, row_off, row_ok, s, n_in, stride_col, col, col1, col2, col3, col4,
                  e1, e2, e3, e4):  # fmt: skip
    """Write ``s (W + ΔW)`` at the ``[rows, slots]`` columns ``col`` (``ΔW``'s entries ``e1..e4`` at ``col1..4``)."""
    delta = _entries_at(col, col1, e1) + _entries_at(col, col2, e2)
    delta += _entries_at(col, col3, e3) + _entries_at(col, col4, e4)
    ok = row_ok[:, None] & (col >= 0) & (col < n_in)
    offsets = row_off + col.to(tl.int64) * stride_col
    w = tl.load(w_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
    tl.store(folded_ptr + offsets, ((w + delta) * s[:, None]).to(folded_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _over_tile(v, ACC_ROWS: tl.constexpr):
    """``v`` [tokens, columns] for an accumulator of ``ACC_ROWS`` token rows: summed over the tile's tokens
    (kept 2-D) for one row, else as it is (one reduction over tokens at the end)."""
    if ACC_ROWS == 1:
        return tl.sum(v, 0, keep_dims=True)
    else:
        return v


@triton.jit
def _column_tile(g, y, x, x_slot, acc_g, acc_gy, acc_gg, acc_xx, acc_gx, acc_outer, acc_slots,
                 G_SUM: tl.constexpr, HAS_Y: tl.constexpr, STATS_OUT: tl.constexpr, STATS_IN: tl.constexpr,
                 PARAMS: tl.constexpr, SLOTS: tl.constexpr, OUTER: tl.constexpr, BLOCK_T: tl.constexpr,
                 BLOCK_C: tl.constexpr, ACC_ROWS: tl.constexpr):  # fmt: skip
    """One token tile of the column programs into their accumulators (the tile's loads already issued)."""
    g = g.to(tl.float32)
    if G_SUM:  # only for a bias: one accumulator fewer
        acc_g += _over_tile(g, ACC_ROWS)
    if HAS_Y:
        acc_gy += _over_tile(g * y.to(tl.float32), ACC_ROWS)
    if STATS_OUT:
        acc_gg += _over_tile(g * g, ACC_ROWS)
    if STATS_IN or (PARAMS and (SLOTS == 1 or OUTER)):
        x = x.to(tl.float32)
        if STATS_IN:
            acc_xx += _over_tile(x * x, ACC_ROWS)
        if PARAMS and (SLOTS == 1 or OUTER):  # the diagonal: the diag core, the remainder diagonal
            acc_gx += _over_tile(g * x, ACC_ROWS)
        if PARAMS and OUTER:  # b a power of two: per block, the outer product of g's and x's rows
            g_blocks = tl.reshape(g, (BLOCK_T, BLOCK_C // SLOTS, SLOTS))
            x_blocks = tl.reshape(x, (BLOCK_T, BLOCK_C // SLOTS, SLOTS))
            acc_outer += g_blocks[:, :, :, None] * x_blocks[:, :, None, :]
    if PARAMS and (SLOTS > 1 and not OUTER):
        acc_slots += g[:, :, None] * x_slot.to(tl.float32)
    return acc_g, acc_gy, acc_gg, acc_xx, acc_gx, acc_outer, acc_slots


@triton.jit
def _token_sums_kernel(
    g_ptr, y_ptr, x_ptr, partial_ptr, split_stride, pairs_L_ptr, n_L, pairs_R_ptr, theta_R_ptr, n_R,
    n_tokens, n_out, n_in, n_diag, full, width, stride_g, stride_y, stride_x, tokens_per_split, n_col_blocks,
    bias_ptr, norms_ptr, eps, scale_ptr, theta_grads_ptr, n_theta,
    HAS_Y: tl.constexpr, G_SUM: tl.constexpr, HAS_BIAS: tl.constexpr, ROW_TOTAL: tl.constexpr,
    PARAMS: tl.constexpr, STATS_OUT: tl.constexpr,
    STATS_IN: tl.constexpr, BLOCK_SIZE: tl.constexpr, SLOTS: tl.constexpr, OUTER: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_TE: tl.constexpr, BLOCK_S: tl.constexpr,
    UNROLL: tl.constexpr, ACC_ROWS: tl.constexpr, BLOCK_COL_BLOCKS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Partial token sums of one split of tokens (fp32).

    Programs ``pid < n_col_blocks`` take a block of coordinates ``k`` and stream ``g``, ``y``, ``x`` with
    contiguous loads: ``Σg·y``, ``Σg`` (``G_SUM``), ``Σg²``, ``Σx²`` (rows 0-3 of ``width``), then the slot sums
    ``Σ g_k x_col(k, t)`` (``width × SLOTS``: the diagonal for ``b = 1``; for a power-of-two ``b`` (``OUTER``)
    the outer product of each block's ``g`` and ``x`` rows, with the remainder diagonal beside it; else
    ``x`` gathered at the slot columns). The others take a block of rotation entries — ``(row, column)``
    positions of ``ΔW`` that depend on an angle — and gather ``Σ_t g[t, row] x[t, column]`` (after the slot
    sums, ``SLOTS`` per table position: ``G2`` for ``R``'s ``2 S_R`` positions, then ``G3`` and ``G4`` for
    ``L``'s ``2 S_L`` each). They run beside the column programs of the same split, so their gathers mostly
    hit L2.

    With ``ROW_TOTAL`` each column program also writes ``Σ_k Σ_t g (y − b)`` over its included rows
    (``ν > eps``) to the split's last ``n_col_blocks`` values, and the split's last program to finish (an
    arrival counter per split, zero at the launch) sums them into ``split_totals``: the total that the
    magnitude logits' gradient needs in every program of the per-coordinate kernel. Program (0, 0) zeroes the
    ``n_theta`` angle gradients, which the per-coordinate kernel accumulates.
    """
    if PDL:  # launched as a dependent of the kernel before it (the ∂L/∂x matmul): wait for it to finish
        tl.extra.cuda.gdc_wait()
    split = tl.program_id(1)
    block = tl.program_id(0)
    first = split * tokens_per_split
    base = partial_ptr + split * split_stride
    if (block == 0) & (split == 0):
        for start in range(0, n_theta, BLOCK_C):
            index = start + tl.arange(0, BLOCK_C)
            tl.store(theta_grads_ptr + index, tl.zeros((BLOCK_C,), tl.float32), mask=index < n_theta)
    if block < n_col_blocks:
        k = block * BLOCK_C + tl.arange(0, BLOCK_C)
        out_ok = k < n_out
        in_ok = k < n_in
        slot = tl.arange(0, SLOTS)[None, :]
        slot_ok = _slot_ok(k[:, None], slot, full, n_diag, BLOCK_SIZE)
        slot_col = _slot_column(k[:, None], slot, full, BLOCK_SIZE)
        # 2-D accumulators of ACC_ROWS token rows (:func:`_over_tile`; 3-D/4-D for the block slot sums, a row
        # per token of the tile): their rows are summed once at the end
        acc_gy = tl.zeros((ACC_ROWS, BLOCK_C), tl.float32)
        acc_g = tl.zeros((ACC_ROWS, BLOCK_C), tl.float32)
        acc_gg = tl.zeros((ACC_ROWS, BLOCK_C), tl.float32)
        acc_xx = tl.zeros((ACC_ROWS, BLOCK_C), tl.float32)
        acc_gx = tl.zeros((ACC_ROWS, BLOCK_C), tl.float32)
        acc_slots = tl.zeros((BLOCK_T, BLOCK_C, SLOTS), tl.float32)
        acc_outer = tl.zeros((BLOCK_T, BLOCK_C // SLOTS, SLOTS, SLOTS), tl.float32)
        for offset in range(0, tokens_per_split, 2 * BLOCK_T):
            # two token tiles per step, every load of both issued before the first use (Nsight Compute: with
            # each load next to its use the warps waited at every one of them). Written out for both tiles on
            # purpose: the same loads through one jit helper compiled differently on the H200 (token sums
            # 290 -> 319 µs at T=32768, gpu-2026-11-28-h200-v9-sweep.txt). Software pipelining of this loop
            # (tl.range num_stages: asynchronous copies through shared memory) was slower at every depth
            # and tile shape tried: 76 -> 88-200 µs at T=8192, and so were TMA descriptor loads in a pipelined
            # loop: 75 -> 88-158 µs (gpu-2026-11-29-h200-v11-sweep.txt)
            t_a = first + offset + tl.arange(0, BLOCK_T)
            t_b = t_a + BLOCK_T
            ok_a = (t_a < n_tokens) & (t_a < first + tokens_per_split)
            ok_b = (t_b < n_tokens) & (t_b < first + tokens_per_split)
            ta64 = t_a[:, None].to(tl.int64)
            tb64 = t_b[:, None].to(tl.int64)
            g_a = tl.load(
                g_ptr + ta64 * stride_g + k[None, :], mask=ok_a[:, None] & out_ok[None, :], other=0.0
            )
            g_b = tl.load(
                g_ptr + tb64 * stride_g + k[None, :], mask=ok_b[:, None] & out_ok[None, :], other=0.0
            )
            y_a = g_a
            y_b = g_b
            if HAS_Y:
                y_a = tl.load(
                    y_ptr + ta64 * stride_y + k[None, :], mask=ok_a[:, None] & out_ok[None, :], other=0.0
                )
                y_b = tl.load(
                    y_ptr + tb64 * stride_y + k[None, :], mask=ok_b[:, None] & out_ok[None, :], other=0.0
                )
            x_a = g_a
            x_b = g_b
            if STATS_IN or (PARAMS and (SLOTS == 1 or OUTER)):
                x_a = tl.load(
                    x_ptr + ta64 * stride_x + k[None, :], mask=ok_a[:, None] & in_ok[None, :], other=0.0
                )
                x_b = tl.load(
                    x_ptr + tb64 * stride_x + k[None, :], mask=ok_b[:, None] & in_ok[None, :], other=0.0
                )
            slot_a = acc_slots
            slot_b = acc_slots
            if PARAMS and (SLOTS > 1 and not OUTER):  # other b: gather x at the slot columns (L1 hits)
                slot_a = tl.load(
                    x_ptr + ta64[:, :, None] * stride_x + slot_col[None, :, :],
                    mask=ok_a[:, None, None] & slot_ok[None, :, :], other=0.0,
                )  # fmt: skip
                slot_b = tl.load(
                    x_ptr + tb64[:, :, None] * stride_x + slot_col[None, :, :],
                    mask=ok_b[:, None, None] & slot_ok[None, :, :], other=0.0,
                )  # fmt: skip
            acc_g, acc_gy, acc_gg, acc_xx, acc_gx, acc_outer, acc_slots = _column_tile(
                g_a, y_a, x_a, slot_a, acc_g, acc_gy, acc_gg, acc_xx, acc_gx, acc_outer, acc_slots,
                G_SUM, HAS_Y, STATS_OUT, STATS_IN, PARAMS, SLOTS, OUTER, BLOCK_T, BLOCK_C, ACC_ROWS,
            )  # fmt: skip
            acc_g, acc_gy, acc_gg, acc_xx, acc_gx, acc_outer, acc_slots = _column_tile(
                g_b, y_b, x_b, slot_b, acc_g, acc_gy, acc_gg, acc_xx, acc_gx, acc_outer, acc_slots,
                G_SUM, HAS_Y, STATS_OUT, STATS_IN, PARAMS, SLOTS, OUTER, BLOCK_T, BLOCK_C, ACC_ROWS,
            )  # fmt: skip
        ok = k < width
        gy = tl.sum(acc_gy, 0)
        tl.store(base + k, gy, mask=ok)
        if G_SUM:
            tl.store(base + width + k, tl.sum(acc_g, 0), mask=ok)
        if ROW_TOTAL:
            if HAS_BIAS:
                gy -= tl.load(bias_ptr + k, mask=out_ok, other=0.0).to(tl.float32) * tl.sum(acc_g, 0)
            nu = tl.load(norms_ptr + k, mask=out_ok, other=0.0).to(tl.float32)
            total = tl.sum(tl.where(out_ok & (nu > eps), gy, 0.0), 0)
            block_totals = base + split_stride - n_col_blocks
            tl.store(block_totals + block, total)
        tl.store(base + 2 * width + k, tl.sum(acc_gg, 0), mask=ok)
        tl.store(base + 3 * width + k, tl.sum(acc_xx, 0), mask=ok)
        if SLOTS == 1:
            tl.store(base + 4 * width + k, tl.sum(acc_gx, 0), mask=ok)
        elif OUTER:
            outer = tl.reshape(tl.sum(acc_outer, 0), (BLOCK_C, SLOTS))
            diagonal = tl.where(slot == 0, tl.sum(acc_gx, 0)[:, None], 0.0)
            sums = tl.where(k[:, None] < full, outer, diagonal)
            tl.store(base + 4 * width + k[:, None] * SLOTS + slot, sums, mask=ok[:, None])
        else:
            tl.store(base + 4 * width + k[:, None] * SLOTS + slot, tl.sum(acc_slots, 0), mask=ok[:, None])
        # the split's last column program to arrive (acquire-release: the others' totals are visible to it) sums
        # them in a fixed order, so the per-coordinate kernel reads one total per split
        if ROW_TOTAL:
            counter = _split_counters(scale_ptr, n_out) + split
            arrived = tl.atomic_add(counter, 1, sem="acq_rel")
            if arrived == n_col_blocks - 1:
                blocks = tl.arange(0, BLOCK_COL_BLOCKS)
                totals = tl.load(
                    block_totals + blocks, mask=blocks < n_col_blocks, other=0.0, cache_modifier=".cg"
                )
                split_totals = partial_ptr + tl.num_programs(1) * split_stride  # after the splits' rows
                tl.store(split_totals + split, tl.sum(totals, 0))
                tl.store(counter, 0)  # zero again: a second backward of the same forward
    else:
        e = (block - n_col_blocks) * BLOCK_E + tl.arange(0, BLOCK_E)
        position = e // SLOTS  # a position in a flat pair table
        entry_slot = e % SLOTS
        n_R2 = 2 * n_R
        n_L2 = 2 * n_L
        in_R = position < n_R2
        in_L = (position >= n_R2) & (position < n_R2 + 2 * n_L2)
        is_G3 = position < n_R2 + n_L2
        p_L = tl.where(in_L, tl.where(is_G3, position - n_R2, position - n_R2 - n_L2), 0)
        p_R = tl.where(in_R, position, 0)
        # G2: j in R's pairs, rows of j's block, column partner_R(j); G3/G4: row k in L's pairs, column
        # col(q, t) / partner_R(col(q, t)) with q = partner_L(k)
        j = tl.load(pairs_R_ptr + p_R, mask=in_R, other=-1).to(tl.int32)
        partner_j = tl.load(pairs_R_ptr + (p_R ^ 1), mask=in_R, other=-1).to(tl.int32)
        row_L = tl.load(pairs_L_ptr + p_L, mask=in_L, other=-1).to(tl.int32)
        q = tl.load(pairs_L_ptr + (p_L ^ 1), mask=in_L, other=-1).to(tl.int32)
        col_q = _slot_column(q, entry_slot, full, BLOCK_SIZE)
        partner_col_q, _, _, _ = _lookup(col_q, pairs_R_ptr, theta_R_ptr, n_R, False, BLOCK_S)
        row = tl.where(in_R, _slot_column(j, entry_slot, full, BLOCK_SIZE), row_L)
        col = tl.where(in_R, partner_j, tl.where(is_G3, col_q, partner_col_q))
        valid = tl.where(
            in_R,
            (j >= 0) & _slot_ok(j, entry_slot, full, n_diag, BLOCK_SIZE),
            in_L & (row_L >= 0) & _slot_ok(q, entry_slot, full, n_diag, BLOCK_SIZE),
        )
        # a G4 entry at a column that R leaves alone is only ever multiplied by that column's sin_R = 0 (or
        # feeds a θ_R share that is masked out): not gathered, its sum stays 0 (about a third of the entries)
        valid = valid & (in_R | is_G3 | (partner_col_q != col_q))
        valid = valid & (row >= 0) & (row < n_out) & (col >= 0) & (col < n_in)
        row = tl.where(valid, row, 0)
        col = tl.where(valid, col, 0)
        acc = tl.zeros((BLOCK_TE, BLOCK_E), tl.float32)
        for offset in range(0, tokens_per_split, BLOCK_TE * UNROLL):
            for u in tl.static_range(UNROLL):
                t = first + offset + u * BLOCK_TE + tl.arange(0, BLOCK_TE)
                t_ok = (t < n_tokens) & (t < first + tokens_per_split)
                t64 = t[:, None].to(tl.int64)
                mask = t_ok[:, None] & valid[None, :]
                g = tl.load(g_ptr + t64 * stride_g + row[None, :], mask=mask, other=0.0).to(tl.float32)
                x = tl.load(x_ptr + t64 * stride_x + col[None, :], mask=mask, other=0.0).to(tl.float32)
                acc += g * x
        tl.store(base + (4 + SLOTS) * width + e, tl.sum(acc, 0), mask=position < n_R2 + 2 * n_L2)
    if PDL:  # the per-coordinate kernel may launch once every program got here (earlier, its programs would
        # take the second wave's places: H200, T=8192, d=4096, layer 1.1515 -> 1.1476 x frozen)
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _split_sum(ptr, index, mask, split_stride, n_splits, BLOCK_SPLITS: tl.constexpr):
    """``Σ_split ptr[split · split_stride + index]``: one 2-D load (independent loads in flight)."""
    splits = tl.arange(0, BLOCK_SPLITS)
    offsets = splits[:, None] * split_stride + index[None, :]
    tile = tl.load(ptr + offsets, mask=(splits[:, None] < n_splits) & mask[None, :], other=0.0)
    return tl.sum(tile, 0)


@triton.jit
def _split_sum_2d(ptr, index, mask, split_stride, n_splits, BLOCK_SPLITS: tl.constexpr, ROWS: tl.constexpr,
                  SLOTS: tl.constexpr):  # fmt: skip
    """:func:`_split_sum` of a ``[ROWS, SLOTS]`` block of indices."""
    flat = _split_sum(
        ptr,
        tl.reshape(index, (ROWS * SLOTS,)),
        tl.reshape(mask, (ROWS * SLOTS,)),
        split_stride,
        n_splits,
        BLOCK_SPLITS,
    )
    return tl.reshape(flat, (ROWS, SLOTS))


@triton.jit
def _coordinate_grads_kernel(
    partial_ptr, n_splits, split_stride, width, scale_ptr, bias_ptr, bias_grad_ptr, scale_grad_ptr,
    stats_out_ptr, stats_in_ptr, inv_tokens, blocks_ptr, tail_ptr, core_grad_ptr,
    pairs_L_ptr, theta_L_ptr, n_L, pairs_R_ptr, theta_R_ptr, n_R, n_out, n_in, n_diag, full,
    logits_ptr, norms_ptr, temp_ptr, logits_grad_ptr, eps, alpha, theta_L_grad_ptr, theta_R_grad_ptr, tables_ptr,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, SCALE_GRAD: tl.constexpr, BIAS_GRAD: tl.constexpr,
    G_SUM: tl.constexpr, PARAMS: tl.constexpr, STATS_OUT: tl.constexpr, STATS_IN: tl.constexpr, CAYLEY: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, SLOTS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_SPLITS: tl.constexpr, MODE: tl.constexpr, LOGITS_GRAD: tl.constexpr, THETA_L_GRAD: tl.constexpr,
    THETA_R_GRAD: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Per coordinate: bias, scale and magnitude-logit gradients, statistics, core gradients, and each
    coordinate's share of the angle gradients of its slots.

    Coordinate ``k`` acts as a row (its slots' core gradients, ``∂/∂cos_L``, ``∂/∂sin_L``) and as a column
    ``j = k`` (``∂/∂cos_R``, ``∂/∂sin_R``: a sum over the rows of ``j``'s block, whose slot ``j − start(j)``
    sits at column ``j``). Every program is independent: the logits' gradient takes its one global sum from
    the token sums' per-block totals, and the angle gradients are accumulated (:func:`_add_angle_grads`).
    """
    k = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    out_ok = k < n_out
    in_ok = k < n_in
    # what the forward wrote first (the scale, the rotations, the core values): with PDL this runs while the
    # token sums finish, and the partial sums are read after the wait
    if HAS_SCALE:
        s = tl.load(scale_ptr + k, mask=out_ok, other=1.0).to(tl.float32)
    else:
        s = k.to(tl.float32) * 0.0 + 1.0
    if PARAMS:
        t = tl.arange(0, SLOTS)[None, :]
        k2 = k[:, None]
        s2 = s[:, None]
        (
            q, cos_L, sin_L, entry_L, ok_k, ok_q, _, _, _, cos_Rk, sin_Rk, entry_Rk, _, cos_Rq, sin_Rq, value_k,
            value_q,
        ) = _row_slots(
            k, out_ok, pairs_L_ptr, theta_L_ptr, n_L, pairs_R_ptr, theta_R_ptr, n_R, full, n_diag, tables_ptr, width,
            blocks_ptr, tail_ptr, CAYLEY, BLOCK_SIZE, SLOTS, BLOCK_S, BLOCK, True,
        )  # fmt: skip
        if HAS_SCALE:
            s_q = tl.load(scale_ptr + q, mask=out_ok, other=1.0).to(tl.float32)[:, None]
        else:
            s_q = s2
    if PDL:
        tl.extra.cuda.gdc_wait()
    # the token sums wrote Σg (the host asks for it with a bias gradient, or a scale one and a bias)
    if G_SUM:
        g_sum = _split_sum(partial_ptr + width, k, out_ok, split_stride, n_splits, BLOCK_SPLITS)
    else:
        g_sum = k.to(tl.float32) * 0.0
    if BIAS_GRAD:
        tl.store(bias_grad_ptr + k, g_sum, mask=out_ok)
    if SCALE_GRAD:  # weighted = s ⊙ ∂L/∂s = Σ_t g ⊙ (y − b)
        weighted = _split_sum(partial_ptr, k, out_ok, split_stride, n_splits, BLOCK_SPLITS)
        if HAS_BIAS:
            weighted -= tl.load(bias_ptr + k, mask=out_ok, other=0.0).to(tl.float32) * g_sum
        if not LOGITS_GRAD:  # a given scale: ∂L/∂s (not finite where s is exactly 0: y lost those rows)
            tl.store(scale_grad_ptr + k, weighted / s, mask=out_ok)
        else:  # the logits' gradient from weighted itself: an s underflowed to 0 gives a zero share
            _logits_grads(
                k, out_ok, weighted, s, partial_ptr + n_splits * split_stride, n_splits, scale_ptr + n_out,
                logits_ptr, norms_ptr, temp_ptr, logits_grad_ptr, eps, alpha, MODE, BLOCK_SPLITS,
            )  # fmt: skip
    if STATS_OUT:
        gg = _split_sum(partial_ptr + 2 * width, k, out_ok, split_stride, n_splits, BLOCK_SPLITS)
        tl.store(stats_out_ptr + k, tl.load(stats_out_ptr + k, mask=out_ok) + gg * inv_tokens, mask=out_ok)
    if STATS_IN:
        xx = _split_sum(partial_ptr + 3 * width, k, in_ok, split_stride, n_splits, BLOCK_SPLITS)
        tl.store(stats_in_ptr + k, tl.load(stats_in_ptr + k, mask=in_ok) + xx * inv_tokens, mask=in_ok)
    if PARAMS:
        slot_sums = partial_ptr + 4 * width
        g2_ptr = partial_ptr + (4 + SLOTS) * width
        g3_ptr = g2_ptr + 2 * n_R * SLOTS
        g4_ptr = g3_ptr + 2 * n_L * SLOTS
        # --- k as a row: upstream gradients of its entries (Σ_t (g s)_k x_col, see the token sums), and
        # G3, G4 of row q; rotation entries are 0 where no rotation touches the row (coefficients vanish)
        G1 = (
            _split_sum_2d(slot_sums, k2 * SLOTS + t, ok_k, split_stride, n_splits, BLOCK_SPLITS, BLOCK, SLOTS)
            * s2
        )
        rotated_R = ok_k & (entry_Rk >= 0)
        row_in_block = k2 - _slot_column(k2, 0, full, BLOCK_SIZE)
        G2 = _split_sum_2d(
            g2_ptr, tl.where(rotated_R, entry_Rk * SLOTS + row_in_block, 0), rotated_R, split_stride,
            n_splits, BLOCK_SPLITS, BLOCK, SLOTS,
        ) * s2  # fmt: skip
        rotated_L = (entry_L >= 0)[:, None]
        own_q = rotated_L & ok_q
        e3 = tl.where(own_q, entry_L[:, None] * SLOTS + t, 0)
        G3 = _split_sum_2d(g3_ptr, e3, own_q, split_stride, n_splits, BLOCK_SPLITS, BLOCK, SLOTS) * s2
        G4 = _split_sum_2d(g4_ptr, e3, own_q, split_stride, n_splits, BLOCK_SPLITS, BLOCK, SLOTS) * s2
        sin_Lq = -sin_L[:, None]  # partner_L is an involution: sin_L(q) = −sin_L(k) (both 0 when unpaired)
        # q's G3/G4 at slot t (the other position of k's table slot): column col(k, t)
        of_q = rotated_L & ok_k
        e3_q = tl.where(of_q, (entry_L[:, None] ^ 1) * SLOTS + t, 0)
        a_q = (
            _split_sum_2d(g3_ptr, e3_q, of_q, split_stride, n_splits, BLOCK_SPLITS, BLOCK, SLOTS)
            * s_q
            * sin_Lq
        )
        b_q = (
            _split_sum_2d(g4_ptr, e3_q, of_q, split_stride, n_splits, BLOCK_SPLITS, BLOCK, SLOTS)
            * s_q
            * sin_Lq
        )
        cos_L2 = cos_L[:, None]
        own = G1 * cos_Rk + G2 * sin_Rk
        tl.store(
            core_grad_ptr + _value_index(k2, t, full, BLOCK_SIZE),
            cos_L2 * own - (a_q * cos_Rk + b_q * sin_Rk),
            mask=ok_k,
        )
        if THETA_L_GRAD:
            grad_cos_L = tl.sum(value_k * own, 1)
            grad_sin_L = -tl.sum(value_q * (G3 * cos_Rq + G4 * sin_Rq), 1)
            _add_angle_grads(theta_L_grad_ptr, theta_L_ptr, entry_L, out_ok, cos_L, sin_L, grad_cos_L, grad_sin_L,
                             CAYLEY)  # fmt: skip
        if THETA_R_GRAD:  # only the angles of R need k as a column
            # k as a column j: rows r of j's block, each with slot t_j = j − start(j) at column j
            if SLOTS == 1:  # diag: r = j, t_j = 0 (the row quantities above, R's rotation at col(k, 0) = k)
                cos_Rj = tl.reshape(cos_Rk, (BLOCK,))
                sin_Rj = tl.reshape(sin_Rk, (BLOCK,))
                entry_Rj = tl.reshape(entry_Rk, (BLOCK,))
                grad_cos_R = tl.sum(value_k * (cos_L2 * G1 - a_q), 1)
                grad_sin_R = tl.sum(value_k * (cos_L2 * G2 - b_q), 1)
            else:
                _, cos_Rj, sin_Rj, entry_Rj = _table_rotation(k, tables_ptr, width, 1)
                ok_r = in_ok[:, None] & (entry_Rj >= 0)[:, None] & _slot_ok(k2, t, full, n_diag, BLOCK_SIZE)
                r = _slot_column(k2, t, full, BLOCK_SIZE)
                slot_j = k2 - _slot_column(k2, 0, full, BLOCK_SIZE)
                q_r, cos_Lr, sin_Lr, entry_Lr = _table_rotation(r, tables_ptr, width, 0)
                if HAS_SCALE:
                    s_r = tl.load(scale_ptr + r, mask=ok_r, other=1.0).to(tl.float32)
                    s_qr = tl.load(scale_ptr + q_r, mask=ok_r, other=1.0).to(tl.float32)
                else:
                    s_r = r.to(tl.float32) * 0.0 + 1.0
                    s_qr = s_r
                G1_r = _split_sum_2d(
                    slot_sums, r * SLOTS + slot_j, ok_r, split_stride, n_splits, BLOCK_SPLITS, BLOCK, SLOTS,
                ) * s_r  # fmt: skip
                G2_r = _split_sum_2d(
                    g2_ptr, tl.where(ok_r, entry_Rj[:, None] * SLOTS + t, 0), ok_r, split_stride, n_splits,
                    BLOCK_SPLITS, BLOCK, SLOTS,
                ) * s_r  # fmt: skip
                of_qr = ok_r & (entry_Lr >= 0)
                e_qr = tl.where(of_qr, (entry_Lr ^ 1) * SLOTS + slot_j, 0)
                a_r = _split_sum_2d(g3_ptr, e_qr, of_qr, split_stride, n_splits, BLOCK_SPLITS, BLOCK, SLOTS)
                b_r = _split_sum_2d(g4_ptr, e_qr, of_qr, split_stride, n_splits, BLOCK_SPLITS, BLOCK, SLOTS)
                a_r = a_r * s_qr * -sin_Lr
                b_r = b_r * s_qr * -sin_Lr
                value_r = _slot_value(blocks_ptr, tail_ptr, r, slot_j, ok_r, full, BLOCK_SIZE)
                grad_cos_R = tl.sum(value_r * (cos_Lr * G1_r - a_r), 1)
                grad_sin_R = tl.sum(value_r * (cos_Lr * G2_r - b_r), 1)
            _add_angle_grads(theta_R_grad_ptr, theta_R_ptr, entry_Rj, in_ok, cos_Rj, sin_Rj, grad_cos_R,
                             grad_sin_R, CAYLEY)  # fmt: skip


@triton.jit
def _logits_grads(
    k, ok, weighted, s, split_totals_ptr, n_splits, magnitude_ptr, logits_ptr, norms_ptr, temp_ptr, out_ptr, eps,
    alpha, MODE: tl.constexpr, BLOCK_SPLITS: tl.constexpr,
):  # fmt: skip
    """The magnitude logits' gradient at rows ``k`` (closed form, see ``scale_vjp``) from their
    ``weighted = Σ_t g ⊙ (y − b) = s ∂L/∂s`` and its total over the included rows.

    The total is the sum of the token sums' per-split totals, the same sum in every program; ``magnitude_ptr``
    holds what the fold wrote: ``E_incl`` and ECD's ``κ``.
    """
    splits = tl.arange(0, BLOCK_SPLITS)
    total = tl.sum(tl.load(split_totals_ptr + splits, mask=splits < n_splits, other=0.0), 0)
    temperature = tl.load(temp_ptr).to(tl.float32)
    energy = tl.load(magnitude_ptr)
    nu = tl.load(norms_ptr + k, mask=ok, other=0.0).to(tl.float32)
    if MODE == 2:  # OER: (s ∂L/∂s − p Σ_j s_j ∂L/∂s_j) / 2T with p = s² ν² / E_incl
        result = (weighted - s * s * nu * nu / energy * total) / (2.0 * temperature)
    else:  # ECD, s = gain κ: gain' κ (∂L/∂s − ν² gain Σ_j gain_j ∂L/∂s_j / Σ_j ν_j² gain_j²)
        kappa = tl.load(magnitude_ptr + 1)
        t = _tanh(tl.load(logits_ptr + k, mask=ok, other=0.0).to(tl.float32) / temperature)
        d_gain = alpha * (1.0 - t * t) / temperature
        # Σ_j gain_j ∂L/∂s_j = total / κ and Σ_j ν_j² gain_j² = E_incl / κ²
        result = d_gain * kappa * (weighted / s - nu * nu * (1.0 + alpha * t) * total * kappa / energy)
    tl.store(out_ptr + k, tl.where(ok & (nu > eps), result, 0.0), mask=ok)


@triton.jit
def _add_angle_grads(grad_ptr, theta_ptr, entry, ok, cos, sin, grad_cos, grad_sin, CAYLEY: tl.constexpr):
    """Add coordinates' shares of their slots' angle gradients (``entry`` = 2·slot + position, ``-1`` unpaired).

    A slot ``(i, j)`` has ``cos[i] = cos[j]`` and ``sin[i] = −sin[j]`` (``sin`` here is the coordinate's signed
    one), so ``∂L/∂φ = cos (∂sin[i] − ∂sin[j]) − sin (∂cos[i] + ∂cos[j])`` is one share per coordinate. Exactly
    two adds land on each slot, zeroed by the token sums: ``0 + a + b`` is the same in either order.
    """
    rotated = ok & (entry >= 0)
    slot = tl.where(rotated, entry // 2, 0)
    share = cos * grad_sin - sin * grad_cos
    share = tl.where(entry % 2 == 0, share, -share)
    if CAYLEY:  # dφ/dθ for φ = 2·atan(θ/2)
        theta = tl.load(theta_ptr + slot, mask=rotated, other=0.0).to(tl.float32)
        share = share / (1.0 + 0.25 * theta * theta)
    tl.atomic_add(grad_ptr + slot, share, mask=rotated, sem="relaxed")


@functools.lru_cache(maxsize=256)
def _token_sum_geometry(
    tokens: int, width: int, block_size: int, entries: int, more_accumulators: bool
) -> tuple[int, ...]:
    """``(splits, tokens_per_split, block_c, block_t, col_blocks, entry_blocks, outer, warps, acc_rows)`` of a launch of
    :func:`_token_sums_kernel` (pure host arithmetic, cached: it runs on every backward);
    ``more_accumulators``: the statistics or ``Σg`` accumulate beside ``Σg·y`` and ``Σg·x``."""
    b, slots = block_size, _next_power_of_2(block_size)
    outer = 1 < b == slots
    splits = max(1, min(MAX_SPLITS, _SPLIT_COUNTERS, _cdiv(tokens, TOKENS_PER_SPLIT)))
    long_splits = _cdiv(tokens, splits) >= LONG_SPLIT_TOKENS
    if b == 1 and not long_splits and width >= WIDE_MIN_WIDTH:
        splits = max(1, min(WIDE_MAX_SPLITS, _SPLIT_COUNTERS, _cdiv(tokens, WIDE_TOKENS_PER_SPLIT)))
    if b > 1:
        (block_c, block_t), warps = BLOCK_TOKEN_SUM_BLOCKS, BLOCK_TOKEN_SUM_WARPS
    elif long_splits:
        (block_c, block_t), warps = LONG_SPLIT_TOKEN_SUM_BLOCKS, LONG_SPLIT_TOKEN_SUM_WARPS
    else:
        block_c, block_t = TOKEN_SUM_BLOCKS
        warps = MORE_ACCUMULATORS_TOKEN_SUM_WARPS if more_accumulators else TOKEN_SUM_WARPS
    if outer:  # the outer-product accumulator holds block_t × block_c × b values
        block_c = max(b, min(block_c, _OUTER_ACCUMULATOR // (block_t * b)))
    elif b > 1:
        block_c = max(16, block_c // slots)
    tokens_per_split = _cdiv(_cdiv(max(tokens, 1), splits), block_t) * block_t
    splits = max(1, _cdiv(tokens, tokens_per_split))
    return (
        splits,
        tokens_per_split,
        block_c,
        block_t,
        _cdiv(width, block_c),
        _cdiv(entries, _ENTRY_BLOCK),
        outer,
        warps,
        1 if warps == 1 and width <= REDUCED_TILES_MAX_WIDTH else block_t,
    )


def _token_sums(
    g: torch.Tensor,
    y: torch.Tensor | None,
    x: torch.Tensor,
    pairs_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    n_diag: int,
    full: int,
    block_size: int,
    params: bool,
    stats_out: bool,
    stats_in: bool,
    g_sum: bool,
    row_total: tuple[torch.Tensor | None, torch.Tensor, float, torch.Tensor] | None = None,
    zeroed: tuple[torch.Tensor, int] | None = None,
) -> tuple[torch.Tensor, int, int]:
    """Launch :func:`_token_sums_kernel` over 2-D ``g`` [T, n], ``y`` [T, n] (or ``None``), ``x`` [T, m]
    (``g_sum``: also ``Σg``, for a bias; ``row_total``: ``(bias, row norms, eps, the fold's scale buffer with
    the arrival counters)`` for the totals of ``Σ g (y − b)`` over the included rows; ``zeroed``: ``(tensor, count)``, whose first ``count``
    values the kernel zeroes: the angle gradients that the per-coordinate kernel accumulates).

    Returns ``(partial, splits, split_stride)``: per split of tokens, the rows described in the
    kernel (the per-block totals last), then one total per split.
    """
    g, x = g.contiguous(), x.contiguous()
    y_or_g = y.contiguous() if y is not None else g
    tokens, n = g.shape
    m = x.shape[1]
    width = max(n, m)
    slots = _next_power_of_2(block_size)
    entries = slots * (2 * pairs_R.shape[0] + 4 * pairs_L.shape[0]) if params else 0
    splits, tokens_per_split, block_c, block_t, col_blocks, entry_blocks, outer, warps, acc_rows = (
        _token_sum_geometry(tokens, width, block_size, entries, g_sum or stats_out or stats_in)
    )
    split_stride = (_N_COLUMN_SUMS + slots) * width + entries + col_blocks
    partial = torch.empty(splits * (split_stride + 1), dtype=torch.float32, device=g.device)
    bias, norms, eps, scale = row_total if row_total is not None else (None, None, 0.0, None)
    zero_ptr, n_zero = zeroed if zeroed is not None else (partial, 0)  # (a pointer even with nothing to zero)
    pdl = _programmatic_launch(g.device)
    launch(
        _token_sums_kernel, (col_blocks + entry_blocks, splits),
        g, y_or_g, x, partial, split_stride, pairs_L, pairs_L.shape[0], pairs_R, theta_R, pairs_R.shape[0],
        tokens, n, m, n_diag, full, width, g.stride(0), y_or_g.stride(0), x.stride(0), tokens_per_split, col_blocks,
        bias, norms, eps, scale, zero_ptr, n_zero,
        HAS_Y=y is not None, G_SUM=g_sum, HAS_BIAS=bias is not None, ROW_TOTAL=row_total is not None, PARAMS=params,
        STATS_OUT=stats_out, STATS_IN=stats_in, BLOCK_SIZE=block_size,
        SLOTS=slots, OUTER=outer, BLOCK_T=block_t, BLOCK_C=block_c, BLOCK_E=_ENTRY_BLOCK,
        BLOCK_TE=ENTRY_TOKEN_BLOCK, BLOCK_S=_SLOT_BLOCK, UNROLL=TOKEN_SUM_UNROLL,
        ACC_ROWS=acc_rows, BLOCK_COL_BLOCKS=_next_power_of_2(col_blocks), PDL=pdl, num_warps=warps,
        **_pdl_options(pdl),
    )  # fmt: skip
    return partial, splits, split_stride


def column_sums_triton(
    grad: torch.Tensor,
    out: torch.Tensor | None,
    x: torch.Tensor | None,
    n_diag: int,
    stats: bool,
    g_sum: bool = True,
) -> dict[str, torch.Tensor | None]:
    """Token sums over 2-D ``grad`` [T, n], ``out`` [T, n], ``x`` [T, m] in one pass (fp32 results).

    Returns ``g_y`` = Σg·out, ``g`` = Σg (with ``g_sum``, else ``None``), ``g_x`` = Σg·x over the first
    ``n_diag`` columns, and with ``stats`` also ``g_g`` = Σg² and ``x_x`` = Σx². The column programs of
    :func:`_token_sums_kernel` with ``b = 1`` and no rotation entries; splits are summed afterwards
    (deterministic).
    """
    n_out = grad.shape[1]
    n_in = x.shape[1] if x is not None else 0
    no_pairs = torch.empty(0, 2, dtype=torch.int64, device=grad.device)
    no_angles = torch.empty(0, dtype=torch.float32, device=grad.device)
    partial, splits, split_stride = _token_sums(
        grad, out, x if x is not None else grad, no_pairs, no_pairs, no_angles, n_diag, n_diag, 1,
        x is not None and n_diag > 0, stats, stats and x is not None, g_sum,
    )  # fmt: skip
    width = max(n_out, n_in)
    total = partial[: splits * split_stride].view(splits, split_stride).sum(0)
    return {
        "g_y": total[:n_out],
        "g": total[width : width + n_out] if g_sum else None,
        "g_g": total[2 * width : 2 * width + n_out],
        "x_x": total[3 * width : 3 * width + n_in],
        "g_x": total[4 * width : 4 * width + n_diag],
    }


def _as_device_scalar(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    stream = torch.cuda.current_stream(like.device).cuda_stream if like.is_cuda else 0
    return _device_scalar(float(value), like.device, stream)


@functools.lru_cache(maxsize=16)
def _device_scalar(value: float, device: torch.device, stream: int) -> torch.Tensor:
    """A read-only fp32 device scalar, kept across calls (a constant temperature costs no fill per call).

    Keyed by the stream too: its fill is ordered before every kernel that reads it on that stream.
    """
    return torch.full((), value, dtype=torch.float32, device=device)


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype`` (no dispatch when it already is: host time counts on the hot path)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def forward_scale_buffer(mode: int, n_out: int, scale_or_logits: torch.Tensor | None) -> torch.Tensor | None:
    """Where a forward kernel keeps ``s`` (:func:`_forward_scale`): with a magnitude a new fp32 buffer for
    ``s``, ``E_incl``, ECD's ``κ`` and the token sums' arrival counters; else the given scale (or ``None``)."""
    if mode >= _OER:
        return torch.empty(n_out + 2 + _SPLIT_COUNTERS, dtype=torch.float32, device=scale_or_logits.device)
    return scale_or_logits


def _as_2d(tensor: torch.Tensor, features: int) -> torch.Tensor:
    """``tensor`` as ``[tokens, features]`` (no dispatch when it already is)."""
    return tensor if tensor.dim() == 2 else tensor.reshape(-1, features)


def _grad_input(
    grad_out: torch.Tensor, folded: torch.Tensor, linear: bool, x: torch.Tensor, needed: bool
) -> torch.Tensor | None:
    """``∂L/∂x = g · diag(s)(W + ΔW)`` through the folded weight (one matmul), in ``x``'s dtype."""
    if not needed:
        return None
    return _cast(grad_out @ folded if linear else grad_out @ folded.T, x.dtype)


def grad_input_beside(
    grad_out: torch.Tensor, folded: torch.Tensor, linear: bool, x: torch.Tensor, needed: bool, width: int
) -> tuple[torch.Tensor | None, tuple[_SecondStream, torch.cuda.Stream] | None]:
    """:func:`_grad_input` and the fork it runs on: for CUDA problems of ``OVERLAP_MIN_ELEMENTS`` tokens ×
    ``width`` or more a second stream, forked from the current one, so that this compute-bound matmul overlaps
    the memory-bound token sums the caller launches next (``(second stream, current stream)``); else the
    current stream (``None``). The caller joins with :func:`join` before it returns the gradient.

    The gradient is allocated on the current stream before the fork and written by the second one (``out=``):
    its memory is reused only by work of the current stream, which comes after the join, so it needs no
    ``record_stream`` (whose free waits on an event recorded at release); the same holds for ``grad_out`` and
    ``folded``, which the second stream only reads."""
    tokens = grad_out.numel() // grad_out.shape[-1]
    if not (
        needed
        and grad_out.is_cuda
        and OVERLAP_MIN_ELEMENTS is not None
        and tokens * width >= OVERLAP_MIN_ELEMENTS
    ):
        return _grad_input(grad_out, folded, linear, x, needed), None
    g = grad_out.reshape(tokens, grad_out.shape[-1])
    weight = folded if linear else folded.T
    grad_x = torch.empty((tokens, weight.shape[1]), dtype=x.dtype, device=x.device)
    current = torch.cuda.current_stream(grad_out.device)
    second = _second_stream(grad_out.device)
    second.forked.record(current)
    second.stream.wait_event(second.forked)
    torch.cuda.set_stream(second.stream)
    try:
        torch.mm(g, weight, out=grad_x)  # the fold is in x's dtype, and so is g (the output's gradient)
    finally:
        torch.cuda.set_stream(current)
    return grad_x.view(*grad_out.shape[:-1], weight.shape[1]), (second, current)


def join(fork: tuple[_SecondStream, torch.cuda.Stream] | None) -> None:
    """Make the stream :func:`grad_input_beside` forked from wait for its second stream (``None``: nothing)."""
    if fork is not None:
        second, current = fork
        second.joined.record(second.stream)
        current.wait_event(second.joined)


def finish_backward(
    config: dict[str, Any],
    needs: tuple[bool, ...],
    fork: tuple[_SecondStream, torch.cuda.Stream] | None,
    grad_x: torch.Tensor | None,
    bias: torch.Tensor | None,
    theta_R: torch.Tensor,
    theta_L: torch.Tensor,
    scale_or_logits: torch.Tensor | None,
    grads: tuple[torch.Tensor, ...] | None,
) -> tuple[torch.Tensor | None, ...]:
    """The end of every Triton backward: join the ``∂L/∂x`` stream (:func:`join`), run the end-of-backward
    callback, and return the gradients of the inputs every core's autograd function shares — ``(config, x,
    weight, bias, θ_R, θ_L, scale slot)`` — in their dtypes; ``grads`` is the workspace's ``(bias, θ_R, θ_L,
    scale, logits)`` gradients (``None``: none was asked for)."""
    join(fork)
    if config["on_backward"] is not None:
        config["on_backward"]()
    if grads is None:
        return None, grad_x, None, None, None, None, None
    bias_grad, theta_R_grad, theta_L_grad, scale_grad, logits_grad = grads
    mode = config["mode"]
    scale_slot_grad = None
    if mode != _NO_SCALE and needs[6]:
        scale_slot_grad = _cast(logits_grad if mode >= _OER else scale_grad, scale_or_logits.dtype)
    return (
        None,
        grad_x,
        None,
        _cast(bias_grad, bias.dtype) if needs[3] and bias is not None else None,
        _cast(theta_R_grad, theta_R.dtype) if needs[4] else None,
        _cast(theta_L_grad, theta_L.dtype) if needs[5] else None,
        scale_slot_grad,
    )


class _SecondStream:
    """A device's second stream and the events of a fork and a join, kept across calls (host time: no event
    is created per backward). An event is recorded again only after the wait on its last record is enqueued;
    autograd runs a device's backward on one thread, so forks and joins on a device do not interleave."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device)
        self.forked, self.joined = torch.cuda.Event(), torch.cuda.Event()


@functools.lru_cache(maxsize=16)
def _second_stream(device: torch.device) -> _SecondStream:
    return _SecondStream(device)


def _core_grads(flat: torch.Tensor, values: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The flat core gradient (the blocks, row-major, then the tail) as tensors shaped like ``values``."""
    if len(values) == 1:  # the diag core: already its shape
        return (flat,)
    blocks, _ = values
    return flat[: blocks.numel()].view(blocks.shape), flat[blocks.numel() :]


def _core_pointers(values: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(blocks, tail)`` pointers of a core (the diag vector serves as ``b = 1`` blocks and an empty tail)."""
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _fold(
    config: dict[str, Any],
    dtype: torch.dtype,
    weight: torch.Tensor,
    theta_R: torch.Tensor,
    theta_L: torch.Tensor,
    scale_or_logits: torch.Tensor | None,
    core_values: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(folded, s, tables)`` of the diag/block core: the folded weight ``diag(s)(W + ΔW)`` in ``dtype`` (a
    wider weight, under autocast, is read in its own dtype and rounded once), the scale buffer
    (:func:`forward_scale_buffer`) and the rotation tables of the backward's per-coordinate kernel (``None``
    when no parameter gradient will be asked for); contiguous inputs but the weight."""
    pairs_L, pairs_R, mode = config["pairs_L"], config["pairs_R"], config["mode"]
    weight = weight.contiguous()
    n, m, b, slots = config["n"], config["m"], config["block_size"], config["slots"]
    linear = config["layout"] == "linear"
    folded = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    scale = forward_scale_buffer(mode, n, scale_or_logits)
    logits = scale_or_logits if mode >= _OER else None
    offset = config["offset"]
    blocks, tail = _core_pointers(core_values)
    offset_blocks, offset_tail = _core_pointers(offset) if offset is not None else (None, None)
    block_rows, block_cols = FOLD_BLOCKS[config["layout"]]
    block_cols = max(16, block_cols // slots)
    tables = None
    if config["rotation_tables"]:
        tables = torch.empty(8 * max(n, m), dtype=torch.float32, device=weight.device)
    launch(
        _fold_kernel, (_cdiv(n, block_rows),),
        weight, folded, scale, scale_or_logits, logits, config["norms"], config["energy"], config["temperature"],
        blocks, tail, offset_blocks, offset_tail, pairs_L, theta_L, pairs_L.shape[0], pairs_R, theta_R,
        pairs_R.shape[0], n, m, config["n_diag"], config["full"], m if linear else 1, 1 if linear else n,
        config["eps"], config["alpha"], tables,
        MODE=mode, HAS_OFFSET=offset is not None, CAYLEY=config["cayley"], BLOCK_SIZE=b, SLOTS=slots,
        BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols, BLOCK_N=min(FOLD_NORMALISER_BLOCK, _next_power_of_2(n)),
        BLOCK_S=_SLOT_BLOCK, TABLES=tables is not None, SPLIT_COUNTERS=_SPLIT_COUNTERS, num_warps=FOLD_WARPS,
    )  # fmt: skip
    return folded, scale, tables


class CoreLaunch(NamedTuple):
    """The diag/block core's share of the backward's two kernels: its sizes (``n_diag``, ``full`` coordinates
    in blocks of ``block_size``, padded to ``slots``), its values (``blocks``, ``tail``), its flat gradient, the
    forward's rotation tables, and whether a parameter gradient (core or angles) is wanted."""

    n_diag: int
    full: int
    block_size: int
    slots: int
    blocks: torch.Tensor
    tail: torch.Tensor
    core_grad: torch.Tensor
    tables: torch.Tensor | None
    params: bool


def sums_and_coordinate_grads(
    config: dict[str, Any],
    needs: tuple[bool, ...],
    g: torch.Tensor,
    out: torch.Tensor | None,
    xs: torch.Tensor,
    theta_R: torch.Tensor,
    theta_L: torch.Tensor,
    scale_or_logits: torch.Tensor | None,
    inner_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    grads: tuple[torch.Tensor, ...],
    zeroed: tuple[torch.Tensor, int],
    core: CoreLaunch | None,
) -> None:
    """The backward's token sums and per-coordinate kernel (2-D ``g``, ``out``, ``xs``): into ``grads``, the
    workspace's ``(bias, θ_R, θ_L, scale, logits)`` gradients (as :func:`finish_backward` takes them), the bias,
    scale and logits gradients and the
    statistics, and with ``core`` (the diag/block core; ``None``: the lowrank core, whose factors and angles
    have their own kernel) the core's and the angles' gradients; ``zeroed`` as :func:`_token_sums` takes it."""
    mode, n, m, width = config["mode"], config["n"], config["m"], max(config["n"], config["m"])
    pairs_L, pairs_R = config["pairs_L"], config["pairs_R"]
    stats_in, stats_out = config["stats_in"], config["stats_out"]
    bias_grad, theta_R_grad, theta_L_grad, scale_grad_buf, logits_grad = grads
    if core is None:  # no core parameters here (any pointer will do for the unused ones)
        core = CoreLaunch(0, 0, 1, 1, bias_grad, bias_grad, bias_grad, None, False)
    scale_grad = mode != _NO_SCALE and needs[6]
    logits_grads = scale_grad and mode >= _OER
    g_sum = needs[3] or (scale_grad and bias is not None)  # Σg: for ∂L/∂b, and for Σ g (y − b)
    partial, splits, split_stride = _token_sums(
        g, out, xs, pairs_L, pairs_R, theta_R, core.n_diag, core.full, core.block_size, core.params,
        stats_out is not None, stats_in is not None, g_sum,
        (bias, config["norms"], config["eps"], inner_scale) if logits_grads else None, zeroed,
    )  # fmt: skip
    scale = inner_scale if mode >= _OER else scale_or_logits
    block, coordinate_warps = _coordinate_launch(core.slots)
    pdl = _programmatic_launch(g.device)
    launch(
        _coordinate_grads_kernel, (_cdiv(width, block),),
        partial, splits, split_stride, width, scale, bias, bias_grad, scale_grad_buf, stats_out, stats_in,
        1.0 / max(g.shape[0], 1), core.blocks, core.tail, core.core_grad, pairs_L, theta_L, pairs_L.shape[0],
        pairs_R, theta_R, pairs_R.shape[0], n, m, core.n_diag, core.full, scale_or_logits, config["norms"],
        config["temperature"], logits_grad, config["eps"], config["alpha"], theta_L_grad, theta_R_grad, core.tables,
        HAS_SCALE=mode != _NO_SCALE, HAS_BIAS=bias is not None, SCALE_GRAD=scale_grad, BIAS_GRAD=needs[3],
        G_SUM=g_sum, PARAMS=core.params, STATS_OUT=stats_out is not None, STATS_IN=stats_in is not None,
        CAYLEY=config["cayley"], BLOCK_SIZE=core.block_size, SLOTS=core.slots, BLOCK=block, BLOCK_S=_SLOT_BLOCK,
        BLOCK_SPLITS=_next_power_of_2(splits), MODE=mode, LOGITS_GRAD=logits_grads,
        THETA_L_GRAD=core.params and needs[5], THETA_R_GRAD=core.params and needs[4], PDL=pdl,
        num_warps=coordinate_warps, **_pdl_options(pdl),
    )  # fmt: skip


class _SparseCoreLinearTriton(torch.autograd.Function):
    """``y = x (diag(s)(W + ΔW))ᵀ + b`` for the diag/block core; gradients for x, bias, scale/logits, θ, core."""

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
        *core_values: torch.Tensor,
    ) -> torch.Tensor:
        mode = config["mode"]
        # the weight stays as given (the folds read it contiguous): saved as it is, maybe refolded from
        theta_L, theta_R = theta_L.contiguous(), theta_R.contiguous()
        core_values = tuple(v.contiguous() for v in core_values)
        if scale_or_logits is not None:
            scale_or_logits = scale_or_logits.contiguous()
        folded, scale, tables = _fold(config, x.dtype, weight, theta_R, theta_L, scale_or_logits, core_values)
        out = folded_matmul(x, folded, bias, config["layout"])
        ctx.config = config
        needs = ctx.needs_input_grad
        keep_out, keep_folded = kept_for_backward(mode != _NO_SCALE and needs[6], needs[1])
        ctx.save_for_backward(
            x, weight, folded if keep_folded else None, bias, theta_R, theta_L, scale_or_logits,
            scale if mode >= _OER else None, out if keep_out else None, tables, *core_values,
        )  # fmt: skip
        return out

    @staticmethod
    @once_differentiable  # a double backward raises instead of returning wrong second-order gradients
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        config = ctx.config
        x, weight, folded, bias, theta_R, theta_L, scale_or_logits, inner_scale, out, tables, *core_values = (
            ctx.saved_tensors
        )
        needs = ctx.needs_input_grad
        if needs[1] and folded is None:  # not kept by the forward: fold again (bit for bit the forward's)
            folded = _fold(config, x.dtype, weight, theta_R, theta_L, scale_or_logits, tuple(core_values))[0]
        mode, n, m = config["mode"], config["n"], config["m"]
        b, slots, full, n_diag = config["block_size"], config["slots"], config["full"], config["n_diag"]
        pairs_L, pairs_R = config["pairs_L"], config["pairs_R"]
        linear = config["layout"] == "linear"
        stats_in, stats_out = config["stats_in"], config["stats_out"]
        core_needs = needs[7:]
        params = needs[4] or needs[5] or any(core_needs)
        scale_grad = mode != _NO_SCALE and needs[6]
        if not (params or scale_grad or needs[3] or stats_in is not None or stats_out is not None):
            grad_x = _grad_input(grad_out, folded, linear, x, needs[1])
            shared = finish_backward(
                config, needs, None, grad_x, bias, theta_R, theta_L, scale_or_logits, None
            )
            return *shared, *(None,) * len(core_values)

        g = _as_2d(grad_out, n)
        # one small fp32 workspace for the gradient vectors (kept by .grad): the angle gradients first (the
        # token sums zero them), the flat core gradient (the blocks, [full, b] row-major, then the tail; never
        # empty: n_diag ≥ 1, so its pointer is never null), the bias, scale and logits gradients
        n_L, n_R = pairs_L.shape[0], pairs_R.shape[0]
        sizes = (n_L, n_R, full * b + n_diag - full, n, n, n)
        workspace = torch.empty(sum(sizes), dtype=torch.float32, device=x.device)
        theta_L_grad, theta_R_grad, core_grad, bias_grad, scale_grad_buf, logits_grad = (
            torch.split_with_sizes(workspace, sizes)  # the op itself: Tensor.split's wrapper costs more
        )
        grads = (bias_grad, theta_R_grad, theta_L_grad, scale_grad_buf, logits_grad)
        grad_x, fork = grad_input_beside(grad_out, folded, linear, x, needs[1], max(n, m))
        blocks, tail = _core_pointers(tuple(core_values))
        sums_and_coordinate_grads(
            config, needs, g, _as_2d(out, n) if out is not None else None, _as_2d(x, m), theta_R, theta_L,
            scale_or_logits, inner_scale, bias, grads, (workspace, n_L + n_R),
            CoreLaunch(n_diag, full, b, slots, blocks, tail, core_grad, tables, params),
        )  # fmt: skip
        shared = finish_backward(
            config, needs, fork, grad_x, bias, theta_R, theta_L, scale_or_logits, grads
        )  # fmt: skip
        return (
            *shared,
            *(
                _cast(grad, value.dtype) if wanted else None
                for grad, value, wanted in zip(
                    _core_grads(core_grad, core_values), core_values, core_needs, strict=True
                )
            ),
        )


def sparse_core_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    layout: str,
    core_values: tuple[torch.Tensor, ...],
    core_offset: tuple[torch.Tensor, ...] | None,
    block_size: int,
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
    """The diag- or block-core fused linear through the Triton kernels (arguments checked by ``jora_linear``).

    ``core_values`` is ``(diag,)`` (``block_size=1``) or ``(blocks, tail)``; ``core_offset`` the same form.
    Pair tables may hold empty ``-1`` slots (their angles get a zero gradient).
    """
    if not 1 <= block_size <= TRITON_MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be in [1, {TRITON_MAX_BLOCK_SIZE}] here, got {block_size}")
    n = weight.shape[0] if layout == "linear" else weight.shape[1]
    m = x.shape[-1]
    n_diag = min(n, m)
    full = core_values[0].numel() if len(core_values) == 1 else core_values[0].shape[0] * block_size
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
    config |= {
        "n": n,
        "m": m,
        "n_diag": n_diag,
        "full": full,
        "block_size": block_size,
        "slots": _next_power_of_2(block_size),
        # a backward with parameter gradients will follow (ctx.needs_input_grad ignores the grad mode)
        "rotation_tables": torch.is_grad_enabled()
        and (theta_L.requires_grad or theta_R.requires_grad or any(v.requires_grad for v in core_values)),
    }
    return _SparseCoreLinearTriton.apply(config, x, weight, bias, theta_R, theta_L, scale_slot, *core_values)


def launch_config(
    like: torch.Tensor,
    layout: str,
    pairs_L: torch.Tensor,
    pairs_R: torch.Tensor,
    core_offset: tuple[torch.Tensor, ...] | None,
    scale: torch.Tensor | None,
    magnitude: Magnitude | None,
    rotation_param: str,
    stats_in: torch.Tensor | None,
    stats_out: torch.Tensor | None,
    on_backward: Callable[[], None] | None,
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """The scale slot of a Triton autograd function (the given scale, or the magnitude's logits) and the
    configuration every core's launch shares: the scale's ``mode``, ``norms``, ``energy``, ``temperature``
    (device scalars), ``eps`` and ``alpha``; the pair tables, layout, offset, parameterisation, statistics
    buffers and the end-of-backward callback."""
    config: dict[str, Any] = {
        "pairs_L": pairs_L.contiguous(),
        "pairs_R": pairs_R.contiguous(),
        "layout": layout,
        "offset": tuple(v.contiguous() for v in core_offset) if core_offset is not None else None,
        "cayley": rotation_param == "cayley",
        "stats_in": stats_in,
        "stats_out": stats_out,
        "on_backward": on_backward,
    }
    if magnitude is None:
        mode = _GIVEN_SCALE if scale is not None else _NO_SCALE
        config |= {"mode": mode, "norms": None, "energy": None, "temperature": None, "eps": 0.0, "alpha": 0.0}
        return scale, config
    return magnitude.logits, config | {
        "mode": _MAGNITUDE_MODES[magnitude.kind],
        "norms": magnitude.row_norms,
        "energy": _as_device_scalar(magnitude.total_energy, like),
        "temperature": _as_device_scalar(magnitude.temperature, like),
        "eps": float(magnitude.eps),
        "alpha": float(magnitude.ecd_alpha),
    }
