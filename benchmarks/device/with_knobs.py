"""Run a script or a module with launch knobs of ``jora_ops._sparse_core_triton`` (or the backward's
``REFOLD_IN_BACKWARD`` of ``jora_ops._fold_common``, ``FAST_LAUNCH`` of ``jora_ops._triton_launch``) overridden
(device tool).

    python benchmarks/device/with_knobs.py '{"COLUMN_STAGES": 3}' benchmarks/gpu_tables.py --out "$OUT" ...
    python benchmarks/device/with_knobs.py '{"COLUMN_STAGES": 3}' -m pytest -q tests/ops/test_gpu.py

The knobs are module attributes read at launch time, so one process measures or tests a variant of the
kernels without editing them (``gpu_kernel_sweep.py`` prints the best variant's JSON).
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys

from jora_ops import _fold_common, _sparse_core_triton, _triton_launch

_KNOB_MODULES = (_sparse_core_triton, _fold_common, _triton_launch)


def add_ab_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every in-process A/B script takes: the knob sets (JSON) and the number of rounds."""
    parser.add_argument("knobs", nargs="+", help="knob sets (JSON), '{}' = the defaults")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each measures every knob set once")


def knob_sets_and_defaults(texts: list[str]) -> tuple[list[dict], dict]:
    """The knob sets given as JSON texts (``'{}'``: the defaults) and the current values of every knob they
    name (apply these to restore the defaults)."""
    knob_sets = [json.loads(text) for text in texts]
    names = {name for knobs in knob_sets for name in knobs}
    return knob_sets, {name: getattr(_knob_module(name), name) for name in names}


def _knob_module(name: str):
    """The module that holds knob ``name`` (unknown names fail)."""
    for module in _KNOB_MODULES:
        if hasattr(module, name):
            return module
    raise SystemExit(f"unknown knob {name!r} of {', '.join(m.__name__ for m in _KNOB_MODULES)}")


def apply_knobs(knobs: dict) -> None:
    """Set launch knobs (JSON lists become tuples); unknown names fail."""
    modules = {name: _knob_module(name) for name in knobs}
    for name, value in knobs.items():
        setattr(modules[name], name, tuple(value) if isinstance(value, list) else value)
    _sparse_core_triton._token_sum_geometry.cache_clear()


def main() -> None:
    knobs = json.loads(sys.argv[1])
    apply_knobs(knobs)
    print(f"knobs: {knobs}", flush=True)
    if sys.argv[2] == "-m":
        sys.argv = [sys.argv[3], *sys.argv[4:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[2:]
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
