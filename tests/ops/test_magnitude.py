"""Magnitude scales (JORA.md §5, invariant 9)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jora_ops import (
    compute_ecd_scale,
    compute_oer_scale_softmax,
    linear_temperature_anneal,
    logits_grad_from_weighted,
    scale_vjp,
)
from jora_reference import ecd_scale, oer_scale, rel_error

EPS = 1e-6


@st.composite
def norms_and_logits(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    nu = torch.rand(n, generator=gen) * 3 + 0.05
    n_zero = draw(st.integers(0, n - 1))
    nu[torch.randperm(n, generator=gen)[:n_zero]] = 0.0  # excluded rows
    logits = torch.randn(n, generator=gen) * draw(st.sampled_from([0.0, 0.5, 3.0]))
    return nu, logits


@given(case=norms_and_logits(), temperature=st.floats(0.05, 10))
def test_oer_matches_reference_and_conserves_energy(case, temperature: float) -> None:
    nu, logits = case
    energy = (nu**2).sum()
    s = compute_oer_scale_softmax(nu, energy, logits, temperature, EPS)
    assert s.dtype == torch.float32
    assert rel_error(s, oer_scale(nu, logits, temperature, EPS)) < 1e-5
    torch.testing.assert_close(((s * nu) ** 2).sum(), energy, rtol=1e-5, atol=0)
    assert torch.all(s[nu <= EPS] == 1)


@given(case=norms_and_logits(), temperature=st.floats(0.05, 10), alpha=st.floats(0, 0.99))
def test_ecd_matches_reference_and_conserves_energy(case, temperature: float, alpha: float) -> None:
    nu, logits = case
    energy = (nu**2).sum()
    s = compute_ecd_scale(nu, energy, logits, alpha, temperature, EPS)
    assert rel_error(s, ecd_scale(nu, logits, alpha, temperature, EPS)) < 1e-5
    torch.testing.assert_close(((s * nu) ** 2).sum(), energy, rtol=1e-5, atol=0)
    assert torch.all(s[nu <= EPS] == 1)


@given(case=norms_and_logits(), temperature=st.floats(0.01, 100))
def test_zero_logits_are_identity_for_any_temperature(case, temperature: float) -> None:
    nu, _ = case
    zeros = torch.zeros_like(nu)
    energy = (nu**2).sum()
    torch.testing.assert_close(
        compute_oer_scale_softmax(nu, energy, zeros, temperature, EPS), torch.ones_like(nu)
    )
    torch.testing.assert_close(
        compute_ecd_scale(nu, energy, zeros, 0.7, temperature, EPS), torch.ones_like(nu)
    )


def test_scales_are_differentiable_in_the_logits() -> None:
    nu = torch.rand(6, dtype=torch.float64) + 0.5
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    energy = (nu**2).sum()
    assert torch.autograd.gradcheck(lambda w: compute_oer_scale_softmax(nu, energy, w, 0.7), (w,))
    assert torch.autograd.gradcheck(lambda w: compute_ecd_scale(nu, energy, w, 0.4, 1.3), (w,))


@given(
    case=norms_and_logits(),
    kind=st.sampled_from(["oer_softmax", "ecd_tanh"]),
    temperature=st.floats(0.05, 10),
    alpha=st.floats(0, 0.99),
    seed=st.integers(0, 2**31),
)
def test_closed_form_logits_gradient_matches_autograd_of_the_float64_reference(
    case, kind: str, temperature: float, alpha: float, seed: int
) -> None:
    """``scale_vjp`` (from ``∂L/∂s``) and ``logits_grad_from_weighted`` (from ``s ⊙ ∂L/∂s``) against autograd
    through the float64 reference scales, excluded rows included (their gradient is 0)."""
    nu, logits = (t.double() for t in case)
    grad_scale = torch.randn(nu.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = logits.clone().requires_grad_()
    s = (
        oer_scale(nu, w, temperature, EPS)
        if kind == "oer_softmax"
        else ecd_scale(nu, w, alpha, temperature, EPS)
    )
    (expected,) = torch.autograd.grad(s, w, grad_scale)
    s = s.detach()
    args = (nu, (nu**2).sum(), logits, temperature, EPS, alpha)
    from_grad = scale_vjp(kind, s, grad_scale, *args)
    from_weighted = logits_grad_from_weighted(kind, s, grad_scale * s, *args)
    scale_of_terms = (grad_scale.abs() * s).sum() / temperature + 1e-300  # the size before cancellation
    for got in (from_grad, from_weighted):
        assert got.dtype == torch.float64
        assert (got - expected).abs().max() <= 1e-12 * scale_of_terms
        assert torch.all(got[nu <= EPS] == 0)


def test_bad_arguments_raise_named_errors() -> None:
    nu, w = torch.rand(4) + 0.1, torch.zeros(4)
    with pytest.raises(ValueError, match="ecd_alpha"):
        compute_ecd_scale(nu, 1.0, w, ecd_alpha=1.0)
    with pytest.raises(ValueError, match="ecd_alpha"):
        compute_ecd_scale(nu, 1.0, w, ecd_alpha=-0.1)
    with pytest.raises(ValueError, match="temperature"):
        compute_oer_scale_softmax(nu, 1.0, w, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        compute_ecd_scale(nu, 1.0, w, temperature=-1.0)
    with pytest.raises(ValueError, match="oer_logits"):
        compute_oer_scale_softmax(nu, 1.0, torch.zeros(5))
    with pytest.raises(TypeError, match="base_row_norms"):
        compute_oer_scale_softmax(torch.ones(4, dtype=torch.long), 1.0, w)


@given(step=st.integers(0, 300), total=st.integers(1, 200), start=st.floats(0.1, 5), end=st.floats(0.1, 5))
def test_linear_anneal(step: int, total: int, start: float, end: float) -> None:
    value = linear_temperature_anneal(step, total, start, end)
    assert value == pytest.approx(start + (end - start) * min(1.0, step / total))


def test_anneal_without_total_stays_at_start() -> None:
    assert linear_temperature_anneal(50, None, 2.0, 0.5) == 2.0
