"""Compile the sparse-core and lowrank Triton kernels for a Hopper target (sm_90) without a GPU: frontend,
passes, ptxas.

Run as a script (``TRITON_INTERPRET`` must be unset: under the interpreter the kernels are not compiled).
Prints one line per kernel variant with its resource usage when ``cuobjdump`` is available; exits non-zero
on the first variant that does not compile. Used by ``test_triton_compile.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from jora_ops import _lowrank_triton as lowrank
from jora_ops import _sparse_core_triton as kernels

TARGET = GPUTarget("cuda", 90, 32)
_FLOAT_ARGS = {"eps", "alpha", "inv_tokens", "core_scale"}
_INT64_POINTERS = {"pairs_L_ptr", "pairs_R_ptr"}
_BF16_POINTERS = {"w_ptr", "folded_ptr", "g_ptr", "y_ptr", "x_ptr", "bias_ptr"}


def _signature(fn: Any, constexprs: dict[str, Any], pointer_types: dict[str, str]) -> dict[str, str]:
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointer_types:
            signature[name] = pointer_types[name]
        elif name in _INT64_POINTERS:
            signature[name] = "*i64"
        elif name in _BF16_POINTERS:
            signature[name] = "*bf16"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32"
        else:
            signature[name] = "fp32" if name in _FLOAT_ARGS else "i32"
    return signature


def _resources(cubin: bytes) -> str:
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        return "(no cuobjdump)"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        out = subprocess.run([str(cuobjdump), "-res-usage", file.name], capture_output=True, text=True).stdout
    return next((line.strip() for line in out.splitlines() if "REG:" in line), "(no resource line)")


def compile_kernel(
    fn: Any, constexprs: dict[str, Any], num_warps: int = 4, pointer_types: dict[str, str] | None = None
) -> str:
    """Compile one variant (``pointer_types``: pointer types other than the defaults, which are bf16 for the
    weight and the activations, int64 for the pair tables and fp32 else); returns its resource line. Pointers and integers are marked 16-divisible, as the launcher specialises them
    at run time (aligned tensors, d a multiple of 16): the vector widths, and the pipelining they allow, are
    those of the GPU run."""
    signature = _signature(fn, constexprs, pointer_types or {})
    source = ASTSource(
        fn=fn,
        signature=signature,
        constexprs={(fn.arg_names.index(name),): value for name, value in constexprs.items()},
        attrs={
            (i,): [["tt.divisibility", 16]]
            for i, name in enumerate(fn.arg_names)
            if signature[name] in ("i32", "*fp32", "*bf16", "*i64")
        },
    )
    compiled = triton.compile(source, target=TARGET, options={"num_warps": num_warps})
    return _resources(compiled.asm["cubin"])


def variants() -> list[tuple[str, Any, dict[str, Any], int, dict[str, str]]]:
    """Every kernel for b = 1 (diag), 3 (gathered slot sums) and 4, 16 (outer-product slot sums) with every
    option on; the diag token sums of the steady state (two accumulators: one warp) and with long splits; and
    the token sums without parameters (``column_sums_triton``, with the ``None`` pointers of its launch: a
    ``None`` pointer compiles only where no code that runs can touch it); the diag backward's two kernels as
    programmatic dependent launches (grid-dependency control, sm_90) and the steady-state token sums at
    d = 2048 (tile-reduced accumulators). The lowrank core's kernels at rank 16 with an offset (bf16 weights
    and activations; the fold also for fp32 weights, exact products, and for an fp32 weight folded into bf16,
    as under autocast, like the diag fold) and its output-side per-coordinate
    launch (no core parameters, no rotation tables). Launch shapes come from the modules' own geometry
    functions and constants, at T = 8192 (32768 for the long splits) and d = 4096."""
    out = []

    def token_sums(name: str, b: int, tokens: int, more: bool, width: int = 4096, **flags: Any) -> None:
        _, _, block_c, block_t, col_blocks, _, outer, warps, acc_rows = kernels._token_sum_geometry(
            tokens, width, b, 64, more
        )
        out.append((name, kernels._token_sums_kernel, {"BLOCK_SIZE": b, "SLOTS": kernels._next_power_of_2(b),
                    "BLOCK_S": 32, "HAS_Y": True, "G_SUM": more, "HAS_BIAS": more, "ROW_TOTAL": True, "PARAMS": True,
                    "STATS_OUT": more, "STATS_IN": more, "OUTER": outer, "BLOCK_T": block_t, "BLOCK_C": block_c,
                    "BLOCK_E": 64, "BLOCK_TE": kernels.ENTRY_TOKEN_BLOCK, "UNROLL": kernels.TOKEN_SUM_UNROLL, "ACC_ROWS": acc_rows, "BLOCK_COL_BLOCKS": kernels._next_power_of_2(col_blocks), "PDL": False, **flags}, warps))  # fmt: skip

    for b in (1, 3, 4, 16):
        slots = kernels._next_power_of_2(b)
        rows, cols = kernels.FOLD_BLOCKS["linear"]
        common = {"BLOCK_SIZE": b, "SLOTS": slots, "BLOCK_S": 32}
        out.append((f"fold b={b}", kernels._fold_kernel, {**common, "MODE": 2, "HAS_OFFSET": True, "CAYLEY": True,
                    "BLOCK_ROWS": rows, "BLOCK_COLS": max(16, cols // slots), "BLOCK_N": kernels.FOLD_NORMALISER_BLOCK, "stride_col": 1, "TABLES": True, "SPLIT_COUNTERS": kernels._SPLIT_COUNTERS}, kernels.FOLD_WARPS))  # fmt: skip
        token_sums(f"token sums b={b}", b, 8192, True)
        out.append((f"coordinate grads b={b}", kernels._coordinate_grads_kernel, {**common, "HAS_SCALE": True,
                    "HAS_BIAS": True, "SCALE_GRAD": True, "BIAS_GRAD": True, "G_SUM": True, "PARAMS": True, "STATS_OUT": True,
                    "STATS_IN": True, "CAYLEY": False, "BLOCK": kernels._coordinate_launch(slots)[0], "BLOCK_SPLITS": 64, "MODE": 3,
                    "LOGITS_GRAD": True, "THETA_L_GRAD": True, "THETA_R_GRAD": True, "PDL": False}, kernels._coordinate_launch(slots)[1]))  # fmt: skip
        if b == 1:
            out.append(("coordinate grads b=1, PDL", out[-1][1], {**out[-1][2], "PDL": True}, out[-1][3]))
    token_sums("token sums b=1 steady state", 1, 8192, False)
    token_sums("token sums b=1 steady, PDL", 1, 8192, False, PDL=True)
    token_sums("token sums b=1 d=2048", 1, 8192, False, width=2048)
    token_sums("token sums b=1 long splits", 1, 32768, False)
    token_sums("column sums (no params)", 1, 8192, True, HAS_BIAS=False, ROW_TOTAL=False, bias_ptr=None,
               norms_ptr=None, scale_ptr=None, PARAMS=False)  # fmt: skip
    out = [(*variant, {}) for variant in out]
    fold_b1 = next(variant for variant in out if variant[0] == "fold b=1")  # an fp32 weight folded into bf16
    out.append(("fold b=1, fp32 weight", *fold_b1[1:4], {"w_ptr": "*fp32"}))
    rank = 16
    bf16 = {name: "*bf16" for name in ("left_ptr", "right_ptr", "scaled_a_ptr", "rotated_b_ptr", "product_a_ptr",
                                       "product_b_ptr")}  # fmt: skip
    out.append(("lowrank factors", lowrank._lowrank_factors_kernel, {"MODE": 2, "HAS_OFFSET": True, "CAYLEY": True,
                "BLOCK_ROWS": lowrank.LOWRANK_ROWS, "BLOCK_R": rank, "BLOCK_K": 2 * rank, "BLOCK_N": kernels.FOLD_NORMALISER_BLOCK,
                "BLOCK_S": 32, "SPLIT_COUNTERS": kernels._SPLIT_COUNTERS}, 4, bf16))  # fmt: skip
    fp32 = {name: "*fp32" for name in ("w_ptr", "folded_ptr", "left_ptr", "right_ptr")}
    for precision, name, pointer_types in (
        ("tf32", "lowrank fold", bf16),
        ("ieee", "lowrank fold fp32", fp32),
        ("tf32", "lowrank fold, fp32 weight", {**bf16, "w_ptr": "*fp32"}),
    ):
        block_m, block_n, warps, k_step = lowrank.LOWRANK_FOLD_BLOCKS[precision]
        out.append((name, lowrank._lowrank_fold_kernel, {"HAS_SCALE": True, "BLOCK_M": block_m, "BLOCK_N": block_n,
                    "BLOCK_K": 2 * rank, "stride_col": 1, "K_STEP": min(2 * rank, k_step), "INPUT_PRECISION": precision,
                    "DOT_IN_FP32": False},
                    warps, pointer_types))  # fmt: skip
    out.append(("lowrank factor grads", lowrank._lowrank_factor_grads_kernel, {"HAS_SCALE": True, "THETA_L_GRAD": True,
                "THETA_R_GRAD": True, "CAYLEY": True, "BLOCK_ROWS": lowrank.LOWRANK_ROWS, "BLOCK_R": rank, "BLOCK_S": 32},
                4, bf16))  # fmt: skip
    out.append(("coordinate grads, output side", kernels._coordinate_grads_kernel, {"HAS_SCALE": True, "HAS_BIAS": True,
                "SCALE_GRAD": True, "BIAS_GRAD": True, "G_SUM": True, "PARAMS": False, "STATS_OUT": True, "STATS_IN": True,
                "CAYLEY": True, "BLOCK_SIZE": 1, "SLOTS": 1, "BLOCK": kernels._coordinate_launch(1)[0], "BLOCK_S": 32,
                "BLOCK_SPLITS": 64, "MODE": 2, "LOGITS_GRAD": True, "THETA_L_GRAD": False, "THETA_R_GRAD": False,
                "PDL": True, "tables_ptr": None}, kernels._coordinate_launch(1)[1], {}))  # fmt: skip
    return out


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("TRITON_INTERPRET is set: nothing is compiled under the interpreter", file=sys.stderr)
        return 2
    for name, fn, constexprs, warps, pointer_types in variants():
        print(f"{name:30s} {compile_kernel(fn, constexprs, warps, pointer_types)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
