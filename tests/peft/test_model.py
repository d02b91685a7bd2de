"""Model-level behaviour on tiny Llama (GQA: rectangular k/v) and GPT-2 (Conv1D) built from configs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from jora_core import JoraAdapter
from jora_peft import JoraConfig, JoraLayer
from model_factory import MODELS, tiny_llama, token_batch
from peft import get_peft_model

SMALL = {"S_L": 4, "S_R": 4, "k": 2}


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def random_model(arch: str, dtype=torch.float64, **knobs):
    build, targets = MODELS[arch]
    base = build(dtype=dtype)
    reference = copy.deepcopy(base)
    model = get_peft_model(base, JoraConfig(target_modules=targets, init_weights=False, **(SMALL | knobs)))
    return reference, model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"core": "block", "block_size": 4, "magnitude": "ecd_tanh", "zero_init_core": True},
        {"core": "lowrank", "lowrank_r": 3, "magnitude": "none", "rotation_param": "angle"},
        {"selection": "random", "core": "lowrank", "zero_init_core": True},
        {"selection": "none", "S_L": 40, "S_R": 40},
    ],
)
@pytest.mark.filterwarnings("ignore:JORA layer .* exceeds:UserWarning")
def test_identity_at_init(arch: str, knobs: dict) -> None:
    build, targets = MODELS[arch]
    base = build()
    ids = token_batch()
    expected = logits(base, ids)
    model = get_peft_model(base, JoraConfig(target_modules=targets, **(SMALL | knobs)))
    torch.testing.assert_close(logits(model, ids), expected, rtol=1e-5, atol=1e-5)
    assert any(isinstance(m, JoraLayer) for m in model.modules())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("core", ["diag", "block", "lowrank"])
def test_merge_equals_forward_and_unmerge_restores(arch: str, core: str) -> None:
    reference, model = random_model(arch, core=core, magnitude="oer_softmax")
    ids = token_batch()
    unmerged = logits(model, ids)
    assert (unmerged - logits(reference, ids)).abs().max() > 1e-3  # the random init is not the identity
    original = {k: v.clone() for k, v in model.state_dict().items() if "base_layer.weight" in k}
    model.merge_adapter()
    torch.testing.assert_close(logits(model, ids), unmerged, rtol=1e-10, atol=1e-10)
    model.unmerge_adapter()
    for key, value in original.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits(model, ids), unmerged, rtol=1e-10, atol=1e-10)
    merged_model = model.merge_and_unload()
    assert not any(isinstance(m, JoraLayer) for m in merged_model.modules())
    torch.testing.assert_close(logits(merged_model, ids), unmerged, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_unmerge_refuses_rows_that_merging_erased_and_changes_nothing(arch: str) -> None:
    """A layer whose OER scale underflowed to 0 on a row merges exactly (that row of the merged weight is 0, as
    the adapted layer's output there is the bias), but cannot be unmerged: ``unmerge_adapter`` raises a
    ``ValueError`` naming the layer and the rows before it writes any weight of any layer (the layer is the
    last one); ``merge_and_unload`` still gives the adapted model."""
    _, model = random_model(arch, magnitude="oer_softmax")
    layer = [m for m in model.modules() if isinstance(m, JoraLayer)][-1]
    with torch.no_grad():
        layer.jora_adapters["default"].mag_logits[3] = -1e4  # its softmax weight exp(-1e4 / T) underflows
    assert layer.jora_adapters["default"].scale()[3] == 0.0
    ids = token_batch()
    adapted = logits(model, ids)
    model.merge_adapter()
    merged = {k: v.clone() for k, v in model.state_dict().items() if "base_layer.weight" in k}
    torch.testing.assert_close(logits(model, ids), adapted, rtol=1e-10, atol=1e-10)
    message = rf"JORA layer {layer.layer_name!r}: the row scale is 0 at output rows \[3\].*cannot be unmerged"
    with pytest.raises(ValueError, match=message):
        model.unmerge_adapter()
    for key, value in merged.items():
        assert torch.equal(model.state_dict()[key], value), key
    torch.testing.assert_close(logits(model.merge_and_unload(), ids), adapted, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_get_delta_weight_and_safe_merge(arch: str) -> None:
    _, model = random_model(arch)
    layer = next(m for m in model.modules() if isinstance(m, JoraLayer))
    weight = layer.get_base_layer().weight.detach().clone()
    delta = layer.get_delta_weight("default")
    layer.merge(safe_merge=True)
    torch.testing.assert_close(layer.get_base_layer().weight, weight + delta)
    layer.unmerge()
    with torch.no_grad():
        layer.jora_adapters["default"].core.params()[0].fill_(float("nan"))
    with pytest.raises(
        ValueError, match=r"NaNs detected in the merged weights\. The adapter default seems to be broken"
    ):
        layer.merge(safe_merge=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_disable_and_unload_give_the_base_model(arch: str) -> None:
    reference, model = random_model(arch)
    ids = token_batch()
    expected = logits(reference, ids)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, ids), expected, rtol=1e-12, atol=1e-12)
    assert (logits(model, ids) - expected).abs().max() > 1e-3
    model.base_model.disable_adapter_layers()
    torch.testing.assert_close(logits(model, ids), expected, rtol=1e-12, atol=1e-12)
    model.base_model.enable_adapter_layers()
    unloaded = model.unload()
    torch.testing.assert_close(logits(unloaded, ids), expected, rtol=1e-12, atol=1e-12)


def test_several_adapters_switch_compose_and_delete() -> None:
    reference, model = random_model("llama")
    _, targets = MODELS["llama"]
    model.add_adapter(
        "second", JoraConfig(target_modules=targets, init_weights=False, core="lowrank", seed=9, **SMALL)
    )
    ids = token_batch()
    out_default = logits(model, ids)
    model.set_adapter("second")
    out_second = logits(model, ids)
    assert (out_default - out_second).abs().max() > 1e-3
    # several active adapters compose like sequential merging
    model.base_model.set_adapter(["default", "second"])
    both = logits(model, ids)
    model.merge_adapter(["default", "second"])
    torch.testing.assert_close(logits(model, ids), both, rtol=1e-10, atol=1e-10)
    model.unmerge_adapter()
    # delete
    model.delete_adapter("second")
    assert all(
        "second" not in layer.jora_adapters for layer in model.modules() if isinstance(layer, JoraLayer)
    )
    model.set_adapter("default")
    torch.testing.assert_close(logits(model, ids), out_default, rtol=1e-12, atol=1e-12)
    assert reference is not None


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_casting_the_model_keeps_every_adapter_tensor_fp32_and_training_runs(arch: str, dtype) -> None:
    """``model.to(dtype)`` after ``get_peft_model`` casts the base weights; every floating parameter, gradient
    and buffer of each JORA adapter keeps dtype fp32 and its exact values (a cast once turned the statistics
    buffers into a dtype the fused function refuses: training failed at the first step). A lossless cast
    (fp64) leaves the adapted model's output unchanged; after any cast a training step updates the adapters
    and keeps them fp32."""
    _, model = random_model(arch, dtype=torch.float32, magnitude="oer_softmax")
    ids = token_batch()
    model.train()
    model(ids, labels=ids).loss.backward()  # gradients exist before the cast
    adapters = [m for m in model.modules() if isinstance(m, JoraAdapter)]
    before = [{k: t.detach().clone() for k, t in _adapter_tensors(a).items()} for a in adapters]
    expected = logits(model, ids)
    model.to(dtype)
    for adapter, saved in zip(adapters, before, strict=True):
        tensors = _adapter_tensors(adapter)
        assert tensors.keys() == saved.keys()
        for key, tensor in tensors.items():
            assert tensor.dtype == saved[key].dtype and torch.equal(tensor, saved[key]), key
    base_weights = [m.get_base_layer().weight for m in model.modules() if isinstance(m, JoraLayer)]
    assert all(w.dtype == dtype for w in base_weights)
    if dtype == torch.float64:
        torch.testing.assert_close(logits(model, ids), expected.double(), rtol=1e-6, atol=1e-6)
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(ids, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    for adapter, saved in zip(adapters, before, strict=True):
        mag_logits = adapter.mag_logits
        assert mag_logits is not None and mag_logits.dtype == torch.float32
        assert not torch.equal(mag_logits, saved["mag_logits"])
        assert adapter.acc_L.dtype == adapter.ema_L.dtype == torch.float32


def _adapter_tensors(adapter: JoraAdapter) -> dict[str, torch.Tensor]:
    """Every parameter, gradient and buffer of ``adapter`` by name (gradients as ``<name>.grad``)."""
    tensors = dict(adapter.named_buffers()) | dict(adapter.named_parameters())
    tensors |= {f"{k}.grad": p.grad for k, p in adapter.named_parameters() if p.grad is not None}
    return tensors


def test_only_adapter_parameters_change_after_an_optimizer_step() -> None:
    base = tiny_llama()
    model = get_peft_model(
        base, JoraConfig(target_modules=MODELS["llama"][1], modules_to_save=["lm_head"], **SMALL)
    )
    before = {k: v.clone() for k, v in model.named_parameters()}
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    assert trainable and all(("jora_" in k) or ("modules_to_save" in k) for k in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    ids = token_batch(4, 16)
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed and changed <= trainable
    assert any("modules_to_save" in k for k in changed)
    assert any("mag_logits" in k for k in changed) and any("core_diag" in k for k in changed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_low_precision_base_with_fp32_adapter(arch: str, dtype: torch.dtype) -> None:
    build, targets = MODELS[arch]
    model = get_peft_model(build(dtype=dtype), JoraConfig(target_modules=targets, **SMALL))
    adapter_params = [p for n, p in model.named_parameters() if "jora_" in n]
    assert adapter_params and all(p.dtype == torch.float32 for p in adapter_params)
    model.train()
    ids = token_batch()
    out = model(ids, labels=ids)
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapter_params if p.requires_grad)


@pytest.mark.parametrize("core", ["diag", "block", "lowrank"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mixed_precision_training_under_autocast(arch: str, core: str) -> None:
    """fp32 model under ``torch.autocast`` (bf16), as ``Trainer(bf16=True)`` runs it: the adapted layers compute
    in bf16 like the frozen ones, the adapter parameters and their gradients stay fp32, the loss is within
    bf16 precision of the fp32 loss, and an optimizer step changes the adapter."""
    build, targets = MODELS[arch]
    config = JoraConfig(target_modules=targets, core=core, block_size=4, init_weights=False, **SMALL)
    model = get_peft_model(build(seed=5), config)
    model.train()
    ids = token_batch()
    fp32_loss = float(model(ids, labels=ids).loss.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    assert out.logits.dtype == torch.bfloat16
    assert abs(float(out.loss.detach()) - fp32_loss) < 2e-2 * abs(fp32_loss)
    out.loss.backward()
    adapter = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert adapter and all(p.dtype == torch.float32 for p in adapter.values())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapter.values())
    assert all(torch.isfinite(p.grad).all() for p in adapter.values())
    before = {n: p.detach().clone() for n, p in adapter.items()}
    torch.optim.SGD(adapter.values(), lr=0.1).step()
    assert any(not torch.equal(p, before[n]) for n, p in adapter.items())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fp16_loss_scaling_overflow_does_not_poison_the_statistics(arch: str) -> None:
    """fp16 autocast with a ``GradScaler`` whose first steps overflow (``Trainer(fp16=True)``): the scaler skips
    those steps, and so do the statistics; the finite steps after them still count, and every EMA stays finite
    (before the fix one overflow made the output side's EMA NaN for good, and selection ranked by index)."""
    build, targets = MODELS[arch]
    config = JoraConfig(target_modules=targets, S_L=4, S_R=4, k=2, update_interval=1000)
    model = get_peft_model(build(seed=7), config)
    model.train()
    adapters = [layer.jora_adapters["default"] for layer in model.modules() if isinstance(layer, JoraLayer)]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    skipped = counted = 0
    while counted < 2:
        assert skipped + counted < 40, "the loss scale never came down to finite gradients"
        ids = token_batch(seed=skipped + counted)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(ids, labels=ids).loss
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        overflowed = scaler.get_scale() < scale
        skipped += overflowed
        counted += not overflowed
        if overflowed and counted == 0:  # nothing finite has reached the statistics yet
            assert all(torch.equal(a.ema_L, torch.zeros_like(a.ema_L)) for a in adapters)
    assert skipped >= 1
    for adapter in adapters:
        for ema in (adapter.ema_L, adapter.ema_R):
            assert torch.isfinite(ema).all() and (ema > 0).any()


class _CastRecorder(TorchDispatchMode):
    """Records ``(source dtype, target dtype, shape)`` of every dtype cast dispatched under it."""

    def __init__(self) -> None:
        super().__init__()
        self.casts: list[tuple[torch.dtype, torch.dtype, tuple[int, ...]]] = []

    def __torch_dispatch__(
        self,
        func: torch._ops.OpOverload,
        types: tuple[type, ...],
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> object:
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and isinstance(out, torch.Tensor):
            self.casts.append((args[0].dtype, out.dtype, tuple(out.shape)))
        return out


@pytest.mark.parametrize("core", ["diag", "lowrank"])
def test_autocast_layer_casts_a_low_precision_input_only_down(core: str) -> None:
    """Under autocast a bf16 input reaches the fused function as is: no fp32 copy of it (PEFT's cast to the
    fp32 base dtype, which autocast would undo), and the output equals that of the round trip exactly."""
    base = nn.Sequential(nn.Linear(24, 20))
    model = get_peft_model(base, JoraConfig(target_modules=["0"], core=core, init_weights=False, **SMALL))
    x = torch.randn(3, 7, 24).bfloat16()
    recorder = _CastRecorder()
    with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
        out = model(x)
    assert (torch.bfloat16, torch.float32, tuple(x.shape)) not in recorder.casts
    with torch.autocast("cpu", dtype=torch.bfloat16):
        round_trip = model(x.float())  # what the layer computed when it cast x up first
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, round_trip)


def test_inference_mode_freezes_everything() -> None:
    model = get_peft_model(
        tiny_llama(), JoraConfig(target_modules=MODELS["llama"][1], inference_mode=True, **SMALL)
    )
    assert not any(p.requires_grad for p in model.parameters())


def test_unsupported_target_is_named() -> None:
    with pytest.raises(
        ValueError, match=r"'model.embed_tokens'.*Embedding.*supported types are torch.nn.Linear"
    ):
        get_peft_model(tiny_llama(), JoraConfig(target_modules=["embed_tokens"], **SMALL))


def test_default_targets_from_architecture() -> None:
    model = get_peft_model(tiny_llama(), JoraConfig(**SMALL))
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, JoraLayer)}
    assert names == {"q_proj", "v_proj"}


def test_jora_state_and_manual_selection_round() -> None:
    model = get_peft_model(tiny_llama(), JoraConfig(target_modules=MODELS["llama"][1], S_L=4, S_R=6, k=3))
    state = model.jora_state()
    assert len(state) == 8
    entry = state["model.layers.0.self_attn.k_proj"]
    assert entry["pairs_L"].shape == (0, 2) and entry["step"] == 0 and not entry["frozen_R"]
    model.jora_update_step()
    entry = model.jora_state()["model.layers.0.self_attn.k_proj"]
    assert entry["pairs_L"].shape == (3, 2) and entry["pairs_R"].shape == (3, 2)
    assert entry["theta_R"].shape == (3,) and entry["scale"].shape == (16,)  # rectangular k_proj: n = 16
    model.jora_update_step()
    entry = model.jora_state()["model.layers.0.self_attn.k_proj"]
    assert entry["frozen_L"] and entry["frozen_R"]
    model.set_total_steps(100)
    model.jora_update_temperature(10, 100)


def test_jora_layer_methods_delegate_to_the_adapter() -> None:
    model = get_peft_model(tiny_llama(), JoraConfig(target_modules=["q_proj"], init_weights=False, **SMALL))
    layer = next(m for m in model.modules() if isinstance(m, JoraLayer))
    x = torch.randn(3, 32)
    adapter = layer.jora_adapters["default"]
    torch.testing.assert_close(layer.compute_delta(x), adapter.compute_delta(x))
    torch.testing.assert_close(layer.maybe_apply_magnitude(x), x * adapter.scale())
    expected = layer.maybe_apply_magnitude(layer.get_base_layer()(x) + layer.compute_delta(x))
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(ValueError, match="adapter 'nope' not found"):
        layer.update_step(adapter_name="nope")
