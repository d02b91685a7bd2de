"""DDP with 2 CPU ranks (gloo): identical pairs and parameters across ranks, no unused parameters."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from process_group import TESTS_DIR, free_port

WORLD_SIZE = 2
STEPS = 6


def _worker(rank: int, port: int, out_dir: str, broadcast_buffers: bool) -> None:
    sys.path.insert(0, TESTS_DIR)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        from torch.nn.parallel import DistributedDataParallel

        from jora_peft import JoraConfig
        from model_factory import MODELS, token_batch
        from peft import get_peft_model

        build, targets = MODELS["llama"]
        config = JoraConfig(target_modules=targets, S_L=4, S_R=4, k=1, warmup_steps=4)
        model = get_peft_model(build(seed=3), config)
        ddp = DistributedDataParallel(
            model, find_unused_parameters=False, broadcast_buffers=broadcast_buffers
        )
        optimizer = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=1e-2)
        ddp.train()
        for step in range(STEPS):
            ids = token_batch(2, 12, seed=1000 * rank + step)  # different data on every rank
            ddp(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        torch.save(
            {
                "state": model.jora_state(),
                "params": {k: v.detach() for k, v in model.named_parameters() if v.requires_grad},
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("broadcast_buffers", [False, True])
def test_two_gloo_ranks_select_identical_pairs(tmp_path: Path, broadcast_buffers: bool) -> None:
    # broadcast_buffers=False leaves the statistics all-reduce as the only thing keeping ranks identical
    mp.spawn(_worker, args=(free_port(), str(tmp_path), broadcast_buffers), nprocs=WORLD_SIZE, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    first, second = results
    assert first["state"].keys() == second["state"].keys() and first["state"]
    for name, entry in first["state"].items():
        other = second["state"][name]
        assert entry["step"] == other["step"] == STEPS
        assert entry["pairs_L"].shape == (4, 2)
        assert torch.equal(entry["pairs_L"], other["pairs_L"]), name
        assert torch.equal(entry["pairs_R"], other["pairs_R"]), name
    for key, value in first["params"].items():
        torch.testing.assert_close(second["params"][key], value, rtol=0, atol=0)
