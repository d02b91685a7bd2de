"""A target for Nsight Compute (device tool): fwd+bwd of one adapted layer at T=8192, d=4096, bf16.

ncu --kernel-name regex:"_kernel$" --launch-skip 8 --launch-count 4 --section SpeedOfLight ... \\
    python benchmarks/gpu_ncu_target.py [method]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from layers import build, step_fn


def main() -> int:
    method = sys.argv[1] if len(sys.argv) > 1 else "jora_diag_oer"
    T, d = 8192, 4096
    layer = build(method, d, d, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    run = step_fn(layer, x, torch.randn(T, d, device="cuda", dtype=torch.bfloat16))
    for _ in range(4):
        run()
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
