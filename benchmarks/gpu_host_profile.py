"""Where one adapted layer's host time goes (device tool): sync check, CPU+CUDA timeline, optional A/B.

python benchmarks/gpu_host_profile.py --out "$OUT" [--baseline path/to/other_diag_kernels.py] [--methods a,b]

1. ``torch.cuda.set_sync_debug_mode("error")`` around a fwd+bwd of the PEFT-wrapped layer (diag+OER and
   block+OER): any host-device synchronisation raises.
2. A torch-profiler timeline (CPU and CUDA) of 20 fwd+bwd at T = 16, d = 4096 (host-bound): the top CPU ops by
   self time and a Chrome trace per method under ``--out``.
3. With ``--baseline``: a module exposing ``diag_linear_triton`` (the v6 kernels, for example) timed against
   :func:`jora_ops._sparse_core_triton.sparse_core_linear_triton` in the same process, interleaved, with the
   per-call wall time of each and the CPU-side time of each launch from the profiler.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpu_host import per_call_us
from layers import build, step_fn


def _sync_check(out: Path) -> dict[str, str]:
    results = {}
    x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    for method in ("jora_diag_oer", "jora_block_oer"):
        run = step_fn(build(method, 4096, 4096, dtype=torch.bfloat16, device="cuda"), x, grad)
        for _ in range(3):
            run()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            run()
            results[method] = "no sync"
        except RuntimeError as err:
            results[method] = f"sync: {err}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    (out / "sync_check.txt").write_text("\n".join(f"{k}: {v}" for k, v in results.items()))
    return results


def _timeline(out: Path, method: str) -> str:
    x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
    run = step_fn(build(method, 4096, 4096, dtype=torch.bfloat16, device="cuda"), x, grad)
    for _ in range(20):
        run()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(20):
            run()
        torch.cuda.synchronize()
    prof.export_chrome_trace(str(out / f"trace_{method}.json"))
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def _ab(baseline_path: Path) -> list[str]:
    from jora_ops import Magnitude
    from jora_ops._sparse_core_triton import sparse_core_linear_triton

    spec = importlib.util.spec_from_file_location("baseline_kernels", baseline_path)
    assert spec is not None and spec.loader is not None
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    dev, d, T, S = "cuda", 4096, 16, 32
    x = torch.randn(T, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(T, d, device=dev, dtype=torch.bfloat16)
    weight = (torch.randn(d, d, device=dev) / 64).to(torch.bfloat16)
    diag = torch.randn(d, device=dev, requires_grad=True)
    offset = torch.randn(d, device=dev)
    theta_L, theta_R = (torch.randn(S, device=dev, requires_grad=True) for _ in range(2))
    pairs_L, pairs_R = (torch.randperm(d, device=dev)[: 2 * S].view(S, 2) for _ in range(2))
    logits = torch.zeros(d, device=dev, requires_grad=True)
    nu = weight.float().norm(dim=1)
    common = {
        "layout": "linear", "pairs_L": pairs_L, "theta_L": theta_L, "pairs_R": pairs_R, "theta_R": theta_R,
        "scale": None, "magnitude": Magnitude("oer_softmax", logits, nu, (nu**2).sum(), 1.0),
        "rotation_param": "cayley", "stats_in": None, "stats_out": None, "on_backward": None,
    }  # fmt: skip

    def run_baseline() -> None:
        baseline.diag_linear_triton(x, weight, None, diag=diag, diag_offset=offset, **common).backward(grad)

    def run_current() -> None:
        sparse_core_linear_triton(
            x, weight, None, core_values=(diag,), core_offset=(offset,), block_size=1, **common
        ).backward(grad)

    lines = []
    for round_ in range(3):
        for name, fn in (("baseline", run_baseline), ("current", run_current)):
            lines.append(f"round {round_} {name:9s} {per_call_us(fn):8.1f} µs per fwd+bwd")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--methods", default="frozen,lora_r16,jora_diag_oer", help="comma-separated")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for method, verdict in _sync_check(args.out).items():
        print(f"sync check {method}: {verdict}", flush=True)
    if args.baseline is not None:
        for line in _ab(args.baseline):
            print(line, flush=True)
    for method in args.methods.split(","):
        table = _timeline(args.out, method)
        (args.out / f"host_profile_{method}.txt").write_text(table)
        print(f"--- {method}\n{table}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
