"""``JoraConfig``: the PEFT configuration of JORA (every knob of JORA.md, validated at construction)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from peft.config import PeftConfig

from jora_core.settings import MAGNITUDE_TYPES, SELECTION_TYPES, JoraSettings
from jora_ops.cores import CORE_KINDS
from jora_ops.rotation import IMPLS, ROTATION_PARAMS
from jora_ops.selection import PAIRING_STRATEGIES
from jora_peft._peft_type import JORA_PEFT_TYPE

__all__ = ["JoraConfig"]

_DEFAULTS = JoraSettings()


def _knob(default: object, help_text: str) -> object:
    return field(default=default, metadata={"help": help_text})


@dataclass
class JoraConfig(PeftConfig):
    """Configuration of a JORA adapter: ``y = s ⊙ ((W + R_Lᵀ C R_R − C₀) x) + b``.

    PEFT fields: ``target_modules`` (names, a regex, or ``"all-linear"``; ``None`` picks the architecture's
    defaults), ``exclude_modules``, ``modules_to_save``, ``layers_to_transform``, ``layers_pattern``,
    ``inference_mode``.

    Rotations: ``S_L``/``S_R`` slots per side (0 disables a side), ``rotation_param`` (``"cayley"``,
    ``"angle"``), ``rotation_impl`` (``"auto"``, ``"torch"``, ``"triton"``).
    Selection: ``k`` pairs per round, ``selection`` (``"topk_ema"``, ``"random"``, ``"none"``), ``ema_beta``,
    ``warmup_steps``, ``warmup_ratio``, ``update_interval``, ``ema_update_interval``, ``pairing_strategy``
    (``"consecutive"``, ``"high_low"``), ``use_gumbel``, ``gumbel_tau``, ``seed`` (base of the per-layer seeds).
    Core: ``core`` (``"diag"``, ``"block"``, ``"lowrank"``), ``block_size``, ``lowrank_r``, ``lowrank_alpha``,
    ``zero_init_core``. Magnitude: ``magnitude`` (``"oer_softmax"``, ``"ecd_tanh"``, ``"none"``),
    ``ecd_alpha``, ``oer_temperature``, ``ecd_temperature``, ``ecd_temp_annealing``, ``ecd_temp_start``,
    ``ecd_temp_end``, ``eps``. ``init_weights=False`` gives a random non-identity init (for tests).

    Legacy flags of the reference implementation (``use_ecd``, ``ablate_ecd``, ``use_triton``,
    ``use_cayley``) are accepted with a ``DeprecationWarning`` and mapped onto the knobs above.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names (exact or suffix match), a regex, or 'all-linear'."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or a regex of modules not to adapt."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra modules to train and save with the adapter."}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Layer indices to adapt (with layers_pattern)."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list, e.g. 'layers' or 'h'."}
    )
    S_L: int = _knob(_DEFAULTS.S_L, "Rotation slots on the output side (0 disables it; clamped to out/2).")
    S_R: int = _knob(_DEFAULTS.S_R, "Rotation slots on the input side (0 disables it; clamped to in/2).")
    k: int = _knob(_DEFAULTS.k, "Pairs chosen per selection round and side.")
    rotation_param: str = _knob(_DEFAULTS.rotation_param, f"One of {ROTATION_PARAMS}.")
    rotation_impl: str = _knob(_DEFAULTS.rotation_impl, f"One of {IMPLS}.")
    selection: str = _knob(_DEFAULTS.selection, f"One of {SELECTION_TYPES}.")
    ema_beta: float = _knob(_DEFAULTS.ema_beta, "EMA decay of the selection statistics, in [0, 1).")
    warmup_steps: int = _knob(_DEFAULTS.warmup_steps, "Steps over which the active slots grow to S.")
    warmup_ratio: float = _knob(_DEFAULTS.warmup_ratio, "Warm-up as a fraction of the total steps.")
    update_interval: int = _knob(_DEFAULTS.update_interval, "A selection round every this many steps.")
    ema_update_interval: int = _knob(_DEFAULTS.ema_update_interval, "Statistics every this many steps.")
    pairing_strategy: str = _knob(_DEFAULTS.pairing_strategy, f"One of {PAIRING_STRATEGIES}.")
    use_gumbel: bool = _knob(_DEFAULTS.use_gumbel, "Rank candidates by log-energy plus Gumbel noise.")
    gumbel_tau: float = _knob(_DEFAULTS.gumbel_tau, "Gumbel temperature (> 0).")
    seed: int = _knob(
        0, "Base seed of the per-layer generators (the core's random init, random pairs, Gumbel noise)."
    )
    core: str = _knob(_DEFAULTS.core, f"One of {CORE_KINDS}.")
    block_size: int = _knob(_DEFAULTS.block_size, "Block size of the 'block' core.")
    lowrank_r: int = _knob(_DEFAULTS.lowrank_r, "Rank of the 'lowrank' core.")
    lowrank_alpha: float | None = _knob(
        _DEFAULTS.lowrank_alpha, "Scale numerator of the 'lowrank' core (None: r)."
    )
    zero_init_core: bool = _knob(_DEFAULTS.zero_init_core, "Zero core instead of small random core minus C₀.")
    magnitude: str = _knob(_DEFAULTS.magnitude, f"One of {MAGNITUDE_TYPES}.")
    ecd_alpha: float = _knob(_DEFAULTS.ecd_alpha, "ECD gain amplitude, in [0, 1).")
    oer_temperature: float = _knob(_DEFAULTS.oer_temperature, "OER softmax temperature (> 0).")
    ecd_temperature: float = _knob(_DEFAULTS.ecd_temperature, "ECD tanh temperature (> 0).")
    ecd_temp_annealing: bool = _knob(
        _DEFAULTS.ecd_temp_annealing, "Anneal the magnitude temperature linearly."
    )
    ecd_temp_start: float = _knob(_DEFAULTS.ecd_temp_start, "Annealing start temperature (> 0).")
    ecd_temp_end: float = _knob(_DEFAULTS.ecd_temp_end, "Annealing end temperature (> 0).")
    eps: float = _knob(_DEFAULTS.eps, "Rows with a base norm <= eps keep scale 1.")
    init_weights: bool = _knob(_DEFAULTS.init_weights, "True: identity at init; False: random init (tests).")
    use_ecd: bool | None = _knob(None, "Deprecated: True → magnitude='ecd_tanh'.")
    ablate_ecd: bool | None = _knob(None, "Deprecated: True → magnitude='none'.")
    use_triton: bool | None = _knob(None, "Deprecated: True → rotation_impl='triton', False → 'torch'.")
    use_cayley: bool | None = _knob(None, "Deprecated: True → rotation_param='cayley', False → 'angle'.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = JORA_PEFT_TYPE
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, list):
            self.exclude_modules = set(self.exclude_modules)
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern is only used together with layers_to_transform")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        self._map_legacy_flags()
        self.to_settings()  # validates every knob, naming the field and its allowed values

    def _map_legacy_flags(self) -> None:
        mapping = {
            "use_ecd": lambda v: {"magnitude": "ecd_tanh"} if v else {"magnitude": "none"},
            "ablate_ecd": lambda v: {"magnitude": "none"} if v else {},
            "use_triton": lambda v: {"rotation_impl": "triton" if v else "torch"},
            "use_cayley": lambda v: {"rotation_param": "cayley" if v else "angle"},
        }
        for flag, translate in mapping.items():
            value = getattr(self, flag)
            if value is None:
                continue
            updates = translate(bool(value))
            warnings.warn(
                f"JoraConfig({flag}={value}) is deprecated; use {', '.join(f'{k}={v!r}' for k, v in updates.items()) or 'the defaults'}",
                DeprecationWarning,
                stacklevel=4,
            )
            for name, new_value in updates.items():
                setattr(self, name, new_value)
            setattr(self, flag, None)

    def to_settings(self) -> JoraSettings:
        """The knobs as a validated :class:`jora_core.JoraSettings`."""
        return JoraSettings.from_object(self)
