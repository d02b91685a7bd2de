"""Independent float64 dense references for the JORA math (JORA.md §1–§5, §8).

Everything here is built from dense matrices with plain loops and textbook formulas (``cos(2·atan(θ/2))``,
``softmax``), deliberately sharing no code with the packages under test.
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def effective_angle(theta: float, rotation_param: str) -> float:
    return 2.0 * math.atan(theta / 2.0) if rotation_param == "cayley" else theta


def dense_rotation(
    pairs: torch.Tensor, thetas: torch.Tensor, dim: int, rotation_param: str = "cayley"
) -> torch.Tensor:
    """R with ``(R v)_i = cos φ v_i + sin φ v_j``, ``(R v)_j = −sin φ v_i + cos φ v_j``; -1 rows skipped."""
    matrix = torch.eye(dim, dtype=F64)
    for (i, j), theta in zip(pairs.tolist(), thetas.detach().double().tolist(), strict=True):
        if i < 0:
            continue
        phi = effective_angle(theta, rotation_param)
        block = torch.eye(dim, dtype=F64)
        block[i, i] = math.cos(phi)
        block[i, j] = math.sin(phi)
        block[j, i] = -math.sin(phi)
        block[j, j] = math.cos(phi)
        matrix = block @ matrix
    return matrix


def dense_core(
    kind: str, params: tuple[torch.Tensor, ...], n: int, m: int, block_size: int = 4, scale: float = 1.0
) -> torch.Tensor:
    """The dense n×m core from its parameters, element by element."""
    d = min(n, m)
    core = torch.zeros(n, m, dtype=F64)
    if kind == "diag":
        (c,) = params
        for i in range(d):
            core[i, i] = float(c[i])
    elif kind == "block":
        blocks, tail = params
        for k in range(blocks.shape[0]):
            for a in range(block_size):
                for b in range(block_size):
                    core[k * block_size + a, k * block_size + b] = float(blocks[k, a, b])
        start = blocks.shape[0] * block_size
        for t in range(tail.shape[0]):
            core[start + t, start + t] = float(tail[t])
    else:
        a_factor, b_factor = params
        core = scale * a_factor.detach().double() @ b_factor.detach().double().T
    return core


def oer_scale(nu: torch.Tensor, w: torch.Tensor, temperature: float, eps: float) -> torch.Tensor:
    """``s_i = sqrt(E_inc · softmax(log ν² + w/T)_i) / ν_i`` on rows with ν > eps, 1 elsewhere."""
    nu, w = nu.double(), w.double()
    inc = nu > eps
    s = torch.ones_like(nu)
    energy = float((nu[inc] ** 2).sum())
    p = torch.softmax(torch.log(nu[inc] ** 2) + w[inc] / temperature, dim=0)
    s[inc] = torch.sqrt(energy * p) / nu[inc]
    return s


def ecd_scale(
    nu: torch.Tensor, w: torch.Tensor, alpha: float, temperature: float, eps: float
) -> torch.Tensor:
    """``s_i = g_i·sqrt(E_inc / Σ (ν g)²)``, ``g = 1 + α tanh(w/T)``, on rows with ν > eps, 1 elsewhere."""
    nu, w = nu.double(), w.double()
    inc = nu > eps
    s = torch.ones_like(nu)
    g = 1 + alpha * torch.tanh(w[inc] / temperature)
    s[inc] = g * torch.sqrt((nu[inc] ** 2).sum() / ((nu[inc] * g) ** 2).sum())  # differentiable in w
    return s


def adapted_weight(
    weight_nm: torch.Tensor,
    core: torch.Tensor,
    core_offset: torch.Tensor | None,
    rot_L: torch.Tensor,
    rot_R: torch.Tensor,
    scale: torch.Tensor | None,
) -> torch.Tensor:
    """``diag(s)(W + R_Lᵀ C R_R − C₀)`` as a dense float64 ``[n, m]`` matrix."""
    delta = rot_L.T @ core @ rot_R
    if core_offset is not None:
        delta = delta - core_offset
    merged = weight_nm.double() + delta
    return merged if scale is None else scale.double()[:, None] * merged


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``‖actual − expected‖ / ‖expected‖`` in float64 (NaN never passes)."""
    a, e = actual.detach().double(), expected.detach().double()
    num = float(torch.linalg.vector_norm(a - e))
    den = float(torch.linalg.vector_norm(e))
    return num / den if den > 0 else num


def adapter_dense_weight(adapter, weight: torch.Tensor) -> torch.Tensor:
    """``diag(s)(W + ΔW)`` ``[n, m]`` in float64 from a ``JoraAdapter``'s state (read-only, independent math).

    ``weight`` is the base weight in the adapter's layout.
    """
    s = adapter.settings
    n, m = adapter.out_features, adapter.in_features
    weight_nm = weight if adapter.layout == "linear" else weight.T
    pairs_L = adapter.pairs_L[adapter.pairs_L[:, 0] >= 0]
    pairs_R = adapter.pairs_R[adapter.pairs_R[:, 0] >= 0]
    theta_L = adapter.theta_L[: pairs_L.shape[0]]
    theta_R = adapter.theta_R[: pairs_R.shape[0]]
    spec = adapter.core.spec
    params = tuple(p.detach() for p in adapter.core.params())
    core = dense_core(spec.kind, params, n, m, spec.block_size, spec.scale)
    offset_params = adapter.core.offset()
    offset = (
        dense_core(spec.kind, offset_params, n, m, spec.block_size, spec.scale) if offset_params else None
    )
    nu = weight_nm.double().norm(dim=1)
    temperature = float(adapter.temperature)
    if s.magnitude == "oer_softmax":
        scale = oer_scale(nu, adapter.mag_logits.detach(), temperature, s.eps)
    elif s.magnitude == "ecd_tanh":
        scale = ecd_scale(nu, adapter.mag_logits.detach(), s.ecd_alpha, temperature, s.eps)
    else:
        scale = None
    return adapted_weight(
        weight_nm,
        core,
        offset,
        dense_rotation(pairs_L, theta_L, n, s.rotation_param),
        dense_rotation(pairs_R, theta_R, m, s.rotation_param),
        scale,
    )
