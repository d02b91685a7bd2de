"""``nn.DataParallel`` on two GPUs trains like one GPU on the same batches (the HF Trainer wraps a model in it
when several GPUs are visible and the script was not launched by torchrun). The CPU suite checks the same
mechanism with replicas made on the CPU (``tests/core/test_adapter.py``)."""

from __future__ import annotations

import pytest
import torch

from jora_peft import JoraConfig, iter_jora_layers
from model_factory import MODELS, token_batch
from peft import get_peft_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices"),
]


def _train(core: str, parallel: bool, steps: int = 6) -> tuple[list[float], dict[str, torch.Tensor]]:
    build, targets = MODELS["llama"]
    config = JoraConfig(target_modules=targets, S_L=4, S_R=4, k=1, warmup_steps=4, core=core, block_size=4)
    model = get_peft_model(build(seed=3).cuda(), config)
    model.train()
    runner = torch.nn.DataParallel(model, device_ids=[0, 1]) if parallel else model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for step in range(steps):
        ids = token_batch(4, 12, seed=step).cuda()
        loss = runner(input_ids=ids, labels=ids).loss.mean()  # DataParallel gathers one loss per replica
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if "jora_" in k}
    for _, layer in iter_jora_layers(model):
        assert layer.jora_adapters["default"].current_step == steps
    return losses, state


@pytest.mark.parametrize("core", ["diag", "block", "lowrank"])
def test_data_parallel_on_two_gpus_trains_like_one_gpu(core: str) -> None:
    one_losses, one = _train(core, parallel=False)
    two_losses, two = _train(core, parallel=True)
    assert one.keys() == two.keys()
    for key, value in one.items():
        if value.dtype == torch.long:  # pairs (every slot filled by selection), step, seed
            assert torch.equal(value, two[key]), key
        else:  # parameters and statistics: the two halves' sums in another order
            torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-6, msg=key)
    pairs = [value for key, value in one.items() if key.endswith(("pairs_L", "pairs_R"))]
    assert pairs and all((p >= 0).all() for p in pairs)
    torch.testing.assert_close(torch.tensor(two_losses), torch.tensor(one_losses), rtol=1e-5, atol=1e-6)
