"""The knobs of one JORA adapter (JORA.md §2–§6), validated in one place.

``JoraSettings`` is what :class:`~jora_core.adapter.JoraAdapter` is built from; ``jora_peft.JoraConfig``
carries the same fields and validates through this class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from jora_ops.cores import CORE_KINDS
from jora_ops.rotation import IMPLS, ROTATION_PARAMS
from jora_ops.selection import PAIRING_STRATEGIES

SELECTION_TYPES: tuple[str, ...] = ("topk_ema", "random", "none")
MAGNITUDE_TYPES: tuple[str, ...] = ("oer_softmax", "ecd_tanh", "none")

__all__ = ["MAGNITUDE_TYPES", "SELECTION_TYPES", "JoraSettings"]


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


@dataclass
class JoraSettings:
    """Every knob of a JORA adapter with the seed's defaults.

    Rotation: ``S_L``/``S_R`` slots per side (0 disables a side; clamped to ⌊dim/2⌋), ``rotation_param``
    (``"cayley"``/``"angle"``), ``rotation_impl`` (``"auto"``/``"torch"``/``"triton"``).
    Selection: ``k`` pairs per round, ``selection`` (``"topk_ema"``/``"random"``/``"none"``), ``ema_beta``,
    ``warmup_steps``, ``warmup_ratio``, ``update_interval``, ``ema_update_interval``, ``pairing_strategy``
    (``"consecutive"``/``"high_low"``), ``use_gumbel``, ``gumbel_tau``.
    Core: ``core`` (``"diag"``/``"block"``/``"lowrank"``), ``block_size``, ``lowrank_r``, ``lowrank_alpha``
    (``None`` → ``lowrank_r``), ``zero_init_core``.
    Magnitude: ``magnitude`` (``"oer_softmax"``/``"ecd_tanh"``/``"none"``), ``ecd_alpha`` ∈ [0, 1),
    ``oer_temperature``, ``ecd_temperature``, ``ecd_temp_annealing``, ``ecd_temp_start``, ``ecd_temp_end``,
    ``eps``. ``init_weights``: ``True`` → identity at init, ``False`` → random non-identity init (tests).
    """

    S_L: int = 32
    S_R: int = 32
    k: int = 8
    rotation_param: str = "cayley"
    rotation_impl: str = "auto"
    selection: str = "topk_ema"
    ema_beta: float = 0.98
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    update_interval: int = 1
    ema_update_interval: int = 1
    pairing_strategy: str = "consecutive"
    use_gumbel: bool = False
    gumbel_tau: float = 1.0
    core: str = "diag"
    block_size: int = 4
    lowrank_r: int = 8
    lowrank_alpha: float | None = None
    zero_init_core: bool = False
    magnitude: str = "oer_softmax"
    ecd_alpha: float = 0.5
    oer_temperature: float = 1.0
    ecd_temperature: float = 1.0
    ecd_temp_annealing: bool = False
    ecd_temp_start: float = 1.0
    ecd_temp_end: float = 0.1
    eps: float = 1e-8
    init_weights: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field and its allowed values."""
        _integer("S_L", self.S_L, 0)
        _integer("S_R", self.S_R, 0)
        _integer("k", self.k, 0)
        _choice("rotation_param", self.rotation_param, ROTATION_PARAMS)
        _choice("rotation_impl", self.rotation_impl, IMPLS)
        _choice("selection", self.selection, SELECTION_TYPES)
        if isinstance(self.ema_beta, bool) or not 0.0 <= self.ema_beta < 1.0:
            raise ValueError(f"ema_beta must be in [0, 1), got {self.ema_beta!r}")
        _integer("warmup_steps", self.warmup_steps, 0)
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio!r}")
        _integer("update_interval", self.update_interval, 1)
        _integer("ema_update_interval", self.ema_update_interval, 1)
        _choice("pairing_strategy", self.pairing_strategy, PAIRING_STRATEGIES)
        _positive("gumbel_tau", self.gumbel_tau)
        _choice("core", self.core, CORE_KINDS)
        _integer("block_size", self.block_size, 1)
        _integer("lowrank_r", self.lowrank_r, 1)
        if self.lowrank_alpha is not None:
            _positive("lowrank_alpha", self.lowrank_alpha)
        _choice("magnitude", self.magnitude, MAGNITUDE_TYPES)
        if isinstance(self.ecd_alpha, bool) or not 0.0 <= self.ecd_alpha < 1.0:
            raise ValueError(f"ecd_alpha must be in [0, 1), got {self.ecd_alpha!r}")
        for name in ("oer_temperature", "ecd_temperature", "ecd_temp_start", "ecd_temp_end", "eps"):
            _positive(name, getattr(self, name))
        if self.selection != "none" and self.k == 0 and (self.S_L or self.S_R):
            raise ValueError(
                f"k must be >= 1 when selection={self.selection!r} and a side has slots (S_L or S_R > 0)"
            )

    @property
    def fixed_temperature(self) -> float:
        """The magnitude temperature without annealing (``oer_temperature`` or ``ecd_temperature``)."""
        return self.ecd_temperature if self.magnitude == "ecd_tanh" else self.oer_temperature

    @property
    def initial_temperature(self) -> float:
        """Temperature at step 0: ``ecd_temp_start`` with annealing, the fixed temperature otherwise."""
        return self.ecd_temp_start if self.ecd_temp_annealing else self.fixed_temperature

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all knobs."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_object(cls, obj: Any) -> JoraSettings:
        """Build settings from any object carrying the knob attributes (e.g. a ``JoraConfig``)."""
        return cls(**{name: getattr(obj, name) for name in cls.field_names()})

    def to_dict(self) -> dict[str, Any]:
        """The knobs as a plain dict."""
        return asdict(self)
