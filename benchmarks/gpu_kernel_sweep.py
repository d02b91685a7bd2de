"""Block-shape sweep of the diag Triton kernels (device tool): device time of the fold and the token sums.

python benchmarks/gpu_kernel_sweep.py   (bf16, d=4096, OER magnitude, S=32 per side; T = 8192 and 32768)
"""

from __future__ import annotations

import sys

import torch

from jora_ops import CoreSpec, Magnitude, _diag_triton, jora_linear

FOLD = [(16, 256), (8, 512), (32, 128), (32, 256), (4, 1024)]
SUMS = [(128, 16), (64, 32), (256, 8), (128, 32), (64, 16)]


def kernel_times(T: int, d: int = 4096, slots: int = 32) -> dict[str, float]:
    dev = "cuda"
    x = torch.randn(T, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(d, d, device=dev) / d**0.5).to(torch.bfloat16)
    grad = torch.randn(T, d, device=dev, dtype=torch.bfloat16)
    leaves = [torch.randn(slots, device=dev, requires_grad=True) for _ in range(2)]
    diag = torch.randn(d, device=dev, requires_grad=True)
    logits = torch.randn(d, device=dev, requires_grad=True)
    nu = weight.float().norm(dim=1)
    pairs = [torch.randperm(d, device=dev)[: 2 * slots].view(slots, 2) for _ in range(2)]
    stats = [torch.zeros(d, device=dev) for _ in range(2)]

    def run() -> None:
        out = jora_linear(
            x, weight, core=CoreSpec("diag", d, d), core_params=(diag,), pairs_L=pairs[0], theta_L=leaves[0],
            pairs_R=pairs[1], theta_R=leaves[1], magnitude=Magnitude("oer_softmax", logits, nu, (nu**2).sum(), 1.0),
            stats_in=stats[0], stats_out=stats[1], impl="triton",
        )  # fmt: skip
        out.backward(grad)

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            run()
        torch.cuda.synchronize()
    times = {}
    for event in prof.key_averages():
        if event.key.startswith("_") and event.key.endswith("_kernel"):
            times[event.key] = event.device_time_total / event.count
    return times


def main() -> int:
    for T in (8192, 32768):
        for fold, sums in zip(FOLD, SUMS, strict=True):
            _diag_triton.FOLD_BLOCKS["linear"] = fold
            _diag_triton.TOKEN_SUM_BLOCKS = sums
            times = kernel_times(T)
            cells = "  ".join(f"{k.strip('_')} {v:7.1f} µs" for k, v in sorted(times.items()))
            print(f"T={T:6d} fold{fold} sums{sums}: {cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
