"""Data-driven pair selection (JORA.md §6): top-k by energy, random pairs, and the warm-up allowance.

All functions run on the tensors' device and never synchronise with it: the number of pairs returned is
known on the host from the arguments' shapes.
"""

from __future__ import annotations

import math

import torch

PAIRING_STRATEGIES: tuple[str, ...] = ("consecutive", "high_low")

__all__ = [
    "PAIRING_STRATEGIES",
    "compute_allowed_pairs",
    "ema_update",
    "select_random_pairs",
    "select_top_k_pairs_gpu",
]


def ema_update(ema: torch.Tensor, collected: torch.Tensor, beta: float, count: int) -> torch.Tensor:
    """The statistic's EMA after one step: ``β·ema + (1 − β)·collected / count`` (``count`` collections summed).

    A step whose ``collected`` holds a non-finite value leaves the EMA unchanged: gradients that overflowed
    (fp16 loss scaling, whose ``GradScaler`` skips that optimizer step) would otherwise make it inf or NaN for
    good, and selection would rank garbage from then on. Decided on the device, without a host sync.
    """
    updated = ema * beta + collected * ((1.0 - beta) / count)
    return torch.where(torch.isfinite(collected).all(), updated, ema)


def _uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device, dtype=torch.float32).to(device)


def select_top_k_pairs_gpu(
    energy: torch.Tensor,
    k: int,
    max_features: int | None = None,
    *,
    exclude: torch.Tensor | None = None,
    pairing_strategy: str = "consecutive",
    use_gumbel: bool = False,
    gumbel_tau: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose ``min(k, available // 2)`` disjoint coordinate pairs ranked by ``energy``.

    Candidates are the coordinates ``< max_features`` (all when ``None``) not listed in ``exclude``. They are
    ranked by energy, highest first, ties broken by the lower index (with ``use_gumbel``: by
    ``log(energy)/gumbel_tau + Gumbel noise`` drawn from ``generator``). ``"consecutive"`` pairs ranks
    (1, 2), (3, 4), …; ``"high_low"`` pairs the highest with the lowest of the top ``2·k``.

    Args:
        energy: 1-D floating tensor of per-coordinate energies.
        k: number of pairs wanted (``>= 0``).
        max_features: only coordinates below this bound are candidates.
        exclude: 1-D integer tensor of distinct coordinates in ``[0, max_features)`` that are already used.
        pairing_strategy: ``"consecutive"`` or ``"high_low"``.
        use_gumbel: perturb the ranking with Gumbel noise (stochastic top-k).
        gumbel_tau: Gumbel temperature (``> 0``).
        generator: source of the Gumbel noise (for reproducible, rank-identical draws).

    Returns:
        ``int64`` tensor ``[min(k, available // 2), 2]`` on ``energy``'s device.
    """
    if not isinstance(energy, torch.Tensor) or not energy.is_floating_point():
        raise TypeError(
            f"energy must be a floating-point tensor, got {getattr(energy, 'dtype', type(energy))}"
        )
    if energy.dim() != 1:
        raise ValueError(f"energy must be 1-D, got shape {tuple(energy.shape)}")
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if pairing_strategy not in PAIRING_STRATEGIES:
        raise ValueError(f"pairing_strategy must be one of {PAIRING_STRATEGIES}, got {pairing_strategy!r}")
    if use_gumbel and not gumbel_tau > 0:
        raise ValueError(f"gumbel_tau must be > 0, got {gumbel_tau}")
    limit = energy.shape[0] if max_features is None else min(int(max_features), energy.shape[0])
    if limit < 0:
        raise ValueError(f"max_features must be >= 0, got {max_features}")
    n_excluded = 0
    if exclude is not None:
        if exclude.dtype not in (torch.int64, torch.int32) or exclude.dim() != 1:
            raise TypeError(
                f"exclude must be a 1-D integer tensor, got {exclude.dtype} {tuple(exclude.shape)}"
            )
        n_excluded = exclude.numel()
    n_pairs = min(k, max(limit - n_excluded, 0) // 2)
    if n_pairs == 0:
        return torch.empty(0, 2, dtype=torch.long, device=energy.device)

    scores = energy[:limit].float()
    if use_gumbel:
        uniform = _uniform(limit, generator, energy.device).clamp(1e-10, 1.0 - 1e-7)
        scores = scores.clamp_min(torch.finfo(torch.float32).tiny).log() / gumbel_tau - (-uniform.log()).log()
    if exclude is not None and n_excluded:
        scores = scores.index_fill(0, exclude.long(), float("-inf"))
    order = torch.sort(scores, descending=True, stable=True).indices[: 2 * n_pairs]
    if pairing_strategy == "consecutive":
        return order.view(n_pairs, 2)
    return torch.stack([order[:n_pairs], order[n_pairs:].flip(0)], dim=1)


def select_random_pairs(
    dim: int,
    k: int,
    *,
    generator: torch.Generator | None = None,
    exclude: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``min(k, available // 2)`` uniformly random disjoint pairs of ``[0, dim)`` avoiding ``exclude``.

    The draw comes from ``generator`` (seed it identically on every rank for identical pairs).
    """
    if dim < 0:
        raise ValueError(f"dim must be >= 0, got {dim}")
    device = torch.device(device) if device is not None else (exclude.device if exclude is not None else None)
    energy = _uniform(dim, generator, device or torch.device("cpu"))
    return select_top_k_pairs_gpu(energy, k, exclude=exclude)


def compute_allowed_pairs(
    S: int, step: int, warmup_steps: int = 0, warmup_ratio: float = 0.0, total_steps: int | None = None
) -> int:
    """Number of slots a side may have active at ``step`` (JORA.md §6).

    ``S`` without warm-up, else ``max(1, ⌈S·min(1, step/ws)⌉)`` with
    ``ws = max(warmup_steps, ⌊warmup_ratio · total_steps⌋)``; never more than ``S``.
    """
    if S < 0 or step < 0 or warmup_steps < 0 or not 0.0 <= warmup_ratio <= 1.0:
        raise ValueError(
            f"need S >= 0, step >= 0, warmup_steps >= 0 and 0 <= warmup_ratio <= 1; got S={S}, step={step}, "
            f"warmup_steps={warmup_steps}, warmup_ratio={warmup_ratio}"
        )
    ws = max(warmup_steps, math.floor(warmup_ratio * (total_steps or 0)))
    if ws <= 0 or S == 0:
        return S
    return min(S, max(1, math.ceil(S * min(1.0, step / ws))))
