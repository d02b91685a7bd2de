"""Pair selection (JORA.md §6, invariant 4)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jora_ops import compute_allowed_pairs, ema_update, select_random_pairs, select_top_k_pairs_gpu


def expected_ranking(energy: list[float], excluded: set[int], limit: int) -> list[int]:
    """Candidates by energy, highest first, ties by index (plain Python)."""
    return sorted((i for i in range(limit) if i not in excluded), key=lambda i: (-energy[i], i))


@st.composite
def selection_case(draw: st.DrawFn) -> tuple[torch.Tensor, int, torch.Tensor, int | None]:
    dim = draw(st.integers(0, 40))
    # few distinct values so that ties are frequent
    values = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), min_size=dim, max_size=dim))
    energy = torch.tensor(values, dtype=torch.float32) + torch.rand(dim) * draw(st.sampled_from([0.0, 1.0]))
    limit = draw(st.one_of(st.none(), st.integers(0, dim)))
    bound = dim if limit is None else limit
    n_excluded = draw(st.integers(0, bound))
    exclude = torch.randperm(bound)[:n_excluded]
    k = draw(st.integers(0, 25))
    return energy, k, exclude, limit


@given(case=selection_case(), strategy=st.sampled_from(["consecutive", "high_low"]))
def test_top_k_selection_matches_python_reference(case, strategy: str) -> None:
    energy, k, exclude, limit = case
    pairs = select_top_k_pairs_gpu(energy, k, limit, exclude=exclude, pairing_strategy=strategy)
    bound = energy.shape[0] if limit is None else limit
    ranking = expected_ranking(energy.tolist(), set(exclude.tolist()), bound)
    n_pairs = min(k, len(ranking) // 2)
    assert pairs.shape == (n_pairs, 2) and pairs.dtype == torch.long
    top = ranking[: 2 * n_pairs]
    if strategy == "consecutive":
        expected = [[top[2 * p], top[2 * p + 1]] for p in range(n_pairs)]
    else:
        expected = [[top[p], top[2 * n_pairs - 1 - p]] for p in range(n_pairs)]
    assert pairs.tolist() == expected
    flat = pairs.flatten().tolist()
    assert len(set(flat)) == len(flat)
    assert not set(flat) & set(exclude.tolist())


def test_ties_are_broken_by_index() -> None:
    pairs = select_top_k_pairs_gpu(torch.ones(8), 3)
    assert pairs.tolist() == [[0, 1], [2, 3], [4, 5]]


def test_gumbel_selection_is_deterministic_per_generator() -> None:
    energy = torch.rand(64) + 0.1

    def draw(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return select_top_k_pairs_gpu(energy, 10, use_gumbel=True, gumbel_tau=0.5, generator=gen)

    first, again, other = draw(1), draw(1), draw(2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.flatten().unique().numel() == 20


@given(dim=st.integers(0, 50), k=st.integers(0, 30), n_excluded=st.integers(0, 50), seed=st.integers(0, 1000))
def test_random_pairs_are_disjoint_exact_and_reproducible(
    dim: int, k: int, n_excluded: int, seed: int
) -> None:
    exclude = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))[: min(n_excluded, dim)]
    pairs = select_random_pairs(dim, k, generator=torch.Generator().manual_seed(seed), exclude=exclude)
    again = select_random_pairs(dim, k, generator=torch.Generator().manual_seed(seed), exclude=exclude)
    assert torch.equal(pairs, again)
    assert pairs.shape == (min(k, (dim - exclude.numel()) // 2), 2)
    flat = pairs.flatten().tolist()
    assert len(set(flat)) == len(flat)
    assert not set(flat) & set(exclude.tolist())
    assert all(0 <= c < dim for c in flat)


@given(
    S=st.integers(0, 64),
    step=st.integers(0, 500),
    warmup_steps=st.integers(0, 200),
    warmup_ratio=st.floats(0, 1),
    total=st.one_of(st.none(), st.integers(0, 1000)),
)
def test_allowed_pairs_formula(
    S: int, step: int, warmup_steps: int, warmup_ratio: float, total: int | None
) -> None:
    allowed = compute_allowed_pairs(S, step, warmup_steps, warmup_ratio, total)
    ws = max(warmup_steps, math.floor(warmup_ratio * (total or 0)))
    expected = S if ws <= 0 or S == 0 else min(S, max(1, math.ceil(S * min(1.0, step / ws))))
    assert allowed == expected
    assert 0 <= allowed <= S


def test_allowed_pairs_grows_linearly_to_S() -> None:
    assert [compute_allowed_pairs(8, t, warmup_steps=4) for t in range(6)] == [1, 2, 4, 6, 8, 8]
    assert compute_allowed_pairs(8, 5, warmup_ratio=0.5, total_steps=20) == 4


def test_bad_arguments_raise_named_errors() -> None:
    with pytest.raises(ValueError, match="k must be"):
        select_top_k_pairs_gpu(torch.rand(4), -1)
    with pytest.raises(TypeError, match="energy"):
        select_top_k_pairs_gpu(torch.arange(4), 1)
    with pytest.raises(ValueError, match="pairing_strategy"):
        select_top_k_pairs_gpu(torch.rand(4), 1, pairing_strategy="zigzag")
    with pytest.raises(ValueError, match="gumbel_tau"):
        select_top_k_pairs_gpu(torch.rand(4), 1, use_gumbel=True, gumbel_tau=0.0)
    with pytest.raises(TypeError, match="exclude"):
        select_top_k_pairs_gpu(torch.rand(4), 1, exclude=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="warmup_ratio"):
        compute_allowed_pairs(4, 1, warmup_ratio=1.5)


@given(
    dim=st.integers(1, 64),
    beta=st.floats(0.0, 0.999),
    count=st.integers(1, 4),
    bad=st.sampled_from([None, float("inf"), float("-inf"), float("nan")]),
)
def test_ema_update_matches_float64_and_skips_a_non_finite_step(
    dim: int, beta: float, count: int, bad: float | None
) -> None:
    ema, collected = torch.rand(dim), torch.rand(dim) * count
    if bad is not None:
        collected[int(torch.randint(dim, ()))] = bad
    updated = ema_update(ema, collected, beta, count)
    if bad is None:
        expected = beta * ema.double() + (1 - beta) * collected.double() / count
        torch.testing.assert_close(updated.double(), expected, rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(updated, ema)
