"""The cached direct launcher of the Triton kernels: its key is at least as fine as Triton's specialisation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jora_ops import _dispatch
from jora_ops._triton_launch import _argument_key, direct_launch_supported

pytestmark = pytest.mark.skipif(not _dispatch.triton_available(), reason="triton is not installed")

_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32)


def _tensor_views() -> st.SearchStrategy[torch.Tensor]:
    """Views at element offsets of fresh tensors: aligned and unaligned addresses of several dtypes."""
    return st.builds(
        lambda dtype, offset: torch.empty(64, dtype=dtype)[offset:],
        st.sampled_from(_DTYPES),
        st.integers(0, 17),
    )


_INTEGERS = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.integers(-40, 40),
    st.sampled_from([1, 16, 2**31 - 16, 2**31, 2**32, 2**63 - 16, 2**63, -(2**31), -(2**31) - 16]),
)
_ARGUMENTS = st.one_of(_tensor_views(), _INTEGERS, st.floats(allow_nan=False), st.booleans(), st.none())
# pairs of one kind (two views of one dtype, two integers) besides any two arguments
_PAIRS = st.one_of(
    st.tuples(st.sampled_from(_DTYPES), st.integers(0, 17), st.integers(0, 17)).map(
        lambda d: (torch.empty(64, dtype=d[0])[d[1] :], torch.empty(64, dtype=d[0])[d[2] :])
    ),
    st.tuples(_INTEGERS, _INTEGERS),
    st.tuples(_ARGUMENTS, _ARGUMENTS),
)


def _triton_specialisation(value: object) -> tuple:
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    return native_specialize_impl(BaseBackend, value, False, True, True)


def _rejected_by_triton(value: object) -> bool:
    try:
        _triton_specialisation(value)
    except (TypeError, ValueError, OverflowError):
        return True
    return False


@settings(max_examples=400, deadline=None)
@given(_PAIRS)
def test_equal_launch_keys_imply_equal_triton_specialisation(pair: tuple[object, object]) -> None:
    a, b = pair
    rejected = [value for value in (a, b) if _rejected_by_triton(value)]
    assume(not rejected)  # an argument Triton itself rejects is never passed to a kernel
    triton_a, triton_b = _triton_specialisation(a), _triton_specialisation(b)
    if _argument_key(a) == _argument_key(b):
        assert triton_a == triton_b


def test_alignment_and_integer_properties_split_the_key() -> None:
    base = torch.empty(64, dtype=torch.bfloat16)
    assert _argument_key(base) != _argument_key(base[1:])
    assert _argument_key(base) == _argument_key(base[8:])
    assert _argument_key(base) != _argument_key(base.float())
    assert len({_argument_key(v) for v in (1, 16, 17, 2**31, 2**63)}) == 5
    assert _argument_key(3) == _argument_key(5)


def test_interpreter_launches_through_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not direct_launch_supported()
