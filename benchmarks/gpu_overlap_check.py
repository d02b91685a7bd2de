"""The backward's ∂L/∂x matmul beside the token sums (device tool): does cuBLAS's SM count target take effect,
and does each overlapped backward give the serial backward's gradients?

    python benchmarks/gpu_overlap_check.py '{"OVERLAP_SMS": 0}' ... [--sms 0,16,32] [--shapes 8192x4096]

Prints the device time of ``g @ W`` (``mm``) and of ``addmm`` with a zero bias (cuBLASLt's bias epilogue) per
SM carve-out (``torch._C._set_sm_carveout_experimental``) and, for JORA-diag+OER, the largest difference of
every gradient between the serial backward and each knob set of ``jora_ops._sparse_core_triton``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "device"))

from with_knobs import apply_knobs

from gpu_tables import device_ms
from jora_ops import _sparse_core_triton
from layers import build


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("knobs", nargs="*", help="knob sets (JSON) to compare with the serial backward")
    parser.add_argument("--sms", default="0,16,32")
    parser.add_argument("--shapes", default="8192x4096,8192x2048")
    args = parser.parse_args()
    knob_sets = [json.loads(text) for text in args.knobs]
    names = {name for knobs in knob_sets for name in knobs}
    defaults = {name: getattr(_sparse_core_triton, name) for name in names}
    carveouts = [int(v) for v in args.sms.split(",")]
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    for T, d in shapes:
        g = torch.randn(T, d, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(d, d, device="cuda", dtype=torch.bfloat16)
        zero = torch.zeros(d, device="cuda", dtype=torch.bfloat16)
        for sms in carveouts:
            torch._C._set_sm_carveout_experimental(sms or None)
            mm = device_ms(lambda g=g, w=w: g @ w)
            addmm = device_ms(lambda g=g, w=w, zero=zero: torch.addmm(zero, g, w))
            torch._C._set_sm_carveout_experimental(None)
            print(f"matmul T={T} d={d} carveout={sms}: mm {mm:.4f} ms, addmm {addmm:.4f} ms", flush=True)
        layer = build("jora_diag_oer", d, d, dtype=torch.bfloat16, device="cuda")
        x = torch.randn(T, d, device="cuda", dtype=torch.bfloat16)
        grads = []
        for knobs in [{}, *knob_sets]:
            apply_knobs({**defaults, **knobs})
            layer.zero_grad(set_to_none=True)
            x_leaf = x.clone().requires_grad_(True)
            layer(x_leaf).backward(g)
            torch.cuda.synchronize()
            named = {
                name.rsplit(".", 1)[-1]: p.grad.clone()
                for name, p in layer.named_parameters()
                if p.grad is not None
            }
            grads.append({"x": x_leaf.grad.clone(), **named})
        apply_knobs(defaults)
        for knobs, result in zip(knob_sets, grads[1:], strict=True):
            diffs = {
                name: (result[name].float() - ref.float()).abs().max().item()
                for name, ref in grads[0].items()
            }
            print(f"grads T={T} d={d} {json.dumps(knobs)} vs serial: max |diff| {diffs}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
