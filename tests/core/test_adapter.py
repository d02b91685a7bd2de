"""The per-adapter JORA module (JORA.md §4–§8: invariants 1, 3, 4, 5, 6, 9)."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.checkpoint import checkpoint

from jora_core import JoraAdapter, JoraLinear, JoraSettings
from jora_ops import _dispatch
from jora_reference import adapter_dense_weight, rel_error
from layer_factory import make_layer

KNOBS = st.fixed_dictionaries(
    {
        "S_L": st.integers(0, 6),
        "S_R": st.integers(0, 6),
        "k": st.integers(1, 4),
        "core": st.sampled_from(["diag", "block", "lowrank"]),
        "block_size": st.integers(1, 4),
        "lowrank_r": st.integers(1, 3),
        "zero_init_core": st.booleans(),
        "magnitude": st.sampled_from(["oer_softmax", "ecd_tanh", "none"]),
        "rotation_param": st.sampled_from(["cayley", "angle"]),
        "selection": st.sampled_from(["topk_ema", "random", "none"]),
        "pairing_strategy": st.sampled_from(["consecutive", "high_low"]),
        "oer_temperature": st.floats(0.1, 5),
        "ecd_temperature": st.floats(0.1, 5),
        "ecd_alpha": st.floats(0, 0.9),
    }
)


def randomize(adapter: JoraAdapter, seed: int = 0) -> None:
    """Random θ, core and logits on top of the adapter's current pairs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def adapt(
    layer_kind: str, n_in: int, n_out: int, dtype=torch.float32, **knobs
) -> tuple[torch.nn.Module, JoraLinear]:
    base = make_layer(layer_kind, n_in, n_out, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # S clamping on tiny layers
        return base, JoraLinear(base, seed=123, **knobs)


@given(knobs=KNOBS, init_weights=st.booleans(), seed=st.integers(0, 2**40))
def test_the_adapter_is_a_function_of_base_weight_knobs_and_seed(
    knobs, init_weights: bool, seed: int
) -> None:
    """Every random draw at creation comes from the per-layer seed: two creations with torch's global generator
    in different states are identical (the core's init included), and another seed gives another init."""
    knobs = knobs | {"init_weights": init_weights}
    base = make_layer("linear", 10, 12, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # S clamping on tiny layers
        torch.manual_seed(1)
        first = JoraLinear(base, seed=seed, **knobs).adapter.state_dict()
        torch.manual_seed(2)
        torch.rand(100)
        second = JoraLinear(base, seed=seed, **knobs).adapter.state_dict()
        other = JoraLinear(base, seed=seed + 1, **knobs).adapter.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first), knobs
    random_core = knobs["core"] == "lowrank" or not (knobs["zero_init_core"] and init_weights)
    core_keys = [key for key in first if key.startswith("core_") and not key.endswith("_init")]
    if random_core:
        assert any(not torch.equal(first[key], other[key]) for key in core_keys)


@given(
    knobs=KNOBS,
    layer_kind=st.sampled_from(["linear", "conv1d"]),
    shape=st.sampled_from([(8, 8), (6, 10), (11, 5)]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_identity_at_init(knobs, layer_kind, shape, dtype) -> None:
    base, layer = adapt(layer_kind, *shape, dtype=dtype, **knobs)
    adapter = layer.adapter
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    x = torch.randn(4, 3, shape[0], dtype=dtype)
    expected = base(x)
    out = layer(x)
    assert out.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert rel_error(out, expected) < tol
    assert adapter.compute_delta(x).abs().max() == 0
    torch.testing.assert_close(adapter.scale(), torch.ones(shape[1]))


@given(
    knobs=KNOBS,
    layer_kind=st.sampled_from(["linear", "conv1d"]),
    shape=st.sampled_from([(8, 8), (6, 10), (11, 5)]),
    seed=st.integers(0, 1000),
)
def test_forward_matches_dense_reference_and_merge(knobs, layer_kind, shape, seed) -> None:
    base, layer = adapt(layer_kind, *shape, **knobs)
    adapter = layer.adapter
    adapter.init_random_pairs()
    randomize(adapter, seed)
    x = torch.randn(5, shape[0])
    reference = x.double() @ adapter_dense_weight(adapter, base.weight.detach()).T + base.bias.double()
    out = layer(x)
    assert rel_error(out, reference) < 1e-5
    # delta_weight is the exact dense ΔW in the base layout; merge reproduces the forward
    delta = adapter.delta_weight()
    assert delta.shape == base.weight.shape
    delta_nm = delta if layer_kind == "linear" else delta.T
    assert rel_error(x @ delta_nm.T, adapter.compute_delta(x)) < 1e-5
    original = base.weight.detach().clone()
    layer.merge()
    assert rel_error(base(x), out) < 1e-5
    layer.unmerge()
    assert rel_error(base.weight, original) < 1e-5


@pytest.mark.parametrize("layer_kind", ["linear", "conv1d"])
def test_unmerge_refuses_a_row_whose_scale_is_zero(layer_kind: str) -> None:
    """An OER logit far below the rest makes its row's fp32 scale exactly 0: the merge is still exact (the
    merged row is 0, the adapted output there is the bias), but it erased that row of ``W``: ``unmerge``
    raises a ``ValueError`` naming the layer and the row and leaves the merged weight as it was."""
    base, layer = adapt(layer_kind, 6, 8, magnitude="oer_softmax")
    randomize(layer.adapter, 3)
    with torch.no_grad():
        layer.adapter.mag_logits[5] = -1e4
    assert layer.adapter.scale()[5] == 0.0
    x = torch.randn(4, 6)
    adapted = layer(x)
    layer.merge()
    assert rel_error(layer(x), adapted) < 1e-5
    merged = base.weight.detach().clone()
    with pytest.raises(
        ValueError, match=r"JORA layer '(Linear|Conv1D)': the row scale is 0 at output rows \[5\]"
    ):
        layer.unmerge()
    assert torch.equal(base.weight, merged) and layer.merged


@pytest.mark.parametrize("default_dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("core", ["diag", "block", "lowrank"])
def test_the_adapter_is_fp32_and_identical_under_any_default_dtype(default_dtype, core: str) -> None:
    """Under ``torch.set_default_dtype(torch.bfloat16)`` (or fp64) an adapter is created with the same fp32
    parameters and buffers, random init included, as under the fp32 default (its statistics buffers once
    followed the default dtype, and training failed at its first step), and it trains the same."""
    knobs = {"S_L": 3, "S_R": 3, "k": 1, "core": core, "block_size": 4, "init_weights": False}
    base = make_layer("linear", 12, 10, torch.float32)
    x, grad = torch.randn(4, 12), torch.randn(4, 10)
    runs = []
    for dtype in (torch.float32, default_dtype):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            torch.manual_seed(0)  # the random core's draws
            layer = JoraLinear(base, seed=5, warmup_steps=0, **knobs)
            layer(x).backward(grad)
            state = {k: v.detach().clone() for k, v in layer.adapter.state_dict().items()}
            state |= {f"{k}.grad": p.grad for k, p in layer.adapter.named_parameters()}
        finally:
            torch.set_default_dtype(previous)
        runs.append(state)
    reference, other = runs
    assert reference.keys() == other.keys()
    for key, value in reference.items():
        assert other[key].dtype == value.dtype and torch.equal(other[key], value), key
    assert all(v.dtype == torch.float32 for v in reference.values() if v.is_floating_point())


def test_selection_rounds_fill_exactly_S_disjoint_pairs_then_freeze() -> None:
    _, layer = adapt("linear", 16, 12, S_L=5, S_R=7, k=2, core="diag", zero_init_core=False)
    adapter = layer.adapter
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.05)
    history = []
    for _ in range(6):
        layer(torch.randn(8, 16)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
        history.append((adapter.active_count("L"), adapter.active_count("R")))
    assert history[:4] == [(2, 2), (4, 4), (5, 6), (5, 7)]
    for side, slots, dim in (("L", 5, 12), ("R", 7, 16)):
        pairs = getattr(adapter, f"pairs_{side}")
        assert (pairs >= 0).all() and (pairs < dim).all()
        assert pairs.flatten().unique().numel() == 2 * slots
        assert adapter.is_frozen(side)
    assert adapter.current_step == 6 and int(adapter.state_dict()["step"]) == 6  # written when saved
    # frozen sides collect nothing more
    ema_before = adapter.ema_L.clone(), adapter.ema_R.clone()
    layer(torch.randn(8, 16)).sum().backward()
    torch.testing.assert_close(adapter.ema_L, ema_before[0])
    torch.testing.assert_close(adapter.ema_R, ema_before[1])


def test_topk_selection_picks_the_high_energy_input_coordinates() -> None:
    _, layer = adapt("linear", 12, 8, S_L=0, S_R=2, k=2, magnitude="none")
    x = torch.randn(64, 12) * 0.01
    x[:, [3, 7, 9, 10]] *= 1000
    layer(x).sum().backward()
    assert sorted(layer.adapter.pairs_R.flatten().tolist()) == [3, 7, 9, 10]


def test_a_selection_round_never_changes_the_function() -> None:
    _, layer = adapt("conv1d", 10, 14, S_L=6, S_R=4, k=2, core="block", block_size=3, magnitude="ecd_tanh")
    adapter = layer.adapter
    randomize(adapter, 3)
    x = torch.randn(6, 10)
    with torch.no_grad():
        adapter.ema_L.copy_(torch.rand(14))
        adapter.ema_R.copy_(torch.rand(10))
    for _ in range(4):
        before = layer(x).detach()
        adapter.update_step()
        after = layer(x).detach()
        torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert adapter.is_frozen("L") and adapter.is_frozen("R")


def test_output_statistic_nonzero_after_one_backward_and_step_per_backward() -> None:
    _, layer = adapt("linear", 9, 7, S_L=3, S_R=3, k=1, update_interval=100)
    adapter = layer.adapter
    layer(torch.randn(4, 9)).pow(2).sum().backward()
    assert adapter.ema_L.abs().sum() > 0 and adapter.ema_R.abs().sum() > 0
    assert adapter.current_step == 1
    # gradient accumulation: each backward call is one step
    for _ in range(3):
        layer(torch.randn(4, 9)).sum().backward()
    assert adapter.current_step == 4
    # no step without a backward, none in eval/no_grad
    layer(torch.randn(4, 9))
    with torch.no_grad():
        layer(torch.randn(4, 9))
    assert adapter.current_step == 4


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_statistics_not_double_counted_under_checkpointing(use_reentrant: bool) -> None:
    beta = 0.9
    _, layer = adapt("linear", 9, 7, S_L=3, S_R=3, k=1, ema_beta=beta, update_interval=100)
    x = torch.randn(5, 9, requires_grad=True)
    grad = torch.randn(5, 7)
    checkpoint(layer, x, use_reentrant=use_reentrant).backward(grad)
    adapter = layer.adapter
    torch.testing.assert_close(adapter.ema_R, (1 - beta) * x.detach().square().mean(0))
    torch.testing.assert_close(adapter.ema_L, (1 - beta) * grad.square().mean(0))
    assert adapter.current_step == 1


needs_triton_backend = pytest.mark.skipif(
    not (_dispatch.triton_available() and (_dispatch.triton_interpreting() or torch.cuda.is_available())),
    reason="needs triton with TRITON_INTERPRET=1 (CI) or a CUDA device",
)


@pytest.mark.parametrize(
    "impl",
    [
        "torch",
        pytest.param("triton", marks=needs_triton_backend),
    ],
)
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_step_with_non_finite_gradients_leaves_that_sides_statistic_unchanged(
    impl: str, bad: float
) -> None:
    """An overflowed step (fp16 loss scaling; the GradScaler skips it) must not make the EMA inf/NaN for good.
    On the Triton path the kernels collect the statistics (on CUDA the EMA update is compiled)."""
    beta = 0.9
    device = "cuda" if impl == "triton" and torch.cuda.is_available() else "cpu"
    _, layer = adapt(
        "linear", 9, 7, S_L=3, S_R=3, k=1, ema_beta=beta, update_interval=100, rotation_impl=impl
    )
    layer.to(device)
    adapter = layer.adapter
    x1 = torch.randn(5, 9, device=device)
    overflowed = torch.randn(5, 7, device=device)
    overflowed[int(torch.randint(5, ())), int(torch.randint(7, ()))] = bad
    layer(x1).backward(overflowed)
    assert torch.equal(adapter.ema_L, torch.zeros(7, device=device))  # skipped, as the optimizer step is
    torch.testing.assert_close(adapter.ema_R, (1 - beta) * x1.square().mean(0))  # the inputs were finite
    x2, grad = torch.randn(5, 9, device=device), torch.randn(5, 7, device=device)
    layer(x2).backward(grad)  # the next finite step counts, with nothing left over from the skipped one
    torch.testing.assert_close(adapter.ema_L, (1 - beta) * grad.square().mean(0))
    torch.testing.assert_close(
        adapter.ema_R, beta * (1 - beta) * x1.square().mean(0) + (1 - beta) * x2.square().mean(0)
    )
    assert adapter.current_step == 2


def _replicas(module: torch.nn.Module, count: int) -> list[torch.nn.Module]:
    """What ``nn.DataParallel``'s ``replicate`` makes, on the CPU: per replica a ``_replicate_for_data_parallel``
    copy of every module, its parameters autograd views of the originals (gradients flow back), its buffers
    those of the original for the first replica and copies for the others (the other devices')."""
    modules = list(module.modules())
    index = {m: i for i, m in enumerate(modules)}
    copies = [[m._replicate_for_data_parallel() for m in modules] for _ in range(count)]
    for i, original in enumerate(modules):
        for j, replica in enumerate(c[i] for c in copies):
            for key, child in original._modules.items():
                assert child is not None
                setattr(replica, key, copies[j][index[child]])
            for key, param in original._parameters.items():
                if param is not None:
                    setattr(replica, key, param.view_as(param))
            for key, buffer in original._buffers.items():
                if buffer is not None:
                    replica._buffers[key] = buffer if j == 0 else buffer.clone()
    return [c[0] for c in copies]


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton_backend)])
def test_data_parallel_replicas_train_like_the_module_on_the_whole_batch(impl: str) -> None:
    """``nn.DataParallel`` (the HF Trainer's wrapper when several GPUs are visible without torchrun) runs one
    replica per device on a share of the batch: each replica's core computes with the replica's own tensors,
    and every replica's statistics reach the adapter, so the EMAs, the pairs chosen and the gradients are
    those of the module on the whole batch (before the fix the other replicas' statistics were lost)."""
    device = "cuda" if impl == "triton" and torch.cuda.is_available() else "cpu"
    _, layer = adapt("linear", 9, 14, S_L=4, S_R=3, k=1, ema_beta=0.5, update_interval=1, rotation_impl=impl)
    layer.to(device)
    reference = copy.deepcopy(layer)
    optimizers = [
        torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5) for m in (layer, reference)
    ]
    for step in range(4):
        x, grad = torch.randn(8, 9, device=device), torch.randn(8, 14, device=device)
        reference(x).backward(grad)
        replicas = _replicas(layer, 2)
        assert replicas[1].adapter.core.params()[0] is replicas[1].adapter.core_diag
        outputs = [replica(part) for replica, part in zip(replicas, x.chunk(2), strict=True)]
        torch.autograd.backward(outputs, list(grad.chunk(2)))
        ours, theirs = layer.adapter, reference.adapter
        assert ours.current_step == theirs.current_step == step + 1
        torch.testing.assert_close(ours.ema_L, theirs.ema_L)
        torch.testing.assert_close(ours.ema_R, theirs.ema_R)
        assert torch.equal(ours.pairs_L, theirs.pairs_L) and torch.equal(ours.pairs_R, theirs.pairs_R)
        for (name, param), other in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            if param.grad is not None or other.grad is not None:
                torch.testing.assert_close(param.grad, other.grad, msg=name)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
    assert (ours.pairs_L >= 0).all() and (ours.pairs_R >= 0).all()  # selection ran on the merged statistics


def test_ema_update_interval_skips_steps() -> None:
    _, layer = adapt("linear", 9, 7, S_L=3, S_R=3, k=1, ema_update_interval=2, update_interval=100)
    adapter = layer.adapter
    layer(torch.randn(4, 9)).sum().backward()  # step 0: collected
    after_first = adapter.ema_R.clone()
    layer(torch.randn(4, 9)).sum().backward()  # step 1: skipped
    torch.testing.assert_close(adapter.ema_R, after_first)
    layer(torch.randn(4, 9)).sum().backward()  # step 2: collected
    assert not torch.equal(adapter.ema_R, after_first)


def test_warmup_grows_the_allowance() -> None:
    _, layer = adapt("linear", 32, 32, S_L=8, S_R=8, k=8, warmup_steps=4)
    counts = []
    for _ in range(5):
        layer(torch.randn(4, 32)).sum().backward()
        counts.append(layer.adapter.active_count("R"))
    assert counts == [2, 4, 6, 8, 8]


def test_temperature_annealing_moves_T_without_changing_the_function_at_zero_logits() -> None:
    _base, layer = adapt("linear", 8, 6, ecd_temp_annealing=True, ecd_temp_start=2.0, ecd_temp_end=0.5)
    adapter = layer.adapter
    adapter.set_total_steps(4)
    x = torch.randn(3, 8)
    with torch.no_grad():
        adapter.core.diag.add_(0.3)  # non-zero delta, zero logits
    before = layer(x).detach()
    temperatures = []
    for _ in range(4):
        layer(x).sum().backward()
        temperatures.append(float(adapter.temperature))
    assert temperatures == pytest.approx([1.625, 1.25, 0.875, 0.5])
    with torch.no_grad():
        adapter.theta_L.zero_()
        adapter.theta_R.zero_()
        adapter.core.diag.copy_(adapter.core.diag_init + 0.3)
    torch.testing.assert_close(layer(x), before)


@pytest.mark.parametrize("selection", ["topk_ema", "random"])
def test_state_dict_round_trip_restores_outputs_and_later_selection(selection: str) -> None:
    knobs = {"S_L": 6, "S_R": 6, "k": 2, "selection": selection, "use_gumbel": True, "warmup_ratio": 0.5}
    torch.manual_seed(0)
    _, layer = adapt("linear", 16, 16, **knobs)
    layer.adapter.set_total_steps(12)
    batches = [torch.randn(4, 16) for _ in range(8)]
    for batch in batches[:3]:
        layer(batch).pow(2).sum().backward()
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)

    _, restored = adapt("linear", 16, 16, **knobs)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer))
    restored.base_layer.load_state_dict(layer.base_layer.state_dict())
    x = torch.randn(3, 16)
    torch.testing.assert_close(restored(x), layer(x))
    assert restored.adapter.current_step == 3
    for batch in batches[3:]:
        layer(batch).pow(2).sum().backward()
        restored(batch).pow(2).sum().backward()
    assert torch.equal(restored.adapter.pairs_L, layer.adapter.pairs_L)
    assert torch.equal(restored.adapter.pairs_R, layer.adapter.pairs_R)
    assert layer.adapter.is_frozen("R")


def test_slots_are_clamped_with_a_warning_naming_the_layer() -> None:
    with pytest.warns(UserWarning, match=r"'blocks.0.q': S_R=9 exceeds ⌊6/2⌋ = 3"):
        adapter = JoraAdapter(torch.randn(10, 6), "linear", JoraSettings(S_L=2, S_R=9), name="blocks.0.q")
    assert adapter.S_R == 3 and adapter.theta_R.shape == (3,)


def test_selection_none_fixes_random_pairs_at_creation() -> None:
    _, layer = adapt("linear", 12, 10, S_L=3, S_R=4, selection="none")
    adapter = layer.adapter
    assert adapter.is_frozen("L") and adapter.is_frozen("R")
    pairs = adapter.pairs_R.clone()
    layer(torch.randn(2, 12)).sum().backward()
    assert torch.equal(adapter.pairs_R, pairs) and adapter.ema_R.abs().sum() == 0
    again = JoraAdapter(layer.base_layer.weight, "linear", adapter.settings, seed=123)
    assert torch.equal(again.pairs_R, pairs)  # per-layer seed


def test_state_summary() -> None:
    _, layer = adapt("linear", 12, 10, S_L=3, S_R=4, k=2)
    layer(torch.randn(2, 12)).sum().backward()
    state = layer.adapter.state_summary()
    assert state["pairs_L"].shape == (2, 2) and state["theta_R"].shape == (2,)
    assert state["frozen_L"] is False and state["step"] == 1
    assert state["scale"].shape == (10,)


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("S_L", -1),
        ("k", -2),
        ("core", "dense"),
        ("magnitude", "softmax"),
        ("selection", "greedy"),
        ("rotation_param", "euler"),
        ("rotation_impl", "cuda"),
        ("ecd_alpha", 1.0),
        ("ema_beta", 1.0),
        ("oer_temperature", 0.0),
        ("ecd_temperature", -1.0),
        ("warmup_ratio", 2.0),
        ("update_interval", 0),
        ("ema_update_interval", 0),
        ("pairing_strategy", "zigzag"),
        ("block_size", 0),
        ("lowrank_r", 0),
        ("gumbel_tau", 0.0),
        ("eps", 0.0),
        ("lowrank_alpha", -1.0),
        ("warmup_steps", -1),
    ],
)
def test_bad_knobs_raise_value_error_naming_the_knob(knob: str, value) -> None:
    with pytest.raises(ValueError, match=knob):
        JoraSettings(**{knob: value})


def test_k_zero_needs_selection_none() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        JoraSettings(k=0)
    JoraSettings(k=0, selection="none")


def test_bad_init_random_pairs_argument() -> None:
    _, layer = adapt("linear", 12, 10, S_L=3, S_R=4)
    with pytest.raises(ValueError, match="n_pairs_L"):
        layer.adapter.init_random_pairs(n_pairs_L=4)


def test_a_failed_backward_does_not_block_later_steps() -> None:
    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("boom")

    _, layer = adapt("linear", 9, 7, S_L=3, S_R=3, k=1)
    x = torch.randn(4, 9, requires_grad=True)
    with pytest.raises(RuntimeError, match="boom"):
        layer(Boom.apply(x)).sum().backward()  # the layer's backward ran, the pass failed later
    assert layer.adapter.current_step == 0
    layer(torch.randn(4, 9)).sum().backward()
    layer(torch.randn(4, 9)).sum().backward()
    assert layer.adapter.current_step == 2
