"""Host cost of the Triton sparse-core path, split into its parts (device tool).

python benchmarks/gpu_launch_cost.py

At T=16, d=512 the kernels' device time is a few µs, so wall time per call is host time. Measured, per call:
the fused function's fwd+bwd; the same with the three kernels stubbed out (its Python and torch ops); and, for
each kernel with the arguments of a real call, the pieces of Triton's launch path: the whole ``kernel[grid]``,
the binder, the cache key, the current stream, and the compiled kernel's ``run`` alone.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpu_host import per_call_us

KERNELS = ("_fold_kernel", "_token_sums_kernel", "_coordinate_grads_kernel")


class _Recorder:
    """Stands in for a kernel: records the launch (grid, args, kwargs), then launches the real kernel."""

    def __init__(self, kernel: Any, calls: list) -> None:
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def launch(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((grid, args, kwargs))
            return self.kernel[grid](*args, **kwargs)

        return launch


class _Stub:
    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        return lambda *args, **kwargs: None


def _key(args: tuple) -> tuple:
    """A specialisation key computed in Python: dtype and 16-byte alignment of tensors, int properties."""
    return tuple(
        (a.dtype, a.data_ptr() % 16 == 0)
        if isinstance(a, torch.Tensor)
        else (a == 1, a % 16 == 0, -(2**31) <= a < 2**31)
        if type(a) is int
        else type(a)
        for a in args
    )


def main() -> int:
    from triton import knobs
    from triton.runtime import driver
    from triton.runtime.jit import compute_cache_key

    from jora_ops import Magnitude
    from jora_ops import _sparse_core_triton as sct

    dev, d, T, S = "cuda", 512, 16, 32
    x = torch.randn(T, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(T, d, device=dev, dtype=torch.bfloat16)
    weight = (torch.randn(d, d, device=dev) / 16).to(torch.bfloat16)
    diag = torch.randn(d, device=dev, requires_grad=True)
    theta_L, theta_R = (torch.randn(S, device=dev, requires_grad=True) for _ in range(2))
    pairs_L, pairs_R = (torch.randperm(d, device=dev)[: 2 * S].view(S, 2) for _ in range(2))
    logits = torch.zeros(d, device=dev, requires_grad=True)
    nu = weight.float().norm(dim=1)
    magnitude = Magnitude("oer_softmax", logits, nu, (nu**2).sum(), 1.0)

    def run() -> None:
        sct.sparse_core_linear_triton(
            x, weight, None, layout="linear", core_values=(diag,), core_offset=None, block_size=1,
            pairs_L=pairs_L, theta_L=theta_L, pairs_R=pairs_R, theta_R=theta_R, scale=None, magnitude=magnitude,
            rotation_param="cayley", stats_in=None, stats_out=None, on_backward=None,
        ).backward(grad)  # fmt: skip

    rows = {"fused fwd+bwd": per_call_us(run)}
    real = {name: getattr(sct, name) for name in KERNELS}
    calls: list = []
    for name in KERNELS:
        setattr(sct, name, _Stub())
    rows["fused fwd+bwd, kernels stubbed"] = per_call_us(run)
    for name in KERNELS:
        setattr(sct, name, _Recorder(real[name], calls))
    run()
    torch.cuda.synchronize()
    for name, value in real.items():
        setattr(sct, name, value)
    device = driver.active.get_current_device()
    rows["driver: current device + stream"] = per_call_us(
        lambda: driver.active.get_current_stream(driver.active.get_current_device())
    )
    stream = driver.active.get_current_stream(device)
    for name, (grid, args, kwargs) in zip(KERNELS, calls, strict=True):
        kernel = real[name]
        rows[f"{name}: kernel[grid](...)"] = per_call_us(
            lambda k=kernel, g=grid, a=args, kw=kwargs: k[g](*a, **kw)
        )
        binder = kernel.device_caches[device][4]
        kw_full = dict(kwargs, debug=False, instrumentation_mode=knobs.compilation.instrumentation_mode)
        rows[f"{name}: binder"] = per_call_us(lambda b=binder, a=args, kw=kw_full: b(*a, **kw))
        bound, specialization, options = binder(*args, **kw_full)
        key_cache = kernel.device_caches[device][1]
        rows[f"{name}: cache key"] = per_call_us(
            lambda c=key_cache, s=specialization, o=options: compute_cache_key(c, s, o)
        )
        compiled = kernel.device_caches[device][0][compute_cache_key(key_cache, specialization, options)]
        values = tuple(bound.values())
        g0, g1, g2 = (*grid, 1, 1)[:3]

        def direct(c: Any = compiled, v: tuple = values, a: int = g0, b: int = g1, z: int = g2) -> None:
            c.run(a, b, z, stream, c.function, c.packed_metadata, None, None, None, *v)

        rows[f"{name}: compiled.run only"] = per_call_us(direct)
        rows[f"{name}: python key of the args"] = per_call_us(lambda a=args: _key(a))
        rows[f"{name}: args (non-constexpr)"] = float(len(args))
    from layers import build, step_fn

    for method in ("frozen", "lora_r16", "jora_diag_oer"):
        layer = build(method, d, d, dtype=torch.bfloat16, device=dev)
        rows[f"PEFT layer {method} fwd+bwd"] = per_call_us(step_fn(layer, x, grad))
    for label, us in rows.items():
        print(f"{label:48s} {us:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
