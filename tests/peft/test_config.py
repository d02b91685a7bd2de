"""JoraConfig: defaults, validation, legacy flags, JSON round trip, registration."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
from peft.utils import PeftType

import jora_peft
from jora_core import JoraSettings
from jora_peft import JoraConfig
from peft import PeftConfig

SEED_DEFAULTS = {
    "S_L": 32,
    "S_R": 32,
    "k": 8,
    "rotation_param": "cayley",
    "rotation_impl": "auto",
    "selection": "topk_ema",
    "ema_beta": 0.98,
    "warmup_steps": 0,
    "warmup_ratio": 0.0,
    "core": "diag",
    "zero_init_core": False,
    "magnitude": "oer_softmax",
    "ecd_alpha": 0.5,
    "oer_temperature": 1.0,
    "inference_mode": False,
    "init_weights": True,
}


def test_seed_defaults_and_peft_type() -> None:
    config = JoraConfig()
    for name, value in SEED_DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert config.peft_type == PeftType.JORA == "JORA"
    assert PeftType.JORA.value == PeftType.JORA.name == "JORA"


def test_every_spec_knob_is_a_config_field() -> None:
    names = {f.name for f in dataclasses.fields(JoraConfig)}
    assert set(JoraSettings.field_names()) <= names
    assert {"target_modules", "exclude_modules", "modules_to_save", "inference_mode"} <= names


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("core", "dense", "diag"),
        ("magnitude", "softmax", "oer_softmax"),
        ("selection", "greedy", "topk_ema"),
        ("rotation_param", "euler", "cayley"),
        ("rotation_impl", "cuda", "auto"),
        ("pairing_strategy", "zigzag", "high_low"),
        ("ecd_alpha", 1.0, r"\[0, 1\)"),
        ("S_L", -1, ">= 0"),
        ("k", -1, ">= 0"),
        ("ema_beta", 1.5, r"\[0, 1\)"),
        ("oer_temperature", 0, "> 0"),
        ("update_interval", 0, ">= 1"),
        ("block_size", 0, ">= 1"),
        ("lowrank_r", 0, ">= 1"),
        ("warmup_ratio", -0.1, r"\[0, 1\]"),
        ("seed", "x", "int"),
    ],
)
def test_invalid_fields_are_named_with_allowed_values(field: str, value, allowed: str) -> None:
    with pytest.raises(ValueError, match=rf"{field}.*{allowed}|{allowed}.*{field}"):
        JoraConfig(**{field: value})


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("use_ecd", True, {"magnitude": "ecd_tanh"}),
        ("use_ecd", False, {"magnitude": "none"}),
        ("ablate_ecd", True, {"magnitude": "none"}),
        ("use_triton", False, {"rotation_impl": "torch"}),
        ("use_triton", True, {"rotation_impl": "triton"}),
        ("use_cayley", False, {"rotation_param": "angle"}),
        ("use_cayley", True, {"rotation_param": "cayley"}),
    ],
)
def test_legacy_flags_map_with_a_deprecation_warning(flag: str, value: bool, expected: dict) -> None:
    with pytest.warns(DeprecationWarning, match=flag):
        config = JoraConfig(**{flag: value})
    for name, wanted in expected.items():
        assert getattr(config, name) == wanted
    assert getattr(config, flag) is None  # not written back to JSON


def test_json_round_trip(tmp_path) -> None:
    config = JoraConfig(
        target_modules=["q_proj", "v_proj"],
        S_L=4,
        S_R=6,
        k=2,
        core="block",
        block_size=8,
        lowrank_alpha=3.0,
        magnitude="ecd_tanh",
        ecd_temp_annealing=True,
        pairing_strategy="high_low",
        use_gumbel=True,
        seed=5,
    )
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, JoraConfig)
    assert loaded.to_dict() == config.to_dict()


def test_registration_is_idempotent_and_exposed_through_peft() -> None:
    importlib.reload(jora_peft)
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    from peft import JoraConfig as FromPeft
    from peft import JoraModel as ModelFromPeft

    assert FromPeft.__name__ == "JoraConfig" and ModelFromPeft.__name__ == "JoraModel"
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.JORA].__name__ == "JoraConfig"
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.JORA].__name__ == "JoraModel"
    assert list(PeftType).count(PeftType.JORA) == 1
