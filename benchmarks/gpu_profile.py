"""Profile one adapted layer's fwd+bwd on the GPU: host-device syncs and the top ops (device tool).

python benchmarks/gpu_profile.py --method jora_diag_oer --tokens 8192 --dim 2048
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from layers import build, step_fn


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="jora_diag_oer")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=2048)
    args = parser.parse_args()
    layer = build(args.method, args.dim, args.dim, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(args.tokens, args.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(args.tokens, args.dim, device="cuda", dtype=torch.bfloat16)
    run = step_fn(layer, x, grad)
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
        torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode(0)
    print(f"{args.method}: {len(caught)} synchronizing calls")
    for w in caught[:10]:
        print("  sync:", str(w.message)[:200], w.filename, w.lineno)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
        with_stack=True,
    ) as prof:
        for _ in range(5):
            run()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))
    print(
        prof.key_averages(group_by_stack_n=4).table(
            sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
