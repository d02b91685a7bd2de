"""Where the host time of one adapted layer goes (device tool): launches, the fused function, the adapter, PEFT.

python benchmarks/gpu_host.py   (T=16, d=4096, bf16: GPU work is negligible, wall time is host time)
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).parent))
from layers import build, step_fn


@triton.jit
def _twenty_args_kernel(a0, p1, a2, p3, a4, p5, a6, p7, a8, p9, a10, p11, a12, p13, a14, p15, a16, p17, a18, p19):  # fmt: skip
    """Launch-cost probe: ten pointers and ten ints, like the sparse-core kernels' argument lists."""
    tl.store(p1 + tl.arange(0, 16), tl.load(p3 + tl.arange(0, 16)) + a0)


def per_call_us(fn: Callable[[], object], calls: int = 200) -> float:
    """Median over 5 batches of ``calls`` calls of the wall time per call (µs), synchronised per batch."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return sorted(samples)[2]


def main() -> int:
    dev, d, T = "cuda", 4096, 16
    x = torch.randn(T, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(T, d, device=dev, dtype=torch.bfloat16)
    w = torch.randn(d, d, device=dev, dtype=torch.bfloat16)
    rows = {}
    rows["torch.empty(4096)"] = per_call_us(lambda: torch.empty(d, device=dev))
    buf = torch.empty(d, device=dev)
    rows["tensor.fill_"] = per_call_us(lambda: buf.fill_(1.0))

    def frozen() -> None:
        torch.nn.functional.linear(x, w).backward(grad)

    rows["F.linear fwd+bwd (x grad)"] = per_call_us(frozen)
    args = [torch.empty(16, device=dev) if i % 2 else 16 for i in range(20)]

    def launch() -> None:
        _twenty_args_kernel[(1,)](*args)

    rows["one Triton launch (20 args)"] = per_call_us(launch)
    for method in ("frozen", "lora_r16", "jora_diag_oer", "jora_diag"):
        layer = build(method, d, d, dtype=torch.bfloat16, device=dev)
        rows[f"PEFT layer {method}"] = per_call_us(step_fn(layer, x, grad))
        if method == "jora_diag_oer":
            adapter = layer.base_model.model[0].jora_adapters["default"]
            weight = layer.base_model.model[0].base_layer.weight

            rows["JoraAdapter fwd+bwd"] = per_call_us(lambda a=adapter, w=weight: a(x, w).backward(grad))
            profile = cProfile.Profile()
            run = step_fn(layer, x, grad)
            profile.enable()
            for _ in range(200):
                run()
            torch.cuda.synchronize()
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(40)
            pstats.Stats(profile).sort_stats("cumulative").print_stats(60)
    for name, us in rows.items():
        print(f"{name:40s} {us:8.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
