"""The model table (``gpu_tables.model_table``: rows resident, interleaved rounds) and where each step's
time goes (device tool).

    python benchmarks/gpu_model_rounds.py --out "$OUT" [--rounds 5] [--steps 8] [--profile]

With ``--profile``: one step of each row under the torch profiler (CUDA and CPU): the step's wall time, the
time at least one kernel runs (the union over streams), the GPU's idle time inside the step, and the host
ops with the most self time, so a host-bound row shows as idle time the floor does not have.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpu_tables import markdown, model_table, train_step


def busy_union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def profile_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, ids: torch.Tensor, host: bool
) -> dict:
    """One step under the profiler: wall, GPU-busy and idle ms, and with ``host`` (CPU activity too, which
    slows the host) the top host ops by self time."""
    activities = [torch.profiler.ProfilerActivity.CUDA]
    if host:
        activities.append(torch.profiler.ProfilerActivity.CPU)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities) as prof:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        train_step(model, ids, optimizer)
        end.record()
        torch.cuda.synchronize()
    kernels = [
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.elapsed_us() > 0
    ]
    first, last = min(s for s, _ in kernels), max(e for _, e in kernels)
    busy = busy_union_us(kernels)
    top = []
    if host:
        top = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)[:15]
    return {
        "event_ms": start.elapsed_time(end),
        "kernel_span_ms": (last - first) / 1e3,
        "gpu_busy_ms": busy / 1e3,
        "gpu_idle_ms": (last - first - busy) / 1e3,
        "kernels": len(kernels),
        "host_top_self_ms": [(a.key[:60], a.self_cpu_time_total / 1e3, a.count) for a in top],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    report: dict = {}
    models = model_table(report, args.rounds, args.steps)
    lines = ["## Model" + markdown({"date": "", "gpu": "", "versions": ""} | report).split("## Model", 1)[1]]
    if args.profile:
        lines.append(
            "one profiled step per row (CUDA activity only): event ms, kernel span, GPU busy (the union over"
            " streams), idle inside the span; then one with CPU activity too (a slower host): its top host ops"
        )
        for row in report["model"]:
            model, optimizer, ids = models[row["method"]]
            train_step(model, ids, optimizer)
            result = profile_step(model, optimizer, ids, host=False)
            host = profile_step(model, optimizer, ids, host=True)
            row |= {"profile": result, "profile_with_host": host}
            lines.append(
                f"  {row['method']}: {result['event_ms']:.1f} ms, span {result['kernel_span_ms']:.1f}, busy "
                f"{result['gpu_busy_ms']:.1f}, idle {result['gpu_idle_ms']:.1f}, {result['kernels']} kernels; with "
                f"CPU activity {host['event_ms']:.1f} ms, idle {host['gpu_idle_ms']:.1f}"
            )
            for key, ms, count in host["host_top_self_ms"][:10]:
                lines.append(f"      host self {ms:7.2f} ms  x{count:<5} {key}")
    text = "\n".join(lines)
    print(text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model_rounds.md").write_text(text + "\n")
    (args.out / "model_rounds.json").write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
