"""DDP on every visible GPU (NCCL): each rank trains the tiny Llama on its own data; pairs must match.

torchrun --nproc-per-node 2 benchmarks/ddp_nccl_check.py --out "$OUT" [--core block]

On CUDA the adapters run the Triton kernels (``impl="auto"``); the result records which path ran.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--core", choices=("diag", "block"), default="diag")
    args = parser.parse_args()
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    from torch.nn.parallel import DistributedDataParallel

    import jora_peft  # noqa: F401
    from jora_peft import JoraConfig
    from model_factory import MODELS, token_batch
    from peft import get_peft_model

    build, targets = MODELS["llama"]
    model = get_peft_model(
        build(seed=3).cuda(),
        JoraConfig(target_modules=targets, S_L=4, S_R=4, k=1, warmup_steps=4, core=args.core, block_size=4),
    )
    from jora_ops import _sparse_core_triton

    triton_calls = []
    apply = _sparse_core_triton._SparseCoreLinearTriton.apply
    _sparse_core_triton._SparseCoreLinearTriton.apply = lambda *a: triton_calls.append(1) or apply(*a)
    ddp = DistributedDataParallel(model, find_unused_parameters=False, broadcast_buffers=False)
    optimizer = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=1e-2)
    ddp.train()
    for step in range(6):
        ids = token_batch(2, 12, seed=1000 * rank + step).cuda()
        ddp(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    pairs = {
        name: torch.cat([s["pairs_L"].flatten(), s["pairs_R"].flatten()])
        for name, s in model.jora_state().items()
    }
    flat = torch.cat(list(pairs.values()))
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    params = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    gathered_params = [torch.empty_like(params) for _ in range(world)]
    dist.all_gather(gathered_params, params)
    if rank == 0:
        result = {
            "world_size": world,
            "core": args.core,
            "triton_kernel_calls": len(triton_calls),
            "identical_pairs": all(torch.equal(g, gathered[0]) for g in gathered),
            "identical_parameters": all(torch.equal(g, gathered_params[0]) for g in gathered_params),
            "active_pairs_per_layer": int(flat.numel() // len(pairs) // 2),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"ddp_nccl_{args.core}.json").write_text(json.dumps(result))
        print("ddp", result, flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
