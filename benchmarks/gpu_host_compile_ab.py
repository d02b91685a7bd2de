"""Host time per fwd+bwd with JORA's small O(n + m) work compiled (``JORA_COMPILE=1``) or eager (device tool).

python benchmarks/gpu_host_compile_ab.py [methods...]   (T=16, d=4096, bf16: wall time is host time; the two
settings alternate over three rounds in one process, so the host's drift between machine starts cancels)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_host import per_call_us
from layers import build, step_fn


def main() -> int:
    methods = sys.argv[1:] or ["lora_r16", "jora_diag_oer", "jora_block_oer", "jora_lowrank_oer"]
    x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
    runs = {
        method: step_fn(build(method, 4096, 4096, dtype=torch.bfloat16, device="cuda"), x, grad)
        for method in methods
    }
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(3):
        for method, run in runs.items():
            for flag in ("1", "0"):
                os.environ["JORA_COMPILE"] = flag
                results.setdefault((method, flag), []).append(per_call_us(run, calls=100))
    print("| method | compiled µs | eager µs |\n|---|---|---|")
    for method in methods:
        compiled, eager = (sorted(results[(method, flag)])[1] for flag in ("1", "0"))
        print(f"| {method} | {compiled:.0f} | {eager:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
