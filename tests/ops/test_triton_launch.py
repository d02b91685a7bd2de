"""The cached launch path of the Triton kernels (:mod:`jora_ops._triton_launch`)."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from jora_ops import _triton_launch
from jora_ops._triton_launch import _argument_key, launch


@triton.jit
def _scaled_copy_kernel(x_ptr, out_ptr, n, factor, BLOCK: tl.constexpr, OFFSET: tl.constexpr = 0):
    """``out[i] = factor * x[i] + OFFSET`` for ``i < n``."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    tl.store(out_ptr + i, tl.load(x_ptr + i, mask=ok) * factor + OFFSET, mask=ok)


def test_argument_keys_separate_what_triton_specialises_on() -> None:
    """Triton specialises a tensor on its dtype and 16-byte alignment, an integer on ``== 1``, 16-divisibility
    and its 32-bit range, and ``None`` as a constant: each difference gives another key; a float's value, which
    Triton does not specialise on, gives none; an unknown type is not cached."""
    buffer = torch.zeros(64)
    assert _argument_key(buffer) != _argument_key(buffer[1:])  # 4 bytes off the alignment
    assert _argument_key(buffer) == _argument_key(buffer[4:])  # 16 bytes: aligned again
    assert _argument_key(buffer) != _argument_key(buffer.to(torch.bfloat16))
    for a, b in ((1, 2), (16, 17), (32, 2**31), (2**31 - 16, 2**31)):
        assert _argument_key(a) != _argument_key(b), (a, b)
    assert _argument_key(17) == _argument_key(33)
    assert _argument_key(0.5) == _argument_key(3.0)
    assert _argument_key(None) != _argument_key(buffer)
    assert _argument_key(True) != _argument_key(False)
    assert _argument_key(True) != _argument_key(1)
    assert _argument_key("text") is NotImplemented


def test_launch_passes_other_kernels_and_the_interpreter_through() -> None:
    """A stand-in without a ``CompiledKernel`` (a recorder) gets ``kernel[grid](*args, **kwargs)`` as given."""
    calls = []

    class Recorder:
        def __getitem__(self, grid: tuple[int, ...]):
            return lambda *args, **kwargs: calls.append((grid, args, kwargs))

    launch(Recorder(), (3, 2), 1, None, BLOCK=4, num_warps=2)
    assert calls == [((3, 2), (1, None), {"BLOCK": 4, "num_warps": 2})]


def _run_cases(device: str) -> None:
    """Aligned and misaligned inputs, sizes of every integer specialization and both constexpr values, each
    launched twice (the second through the cached kernel where there is one) against torch."""
    source = torch.randn(4104, device=device)
    for start, n, offset in ((0, 4096, 0), (1, 4096, 0), (0, 1, 0), (3, 17, 0), (0, 4096, 2), (1, 33, 2)):
        x = source[start : start + n]
        for _ in range(2):
            out = torch.full((n,), float("nan"), device=device)
            launch(_scaled_copy_kernel, (triton.cdiv(n, 256),), x, out, n, 2.0, BLOCK=256, OFFSET=offset)
            # exact: the product by 2 is exact, so a fused multiply-add rounds as torch's two ops do
            torch.testing.assert_close(out, x * 2.0 + offset, rtol=0, atol=0)


def test_launch_matches_torch_under_the_interpreter_or_on_cuda() -> None:
    """The launches give torch's values: under ``TRITON_INTERPRET=1`` through the JIT, on CUDA through the
    cached kernels (a misaligned view after an aligned one, ``n == 1`` after ``n == 4096``: each its own)."""
    _run_cases("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.gpu
def test_each_specialization_is_cached_once_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA every distinct specialization compiles (or finds) its kernel once through the JIT and then
    launches through the cache: the JIT runs once per key, and the cached launches give torch's values."""
    monkeypatch.setattr(_triton_launch, "_CACHES", {})
    jit_calls = []
    real_getitem = type(_scaled_copy_kernel).__getitem__

    def counting_getitem(kernel, grid):
        jit_calls.append(grid)
        return real_getitem(kernel, grid)

    monkeypatch.setattr(type(_scaled_copy_kernel), "__getitem__", counting_getitem)
    _run_cases("cuda")
    cache = _triton_launch._CACHES[_scaled_copy_kernel]
    assert len(cache) == len(jit_calls) == 6  # aligned/misaligned, n 4096 / 1 / 17 (twice), two offsets
