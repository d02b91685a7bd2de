"""The JORA cores as modules: trainable parameters plus the frozen initial copy C₀ (JORA.md §3–§4).

The math lives in :mod:`jora_ops.cores`; these modules own the parameters, their initialisation and the
structured offset ``C₀`` (a buffer of the same shapes, never a dense n×m matrix).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from jora_ops.cores import CoreSpec, core_apply, core_dense, core_param_shapes

__all__ = ["BlockCore", "DiagCore", "JoraCore", "LowRankCore", "build_core"]

SMALL_INIT_STD = 0.01  # the "small random" core of zero_init_core=False (JORA.md §4)
RANDOM_INIT_STD = 0.1  # init_weights=False: a clearly non-identity core


def _fill_random(param: torch.Tensor, law: str, size: float, generator: torch.Generator | None) -> None:
    """Fill ``param`` with ``N(0, size²)`` (``law="normal"``) or ``U(−size, size)`` (``"uniform"``), drawn on
    the CPU from ``generator`` (the same values on every device) or, without one, from the global generator of
    ``param``'s device."""
    draw = param if generator is None else torch.empty(param.shape, dtype=param.dtype)
    if law == "normal":
        draw.normal_(0.0, size, generator=generator)
    else:
        draw.uniform_(-size, size, generator=generator)
    if draw is not param:
        param.copy_(draw)


class JoraCore(nn.Module):
    """Base of the cores: parameters named by ``param_names``, optional offset buffers ``<name>_init``.

    Args:
        spec: kind and shape (see :class:`jora_ops.cores.CoreSpec`).
        zero_init: ``True`` → zero core (lowrank: ``A = 0``, ``B`` LoRA-style random), no offset.
            ``False`` → small random core and a frozen copy ``C₀`` so that the delta is 0 at init.
        init_weights: ``False`` → random core (std 0.1) without offset: a non-identity init for tests.
        device: parameter device.
        dtype: parameter dtype (fp32 by default).
        generator: a CPU generator for the random init (drawn on the CPU, then copied to ``device``: the same
            values on every device); ``None`` draws from torch's global generator of ``device``.
    """

    param_names: tuple[str, ...] = ()

    def __init__(
        self,
        spec: CoreSpec,
        *,
        zero_init: bool = False,
        init_weights: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        for name, shape in zip(self.param_names, core_param_shapes(spec), strict=True):
            self.register_parameter(name, nn.Parameter(torch.zeros(shape, device=device, dtype=dtype)))
        self.has_offset = init_weights and not zero_init
        with torch.no_grad():
            if not init_weights:
                for p in self.params():
                    _fill_random(p, "normal", RANDOM_INIT_STD, generator)
            elif zero_init:
                self._zero_init(generator)
            else:
                for p in self.params():
                    _fill_random(p, "normal", SMALL_INIT_STD, generator)
        for name in self.param_names:
            tensor = getattr(self, name).detach().clone() if self.has_offset else None
            self.register_buffer(f"{name}_init", tensor, persistent=True)

    def _zero_init(self, generator: torch.Generator | None) -> None:
        """Zero core (overridden by LowRankCore, whose B stays random so both factors learn)."""

    def bind_to(self, owner: nn.Module, prefix: str) -> None:
        """Hand this core's tensors to ``owner`` as flat attributes ``prefix + name``.

        PEFT saves per-adapter state one module level deep, so the per-adapter module owns the core's
        parameters and offset buffers directly; the core keeps reading them from ``owner`` (through
        ``.to()``, ``load_state_dict(assign=True)`` and the like, it always sees the current tensors).
        """
        for name, param in list(self._parameters.items()):
            owner.register_parameter(prefix + name, param)
            del self._parameters[name]
        for name, buffer in list(self._buffers.items()):
            owner.register_buffer(prefix + name, buffer, persistent=True)
            del self._buffers[name]
        object.__setattr__(self, "_owner", owner)  # not a submodule: no cycle in the module tree
        object.__setattr__(self, "_prefix", prefix)

    def view_on(self, owner: nn.Module) -> JoraCore:
        """This core reading its tensors from ``owner`` instead (a replica of the owner, as
        ``nn.DataParallel`` makes one per device with the replica's own parameter and buffer copies)."""
        view = copy.copy(self)
        object.__setattr__(view, "_owner", owner)
        return view

    def __getattr__(self, name: str) -> Any:
        owner = self.__dict__.get("_owner")
        if owner is not None and name.removesuffix("_init") in type(self).param_names:
            return getattr(owner, self.__dict__["_prefix"] + name)
        return super().__getattr__(name)

    def params(self) -> tuple[torch.Tensor, ...]:
        """The trainable parameter tuple in :mod:`jora_ops.cores` order."""
        return tuple(getattr(self, name) for name in self.param_names)

    def offset(self) -> tuple[torch.Tensor, ...] | None:
        """The frozen initial core ``C₀`` in structured form, or ``None`` when there is none."""
        if not self.has_offset:
            return None
        return tuple(getattr(self, f"{name}_init") for name in self.param_names)

    def forward(self) -> torch.Tensor:
        """The dense ``(n, m)`` core matrix C (without the offset)."""
        return core_dense(self.spec, self.params())

    def get_row_slice(self, start: int, end: int) -> torch.Tensor:
        """Rows ``start:end`` of the dense core."""
        return self.forward()[start:end]

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``x Cᵀ`` for ``x ∈ R^{..., m}`` without building the dense matrix.

        Called with a function instead of a tensor it behaves as :meth:`torch.nn.Module.apply` (which
        model-wide initialisers such as transformers' ``post_init`` rely on).
        """
        if not isinstance(x, torch.Tensor) and callable(x):
            return super().apply(x)  # type: ignore[return-value]
        return core_apply(self.spec, self.params(), x)

    def extra_repr(self) -> str:
        return f"n={self.spec.out_features}, m={self.spec.in_features}, offset={self.has_offset}"


class DiagCore(JoraCore):
    """``C[i, i] = c_i`` for ``i < min(n, m)``."""

    param_names = ("diag",)


class BlockCore(JoraCore):
    """Block-diagonal core: ⌊d/b⌋ blocks ``b×b`` and a remainder diagonal of length ``d mod b``."""

    param_names = ("blocks", "tail")


class LowRankCore(JoraCore):
    """``C = (α/r)·A Bᵀ`` with ``A ∈ R^{n×r}``, ``B ∈ R^{m×r}``."""

    param_names = ("A", "B")

    def _zero_init(self, generator: torch.Generator | None) -> None:
        # LoRA style: the output factor is zero, the input factor random, so both receive gradient.
        _fill_random(self.B, "uniform", 1.0 / math.sqrt(self.spec.in_features), generator)


_CORE_CLASSES: dict[str, type[JoraCore]] = {"diag": DiagCore, "block": BlockCore, "lowrank": LowRankCore}


def build_core(
    kind: str,
    out_features: int,
    in_features: int,
    *,
    block_size: int = 4,
    lowrank_r: int = 8,
    lowrank_alpha: float | None = None,
    zero_init: bool = False,
    init_weights: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> JoraCore:
    """Build the core ``kind`` (``"diag"``, ``"block"`` or ``"lowrank"``) for an ``n×m`` layer (arguments as
    :class:`JoraCore`'s)."""
    spec = CoreSpec(
        kind,
        out_features,
        in_features,
        block_size=block_size,
        rank=lowrank_r,
        alpha=float(lowrank_alpha if lowrank_alpha is not None else lowrank_r),
    )
    return _CORE_CLASSES[kind](
        spec, zero_init=zero_init, init_weights=init_weights, device=device, dtype=dtype, generator=generator
    )
