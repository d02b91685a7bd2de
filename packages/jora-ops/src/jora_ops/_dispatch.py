"""Choice between the torch reference and the Triton kernels (``impl="auto" | "torch" | "triton"``)."""

from __future__ import annotations

import importlib.util
import os

import torch

from jora_ops.rotation import IMPLS

_TRITON_FOUND = importlib.util.find_spec("triton") is not None  # once, at import: cheap to trace with dynamo


def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    return _TRITON_FOUND


def triton_interpreting() -> bool:
    """True when Triton kernels run on CPU tensors through ``TRITON_INTERPRET=1``."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str, x: torch.Tensor) -> str:
    """Return ``"torch"`` or ``"triton"`` for tensor ``x``.

    ``"auto"`` picks Triton only for CUDA tensors when Triton imports. ``"triton"`` without Triton, or on CPU
    tensors (unless ``TRITON_INTERPRET=1``), raises ``ValueError``.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    if impl == "auto":
        return "triton" if x.is_cuda and triton_available() else "torch"
    if not triton_available():
        raise ValueError("impl='triton' needs the triton package: pip install 'jora-ops[triton]'")
    if not x.is_cuda and not triton_interpreting():
        raise ValueError(
            f"impl='triton' needs CUDA tensors (got a {x.device.type} tensor); use impl='torch' or 'auto', "
            "or set TRITON_INTERPRET=1 to run the kernels on CPU for testing"
        )
    return "triton"
