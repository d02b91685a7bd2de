"""The diag-core fast path of the fused linear: fold ``diag(s)(W + ΔW)`` into the weight.

For the ``diag`` core, ``ΔW = R_Lᵀ diag(c) R_R − diag(c₀)`` has at most 4 non-zeros per row (JORA.md §3).
Writing a side's rotation as per-coordinate tables — ``(R v)_k = cos_k v_k + sin_k v_{partner_k}`` — row
``k`` of ``ΔW`` is, with ``q = partner_L(k)`` and ``c`` zero-padded beyond ``d = min(n, m)``:

- ``e1`` at column ``k``:             ``c_k cos_L,k cos_R,k − c₀_k``
- ``e2`` at column ``partner_R(k)``:  ``c_k cos_L,k sin_R,k``
- ``e3`` at column ``q``:             ``−sin_L,k c_q cos_R,q``
- ``e4`` at column ``partner_R(q)``:  ``−sin_L,k c_q sin_R,q``

The forward folds these into the weight (one pass over ``W`` plus O(n + m) work) and runs one matmul: the
cost of the frozen layer. The backward reuses the folded weight for ``∂L/∂x = g W_eff`` and gets every
parameter gradient from token sums: ``∂L/∂e`` is ``Σ_t (g ⊙ s)_row x_col`` at each entry — the diagonal
sum for ``e1`` and sums over the few columns touched by rotations for ``e2``–``e4`` (the others do not
depend on any parameter) — followed by closed-form chain rules through the tables (``partner_L`` is an
involution, so "the row whose partner is k" is ``partner_L(k)``).
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

__all__ = ["diag_fold", "diag_fold_backward"]


def _padded(vec: torch.Tensor | None, size: int, dtype: torch.dtype, like: torch.Tensor) -> torch.Tensor:
    if vec is None:
        return torch.zeros(size, dtype=dtype, device=like.device)
    return torch.nn.functional.pad(vec.to(dtype), (0, size - vec.shape[0]))


def _fold(
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    diag: torch.Tensor,
    diag_offset: torch.Tensor | None,
    pairs_L: torch.Tensor,
    theta_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    layout: str,
    rotation_param: str,
) -> tuple[torch.Tensor, ...]:
    """The folded weight ``diag(s)(W + ΔW)`` and the six rotation tables (a pure function: on CUDA it is
    compiled into a few fused kernels)."""
    n, m = weight.shape if layout == "linear" else weight.shape[::-1]
    size = max(n, m)
    dtype = torch.promote_types(weight.dtype, torch.float32)
    partner_L, cos_L, sin_L = side_tables(pairs_L, *rotation_cos_sin(theta_L, rotation_param), size, dtype)
    partner_R, cos_R, sin_R = side_tables(pairs_R, *rotation_cos_sin(theta_R, rotation_param), size, dtype)
    c = _padded(diag, size, dtype, weight)
    c0 = _padded(diag_offset, size, dtype, weight)
    q = partner_L[:n]
    c_cos_L = c[:n] * cos_L[:n]
    sin_L_c_q = sin_L[:n] * c[q]
    values = torch.cat(
        [c_cos_L * cos_R[:n] - c0[:n], c_cos_L * sin_R[:n], -sin_L_c_q * cos_R[q], -sin_L_c_q * sin_R[q]]
    )
    rows = torch.arange(n, device=weight.device).repeat(4)
    cols = torch.cat([rows[:n], partner_R[:n], q, partner_R[q]]).clamp(max=m - 1)  # zero entries may clamp
    folded = fold_entries(weight, layout, scale, rows, cols, values)
    return folded, partner_L, cos_L, sin_L, partner_R, cos_R, sin_R


def diag_fold(
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
    """``diag(s)(W + ΔW)`` for the diag core (one weight pass) and the rotation tables; ``x`` is the input."""
    return FoldState(
        *run(
            _fold, compile_enabled(x), weight, scale, params[0], offset[0] if offset else None, pairs_L, theta_L,
            pairs_R, theta_R, layout, rotation_param,
        )
    )  # fmt: skip


def _param_grads(
    g_raw: torch.Tensor,
    x_raw: torch.Tensor,
    diag_sums: torch.Tensor,
    scale: torch.Tensor | None,
    diag: torch.Tensor,
    pairs_L: torch.Tensor,
    theta_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    partner_L: torch.Tensor,
    cos_L_full: torch.Tensor,
    sin_L_full: torch.Tensor,
    partner_R: torch.Tensor,
    cos_R_full: torch.Tensor,
    sin_R_full: torch.Tensor,
    rotation_param: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``diag``, ``theta_L`` and ``theta_R`` (a pure function: compiled on CUDA).

    ``diag_sums`` is ``Σ_t g_k x_k`` for ``k < d`` (from the column-sum pass).
    """
    n, m = g_raw.shape[1], x_raw.shape[1]
    size, d = max(n, m), min(n, m)
    dtype = cos_L_full.dtype
    s = scale.to(dtype) if scale is not None else torch.ones(n, dtype=dtype, device=x_raw.device)
    # Upstream gradients of the entries: G1 (all rows, the diagonal sum) and G2-G4 (rotation-touched rows;
    # elsewhere the entries are constant). One gather of g and one of x serve the three touched groups.
    rows_R = pairs_R.flatten().long()
    rows_L = pairs_L.flatten().long()
    q_L = partner_L[rows_L]
    rows = torch.cat([rows_R, rows_L, rows_L])
    cols = torch.cat([partner_R[rows_R], q_L, partner_R[q_L]]).clamp(max=m - 1)
    valid = torch.cat([rows_R < d, q_L < d, q_L < d])
    safe_rows = torch.where(valid, rows, 0).clamp(max=n - 1)
    # Σ_t (g ⊙ s)_row x_col = s_row Σ_t g_row x_col: the scale after the sum, not over the gathered tokens
    touched = token_sums(gather_columns(g_raw, safe_rows).to(dtype), gather_columns(x_raw, cols).to(dtype))
    touched = touched * s[safe_rows]
    group = torch.cat([torch.full_like(rows_R, 0), torch.full_like(rows_L, 1), torch.full_like(rows_L, 2)])
    upstream = torch.zeros(3, n + 1, dtype=dtype, device=x_raw.device)
    upstream = upstream.index_put((group, torch.where(valid, rows, n)), touched)  # masked rows: scratch slot
    G2, G3, G4 = upstream[:, :n].unbind(0)
    G1 = torch.nn.functional.pad(diag_sums.to(dtype) * s[:d], (0, n - d))

    # Closed-form chain rule through the tables (vectors of length n; c is zero beyond d).
    c = _padded(diag, size, dtype, x_raw)[:n]
    cos_L, sin_L, cos_R, sin_R = cos_L_full[:n], sin_L_full[:n], cos_R_full[:n], sin_R_full[:n]
    q = partner_L[:n]
    own = G1 * cos_R + G2 * sin_R
    a_coef, b_coef = G3 * sin_L, G4 * sin_L
    grad_diag = (cos_L * own - (a_coef[q] * cos_R + b_coef[q] * sin_R))[:d].to(diag.dtype)
    grad_cos_L = c * own
    grad_sin_L = -c[q] * (G3 * cos_R[q] + G4 * sin_R[q])
    grad_theta_L = theta_grad(
        pairs_L, theta_L, cos_L_full, sin_L_full, grad_cos_L, grad_sin_L, rotation_param
    )
    grad_cos_R = torch.nn.functional.pad(c * (G1 * cos_L - a_coef[q]), (0, size - n))
    grad_sin_R = torch.nn.functional.pad(c * (G2 * cos_L - b_coef[q]), (0, size - n))
    grad_theta_R = theta_grad(
        pairs_R, theta_R, cos_R_full, sin_R_full, grad_cos_R, grad_sin_R, rotation_param
    )
    return grad_diag, grad_theta_L, grad_theta_R


def diag_fold_backward(
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
    """Gradients of ``y = x (diag_fold(…).folded)ᵀ + b`` for ``bias``, ``scale`` (as ``s ⊙ ∂L/∂s``),
    ``diag``, ``theta_L`` and ``theta_R``, and the selection statistics (token means of ``x²`` and ``g²``
    added to the buffers); ``∂L/∂x`` comes from the folded weight, in ``jora_ops.fused``.

    All full-size token sums come from one pass over ``g``, ``y`` and ``x`` (a Triton kernel with
    ``use_triton``, torch ops otherwise); ``out`` (the forward's output) gives ``h = (y − b)/s``.
    """
    n, m = grad_out.shape[-1], x.shape[-1]
    d = min(n, m)
    grads: dict[str, torch.Tensor | None] = dict.fromkeys(
        ("bias", "scale_weighted", "diag", "theta_L", "theta_R")
    )

    g_raw, x_raw = grad_out.reshape(-1, n), x.reshape(-1, m)
    params_wanted = needs["diag"] or needs["theta_L"] or needs["theta_R"]
    sums = output_side_grads(
        grads,
        grad_out,
        x,
        out,
        bias,
        scale,
        needs,
        stats_in,
        stats_out,
        use_triton,
        d if params_wanted else 0,
    )
    if not params_wanted:
        return grads

    grads["diag"], grads["theta_L"], grads["theta_R"] = run(
        _param_grads, compile_enabled(x), g_raw, x_raw, sums["g_x"], scale, params[0], pairs_L, theta_L, pairs_R,
        theta_R, fold.partner_L, fold.cos_L, fold.sin_L, fold.partner_R, fold.cos_R, fold.sin_R, rotation_param,
    )  # fmt: skip
    return grads
