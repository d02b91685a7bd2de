"""Launch-shape sweep of the sparse-core Triton kernels (device tool): device time of each kernel.

python benchmarks/gpu_kernel_sweep.py   (bf16, d=4096, OER magnitude, S=32 per side; diag and block b=4;
T = 8192 and 32768)

Each row sets the fold's block shape and warps, and the token sums' block shapes (b = 1 and b > 1), then reads the per-kernel device time from the profiler (10 fwd+bwd).
"""

from __future__ import annotations

import sys

import torch

from jora_ops import CoreSpec, Magnitude, _sparse_core_triton, jora_linear

# (fold rows, fold cols, fold warps, token sums (coordinates, tokens): b = 1, b = 4)
VARIANTS = [
    (16, 256, 4, (128, 16), (128, 16)),  # the defaults
    (8, 256, 4, (128, 16), (128, 8)),
    (16, 256, 4, (256, 8), (64, 8)),
    (32, 256, 8, (256, 8), (256, 4)),
]


def kernel_times(T: int, core: str, d: int = 4096, slots: int = 32) -> dict[str, float]:
    dev = "cuda"
    x = torch.randn(T, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(d, d, device=dev) / d**0.5).to(torch.bfloat16)
    grad = torch.randn(T, d, device=dev, dtype=torch.bfloat16)
    leaves = [torch.randn(slots, device=dev, requires_grad=True) for _ in range(2)]
    spec = CoreSpec(core, d, d, block_size=4)
    if core == "diag":
        params = (torch.randn(d, device=dev, requires_grad=True),)
    else:
        params = (torch.randn(d // 4, 4, 4, device=dev, requires_grad=True), torch.zeros(0, device=dev))
    logits = torch.randn(d, device=dev, requires_grad=True)
    nu = weight.float().norm(dim=1)
    pairs = [torch.randperm(d, device=dev)[: 2 * slots].view(slots, 2) for _ in range(2)]
    stats = [torch.zeros(d, device=dev) for _ in range(2)]

    def run() -> None:
        out = jora_linear(
            x, weight, core=spec, core_params=params, pairs_L=pairs[0], theta_L=leaves[0],
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
    kernels = _sparse_core_triton
    for core in ("diag", "block"):
        for T in (8192, 32768):
            for rows, cols, warps, sums, block_sums in VARIANTS:
                kernels.FOLD_BLOCKS["linear"] = (rows, cols)
                kernels.FOLD_WARPS = warps
                kernels.TOKEN_SUM_BLOCKS = sums
                kernels.BLOCK_TOKEN_SUM_BLOCKS = block_sums
                times = kernel_times(T, core)
                cells = "  ".join(f"{k.strip('_')} {v:7.1f} µs" for k, v in sorted(times.items()))
                print(
                    f"{core:5s} T={T:6d} fold({rows}, {cols}, warps={warps}) "
                    f"sums{sums if core == 'diag' else block_sums}: {cells}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
