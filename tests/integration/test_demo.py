"""The demo (``nox -s demo``) end to end, shortened: pretrain, adapt with JORA and LoRA, save, reload, merge."""

from __future__ import annotations

from pathlib import Path

import pytest

from jora_peft import demo


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_given_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "text.txt"
    text.write_text(demo.stdlib_docstrings()[:20_000], encoding="utf-8")
    code = demo.main(
        [
            "--data", str(text), "--pretrain-steps", "3", "--adapt-steps", "3", "--seq-len", "32",
            "--batch-size", "2", "--output-dir", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "JORA diag+OER" in printed and "LoRA r8" in printed
    assert "merged and unmerged outputs agree" in printed
    assert (tmp_path / "out" / "jora_adapter" / "adapter_config.json").is_file()


def test_byte_tokenizer_round_trips_utf8() -> None:
    ids = demo.ByteTokenizer().encode("JORA ⊙ θ")
    assert bytes(ids.tolist()).decode("utf-8") == "JORA ⊙ θ"
