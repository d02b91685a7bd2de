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


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize(("core", "block_size"), [("diag", 1), ("block", 4), ("lowrank", 8)])
def test_a_layer_on_the_second_gpu_runs_there_while_the_first_is_current(core: str, block_size: int) -> None:
    """A model spread over GPUs in one process (``device_map="auto"``) calls a layer on ``cuda:1`` while
    ``cuda:0`` is current, and Triton launches on the current device: the launches must take their tensors'
    device (else they run on ``cuda:0``'s stream, unordered with the layer's cuBLAS work on ``cuda:1``;
    ``cuda:0`` is kept busy here so that such a launch would run late). Output and every gradient of the fused
    linear (magnitude, bias, both sides; forward under ``cuda:0``, backward on autograd's ``cuda:1`` thread)
    and of ``apply_rotations`` equal, bit for bit, the same calls made with ``cuda:1`` current."""
    from jora_ops import Magnitude, apply_rotations

    gen = torch.Generator().manual_seed(11)
    tokens, n, m, slots = 512, 384, 256, 32
    spec = CoreSpec(core, n, m, block_size=block_size, rank=block_size, alpha=2.0)
    d = min(n, m)
    shapes = {"diag": [(d,)], "block": [(d // block_size, block_size, block_size), (0,)]}
    shapes["lowrank"] = [(n, block_size), (m, block_size)]
    leaves = {
        "x": torch.randn(tokens, m, generator=gen),
        "bias": torch.randn(n, generator=gen),
        "theta_L": torch.randn(slots, generator=gen),
        "theta_R": torch.randn(slots, generator=gen),
        "logits": torch.randn(n, generator=gen) * 0.3,
        **{f"core{i}": torch.randn(*shape, generator=gen) for i, shape in enumerate(shapes[core])},
    }
    weight = torch.randn(n, m, generator=gen) / m**0.5
    pairs_L = torch.randperm(n, generator=gen)[: 2 * slots].view(slots, 2)
    pairs_R = torch.randperm(m, generator=gen)[: 2 * slots].view(slots, 2)
    grad = torch.randn(tokens, n, generator=gen)

    def run() -> list[torch.Tensor]:
        device = "cuda:1"
        t = {
            k: v.to(device, torch.bfloat16 if k == "x" else torch.float32).requires_grad_()
            for k, v in leaves.items()
        }
        nu = weight.norm(dim=1).to(device)
        out = jora_linear(
            t["x"], weight.to(device, torch.bfloat16), t["bias"], core=spec,
            core_params=tuple(t[f"core{i}"] for i in range(len(shapes[core]))), pairs_L=pairs_L.to(device),
            theta_L=t["theta_L"], pairs_R=pairs_R.to(device), theta_R=t["theta_R"],
            magnitude=Magnitude("oer_softmax", t["logits"], nu, (nu**2).sum(), 1.0), impl="triton",
        )  # fmt: skip
        out.backward(grad.to(device, torch.bfloat16))
        theta = t["theta_R"].detach().clone().requires_grad_()
        rotated = apply_rotations(t["x"].detach().float(), pairs_R.to(device), theta, impl="triton")
        rotated.backward(torch.ones_like(rotated))
        return [out, rotated, theta.grad, *(v.grad for v in t.values())]

    with torch.cuda.device(1):
        expected = run()
    torch.cuda.synchronize(1)
    assert torch.cuda.current_device() == 0
    torch.cuda._sleep(2_000_000_000)  # ≈ 1 s on cuda:0's stream: a kernel launched there would run late,
    got = run()  # unordered with cuda:1's work (with peer access its results could otherwise still match)
    torch.cuda.synchronize(1)
    torch.cuda.synchronize(0)
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.device == torch.device("cuda:1") and torch.equal(a, b), index
