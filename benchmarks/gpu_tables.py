"""GPU correctness checks and the PERFORMANCE.md tables, in one process (run through the device tool).

    PYTHONPATH=packages/jora-ops/src:packages/jora-core/src:packages/jora-peft/src \\
        python benchmarks/gpu_tables.py --out "$OUT"

1. Correctness: the Triton path of the fused diag and block linear against the torch path (outputs and
   every gradient, fp32 < 1e-5 and bf16 < 1e-2 relative) on large shapes, and the fp32 output against a
   float64 dense reference.
2. The layer table: fwd+bwd time and extra peak memory of every method, as ratios to the frozen layer and
   to LoRA r16, for T ∈ {8192, 32768} and d ∈ {2048, 4096, 8192} (bf16).
3. The model table: a 1B-parameter Llama config, adapters on q/k/v/o, batch 8 × 1024, AdamW, with the
   frozen floor measured in the same run (every row resident, timed in interleaved rounds).
4. ``torch.compile`` through JORA layers (graph breaks counted).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).parent))

from gpu_host import per_call_us
from layers import BUILDERS, build, step_fn, trainable

LAYER_METHODS = [
    "frozen", "lora_r16", "lora_r16_activation_dtype", "dora_r16", "ia3", "road", "oft_b32", "jora_diag_oer", "jora_diag", "jora_block_oer",
    "jora_block", "jora_lowrank_oer", "jora_lowrank", "torch_jora_diag_oer",
]  # fmt: skip


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def correctness(report: dict) -> None:
    """Triton vs the torch path (eager: ``JORA_COMPILE=0``) for the diag, block and lowrank cores (the block
    size column is the lowrank core's rank), and the fp32 output vs the float64 dense reference where
    ``n = m ≤ 4096``. A given scale, trainable in some cases (the forward keeps the folded weight) and frozen
    in the others (the backward folds again)."""
    import os

    from jora_ops import CoreSpec, core_dense, jora_linear, rotation_matrix

    os.environ["JORA_COMPILE"] = "0"
    # (T, n, m, S per side, core, block size, the scale trainable)
    cases = [
        (4096, 2048, 3072, 256, "diag", 1, True),
        (32768, 4096, 4096, 512, "diag", 1, False),
        (8192, 8192, 2048, 512, "diag", 1, True),
        (8192, 4096, 4096, 256, "block", 4, True),
        (32768, 2048, 4096, 512, "block", 4, False),
        (8192, 3072, 3072, 128, "block", 3, True),
        (8192, 4096, 4096, 256, "lowrank", 16, False),
        (32768, 2048, 4096, 512, "lowrank", 8, True),
    ]
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for T, n, m, S, kind, b, scale_grad in cases:
            torch.manual_seed(T + n + m + b)
            dev = "cuda"
            d = min(n, m)
            spec = CoreSpec(kind, n, m, block_size=b, rank=b, alpha=2.0 * b)
            perm_L, perm_R = torch.randperm(n, device=dev), torch.randperm(m, device=dev)
            a_L, a_R = min(S, n // 2), min(S, m // 2)
            pairs_L, pairs_R = perm_L[: 2 * a_L].view(a_L, 2), perm_R[: 2 * a_R].view(a_R, 2)
            if kind == "diag":
                core, offset = (torch.randn(d, device=dev) * 0.1,), (torch.randn(d, device=dev) * 0.1,)
            elif kind == "lowrank":
                core = (torch.randn(n, b, device=dev) * 0.1, torch.randn(m, b, device=dev) * 0.1)
                offset = (torch.randn(n, b, device=dev) * 0.1, torch.randn(m, b, device=dev) * 0.1)
            else:
                core = (torch.randn(d // b, b, b, device=dev) * 0.1, torch.randn(d % b, device=dev) * 0.1)
                offset = (torch.randn(d // b, b, b, device=dev) * 0.1, torch.randn(d % b, device=dev) * 0.1)
            base = {
                "x": torch.randn(T, m, device=dev, dtype=dtype),
                "weight": (torch.randn(n, m, device=dev) / math.sqrt(m)).to(dtype),
                "bias": torch.randn(n, device=dev).to(dtype),
                "theta_L": torch.randn(a_L, device=dev),
                "theta_R": torch.randn(a_R, device=dev),
                "scale": torch.rand(n, device=dev) + 0.5,
                **{f"core{i}": v for i, v in enumerate(core)},
            }
            grad = torch.randn(T, n, device=dev, dtype=dtype)
            outs = {}
            for impl in ("torch", "triton"):
                frozen = ("weight",) if scale_grad else ("weight", "scale")
                leaves = {k: v.clone().requires_grad_(k not in frozen) for k, v in base.items()}
                stats_in, stats_out = torch.zeros(m, device=dev), torch.zeros(n, device=dev)
                out = jora_linear(
                    leaves["x"], leaves["weight"], leaves["bias"], core=spec,
                    core_params=tuple(leaves[f"core{i}"] for i in range(len(core))), core_offset=offset,
                    pairs_L=pairs_L, theta_L=leaves["theta_L"], pairs_R=pairs_R, theta_R=leaves["theta_R"],
                    scale=leaves["scale"], stats_in=stats_in, stats_out=stats_out, impl=impl,
                )  # fmt: skip
                out.backward(grad)
                outs[impl] = {"out": out.detach(), "stats_in": stats_in, "stats_out": stats_out}
                outs[impl].update({f"d_{k}": v.grad for k, v in leaves.items() if v.grad is not None})
            errors = {k: rel(outs["triton"][k], outs["torch"][k]) for k in outs["torch"]}
            if dtype == torch.float32 and n == m <= 4096:
                rot_L = rotation_matrix(pairs_L.cpu(), base["theta_L"].cpu(), n).cuda()
                rot_R = rotation_matrix(pairs_R.cpu(), base["theta_R"].cpu(), m).cuda()
                delta = rot_L.T @ core_dense(spec, core, dtype=torch.float64) @ rot_R - core_dense(
                    spec, offset, dtype=torch.float64
                )
                dense = base["weight"].double() + delta
                ref = (base["x"].double() @ dense.T) * base["scale"].double() + base["bias"].double()
                errors["out_vs_fp64_dense"] = rel(outs["triton"]["out"], ref)
            limit = 1e-5 if dtype == torch.float32 else 1e-2
            ok = all(e < limit for e in errors.values())
            rows.append({"dtype": str(dtype), "T": T, "n": n, "m": m, "S": S, "core": kind, "block_size": b,
                         "refold": not scale_grad, "max_rel": max(errors.values()), "ok": ok,
                         "errors": errors})  # fmt: skip
            print(
                f"correctness {dtype} {kind}(b={b}){' refold' if not scale_grad else ''} T={T} n={n} m={m} S={S}: "
                f"max rel {max(errors.values()):.2e}"
                f" {'OK' if ok else 'FAIL ' + str(errors)}",
                flush=True,
            )
            del outs, base, grad
            torch.cuda.empty_cache()
    os.environ.pop("JORA_COMPILE")
    report["correctness"] = rows


def device_ms(fn: Callable[[], object], calls: int = 30, head_start_ms: float = 5.0) -> float:
    """Median device time of ``fn`` (ms) with the host's launch cost hidden.

    Before each timed call the GPU is kept busy (``torch.cuda._sleep``, then an L2 flush), so the host has
    queued all of ``fn``'s work before the start event runs: the events time only the GPU's work, gaps
    between dependent kernels included. Host-bound ``fn`` (host time above ``head_start_ms``) would leak in.
    """
    cycles = int(head_start_ms * 2e6)  # SM clock ≤ 2 GHz: at least head_start_ms
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    times = []
    for _ in range(calls):
        torch.cuda._sleep(cycles)
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measure_layer(method: str, T: int, d: int, dtype: torch.dtype) -> dict:
    layer = build(method, d, d, dtype=dtype, device="cuda")
    x = torch.randn(T, d, device="cuda", dtype=dtype, requires_grad=True)
    grad = torch.randn(T, d, device="cuda", dtype=dtype)
    run = step_fn(layer, x, grad)
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    extra = (torch.cuda.max_memory_allocated() - before) / 2**20
    ms = triton.testing.do_bench(run, warmup=50, rep=200, return_mode="median")
    result = {
        "method": method, "T": T, "d": d, "ms": ms, "device_ms": device_ms(run), "extra_mib": extra,
        "trainable": trainable(layer),
    }  # fmt: skip
    del layer, x, grad, run
    torch.cuda.empty_cache()
    return result


def layer_table(report: dict, shapes: list[tuple[int, int]], methods: list[str]) -> None:
    rows = []
    for T, d in shapes:
        for method in methods:
            try:
                rows.append(measure_layer(method, T, d, torch.bfloat16))
            except Exception as err:  # noqa: BLE001  (a peer failing must not hide the others; it is reported)
                rows.append({"method": method, "T": T, "d": d, "error": f"{type(err).__name__}: {err}"})
            print("layer", rows[-1], flush=True)
    report["layers"] = rows


def host_overhead(report: dict) -> None:
    """Host time per fwd+bwd: a tiny input (T=16) leaves only launch and Python cost (µs per call)."""
    rows = []
    for method in ("frozen", "lora_r16", "jora_diag_oer", "jora_diag", "jora_block_oer", "jora_lowrank_oer"):
        layer = build(method, 4096, 4096, dtype=torch.bfloat16, device="cuda")
        x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        run = step_fn(layer, x, torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16))
        us = per_call_us(run, calls=100)
        rows.append({"method": method, "us_per_fwd_bwd": us, "device_us": device_ms(run) * 1e3})
        print("host", rows[-1], flush=True)
    report["host"] = rows


def train_step(model: torch.nn.Module, ids: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """One causal-LM training step (the optimizer is absent for the frozen floor)."""
    model(input_ids=ids, labels=ids).loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def model_methods() -> dict[str, object]:
    """The model table's rows: label -> PEFT config (``None``: the frozen floor)."""
    import jora_peft  # noqa: F401
    from jora_peft import JoraConfig
    from peft import LoraConfig

    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    return {
        "floor (frozen, input grads)": None,
        "LoRA r16": LoraConfig(target_modules=targets, r=16, lora_alpha=16),
        "JORA diag+OER S=32": JoraConfig(target_modules=targets, S_L=32, S_R=32, k=8),
        "JORA diag S=32 (no magnitude)": JoraConfig(
            target_modules=targets, S_L=32, S_R=32, k=8, magnitude="none"
        ),
    }


def build_model(
    peft_config: object | None,
) -> tuple[torch.nn.Module, torch.optim.Optimizer | None, torch.Tensor]:
    """The 1B Llama-config model (bf16, CUDA) with ``peft_config`` (``None``: frozen, input gradients), its
    AdamW optimizer (``None`` for the floor) and a batch of 8 × 1024 token ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from peft import get_peft_model

    config = LlamaConfig(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, vocab_size=32000, max_position_embeddings=1024,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device="cuda", dtype=torch.bfloat16)
    if peft_config is None:
        model.requires_grad_(False)
        model.enable_input_require_grads()
    else:
        model = get_peft_model(model, peft_config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None
    return model, optimizer, torch.randint(0, 32000, (8, 1024), device="cuda")


def step_ms(
    model: torch.nn.Module, ids: torch.Tensor, optimizer: torch.optim.Optimizer | None, steps: int
) -> float:
    """Median wall time of ``steps`` training steps (ms, device events around each step)."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(steps):
        start.record()
        train_step(model, ids, optimizer)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


ModelRow = tuple[torch.nn.Module, "torch.optim.Optimizer | None", torch.Tensor]


def model_table(report: dict, rounds: int = 4, steps: int = 8) -> dict[str, ModelRow]:
    """The model rows, resident together, timed in interleaved rounds; returns them (label -> row).

    Each row is built and warmed up (its peak memory measured over one step, above what was allocated before
    it was built); then each round times ``steps`` steps of every row after two warm-up steps, in an order
    rotated per round, so the host's and GPU's drift spreads over all rows. Reported per row: the median of
    its round medians, and the ratios to the floor and to LoRA r16 paired per round (median and range).
    """
    models: dict[str, ModelRow] = {}
    rows: dict[str, dict] = {}
    for label, peft_config in model_methods().items():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        model, optimizer, ids = build_model(peft_config)
        for _ in range(12):  # JORA sides are full after 4 rounds (S=32, k=8); compiled kernels warm too
            train_step(model, ids, optimizer)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        train_step(model, ids, optimizer)
        torch.cuda.synchronize()
        models[label] = (model, optimizer, ids)
        rows[label] = {
            "method": label, "peak_gib": (torch.cuda.max_memory_allocated() - before) / 2**30,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "round_ms": [],
        }  # fmt: skip
    labels = list(models)
    for index in range(rounds):
        shift = index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            model, optimizer, ids = models[label]
            for _ in range(2):
                train_step(model, ids, optimizer)
            rows[label]["round_ms"].append(step_ms(model, ids, optimizer, steps))
        print(
            "model round",
            index,
            {label: round(rows[label]["round_ms"][-1], 1) for label in labels},
            flush=True,
        )
    floor, lora = rows[labels[0]]["round_ms"], rows[labels[1]]["round_ms"]
    for row in rows.values():
        to_floor = [ms / ref for ms, ref in zip(row["round_ms"], floor, strict=True)]
        to_lora = [ms / ref for ms, ref in zip(row["round_ms"], lora, strict=True)]
        row |= {
            "ms_per_step": statistics.median(row["round_ms"]),
            "x_floor": statistics.median(to_floor), "x_floor_range": (min(to_floor), max(to_floor)),
            "x_lora": statistics.median(to_lora), "x_lora_range": (min(to_lora), max(to_lora)),
        }  # fmt: skip
        print("model", row, flush=True)
    report["model"] = list(rows.values())
    report["model_method"] = f"{rounds} interleaved rounds x {steps} steps, median of the round medians"
    return models


def compile_check(report: dict) -> None:
    import torch._dynamo
    from transformers import LlamaConfig, LlamaForCausalLM

    import jora_peft  # noqa: F401
    from jora_peft import JoraConfig
    from peft import get_peft_model

    torch._dynamo.reset()
    config = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000
    )
    model = get_peft_model(
        LlamaForCausalLM(config).cuda(), JoraConfig(target_modules=["q_proj", "v_proj"], S_L=8, S_R=8, k=4)
    )
    model.train()
    ids = torch.randint(0, 1000, (4, 128), device="cuda")
    explanation = torch._dynamo.explain(model)(input_ids=ids, labels=ids)
    compiled = torch.compile(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(5):
        loss = compiled(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    state = model.jora_state()
    report["compile"] = {
        "graph_breaks": explanation.graph_break_count,
        "break_reasons": sorted({str(r.reason)[:200] for r in explanation.break_reasons})[:10],
        "losses": losses,
        "steps": sorted({s["step"] for s in state.values()}),
    }
    print("compile", report["compile"], flush=True)


def markdown(report: dict) -> str:
    lines = [
        f"# GPU results\n\nDate: {report['date']}  \nGPU: {report['gpu']}  \nVersions: {report['versions']}\n"
    ]
    if "correctness" in report:
        lines += [
            "## Correctness (Triton vs torch, and vs float64 dense)\n",
            "| dtype | core | T | n | m | S | max rel. error | ok |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['dtype']} | {r.get('core', 'diag')} (b={r.get('block_size', 1)}{', refold' if r.get('refold') else ''})"
            f" | {r['T']} | {r['n']} | {r['m']}"
            f" | {r['S']} | {r['max_rel']:.2e} | {r['ok']} |"
            for r in report["correctness"]
        ]
    if "layers" in report:
        lines += [
            "\n## Layer: fwd+bwd, bf16, Linear(d, d)\n",
            "Wall: `do_bench` (median), the host's launch and Python cost included. Device: the GPU's time alone"
            " (the host queues the call while the GPU is kept busy; `device_ms`), ratios to the same column.\n",
            "| T | d | method | trainable | wall ms | × frozen | × LoRA r16 | device ms | × frozen | × LoRA r16"
            " | extra peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["layers"]:
            if "error" in r:
                lines.append(
                    f"| {r['T']} | {r['d']} | {r['method']} | – | error: {r['error'][:80]} | | | | | | |"
                )
                continue
            ref = {
                x["method"]: x
                for x in report["layers"]
                if x["T"] == r["T"] and x["d"] == r["d"] and "ms" in x
            }
            frozen, lora = ref.get("frozen"), ref.get("lora_r16")
            lines.append(
                f"| {r['T']} | {r['d']} | {r['method']} | {r['trainable']:,} | {r['ms']:.3f} | "
                f"{r['ms'] / frozen['ms']:.2f} | {r['ms'] / lora['ms']:.2f} | {r['device_ms']:.3f} | "
                f"{r['device_ms'] / frozen['device_ms']:.2f} | {r['device_ms'] / lora['device_ms']:.2f} | "
                f"{r['extra_mib']:.0f} |"
            )
    if "model" in report:
        lines += [
            "\n## Model: Llama 1B config, q/k/v/o, batch 8 × 1024, bf16, AdamW\n",
            f"{report.get('model_method', 'one pass')}; ratios paired per round (median, range).\n",
            "| method | ms/step | rounds | × floor | × LoRA r16 | peak GiB | trainable |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["model"]:
            rounds = r.get("round_ms") or [r["ms_per_step"]]
            ratios = [
                f"{r[key]:.3f} ({r[key + '_range'][0]:.3f}–{r[key + '_range'][1]:.3f})" if key in r else "–"
                for key in ("x_floor", "x_lora")
            ]
            lines.append(
                f"| {r['method']} | {r['ms_per_step']:.1f} | {min(rounds):.1f}–{max(rounds):.1f} | {ratios[0]} | "
                f"{ratios[1]} | {r['peak_gib']:.2f} | {r['trainable']:,} |"
            )
    if "host" in report:
        lines += [
            "\n## Host time per fwd+bwd (T=16, d=4096: launch and Python cost)\n",
            "| method | wall µs | device µs |",
            "|---|---|---|",
        ]
        lines += [
            f"| {r['method']} | {r['us_per_fwd_bwd']:.0f} | {r.get('device_us', float('nan')):.0f} |"
            for r in report["host"]
        ]
    if "compile" in report:
        lines += ["\n## torch.compile\n", f"```\n{json.dumps(report['compile'], indent=1)}\n```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sections", default="correctness,layers,model,compile")
    parser.add_argument("--quick", action="store_true", help="the layer table at T=8192, d=4096 only")
    parser.add_argument("--shapes", help="layer-table shapes TxD, comma-separated (overrides --quick)")
    parser.add_argument(
        "--methods", default=",".join(LAYER_METHODS), help="layer-table methods, comma-separated (frozen and LoRA r16, the"
        " ratios' references, are always measured)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.shapes:
        shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    elif args.quick:
        shapes = [(8192, 4096)]
    else:
        shapes = [(8192, 2048), (8192, 4096), (8192, 8192), (32768, 2048), (32768, 4096), (32768, 8192)]
    methods = ["frozen", "lora_r16"] + [m for m in args.methods.split(",") if m not in ("frozen", "lora_r16")]
    if unknown := set(methods) - set(BUILDERS):
        parser.error(f"--methods: unknown {sorted(unknown)}; known: {sorted(BUILDERS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    import transformers

    import peft

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(),
        "versions": f"torch {torch.__version__}, triton {triton.__version__}, peft {peft.__version__}, transformers {transformers.__version__}",
    }
    sections = {
        "correctness": correctness,
        "layers": lambda r: layer_table(r, shapes, methods),
        "model": lambda r: model_table(r).clear(),  # the resident models are released
        "compile": compile_check,
        "host": host_overhead,
    }
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            sections[name](report)
        except Exception:  # noqa: BLE001  (report and keep going: one device call must return every section)
            report[f"{name}_error"] = traceback.format_exc()
            print(report[f"{name}_error"], flush=True)
        print(f"section {name} took {time.perf_counter() - start:.0f} s", flush=True)
        (args.out / "gpu_results.json").write_text(json.dumps(report, indent=1, default=str))
        (args.out / "gpu_results.md").write_text(markdown(report))
    print(markdown(report))
    assert set(BUILDERS) >= set(LAYER_METHODS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
