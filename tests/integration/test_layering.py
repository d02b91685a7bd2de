"""The dependency direction of ARCHITECTURE.md: jora_ops → torch only; jora_core → no PEFT/transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
import {package}
loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden!r}))
print(','.join(loaded))
"""


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("jora_ops", ["jora_core", "jora_peft", "peft", "transformers"]),
        ("jora_core", ["jora_peft", "peft", "transformers"]),
    ],
)
def test_package_does_not_import_upper_layers(package: str, forbidden: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(package=package, forbidden=forbidden)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "", f"{package} imported {result.stdout.strip()}"


def test_jora_peft_imports_the_lower_layers() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CHECK.format(package="jora_peft", forbidden=["jora_core", "jora_ops", "peft"]),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "jora_core,jora_ops,peft"
