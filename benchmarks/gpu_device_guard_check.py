"""Why the Triton launches carry a device guard (device tool, two GPUs).

    python benchmarks/gpu_device_guard_check.py [--unguarded]

Runs ``tests/ops/test_gpu.py``'s check that a JORA layer on ``cuda:1`` computes, with ``cuda:0`` current, what
it computes with ``cuda:1`` current (every core; the output and every gradient bit for bit). With
``--unguarded`` the kernel modules launch through ``kernel[grid](...)`` directly, as before the guard: Triton
then launches on the current device with pointers into the other GPU's memory. Run each mode in its own
process: a fault there can leave the CUDA context unusable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

root = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(root / "tests"), str(root / "tests" / "ops")]

from test_gpu import test_a_layer_on_the_second_gpu_runs_there_while_the_first_is_current as check  # noqa: E402

from jora_ops import _lowrank_triton, _sparse_core_triton, triton_kernels  # noqa: E402


def _unguarded(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    kernel[grid](*args, **kwargs)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unguarded", action="store_true")
    args = parser.parse_args()
    if args.unguarded:
        for module in (_sparse_core_triton, _lowrank_triton, triton_kernels):
            module.launch = _unguarded
    mode = "unguarded" if args.unguarded else "guarded"
    for core, size in (("diag", 1), ("block", 4), ("lowrank", 8)):
        try:
            check(core, size)
            print(f"{mode} {core}: cuda:1 results equal with cuda:0 current", flush=True)
        except AssertionError as err:
            print(f"{mode} {core}: DIFFER ({str(err).splitlines()[0]})", flush=True)
        except RuntimeError as err:
            print(f"{mode} {core}: ERROR {type(err).__name__}: {str(err).splitlines()[0]}", flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
