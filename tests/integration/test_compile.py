"""``torch.compile(model)`` trains through JORA layers: same parameters as eager training, step counted once.

Dynamo breaks the graph at each adapter (``JoraAdapter.forward`` is ``torch.compiler.disable``-d: it runs its
own fused function); the rest of the model is compiled. CI uses the ``aot_eager`` backend (dynamo and
AOTAutograd without C++ code generation) to stay fast; inductor on CUDA is checked by the GPU script.
"""

from __future__ import annotations

import torch

from jora_peft import JoraConfig
from jora_reference import rel_error
from model_factory import MODELS, tiny_llama, token_batch
from peft import get_peft_model


def _train(compiled: bool, steps: int = 3) -> tuple[list[float], dict[str, torch.Tensor], list[int]]:
    torch._dynamo.reset()
    config = JoraConfig(
        target_modules=MODELS["llama"][1], S_L=4, S_R=4, k=2, warmup_steps=1, update_interval=1
    )
    model = get_peft_model(tiny_llama(seed=5), config)
    model.train()
    forward = torch.compile(model, backend="aot_eager") if compiled else model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for step in range(steps):
        ids = token_batch(2, 12, seed=step)
        loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if "jora_" in k}
    counters = sorted({summary["step"] for summary in model.jora_state().values()})
    return losses, state, counters


def test_compiled_model_trains_like_the_eager_model() -> None:
    eager_losses, eager_state, eager_steps = _train(compiled=False)
    compiled_losses, compiled_state, compiled_steps = _train(compiled=True)
    assert eager_steps == compiled_steps == [3]  # the step callback ran once per backward
    for got, expected in zip(compiled_losses, eager_losses, strict=True):
        assert abs(got - expected) <= 1e-5 * abs(expected)
    for key, expected in eager_state.items():
        got = compiled_state[key]
        assert (
            torch.equal(got, expected)
            if not expected.is_floating_point()
            else rel_error(got, expected) < 1e-5
        ), key
    assert any(
        float(v.abs().sum()) > 0 for k, v in compiled_state.items() if "ema_" in k
    )  # statistics flowed


def test_graph_breaks_only_at_the_adapters() -> None:
    """Every break is the adapter's ``torch.compiler.disable`` boundary: nothing inside JORA is retraced."""
    torch._dynamo.reset()
    model = get_peft_model(
        tiny_llama(seed=5), JoraConfig(target_modules=MODELS["llama"][1], S_L=4, S_R=4, k=2)
    )
    model.train()
    ids = token_batch(2, 12)
    explanation = torch._dynamo.explain(model)(input_ids=ids, labels=ids)
    assert explanation.graph_break_count >= 1
    assert all("JoraAdapter.forward" in str(reason.reason) for reason in explanation.break_reasons)
