"""Determinism check of the sparse-core backward (device tool): the same backward, many times.

The per-coordinate kernel accumulates each angle gradient from two atomic adds on a zero (one per coordinate
of the slot), and every program sums the same per-block totals for the logits' gradient. Both must give
bitwise-equal gradients across identical runs (``0 + a + b`` is the same in either order); everything else
in the backward is deterministic (fixed splits, no other atomics). Checked for the diag core with OER and
angles, the block core (b = 4) with ECD, Cayley angles and a bias, and the lowrank core (r = 16, its factor
kernel adds the angle shares the same way) with OER; errors vs the torch path too. The input's gradient is
among them: its matmul runs on a second stream beside the token sums (a missing join would show here).
python benchmarks/gpu_determinism_check.py
"""

from __future__ import annotations

import sys

import torch

from jora_ops import CoreSpec, Magnitude, jora_linear


def check(core: str, magnitude: str, rotation_param: str, with_bias: bool, runs: int = 100) -> bool:
    torch.manual_seed(0)
    dev, d, T, S, b = "cuda", 4096, 8192, 32, 4
    x = torch.randn(T, d, device=dev, requires_grad=True)  # ∂L/∂x: its matmul runs beside the token sums
    weight = torch.randn(d, d, device=dev) / d**0.5
    grad = torch.randn(T, d, device=dev)
    spec = CoreSpec(core, d, d, block_size=b, rank=16, alpha=32.0)
    if core == "diag":
        core_params = (torch.randn(d, device=dev, requires_grad=True),)
    elif core == "lowrank":
        core_params = tuple(torch.randn(d, 16, device=dev, requires_grad=True) * 0.1 for _ in range(2))
        core_params = tuple(p.detach().requires_grad_() for p in core_params)
    else:
        core_params = (torch.randn(d // b, b, b, device=dev, requires_grad=True), torch.zeros(0, device=dev))
    logits = torch.randn(d, device=dev, requires_grad=True)
    bias = torch.randn(d, device=dev, requires_grad=True) if with_bias else None
    theta = [torch.randn(S, device=dev, requires_grad=True) for _ in range(2)]
    pairs = [torch.randperm(d, device=dev)[: 2 * S].view(S, 2) for _ in range(2)]
    nu = weight.norm(dim=1)
    leaves = (
        [p for p in core_params if p.requires_grad]
        + [logits, *theta]
        + ([bias] if bias is not None else [])
        + [x]
    )

    def grads(impl: str) -> list[torch.Tensor]:
        out = jora_linear(
            x, weight, bias, core=spec, core_params=core_params, pairs_L=pairs[0], theta_L=theta[0],
            pairs_R=pairs[1], theta_R=theta[1], magnitude=Magnitude(magnitude, logits, nu, (nu**2).sum(), 0.7),
            rotation_param=rotation_param, impl=impl,
        )  # fmt: skip
        return [g.clone() for g in torch.autograd.grad(out, leaves, grad)]

    first = grads("triton")
    mismatches = sum(
        not all(torch.equal(a, b) for a, b in zip(grads("triton"), first, strict=True)) for _ in range(runs)
    )
    reference = grads("torch")
    errors = [
        float((a.double() - b.double()).norm() / b.double().norm())
        for a, b in zip(first, reference, strict=True)
    ]
    ok = mismatches == 0 and max(errors) < 1e-4  # a race reads unwritten memory: far larger errors
    print(
        f"{core} {magnitude} {rotation_param} bias={with_bias}: runs differing from the first (of {runs}):"
        f" {mismatches}; rel. error vs torch (core, logits, theta_L, theta_R[, bias], x): "
        + ", ".join(f"{e:.2e}" for e in errors)
        + ("  ok" if ok else "  FAILED")
    )
    return ok


def main() -> int:
    results = [
        check("diag", "oer_softmax", "angle", False),
        check("block", "ecd_tanh", "cayley", True),
        check("lowrank", "oer_softmax", "cayley", False),
    ]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
