"""Optional ``torch.compile`` of the small O(n + m) computations on CUDA.

JORA's per-layer bookkeeping (rotation tables, the folded-weight entries, the closed-form gradients, the
magnitude scale) is a few dozen tiny vector ops. Eagerly, each costs a kernel launch and Python dispatch,
which on a GPU outweighs the layer's matmuls; compiled, they become a few fused kernels. On CPU, or with
``JORA_COMPILE=0``, they run eagerly.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["compile_enabled", "run"]

_COMPILED: dict[Callable[..., Any], Callable[..., Any]] = {}


def compile_enabled(tensor: torch.Tensor) -> bool:
    """Compile for CUDA tensors unless the environment sets ``JORA_COMPILE=0``."""
    return tensor.is_cuda and os.environ.get("JORA_COMPILE", "1") != "0"


def run(fn: Callable[..., Any], compiled: bool, *args: Any) -> Any:
    """``fn(*args)``, through a cached ``torch.compile(fn, dynamic=True)`` when ``compiled``."""
    if not compiled:
        return fn(*args)
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn](*args)
