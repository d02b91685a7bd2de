"""The block-core fast path of the fused linear: the diag fold of :mod:`jora_ops._diag_fold`, generalised.

Write the block core row-locally: row ``k < d`` has ``b`` column slots ``t`` with columns ``col[k, t]`` (its
block; the remainder diagonal uses slot 0 only) and values ``val[k, t]``. With the rotation tables,
row ``k`` of ``ΔW = R_Lᵀ C R_R − C₀`` has ``4b`` entries (``q = partner_L(k)``, ``j = col[k, t]``,
``j' = col[q, t]``):

- ``E1`` at ``j``:              ``cos_L,k val[k, t] cos_R,j − val₀[k, t]``
- ``E2`` at ``partner_R(j)``:   ``cos_L,k val[k, t] sin_R,j``
- ``E3`` at ``j'``:             ``−sin_L,k val[q, t] cos_R,j'``
- ``E4`` at ``partner_R(j')``:  ``−sin_L,k val[q, t] sin_R,j'``

The forward folds them into the weight (one pass over ``W``) and runs one matmul. In backward,
``∂L/∂E1`` is the block diagonal of ``(g ⊙ s)ᵀ x`` (``T·d·b`` work: a batched product on CUDA), ``E2``–``E4``
need sums over the few columns that rotations touch, and closed-form chain rules give the gradients of
the blocks, the remainder diagonal and the angles.
"""

from __future__ import annotations

import torch

from jora_ops._compile import compile_enabled, run
from jora_ops._fold_common import (
    FoldState,
    fold_entries,
    gather_columns,
    output_side_grads,
    side_tables,
    theta_grad,
    token_sums,
)
from jora_ops.cores import CoreSpec
from jora_ops.rotation import rotation_cos_sin

__all__ = ["block_fold", "block_fold_backward"]


def _row_local(
    blocks: torch.Tensor, tail: torch.Tensor, n: int, block_size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cols [n, b], vals [n, b])`` of the block core (rows ≥ d and unused slots hold value 0)."""
    nb, b = blocks.shape[0], block_size
    full = nb * b
    d = full + tail.shape[0]
    device = blocks.device
    rows = torch.arange(n, device=device)
    starts = torch.where(rows < full, (rows // b) * b, rows)
    slots = torch.arange(b, device=device)
    cols = torch.where((rows < full)[:, None], starts[:, None] + slots[None, :], rows[:, None])
    vals = torch.cat(
        [
            blocks.to(dtype).reshape(full, b),
            torch.nn.functional.pad(tail.to(dtype)[:, None], (0, b - 1)),
            torch.zeros(n - d, b, dtype=dtype, device=device),
        ]
    )
    return cols, vals


def _fold(
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    blocks: torch.Tensor,
    tail: torch.Tensor,
    offset: tuple[torch.Tensor, torch.Tensor] | None,
    pairs_L: torch.Tensor,
    theta_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    layout: str,
    rotation_param: str,
    block_size: int,
) -> tuple[torch.Tensor, ...]:
    """The folded weight and the rotation tables (pure: compiled on CUDA)."""
    n, m = weight.shape if layout == "linear" else weight.shape[::-1]
    size = max(n, m)
    dtype = torch.promote_types(weight.dtype, torch.float32)
    partner_L, cos_L, sin_L = side_tables(pairs_L, *rotation_cos_sin(theta_L, rotation_param), size, dtype)
    partner_R, cos_R, sin_R = side_tables(pairs_R, *rotation_cos_sin(theta_R, rotation_param), size, dtype)
    cols, vals = _row_local(blocks, tail, n, block_size, dtype)
    vals0 = _row_local(*offset, n, block_size, dtype)[1] if offset is not None else torch.zeros_like(vals)
    q = partner_L[:n]
    c_l, s_l = cos_L[:n, None], sin_L[:n, None]
    cols_q, vals_q = cols[q], vals[q]
    values = torch.cat(
        [
            (c_l * vals * cos_R[cols] - vals0).flatten(),
            (c_l * vals * sin_R[cols]).flatten(),
            (-s_l * vals_q * cos_R[cols_q]).flatten(),
            (-s_l * vals_q * sin_R[cols_q]).flatten(),
        ]
    )
    entry_cols = torch.cat(
        [cols.flatten(), partner_R[cols].flatten(), cols_q.flatten(), partner_R[cols_q].flatten()]
    ).clamp(max=m - 1)  # identically zero entries may clamp
    entry_rows = torch.arange(n, device=weight.device).repeat_interleave(block_size).repeat(4)
    folded = fold_entries(weight, layout, scale, entry_rows, entry_cols, values)
    return folded, partner_L, cos_L, sin_L, partner_R, cos_R, sin_R


def block_fold(
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
) -> FoldState:
    """``diag(s)(W + ΔW)`` for the block core (one weight pass) and the rotation tables; ``x`` is the input."""
    return FoldState(
        *run(
            _fold, compile_enabled(x), weight, scale, params[0], params[1], offset, pairs_L, theta_L, pairs_R,
            theta_R, layout, rotation_param, core.block_size,
        )
    )  # fmt: skip


def _block_diagonal_sums(g: torch.Tensor, xs: torch.Tensor, full: int, block_size: int) -> torch.Tensor:
    """``S[k, t] = Σ_τ g[τ, k] x[τ, start(k) + t]`` for rows ``k < full`` (``[full, b]``)."""
    tokens, b = g.shape[0], block_size
    g3 = g[:, :full].reshape(tokens, full // b, b)
    x3 = xs[:, :full].reshape(tokens, full // b, b)
    if g.is_cuda:  # one batched product over blocks
        return torch.bmm(g3.permute(1, 2, 0), x3.permute(1, 0, 2)).reshape(full, b)
    return torch.stack(
        [torch.linalg.vecdot(g3, x3[:, :, t : t + 1], dim=0) for t in range(b)], dim=-1
    ).reshape(full, b)


def _param_grads(
    g_raw: torch.Tensor,
    x_raw: torch.Tensor,
    scale: torch.Tensor | None,
    blocks: torch.Tensor,
    tail: torch.Tensor,
    pairs_L: torch.Tensor,
    theta_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    partner_L: torch.Tensor,
    cos_L: torch.Tensor,
    sin_L: torch.Tensor,
    partner_R: torch.Tensor,
    cos_R: torch.Tensor,
    sin_R: torch.Tensor,
    rotation_param: str,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the blocks, the remainder diagonal and both angle vectors (pure: compiled on CUDA)."""
    n, m = g_raw.shape[1], x_raw.shape[1]
    size, b = max(n, m), block_size
    full = blocks.shape[0] * b
    d = full + tail.shape[0]
    dtype = cos_L.dtype
    g = g_raw.to(dtype)
    xs = x_raw.to(dtype)
    s = scale.to(dtype) if scale is not None else torch.ones(n, dtype=dtype, device=g.device)
    cols, vals = _row_local(blocks, tail, n, b, dtype)
    slot = torch.arange(b, device=g.device)

    # E1: block-diagonal token sums (the remainder diagonal uses slot 0); rows scaled by s.
    grad_e1 = torch.zeros(n, b, dtype=dtype, device=g.device)
    if full:
        grad_e1[:full] = _block_diagonal_sums(g, xs, full, b)
    if d > full:
        grad_e1[full:d, 0] = token_sums(g[:, full:d], xs[:, full:d])
    grad_e1 = grad_e1 * s[:, None]

    # E2: rows whose block holds an R-touched column j; E3/E4: L-touched rows. One gather of g, one of x.
    touched_R = pairs_R.flatten().long()
    in_blocks = touched_R < full
    start = torch.where(in_blocks, (touched_R // b) * b, touched_R)
    rows_2 = torch.where(in_blocks[:, None], start[:, None] + slot[None, :], touched_R[:, None])
    slots_2 = torch.where(in_blocks[:, None], (touched_R - start)[:, None].expand(-1, b), 0)
    valid_2 = in_blocks[:, None] | ((slot[None, :] == 0) & (touched_R < d)[:, None])
    cols_2 = partner_R[touched_R][:, None].expand(-1, b)
    rows_l = pairs_L.flatten().long()
    q_l = partner_L[rows_l]
    rows_34 = rows_l[:, None].expand(-1, b)
    slots_34 = slot[None, :].expand(rows_l.shape[0], -1)
    valid_34 = (q_l < d)[:, None].expand(-1, b)
    cols_3 = cols[q_l]
    cols_4 = partner_R[cols_3]
    rows = torch.cat([rows_2.flatten(), rows_34.flatten(), rows_34.flatten()])
    gather_cols = torch.cat([cols_2.flatten(), cols_3.flatten(), cols_4.flatten()]).clamp(max=m - 1)
    valid = torch.cat([valid_2.flatten(), valid_34.flatten(), valid_34.flatten()])
    safe_rows = torch.where(valid, rows, 0).clamp(max=n - 1)
    sums = (
        token_sums(gather_columns(g, safe_rows), gather_columns(xs, gather_cols)) * s[safe_rows]
    )  # s after Σ_t
    flat = torch.cat([(rows_2 * b + slots_2).flatten(), (rows_34 * b + slots_34).flatten()])
    flat = torch.cat([flat, (rows_34 * b + slots_34).flatten()])
    group = torch.cat(
        [
            torch.full_like(rows_2.flatten(), 0),
            torch.full_like(rows_34.flatten(), 1),
            torch.full_like(rows_34.flatten(), 2),
        ]
    )
    upstream = torch.zeros(3, n * b + 1, dtype=dtype, device=g.device)
    upstream = upstream.index_put((group, torch.where(valid, flat, n * b)), sums)
    grad_e2, grad_e3, grad_e4 = upstream[:, : n * b].reshape(3, n, b).unbind(0)

    # Closed-form chain rule (see the module docstring).
    c_l, s_l = cos_L[:n, None], sin_L[:n, None]
    q = partner_L[:n]
    cos_c, sin_c = cos_R[cols], sin_R[cols]
    own = grad_e1 * cos_c + grad_e2 * sin_c
    a_coef, b_coef = grad_e3 * s_l, grad_e4 * s_l
    grad_vals = c_l * own - (a_coef[q] * cos_c + b_coef[q] * sin_c)
    grad_blocks = grad_vals[:full].reshape(blocks.shape).to(blocks.dtype)
    grad_tail = grad_vals[full:d, 0].to(tail.dtype)
    grad_cos_L = torch.nn.functional.pad((vals * own).sum(1), (0, size - n))
    grad_sin_L = torch.nn.functional.pad(
        -(vals[q] * (grad_e3 * cos_R[cols[q]] + grad_e4 * sin_R[cols[q]])).sum(1), (0, size - n)
    )
    grad_cos_R = torch.zeros(size, dtype=dtype, device=g.device).index_add(
        0, cols.flatten(), (vals * (c_l * grad_e1 - a_coef[q])).flatten()
    )
    grad_sin_R = torch.zeros(size, dtype=dtype, device=g.device).index_add(
        0, cols.flatten(), (vals * (c_l * grad_e2 - b_coef[q])).flatten()
    )
    return (
        grad_blocks,
        grad_tail,
        theta_grad(pairs_L, theta_L, cos_L, sin_L, grad_cos_L, grad_sin_L, rotation_param),
        theta_grad(pairs_R, theta_R, cos_R, sin_R, grad_cos_R, grad_sin_R, rotation_param),
    )


def block_fold_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    out: torch.Tensor | None,
    fold: FoldState,
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
    """Gradients of ``y = x (block_fold(…).folded)ᵀ + b`` for ``bias``, ``scale`` (as ``s ⊙ ∂L/∂s``),
    ``blocks``, ``tail`` and the angles, and the selection statistics (``∂L/∂x`` comes from the folded
    weight, in ``jora_ops.fused``)."""
    n, m = grad_out.shape[-1], x.shape[-1]
    grads: dict[str, torch.Tensor | None] = dict.fromkeys(
        ("bias", "scale_weighted", "blocks", "tail", "theta_L", "theta_R")
    )
    output_side_grads(grads, grad_out, x, out, bias, scale, needs, stats_in, stats_out, use_triton, 0)
    if needs["blocks"] or needs["tail"] or needs["theta_L"] or needs["theta_R"]:
        grads["blocks"], grads["tail"], grads["theta_L"], grads["theta_R"] = run(
            _param_grads, compile_enabled(x), grad_out.reshape(-1, n), x.reshape(-1, m), scale, params[0],
            params[1], pairs_L, theta_L, pairs_R, theta_R, fold.partner_L, fold.cos_L, fold.sin_L, fold.partner_R,
            fold.cos_R, fold.sin_R, rotation_param, core.block_size,
        )  # fmt: skip
    return grads
