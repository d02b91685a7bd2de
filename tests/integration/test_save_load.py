"""save → load in a fresh interpreter → identical outputs and identical later selection (invariant 7)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from jora_peft import JoraConfig
from model_factory import MODELS, token_batch
from peft import get_peft_model

TESTS_DIR = Path(__file__).resolve().parents[1]
KNOBS = {
    "S_L": 6,
    "S_R": 6,
    "k": 2,
    "warmup_steps": 6,
    "use_gumbel": True,
    "core": "block",
    "magnitude": "ecd_tanh",
}
STEPS_BEFORE, STEPS_AFTER = 2, 4


def train_steps(model: torch.nn.Module, first: int, count: int) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for step in range(first, first + count):
        ids = token_batch(4, 12, seed=100 + step)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def run_python(
    code: str, tmp_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    env.update(extra_env or {})
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)


CHILD = """
import sys, torch
import jora_peft
from peft import PeftModel
from model_factory import MODELS, token_batch
sys.path.insert(0, {here!r})
from test_save_load import STEPS_AFTER, STEPS_BEFORE, train_steps

build, _ = MODELS[{arch!r}]
model = PeftModel.from_pretrained(
    build(seed=1), {adapter!r}, is_trainable=True, low_cpu_mem_usage={low_cpu_mem_usage!r}
)
assert not any(p.is_meta for p in model.parameters())
with torch.no_grad():
    model.eval()
    logits = model(token_batch(3, 10, seed=7)).logits
train_steps(model, STEPS_BEFORE, STEPS_AFTER)
torch.save({{"logits": logits, "state": model.jora_state()}}, {out!r})
"""


@pytest.mark.parametrize(
    ("arch", "low_cpu_mem_usage"), [("llama", False), ("gpt2", False), ("llama", True), ("gpt2", True)]
)
def test_fresh_process_reload_gives_identical_outputs_and_selection(
    arch: str, low_cpu_mem_usage: bool, tmp_path: Path
) -> None:
    """Also with ``low_cpu_mem_usage=True``: the adapters are created on ``meta`` and PEFT's load assigns them."""
    build, targets = MODELS[arch]
    model = get_peft_model(build(seed=1), JoraConfig(target_modules=targets, **KNOBS))
    train_steps(model, 0, STEPS_BEFORE)
    model.save_pretrained(tmp_path / "adapter")
    model.eval()
    with torch.no_grad():
        expected_logits = model(token_batch(3, 10, seed=7)).logits
    train_steps(model, STEPS_BEFORE, STEPS_AFTER)
    expected_state = model.jora_state()
    assert not all(s["frozen_L"] for s in model.jora_state().values()) or STEPS_BEFORE < 6

    out = tmp_path / "child.pt"
    code = CHILD.format(
        here=str(Path(__file__).parent), arch=arch, adapter=str(tmp_path / "adapter"), out=str(out),
        low_cpu_mem_usage=low_cpu_mem_usage,
    )  # fmt: skip
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    child = torch.load(out)
    torch.testing.assert_close(child["logits"], expected_logits, rtol=0, atol=0)
    assert child["state"].keys() == expected_state.keys()
    for name, state in expected_state.items():
        for key in ("pairs_L", "pairs_R"):
            assert torch.equal(child["state"][name][key], state[key]), (name, key)
        assert child["state"][name]["step"] == state["step"] == STEPS_BEFORE + STEPS_AFTER
        torch.testing.assert_close(child["state"][name]["theta_R"], state["theta_R"])


@pytest.mark.skipif(
    importlib.util.find_spec("_jora_peft_hint") is None,
    reason="the start-up hint comes with the installed jora-peft wheel (nox installs it)",
)
def test_loading_without_import_says_import_jora_peft(tmp_path: Path) -> None:
    build, targets = MODELS["llama"]
    get_peft_model(build(), JoraConfig(target_modules=targets, S_L=2, S_R=2, k=1)).save_pretrained(
        tmp_path / "ad"
    )
    code = f"""
    from peft import PeftConfig, PeftModel
    from model_factory import tiny_llama
    for load in (lambda: PeftConfig.from_pretrained({str(tmp_path / "ad")!r}),
                 lambda: PeftModel.from_pretrained(tiny_llama(), {str(tmp_path / "ad")!r})):
        try:
            load()
        except ValueError as err:
            print("ERROR:", err)
    import sys
    print("LOADED:", "jora_peft" in sys.modules)
    """
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ERROR:") == 2 and "`import jora_peft`" in result.stdout
    assert "LOADED: False" in result.stdout
    auto = run_python(code, tmp_path, {"JORA_PEFT_AUTOLOAD": "1"})
    assert auto.returncode == 0, auto.stderr[-3000:]
    assert "ERROR:" not in auto.stdout and "LOADED: True" in auto.stdout
