"""The kernel timeline of one adapted layer's fwd+bwd on the GPU: every kernel's stream, start and duration
(device tool; torch profiler, CUDA activity).

python benchmarks/gpu_timeline.py --methods frozen,jora_diag_oer --shapes 8192x2048,8192x4096

Shows what overlaps what: the fold before the forward matmul, and the backward's ∂L/∂x matmul on its second
stream beside the token sums. Times in µs from the call's first kernel; the GPU is kept busy before the call
(``torch.cuda._sleep``), so launch gaps of a host-bound call do not show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from layers import build, step_fn


def timeline(method: str, tokens: int, dim: int) -> list[tuple[str, int, float, float]]:
    """``(kernel name, stream, start µs, duration µs)`` of one fwd+bwd, in start order."""
    layer = build(method, dim, dim, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(tokens, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(tokens, dim, device="cuda", dtype=torch.bfloat16)
    run = step_fn(layer, x, grad)
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        torch.cuda._sleep(20_000_000)  # the host queues the whole call while the GPU sleeps
        run()
        torch.cuda.synchronize()
    kernels = [
        event
        for event in prof.events()
        if event.device_type == torch.autograd.DeviceType.CUDA and "sleep" not in event.name
    ]
    kernels = [k for k in kernels if k.time_range.elapsed_us() > 0]
    kernels.sort(key=lambda k: k.time_range.start)
    origin = kernels[0].time_range.start
    return [
        (
            k.name[:60],
            getattr(k, "device_resource_id", -1),
            k.time_range.start - origin,
            k.time_range.elapsed_us(),
        )
        for k in kernels
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="frozen,jora_diag_oer")
    parser.add_argument("--shapes", default="8192x2048,8192x4096")
    args = parser.parse_args()
    for shape in args.shapes.split(","):
        tokens, dim = (int(v) for v in shape.split("x"))
        for method in args.methods.split(","):
            rows = timeline(method, tokens, dim)
            end = max(start + duration for _, _, start, duration in rows)
            print(f"\n{method} T={tokens} d={dim}: {end:.1f} µs first kernel start to last kernel end")
            for name, stream, start, duration in rows:
                print(f"  {start:8.1f} +{duration:7.1f}  stream {stream:>3}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
