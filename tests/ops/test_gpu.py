"""GPU-only checks (marked ``gpu``: skipped, visibly, without CUDA): bf16 Triton path vs torch path."""

from __future__ import annotations

import pytest
import torch

from jora_ops import CoreSpec, jora_linear
from jora_reference import rel_error


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("tokens", "n", "m", "slots", "block_size"),
    [
        (8192, 2048, 3072, 256, 0),
        (4096, 4096, 1024, 512, 0),
        (8192, 2048, 3072, 256, 4),
        (4096, 1024, 4096, 512, 5),
    ],
)
def test_bf16_triton_matches_torch_on_cuda(tokens: int, n: int, m: int, slots: int, block_size: int) -> None:
    """Diag (``block_size=0``) and block cores: output and every gradient, bf16, large shapes."""
    torch.manual_seed(tokens + n)
    dev = "cuda"
    d = min(n, m)
    pairs_L = torch.randperm(n, device=dev)[: 2 * slots].view(slots, 2)
    pairs_R = torch.randperm(m, device=dev)[: 2 * slots].view(slots, 2)
    base = {
        "x": torch.randn(tokens, m, device=dev, dtype=torch.bfloat16),
        "theta_L": torch.randn(slots, device=dev),
        "theta_R": torch.randn(slots, device=dev),
        **(
            {"diag": torch.randn(d, device=dev) * 0.1}
            if not block_size
            else {
                "blocks": torch.randn(d // block_size, block_size, block_size, device=dev) * 0.1,
                "tail": torch.randn(d % block_size, device=dev) * 0.1,
            }
        ),
        "scale": torch.rand(n, device=dev) + 0.5,
    }
    weight = (torch.randn(n, m, device=dev) / m**0.5).to(torch.bfloat16)
    grad = torch.randn(tokens, n, device=dev, dtype=torch.bfloat16)
    spec = CoreSpec("block", n, m, block_size=block_size) if block_size else CoreSpec("diag", n, m)
    names = ("blocks", "tail") if block_size else ("diag",)

    def core_params(leaves: dict) -> tuple[torch.Tensor, ...]:
        return tuple(leaves[name] for name in names)

    results = {}
    for impl in ("torch", "triton"):
        leaves = {k: v.clone().requires_grad_() for k, v in base.items()}
        out = jora_linear(
            leaves["x"], weight, None, core=spec, core_params=core_params(leaves),
            pairs_L=pairs_L, theta_L=leaves["theta_L"], pairs_R=pairs_R, theta_R=leaves["theta_R"],
            scale=leaves["scale"], impl=impl,
        )  # fmt: skip
        out.backward(grad)
        results[impl] = [out.detach()] + [leaves[k].grad for k in base if leaves[k].numel()]
    for got, expected in zip(results["triton"], results["torch"], strict=True):
        assert rel_error(got, expected) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("tokens", "n", "m", "slots", "rank"), [(8192, 2048, 3072, 256, 16), (4096, 4096, 1024, 512, 8)]
)
def test_lowrank_bf16_paths_match_fp32_eager_on_cuda(
    monkeypatch: pytest.MonkeyPatch, tokens: int, n: int, m: int, slots: int, rank: int
) -> None:
    """Lowrank core, bf16 activations on the Triton path and on the torch path (its small work compiled),
    against fp32 activations on the torch path run eagerly (fp32 matmuls): output and every gradient, large
    shapes."""
    torch.manual_seed(tokens + n + rank)
    dev = "cuda"
    spec = CoreSpec("lowrank", n, m, rank=rank, alpha=2.0 * rank)
    pairs_L = torch.randperm(n, device=dev)[: 2 * slots].view(slots, 2)
    pairs_R = torch.randperm(m, device=dev)[: 2 * slots].view(slots, 2)
    offset = (torch.randn(n, rank, device=dev) * 0.1, torch.randn(m, rank, device=dev) * 0.1)
    base = {
        "x": torch.randn(tokens, m, device=dev),
        "theta_L": torch.randn(slots, device=dev),
        "theta_R": torch.randn(slots, device=dev),
        "A": torch.randn(n, rank, device=dev) * 0.1,
        "B": torch.randn(m, rank, device=dev) * 0.1,
        "scale": torch.rand(n, device=dev) + 0.5,
    }
    weight = torch.randn(n, m, device=dev) / m**0.5
    grad = torch.randn(tokens, n, device=dev)
    results = {}
    for name, dtype, impl, compile_flag in (
        ("fp32 eager", torch.float32, "torch", "0"),
        ("bf16 compiled", torch.bfloat16, "torch", "1"),
        ("bf16 triton", torch.bfloat16, "triton", "1"),
    ):
        monkeypatch.setenv("JORA_COMPILE", compile_flag)
        leaves = {k: (v.to(dtype) if k == "x" else v).clone().requires_grad_() for k, v in base.items()}
        out = jora_linear(
            leaves["x"], weight.to(dtype), None, core=spec, core_params=(leaves["A"], leaves["B"]),
            core_offset=offset, pairs_L=pairs_L, theta_L=leaves["theta_L"], pairs_R=pairs_R,
            theta_R=leaves["theta_R"], scale=leaves["scale"], impl=impl,
        )  # fmt: skip
        out.backward(grad.to(dtype))
        results[name] = {"out": out.detach()} | {k: leaves[k].grad for k in base}
    for name in ("bf16 compiled", "bf16 triton"):
        for key, expected in results["fp32 eager"].items():
            assert rel_error(results[name][key], expected) < 1e-2, (name, key)
