"""CPU layer benchmark (PERFORMANCE.md): fwd+bwd of one adapted Linear, fp32, T = 2048, d = 1024.

Run with ``nox -s bench``; compare ratios within one run (``benchmarks/summarize.py`` prints them).
"""

from __future__ import annotations

import pytest
import torch

from layers import build, step_fn, trainable

TOKENS, DIM = 2048, 1024
METHODS = [
    "frozen",
    "lora_r16",
    "jora_diag_oer",
    "jora_diag",
    "jora_block_oer",
    "jora_lowrank_oer",
    "torch_jora_diag_oer",
]


@pytest.mark.parametrize("method", METHODS)
def test_layer_fwd_bwd_cpu(benchmark, method: str) -> None:
    torch.manual_seed(0)
    layer = build(method, DIM, DIM, dtype=torch.float32, device="cpu")
    x = torch.randn(TOKENS, DIM, requires_grad=True)
    grad = torch.randn(TOKENS, DIM)
    benchmark.group = f"cpu fp32 T={TOKENS} d={DIM} fwd+bwd"
    benchmark.extra_info["trainable"] = trainable(layer)
    benchmark.pedantic(step_fn(layer, x, grad), rounds=15, iterations=1, warmup_rounds=3)
    assert x.grad is None  # step_fn clears gradients after each round
