"""Rotations against the float64 dense reference (JORA.md §2, invariant 5)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jora_ops import (
    _dispatch,
    apply_rotations,
    cayley_cos_sin,
    rotation_cos_sin,
    rotation_matrix,
    validate_pairs,
)
from jora_reference import dense_rotation, rel_error


def random_pairs(dim: int, n_active: int, n_empty: int, seed: int) -> torch.Tensor:
    """n_active disjoint random pairs of [0, dim) interleaved with n_empty (-1, -1) slots."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.randperm(dim, generator=gen)[: 2 * n_active].view(n_active, 2)
    table = torch.cat([coords, torch.full((n_empty, 2), -1)])
    return table[torch.randperm(table.shape[0], generator=gen)]


@st.composite
def rotation_case(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], int]:
    dim = draw(st.integers(1, 33))
    n_active = draw(st.integers(0, dim // 2))
    n_empty = draw(st.integers(0, 3))
    lead = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    seed = draw(st.integers(0, 2**31))
    pairs = random_pairs(dim, n_active, n_empty, seed)
    thetas = (
        torch.randn(pairs.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
        * 2
    )
    return pairs, thetas, lead, dim


@pytest.mark.parametrize("rotation_param", ["cayley", "angle"])
def test_cos_sin_match_the_effective_angle(rotation_param: str) -> None:
    theta = torch.randn(64, dtype=torch.float64) * 3
    cos, sin = rotation_cos_sin(theta, rotation_param)
    phi = 2 * torch.atan(theta / 2) if rotation_param == "cayley" else theta
    torch.testing.assert_close(cos, torch.cos(phi))
    torch.testing.assert_close(sin, torch.sin(phi))


def test_cayley_cos_sin_is_fp32_for_low_precision_theta() -> None:
    cos, sin = cayley_cos_sin(torch.randn(8, dtype=torch.bfloat16))
    assert cos.dtype == sin.dtype == torch.float32


@given(case=rotation_case(), transpose=st.booleans(), rotation_param=st.sampled_from(["cayley", "angle"]))
def test_apply_rotations_matches_dense_reference(case, transpose: bool, rotation_param: str) -> None:
    pairs, thetas, lead, dim = case
    x = torch.randn(*lead, dim, dtype=torch.float64)
    out = apply_rotations(x, pairs, thetas, rotation_param=rotation_param, impl="torch", transpose=transpose)
    rot = dense_rotation(pairs, thetas, dim, rotation_param)
    expected = x @ (rot.T if transpose else rot).T
    assert out.shape == x.shape
    assert rel_error(out, expected) < 1e-12
    # orthogonality: the norm along the rotated dimension is preserved, and Rᵀ undoes R
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    back = apply_rotations(
        out, pairs, thetas, rotation_param=rotation_param, impl="torch", transpose=not transpose
    )
    torch.testing.assert_close(back, x)


@given(case=rotation_case(), rotation_param=st.sampled_from(["cayley", "angle"]))
def test_rotation_matrix_matches_reference(case, rotation_param: str) -> None:
    pairs, thetas, _, dim = case
    torch.testing.assert_close(
        rotation_matrix(pairs, thetas, dim, rotation_param=rotation_param),
        dense_rotation(pairs, thetas, dim, rotation_param),
    )
    torch.testing.assert_close(
        rotation_matrix(pairs, thetas, dim, rotation_param=rotation_param, transpose=True),
        dense_rotation(pairs, thetas, dim, rotation_param).T,
    )


@pytest.mark.parametrize("rotation_param", ["cayley", "angle"])
@pytest.mark.parametrize("transpose", [False, True])
def test_apply_rotations_gradcheck(rotation_param: str, transpose: bool) -> None:
    pairs = random_pairs(9, 3, 2, seed=3)
    thetas = torch.randn(pairs.shape[0], dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)

    def fn(x: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
        return apply_rotations(
            x, pairs, thetas, rotation_param=rotation_param, impl="torch", transpose=transpose
        )

    assert torch.autograd.gradcheck(fn, (x, thetas))


def test_empty_slots_are_identity_with_zero_gradient() -> None:
    pairs = torch.tensor([[-1, -1], [0, 3], [-1, -1]])
    thetas = torch.randn(3, requires_grad=True)
    x = torch.randn(5, 6)
    out = apply_rotations(x, pairs, thetas, impl="torch")
    torch.testing.assert_close(out[:, [1, 2, 4, 5]], x[:, [1, 2, 4, 5]])
    out.pow(2).mul(torch.randn_like(out)).sum().backward()
    assert thetas.grad is not None
    assert thetas.grad[0] == 0 and thetas.grad[2] == 0
    assert thetas.grad[1] != 0


def test_bf16_matches_fp32_reference() -> None:
    pairs = random_pairs(64, 20, 0, seed=5)
    thetas = torch.randn(20)
    x = torch.randn(16, 64)
    out = apply_rotations(x.bfloat16(), pairs, thetas, impl="torch")
    assert out.dtype == torch.bfloat16
    expected = x.double() @ dense_rotation(pairs, thetas, 64).T
    assert rel_error(out, expected) < 1e-2


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (torch.tensor([[0, 1], [1, 2]]), "disjoint"),
        (torch.tensor([[0, 0]]), "disjoint"),
        (torch.tensor([[0, 9]]), "outside"),
        (torch.tensor([[0, -2]]), "outside"),
        (torch.tensor([0, 1]), "shape"),
    ],
)
def test_validate_pairs_rejects_bad_tables(pairs: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_pairs(pairs, 4, name="pairs_R")


def test_validate_pairs_names_the_argument_and_checks_dtype() -> None:
    with pytest.raises(TypeError, match="pairs_L"):
        validate_pairs(torch.tensor([[0.0, 1.0]]), 4, name="pairs_L")
    with pytest.raises(ValueError, match="empty slots"):
        validate_pairs(torch.tensor([[-1, -1]]), 4, allow_empty_slots=False)
    validate_pairs(torch.tensor([[-1, -1], [2, 0]]), 4)  # a valid table passes


def test_bad_arguments_raise_named_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    x, pairs, thetas = torch.randn(2, 4), torch.tensor([[0, 1]]), torch.zeros(1)
    with pytest.raises(ValueError, match="rotation_param"):
        apply_rotations(x, pairs, thetas, rotation_param="euler")
    with pytest.raises(ValueError, match="impl"):
        apply_rotations(x, pairs, thetas, impl="cuda")
    with pytest.raises(ValueError, match="thetas"):
        apply_rotations(x, pairs, torch.zeros(2))
    with pytest.raises(TypeError, match="x must be"):
        apply_rotations(torch.arange(4), pairs, thetas)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors"):
        apply_rotations(x, pairs, thetas, impl="triton")
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="pip install"):
        apply_rotations(x, pairs, thetas, impl="triton")


def test_auto_picks_torch_on_cpu() -> None:
    assert _dispatch.resolve_impl("auto", torch.zeros(1)) == "torch"


needs_triton_backend = pytest.mark.skipif(
    not (_dispatch.triton_available() and (_dispatch.triton_interpreting() or torch.cuda.is_available())),
    reason="needs triton with TRITON_INTERPRET=1 (CI) or a CUDA device",
)


@needs_triton_backend
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("rotation_param", ["cayley", "angle"])
def test_triton_rotation_matches_torch(transpose: bool, rotation_param: str) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = random_pairs(40, 15, 3, seed=11).to(device)
    thetas_ref = torch.randn(pairs.shape[0], device=device, requires_grad=True)
    thetas = thetas_ref.detach().clone().requires_grad_()
    x_ref = torch.randn(3, 7, 40, device=device, requires_grad=True)
    x = x_ref.detach().clone().requires_grad_()
    grad = torch.randn(3, 7, 40, device=device)
    kwargs = {"rotation_param": rotation_param, "transpose": transpose}
    ref = apply_rotations(x_ref, pairs, thetas_ref, impl="torch", **kwargs)
    out = apply_rotations(x, pairs, thetas, impl="triton", **kwargs)
    (ref * grad).sum().backward()
    (out * grad).sum().backward()
    assert rel_error(out, ref) < 1e-6
    assert rel_error(x.grad, x_ref.grad) < 1e-6
    assert rel_error(thetas.grad, thetas_ref.grad) < 1e-5
    assert math.isfinite(float(thetas.grad.sum()))
