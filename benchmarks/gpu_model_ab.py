"""A/B of launch-knob sets on the model table's JORA-diag+OER row, in one process (device tool).

    python benchmarks/gpu_model_ab.py '{}' '{"OVERLAP_MIN_ELEMENTS": null}' [--rounds 3] [--floor]

One model (``gpu_tables.build_model``) trains under each knob set in turn; per round and set, 3 warm-up
steps and 10 timed ones (median). Rounds interleave the sets, so the host's and GPU's drift spreads over
all of them. ``--floor`` also times the frozen floor once, for the ratio.
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

from gpu_tables import build_model, model_methods, step_ms, train_step


def main() -> int:
    parser = argparse.ArgumentParser()
    add_ab_arguments(parser)
    parser.add_argument("--method", default="JORA diag+OER S=32")
    parser.add_argument("--floor", action="store_true")
    args = parser.parse_args()
    knob_sets, defaults = knob_sets_and_defaults(args.knobs)
    methods = model_methods()
    if args.floor:
        model, optimizer, ids = build_model(None)
        for _ in range(3):
            train_step(model, ids, optimizer)
        print(f"floor: {step_ms(model, ids, optimizer, 10):.2f} ms per step", flush=True)
        del model, optimizer
        torch.cuda.empty_cache()
    model, optimizer, ids = build_model(methods[args.method])
    for _ in range(12):  # the sides fill (S=32, k=8), kernels compile
        train_step(model, ids, optimizer)
    times: dict[int, list[float]] = {}
    for _ in range(args.rounds):
        for index, knobs in enumerate(knob_sets):
            apply_knobs({**defaults, **knobs})
            for _ in range(3):
                train_step(model, ids, optimizer)
            times.setdefault(index, []).append(step_ms(model, ids, optimizer, 10))
    apply_knobs(defaults)
    for index, values in times.items():
        print(f"{args.method} {json.dumps(knob_sets[index])}: {statistics.median(values):.2f} ms per step "
              f"(rounds {', '.join(f'{v:.2f}' for v in values)})", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
