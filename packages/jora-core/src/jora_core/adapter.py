"""One JORA adapter on one layer: state, initialisation, statistics, selection rounds and the merge delta.

The adapter holds the state of JORA.md §7. Its forward runs the fused function of :mod:`jora_ops.fused`; the
backward of that function feeds the selection statistics and, once per backward call, advances the step
counter, updates the EMA statistics, the temperature and runs the selection round (through a callback queued
on the autograd engine), so any training loop drives the schedule without a manual call.

Counts that decide shapes (active pairs per side, the step) are mirrored as Python ints, so forward and
backward never synchronise with the device; the mirrors are refreshed from the buffers when a state dict is
loaded.
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from jora_core.cores import JoraCore, build_core
from jora_core.layers import get_in_out_features, weight_layout
from jora_core.settings import JoraSettings
from jora_ops._compile import compile_enabled, run
from jora_ops.fused import Magnitude, jora_delta, jora_linear
from jora_ops.magnitude import compute_ecd_scale, compute_oer_scale_softmax, linear_temperature_anneal
from jora_ops.selection import (
    compute_allowed_pairs,
    ema_update,
    select_random_pairs,
    select_top_k_pairs_gpu,
)

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed support has no sharded tensors
    DTensor = None

__all__ = ["SIDES", "JoraAdapter"]

SIDES: tuple[str, ...] = ("L", "R")
RANDOM_THETA_RANGE = 0.5  # init_weights=False: θ ~ U(−0.5, 0.5)
RANDOM_LOGIT_STD = 0.3  # init_weights=False: magnitude logits ~ N(0, 0.3²)
_REPLICA_LOCK = threading.Lock()  # nn.DataParallel replicas merge their backward into the source adapter
_RANDOM_INIT, _CORE_INIT = 7, 8  # purposes of the per-layer generators drawn at creation (θ/logits, the core)


def _mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (identical on every rank and every run)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def _seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from integers with :func:`_mix_seed` (the same draws on every rank and run)."""
    return torch.Generator().manual_seed(_mix_seed(*parts))


def _is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter sharded by FSDP2 outside forward)."""
    return DTensor is not None and isinstance(tensor, DTensor)


@dataclass(slots=True)
class _HostState:
    """Host mirrors of the counters that decide shapes and the schedule (never read back from the device).

    A plain object, not module attributes: ``nn.Module.__setattr__`` costs microseconds per assignment, and the
    step and the queued backward pass change on every backward call.
    """

    seed: int
    step: int = 0
    total_steps: int | None = None
    active: dict[str, int] = field(default_factory=lambda: {"L": 0, "R": 0})
    calls: dict[str, int] = field(default_factory=lambda: {"L": 0, "R": 0})
    queued_task: int = -1  # id of the backward pass (graph task) whose end-of-backward callback is queued


class JoraAdapter(nn.Module):
    """The per-adapter, per-layer JORA module.

    Args:
        base_weight: the frozen base weight (``[n, m]`` for ``"linear"``, ``[m, n]`` for ``"conv1d"``); only
            read at creation for the row norms ``ν`` and the energy ``E``.
        layout: ``"linear"`` or ``"conv1d"``.
        settings: the knobs (defaults when ``None``); keyword ``knobs`` override single fields.
        seed: per-layer seed of every random draw (the core's init, random pairs, Gumbel noise, the random
            θ and logits of ``init_weights=False``): the same adapter on every rank and device, whatever the
            state of torch's global generators.
        name: the layer's name, used in warnings.

    Trainable: ``theta_L`` ``[S_L]``, ``theta_R`` ``[S_R]``, the core's parameters and ``mag_logits`` ``[n]``
    (absent with ``magnitude="none"``). Persistent buffers: ``pairs_L``/``pairs_R`` (``-1`` = empty),
    ``step`` (written from the host count when the state dict is taken; :attr:`current_step` is live),
    ``total_steps`` (``-1`` = unknown), ``temperature``, ``ema_L``/``ema_R``, ``row_norms``,
    ``total_energy``, ``seed`` and the core's offset.

    Every floating parameter and buffer is fp32 on any base dtype and stays fp32 when the model is cast
    (``model.to(torch.bfloat16)``, ``.half()``, ``.double()``): the cast moves them to its device only, as if
    the adapter had been created on the cast model (see :meth:`_apply`).
    """

    def __init__(
        self,
        base_weight: torch.Tensor,
        layout: str = "linear",
        settings: JoraSettings | None = None,
        *,
        seed: int = 0,
        name: str = "layer",
        **knobs: Any,
    ) -> None:
        super().__init__()
        layer_seed = int(seed) & 0x7FFFFFFFFFFFFFFF
        settings = settings or JoraSettings()
        if knobs:
            settings = JoraSettings(**{**settings.to_dict(), **knobs})
        if layout not in ("linear", "conv1d"):
            raise ValueError(f"layout must be 'linear' or 'conv1d', got {layout!r}")
        if base_weight.dim() != 2:
            raise ValueError(f"base_weight must be 2-D, got shape {tuple(base_weight.shape)}")
        self.settings = settings
        self.layout = layout
        self.name = name
        weight = base_weight.detach()
        n, m = weight.shape if layout == "linear" else weight.shape[::-1]
        self.out_features, self.in_features = int(n), int(m)
        device = weight.device
        self.S_L = self._clamp_slots("S_L", settings.S_L, self.out_features)
        self.S_R = self._clamp_slots("S_R", settings.S_R, self.in_features)

        fp32 = {"dtype": torch.float32, "device": device}  # every float tensor, whatever the default dtype
        self.theta_L = nn.Parameter(torch.zeros(self.S_L, **fp32))
        self.theta_R = nn.Parameter(torch.zeros(self.S_R, **fp32))
        core = build_core(
            settings.core,
            self.out_features,
            self.in_features,
            block_size=settings.block_size,
            lowrank_r=settings.lowrank_r,
            lowrank_alpha=settings.lowrank_alpha,
            zero_init=settings.zero_init_core,
            init_weights=settings.init_weights,
            device=device,
            generator=_seeded_generator(layer_seed, _CORE_INIT),
        )
        core.bind_to(self, "core_")  # flat state-dict keys: core_<param>, core_<param>_init
        self.core: JoraCore
        object.__setattr__(self, "core", core)  # a view on this module's tensors, not a submodule
        has_magnitude = settings.magnitude != "none"
        self.mag_logits = nn.Parameter(torch.zeros(self.out_features, **fp32)) if has_magnitude else None

        row_norms = weight.float().norm(dim=1 if layout == "linear" else 0)
        self.register_buffer("row_norms", row_norms)
        self.register_buffer("total_energy", (row_norms * row_norms).sum())
        self.register_buffer("pairs_L", torch.full((self.S_L, 2), -1, dtype=torch.long, device=device))
        self.register_buffer("pairs_R", torch.full((self.S_R, 2), -1, dtype=torch.long, device=device))
        self.register_buffer("step", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("total_steps", torch.full((), -1, dtype=torch.long, device=device))
        self.register_buffer("temperature", torch.full((), settings.initial_temperature, **fp32))
        self.register_buffer("seed", torch.tensor(layer_seed, device=device))
        self.register_buffer("ema_L", torch.zeros(self.out_features, **fp32))
        self.register_buffer("ema_R", torch.zeros(self.in_features, **fp32))
        self.register_buffer("acc_L", torch.zeros(self.out_features, **fp32), persistent=False)
        self.register_buffer("acc_R", torch.zeros(self.in_features, **fp32), persistent=False)

        self._host = _HostState(seed=layer_seed)
        self.register_load_state_dict_post_hook(JoraAdapter._refresh_mirrors)
        self.register_state_dict_pre_hook(JoraAdapter._write_step)

        if settings.selection == "none" or not settings.init_weights:
            self.init_random_pairs()
        if not settings.init_weights:
            with torch.no_grad():
                generator = _seeded_generator(layer_seed, _RANDOM_INIT)
                for theta in (self.theta_L, self.theta_R):
                    rand = torch.rand(theta.shape, generator=generator, dtype=torch.float32) * 2 - 1
                    theta.copy_(RANDOM_THETA_RANGE * rand)
                if self.mag_logits is not None:
                    self.mag_logits.copy_(
                        RANDOM_LOGIT_STD
                        * torch.randn(self.out_features, generator=generator, dtype=torch.float32)
                    )

    def _apply(self, fn: Any, recurse: bool = True) -> JoraAdapter:
        """``nn.Module._apply`` (behind ``to``, ``cuda``, ``half``...) that keeps the fp32 tensors fp32.

        A dtype cast of the model would leave the statistics buffers in a dtype the fused function refuses,
        round the row norms, the energy and the angles, and break ``C − C₀ = 0`` at init; here each fp32
        parameter, gradient and buffer takes only the cast's device, with its values unchanged.
        """
        fp32 = torch.float32
        # aliases of the storages before the cast (``.data``: the cast swaps the tensors' data in place)
        params = {
            k: (p.data, p.grad.data if p.grad is not None else None)
            for k, p in self._parameters.items()
            if p is not None and p.dtype == fp32
        }
        buffers = {k: b for k, b in self._buffers.items() if b is not None and b.dtype == fp32}
        super()._apply(fn, recurse)
        for key, (data, grad) in params.items():
            param = self._parameters[key]
            assert param is not None
            if param.dtype != fp32:
                device = param.device
                param.grad = None  # (a gradient must match its parameter's dtype at every assignment)
                param.data = data.to(device)
                param.grad = grad.to(device) if grad is not None else None
        for key, buffer in buffers.items():
            if self._buffers[key].dtype != fp32:
                self._buffers[key] = buffer.to(self._buffers[key].device)
        return self

    @classmethod
    def from_layer(
        cls,
        layer: nn.Module,
        settings: JoraSettings | None = None,
        *,
        seed: int = 0,
        name: str = "layer",
        **knobs: Any,
    ) -> JoraAdapter:
        """Build the adapter for an ``nn.Linear`` or transformers ``Conv1D`` layer."""
        get_in_out_features(layer)  # raises TypeError naming the unsupported type
        return cls(layer.weight, weight_layout(layer), settings, seed=seed, name=name, **knobs)

    def _clamp_slots(self, knob: str, slots: int, dim: int) -> int:
        limit = dim // 2
        if slots > limit:
            warnings.warn(
                f"JORA layer {self.name!r}: {knob}={slots} exceeds ⌊{dim}/2⌋ = {limit}; clamped to {limit}",
                UserWarning,
                stacklevel=3,
            )
            return limit
        return slots

    # ------------------------------------------------------------------ state
    def _slots(self, side: str) -> int:
        return self.S_L if side == "L" else self.S_R

    def _pairs(self, side: str) -> torch.Tensor:
        return self.pairs_L if side == "L" else self.pairs_R

    def _theta(self, side: str) -> nn.Parameter:
        return self.theta_L if side == "L" else self.theta_R

    def _ema(self, side: str) -> torch.Tensor:
        return self.ema_L if side == "L" else self.ema_R

    def _acc(self, side: str) -> torch.Tensor:
        return self.acc_L if side == "L" else self.acc_R

    def active_count(self, side: str) -> int:
        """Number of active slots of side ``"L"`` or ``"R"`` (host value, no device sync)."""
        return self._host.active[side]

    def is_frozen(self, side: str) -> bool:
        """A side is frozen when all its slots are active (a side with no slots is always frozen)."""
        return self._host.active[side] >= self._slots(side)

    @property
    def current_step(self) -> int:
        """Number of backward calls seen (host value)."""
        return self._host.step

    @staticmethod
    def _refresh_mirrors(module: nn.Module, incompatible_keys: Any) -> None:
        assert isinstance(module, JoraAdapter)
        for side in SIDES:
            module._host.active[side] = int((module._pairs(side)[:, 0] >= 0).sum())
        module._host.step = int(module.step)
        total = int(module.total_steps)
        module._host.total_steps = total if total >= 0 else None
        module._host.seed = int(module.seed)

    @staticmethod
    def _write_step(module: nn.Module, prefix: str, keep_vars: bool) -> None:
        """Before the state is saved: the ``step`` buffer takes the host count (not written per backward)."""
        assert isinstance(module, JoraAdapter)
        module.step.fill_(module._host.step)

    def set_total_steps(self, total_steps: int | None) -> None:
        """Set the number of training steps (for ``warmup_ratio`` and temperature annealing)."""
        if total_steps is not None and (isinstance(total_steps, bool) or total_steps < 0):
            raise ValueError(f"total_steps must be a non-negative int or None, got {total_steps!r}")
        self._host.total_steps = total_steps
        self.total_steps.fill_(-1 if total_steps is None else total_steps)

    # ------------------------------------------------------------------ math
    def scale(self) -> torch.Tensor:
        """The row scale ``s ∈ R^n`` (fp32); all ones with ``magnitude="none"``."""
        s = self.settings
        if self.mag_logits is None:
            return torch.ones(self.out_features, dtype=torch.float32, device=self.row_norms.device)
        compiled = compile_enabled(self.mag_logits)
        if s.magnitude == "oer_softmax":
            return run(
                compute_oer_scale_softmax, compiled, self.row_norms, self.total_energy, self.mag_logits,
                self.temperature, s.eps,
            )  # fmt: skip
        return run(
            compute_ecd_scale, compiled, self.row_norms, self.total_energy, self.mag_logits, s.ecd_alpha,
            self.temperature, s.eps,
        )  # fmt: skip

    def _magnitude(self) -> Magnitude | None:
        """The magnitude inputs of the fused function (``s`` is computed inside it)."""
        if self.mag_logits is None:
            return None
        s = self.settings
        return Magnitude(
            s.magnitude,
            self.mag_logits,
            self.row_norms,
            self.total_energy,
            self.temperature,
            s.eps,
            s.ecd_alpha,
        )

    def _side_args(self) -> dict[str, torch.Tensor]:
        """The active prefix of each side's tables (the whole tables, unsliced, once a side is full: no slice
        and no slice-backward node in the steady state of training)."""
        args = {}
        for side in SIDES:
            pairs, theta, active = self._pairs(side), self._theta(side), self._host.active[side]
            full = active == pairs.shape[0]
            args[f"pairs_{side}"] = pairs if full else pairs[:active]
            args[f"theta_{side}"] = theta if full else theta[:active]
        return args

    def compute_delta(self, x: torch.Tensor) -> torch.Tensor:
        """``ΔW x = R_Lᵀ C R_R x − C₀ x`` for ``x ∈ R^{..., m}`` (differentiable, fp32 for low-precision x)."""
        return jora_delta(
            x,
            core=self.core.spec,
            core_params=self.core.params(),
            core_offset=self.core.offset(),
            rotation_param=self.settings.rotation_param,
            **self._side_args(),
        )

    def maybe_apply_magnitude(self, out: torch.Tensor) -> torch.Tensor:
        """``s ⊙ out`` along the last dimension (``out`` unchanged with ``magnitude="none"``)."""
        if self.mag_logits is None:
            return out
        return (out * self.scale()).to(out.dtype)

    @torch.compiler.disable  # runs its own kernels; dynamo breaks the graph here once instead of retracing it
    def forward(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        *,
        base_output: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``s ⊙ ((W + ΔW) x) + b`` through the fused function (``base_output`` replaces ``W x``)."""
        tracking = self.training and torch.is_grad_enabled()
        collect = (
            tracking
            and self.settings.selection == "topk_ema"
            and self._host.step % self.settings.ema_update_interval == 0
        )
        collect_L = collect and not self.is_frozen("L")
        collect_R = collect and not self.is_frozen("R")
        return jora_linear(
            x,
            weight,
            bias,
            core=self.core.spec,
            core_params=self.core.params(),
            core_offset=self.core.offset(),
            magnitude=self._magnitude(),
            base_output=base_output,
            weight_layout=self.layout,
            rotation_param=self.settings.rotation_param,
            stats_in=self.acc_R if collect_R else None,
            stats_out=self.acc_L if collect_L else None,
            on_backward=functools.partial(self._on_backward, collect_L, collect_R) if tracking else None,
            impl=self.settings.rotation_impl,
            **self._side_args(),
        )

    def delta_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The exact dense ``ΔW`` in the base weight's layout (``[n, m]`` or ``[m, n]`` for Conv1D).

        Computed in ``dtype`` promoted to at least fp32 (fp64 for an fp64 base).
        """
        compute_dtype = torch.promote_types(dtype, torch.float32)
        eye = torch.eye(self.in_features, device=self.row_norms.device, dtype=compute_dtype)
        with torch.no_grad():
            delta_t = self.compute_delta(eye)  # row j = (ΔW e_j)ᵀ, i.e. ΔWᵀ
        return delta_t.T.contiguous() if self.layout == "linear" else delta_t

    def _row_scale_view(self) -> torch.Tensor:
        s = self.scale().detach()
        return s[:, None] if self.layout == "linear" else s[None, :]

    def merged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``diag(s)(W + ΔW)`` in ``weight``'s layout and dtype (the bias is left alone)."""
        compute_dtype = torch.promote_types(weight.dtype, torch.float32)
        merged = (weight.to(compute_dtype) + self.delta_weight(compute_dtype)) * self._row_scale_view()
        return merged.to(weight.dtype)

    def check_unmergeable(self) -> None:
        """Raise ``ValueError`` if :meth:`merged_weight` erased rows of the base weight: where ``s`` is exactly 0
        (an OER scale that underflowed) the merged row is 0 and ``W`` cannot be recovered from it.

        Reads the scale on the host (a device sync): for merging, never on the training path.
        """
        zero_rows = (self.scale().detach() == 0).nonzero().flatten().tolist()
        if zero_rows:
            raise ValueError(
                f"JORA layer {self.name!r}: the row scale is 0 at output rows {zero_rows[:8]}"
                f"{' …' if len(zero_rows) > 8 else ''}, so merging erased those rows of the base weight and it "
                "cannot be unmerged; reload the base weights (merge_and_unload needs no unmerge)"
            )

    def unmerged_weight(self, merged: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`merged_weight`: ``diag(s)⁻¹ W' − ΔW`` (:meth:`check_unmergeable` first)."""
        self.check_unmergeable()
        compute_dtype = torch.promote_types(merged.dtype, torch.float32)
        restored = merged.to(compute_dtype) / self._row_scale_view() - self.delta_weight(compute_dtype)
        return restored.to(merged.dtype)

    def _replicate_for_data_parallel(self) -> JoraAdapter:
        """A replica for ``nn.DataParallel`` (one per device and forward): its core reads the replica's own
        tensor copies, and its backward hands its statistics and the schedule to this adapter."""
        replica = super()._replicate_for_data_parallel()
        object.__setattr__(replica, "core", self.core.view_on(replica))
        replica.__dict__["_data_parallel_source"] = self  # a plain reference, not a submodule
        return replica

    # ------------------------------------------------------------------ schedule
    def _on_backward(self, collected_L: bool, collected_R: bool) -> None:
        source: JoraAdapter | None = self.__dict__.get("_data_parallel_source")
        if source is not None:
            source._merge_replica_backward(self, collected_L, collected_R)
            return
        self._host.calls["L"] += collected_L
        self._host.calls["R"] += collected_R
        # Once per backward pass: keyed by the engine's graph task, so a pass that failed half-way (and never
        # ran its callback) cannot block the next one.
        task = torch._C._current_graph_task_id()
        if task != self._host.queued_task:
            self._host.queued_task = task
            torch.autograd.Variable._execution_engine.queue_callback(self._finish_backward)

    def _merge_replica_backward(self, replica: JoraAdapter, collected_L: bool, collected_R: bool) -> None:
        """A ``nn.DataParallel`` replica's backward (on its device's autograd thread): add the statistics it
        collected into this adapter's accumulators (the replica on this adapter's device shares them), count
        its call, and queue this adapter's end-of-backward, which then sees every replica's share."""
        with _REPLICA_LOCK:  # replicas finish their backward on one thread per device
            for side, collected in zip(SIDES, (collected_L, collected_R), strict=True):
                mine, theirs = self._acc(side), replica._acc(side)
                if collected and theirs.data_ptr() != mine.data_ptr():
                    mine.add_(theirs.to(mine.device))
            self._on_backward(collected_L, collected_R)

    def _finish_backward(self) -> None:
        """Runs once at the end of each backward call that went through this adapter.

        Host counters only, plus the EMA update when statistics were collected (buffers never require grad:
        no autograd context is needed); the ``step`` buffer is written when the state is saved.
        """
        host = self._host
        host.queued_task = -1
        for side in SIDES:
            calls = host.calls[side]
            if calls:
                acc, ema = self._acc(side), self._ema(side)
                ema.copy_(run(ema_update, compile_enabled(ema), ema, acc, self.settings.ema_beta, calls))
                acc.zero_()
                host.calls[side] = 0
        host.step += 1
        if self.settings.ecd_temp_annealing:
            self.update_temperature(host.step, host.total_steps)
        if self.settings.selection != "none" and host.step % self.settings.update_interval == 0:
            self.update_step()

    def update_temperature(self, step: int, total_steps: int | None) -> None:
        """Set the magnitude temperature for ``step`` (linear annealing when enabled, else the fixed value)."""
        s = self.settings
        if s.ecd_temp_annealing:
            value = linear_temperature_anneal(step, total_steps, s.ecd_temp_start, s.ecd_temp_end)
        else:
            value = s.fixed_temperature
        self.temperature.fill_(value)

    def _generator(self, side: str, purpose: int) -> torch.Generator:
        side_index = SIDES.index(side)
        return _seeded_generator(self._host.seed, purpose, self._host.step, side_index)

    def _synchronised_ema(self, side: str) -> torch.Tensor:
        ema = self._ema(side)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(ema)
            ema.div_(dist.get_world_size())
        return ema

    def _fill_slots(self, side: str, new_pairs: torch.Tensor) -> None:
        """Activate the next ``len(new_pairs)`` slots with ``new_pairs`` and θ = 0.

        Inactive slots get exactly zero gradient, so their θ is 0 already and writing it is a guard; an angle
        tensor sharded by FSDP2 (a ``DTensor`` outside forward) has no local slot rows and is left as it is.
        """
        start = self._host.active[side]
        count = new_pairs.shape[0]
        with torch.no_grad():
            self._pairs(side)[start : start + count] = new_pairs
            theta = self._theta(side)
            if not _is_sharded(theta):
                theta[start : start + count] = 0.0
        self._host.active[side] = start + count

    @torch.no_grad()
    def update_step(self, total_steps: int | None = None) -> None:
        """One selection round (JORA.md §6): fill up to ``k`` empty slots per side within the allowance.

        New slots start at θ = 0, so a round never changes the layer's function. Active slots are never
        re-assigned; a side whose slots are all active is frozen. With ``selection="none"`` nothing happens.
        """
        if total_steps is not None:
            self.set_total_steps(total_steps)
        s = self.settings
        if s.selection == "none":
            return
        for side in SIDES:
            slots, active = self._slots(side), self._host.active[side]
            if active >= slots:
                continue
            allowed = compute_allowed_pairs(
                slots, self._host.step, s.warmup_steps, s.warmup_ratio, self._host.total_steps
            )
            want = min(s.k, allowed - active)
            if want <= 0:
                continue
            exclude = self._pairs(side)[:active].flatten()
            if s.selection == "topk_ema":
                new_pairs = select_top_k_pairs_gpu(
                    self._synchronised_ema(side),
                    want,
                    exclude=exclude,
                    pairing_strategy=s.pairing_strategy,
                    use_gumbel=s.use_gumbel,
                    gumbel_tau=s.gumbel_tau,
                    generator=self._generator(side, 1) if s.use_gumbel else None,
                )
            else:
                dim = self.out_features if side == "L" else self.in_features
                new_pairs = select_random_pairs(
                    dim, want, generator=self._generator(side, 2), exclude=exclude
                )
            self._fill_slots(side, new_pairs.to(self.pairs_L.device))

    @torch.no_grad()
    def init_random_pairs(self, n_pairs_L: int | None = None, n_pairs_R: int | None = None) -> None:
        """Fill empty slots with random disjoint pairs (per-layer seed) until ``n_pairs_*`` are active.

        ``None`` fills every slot of that side. Active slots are kept; new slots start at θ = 0.
        """
        for side, wanted in (("L", n_pairs_L), ("R", n_pairs_R)):
            slots = self._slots(side)
            target = slots if wanted is None else wanted
            if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target <= slots:
                raise ValueError(f"n_pairs_{side} must be an int in [0, {slots}] or None, got {wanted!r}")
            want = target - self._host.active[side]
            if want <= 0:
                continue
            dim = self.out_features if side == "L" else self.in_features
            exclude = self._pairs(side)[: self._host.active[side]].flatten()
            new_pairs = select_random_pairs(dim, want, generator=self._generator(side, 3), exclude=exclude)
            self._fill_slots(side, new_pairs.to(self.pairs_L.device))

    def state_summary(self) -> dict[str, Any]:
        """What users inspect: active ``pairs_L``/``pairs_R`` ``[a, 2]``, their ``theta_L``/``theta_R``, the
        ``scale`` s, ``frozen_L``/``frozen_R`` and ``step``. Under FSDP2 call it with the parameters
        unsharded (``unshard()`` on the FSDP modules, ``reshard()`` after)."""
        if _is_sharded(self.theta_L):
            raise RuntimeError(
                f"{self.name}: the adapter's parameters are sharded (FSDP2); call unshard() on the FSDP modules "
                "before reading the JORA state, and reshard() after"
            )
        a_L, a_R = self._host.active["L"], self._host.active["R"]
        return {
            "pairs_L": self.pairs_L[:a_L].detach().clone(),
            "pairs_R": self.pairs_R[:a_R].detach().clone(),
            "theta_L": self.theta_L[:a_L].detach().clone(),
            "theta_R": self.theta_R[:a_R].detach().clone(),
            "scale": self.scale().detach(),
            "frozen_L": self.is_frozen("L"),
            "frozen_R": self.is_frozen("R"),
            "step": self._host.step,
        }

    def extra_repr(self) -> str:
        s = self.settings
        return (
            f"in={self.in_features}, out={self.out_features}, S_L={self.S_L}, S_R={self.S_R}, core={s.core}, "
            f"magnitude={s.magnitude}, selection={s.selection}"
        )
