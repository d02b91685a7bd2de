"""A/B of launch-knob sets on the headline layer rows, in one process (device tool).

    python benchmarks/gpu_layer_ab.py '{}' '{"LAUNCH_PDL": true}' [--rounds 3] [--shapes 8192x4096,8192x2048]

Per round, per knob set and shape: the device time (``gpu_tables.device_ms``: host hidden, L2 flushed) of the
frozen layer and of JORA-diag+OER measured back to back, so the ratio is taken on the same machine state;
the medians over the rounds are printed per knob set. Rounds interleave the sets, so drift of the GPU's
clocks spreads over all of them. ``--host``: wall time per call instead (``gpu_host.per_call_us``; at a tiny
shape such as 16x4096 that is host time). ``--autocast``: the layers keep fp32 frozen weights and run their
forward under bf16 autocast (``nn.Linear`` casts its weight per call; JORA folds the fp32 weight into bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "device"))

from with_knobs import add_ab_arguments, apply_knobs, knob_sets_and_defaults

from gpu_host import per_call_us
from gpu_tables import device_ms
from layers import build, step_fn


def main() -> int:
    parser = argparse.ArgumentParser()
    add_ab_arguments(parser)
    parser.add_argument("--shapes", default="8192x4096,8192x2048")
    parser.add_argument("--methods", default="jora_diag_oer")
    parser.add_argument("--host", action="store_true", help="wall time per call (µs) instead of device time")
    parser.add_argument(
        "--autocast",
        action="store_true",
        help="fp32 frozen weights, the forward under bf16 autocast (bf16 input)",
    )
    args = parser.parse_args()
    knob_sets, defaults = knob_sets_and_defaults(args.knobs)
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    methods = args.methods.split(",")
    ratios: dict[tuple[int, int, str, int], list[float]] = {}
    times: dict[tuple[int, int, str, int], list[float]] = {}
    for _ in range(args.rounds):
        for T, d in shapes:
            x = torch.randn(T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            grad = torch.randn(T, d, device="cuda", dtype=torch.bfloat16)
            weight_dtype = torch.float32 if args.autocast else torch.bfloat16
            layers = {m: build(m, d, d, dtype=weight_dtype, device="cuda") for m in ["frozen", *methods]}
            autocast = torch.bfloat16 if args.autocast else None
            runs = {m: step_fn(layer, x, grad, autocast) for m, layer in layers.items()}
            for index, knobs in enumerate(knob_sets):
                apply_knobs({**defaults, **knobs})
                for method in methods:
                    for _ in range(3):
                        runs[method]()
                    timer = per_call_us if args.host else device_ms
                    frozen = timer(runs["frozen"])
                    adapted = timer(runs[method])
                    ratios.setdefault((T, d, method, index), []).append(adapted / frozen)
                    times.setdefault((T, d, method, index), []).append(adapted)
            del layers, runs, x, grad
            torch.cuda.empty_cache()
    apply_knobs(defaults)
    for (T, d, method, index), values in sorted(ratios.items()):
        ms = statistics.median(times[(T, d, method, index)])
        print(f"T={T} d={d} {method} {json.dumps(knob_sets[index])}: {statistics.median(values):.4f} x frozen "
              f"(rounds {', '.join(f'{v:.4f}' for v in values)}; {ms:.4f} {'µs' if args.host else 'ms'})", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
