"""The diag-core fast path of the fused linear: fold ``diag(s)(W + ΔW)`` into the weight.

For the ``diag`` core, ``ΔW = R_Lᵀ diag(c) R_R − diag(c₀)`` has at most 4 non-zeros per row (JORA.md §3).
Writing a side's rotation as per-coordinate tables — ``(R v)_k = cos_k v_k + sin_k v_{partner_k}`` — row
``k`` of ``ΔW`` is, with ``q = partner_L(k)`` and ``c`` zero-padded beyond ``d = min(n, m)``:

- column ``k``:             ``c_k cos_L,k cos_R,k − c₀_k``
- column ``partner_R(k)``:  ``c_k cos_L,k sin_R,k``
- column ``q``:             ``−sin_L,k c_q cos_R,q``
- column ``partner_R(q)``:  ``−sin_L,k c_q sin_R,q``

so the folded weight costs one pass over ``W`` plus O(n + m) work, and the forward is one matmul: the cost
of the frozen layer. In backward, ``∂L/∂x = g W_eff`` (the frozen layer's matmul again, with ``W_eff``
recomputed rather than saved) and the parameter gradients need only token sums: ``∂L/∂ΔW`` at the 4n
entries above is the diagonal sum ``Σ_t (g ⊙ s)_k x_k`` plus sums over the few columns that rotations
touch; autograd over the tiny graph from (θ, c) to the entries finishes the job exactly. Inactive entries
(untouched coordinates) have values that do not depend on any parameter, so their upstream gradient is
irrelevant and set to 0.
"""

from __future__ import annotations

import torch

from jora_ops.rotation import rotation_cos_sin

__all__ = ["column_sums_torch", "diag_fold_backward", "diag_fold_forward"]

Tables = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Entries = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _side_tables(pairs: torch.Tensor, theta: torch.Tensor, rotation_param: str, size: int) -> Tables:
    """``(partner, cos, sin)`` of length ``size`` with ``(R v)_k = cos_k v_k + sin_k v_{partner_k}``."""
    cos, sin = rotation_cos_sin(theta, rotation_param)
    partner = torch.arange(size, device=theta.device)
    cos_full = torch.ones(size, dtype=cos.dtype, device=theta.device)
    sin_full = torch.zeros(size, dtype=sin.dtype, device=theta.device)
    if pairs.shape[0]:
        i, j = pairs[:, 0].long(), pairs[:, 1].long()
        partner = partner.index_copy(0, i, j).index_copy(0, j, i)
        cos_full = cos_full.index_copy(0, i, cos).index_copy(0, j, cos)
        sin_full = sin_full.index_copy(0, i, sin).index_copy(0, j, -sin)
    return partner, cos_full, sin_full


def _padded(vec: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.nn.functional.pad(vec.to(dtype), (0, size - vec.shape[0]))


def _entries(
    n: int,
    m: int,
    diag: torch.Tensor,
    diag_offset: torch.Tensor | None,
    tables_L: Tables,
    tables_R: Tables,
    dtype: torch.dtype,
) -> Entries:
    """The ``4n`` COO entries ``(rows, cols, values)`` of ``ΔW`` in the logical ``[n, m]`` layout.

    Entries that are identically zero may carry a clamped column index. Values are computed in ``dtype``.
    """
    size = max(n, m)
    partner_L, cos_L, sin_L = tables_L
    partner_R, cos_R, sin_R = tables_R
    cos_L, sin_L, cos_R, sin_R = (t.to(dtype) for t in (cos_L, sin_L, cos_R, sin_R))
    c = _padded(diag, size, dtype)
    c0 = _padded(diag_offset, size, dtype) if diag_offset is not None else torch.zeros_like(c)
    k = torch.arange(n, device=diag.device)
    q = partner_L[:n]
    values = torch.cat(
        [
            c[:n] * cos_L[:n] * cos_R[:n] - c0[:n],
            c[:n] * cos_L[:n] * sin_R[:n],
            -sin_L[:n] * c[q] * cos_R[q],
            -sin_L[:n] * c[q] * sin_R[q],
        ]
    )
    cols = torch.cat([k, partner_R[:n], q, partner_R[q]]).clamp(max=m - 1)
    return k.repeat(4), cols, values


def _fold(weight: torch.Tensor, layout: str, scale: torch.Tensor | None, entries: Entries) -> torch.Tensor:
    """``diag(s)(W + ΔW)`` in ``weight``'s layout and dtype: one pass over ``W`` plus a 4n-entry scatter."""
    rows, cols, values = entries
    if scale is None:
        folded = weight.clone()
    else:
        s = scale.to(weight.dtype)
        folded = weight * (s[:, None] if layout == "linear" else s[None, :])
        values = values * scale.to(values.dtype)[rows]
    index = (rows, cols) if layout == "linear" else (cols, rows)
    return folded.index_put_(index, values.to(weight.dtype), accumulate=True)


def _matmul(x: torch.Tensor, folded: torch.Tensor, layout: str, bias: torch.Tensor | None) -> torch.Tensor:
    if layout == "linear":
        return torch.nn.functional.linear(x, folded, bias)
    out = x @ folded
    return out + bias if bias is not None else out


def diag_fold_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    layout: str,
    scale: torch.Tensor | None,
    diag: torch.Tensor,
    diag_offset: torch.Tensor | None,
    pairs_L: torch.Tensor,
    theta_L: torch.Tensor,
    pairs_R: torch.Tensor,
    theta_R: torch.Tensor,
    rotation_param: str,
) -> torch.Tensor:
    """``y = x (diag(s)(W + ΔW))ᵀ + b`` for the diag core: one weight pass and one matmul."""
    n, m = weight.shape if layout == "linear" else weight.shape[::-1]
    size = max(n, m)
    entries = _entries(
        n,
        m,
        diag,
        diag_offset,
        _side_tables(pairs_L, theta_L, rotation_param, size),
        _side_tables(pairs_R, theta_R, rotation_param, size),
        torch.promote_types(weight.dtype, torch.float32),
    )
    return _matmul(x, _fold(weight, layout, scale, entries), layout, bias)


def _token_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ_t a[t, i] b[t, i]`` for 2-D ``a``, ``b`` (``vecdot``: no full-size temporary on CPU)."""
    return torch.linalg.vecdot(a, b, dim=0)


def column_sums_torch(
    grad: torch.Tensor, out: torch.Tensor | None, x: torch.Tensor | None, n_diag: int, stats: bool
) -> dict[str, torch.Tensor | None]:
    """Torch reference of :func:`jora_ops.triton_kernels.column_sums_triton` (same keys, at least fp32)."""
    compute_dtype = torch.promote_types(grad.dtype, torch.float32)
    g = grad.to(compute_dtype)
    xs = x.to(compute_dtype) if x is not None else None
    return {
        "g_y": _token_sums(g, out.to(compute_dtype)) if out is not None else None,
        "g": g.sum(0),
        "g_x": _token_sums(g[:, :n_diag], xs[:, :n_diag]) if xs is not None else None,
        "g_g": _token_sums(g, g) if stats else None,
        "x_x": _token_sums(xs, xs) if stats and xs is not None else None,
    }


def diag_fold_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    out: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    layout: str,
    scale: torch.Tensor | None,
    diag: torch.Tensor,
    diag_offset: torch.Tensor | None,
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
    """Gradients for ``x``, ``theta_L``, ``theta_R``, ``diag``, ``scale`` and ``bias`` of
    :func:`diag_fold_forward`, and the selection statistics (token means of ``x²`` and ``g²``).

    ``out`` is the forward's output (needed with a scale: ``h = (y − b)/s``). All full-size token sums come
    from one pass over ``g``, ``y`` and ``x`` (a Triton kernel with ``use_triton``, torch ops otherwise).
    """
    n, m = weight.shape if layout == "linear" else weight.shape[::-1]
    size, d = max(n, m), min(n, m)
    compute_dtype = torch.promote_types(weight.dtype, torch.float32)
    grads: dict[str, torch.Tensor | None] = dict.fromkeys(
        ("x", "theta_L", "theta_R", "diag", "scale", "bias")
    )

    leaves = {"theta_L": theta_L, "theta_R": theta_R, "diag": diag}
    with torch.enable_grad():
        inputs = {k: v.detach().requires_grad_(needs[k]) for k, v in leaves.items()}
        tables_L = _side_tables(pairs_L, inputs["theta_L"], rotation_param, size)
        tables_R = _side_tables(pairs_R, inputs["theta_R"], rotation_param, size)
        entries = _entries(n, m, inputs["diag"], diag_offset, tables_L, tables_R, compute_dtype)
    if needs["x"]:
        with torch.no_grad():
            folded = _fold(weight, layout, scale, (entries[0], entries[1], entries[2].detach()))
            grad_x = grad_out @ folded if layout == "linear" else grad_out @ folded.T
        grads["x"] = grad_x.to(x.dtype)

    wanted = [k for k in leaves if needs[k]]
    g_raw, x_raw = grad_out.reshape(-1, n), x.reshape(-1, m)
    stats = stats_in is not None or stats_out is not None
    need_y = scale is not None and needs["scale"]
    if use_triton:
        from jora_ops.triton_kernels import column_sums_triton

        sums = column_sums_triton(
            g_raw, out.reshape(-1, n) if need_y else None, x_raw if wanted else None, d, stats
        )
    else:
        sums = column_sums_torch(
            g_raw, out.reshape(-1, n) if need_y else None, x_raw if wanted or stats else None, d, stats
        )
    tokens = max(g_raw.shape[0], 1)
    if stats_out is not None:
        stats_out.add_(sums["g_g"] / tokens)
    if stats_in is not None:
        stats_in.add_(sums["x_x"] / tokens)
    if needs["bias"]:
        grads["bias"] = sums["g"]
    if need_y:
        weighted = sums["g_y"]
        if bias is not None:
            weighted = weighted - bias.to(weighted.dtype) * sums["g"]
        grads["scale"] = (weighted / scale).to(scale.dtype)

    if not wanted:
        return grads
    g = g_raw.to(compute_dtype)
    s = scale.to(compute_dtype) if scale is not None else torch.ones(n, dtype=compute_dtype, device=g.device)
    xs = x_raw.to(compute_dtype)
    partner_L, partner_R = tables_L[0], tables_R[0]

    # Touched rows: R-pair coordinates (entry 2) and L-pair coordinates (entries 3 and 4). One gather of g
    # and one of x serve all three groups; rows whose entry is identically zero are masked out.
    rows_R = pairs_R.flatten().long()
    rows_L = pairs_L.flatten().long()
    q = partner_L[rows_L]
    rows = torch.cat([rows_R, rows_L, rows_L])
    cols = torch.cat([partner_R[rows_R], q, partner_R[q]]).clamp(max=m - 1)
    valid = torch.cat([rows_R < d, q < d, q < d])
    safe_rows = torch.where(valid, rows, 0).clamp(max=n - 1)
    touched = _token_sums(g.index_select(1, safe_rows) * s[safe_rows], xs.index_select(1, cols))
    target = torch.where(valid, rows, n)  # masked rows land in a scratch slot
    group = torch.cat([torch.full_like(rows_R, 1), torch.full_like(rows_L, 2), torch.full_like(rows_L, 3)])
    upstream = torch.zeros(4, n + 1, dtype=compute_dtype, device=g.device)
    upstream.index_put_((group, target), touched)
    upstream[0, :d] = sums["g_x"].to(compute_dtype) * s[:d]
    upstream = upstream[:, :n].reshape(-1)
    results = torch.autograd.grad(
        entries[2], [inputs[k] for k in wanted], upstream.to(entries[2].dtype), allow_unused=True
    )
    for key, value in zip(wanted, results, strict=True):
        leaf = leaves[key]
        grads[key] = (value if value is not None else torch.zeros_like(leaf)).to(leaf.dtype)
    return grads
