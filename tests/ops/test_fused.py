"""The fused adapted linear against the float64 dense reference (JORA.md §1, invariants 3, 5, 6)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.checkpoint import checkpoint

from jora_ops import CoreSpec, _dispatch, jora_delta, jora_linear
from jora_ops.cores import core_param_shapes
from jora_reference import adapted_weight, dense_core, dense_rotation, oer_scale, rel_error


@dataclass
class Case:
    spec: CoreSpec
    params: tuple[torch.Tensor, ...]
    offset: tuple[torch.Tensor, ...] | None
    pairs_L: torch.Tensor
    theta_L: torch.Tensor
    pairs_R: torch.Tensor
    theta_R: torch.Tensor
    weight: torch.Tensor  # [n, m]
    bias: torch.Tensor | None
    scale: torch.Tensor | None
    rotation_param: str

    def kwargs(self) -> dict:
        return {
            "core": self.spec,
            "core_params": self.params,
            "core_offset": self.offset,
            "pairs_L": self.pairs_L,
            "theta_L": self.theta_L,
            "pairs_R": self.pairs_R,
            "theta_R": self.theta_R,
            "scale": self.scale,
            "rotation_param": self.rotation_param,
        }

    def to(self, device: str) -> Case:
        """The same case with every tensor on ``device``."""
        moved = {
            f.name: (
                tuple(t.to(device) for t in value)
                if isinstance(value := getattr(self, f.name), tuple)
                else value.to(device)
                if isinstance(value, torch.Tensor)
                else value
            )
            for f in fields(self)
        }
        return Case(**moved)

    def dense(self) -> torch.Tensor:
        n, m = self.spec.out_features, self.spec.in_features
        ref = lambda ps: dense_core(self.spec.kind, ps, n, m, self.spec.block_size, self.spec.scale)  # noqa: E731
        return adapted_weight(
            self.weight,
            ref(self.params),
            ref(self.offset) if self.offset is not None else None,
            dense_rotation(self.pairs_L, self.theta_L, n, self.rotation_param),
            dense_rotation(self.pairs_R, self.theta_R, m, self.rotation_param),
            self.scale,
        )

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        out = x.double() @ self.dense().T
        return out + self.bias.double() if self.bias is not None else out


def make_case(
    kind: str,
    n: int,
    m: int,
    *,
    seed: int,
    a_L: int | None = None,
    a_R: int | None = None,
    dtype: torch.dtype = torch.float64,
    with_offset: bool = True,
    with_scale: bool = True,
    with_bias: bool = True,
    block_size: int = 3,
    rank: int = 2,
    rotation_param: str = "cayley",
) -> Case:
    gen = torch.Generator().manual_seed(seed)
    spec = CoreSpec(kind, n, m, block_size=block_size, rank=rank, alpha=3.0)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    a_L = n // 2 if a_L is None else a_L
    a_R = m // 2 if a_R is None else a_R
    return Case(
        spec=spec,
        params=tuple(rand(*s) for s in core_param_shapes(spec)),
        offset=tuple(rand(*s) for s in core_param_shapes(spec)) if with_offset else None,
        pairs_L=torch.randperm(n, generator=gen)[: 2 * a_L].view(a_L, 2),
        theta_L=rand(a_L),
        pairs_R=torch.randperm(m, generator=gen)[: 2 * a_R].view(a_R, 2),
        theta_R=rand(a_R),
        weight=rand(n, m),
        bias=rand(n) if with_bias else None,
        scale=(torch.rand(n, generator=gen, dtype=dtype) + 0.5) if with_scale else None,
        rotation_param=rotation_param,
    )


@given(
    kind=st.sampled_from(["diag", "block", "lowrank"]),
    n=st.integers(1, 13),
    m=st.integers(1, 13),
    seed=st.integers(0, 2**31),
    layout=st.sampled_from(["linear", "conv1d"]),
    with_offset=st.booleans(),
    with_scale=st.booleans(),
    with_bias=st.booleans(),
    rotation_param=st.sampled_from(["cayley", "angle"]),
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    data=st.data(),
)
def test_matches_dense_reference(
    kind, n, m, seed, layout, with_offset, with_scale, with_bias, rotation_param, lead, data
):
    a_L = data.draw(st.integers(0, n // 2))
    a_R = data.draw(st.integers(0, m // 2))
    case = make_case(
        kind,
        n,
        m,
        seed=seed,
        a_L=a_L,
        a_R=a_R,
        with_offset=with_offset,
        with_scale=with_scale,
        with_bias=with_bias,
        rotation_param=rotation_param,
        block_size=data.draw(st.integers(1, 4)),
    )
    x = torch.randn(*lead, m, dtype=torch.float64)
    weight = case.weight if layout == "linear" else case.weight.T.contiguous()
    out = jora_linear(x, weight, case.bias, weight_layout=layout, **case.kwargs())
    assert out.shape == (*lead, n)
    assert rel_error(out, case.reference(x)) < 1e-12
    delta = jora_delta(x, **{k: v for k, v in case.kwargs().items() if k != "scale"})
    expected_delta = x.double() @ (case.dense() / (case.scale[:, None] if with_scale else 1) - case.weight).T
    assert rel_error(delta, expected_delta) < 1e-10


def _gradcheck(case: Case, x: torch.Tensor, layout: str = "linear", **extra: object) -> bool:
    """gradcheck of ``jora_linear`` in every differentiable input of ``case`` (``extra``: more keywords)."""
    weight = case.weight if layout == "linear" else case.weight.T.contiguous()
    leaves = [x, case.bias, case.theta_L, case.theta_R, case.scale, *case.params]
    for leaf in leaves:
        leaf.requires_grad_(True)

    def fn(x, bias, theta_L, theta_R, scale, *params):
        kwargs = case.kwargs() | {
            "theta_L": theta_L,
            "theta_R": theta_R,
            "scale": scale,
            "core_params": params,
        }
        return jora_linear(x, weight, bias, weight_layout=layout, **kwargs, **extra)

    return torch.autograd.gradcheck(fn, tuple(leaves))


@pytest.mark.parametrize("kind", ["diag", "block", "lowrank"])
@pytest.mark.parametrize(("n", "m"), [(7, 5), (4, 9), (6, 6)])
@pytest.mark.parametrize("layout", ["linear", "conv1d"])
def test_gradcheck_all_inputs(kind: str, n: int, m: int, layout: str) -> None:
    case = make_case(kind, n, m, seed=n * 100 + m)
    assert _gradcheck(case, torch.randn(2, 3, m, dtype=torch.float64), layout)


@given(
    tokens=st.integers(0, 23),
    n=st.integers(1, 9),
    m=st.integers(1, 9),
    chunk_tokens=st.integers(1, 8),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    with_out=st.booleans(),
    with_x=st.booleans(),
    stats=st.booleans(),
    g_sum=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_cpu_token_sums_in_chunks_match_float64_sums(
    tokens: int, n: int, m: int, chunk_tokens: int, dtype: torch.dtype, with_out: bool, with_x: bool,
    stats: bool, g_sum: bool, seed: int,
) -> None:  # fmt: skip
    """The torch path's token sums on CPU go through chunks of tokens (``CPU_CHUNK_BYTES``; here 1-8 tokens,
    so several chunks and a ragged last one): every sum equals the float64 sum of the whole tensors."""
    from jora_ops import _fold_common

    generator = torch.Generator().manual_seed(seed)
    grad, out = (torch.randn(tokens, n, generator=generator).to(dtype) for _ in range(2))
    x = torch.randn(tokens, m, generator=generator).to(dtype)
    n_diag = min(n, m)
    wide = torch.promote_types(dtype, torch.float32)
    chunk_bytes = chunk_tokens * wide.itemsize * max(n, m if with_x else 0)
    original = _fold_common.CPU_CHUNK_BYTES
    _fold_common.CPU_CHUNK_BYTES = chunk_bytes
    try:
        sums = _fold_common.column_sums_torch(
            grad, out if with_out else None, x if with_x else None, n_diag, stats, g_sum
        )
    finally:
        _fold_common.CPU_CHUNK_BYTES = original
    g, y, xs = grad.double(), out.double(), x.double()
    expected = {
        "g_y": (g * y).sum(0) if with_out else None,
        "g": g.sum(0) if g_sum else None,
        "g_x": (g[:, :n_diag] * xs[:, :n_diag]).sum(0) if with_x else None,
        "g_g": (g * g).sum(0) if stats else None,
        "x_x": (xs * xs).sum(0) if stats and with_x else None,
    }
    for key, want in expected.items():
        if want is None:
            assert sums[key] is None, key
            continue
        assert sums[key].dtype == wide, key
        torch.testing.assert_close(sums[key].double(), want, rtol=1e-5, atol=1e-5, msg=key)


def test_gradcheck_with_the_cpu_token_sums_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every gradient of the diag core with a bias, a scale and the statistics through token sums of three
    tokens per chunk (seven tokens: a ragged last chunk) passes gradcheck."""
    from jora_ops import _fold_common

    monkeypatch.setattr(_fold_common, "CPU_CHUNK_BYTES", 3 * 8 * 7)
    case = make_case("diag", 7, 6, seed=11)
    assert _gradcheck(
        case, torch.randn(7, 6, dtype=torch.float64), stats_in=torch.zeros(6), stats_out=torch.zeros(7)
    )


def test_gradcheck_through_base_output_and_no_weight_gradient() -> None:
    case = make_case("diag", 6, 5, seed=1)
    weight = case.weight.clone().requires_grad_(True)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    base = (x @ case.weight.T).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, h: jora_linear(x, None, base_output=h, **case.kwargs()), (x, base)
    )
    jora_linear(x, weight, None, **case.kwargs()).sum().backward()
    assert weight.grad is None


def test_chaining_two_adapters_composes_like_sequential_merging() -> None:
    first = make_case("diag", 6, 8, seed=2)
    second = make_case("lowrank", 6, 8, seed=3)
    x = torch.randn(5, 8, dtype=torch.float64)
    hidden = jora_linear(x, first.weight, None, **first.kwargs())
    out = jora_linear(x, None, second.bias, base_output=hidden, **second.kwargs())
    # h = s1 ⊙ (Wx + ΔW1 x); y = s2 ⊙ (h + ΔW2 x) + b2  ⇔  W' = diag(s2)(diag(s1)(W + ΔW1) + ΔW2)
    merged1 = first.dense()
    second.weight = merged1
    assert rel_error(out, second.reference(x)) < 1e-12


@pytest.mark.parametrize("kind", ["diag", "block", "lowrank"])
def test_bf16_matches_fp32_reference(kind: str) -> None:
    case = make_case(kind, 48, 40, seed=4, dtype=torch.float32)
    x = torch.randn(64, 40)
    out = jora_linear(x.bfloat16(), case.weight.bfloat16(), case.bias.bfloat16(), **case.kwargs())
    assert out.dtype == torch.bfloat16
    assert rel_error(out, case.reference(x)) < 1e-2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("layout", ["linear", "conv1d"])
def test_lowrank_bf16_gradients_match_float64_reference(device: str, layout: str) -> None:
    """The lowrank fold's skinny matmuls run in the activations' dtype: bf16 gradients of ``x``, ``A``, ``B``
    and the scale against a dense float64 reference, the angles' against the float64 path (gradchecked)."""
    n, m, tokens = 96, 80, 256
    case = make_case("lowrank", n, m, seed=11, rank=4, a_L=20, a_R=16)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(tokens, m, generator=gen, dtype=torch.float64)
    grad = torch.randn(tokens, n, generator=gen, dtype=torch.float64)

    # Dense float64 reference, differentiable in x, A, B and s (the rotations as fixed dense matrices).
    rot_L = dense_rotation(case.pairs_L, case.theta_L, n, case.rotation_param)
    rot_R = dense_rotation(case.pairs_R, case.theta_R, m, case.rotation_param)
    ref_leaves = {"x": x, "A": case.params[0], "B": case.params[1], "scale": case.scale}
    ref_leaves = {k: v.clone().requires_grad_() for k, v in ref_leaves.items()}
    a0, b0 = case.offset
    core, core_offset = case.spec.scale * ref_leaves["A"] @ ref_leaves["B"].T, case.spec.scale * a0 @ b0.T
    dense = ref_leaves["scale"][:, None] * (case.weight + rot_L.T @ core @ rot_R - core_offset)
    (ref_leaves["x"] @ dense.T + case.bias).backward(grad)

    results = {}
    for dtype in (torch.float64, torch.bfloat16):
        leaves = {
            "x": x.to(device, dtype),
            "A": case.params[0].to(device, torch.float32),
            "B": case.params[1].to(device, torch.float32),
            "scale": case.scale.to(device, torch.float32),
            "theta_L": case.theta_L.to(device, torch.float32),
            "theta_R": case.theta_R.to(device, torch.float32),
        }
        leaves = {k: v.clone().requires_grad_() for k, v in leaves.items()}
        weight = case.weight.to(device, dtype)
        kwargs = case.kwargs() | {
            "core_params": (leaves["A"], leaves["B"]),
            "core_offset": tuple(p.to(device, torch.float32) for p in case.offset),
            "pairs_L": case.pairs_L.to(device),
            "pairs_R": case.pairs_R.to(device),
            "theta_L": leaves["theta_L"],
            "theta_R": leaves["theta_R"],
            "scale": leaves["scale"],
        }
        out = jora_linear(
            leaves["x"], weight if layout == "linear" else weight.T.contiguous(), case.bias.to(device, dtype),
            weight_layout=layout, **kwargs,
        )  # fmt: skip
        out.backward(grad.to(device, dtype))
        assert leaves["x"].grad.dtype == dtype
        results[dtype] = {k: v.grad.cpu() for k, v in leaves.items()}
    for key, leaf in ref_leaves.items():
        assert rel_error(results[torch.float64][key], leaf.grad) < 1e-5, key
        assert rel_error(results[torch.bfloat16][key], leaf.grad) < 1e-2, key
    for key in ("theta_L", "theta_R"):
        assert rel_error(results[torch.bfloat16][key], results[torch.float64][key]) < 1e-2, key


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("kind", ["diag", "block", "lowrank"])
@pytest.mark.parametrize("layout", ["linear", "conv1d"])
def test_autocast_runs_like_nn_linear_under_autocast(device: str, kind: str, layout: str) -> None:
    """Under ``torch.autocast`` (bf16) on fp32 weights — ``Trainer(bf16=True)`` — the input and bias run in bf16
    and the weight is folded into bf16, as ``nn.Linear`` would cast it: the output and every gradient equal
    those of a call with a bf16 input and the fp32 weight and bias without autocast, the output is within
    bf16 precision of the float64 reference, and ``x``'s gradient comes back in its own dtype."""
    case = make_case(kind, 24, 20, seed=13, dtype=torch.float32)
    x = torch.randn(3, 16, 20, device=device)
    grad = torch.randn(3, 16, 24, device=device)
    weight = (case.weight if layout == "linear" else case.weight.T.contiguous()).to(device)
    results = {}
    for mode in ("autocast", "explicit"):
        leaves = {
            "x": x.clone().requires_grad_(),
            "theta_L": case.theta_L.to(device).clone().requires_grad_(),
            "theta_R": case.theta_R.to(device).clone().requires_grad_(),
            "scale": case.scale.to(device).clone().requires_grad_(),
            **{f"core{i}": p.to(device).clone().requires_grad_() for i, p in enumerate(case.params)},
        }
        kwargs = case.kwargs() | {
            "pairs_L": case.pairs_L.to(device), "pairs_R": case.pairs_R.to(device), "theta_L": leaves["theta_L"],
            "theta_R": leaves["theta_R"], "scale": leaves["scale"],
            "core_params": tuple(leaves[f"core{i}"] for i in range(len(case.params))),
            "core_offset": tuple(p.to(device) for p in case.offset), "weight_layout": layout,
        }  # fmt: skip
        bias = case.bias.to(device)
        if mode == "autocast":
            with torch.autocast(device, dtype=torch.bfloat16):
                out = jora_linear(leaves["x"], weight, bias, **kwargs)
        else:
            out = jora_linear(leaves["x"].bfloat16(), weight, bias, **kwargs)  # fp32 weight and bias
        out.backward(grad.to(out.dtype))
        results[mode] = (out.detach(), {k: v.grad for k, v in leaves.items()})
    out, grads = results["autocast"]
    assert out.dtype == torch.bfloat16
    assert grads["x"].dtype == torch.float32
    torch.testing.assert_close(out, results["explicit"][0], rtol=0, atol=0)
    for key, value in results["explicit"][1].items():
        torch.testing.assert_close(grads[key], value, rtol=1e-6, atol=1e-6, msg=key)
    assert rel_error(out.cpu(), case.reference(x.cpu())) < 1e-2


def test_statistics_once_per_backward_also_under_checkpointing() -> None:
    case = make_case("diag", 6, 5, seed=5, dtype=torch.float32)
    x = torch.randn(3, 4, 5)
    grad = torch.randn(3, 4, 6)
    calls: list[int] = []
    expected_in = x.square().reshape(-1, 5).mean(0)
    expected_out = grad.square().reshape(-1, 6).mean(0)
    for mode in ("plain", "reentrant", "non_reentrant"):
        stats_in, stats_out = torch.zeros(5), torch.zeros(6)
        calls.clear()
        xr = x.clone().requires_grad_(True)

        def run(inp, stats_in=stats_in, stats_out=stats_out):
            return jora_linear(
                inp,
                case.weight,
                case.bias,
                stats_in=stats_in,
                stats_out=stats_out,
                on_backward=lambda: calls.append(1),
                **case.kwargs(),
            )

        out = run(xr) if mode == "plain" else checkpoint(run, xr, use_reentrant=mode == "reentrant")
        assert stats_in.abs().sum() == 0  # nothing in forward
        out.backward(grad)
        torch.testing.assert_close(stats_in, expected_in)
        torch.testing.assert_close(stats_out, expected_out)
        assert len(calls) == 1, mode


def test_no_statistics_without_buffers_and_in_no_grad() -> None:
    case = make_case("diag", 6, 5, seed=6, dtype=torch.float32)
    stats_in = torch.zeros(5)
    with torch.no_grad():
        jora_linear(torch.randn(2, 5), case.weight, None, stats_in=stats_in, **case.kwargs())
    assert stats_in.abs().sum() == 0


def test_bad_arguments_raise_named_errors() -> None:
    case = make_case("diag", 6, 5, seed=7, dtype=torch.float32)
    x = torch.randn(2, 5)
    kw = case.kwargs()
    with pytest.raises(ValueError, match="exactly one of weight and base_output"):
        jora_linear(x, None, **kw)
    with pytest.raises(ValueError, match="weight must have shape"):
        jora_linear(x, case.weight.T, **kw)
    with pytest.raises(ValueError, match="weight_layout"):
        jora_linear(x, case.weight, weight_layout="conv2d", **kw)
    with pytest.raises(ValueError, match="x must have 5 features"):
        jora_linear(torch.randn(2, 4), case.weight, **kw)
    with pytest.raises(ValueError, match="scale"):
        jora_linear(x, case.weight, **(kw | {"scale": torch.ones(3)}))
    with pytest.raises(TypeError, match="stats_in"):
        jora_linear(x, case.weight, stats_in=torch.zeros(5, dtype=torch.float64), **kw)
    with pytest.raises(ValueError, match="theta_R"):
        jora_linear(x, case.weight, **(kw | {"theta_R": torch.zeros(7)}))
    with pytest.raises(ValueError, match="pairs_L and theta_L"):
        jora_linear(x, case.weight, **(kw | {"theta_L": None}))
    with pytest.raises(ValueError, match="diag core parameters"):
        jora_linear(x, case.weight, **(kw | {"core_params": (torch.zeros(4),)}))
    with pytest.raises(ValueError, match="core must be one of"):
        CoreSpec("dense", 4, 4)


needs_triton_backend = pytest.mark.skipif(
    not (_dispatch.triton_available() and (_dispatch.triton_interpreting() or torch.cuda.is_available())),
    reason="needs triton with TRITON_INTERPRET=1 (CI) or a CUDA device",
)


@needs_triton_backend
@pytest.mark.parametrize("kind", ["diag", "block", "lowrank"])
@pytest.mark.parametrize(("n", "m"), [(24, 40), (40, 24), (33, 33)])
@pytest.mark.parametrize("layout", ["linear", "conv1d"])
@pytest.mark.parametrize("with_scale", [True, False])
def test_triton_matches_torch_for_outputs_gradients_and_statistics(
    kind: str, n: int, m: int, layout: str, with_scale: bool
) -> None:
    """diag runs its Triton kernels; block and lowrank fold with torch ops and take their full-size token sums
    from the Triton pass."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    case = make_case(
        kind, n, m, seed=n + m, dtype=torch.float32, with_scale=with_scale, a_L=n // 3, a_R=m // 3
    )
    weight = (case.weight if layout == "linear" else case.weight.T.contiguous()).to(device)
    x = torch.randn(3, 50, m, device=device)
    grad = torch.randn(3, 50, n, device=device)
    results = {}
    for impl in ("torch", "triton"):
        leaves = {  # cloned per impl: on CPU ``.to(device)`` returns the same tensor
            "x": x.clone().requires_grad_(),
            "bias": case.bias.to(device).clone().requires_grad_(),
            "theta_L": case.theta_L.to(device).clone().requires_grad_(),
            "theta_R": case.theta_R.to(device).clone().requires_grad_(),
            **{f"core{i}": p.to(device).clone().requires_grad_() for i, p in enumerate(case.params)},
        }
        if with_scale:
            leaves["scale"] = case.scale.to(device).clone().requires_grad_()
        stats_in, stats_out = torch.zeros(m, device=device), torch.zeros(n, device=device)
        kwargs = case.kwargs() | {
            "pairs_L": case.pairs_L.to(device),
            "pairs_R": case.pairs_R.to(device),
            "theta_L": leaves["theta_L"],
            "theta_R": leaves["theta_R"],
            "core_params": tuple(leaves[f"core{i}"] for i in range(len(case.params))),
            "core_offset": tuple(p.to(device) for p in case.offset),
            "scale": leaves.get("scale"),
        }
        out = jora_linear(
            leaves["x"], weight, leaves["bias"], weight_layout=layout, stats_in=stats_in, stats_out=stats_out,
            impl=impl, **kwargs,
        )  # fmt: skip
        out.backward(grad)
        results[impl] = (out.detach(), {k: v.grad for k, v in leaves.items()}, stats_in, stats_out)
    ref_out, ref_grads, ref_in, ref_out_stats = results["torch"]
    out, grads, stats_in, stats_out = results["triton"]
    assert rel_error(out, ref_out) < 1e-5
    for key, value in ref_grads.items():
        assert rel_error(grads[key], value) < 1e-5, key
    assert rel_error(stats_in, ref_in) < 1e-5
    assert rel_error(stats_out, ref_out_stats) < 1e-5


def test_triton_is_refused_where_it_has_no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    case = make_case("block", 6, 5, seed=9, dtype=torch.float32)
    x = torch.randn(2, 5)
    with pytest.raises(NotImplementedError, match="base_output"):
        jora_linear(x, None, base_output=x @ case.weight.T, impl="triton", **case.kwargs())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("kind", ["oer_softmax", "ecd_tanh"])
@pytest.mark.parametrize("core_kind", ["diag", "lowrank"])
def test_inner_magnitude_matches_an_explicit_scale_and_passes_gradcheck(
    device: str, kind: str, core_kind: str
) -> None:
    """On CUDA (float64: the torch path) the scale and its closed-form gradients run compiled."""
    from jora_ops import Magnitude, compute_scale

    case = make_case(core_kind, 7, 5, seed=21, with_scale=False).to(device)
    nu = case.weight.norm(dim=1)
    nu[3] = 0.0  # an excluded row
    logits = torch.randn(7, dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(2, 4, 5, dtype=torch.float64, device=device, requires_grad=True)

    def inner(x, logits):
        magnitude = Magnitude(kind, logits, nu, (nu**2).sum(), 0.7, 1e-8, 0.4)
        return jora_linear(x, case.weight, case.bias, magnitude=magnitude, **case.kwargs())

    def explicit(x, logits):
        s = compute_scale(kind, nu, (nu**2).sum(), logits, 0.7, 1e-8, 0.4)
        return jora_linear(x, case.weight, case.bias, **(case.kwargs() | {"scale": s}))

    torch.testing.assert_close(inner(x, logits), explicit(x, logits))
    assert torch.autograd.gradcheck(inner, (x, logits))
    with pytest.raises(ValueError, match="at most one of scale and magnitude"):
        jora_linear(
            x, case.weight, scale=torch.ones(7, dtype=torch.float64, device=device),
            magnitude=Magnitude(kind, logits, nu, 1.0, 1.0), **{k: v for k, v in case.kwargs().items() if k != "scale"},
        )  # fmt: skip


def _impl_param(impl: str) -> object:
    """``impl`` as a pytest parameter; the Triton one is skipped (with its reason) where it cannot run."""
    return pytest.param(impl, marks=needs_triton_backend) if impl == "triton" else impl


@pytest.mark.parametrize("impl", [_impl_param("torch"), _impl_param("triton")])
@pytest.mark.parametrize("core_kind", ["diag", "block", "lowrank"])
def test_a_magnitude_row_whose_scale_underflows_to_zero_leaves_every_gradient_exact(
    impl: str, core_kind: str
) -> None:
    """OER with one logit far below the rest: that row's fp32 scale is exactly 0 (in float64 ≈ 1e-87). The
    logits' gradient comes from ``Σ_t g ⊙ (y − b) = s ⊙ ∂L/∂s``, never from ``∂L/∂s`` itself (``0/0`` on that
    row, which the softmax's sum would spread to every logit): every gradient is finite and matches the
    float64 torch path (gradchecked above, where no scale underflows), the logits' and the input's also the
    float64 dense reference."""
    from jora_ops import Magnitude, compute_scale

    n, m, temperature, eps = 9, 7, 0.5, 1e-8
    case = make_case(core_kind, n, m, seed=5, dtype=torch.float32, with_scale=False)
    device = "cuda" if impl == "triton" and torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(n, generator=gen)
    logits[4] = -200.0  # w/T = -400: its softmax weight exp(-400) underflows in fp32
    nu = case.weight.norm(dim=1)
    assert compute_scale("oer_softmax", nu, (nu**2).sum(), logits, temperature, eps)[4] == 0.0
    x, grad = torch.randn(3, 5, m, generator=gen), torch.randn(3, 5, n, generator=gen)
    leaves = {"x": x, "logits": logits, "theta_L": case.theta_L, "theta_R": case.theta_R, "bias": case.bias}
    leaves |= {f"core{i}": p for i, p in enumerate(case.params)}

    def gradients(dtype: torch.dtype, device: str, impl: str) -> dict[str, torch.Tensor]:
        t = {k: v.to(device, dtype).clone().requires_grad_() for k, v in leaves.items()}
        nu_t = nu.to(device, dtype)
        out = jora_linear(
            t["x"], case.weight.to(device, dtype), t["bias"], core=case.spec,
            core_params=tuple(t[f"core{i}"] for i in range(len(case.params))),
            core_offset=tuple(o.to(device, dtype) for o in case.offset), pairs_L=case.pairs_L.to(device),
            theta_L=t["theta_L"], pairs_R=case.pairs_R.to(device), theta_R=t["theta_R"],
            magnitude=Magnitude("oer_softmax", t["logits"], nu_t, (nu_t**2).sum(), temperature, eps), impl=impl,
        )  # fmt: skip
        out.backward(grad.to(device, dtype))
        return {k: v.grad.cpu() for k, v in t.items()}

    ours = gradients(torch.float32, device, impl)
    expected = gradients(torch.float64, "cpu", "torch")
    for key, value in ours.items():
        assert torch.isfinite(value).all(), key
        assert rel_error(value, expected[key]) < 1e-5, key
    dense = {k: leaves[k].double().requires_grad_() for k in ("x", "logits")}
    reference = Case(
        case.spec, tuple(p.double() for p in case.params), tuple(o.double() for o in case.offset), case.pairs_L,
        case.theta_L.double(), case.pairs_R, case.theta_R.double(), case.weight.double(), case.bias.double(),
        oer_scale(nu, dense["logits"], temperature, eps), case.rotation_param,
    )  # fmt: skip
    reference.reference(dense["x"]).backward(grad.double())
    for key, leaf in dense.items():
        assert rel_error(ours[key], leaf.grad) < 1e-5, key


def test_a_given_scale_with_an_exact_zero_has_no_finite_gradient_there_and_exact_ones_elsewhere() -> None:
    """The documented limit of a given ``scale``: its gradient comes from the kept output as
    ``Σ_t g ⊙ (y − b) / s``, not finite exactly where ``s`` is 0 (a rounding residue, or 0, over 0); every
    other entry and the input's gradient match the float64 dense reference."""
    case = make_case("diag", 6, 5, seed=8)
    scale = case.scale.clone()
    scale[2] = 0.0
    case.scale = scale.requires_grad_()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, 6, dtype=torch.float64)
    jora_linear(x, case.weight, case.bias, impl="torch", **case.kwargs()).backward(grad)
    ours_scale, ours_x = case.scale.grad, x.grad
    case.scale.grad, x.grad = None, None
    case.reference(x).backward(grad)
    assert not torch.isfinite(ours_scale[2]) and torch.isfinite(ours_scale[[0, 1, 3, 4, 5]]).all()
    keep = torch.arange(6) != 2
    torch.testing.assert_close(ours_scale[keep], case.scale.grad[keep], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours_x, x.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", [_impl_param("torch"), _impl_param("triton")])
@pytest.mark.parametrize("core_kind", ["diag", "block", "lowrank"])
def test_a_double_backward_raises_instead_of_returning_wrong_gradients(impl: str, core_kind: str) -> None:
    """The fused function's backward (Triton kernels, token sums into reused buffers) is not differentiable
    itself: a second backward through ``create_graph=True`` raises torch's ``once_differentiable`` error (the
    Triton path returned wrong second-order gradients before, the torch path failed inside a sum); the first
    derivatives taken with ``create_graph=True`` still equal the plain ones. ``apply_rotations``' Triton
    function the same."""
    from jora_ops import apply_rotations

    case = make_case(core_kind, 6, 5, seed=31, dtype=torch.float32)
    device = "cuda" if impl == "triton" and torch.cuda.is_available() else "cpu"
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.kwargs().items()}
    kwargs["core_params"] = tuple(p.to(device).requires_grad_() for p in case.params)
    kwargs["core_offset"] = tuple(o.to(device) for o in case.offset)
    x = torch.randn(4, 5, device=device, requires_grad=True)
    weight = case.weight.to(device)

    def loss() -> torch.Tensor:
        return jora_linear(x, weight, impl=impl, **kwargs).square().sum()

    (plain,) = torch.autograd.grad(loss(), x)
    (first,) = torch.autograd.grad(loss(), x, create_graph=True)
    torch.testing.assert_close(first.detach(), plain, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        first.square().sum().backward()
    if impl == "triton":
        theta = torch.randn(2, device=device, requires_grad=True)
        rotated = apply_rotations(x, torch.tensor([[0, 3], [1, 4]], device=device), theta, impl="triton")
        (first,) = torch.autograd.grad(rotated.square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable"):
            first.sum().backward()
