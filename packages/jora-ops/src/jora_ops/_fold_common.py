"""Pieces shared by the folded fast paths (:mod:`jora_ops._diag_fold`, ``_block_fold``, ``_lowrank_fold``).

A side's rotation as per-coordinate tables (``(R v)_k = cos_k v_k + sin_k v_{partner_k}``), the chain rule
from those tables back to the angles, the matmul with a folded weight in either layout, and the one pass
of token sums that gives the bias and scale gradients and the selection statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "FoldState",
    "column_sums_torch",
    "fold_entries",
    "folded_input_grad",
    "folded_matmul",
    "kept_for_backward",
    "output_side_grads",
    "rotate_rows",
    "rotate_rows_vjp",
    "side_tables",
    "theta_grad",
    "token_sums",
]


# without a scale gradient the backward folds the weight again rather than keeping it from the forward
# (:func:`kept_for_backward`); False keeps it (one weight-sized tensor more per layer): for A/Bs
REFOLD_IN_BACKWARD = True


def kept_for_backward(scale_grad: bool, input_grad: bool) -> tuple[bool, bool]:
    """``(keep the output, keep the folded weight)`` for a fused function's backward, every path.

    The output ``y`` is kept for the scale's gradient (``Σ_t g ⊙ y``) only, the folded weight for ``∂L/∂x``
    only beside it (the layer then already saves an activation-sized tensor more than the frozen layer);
    otherwise the backward folds again (one pass over ``W``) and the layer saves what the frozen layer saves,
    ``x`` and its weight (PERFORMANCE.md: "JORA without magnitude should save nothing beyond what the base
    layer saves")."""
    return scale_grad, input_grad and (scale_grad or not REFOLD_IN_BACKWARD)


@dataclass
class FoldState:
    """A fold: the folded weight and the rotation tables (O(n + m)). The fused function's context keeps the
    tables; the folded weight (``None`` there) it saves or folds again (``jora_ops.fused``)."""

    folded: torch.Tensor | None
    partner_L: torch.Tensor
    cos_L: torch.Tensor
    sin_L: torch.Tensor
    partner_R: torch.Tensor
    cos_R: torch.Tensor
    sin_R: torch.Tensor


def side_tables(
    pairs: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(partner, cos_full, sin_full)`` of length ``size``: ``(R v)_k = cos_k v_k + sin_k v_{partner_k}``."""
    partner = torch.arange(size, device=cos.device)
    cos_full = torch.ones(size, dtype=dtype, device=cos.device)
    sin_full = torch.zeros(size, dtype=dtype, device=cos.device)
    if pairs.shape[0]:
        i, j = pairs[:, 0].long(), pairs[:, 1].long()
        both = torch.cat([i, j])
        partner[both] = torch.cat([j, i])
        cos_full[both] = cos.to(dtype).repeat(2)
        sin_full[both] = torch.cat([sin, -sin]).to(dtype)
    return partner, cos_full, sin_full


def rotate_rows(
    v: torch.Tensor, partner: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, transpose: bool = False
) -> torch.Tensor:
    """``R v`` (or ``Rᵀ v``) for a side's tables acting on the rows of ``v`` ``[size, r]``.

    ``(R v)_k = cos_k v_k + sin_k v_{partner_k}`` and ``(Rᵀ v)_k = cos_k v_k − sin_k v_{partner_k}`` (the
    table's ``sin`` is antisymmetric over a pair).
    """
    return cos[:, None] * v + (-sin if transpose else sin)[:, None] * v[partner]


def rotate_rows_vjp(
    v: torch.Tensor,
    grad: torch.Tensor,
    partner: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    transpose: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`rotate_rows` from ``grad = ∂L/∂(R v)``: ``(∂L/∂v, ∂L/∂cos, ∂L/∂sin)``.

    ``∂L/∂v`` is the inverse rotation of ``grad``; the tables' gradients feed :func:`theta_grad`.
    """
    grad_v = rotate_rows(grad, partner, cos, sin, transpose=not transpose)
    grad_cos = (grad * v).sum(1)
    grad_sin = (grad * v[partner]).sum(1)
    return grad_v, grad_cos, -grad_sin if transpose else grad_sin


def fold_entries(
    weight: torch.Tensor,
    layout: str,
    scale: torch.Tensor | None,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
) -> torch.Tensor:
    """``diag(s)(W + ΔW)`` in ``weight``'s layout and dtype from ``ΔW``'s COO entries (logical ``[n, m]``).

    One pass over ``W`` plus a scatter-add of the entries into it (in place: the pass's output is fresh);
    duplicate positions accumulate.
    """
    if scale is None:
        folded = weight.clone()
    else:
        s = scale.to(weight.dtype)
        folded = weight * (s[:, None] if layout == "linear" else s[None, :])
        values = values * scale.to(values.dtype)[rows]
    index = (rows, cols) if layout == "linear" else (cols, rows)
    return folded.index_put_(index, values.to(weight.dtype), accumulate=True)


def folded_input_grad(
    grad_out: torch.Tensor, folded: torch.Tensor, layout: str, dtype: torch.dtype
) -> torch.Tensor:
    """``∂L/∂x = g W_eff`` for a folded weight in either layout (the frozen layer's input-gradient matmul)."""
    return (grad_out @ folded if layout == "linear" else grad_out @ folded.T).to(dtype)


def folded_matmul(
    x: torch.Tensor, folded: torch.Tensor, bias: torch.Tensor | None, layout: str
) -> torch.Tensor:
    """``x W_effᵀ + b`` for a folded weight stored as ``[n, m]`` (``"linear"``) or ``[m, n]`` (``"conv1d"``)."""
    if layout == "linear":
        return torch.nn.functional.linear(x, folded, bias)
    out = x @ folded
    return out + bias if bias is not None else out


# CPU token sums (:func:`column_sums_torch`): tokens per chunk so that each input's chunk is about this size
CPU_CHUNK_BYTES = 1 << 21


def token_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ_t a[t, i] b[t, i]`` for 2-D ``a``, ``b`` (``vecdot``)."""
    return torch.linalg.vecdot(a, b, dim=0)


def gather_columns(a: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``a[:, columns]`` for 2-D ``a`` (``torch.gather``: ≈ 1.5 × faster than ``index_select`` along dim 1 on CPU)."""
    return torch.gather(a, 1, columns.unsqueeze(0).expand(a.shape[0], -1))


def column_sums_torch(
    grad: torch.Tensor,
    out: torch.Tensor | None,
    x: torch.Tensor | None,
    n_diag: int,
    stats: bool,
    g_sum: bool = True,
) -> dict[str, torch.Tensor | None]:
    """Torch reference of :func:`jora_ops._sparse_core_triton.column_sums_triton` (same keys, at least fp32).

    On CUDA each sum is one op over the whole tensors. On CPU the tokens go in chunks of about
    :data:`CPU_CHUNK_BYTES` per input, every sum of a chunk taken while it is in cache, through one reused
    product buffer (a whole-tensor ``vecdot`` writes and reads back an activation-sized product per sum; 2-core
    CPU, T = 2048, d = 1024 fp32, in one process: the token sums of a JORA-diag+OER backward 5.1 → 2.7 ms, of
    JORA-diag 2.7 → 1.5 ms)."""
    compute_dtype = torch.promote_types(grad.dtype, torch.float32)
    tokens, n = grad.shape
    width = max(n, x.shape[1] if x is not None else 0)
    step = max(tokens, 1) if grad.is_cuda else max(1, CPU_CHUNK_BYTES // (compute_dtype.itemsize * width))
    sums: dict[str, torch.Tensor | None] = dict.fromkeys(("g_y", "g", "g_x", "g_g", "x_x"))
    # the reused product buffer, allocated at the first product sum (Σg alone needs none)
    products: torch.Tensor | None = None

    def add(key: str, value: torch.Tensor) -> None:
        total = sums[key]
        sums[key] = value if total is None else total.add_(value)

    def product_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``Σ_t a ⊙ b`` through the reused buffer (a contiguous view of its first ``a.numel()`` values)."""
        nonlocal products
        if products is None:
            products = torch.empty(min(step, tokens) * width, dtype=compute_dtype, device=grad.device)
        return torch.mul(a, b, out=products[: a.numel()].view(a.shape)).sum(0)

    for first in range(0, max(tokens, 1), step):
        g = grad[first : first + step].to(compute_dtype)
        xs = x[first : first + step].to(compute_dtype) if x is not None else None
        if out is not None:
            add("g_y", product_sum(g, out[first : first + step].to(compute_dtype)))
        if g_sum:
            add("g", g.sum(0))
        if xs is not None:
            add("g_x", product_sum(g[:, :n_diag], xs[:, :n_diag]))
        if stats:
            add("g_g", product_sum(g, g))
            if xs is not None:
                add("x_x", product_sum(xs, xs))
    return sums


def theta_grad(
    pairs: torch.Tensor,
    theta: torch.Tensor,
    cos_full: torch.Tensor,
    sin_full: torch.Tensor,
    grad_cos_full: torch.Tensor,
    grad_sin_full: torch.Tensor,
    rotation_param: str,
) -> torch.Tensor:
    """Chain rule from the tables to θ: ``cos_full[i] = cos_full[j] = cos φ``, ``sin_full[i] = −sin_full[j]``.

    ``cos φ`` and ``sin φ`` are read back from the side's tables (the forward's values) at each pair's ``i``.
    """
    if pairs.shape[0] == 0:
        return torch.zeros_like(theta)
    i, j = pairs[:, 0].long(), pairs[:, 1].long()
    grad_cos = grad_cos_full[i] + grad_cos_full[j]
    grad_sin = grad_sin_full[i] - grad_sin_full[j]
    grad_phi = cos_full[i] * grad_sin - sin_full[i] * grad_cos
    if rotation_param == "cayley":
        t = theta.to(grad_phi.dtype)
        grad_phi = grad_phi / (1.0 + 0.25 * t * t)  # dφ/dθ for φ = 2·atan(θ/2)
    return grad_phi.to(theta.dtype)


def output_side_grads(
    grads: dict[str, torch.Tensor | None],
    grad_out: torch.Tensor,
    x: torch.Tensor,
    out: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    needs: dict[str, bool],
    stats_in: torch.Tensor | None,
    stats_out: torch.Tensor | None,
    use_triton: bool,
    n_diag: int,
) -> dict[str, torch.Tensor | None]:
    """One pass of token sums over ``g``, ``y`` and ``x``: fills ``grads["bias"]`` and
    ``grads["scale_weighted"]`` (``s ⊙ ∂L/∂s = Σ_t g ⊙ (y − b)``: the fused function turns it into the
    magnitude logits' gradient without dividing by ``s``, or into ``∂L/∂s``), adds the statistics to their
    buffers, and returns the sums (``g_x`` over the first ``n_diag`` columns for the diag core)."""
    n, m = grad_out.shape[-1], x.shape[-1]
    g_raw = grad_out.reshape(-1, n)
    stats = stats_in is not None or stats_out is not None
    need_y = scale is not None and needs["scale"]
    y_raw = out.reshape(-1, n) if need_y and out is not None else None
    x_raw = x.reshape(-1, m) if n_diag or stats else None
    g_sum = needs["bias"] or (need_y and bias is not None)  # Σg: ∂L/∂b, and s ⊙ ∂L/∂s = Σ g (y − b)
    if use_triton:
        from jora_ops._sparse_core_triton import column_sums_triton

        sums = column_sums_triton(g_raw, y_raw, x_raw, n_diag, stats, g_sum)
    else:
        sums = column_sums_torch(g_raw, y_raw, x_raw, n_diag, stats, g_sum)
    tokens = max(g_raw.shape[0], 1)
    if stats_out is not None:
        stats_out.add_(sums["g_g"] / tokens)
    if stats_in is not None:
        stats_in.add_(sums["x_x"] / tokens)
    if needs["bias"]:
        grads["bias"] = sums["g"]
    if need_y and scale is not None:
        weighted = sums["g_y"]
        if bias is not None:
            weighted = weighted - bias.to(weighted.dtype) * sums["g"]
        grads["scale_weighted"] = weighted
    return sums
