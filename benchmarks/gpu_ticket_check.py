"""Race check of the per-coordinate kernel's ticket (device tool): the same backward, many times.

The last program of ``_coordinate_grads_kernel`` reads what every other program wrote (the scale and table
gradients) after an atomic ticket. A missing ordering would show as gradients that change between identical
runs; everything else in the backward is deterministic (fixed splits, no atomics in the sums), so the
logits' and angles' gradients must be bitwise equal across runs and match the torch path.
python benchmarks/gpu_ticket_check.py
"""

from __future__ import annotations

import sys

import torch

from jora_ops import CoreSpec, Magnitude, jora_linear


def main() -> int:
    torch.manual_seed(0)
    dev, d, T, S = "cuda", 4096, 8192, 32
    x = torch.randn(T, d, device=dev)
    weight = torch.randn(d, d, device=dev) / d**0.5
    grad = torch.randn(T, d, device=dev)
    spec = CoreSpec("diag", d, d)
    diag = torch.randn(d, device=dev, requires_grad=True)
    logits = torch.randn(d, device=dev, requires_grad=True)
    theta = [torch.randn(S, device=dev, requires_grad=True) for _ in range(2)]
    pairs = [torch.randperm(d, device=dev)[: 2 * S].view(S, 2) for _ in range(2)]
    nu = weight.norm(dim=1)
    leaves = [diag, logits, *theta]

    def grads(impl: str) -> list[torch.Tensor]:
        out = jora_linear(
            x, weight, core=spec, core_params=(diag,), pairs_L=pairs[0], theta_L=theta[0], pairs_R=pairs[1],
            theta_R=theta[1], magnitude=Magnitude("oer_softmax", logits, nu, (nu**2).sum(), 0.7), impl=impl,
        )  # fmt: skip
        return [g.clone() for g in torch.autograd.grad(out, leaves, grad)]

    first = grads("triton")
    mismatches = sum(
        not all(torch.equal(a, b) for a, b in zip(grads("triton"), first, strict=True)) for _ in range(200)
    )
    reference = grads("torch")
    errors = [
        float((a.double() - b.double()).norm() / b.double().norm())
        for a, b in zip(first, reference, strict=True)
    ]
    print(f"runs differing from the first (of 200): {mismatches}")
    print("rel. error vs torch (diag, logits, theta_L, theta_R): " + ", ".join(f"{e:.2e}" for e in errors))
    ok = mismatches == 0 and max(errors) < 1e-4  # a race reads unwritten memory: far larger errors
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
