"""Kernel launches that skip Triton's per-call binding after a specialization's first launch.

``kernel[grid](*args, **kwargs)`` runs ``JITFunction.run`` on every call: it binds the arguments, specialises
each one, builds and looks up a cache key, and checks the kernel's globals, which costs host time in
proportion to the argument count (H200 device host: a 20-argument launch 29 µs through ``JITFunction`` and
14 µs through the ``CompiledKernel`` it returns; the three launches of a JORA layer's fwd+bwd took 270 of its
≈ 1000 µs). :func:`launch` keeps the ``CompiledKernel`` of each specialization and launches it directly
afterwards, as torch Inductor's launchers do. Its key is finer than Triton's specialization (device, the
constexprs and options, and per argument: a tensor's dtype and 16-byte alignment, an integer's ``== 1``,
16-divisibility and 32-bit range, the type of a float or ``None``), so a cached kernel is only reused where
Triton would pick the same one. Under ``TRITON_INTERPRET=1``, for arguments of other types, and with
``FAST_LAUNCH = False`` (an A/B knob) every launch goes through ``JITFunction.run``.

Triton launches on the current CUDA device, not on its tensors' device: with a model spread over GPUs in one
process (``device_map="auto"``) a layer on ``cuda:1`` is called while ``cuda:0`` is current. :func:`launch`
makes the first tensor argument's device current for the launch when it is not (a device guard, as torch ops
have; nothing is done in the usual case of one device).
"""

from __future__ import annotations

from typing import Any

import torch
from triton.runtime.jit import JITFunction

from jora_ops._dispatch import triton_interpreting

__all__ = ["launch"]

FAST_LAUNCH = True
_INT32 = range(-(2**31), 2**31)
_CACHES: dict[JITFunction, dict[tuple, tuple[Any, tuple[Any, ...]]]] = {}


def _argument_key(value: object) -> object:
    """What of a runtime argument Triton's specialization can depend on (``NotImplemented``: an unknown type)."""
    if isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int, value == 1, value % 16 == 0, value in _INT32
    if isinstance(value, float):
        return float
    return NotImplemented


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)`` on the device of the first tensor argument: runtime arguments
    positional, constexprs and launch options (such as ``num_warps``) by keyword; after the first launch of a
    specialization, through its ``CompiledKernel``.
    ``kernel`` may also be any object with ``kernel[grid](...)`` (a stub or a recorder in the benchmarks)."""
    if triton_interpreting():
        kernel[grid](*args, **kwargs)
        return
    device = next((arg.device for arg in args if isinstance(arg, torch.Tensor)), None)
    on_cuda = device is not None and device.type == "cuda"
    if on_cuda and device.index != torch.cuda.current_device():
        with torch.cuda.device(device):
            launch(kernel, grid, *args, **kwargs)
        return
    if not FAST_LAUNCH or not isinstance(kernel, JITFunction):
        kernel[grid](*args, **kwargs)
        return
    argument_keys = tuple(map(_argument_key, args))
    if NotImplemented in argument_keys:
        kernel[grid](*args, **kwargs)
        return
    key = (device.index if on_cuda else torch.cuda.current_device(), tuple(kwargs.items()), argument_keys)
    cache = _CACHES.setdefault(kernel, {})
    cached = cache.get(key)
    if cached is None:
        compiled = kernel[grid](*args, **kwargs)  # compiles or finds the kernel, and launches it
        if compiled is None:
            return
        parameters = kernel.signature.parameters
        # the parameters after the positional ones, in order: given by keyword or left at their defaults
        tail = tuple(kwargs.get(name, parameters[name].default) for name in kernel.arg_names[len(args) :])
        cache[key] = (compiled, tail)
        return
    compiled, tail = cached
    compiled[(*grid, 1, 1)[:3]](*args, *tail)
