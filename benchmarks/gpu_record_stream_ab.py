"""In-process A/B of the second stream's ``∂L/∂x`` allocation on the model table's JORA-diag+OER row (device tool).

    python benchmarks/gpu_record_stream_ab.py [--rounds 4]

Session 12 moved the allocation of the second stream's ``∂L/∂x`` to the current stream (written with
``out=``) instead of allocating it on the second stream and calling ``record_stream``. This times one model
under both, in interleaved rounds (each: two warm-up steps, 8 timed, median), beside the frozen floor: the
previous :func:`grad_input_beside` is kept here, verbatim, and patched into both Triton modules for its turn.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpu_tables import build_model, model_methods, step_ms, train_step
from jora_ops import _lowrank_triton, _sparse_core_triton
from jora_ops._sparse_core_triton import _grad_input, _second_stream


def grad_input_beside_record_stream(
    grad_out: torch.Tensor, folded: torch.Tensor, linear: bool, x: torch.Tensor, needed: bool, width: int
) -> tuple:
    """The session-11 version: ``∂L/∂x`` allocated on the second stream, then ``record_stream``."""
    tokens = grad_out.numel() // grad_out.shape[-1]
    threshold = _sparse_core_triton.OVERLAP_MIN_ELEMENTS
    if not (needed and grad_out.is_cuda and threshold is not None and tokens * width >= threshold):
        return _grad_input(grad_out, folded, linear, x, needed), None
    current = torch.cuda.current_stream(grad_out.device)
    second = _second_stream(grad_out.device)
    second.forked.record(current)
    second.stream.wait_event(second.forked)
    torch.cuda.set_stream(second.stream)
    try:
        grad_x = _grad_input(grad_out, folded, linear, x, True)
    finally:
        torch.cuda.set_stream(current)
    grad_x.record_stream(current)
    return grad_x, (second, current)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    variants = {"out= on the current stream": _sparse_core_triton.grad_input_beside}
    variants["record_stream (session 11)"] = grad_input_beside_record_stream
    floor_model, floor_optimizer, floor_ids = build_model(None)
    model, optimizer, ids = build_model(model_methods()["JORA diag+OER S=32"])
    for _ in range(12):
        train_step(model, ids, optimizer)
    times: dict[str, list[float]] = {name: [] for name in ["floor", *variants]}
    for _ in range(args.rounds):
        for _ in range(2):
            train_step(floor_model, floor_ids, floor_optimizer)
        times["floor"].append(step_ms(floor_model, floor_ids, floor_optimizer, 8))
        for name, function in variants.items():
            _sparse_core_triton.grad_input_beside = _lowrank_triton.grad_input_beside = function
            for _ in range(2):
                train_step(model, ids, optimizer)
            times[name].append(step_ms(model, ids, optimizer, 8))
        print({name: round(values[-1], 1) for name, values in times.items()}, flush=True)
    for name, values in times.items():
        print(
            f"{name}: {statistics.median(values):.2f} ms per step (rounds {', '.join(f'{v:.1f}' for v in values)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
