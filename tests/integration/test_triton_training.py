"""Training through PEFT on the Triton diag, block and lowrank paths matches the torch path step by step.

Selection fills the slots over the first steps (active prefixes of the slot tables, then whole tables),
statistics feed the selection, the magnitude is trained: losses, pairs and every parameter must agree.
On CPU the kernels run under ``TRITON_INTERPRET=1`` (CI); on a CUDA machine on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from jora_ops import _dispatch
from jora_peft import JoraConfig
from jora_reference import rel_error
from model_factory import MODELS, token_batch
from peft import get_peft_model

pytestmark = pytest.mark.skipif(
    not (_dispatch.triton_available() and (_dispatch.triton_interpreting() or torch.cuda.is_available())),
    reason="needs triton with TRITON_INTERPRET=1 (CI) or a CUDA device",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _train(
    arch: str, impl: str, magnitude: str, core: str, steps: int
) -> tuple[list[float], dict[str, torch.Tensor]]:
    build, targets = MODELS[arch]
    config = JoraConfig(
        target_modules=targets, S_L=4, S_R=4, k=2, warmup_steps=2, update_interval=1, magnitude=magnitude,
        rotation_impl=impl, init_weights=False, core=core, block_size=4,
    )  # fmt: skip
    model = get_peft_model(build(seed=3), config).to(DEVICE)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for step in range(steps):
        ids = token_batch(2, 12, seed=step).to(DEVICE)
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if "jora_" in k}
    return losses, state


@pytest.mark.parametrize(
    ("arch", "magnitude", "core"),
    [
        ("llama", "oer_softmax", "diag"),
        ("gpt2", "ecd_tanh", "diag"),
        ("llama", "ecd_tanh", "block"),
        ("gpt2", "oer_softmax", "lowrank"),
    ],
)
def test_training_on_the_triton_path_matches_the_torch_path(arch: str, magnitude: str, core: str) -> None:
    torch_losses, torch_state = _train(arch, "torch", magnitude, core, steps=6)
    triton_losses, triton_state = _train(arch, "triton", magnitude, core, steps=6)
    assert len(set(torch_losses)) > 1  # the model trains
    for got, expected in zip(triton_losses, torch_losses, strict=True):
        assert abs(got - expected) <= 1e-5 * abs(expected)
    assert triton_state.keys() == torch_state.keys()
    for key, expected in torch_state.items():
        got = triton_state[key]
        if not expected.is_floating_point():  # pairs, step, seed: identical
            assert torch.equal(got, expected), key
        else:
            assert rel_error(got, expected) < 1e-4, key
    assert any(int((v[:, 0] >= 0).sum()) == 4 for k, v in torch_state.items() if k.endswith("pairs_L"))
