"""FSDP2 (``fully_shard``) with 2 CPU ranks (gloo): training matches one process on both ranks' data."""

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
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="needs torch.distributed")


def _model() -> torch.nn.Module:
    from jora_peft import JoraConfig
    from model_factory import MODELS
    from peft import get_peft_model

    build, targets = MODELS["llama"]
    config = JoraConfig(target_modules=targets, S_L=4, S_R=4, k=1, warmup_steps=4)
    return get_peft_model(build(seed=3), config)


def _batch(rank: int, step: int) -> torch.Tensor:
    from model_factory import token_batch

    return token_batch(2, 12, seed=1000 * rank + step)


def _adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    state = {k: v for k, v in model.state_dict().items() if "jora_" in k}
    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone() for k, v in state.items()}


def _train(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for ids in batches:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _worker(rank: int, port: int, out_dir: str) -> None:
    sys.path.insert(0, TESTS_DIR)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        model = _model()
        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        _train(model, [_batch(rank, step) for step in range(STEPS)])
        result = _adapter_state(model)
        with pytest.raises(RuntimeError, match="sharded"):
            model.jora_state()
        fsdp_modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for module in fsdp_modules:
            module.unshard()
        result |= {
            f"summary.{name}.{key}": s[key]
            for name, s in model.jora_state().items()
            for key in ("theta_L", "pairs_L")
        }
        for module in fsdp_modules:
            module.reshard()
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_trains_like_one_process_on_both_ranks_data(tmp_path: Path) -> None:
    """Each rank trains on its own micro-batches with θ, cores and logits sharded (DTensors outside forward):
    pairs (chosen from the all-reduced statistics), statistics and parameters equal those of one process
    trained on both ranks' micro-batches together (FSDP averages the gradients, JORA the statistics).
    ``jora_state()`` names the sharding as long as the parameters are sharded and reads them once unsharded."""
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    reference_model = _model()
    _train(
        reference_model, [torch.cat([_batch(r, step) for r in range(WORLD_SIZE)]) for step in range(STEPS)]
    )
    reference = _adapter_state(reference_model)
    reference |= {
        f"summary.{name}.{key}": s[key]
        for name, s in reference_model.jora_state().items()
        for key in ("theta_L", "pairs_L")
    }
    assert reference.keys() == ranks[0].keys() == ranks[1].keys()
    for key, value in reference.items():
        if value.dtype == torch.long:  # pairs, step, seed
            assert torch.equal(ranks[0][key], value) and torch.equal(ranks[1][key], value), key
        elif "ema_" in key:  # each rank's own EMA: their mean is the whole batch's (averaged at each round)
            mean = (ranks[0][key] + ranks[1][key]) / WORLD_SIZE
            if key.endswith("ema_L"):  # a rank's g is its own mean loss's: WORLD_SIZE × the whole batch's
                mean = mean / WORLD_SIZE**2
            torch.testing.assert_close(mean, value, rtol=1e-4, atol=1e-9)
        else:
            for state in ranks:
                torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert all((value >= 0).all() for key, value in reference.items() if key.endswith("pairs_L"))
