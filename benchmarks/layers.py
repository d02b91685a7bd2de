"""Adapted layers for benchmarks: JORA variants and PEFT peers, all wrapped around one frozen Linear.

Every builder returns a module whose ``forward(x)`` is the adapted layer; trainable parameters are the
adapter's only. Used by the CPU pytest-benchmark suite and the GPU table script.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

import jora_peft  # noqa: F401  (registers JORA)
from jora_ops import compute_oer_scale_softmax, jora_delta
from jora_peft import JoraConfig
from peft import IA3Config, LoraConfig, OFTConfig, RoadConfig, get_peft_model

JORA_SLOTS = 32


class Frozen(nn.Module):
    """The frozen layer alone (input gradient only)."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)


class StraightforwardJoraDiag(nn.Module):
    """JORA-diag as a plain composition of torch ops (no fused function): the baseline to beat."""

    def __init__(self, base: nn.Linear, magnitude: bool) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        reference = _jora(base, "diag", "oer_softmax" if magnitude else "none")
        self.adapter = reference.base_model.model[0].jora_adapters["default"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.adapter
        h = self.base(x) + jora_delta(
            x,
            core=a.core.spec,
            core_params=a.core.params(),
            core_offset=a.core.offset(),
            pairs_L=a.pairs_L,
            theta_L=a.theta_L,
            pairs_R=a.pairs_R,
            theta_R=a.theta_R,
        ).to(x.dtype)
        if a.mag_logits is None:
            return h
        s = compute_oer_scale_softmax(a.row_norms, a.total_energy, a.mag_logits, a.temperature)
        return (h * s).to(x.dtype)


def _peft(base: nn.Linear, config) -> nn.Module:
    return get_peft_model(nn.Sequential(copy.deepcopy(base)), config)


def _jora(base: nn.Linear, core: str, magnitude: str) -> nn.Module:
    config = JoraConfig(
        target_modules=["0"],
        S_L=JORA_SLOTS,
        S_R=JORA_SLOTS,
        k=8,
        core=core,
        block_size=4,
        lowrank_r=8,
        magnitude=magnitude,
        selection="none",  # all slots active and frozen: the steady state of training
    )
    return _peft(base, config)


def _lora_r16(base: nn.Linear) -> nn.Module:
    return _peft(base, LoraConfig(target_modules=["0"], r=16, lora_alpha=16))


BUILDERS: dict[str, Callable[[nn.Linear], nn.Module]] = {
    "frozen": Frozen,
    "lora_r16": _lora_r16,
    "lora_r16_activation_dtype": _lora_r16,  # its adapter weights cast in build (ADAPTERS_IN_ACTIVATION_DTYPE)
    "dora_r16": lambda b: _peft(b, LoraConfig(target_modules=["0"], r=16, lora_alpha=16, use_dora=True)),
    "ia3": lambda b: _peft(b, IA3Config(target_modules=["0"], feedforward_modules=[])),
    "road": lambda b: _peft(b, RoadConfig(target_modules=["0"], variant="road_1")),
    "oft_b32": lambda b: _peft(b, OFTConfig(target_modules=["0"], oft_block_size=32, r=0)),
    "jora_diag_oer": lambda b: _jora(b, "diag", "oer_softmax"),
    "jora_diag": lambda b: _jora(b, "diag", "none"),
    "jora_block_oer": lambda b: _jora(b, "block", "oer_softmax"),
    "jora_block": lambda b: _jora(b, "block", "none"),
    "jora_lowrank_oer": lambda b: _jora(b, "lowrank", "oer_softmax"),
    "jora_lowrank": lambda b: _jora(b, "lowrank", "none"),
    "torch_jora_diag_oer": lambda b: StraightforwardJoraDiag(b, magnitude=True),
    "torch_jora_diag": lambda b: StraightforwardJoraDiag(b, magnitude=False),
}
# methods whose adapter weights take the activation dtype too (the others keep fp32 adapters, as PEFT gives a
# bf16 model by default: LoRA then computes in fp32, on an fp32 copy of its input)
ADAPTERS_IN_ACTIVATION_DTYPE = {"lora_r16_activation_dtype"}


def build(method: str, d_in: int, d_out: int, *, dtype: torch.dtype, device: str, seed: int = 0) -> nn.Module:
    """The adapted layer ``method`` on a random ``Linear(d_in, d_out, bias=False)``."""
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out, bias=False)
    layer = BUILDERS[method](base).to(device=device)
    for param in layer.parameters():
        if not param.requires_grad or method in ADAPTERS_IN_ACTIVATION_DTYPE:
            param.data = param.data.to(dtype)  # frozen weights in the activation dtype; adapters fp32 but for
            # ADAPTERS_IN_ACTIVATION_DTYPE
    return layer.train()


def trainable(layer: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in layer.parameters() if p.requires_grad)


def step_fn(
    layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, autocast: torch.dtype | None = None
) -> Callable[[], None]:
    """One forward + backward (input gradient and adapter gradients); ``autocast``: the forward under
    ``torch.autocast`` to that dtype (``Trainer(bf16=True)`` on an fp32 model)."""
    params = [p for p in layer.parameters() if p.requires_grad]

    def forward() -> torch.Tensor:
        if autocast is None:
            return layer(x)
        with torch.autocast(x.device.type, dtype=autocast):
            return layer(x)

    def run() -> None:
        out = forward()
        out.backward(grad if out.dtype == grad.dtype else grad.to(out.dtype))
        x.grad = None
        for p in params:
            p.grad = None

    return run
