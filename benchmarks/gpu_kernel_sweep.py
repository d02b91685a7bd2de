"""Launch-shape sweep of the sparse-core Triton kernels (device tool): device time of each kernel.

python benchmarks/gpu_kernel_sweep.py [cores] [--stats] [--short]   (bf16, OER magnitude, S=32 per side; diag and
block b=4; T = 8192 and 32768 at d = 4096, and T = 8192 at d = 2048; the steady state of the layer table,
no statistics, unless ``--stats``; ``--short``: the T = 8192 shapes only)

Each row overrides some launch knobs of the module (``VARIANTS``), then reads the per-kernel device time
from the profiler (10 fwd+bwd). ``python benchmarks/gpu_kernel_sweep.py diag`` sweeps one core. The last
line, ``BEST {json}``, is the variant with the least kernel time over the first core's shapes: the run
scripts pass it to ``benchmarks/device/with_knobs.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import torch

from jora_ops import CoreSpec, Magnitude, _sparse_core_triton, jora_linear

# knob overrides of jora_ops._sparse_core_triton per variant ({} = the defaults)
VARIANTS: list[dict] = [
    {},
    {"LAUNCH_PDL": False},
    {"REDUCED_TILES_MAX_WIDTH": 0},
    {"REDUCED_TILES_MAX_WIDTH": 4096},
]


def kernel_times(T: int, core: str, d: int, slots: int = 32, stats: bool = False) -> dict[str, float]:
    """Device time (µs) per launch of each sparse-core kernel for one ``jora_linear`` fwd+bwd of ``core``
    (``T`` tokens, ``Linear(d, d)``, bf16, OER, ``slots`` per side; ``stats``: collect the statistics)."""
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
    statistics = [torch.zeros(d, device=dev) if stats else None for _ in range(2)]

    def run() -> None:
        out = jora_linear(
            x, weight, core=spec, core_params=params, pairs_L=pairs[0], theta_L=leaves[0],
            pairs_R=pairs[1], theta_R=leaves[1], magnitude=Magnitude("oer_softmax", logits, nu, (nu**2).sum(), 1.0),
            stats_in=statistics[0], stats_out=statistics[1], impl="triton",
        )  # fmt: skip
        out.backward(grad)

    return _triton_kernel_us(run)


def _triton_kernel_us(run: Callable[[], object]) -> dict[str, float]:
    """Device time (µs) per launch of each ``_…_kernel`` over 10 calls of ``run`` (after 3 warm-up calls)."""
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            run()
        torch.cuda.synchronize()
    return {
        event.key: event.device_time_total / event.count
        for event in prof.key_averages()
        if event.key.startswith("_") and event.key.endswith("_kernel")
    }


def column_sums_us(T: int, d: int) -> float:
    """Device time (µs) of the token-sum kernel's column programs alone (``column_sums_triton``: Σg·y, Σg,
    Σg², Σx², Σg·x, no gathers) at the sweep's shape: the difference to the full kernel is the gathers'."""
    dev = "cuda"
    g, y, x = (torch.randn(T, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
    return _triton_kernel_us(lambda: _sparse_core_triton.column_sums_triton(g, y, x, d, True))[
        "_token_sums_kernel"
    ]


def _new_compilations(seen: set[int]) -> str:
    """Registers and spills of the kernel variants compiled since the last call."""
    cells = []
    for name in ("_fold_kernel", "_token_sums_kernel", "_coordinate_grads_kernel"):
        for cache in getattr(_sparse_core_triton, name).device_caches.values():
            for compiled in cache[0].values():
                if id(compiled) not in seen:
                    seen.add(id(compiled))
                    cells.append(f"{name.strip('_')} regs={compiled.n_regs} spills={compiled.n_spills}")
    return "; ".join(cells)


def main() -> int:
    kernels = _sparse_core_triton
    seen: set[int] = set()
    defaults = {name: getattr(kernels, name) for variant in VARIANTS for name in variant}
    args = [arg for arg in sys.argv[1:] if arg not in ("--stats", "--short")]
    stats = "--stats" in sys.argv
    cores = args[0].split(",") if args else ["diag", "block"]
    shapes = [(8192, 4096), (32768, 4096), (8192, 2048)]
    if "--short" in sys.argv:  # the T=8192 shapes only
        shapes = [(8192, 4096), (8192, 2048)]
    totals: dict[tuple[str, int, int], list[float]] = {}  # per (core, T, d): each variant's kernel time
    for core in cores:
        for T, d in shapes:
            for variant in VARIANTS:
                for name, value in defaults.items():
                    setattr(kernels, name, variant.get(name, value))
                kernels._token_sum_geometry.cache_clear()  # the launch geometry is cached per shape
                times = kernel_times(T, core, d, stats=stats)
                totals.setdefault((core, T, d), []).append(sum(times.values()))
                cells = "  ".join(f"{k.strip('_')} {v:7.1f} µs" for k, v in sorted(times.items()))
                print(f"{core:5s} T={T:6d} d={d} {variant or 'defaults'}: {cells}", flush=True)
                if not variant and core == "diag":
                    print(
                        f"    column programs alone (no gathers): {column_sums_us(T, d):7.1f} µs", flush=True
                    )
                compiled = _new_compilations(seen)
                if compiled:
                    print(f"    compiled: {compiled}", flush=True)
    for name, value in defaults.items():
        setattr(kernels, name, value)
    # the variant with the least kernel time summed over the shapes of the first core (JSON for the run scripts)
    score = [
        sum(times[i] for (core, _, _), times in totals.items() if core == cores[0])
        for i in range(len(VARIANTS))
    ]
    best = min(range(len(VARIANTS)), key=score.__getitem__)
    print(f"summed over the shapes (µs): {', '.join(f'{i}: {v:.1f}' for i, v in enumerate(score))}")
    print("BEST " + json.dumps(VARIANTS[best]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
