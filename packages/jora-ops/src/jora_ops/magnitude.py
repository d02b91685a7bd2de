"""Energy-conserving row scales s ∈ R^n (JORA.md §5).

``ν`` are the output-row norms of the frozen weight and ``E = Σ ν_i²``. Rows with ``ν_i <= eps`` are
excluded (scale fixed at 1). Both scales conserve the energy exactly, ``Σ (s_i ν_i)² = E``, and are the
identity at zero logits for any temperature. Temperatures may be Python floats or 0-d tensors (buffers).
"""

from __future__ import annotations

import torch

__all__ = [
    "MAGNITUDE_KINDS",
    "compute_ecd_scale",
    "compute_oer_scale_softmax",
    "compute_scale",
    "linear_temperature_anneal",
    "logits_grad_from_weighted",
    "scale_vjp",
]


def _check_temperature(temperature: float | torch.Tensor, name: str = "temperature") -> None:
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"{name} must be > 0, got {temperature}")


def _check_norms(base_row_norms: torch.Tensor, logits: torch.Tensor, logits_name: str) -> None:
    if not base_row_norms.is_floating_point():
        raise TypeError(f"base_row_norms must be floating point, got {base_row_norms.dtype}")
    if logits.shape != base_row_norms.shape or base_row_norms.dim() != 1:
        raise ValueError(
            f"{logits_name} {tuple(logits.shape)} and base_row_norms {tuple(base_row_norms.shape)} "
            "must be 1-D of the same length"
        )


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _included_energy(
    nu: torch.Tensor, total_energy: float | torch.Tensor, included: torch.Tensor
) -> torch.Tensor:
    excluded_energy = torch.where(included, 0.0, nu * nu).sum()
    return torch.as_tensor(total_energy, dtype=nu.dtype, device=nu.device) - excluded_energy


def compute_oer_scale_softmax(
    base_row_norms: torch.Tensor,
    total_energy: float | torch.Tensor,
    oer_logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """OER: ``p = softmax(log ν² + w/T)`` over included rows, ``s_i = sqrt(E·p_i)/ν_i`` (at least fp32).

    Rows compete for the fixed total energy; ``w = 0`` gives ``s ≡ 1`` for any ``T``.
    """
    _check_norms(base_row_norms, oer_logits, "oer_logits")
    _check_temperature(temperature)
    nu = _at_least_fp32(base_row_norms)
    included = nu > eps
    energy = _included_energy(nu, total_energy, included)
    # log s_i = w_i/(2T) − ½·logsumexp_j(log p0_j + w_j/T) with the prior p0 = ν²/E: the same as
    # sqrt(E·p_i)/ν_i, exactly 1 at w = 0 up to one rounding, and stable for tiny ν.
    scaled = _at_least_fp32(oer_logits) / temperature
    log_prior = torch.where(
        included, 2.0 * torch.where(included, nu, 1.0).log() - energy.log(), float("-inf")
    )
    log_scale = 0.5 * (scaled - torch.logsumexp(log_prior + scaled, dim=0))
    return torch.where(included, log_scale.exp(), 1.0)


def compute_ecd_scale(
    base_row_norms: torch.Tensor,
    total_energy: float | torch.Tensor,
    ecd_log_mag: torch.Tensor,
    ecd_alpha: float = 0.5,
    temperature: float | torch.Tensor = 1.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """ECD: ``g_i = 1 + α·tanh(w_i/T)``, ``s_i = g_i·sqrt(E / Σ_j (ν_j g_j)²)`` (at least fp32), α ∈ [0, 1)."""
    _check_norms(base_row_norms, ecd_log_mag, "ecd_log_mag")
    _check_temperature(temperature)
    if not 0.0 <= ecd_alpha < 1.0:
        raise ValueError(f"ecd_alpha must be in [0, 1), got {ecd_alpha}")
    nu = _at_least_fp32(base_row_norms)
    included = nu > eps
    gain = torch.where(included, 1.0 + ecd_alpha * torch.tanh(_at_least_fp32(ecd_log_mag) / temperature), 0.0)
    energy = _included_energy(nu, total_energy, included)
    norm = torch.sqrt(energy / ((nu * gain) ** 2).sum())
    return torch.where(included, gain * norm, 1.0)


def linear_temperature_anneal(step: int, total_steps: int | None, start: float, end: float) -> float:
    """Temperature moving linearly from ``start`` (step 0) to ``end`` (``total_steps`` and after).

    Without a positive ``total_steps`` the temperature stays at ``start``.
    """
    _check_temperature(start, "start temperature")
    _check_temperature(end, "end temperature")
    if not total_steps or total_steps <= 0:
        return float(start)
    frac = min(1.0, max(0, step) / total_steps)
    return float(start + (end - start) * frac)


MAGNITUDE_KINDS: tuple[str, ...] = ("oer_softmax", "ecd_tanh")


def compute_scale(
    kind: str,
    base_row_norms: torch.Tensor,
    total_energy: float | torch.Tensor,
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    eps: float,
    ecd_alpha: float = 0.5,
) -> torch.Tensor:
    """``s`` for ``kind`` in :data:`MAGNITUDE_KINDS` (``"oer_softmax"`` or ``"ecd_tanh"``)."""
    if kind == "oer_softmax":
        return compute_oer_scale_softmax(base_row_norms, total_energy, logits, temperature, eps)
    if kind == "ecd_tanh":
        return compute_ecd_scale(base_row_norms, total_energy, logits, ecd_alpha, temperature, eps)
    raise ValueError(f"magnitude must be one of {MAGNITUDE_KINDS}, got {kind!r}")


def scale_vjp(
    kind: str,
    scale: torch.Tensor,
    grad_scale: torch.Tensor,
    base_row_norms: torch.Tensor,
    total_energy: float | torch.Tensor,
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    eps: float,
    ecd_alpha: float = 0.5,
) -> torch.Tensor:
    """``∂L/∂logits`` from ``∂L/∂s`` in closed form (no autograd graph), for :func:`compute_scale`.

    OER: ``log s_i = w_i/(2T) − ½·logsumexp(log p0 + w/T)`` and ``p_j = s_j² ν_j² / E``, so
    ``∂L/∂w_j = (a_j − p_j Σ_i a_i) / (2T)`` with ``a = (∂L/∂s) ⊙ s``.
    ECD: ``s = g·κ`` with ``g = 1 + α tanh(w/T)``, ``κ = sqrt(E / Σ (ν g)²)``, so
    ``∂L/∂w_j = g'_j κ (∂L/∂s_j − ν_j² g_j Σ_i (∂L/∂s_i) g_i / Σ (ν g)²)
    = g'_j (a_j / g_j − ν_j² g_j Σ_i a_i / Σ (ν g)²)``.
    Rows with ``ν ≤ eps`` get zero gradient (their scale is fixed at 1).
    """
    weighted = _at_least_fp32(grad_scale) * _at_least_fp32(scale)
    return logits_grad_from_weighted(
        kind, scale, weighted, base_row_norms, total_energy, logits, temperature, eps, ecd_alpha
    )


def logits_grad_from_weighted(
    kind: str,
    scale: torch.Tensor,
    weighted: torch.Tensor,
    base_row_norms: torch.Tensor,
    total_energy: float | torch.Tensor,
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    eps: float,
    ecd_alpha: float = 0.5,
) -> torch.Tensor:
    """:func:`scale_vjp` from ``weighted = s ⊙ ∂L/∂s`` (the ``a`` of its formulas), which never divides by ``s``.

    A fused layer gets ``weighted`` straight from its output, ``Σ_t g ⊙ (y − b)``: a row whose OER scale
    underflowed to 0 then gives a zero share, where ``∂L/∂s`` itself (that sum over ``s``) would be ``0/0``.
    """
    nu = _at_least_fp32(base_row_norms)
    included = nu > eps
    a = torch.where(included, _at_least_fp32(weighted), 0.0)
    if kind == "oer_softmax":
        s = _at_least_fp32(scale)
        p = torch.where(included, s * s * nu * nu / _included_energy(nu, total_energy, included), 0.0)
        result = (a - p * a.sum()) / (2.0 * temperature)
    else:
        t = torch.tanh(_at_least_fp32(logits) / temperature)
        gain = 1.0 + ecd_alpha * t  # ≥ 1 − α > 0: a / gain is safe
        norm_sq = (torch.where(included, nu * gain, 0.0) ** 2).sum()
        d_gain = ecd_alpha * (1.0 - t * t) / temperature
        result = d_gain * (a / gain - nu * nu * gain * a.sum() / norm_sq)
    return torch.where(included, result, 0.0).to(logits.dtype)
