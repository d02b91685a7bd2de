"""The sparse-core kernels compile for a Hopper GPU (sm_90) on a machine without one.

CI runs the kernels under ``TRITON_INTERPRET=1``, which executes them as Python and never compiles them:
constructs the GPU compiler rejects (a variable with different shapes in two branches, an unsupported
boolean chain) would pass there and fail only on a GPU. This test compiles every kernel variant through
Triton's NVIDIA backend (frontend, MLIR passes, ptxas) in a subprocess with the interpreter off.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")


def _nvidia_backend_available() -> bool:
    from triton.backends import backends

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return "nvidia" in backends and ptxas.exists()


@pytest.mark.skipif(
    not _nvidia_backend_available(), reason="triton's NVIDIA backend (ptxas) is not installed"
)
def test_sparse_core_kernels_compile_for_sm90(tmp_path: Path) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    script = Path(__file__).with_name("compile_sparse_core_kernels.py")
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    # fold, token sums, coordinate grads for b = 1, 3, 4, 16; the coordinate grads for b = 1 with PDL; the
    # steady-state (also with PDL, and at d = 2048) and long-split diag token sums; column sums; the lowrank
    # factors, fold (bf16 and fp32), factor gradients, and the output-side per-coordinate launch
    assert len(lines) == 25, result.stdout
    assert all("REG:" in line or "(no cuobjdump)" in line for line in lines), result.stdout
