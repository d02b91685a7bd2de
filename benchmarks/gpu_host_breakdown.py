"""Where one JORA layer's host time goes, by subtraction, in one process (device tool).

    python benchmarks/gpu_host_breakdown.py [--rounds 3]

At T = 16, d = 4096 (bf16) a fwd+bwd is all host time. Timed in interleaved rounds (``gpu_host.per_call_us``,
median of the rounds): the frozen ``F.linear``, PEFT's LoRA r16 layer, PEFT's JORA-diag+OER layer, its
``JoraAdapter`` called directly (PEFT's share by difference), the same with its Triton launches through
``JITFunction.run`` instead of the cached kernels (``_triton_launch.FAST_LAUNCH``), and with the three launches
stubbed out (their host share by difference; the outputs are then garbage, only the time counts), and a
20-argument Triton kernel launched through ``JITFunction`` and through its ``CompiledKernel`` runner (what
the JIT's binding, cache key and checks cost per launch).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpu_host import _twenty_args_kernel, per_call_us
from jora_ops import _sparse_core_triton, _triton_launch
from layers import build, step_fn

STUBBED_KERNELS = ("_fold_kernel", "_token_sums_kernel", "_coordinate_grads_kernel")


class _NoLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid: object) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dim, tokens = 4096, 16
    x = torch.randn(tokens, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(tokens, dim, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(dim, dim, device="cuda", dtype=torch.bfloat16)
    jora = build("jora_diag_oer", dim, dim, dtype=torch.bfloat16, device="cuda")
    adapter = jora.base_model.model[0].jora_adapters["default"]
    base_weight = jora.base_model.model[0].base_layer.weight
    kernels = {name: getattr(_sparse_core_triton, name) for name in STUBBED_KERNELS}

    def adapter_call() -> None:
        adapter(x, base_weight).backward(grad)
        x.grad = None
        for p in adapter.parameters():
            p.grad = None

    def adapter_stubbed() -> None:
        for name in STUBBED_KERNELS:
            setattr(_sparse_core_triton, name, _NoLaunch())
        try:
            adapter_call()
        finally:
            for name, kernel in kernels.items():
                setattr(_sparse_core_triton, name, kernel)

    launch_args = [torch.empty(16, device="cuda") if i % 2 else 16 for i in range(20)]
    compiled = _twenty_args_kernel[(1,)](*launch_args)
    runner = compiled[(1, 1, 1)]

    def adapter_jit_launches() -> None:
        _triton_launch.FAST_LAUNCH = False
        try:
            adapter_call()
        finally:
            _triton_launch.FAST_LAUNCH = True

    def frozen() -> None:
        torch.nn.functional.linear(x, weight).backward(grad)
        x.grad = None

    variants: dict[str, Callable[[], None]] = {
        "frozen F.linear fwd+bwd": frozen,
        "PEFT LoRA r16 layer fwd+bwd": step_fn(
            build("lora_r16", dim, dim, dtype=torch.bfloat16, device="cuda"), x, grad
        ),
        "PEFT JORA-diag+OER layer fwd+bwd": step_fn(jora, x, grad),
        "JoraAdapter fwd+bwd": adapter_call,
        "JoraAdapter fwd+bwd, launches through JITFunction.run": adapter_jit_launches,
        "JoraAdapter fwd+bwd, 3 Triton launches stubbed": adapter_stubbed,
        "Triton launch, 20 args (JITFunction)": lambda: _twenty_args_kernel[(1,)](*launch_args),
        "Triton launch, 20 args (CompiledKernel runner)": lambda: runner(*launch_args),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            times[name].append(per_call_us(run, calls=200))
    for name, values in times.items():
        print(
            f"{name:50s} {statistics.median(values):8.1f} µs  (rounds {', '.join(f'{v:.0f}' for v in values)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
