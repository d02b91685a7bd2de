"""Launch a Triton kernel with less host work than ``kernel[grid](...)`` on repeated calls.

``kernel[grid](...)`` binds and specialises every argument, builds a cache key, checks globals and
evaluates launch hooks on each call: 40-50 µs per launch on the H200 device host, several times the
launch itself (``benchmarks/gpu_launch_cost.py``). A fused adapted linear launches four kernels per
fwd+bwd, so that is a large part of its host time.

:class:`CachedLaunch` keeps, per specialisation, the compiled kernel that Triton's own first launch
returned and launches it directly afterwards. Its key is at least as fine as Triton's specialisation:
per tensor its dtype and whether its address is 16-byte aligned, per ``int`` whether it is 1, whether it is
divisible by 16, whether it fits in 32 bits and whether it needs 64 unsigned bits, per other argument its type (``None`` itself), plus the
constexpr values, launch options and the current device. Equal keys therefore select the kernel Triton
would select. The direct path is used with the Triton releases it was checked against (3.6-3.9, whose
compiled kernels share the ``run`` signature); under ``TRITON_INTERPRET`` and with other releases every
launch goes through ``kernel[grid]``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton

__all__ = ["CachedLaunch", "direct_launch_supported"]

_CHECKED_RELEASES = ((3, 6), (3, 7), (3, 8), (3, 9))


def direct_launch_supported() -> bool:
    """Whether :class:`CachedLaunch` launches compiled kernels directly (else through ``kernel[grid]``)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return False
    release = tuple(int(part) for part in triton.__version__.split(".")[:2])
    return release in _CHECKED_RELEASES


def _argument_key(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    if type(value) is int:
        return value == 1, value % 16 == 0, -(2**31) <= value < 2**31, value >= 2**63
    return None if value is None else type(value)


class CachedLaunch:
    """``launch(grid, *args, **constexprs_and_options)``: a launcher of one ``@triton.jit`` kernel.

    Runtime arguments are positional, in the kernel's order; constexprs and launch options (``num_warps``,
    ``num_stages``) are keywords, the constexprs in the kernel's order (they follow its runtime arguments).
    """

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self._compiled: dict[tuple, tuple[Any, tuple[Any, ...]]] = {}
        self._direct = direct_launch_supported()

    def __call__(self, grid: tuple[int, ...], *args: Any, **constexprs: Any) -> None:
        if not self._direct:
            self.kernel[grid](*args, **constexprs)
            return
        from triton import knobs
        from triton.runtime import driver

        device = driver.active.get_current_device()
        key = (device, tuple(constexprs.values()), *(_argument_key(value) for value in args))
        entry = self._compiled.get(key)
        if entry is None:
            compiled = self.kernel[grid](*args, **constexprs)
            names = self.kernel.arg_names[len(args) :]
            self._compiled[key] = compiled, tuple(constexprs[name] for name in names)
            return
        compiled, tail = entry
        stream = driver.active.get_current_stream(device)
        enter_hook, exit_hook = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
        metadata = None if enter_hook is None else compiled.launch_metadata(grid, stream, *args, *tail)
        grid_y = grid[1] if len(grid) > 1 else 1
        grid_z = grid[2] if len(grid) > 2 else 1
        compiled.run(
            grid[0], grid_y, grid_z, stream, compiled.function, compiled.packed_metadata, metadata, enter_hook,
            exit_hook, *args, *tail,
        )  # fmt: skip
