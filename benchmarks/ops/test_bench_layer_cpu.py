"""CPU layer benchmark (PERFORMANCE.md): fwd+bwd of one adapted Linear, fp32, T = 2048, d = 1024.

Run with ``nox -s bench``; compare ratios within one run (``benchmarks/summarize.py`` prints them).
"""

from __future__ import annotations

import statistics
import time

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


PAIRED = ("lora_r16", "jora_diag_oer", "jora_diag")


def test_layer_fwd_bwd_cpu_paired(benchmark) -> None:
    """LoRA r16 and the JORA-diag rows in interleaved rounds of one process, after a warm-up on the frozen
    layer: per round the median of 15 steps of each, so drift and warm-up hit every method alike (separate
    tests, as above, move by ± 5 % between processes). The per-round ratios to LoRA go to ``extra_info``; the
    timed rows of this test are JORA-diag+OER's."""
    torch.manual_seed(0)
    steps = {}
    for method in ("frozen", *PAIRED):
        layer = build(method, DIM, DIM, dtype=torch.float32, device="cpu")
        steps[method] = step_fn(layer, torch.randn(TOKENS, DIM, requires_grad=True), torch.randn(TOKENS, DIM))
    for _ in range(20):
        steps["frozen"]()
    rounds: dict[str, list[float]] = {method: [] for method in PAIRED}
    for _ in range(6):
        for method in PAIRED:
            for _ in range(3):
                steps[method]()
            times = []
            for _ in range(15):
                start = time.perf_counter()
                steps[method]()
                times.append(time.perf_counter() - start)
            rounds[method].append(statistics.median(times))
    benchmark.group = f"cpu fp32 T={TOKENS} d={DIM} fwd+bwd, paired rounds"
    for method in PAIRED[1:]:
        ratios = [ms / lora for ms, lora in zip(rounds[method], rounds["lora_r16"], strict=True)]
        benchmark.extra_info[f"{method} x LoRA r16 per round"] = [round(r, 3) for r in ratios]
        benchmark.extra_info[f"{method} x LoRA r16 median"] = round(statistics.median(ratios), 3)
    benchmark.extra_info["median ms per round"] = {
        m: [round(t * 1e3, 2) for t in v] for m, v in rounds.items()
    }
    benchmark.pedantic(steps["jora_diag_oer"], rounds=15, iterations=1, warmup_rounds=3)
