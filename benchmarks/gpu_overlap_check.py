"""The backward's ∂L/∂x matmul beside the token sums (device tool): does cuBLAS's SM count target take effect,
and does the overlapped backward give the serial backward's gradients?

    python benchmarks/gpu_overlap_check.py [--sms 0,8,16,24,32] [--shapes 8192x4096,8192x2048]

Prints the device time of ``g @ W`` per SM carve-out (``torch._C._set_sm_carveout_experimental``) and, for
JORA-diag+OER, the largest difference of every gradient between ``OVERLAP_SMS = -1`` (serial) and each
carve-out (parameter gradients come from the same kernels: equal; ``∂L/∂x`` may take another cuBLAS kernel).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from gpu_tables import device_ms
from jora_ops import _sparse_core_triton
from layers import build


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sms", default="0,8,16,24,32")
    parser.add_argument("--shapes", default="8192x4096,8192x2048")
    args = parser.parse_args()
    carveouts = [int(v) for v in args.sms.split(",")]
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
    for T, d in shapes:
        g = torch.randn(T, d, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(d, d, device="cuda", dtype=torch.bfloat16)
        for sms in carveouts:
            torch._C._set_sm_carveout_experimental(sms or None)
            ms = device_ms(lambda g=g, w=w: g @ w)
            torch._C._set_sm_carveout_experimental(None)
            print(f"matmul T={T} d={d} carveout={sms}: {ms:.4f} ms", flush=True)
        layer = build("jora_diag_oer", d, d, dtype=torch.bfloat16, device="cuda")
        x = torch.randn(T, d, device="cuda", dtype=torch.bfloat16)
        grads = {}
        for sms in [-1, *carveouts]:
            _sparse_core_triton.OVERLAP_SMS = sms
            layer.zero_grad(set_to_none=True)
            x_leaf = x.clone().requires_grad_(True)
            layer(x_leaf).backward(g)
            torch.cuda.synchronize()
            named = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
            grads[sms] = {"x": x_leaf.grad.clone(), **named}
        _sparse_core_triton.OVERLAP_SMS = -1
        for sms in carveouts:
            diffs = {
                name: (grads[sms][name].float() - ref.float()).abs().max().item()
                for name, ref in grads[-1].items()
            }
            print(f"grads T={T} d={d} carveout={sms} vs serial: max |diff| {diffs}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
