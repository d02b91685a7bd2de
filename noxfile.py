"""Development sessions for the JORA monorepo (run ``pip install nox`` then ``nox -s <session>``).

Torch is pinned in every session and taken from the local wheel folders when they exist, so no session
downloads a multi-GB CUDA build. The uv backend is used when ``uv`` is installed, pip otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "docs", "tests"]
nox.options.reuse_existing_virtualenvs = False

ROOT = Path(__file__).parent
PACKAGES = {name: ROOT / "packages" / name for name in ("jora-ops", "jora-core", "jora-peft")}

DEFAULT_TORCH = "2.13.0"
TORCH_VERSIONS = ["2.13.0", "2.14.1"]
# (peft, transformers) pairs known to work together; transformers 5.x needs peft >= 0.18.
PEFT_TRANSFORMERS = [("0.18.1", "4.57.6"), ("0.21.2", "5.18.0")]
DEFAULT_PEFT, DEFAULT_TRANSFORMERS = PEFT_TRANSFORMERS[-1]
# torch 2.14.1 pins triton 3.8.x; the CPU build of 2.13.0 pins none, and triton 3.9.0 interprets correctly there.
TRITON_FOR_TORCH = {"2.13.0": "triton==3.9.0", "2.14.1": "triton==3.8.0"}
TEST_TOOLS = ["pytest>=8", "pytest-benchmark>=4", "hypothesis>=6.100", "numpy", "accelerate>=1.0"]
# Local wheel folders of this machine image: torch 2.13.0 (CPU build) and 2.14.1 with its CUDA libraries.
LOCAL_WHEELS = [Path("/opt/wheels"), Path("/opt/pypi-more/files"), Path("/opt/pypi/files")]


def _install(session: nox.Session, *requirements: str) -> None:
    """Install requirements, letting the installer see the local wheel folders."""
    find_links: list[str] = []
    for folder in LOCAL_WHEELS:
        if folder.is_dir():
            find_links += ["--find-links", str(folder)]
    session.install(*find_links, *requirements)


def _torch(version: str) -> str:
    return f"torch=={version}"


def _packages(*names: str) -> list[str]:
    return [str(PACKAGES[name]) for name in names]


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, with the three packages installed from the working tree and the default pins."""
    _install(
        session,
        _torch(DEFAULT_TORCH),
        f"peft=={DEFAULT_PEFT}",
        f"transformers=={DEFAULT_TRANSFORMERS}",
        TRITON_FOR_TORCH[DEFAULT_TORCH],
        *TEST_TOOLS,
        *_packages("jora-ops", "jora-core", "jora-peft"),
    )
    session.run("pytest", *(session.posargs or ["tests"]), env={"TRITON_INTERPRET": "1"})


@nox.session
@nox.parametrize("torch", TORCH_VERSIONS)
@nox.parametrize("package", list(PACKAGES))
def compat(session: nox.Session, package: str, torch: str) -> None:
    """Each package's tests over torch versions (and, for jora-peft, over peft/transformers pairs)."""
    test_dir = {
        "jora-ops": ["tests/ops"],
        "jora-core": ["tests/core"],
        "jora-peft": ["tests/peft", "tests/integration"],
    }
    base = [_torch(torch), TRITON_FOR_TORCH[torch], *TEST_TOOLS]
    if package != "jora-peft":
        _install(session, *base, *_packages(*list(PACKAGES)[: list(PACKAGES).index(package) + 1]))
        session.run("pytest", "-q", *test_dir[package], env={"TRITON_INTERPRET": "1"})
        return
    for peft_version, transformers_version in PEFT_TRANSFORMERS:
        _install(
            session,
            *base,
            f"peft=={peft_version}",
            f"transformers=={transformers_version}",
            *_packages("jora-ops", "jora-core", "jora-peft"),
        )
        session.run("pytest", "-q", *test_dir[package], env={"TRITON_INTERPRET": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site strictly (no torch needed: mkdocstrings reads the sources)."""
    session.install(
        "mkdocs>=1.6,<2",
        "mkdocs-material>=9.5",
        "mkdocstrings[python]>=0.26",
        "mkdocs-gen-files>=0.5",
        "mkdocs-literate-nav>=0.6",
    )
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))


@nox.session
def bench(session: nox.Session) -> None:
    """pytest-benchmark over benchmarks/ (CPU); the GPU script runs through the device tool."""
    _install(
        session,
        _torch(DEFAULT_TORCH),
        f"peft=={DEFAULT_PEFT}",
        f"transformers=={DEFAULT_TRANSFORMERS}",
        *TEST_TOOLS,
        *_packages("jora-ops", "jora-core", "jora-peft"),
    )
    session.run("pytest", "benchmarks", "--benchmark-only", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: pretrain a tiny Llama, adapt it with JORA and LoRA, save, reload and merge (CPU)."""
    _install(
        session,
        _torch(DEFAULT_TORCH),
        f"peft=={DEFAULT_PEFT}",
        f"transformers=={DEFAULT_TRANSFORMERS}",
        *_packages("jora-ops", "jora-core", "jora-peft"),
    )
    session.run(
        "python", "-m", "jora_peft.demo", *session.posargs, env={"OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    )
