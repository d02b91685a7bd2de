"""Functional forms of the JORA cores C ∈ R^{n×m} (JORA.md §3).

A core is described by a :class:`CoreSpec` (kind and shape) and a tuple of parameter tensors:

- ``diag``: ``(c,)`` with ``c ∈ R^d``, ``d = min(n, m)``: ``C[i, i] = c_i``.
- ``block``: ``(blocks, tail)`` with ``blocks ∈ R^{⌊d/b⌋×b×b}`` and ``tail ∈ R^{d mod b}`` (remainder diagonal):
  block-diagonal on the leading ``d×d`` square.
- ``lowrank``: ``(A, B)`` with ``A ∈ R^{n×r}``, ``B ∈ R^{m×r}``: ``C = (α/r)·A Bᵀ``.

Everything else is zero. :func:`core_apply` computes ``u Cᵀ`` without building the dense matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CORE_KINDS: tuple[str, ...] = ("diag", "block", "lowrank")

__all__ = ["CORE_KINDS", "CoreSpec", "check_core_params", "core_apply", "core_dense", "core_param_shapes"]


@dataclass(frozen=True)
class CoreSpec:
    """Kind and shape of a core: ``out_features`` = n, ``in_features`` = m.

    ``block_size`` is used by ``block``; ``rank`` and ``alpha`` by ``lowrank`` (scale ``alpha / rank``).
    """

    kind: str
    out_features: int
    in_features: int
    block_size: int = 4
    rank: int = 8
    alpha: float = 8.0

    def __post_init__(self) -> None:
        if self.kind not in CORE_KINDS:
            raise ValueError(f"core must be one of {CORE_KINDS}, got {self.kind!r}")
        if self.out_features < 1 or self.in_features < 1:
            raise ValueError(
                f"out_features and in_features must be >= 1, got ({self.out_features}, {self.in_features})"
            )
        if self.kind == "block" and self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.kind == "lowrank" and self.rank < 1:
            raise ValueError(f"lowrank_r must be >= 1, got {self.rank}")

    @property
    def diag_len(self) -> int:
        """``d = min(n, m)``, the length of the core's diagonal square."""
        return min(self.out_features, self.in_features)

    @property
    def scale(self) -> float:
        """``α / r`` for ``lowrank``, 1 otherwise."""
        return self.alpha / self.rank if self.kind == "lowrank" else 1.0


def core_param_shapes(spec: CoreSpec) -> tuple[tuple[int, ...], ...]:
    """Shapes of the parameter tuple of ``spec``."""
    d = spec.diag_len
    if spec.kind == "diag":
        return ((d,),)
    if spec.kind == "block":
        b = spec.block_size
        return ((d // b, b, b), (d % b,))
    return ((spec.out_features, spec.rank), (spec.in_features, spec.rank))


def check_core_params(spec: CoreSpec, params: tuple[torch.Tensor, ...], name: str = "core_params") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``params`` have the shapes of ``spec``."""
    expected = core_param_shapes(spec)
    got = tuple(tuple(p.shape) for p in params)
    if got != expected:
        raise ValueError(f"{name}: {spec.kind} core parameters must have shapes {expected}, got {got}")


def core_apply(spec: CoreSpec, params: tuple[torch.Tensor, ...], u: torch.Tensor) -> torch.Tensor:
    """``u Cᵀ`` for ``u ∈ R^{..., m}`` → ``R^{..., n}`` without materialising C (differentiable)."""
    check_core_params(spec, params)
    n, d = spec.out_features, spec.diag_len
    compute_dtype = torch.promote_types(u.dtype, params[0].dtype)  # bf16 activations meet fp32 params in fp32
    u = u.to(compute_dtype)
    params = tuple(p.to(compute_dtype) for p in params)
    if spec.kind == "lowrank":
        a, b = params
        return (u @ b) @ (a * spec.scale).T
    if spec.kind == "diag":
        (c,) = params
        head = u[..., :d] * c
    else:
        blocks, tail = params
        nb, bs = blocks.shape[0], spec.block_size
        lead = u.shape[:-1]
        blocked = torch.einsum("...kj,kij->...ki", u[..., : nb * bs].reshape(*lead, nb, bs), blocks)
        head = torch.cat([blocked.reshape(*lead, nb * bs), u[..., nb * bs : d] * tail], dim=-1)
    return torch.nn.functional.pad(head, (0, n - d)) if n > d else head


def core_dense(
    spec: CoreSpec, params: tuple[torch.Tensor, ...], *, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The dense ``(n, m)`` matrix C (for merging and references)."""
    check_core_params(spec, params)
    dtype = dtype or params[0].dtype
    n, m, d = spec.out_features, spec.in_features, spec.diag_len
    if spec.kind == "lowrank":
        a, b = (p.to(dtype) for p in params)
        return spec.scale * (a @ b.T)
    dense = torch.zeros(n, m, dtype=dtype, device=params[0].device)
    if spec.kind == "diag":
        dense[:d, :d] = torch.diag(params[0].to(dtype))
        return dense
    blocks, tail = (p.to(dtype) for p in params)
    nb, bs = blocks.shape[0], spec.block_size
    if nb:
        dense[: nb * bs, : nb * bs] = torch.block_diag(*blocks.unbind(0))
    dense[nb * bs : d, nb * bs : d] = torch.diag(tail)
    return dense
