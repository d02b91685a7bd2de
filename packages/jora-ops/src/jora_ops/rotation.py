"""Sparse Givens rotations on disjoint coordinate pairs (JORA.md §2).

A side owns ``S`` slots; slot ``p`` holds a pair ``(i_p, j_p)`` and an angle parameter ``θ_p``. Acting on a
vector ``v`` the rotation of one slot is ``v_i' = cos φ v_i + sin φ v_j``, ``v_j' = −sin φ v_i + cos φ v_j``.
Pairs of one side are disjoint, so all rotations commute and form one orthogonal matrix ``R``.
Empty slots hold the pair ``(-1, -1)``.
"""

from __future__ import annotations

from typing import Literal

import torch

RotationParam = Literal["cayley", "angle"]
Impl = Literal["auto", "torch", "triton"]
ROTATION_PARAMS: tuple[str, ...] = ("cayley", "angle")
IMPLS: tuple[str, ...] = ("auto", "torch", "triton")

__all__ = [
    "IMPLS",
    "ROTATION_PARAMS",
    "apply_rotations",
    "apply_rotations_reference",
    "cayley_cos_sin",
    "check_rotation_param",
    "rotation_cos_sin",
    "rotation_matrix",
    "validate_pairs",
]


def check_rotation_param(rotation_param: str) -> None:
    """Raise ``ValueError`` unless ``rotation_param`` is one of :data:`ROTATION_PARAMS`."""
    if rotation_param not in ROTATION_PARAMS:
        raise ValueError(f"rotation_param must be one of {ROTATION_PARAMS}, got {rotation_param!r}")


def cayley_cos_sin(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cayley parameterisation: ``φ = 2·atan(θ/2)`` without trigonometry, in fp32 (fp64 for fp64 θ).

    Returns ``cos φ = (1 − θ²/4)/(1 + θ²/4)`` and ``sin φ = θ/(1 + θ²/4)``.
    """
    t = theta.to(torch.promote_types(theta.dtype, torch.float32))
    quarter_sq = 0.25 * t * t
    inv = 1.0 / (1.0 + quarter_sq)
    return (1.0 - quarter_sq) * inv, t * inv


def rotation_cos_sin(
    theta: torch.Tensor, rotation_param: str = "cayley"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos φ, sin φ)`` in fp32 for the ``"cayley"`` or ``"angle"`` (φ = θ) parameterisation."""
    check_rotation_param(rotation_param)
    if rotation_param == "cayley":
        return cayley_cos_sin(theta)
    t = theta.to(torch.promote_types(theta.dtype, torch.float32))
    return torch.cos(t), torch.sin(t)


def validate_pairs(
    pairs: torch.Tensor, dim: int, *, name: str = "pairs", allow_empty_slots: bool = True
) -> None:
    """Check a pair table once, when it changes (never called in forward).

    ``pairs`` must be an integer tensor of shape ``(S, 2)`` whose entries lie in ``[0, dim)`` (or are ``-1`` in
    both columns for an empty slot when ``allow_empty_slots``), with every coordinate used at most once.
    Raises ``ValueError``/``TypeError`` naming ``name``. This synchronises with the device.
    """
    if not isinstance(pairs, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(pairs).__name__}")
    if pairs.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 or int32 tensor, got {pairs.dtype}")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{name} must have shape (S, 2), got {tuple(pairs.shape)}")
    p = pairs.detach().cpu().long()
    empty = (p == -1).all(dim=1)
    if not allow_empty_slots and bool(empty.any()):
        raise ValueError(f"{name} contains empty slots (-1) where none are allowed")
    used = p[~empty]
    if used.numel() and (bool((used < 0).any()) or bool((used >= dim).any())):
        raise ValueError(
            f"{name} has coordinates outside [0, {dim}): {used[(used < 0) | (used >= dim)].tolist()}"
        )
    flat = used.flatten()
    if flat.numel() != flat.unique().numel():
        raise ValueError(f"{name} must be disjoint: a coordinate appears in more than one pair (or i == j)")


def _check_rotation_inputs(x: torch.Tensor, pairs: torch.Tensor, thetas: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (S, 2), got {tuple(pairs.shape)}")
    if pairs.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"pairs must be an integer tensor, got {pairs.dtype}")
    if thetas.dim() != 1 or thetas.shape[0] != pairs.shape[0]:
        raise ValueError(
            f"thetas must have shape (S,) matching pairs (S={pairs.shape[0]}), got {tuple(thetas.shape)}"
        )


def apply_rotations_reference(
    x: torch.Tensor,
    pairs: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    transpose: bool = False,
) -> torch.Tensor:
    """Differentiable torch rotation of the last dimension of ``x`` given ``cos``/``sin`` per pair.

    All pairs must be active (no ``-1``) and disjoint. Arithmetic in fp32, output in ``x``'s dtype.
    """
    if pairs.shape[0] == 0:
        return x
    idx_i, idx_j = pairs[:, 0].long(), pairs[:, 1].long()
    compute_dtype = torch.promote_types(x.dtype, cos.dtype)
    xi = x.index_select(-1, idx_i).to(compute_dtype)
    xj = x.index_select(-1, idx_j).to(compute_dtype)
    s = -sin if transpose else sin
    new_i = (cos * xi + s * xj).to(x.dtype)
    new_j = (cos * xj - s * xi).to(x.dtype)
    return x.index_copy(-1, idx_i, new_i).index_copy(-1, idx_j, new_j)


def apply_rotations(
    x: torch.Tensor,
    pairs: torch.Tensor,
    thetas: torch.Tensor,
    *,
    rotation_param: str = "cayley",
    impl: str = "auto",
    transpose: bool = False,
) -> torch.Tensor:
    """Rotate the last dimension of ``x`` by the Givens rotations of ``pairs`` and ``thetas``: ``x ↦ R x``.

    Args:
        x: tensor ``[..., dim]`` (any leading dimensions, any floating dtype).
        pairs: integer tensor ``[S, 2]`` of disjoint coordinate pairs; slots with ``-1`` are the identity.
        thetas: angle parameters ``[S]``.
        rotation_param: ``"cayley"`` (default) or ``"angle"``.
        impl: ``"auto"`` (Triton for CUDA tensors when Triton imports, torch otherwise), ``"torch"`` or
            ``"triton"``.
        transpose: apply ``Rᵀ = R⁻¹`` instead of ``R`` (the same rotations with negated angles).

    Returns:
        The rotated tensor, same shape and dtype as ``x``; cos/sin are evaluated in fp32. Differentiable
        with respect to ``x`` and ``thetas``; empty slots get exactly zero gradient.
    """
    _check_rotation_inputs(x, pairs, thetas)
    check_rotation_param(rotation_param)
    from jora_ops._dispatch import resolve_impl

    backend = resolve_impl(impl, x)
    if backend == "triton":
        from jora_ops.triton_kernels import apply_rotations_triton

        return apply_rotations_triton(x, pairs, thetas, rotation_param=rotation_param, transpose=transpose)
    cos, sin = rotation_cos_sin(thetas, rotation_param)
    # Empty slots (-1) become identity rotations on coordinate 0 written back last-wins-free: we route them to
    # a scratch column appended at the end so that they never touch real coordinates (no host sync needed).
    dim = x.shape[-1]
    active = pairs[:, 0] >= 0
    safe_pairs = torch.where(active.unsqueeze(1), pairs.long(), torch.full_like(pairs.long(), dim))
    cos = torch.where(active, cos, torch.ones_like(cos))
    sin = torch.where(active, sin, torch.zeros_like(sin))
    padded = torch.nn.functional.pad(x, (0, 1))
    return apply_rotations_reference(padded, safe_pairs, cos, sin, transpose=transpose)[..., :dim]


def rotation_matrix(
    pairs: torch.Tensor,
    thetas: torch.Tensor,
    dim: int,
    *,
    rotation_param: str = "cayley",
    transpose: bool = False,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Dense ``dim × dim`` matrix ``R`` (or ``Rᵀ``) such that ``apply_rotations(x) == x @ R.T``.

    For references and merging; empty slots (``-1``) are skipped.
    """
    check_rotation_param(rotation_param)
    cos, sin = rotation_cos_sin(thetas.detach(), rotation_param)
    matrix = torch.eye(dim, dtype=dtype, device=thetas.device)
    for (i, j), c, s in zip(pairs.tolist(), cos.tolist(), sin.tolist(), strict=True):
        if i < 0:
            continue
        s = -s if transpose else s
        matrix[i, i] = c
        matrix[i, j] = s
        matrix[j, i] = -s
        matrix[j, j] = c
    return matrix
