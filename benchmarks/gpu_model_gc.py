"""Does Python's garbage collector hold the model step host-bound? (device tool)

    python benchmarks/gpu_model_gc.py [--rounds 3] [--resident "floor (frozen, input grads);LoRA r16"]

The JORA rows of the model table ran at 103.5 ms per step with only their own model resident and at
121-141 ms with the other rows' models resident too, while the GPU was busy 99.6 ms of each step. Every
row here stays resident (``--resident`` adds more of :func:`gpu_tables.model_methods`); per round, the JORA-
diag+OER model runs 8 timed steps under each collector setting — the default, ``gc.freeze()`` after building
(the objects alive then are never scanned again), ``gc.disable()`` during the steps — and the time the
collector spent per step (``gc.callbacks``) and its collections per generation are reported.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from gpu_tables import build_model, model_methods, step_ms, train_step

JORA = "JORA diag+OER S=32"


class CollectorClock:
    """Time and count of the garbage collector's passes, per generation, while installed."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections[info["generation"]] += 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resident", default="floor (frozen, input grads);LoRA r16")
    args = parser.parse_args()
    methods = model_methods()
    resident = [build_model(methods[label]) for label in args.resident.split(";") if label]
    model, optimizer, ids = build_model(methods[JORA])
    for _ in range(12):
        train_step(model, ids, optimizer)
    print(
        f"{len(resident)} other models resident; gc thresholds {gc.get_threshold()}, objects {len(gc.get_objects())}"
    )
    settings = ("default", "gc.freeze() after building", "gc.disable() during the steps")
    times: dict[str, list[float]] = {name: [] for name in settings}
    clocks: dict[str, list[CollectorClock]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name in settings:
            if name.startswith("gc.freeze"):
                gc.freeze()
            for _ in range(2):
                train_step(model, ids, optimizer)
            clock = CollectorClock()
            gc.callbacks.append(clock)
            if name.startswith("gc.disable"):
                gc.disable()
            try:
                times[name].append(step_ms(model, ids, optimizer, 8))
            finally:
                gc.enable()
                gc.callbacks.remove(clock)
                gc.unfreeze()
            clocks[name].append(clock)
        print({name: round(values[-1], 1) for name, values in times.items()}, flush=True)
    for name in settings:
        gc_ms = [clock.seconds * 1e3 / 8 for clock in clocks[name]]
        passes = [sum(clock.collections[g] for clock in clocks[name]) / (8 * args.rounds) for g in range(3)]
        print(
            f"{name:32s} {statistics.median(times[name]):7.2f} ms per step (rounds "
            f"{', '.join(f'{v:.1f}' for v in times[name])}); collector {statistics.median(gc_ms):.2f} ms per step, "
            f"collections per step by generation {', '.join(f'{p:.1f}' for p in passes)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
