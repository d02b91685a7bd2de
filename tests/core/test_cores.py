"""Cores (JORA.md §3–§4) and the Linear/Conv1D helpers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jora_core import BlockCore, DiagCore, LowRankCore, build_core, get_in_out_features, linear_forward
from jora_reference import dense_core, rel_error
from layer_factory import make_layer


@given(
    kind=st.sampled_from(["diag", "block", "lowrank"]),
    n=st.integers(1, 12),
    m=st.integers(1, 12),
    block_size=st.integers(1, 5),
    rank=st.integers(1, 4),
    zero_init=st.booleans(),
    init_weights=st.booleans(),
)
def test_dense_apply_and_row_slices_agree(kind, n, m, block_size, rank, zero_init, init_weights) -> None:
    core = build_core(
        kind,
        n,
        m,
        block_size=block_size,
        lowrank_r=rank,
        lowrank_alpha=2.0,
        zero_init=zero_init,
        init_weights=init_weights,
    )
    with torch.no_grad():
        for p in core.params():
            p.normal_()
    dense = core()
    assert dense.shape == (n, m) and dense.dtype == torch.float32
    expected = dense_core(kind, tuple(p.detach() for p in core.params()), n, m, block_size, core.spec.scale)
    assert rel_error(dense, expected) < 1e-6
    x = torch.randn(3, 2, m)
    assert rel_error(core.apply(x), x.double() @ expected.T) < 1e-5
    start, end = sorted(torch.randint(0, n + 1, (2,)).tolist())
    torch.testing.assert_close(core.get_row_slice(start, end), dense[start:end])


def test_zero_init_cores() -> None:
    for kind in ("diag", "block"):
        core = build_core(kind, 6, 9, zero_init=True)
        assert core().abs().sum() == 0 and core.offset() is None
    lowrank = build_core("lowrank", 6, 9, lowrank_r=3, zero_init=True)
    assert isinstance(lowrank, LowRankCore)
    assert lowrank.A.abs().sum() == 0 and lowrank.B.abs().sum() > 0  # both factors receive gradient
    assert lowrank.offset() is None


@pytest.mark.parametrize(
    ("kind", "cls"), [("diag", DiagCore), ("block", BlockCore), ("lowrank", LowRankCore)]
)
def test_small_random_init_keeps_a_frozen_structured_copy(kind: str, cls: type) -> None:
    core = build_core(kind, 8, 6, lowrank_r=2)
    assert isinstance(core, cls)
    offset = core.offset()
    assert offset is not None
    for param, init in zip(core.params(), offset, strict=True):
        assert param.requires_grad and not init.requires_grad
        torch.testing.assert_close(param.detach(), init)
        assert init.shape == param.shape  # structured, never a dense n×m matrix
        assert 0 < param.detach().std() < 0.05
    assert all(name.endswith("_init") for name in dict(core.named_buffers()))


def test_random_init_has_no_offset() -> None:
    core = build_core("diag", 5, 5, init_weights=False)
    assert core.offset() is None and core().abs().sum() > 0


def test_module_apply_with_a_function_still_works() -> None:
    core = build_core("diag", 4, 4)
    seen: list[str] = []
    core.apply(lambda module: seen.append(type(module).__name__))
    assert seen == ["DiagCore"]


def test_bad_core_knobs() -> None:
    with pytest.raises(ValueError, match="core must be one of"):
        build_core("dense", 4, 4)
    with pytest.raises(ValueError, match="block_size"):
        build_core("block", 4, 4, block_size=0)
    with pytest.raises(ValueError, match="lowrank_r"):
        build_core("lowrank", 4, 4, lowrank_r=0)


@pytest.mark.parametrize("layer_kind", ["linear", "conv1d"])
def test_layer_helpers(layer_kind: str) -> None:
    layer = make_layer(layer_kind, 7, 4)
    assert get_in_out_features(layer) == (7, 4)
    x = torch.randn(3, 7)
    torch.testing.assert_close(linear_forward(layer, x), layer(x))


def test_unsupported_layer_is_named() -> None:
    with pytest.raises(
        TypeError, match=r"torch\.nn\.modules\.conv\.Conv2d.*supported types are torch\.nn\.Linear"
    ):
        get_in_out_features(torch.nn.Conv2d(2, 2, 1))
    with pytest.raises(TypeError, match="Embedding"):
        linear_forward(torch.nn.Embedding(3, 3), torch.zeros(1, dtype=torch.long))
