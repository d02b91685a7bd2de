"""Training loops: HF Trainer with gradient accumulation, the callback, checkpointing and resuming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainingArguments

from jora_peft import JoraConfig, JoraTrainerCallback, iter_jora_layers, selection_progress
from model_factory import MODELS, token_batch
from peft import get_peft_model

KNOBS = {"S_L": 4, "S_R": 4, "k": 1, "warmup_ratio": 0.5}


class TokenDataset(torch.utils.data.Dataset):
    """A small fixed set of random sequences (memorisable, so the loss must go down)."""

    def __init__(self, size: int = 16, length: int = 12) -> None:
        self.ids = torch.cat([token_batch(1, length, seed=s) for s in range(size)])

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def make_trainer(model, output_dir: Path, max_steps: int = 8, **overrides) -> Trainer:
    overrides.setdefault("save_strategy", "no")
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=max_steps,
        learning_rate=2e-2,
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        **overrides,
    )
    return Trainer(model=model, args=args, train_dataset=TokenDataset(), callbacks=[JoraTrainerCallback()])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_trainer_with_gradient_accumulation(arch: str, tmp_path: Path) -> None:
    build, targets = MODELS[arch]
    model = get_peft_model(build(), JoraConfig(target_modules=targets, **KNOBS))
    trainer = make_trainer(model, tmp_path)
    trainer.train()
    state = model.jora_state()
    assert state
    for name, entry in state.items():
        assert entry["step"] == 16, name  # 8 optimizer steps × 2 micro-batches = 16 backward calls
        assert entry["frozen_L"] and entry["frozen_R"], name
        assert entry["pairs_L"].shape == (4, 2) and entry["pairs_R"].shape == (4, 2)
        for key in ("pairs_L", "pairs_R"):
            assert entry[key].flatten().unique().numel() == 8
    adapters = [layer.jora_adapters["default"] for _, layer in iter_jora_layers(model)]
    # the callback sets max_steps × gradient_accumulation_steps
    assert all(int(a.total_steps) == 16 for a in adapters)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    assert any(h.get("jora/active_pair_fraction") == 1.0 for h in trainer.state.log_history)
    assert selection_progress(model) == {"jora/active_pair_fraction": 1.0, "jora/frozen_side_fraction": 1.0}


def test_trainer_bf16_mixed_precision(tmp_path: Path) -> None:
    """``bf16=True`` on an fp32 model (the Trainer's autocast): the adapted layers train, the loss goes down,
    the adapter stays fp32 and the selection completes."""
    build, targets = MODELS["llama"]
    model = get_peft_model(build(), JoraConfig(target_modules=targets, core="lowrank", **KNOBS))
    trainer = make_trainer(model, tmp_path, bf16=True)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert selection_progress(model) == {"jora/active_pair_fraction": 1.0, "jora/frozen_side_fraction": 1.0}


def test_gradient_checkpointing_counts_each_backward_once(tmp_path: Path) -> None:
    build, targets = MODELS["llama"]
    results = []
    for checkpointing in (False, True):
        model = get_peft_model(build(), JoraConfig(target_modules=targets, **KNOBS))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ids = token_batch(4, 12)
        model(ids, labels=ids).loss.backward()
        adapters = [layer.jora_adapters["default"] for _, layer in iter_jora_layers(model)]
        results.append([(a.current_step, a.ema_L.clone(), a.ema_R.clone()) for a in adapters])
    for (step_a, ema_l_a, ema_r_a), (step_b, ema_l_b, ema_r_b) in zip(*results, strict=True):
        assert step_a == step_b == 1
        torch.testing.assert_close(ema_l_b, ema_l_a)
        torch.testing.assert_close(ema_r_b, ema_r_a)
        assert ema_l_a.abs().sum() > 0


def test_resuming_mid_warmup_continues_the_same_selection(tmp_path: Path) -> None:
    build, targets = MODELS["llama"]
    knobs = KNOBS | {"warmup_ratio": 1.0, "S_L": 8, "S_R": 8}

    full = get_peft_model(build(), JoraConfig(target_modules=targets, **knobs))
    make_trainer(full, tmp_path / "full").train()

    first = get_peft_model(build(), JoraConfig(target_modules=targets, **knobs))
    make_trainer(first, tmp_path / "run", save_strategy="steps", save_steps=4).train()
    resumed = get_peft_model(build(), JoraConfig(target_modules=targets, **knobs))
    trainer = make_trainer(resumed, tmp_path / "run")
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))

    expected, got = full.jora_state(), resumed.jora_state()
    for name, entry in expected.items():
        assert got[name]["step"] == entry["step"] == 16
        assert torch.equal(got[name]["pairs_R"], entry["pairs_R"]), name
        assert torch.equal(got[name]["pairs_L"], entry["pairs_L"]), name
        torch.testing.assert_close(got[name]["theta_R"], entry["theta_R"])
