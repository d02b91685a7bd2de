"""How far a Triton matmul of our own is from cuBLAS at the backward's ``∂L/∂x`` shapes (device tool).

    python benchmarks/gpu_gemm_gap.py [--shapes 8192x2048,8192x4096]

The token sums of the sparse-core backward cost SM time beside cuBLAS's ``∂L/∂x = g · W'`` (the kernel
timeline: they hold the SMs 29 µs at d = 2048 before the matmul's tiles enter). Hiding them inside the matmul
(PERFORMANCE.md's prologue/epilogue floor, ≈ 1.04 ×) needs a matmul of our own; this measures whether one can
be as fast as cuBLAS here: ``g [T, d] @ W' [d, d]`` in bf16 (fp32 accumulation), torch.mm against Triton
tiles (grouped launch order, pipelined pointer loads: wgmma on sm_90), plain and with the token sums
``Σ_t g⊙y``, ``Σ_t g⊙x`` of its tile's columns in the epilogue (each program its own block of columns, per
block of tokens: no atomics). Median of ``triton.testing.do_bench``; the outputs are checked against torch.
"""

from __future__ import annotations

import argparse
import functools
import sys

import torch
import triton
import triton.language as tl


@triton.jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr, y_ptr, x_ptr, partial_ptr, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SUMS: tl.constexpr, SUM_COLS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % size_m
    pid_n = (pid % (GROUP_M * num_n)) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * K + rk[None, :]
    b_ptrs = b_ptr + rk[:, None] * N + rn[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for _ in range(0, tl.cdiv(K, BLOCK_K)):
        acc = tl.dot(tl.load(a_ptrs), tl.load(b_ptrs), acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * N
    tl.store(c_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], acc.to(c_ptr.dtype.element_ty))
    if SUMS:  # square problems: g's columns of this tile are N's columns; rows of partial: token blocks
        for start in tl.static_range(0, BLOCK_N, SUM_COLS):
            cols = pid_n * BLOCK_N + start + tl.arange(0, SUM_COLS)
            offsets = rm[:, None].to(tl.int64) * K + cols[None, :]
            g = tl.load(a_ptr + offsets).to(tl.float32)
            y = tl.load(y_ptr + offsets).to(tl.float32)
            x = tl.load(x_ptr + offsets).to(tl.float32)
            tl.store(partial_ptr + pid_m * 2 * K + cols, tl.sum(g * y, 0))
            tl.store(partial_ptr + pid_m * 2 * K + K + cols, tl.sum(g * x, 0))


CONFIGS = [  # BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, stages, warps
    (128, 256, 64, 8, 3, 8),
    (128, 256, 64, 8, 4, 8),
    (128, 128, 64, 8, 4, 8),
    (128, 128, 64, 8, 5, 4),
    (256, 128, 64, 8, 3, 8),
    (128, 256, 32, 8, 5, 8),
    (128, 128, 128, 8, 3, 8),
]


def time_config(
    g: torch.Tensor, w: torch.Tensor, y: torch.Tensor, x: torch.Tensor, config: tuple[int, ...], sums: bool
) -> tuple[float, float]:
    """``(ms, relative error)`` of one tile config, plain or with the epilogue's token sums."""
    block_m, block_n, block_k, group_m, stages, warps = config
    tokens, dim = g.shape
    out = torch.empty_like(g)
    partial = torch.empty(tokens // block_m, 2 * dim, device="cuda", dtype=torch.float32)
    grid = (triton.cdiv(tokens, block_m) * triton.cdiv(dim, block_n),)
    launch = functools.partial(
        _matmul_kernel[grid], g, w, out, y, x, partial, tokens, dim, dim, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, GROUP_M=group_m, SUMS=sums, SUM_COLS=64, num_stages=stages, num_warps=warps,
    )  # fmt: skip
    launch()
    torch.cuda.synchronize()
    ref = g.float() @ w.float()
    error = ((out.float() - ref).norm() / ref.norm()).item()
    if sums:
        for column, other in ((0, y), (dim, x)):
            want = (g.float() * other.float()).sum(0)
            error = max(
                error, ((partial[:, column : column + dim].sum(0) - want).norm() / want.norm()).item()
            )
    return triton.testing.do_bench(launch, warmup=50, rep=300, return_mode="median"), error


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="8192x2048,8192x4096")
    args = parser.parse_args()
    for shape in args.shapes.split(","):
        tokens, dim = (int(v) for v in shape.split("x"))
        g = torch.randn(tokens, dim, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(dim, dim, device="cuda", dtype=torch.bfloat16) / dim**0.5
        y, x = torch.randn_like(g), torch.randn_like(g)
        cublas = triton.testing.do_bench(
            functools.partial(torch.mm, g, w), warmup=50, rep=300, return_mode="median"
        )
        print(f"\nT={tokens} d={dim}: cuBLAS {cublas * 1e3:.1f} µs", flush=True)
        for config in CONFIGS:
            row = []
            for sums in (False, True):
                label = "sums" if sums else "plain"
                try:
                    ms, error = time_config(g, w, y, x, config, sums)
                    row.append(f"{label} {ms * 1e3:6.1f} µs ({ms / cublas:.3f} x, err {error:.1e})")
                except Exception as err:  # noqa: BLE001  (a config that does not compile is reported, the others run)
                    row.append(f"{label} failed: {type(err).__name__}: {str(err)[:80]}")
            print(
                "  "
                + "x".join(map(str, config[:3]))
                + f" g{config[3]} s{config[4]} w{config[5]}: "
                + "; ".join(row)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
