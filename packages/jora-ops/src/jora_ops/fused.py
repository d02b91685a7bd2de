"""The fused adapted linear: ``y = s ⊙ ((W + R_Lᵀ C R_R − C₀) x) + b`` as one autograd function.

The base matmul, the sparse rotations, the core, the init offset, the magnitude scale and the selection
statistics run in one :class:`torch.autograd.Function`. Its backward returns gradients for ``x``, the
angles, the core parameters, the magnitude logits (or a given scale ``s``), the bias and a given
``base_output``, never for ``W``.

- With a base weight, every core folds ``diag(s)(W + ΔW)`` into the weight (``jora_ops._diag_fold``,
  ``_block_fold``, ``_lowrank_fold``): the forward is one matmul, and the backward reuses the folded weight
  and needs only token sums (diag: ≤ 4 non-zeros per row of ``ΔW``; block: ≤ 4b, plus block-diagonal sums)
  or LoRA-shaped skinny matmuls (lowrank).
- On CUDA (``impl="auto"`` or ``"triton"``) the diag and block cores (``block_size`` ≤ 16) with a base weight
  in fp32/bf16/fp16 run entirely in Triton kernels (``jora_ops._sparse_core_triton``): fold and scale in one
  kernel, then cuBLAS; in backward cuBLAS for ``∂L/∂x`` and two kernels for every other gradient and the
  statistics. The lowrank core (rank ≤ 128) runs its O((n + m) r) work and the fold in two Triton kernels
  (``jora_ops._lowrank_triton``) and the backward's skinny matmuls on cuBLAS. Larger blocks and ranks fold
  with torch ops and sum tokens with a Triton kernel.
- Chained through ``base_output`` (several active adapters), ``ΔW x`` is computed with plain torch ops and
  recomputed in backward.

Saved for the backward: ``x`` and O(n + m) extras; with a scale or magnitude whose gradient is wanted also
the output ``y`` (for ``Σ_t g ⊙ y``) and, on the fold paths, the folded weight (for ``∂L/∂x``). Without
them the backward folds again (one pass over ``W``), so that the layer saves what the frozen layer saves
(PERFORMANCE.md: "JORA without magnitude should save nothing beyond what the base layer saves"). Pair tables passed here hold
only active pairs (no ``-1`` rows; the Triton diag/block path also accepts ``-1`` rows): the per-adapter module
passes the active prefix of its slot table, whose length it knows on the host (the whole table once full).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from jora_ops._block_fold import block_fold, block_fold_backward
from jora_ops._compile import compile_enabled, run
from jora_ops._diag_fold import diag_fold, diag_fold_backward
from jora_ops._dispatch import resolve_impl
from jora_ops._fold_common import (
    FoldState,
    folded_input_grad,
    folded_matmul,
    kept_for_backward,
    output_side_grads,
)
from jora_ops._lowrank_fold import lowrank_fold, lowrank_fold_backward
from jora_ops.cores import CoreSpec, check_core_params, core_apply
from jora_ops.magnitude import MAGNITUDE_KINDS, compute_scale, logits_grad_from_weighted
from jora_ops.rotation import apply_rotations_reference, check_rotation_param, rotation_cos_sin

WEIGHT_LAYOUTS: tuple[str, ...] = ("linear", "conv1d")
# Cores whose delta is folded into the weight: parameter names, forward, backward (uniform signatures).
_FOLDED_PATHS: dict[str, tuple[tuple[str, ...], Callable[..., Any], Callable[..., Any]]] = {
    "diag": (("diag",), diag_fold, diag_fold_backward),
    "block": (("blocks", "tail"), block_fold, block_fold_backward),
    "lowrank": (("A", "B"), lowrank_fold, lowrank_fold_backward),
}
FOLDED_CORES: tuple[str, ...] = tuple(_FOLDED_PATHS)

__all__ = ["WEIGHT_LAYOUTS", "Magnitude", "base_linear", "jora_delta", "jora_linear"]


def base_linear(x: torch.Tensor, weight: torch.Tensor, weight_layout: str = "linear") -> torch.Tensor:
    """``W x`` for a weight stored as ``[n, m]`` (``"linear"``) or ``[m, n]`` (HF ``Conv1D``, ``"conv1d"``)."""
    if weight_layout == "linear":
        return torch.nn.functional.linear(x, weight)
    if weight_layout == "conv1d":
        return x @ weight
    raise ValueError(f"weight_layout must be one of {WEIGHT_LAYOUTS}, got {weight_layout!r}")


def _empty_side(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(0, 2, dtype=torch.long, device=device), torch.empty(0, device=device)


def jora_delta(
    x: torch.Tensor,
    *,
    core: CoreSpec,
    core_params: tuple[torch.Tensor, ...],
    core_offset: tuple[torch.Tensor, ...] | None = None,
    pairs_R: torch.Tensor | None = None,
    theta_R: torch.Tensor | None = None,
    pairs_L: torch.Tensor | None = None,
    theta_L: torch.Tensor | None = None,
    rotation_param: str = "cayley",
) -> torch.Tensor:
    """``ΔW x = R_Lᵀ C R_R x − C₀ x`` in plain differentiable torch ops (fp32 for low-precision ``x``).

    ``x`` is ``[..., m]``; the result is ``[..., n]``. Pair tables hold active pairs only.
    """
    if pairs_R is None or theta_R is None:
        pairs_R, theta_R = _empty_side(x.device)
    if pairs_L is None or theta_L is None:
        pairs_L, theta_L = _empty_side(x.device)
    cos_R, sin_R = rotation_cos_sin(theta_R, rotation_param)
    cos_L, sin_L = rotation_cos_sin(theta_L, rotation_param)
    rotated = apply_rotations_reference(x, pairs_R, cos_R, sin_R)
    delta = apply_rotations_reference(
        core_apply(core, core_params, rotated), pairs_L, cos_L, sin_L, transpose=True
    )
    if core_offset is not None:
        delta = delta - core_apply(core, core_offset, x)
    return delta


@dataclass(frozen=True)
class Magnitude:
    """A magnitude scale computed inside :func:`jora_linear` from trainable logits (JORA.md §5).

    ``kind`` is ``"oer_softmax"`` or ``"ecd_tanh"``; ``row_norms`` (ν), ``total_energy`` (E) and
    ``temperature`` are fixed inputs; the backward returns the logits' gradient in closed form.
    """

    kind: str
    logits: torch.Tensor
    row_norms: torch.Tensor
    total_energy: torch.Tensor | float
    temperature: torch.Tensor | float
    eps: float = 1e-8
    ecd_alpha: float = 0.5

    def scale(self, compiled: bool = False) -> torch.Tensor:
        """``s`` from the current logits (no autograd graph is recorded inside the fused function)."""
        return run(
            compute_scale, compiled, self.kind, self.row_norms, self.total_energy, self.logits, self.temperature,
            self.eps, self.ecd_alpha,
        )  # fmt: skip

    def logits_grad(
        self, scale: torch.Tensor, weighted: torch.Tensor, compiled: bool = False
    ) -> torch.Tensor:
        """``∂L/∂logits`` from ``weighted = s ⊙ ∂L/∂s`` (:func:`~jora_ops.logits_grad_from_weighted`)."""
        return run(
            logits_grad_from_weighted, compiled, self.kind, scale, weighted, self.row_norms, self.total_energy,
            self.logits, self.temperature, self.eps, self.ecd_alpha,
        )  # fmt: skip


@dataclass
class _Static:
    """Non-differentiable inputs of the autograd function."""

    core: CoreSpec
    n_core_params: int
    has_offset: bool
    pairs_R: torch.Tensor
    pairs_L: torch.Tensor
    weight_layout: str
    rotation_param: str
    stats_in: torch.Tensor | None
    stats_out: torch.Tensor | None
    on_backward: Callable[[], None] | None
    use_triton: bool = False
    magnitude: Magnitude | None = None


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """fp32 for low-precision tensors, fp64 for fp64 ones."""
    return torch.promote_types(t.dtype, torch.float32)


class _JoraLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        static: _Static,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        base_output: torch.Tensor | None,
        theta_R: torch.Tensor,
        theta_L: torch.Tensor,
        scale: torch.Tensor | None,
        *core_tensors: torch.Tensor,
    ) -> torch.Tensor:
        if static.magnitude is not None:  # the slot holds the logits; s is computed here
            scale = static.magnitude.scale(compile_enabled(x))
        needs = ctx.needs_input_grad
        keep_out, keep_folded = kept_for_backward(scale is not None and needs[7], needs[1])
        folded = None
        ctx.fold_kind = static.core.kind if weight is not None and static.core.kind in FOLDED_CORES else None
        if ctx.fold_kind is not None:
            assert weight is not None
            fold = _fold(static, ctx.fold_kind, x, weight, scale, theta_R, theta_L, core_tensors)
            out = folded_matmul(x, fold.folded, bias, static.weight_layout)
            if keep_folded:
                folded = fold.folded
            fold.folded = None  # saved below (or folded again), not kept on the context
            ctx.fold = fold
            base_dtype = out.dtype
        else:
            base = base_linear(x, weight, static.weight_layout) if weight is not None else base_output
            assert base is not None
            base_dtype = base.dtype
            hidden = base.to(_compute_dtype(base)) + jora_delta(
                x,
                core=static.core,
                core_params=core_tensors[: static.n_core_params],
                core_offset=core_tensors[static.n_core_params :] if static.has_offset else None,
                pairs_R=static.pairs_R,
                theta_R=theta_R,
                pairs_L=static.pairs_L,
                theta_L=theta_L,
                rotation_param=static.rotation_param,
            )
            out = hidden * scale if scale is not None else hidden
            if bias is not None:
                out = out + bias
            out = out.to(base_dtype)
        ctx.static = static
        ctx.base_dtype = base_dtype
        ctx.save_for_backward(
            x, weight, bias, theta_R, theta_L, scale, out if keep_out else None, folded, *core_tensors
        )
        return out

    @staticmethod
    @once_differentiable  # a double backward raises instead of returning wrong second-order gradients
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        static: _Static = ctx.static
        x, weight, bias, theta_R, theta_L, scale, out, folded, *core_tensors = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if ctx.fold_kind is not None:
            grads = _JoraLinearFunction._folded_backward(
                ctx, grad_out, x, weight, folded, bias, theta_R, theta_L, scale, out, core_tensors
            )
            return _JoraLinearFunction._scale_slot_grad(ctx, grads, scale)
        # Bias and scale gradients and the statistics: the same token sums as the folded paths.
        side: dict[str, torch.Tensor | None] = {"bias": None, "scale_weighted": None}
        output_side_grads(
            side, grad_out, x, out, bias, scale, {"bias": needs[3], "scale": needs[7]}, static.stats_in,
            static.stats_out, False, 0,
        )  # fmt: skip
        grad_bias = side["bias"].to(bias.dtype) if side["bias"] is not None and bias is not None else None
        grad = grad_out.to(_compute_dtype(grad_out))
        grad_hidden = grad * scale if scale is not None else grad
        grad_base_output = grad_hidden.to(ctx.base_dtype) if needs[4] else None

        leaves = [x, theta_R, theta_L, *core_tensors[: static.n_core_params]]
        wanted = [needs[1], needs[5], needs[6], *needs[8 : 8 + static.n_core_params]]
        leaf_grads: list[torch.Tensor | None] = [None] * len(leaves)
        if any(wanted):
            with torch.enable_grad():
                inputs = [t.detach().requires_grad_(w) for t, w in zip(leaves, wanted, strict=True)]
                offset = tuple(core_tensors[static.n_core_params :]) if static.has_offset else None
                delta = jora_delta(
                    inputs[0],
                    core=static.core,
                    core_params=tuple(inputs[3:]),
                    core_offset=offset,
                    pairs_R=static.pairs_R,
                    theta_R=inputs[1],
                    pairs_L=static.pairs_L,
                    theta_L=inputs[2],
                    rotation_param=static.rotation_param,
                )
                targets = [t for t, w in zip(inputs, wanted, strict=True) if w]
                grads = iter(
                    torch.autograd.grad(delta, targets, grad_hidden.to(delta.dtype), allow_unused=True)
                )
                # an input the delta does not touch (e.g. angles of an empty side) gets an explicit zero
                # gradient, so that no parameter is ever unused in a step (DDP needs no find_unused_parameters)
                leaf_grads = [
                    (g if (g := next(grads)) is not None else torch.zeros_like(t)) if w else None
                    for t, w in zip(inputs, wanted, strict=True)
                ]
        grad_x = leaf_grads[0]
        if needs[1] and weight is not None:
            weight_t = weight if static.weight_layout == "linear" else weight.T  # W as [n, m]
            grad_base = (grad_hidden.to(weight.dtype) @ weight_t).to(x.dtype)
            grad_x = grad_base if grad_x is None else grad_base + grad_x.to(x.dtype)
        elif grad_x is not None:
            grad_x = grad_x.to(x.dtype)

        if static.on_backward is not None:
            static.on_backward()
        n_offset = len(core_tensors) - static.n_core_params
        core_grads = [
            g.to(t.dtype) if g is not None else None
            for g, t in zip(leaf_grads[3:], core_tensors, strict=False)
        ]
        grads = (
            None,
            grad_x,
            None,
            grad_bias,
            grad_base_output,
            leaf_grads[1],
            leaf_grads[2],
            side["scale_weighted"],
            *core_grads,
            *([None] * n_offset),
        )
        return _JoraLinearFunction._scale_slot_grad(ctx, grads, scale)

    @staticmethod
    def _scale_slot_grad(
        ctx: Any, grads: tuple[torch.Tensor | None, ...], scale: torch.Tensor | None
    ) -> tuple:
        """Turn slot 7, ``s ⊙ ∂L/∂s = Σ_t g ⊙ (y − b)``, into the gradient of what the slot holds: an inner
        magnitude's logits (closed form from that sum, never dividing by ``s``) or a given scale (``∂L/∂s``,
        that sum over ``s``: not finite where ``s`` is exactly 0, whose pre-scale outputs ``y`` no longer
        holds)."""
        weighted = grads[7]
        if weighted is None or scale is None:
            return grads
        magnitude = ctx.static.magnitude
        if magnitude is not None:
            grad_slot = magnitude.logits_grad(scale, weighted, compile_enabled(scale))
        else:
            grad_slot = (weighted / scale).to(scale.dtype)
        return (*grads[:7], grad_slot, *grads[8:])

    @staticmethod
    def _folded_backward(
        ctx: Any,
        grad_out: torch.Tensor,
        x: torch.Tensor,
        weight: torch.Tensor,
        folded: torch.Tensor | None,
        bias: torch.Tensor | None,
        theta_R: torch.Tensor,
        theta_L: torch.Tensor,
        scale: torch.Tensor | None,
        out: torch.Tensor | None,
        core_tensors: list[torch.Tensor],
    ) -> tuple[torch.Tensor | None, ...]:
        static: _Static = ctx.static
        names, _, fold_backward = _FOLDED_PATHS[ctx.fold_kind]
        needs = ctx.needs_input_grad
        grad_x = None
        if needs[1]:
            if folded is None:  # not kept by the forward: fold again (bit for bit the forward's)
                folded = _fold(static, ctx.fold_kind, x, weight, scale, theta_R, theta_L, core_tensors).folded
            grad_x = folded_input_grad(grad_out, folded, static.weight_layout, x.dtype)
        flags = {"bias": needs[3], "theta_R": needs[5], "theta_L": needs[6], "scale": needs[7]}
        flags |= {name: needs[8 + i] for i, name in enumerate(names)}
        grads = fold_backward(
            grad_out, x, out, ctx.fold, bias, static.weight_layout, scale, tuple(core_tensors[: len(names)]),
            static.core, static.pairs_L, theta_L, static.pairs_R, theta_R, static.rotation_param, flags,
            stats_in=static.stats_in, stats_out=static.stats_out, use_triton=static.use_triton,
        )  # fmt: skip
        if static.on_backward is not None:
            static.on_backward()
        grad_bias = grads["bias"].to(bias.dtype) if grads["bias"] is not None and bias is not None else None
        return (
            None, grad_x, None, grad_bias, None, grads["theta_R"], grads["theta_L"], grads["scale_weighted"],
            *(grads[name] for name in names), *([None] * (len(core_tensors) - len(names))),
        )  # fmt: skip


def _fold(
    static: _Static,
    kind: str,
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    theta_R: torch.Tensor,
    theta_L: torch.Tensor,
    core_tensors: tuple[torch.Tensor, ...] | list[torch.Tensor],
) -> FoldState:
    """The fold of a folded core (``diag(s)(W + ΔW)`` and its tables) from the autograd function's inputs, in
    ``x``'s dtype: a wider weight is folded from a cast copy that lives only as long as the fold (the function
    saves the weight as given)."""
    params = tuple(core_tensors[: static.n_core_params])
    offset = tuple(core_tensors[static.n_core_params :]) if static.has_offset else None
    return _FOLDED_PATHS[kind][1](
        x, weight.to(x.dtype), static.weight_layout, scale, params, offset, static.core, static.pairs_L, theta_L,
        static.pairs_R, theta_R, static.rotation_param,
    )  # fmt: skip


def _autocast(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``tensor`` in the autocast ``dtype`` where autocast would cast it (floating point, not fp64)."""
    if tensor is None or not tensor.is_floating_point() or tensor.dtype in (torch.float64, dtype):
        return tensor
    return tensor.to(dtype)


def _check_side(
    pairs: torch.Tensor | None, theta: torch.Tensor | None, side: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    if (pairs is None) != (theta is None):
        raise ValueError(f"pairs_{side} and theta_{side} must both be given or both be None")
    if pairs is None or theta is None:
        return _empty_side(device)
    if pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"pairs_{side} must be an integer tensor of shape (a, 2), got {pairs.dtype} {tuple(pairs.shape)}"
        )
    if theta.shape != (pairs.shape[0],):
        raise ValueError(f"theta_{side} must have shape ({pairs.shape[0]},), got {tuple(theta.shape)}")
    return pairs, theta


def jora_linear(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    *,
    core: CoreSpec,
    core_params: tuple[torch.Tensor, ...],
    core_offset: tuple[torch.Tensor, ...] | None = None,
    pairs_R: torch.Tensor | None = None,
    theta_R: torch.Tensor | None = None,
    pairs_L: torch.Tensor | None = None,
    theta_L: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    magnitude: Magnitude | None = None,
    base_output: torch.Tensor | None = None,
    weight_layout: str = "linear",
    rotation_param: str = "cayley",
    stats_in: torch.Tensor | None = None,
    stats_out: torch.Tensor | None = None,
    on_backward: Callable[[], None] | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """The JORA-adapted linear ``y = s ⊙ (h + ΔW x) + b`` with ``h = W x`` (or a given ``base_output``).

    Args:
        x: input ``[..., m]``.
        weight: frozen base weight, ``[n, m]`` (``weight_layout="linear"``) or ``[m, n]`` (``"conv1d"``);
            ``None`` when ``base_output`` is given (chaining several adapters, JORA.md §1). Its dtype may
            differ from ``x``'s (e.g. an fp32 master weight with bf16 activations): the folded weight is in
            ``x``'s dtype — folded straight from ``weight`` on the Triton path (one pass over it, rounded
            once), from a cast copy on the torch path.
        bias: optional ``[n]`` bias, added after the scale (never scaled), used in ``x``'s dtype.
        core: the core's :class:`~jora_ops.cores.CoreSpec`.
        core_params: the core's parameter tuple.
        core_offset: the frozen initial core ``C₀`` in the same structured form, or ``None``.
        pairs_R: active input-side pairs ``[a_R, 2]`` (``None``: no rotation on that side).
        theta_R: their angle parameters ``[a_R]``.
        pairs_L: active output-side pairs ``[a_L, 2]``.
        theta_L: their angle parameters ``[a_L]``.
        scale: a given row scale ``s`` ``[n]`` (differentiable), or ``None``. Its gradient comes from the
            kept output, ``∂L/∂s = Σ_t g ⊙ (y − b) / s``: not finite where ``s`` is exactly 0, whose
            pre-scale outputs ``y`` no longer holds (apply such a scale outside, or use ``magnitude``).
        magnitude: a :class:`Magnitude` whose ``s`` is computed inside from trainable logits (their
            gradient comes in closed form from ``Σ_t g ⊙ (y − b) = s ⊙ ∂L/∂s``, without an autograd graph and
            without dividing by ``s``: a row whose scale underflowed to 0 costs nothing); at most one of
            ``scale`` and ``magnitude``. With neither, ``s ≡ 1``.
        base_output: precomputed ``h`` ``[..., n]`` instead of ``weight`` (receives a gradient).
        rotation_param: ``"cayley"`` or ``"angle"``.
        stats_in: fp32 buffer ``[m]``; backward adds the token mean of ``x²`` to it, exactly once per backward
            (also under activation checkpointing).
        stats_out: fp32 buffer ``[n]``; backward adds the token mean of ``(∂L/∂y)²``.
        on_backward: called once at the end of each backward of this function.
        impl: ``"auto"`` (Triton for CUDA tensors when triton imports), ``"torch"`` or ``"triton"``. On the
            Triton path the diag, block (``block_size`` ≤ 16) and lowrank (rank ≤ 128) cores with a base weight
            run in Triton kernels (and cuBLAS); larger blocks and ranks fold with torch ops around a Triton
            token-sum pass;
            ``base_output`` chaining runs on torch ops (``"triton"`` raises there).

    Returns:
        ``y`` ``[..., n]`` in the base output's dtype.

    Under ``torch.autocast`` (e.g. ``Trainer(bf16=True)`` on fp32 weights) the input and a given
    ``base_output`` run in the autocast dtype, and with them the bias and the folded weight, as ``nn.Linear``
    would cast its weight and bias; the adapter's own parameters stay in their dtype and the output is in the
    autocast dtype.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):  # one dtype in the function's forward and backward
            return jora_linear(
                _autocast(x, dtype), weight, bias, core=core,
                core_params=core_params, core_offset=core_offset, pairs_R=pairs_R, theta_R=theta_R,
                pairs_L=pairs_L, theta_L=theta_L, scale=scale, magnitude=magnitude,
                base_output=_autocast(base_output, dtype), weight_layout=weight_layout,
                rotation_param=rotation_param, stats_in=stats_in, stats_out=stats_out, on_backward=on_backward,
                impl=impl,
            )  # fmt: skip
    if (weight is None) == (base_output is None):
        raise ValueError("give exactly one of weight and base_output")
    if scale is not None and magnitude is not None:
        raise ValueError("give at most one of scale and magnitude")
    if magnitude is not None:
        if magnitude.kind not in MAGNITUDE_KINDS:
            raise ValueError(f"magnitude.kind must be one of {MAGNITUDE_KINDS}, got {magnitude.kind!r}")
        if magnitude.logits.shape != (core.out_features,) or magnitude.row_norms.shape != (
            core.out_features,
        ):
            raise ValueError(
                f"magnitude.logits and magnitude.row_norms must have shape ({core.out_features},)"
            )
    if weight_layout not in WEIGHT_LAYOUTS:
        raise ValueError(f"weight_layout must be one of {WEIGHT_LAYOUTS}, got {weight_layout!r}")
    check_rotation_param(rotation_param)
    n, m = core.out_features, core.in_features
    if x.shape[-1] != m:
        raise ValueError(f"x must have {m} features in its last dimension, got shape {tuple(x.shape)}")
    if weight is not None:
        expected = (n, m) if weight_layout == "linear" else (m, n)
        if tuple(weight.shape) != expected:
            raise ValueError(
                f"weight must have shape {expected} for layout {weight_layout!r}, got {tuple(weight.shape)}"
            )
    if base_output is not None and base_output.shape != (*x.shape[:-1], n):
        raise ValueError(f"base_output must have shape {(*x.shape[:-1], n)}, got {tuple(base_output.shape)}")
    for name, vec, size in (
        ("bias", bias, n),
        ("scale", scale, n),
        ("stats_in", stats_in, m),
        ("stats_out", stats_out, n),
    ):
        if vec is not None and vec.shape != (size,):
            raise ValueError(f"{name} must have shape ({size},), got {tuple(vec.shape)}")
    for name, buf in (("stats_in", stats_in), ("stats_out", stats_out)):
        if buf is not None and buf.dtype != torch.float32:
            raise TypeError(f"{name} must be a float32 buffer, got {buf.dtype}")
    check_core_params(core, core_params)
    if core_offset is not None:
        check_core_params(core, core_offset, "core_offset")
    pairs_R, theta_R = _check_side(pairs_R, theta_R, "R", x.device)
    pairs_L, theta_L = _check_side(pairs_L, theta_L, "L", x.device)
    use_triton = resolve_impl(impl, x) == "triton"
    if use_triton and (core.kind not in FOLDED_CORES or weight is None):
        if impl == "triton":
            raise NotImplementedError(
                f"impl='triton' covers the {' and '.join(FOLDED_CORES)} cores with a base weight; got "
                f"core={core.kind!r}{' and base_output' if weight is None else ''}: use impl='torch' or 'auto'"
            )
        use_triton = False
    if bias is not None and bias.dtype != x.dtype and bias.is_floating_point():
        bias = bias.to(x.dtype)
    if use_triton and weight is not None:  # the core is one of FOLDED_CORES here
        from jora_ops._lowrank_triton import TRITON_MAX_RANK, lowrank_linear_triton
        from jora_ops._sparse_core_triton import (
            SPARSE_CORE_TRITON_DTYPES,
            TRITON_MAX_BLOCK_SIZE,
            sparse_core_linear_triton,
        )

        if core.kind == "lowrank":
            entry, fits = lowrank_linear_triton, core.rank <= TRITON_MAX_RANK
            core_kwargs: dict[str, Any] = {"core_scale": core.scale}
        else:
            block_size = core.block_size if core.kind == "block" else 1
            entry, fits = sparse_core_linear_triton, block_size <= TRITON_MAX_BLOCK_SIZE
            core_kwargs = {"block_size": block_size}
        if fits and x.dtype in SPARSE_CORE_TRITON_DTYPES and weight.dtype in SPARSE_CORE_TRITON_DTYPES:
            return entry(
                x, weight, bias, layout=weight_layout, core_values=core_params, core_offset=core_offset,
                pairs_L=pairs_L, theta_L=theta_L, pairs_R=pairs_R, theta_R=theta_R, scale=scale,
                magnitude=magnitude, rotation_param=rotation_param, stats_in=stats_in, stats_out=stats_out,
                on_backward=on_backward, **core_kwargs,
            )  # fmt: skip
    static = _Static(
        core=core,
        n_core_params=len(core_params),
        has_offset=core_offset is not None,
        pairs_R=pairs_R,
        pairs_L=pairs_L,
        weight_layout=weight_layout,
        rotation_param=rotation_param,
        stats_in=stats_in,
        stats_out=stats_out,
        on_backward=on_backward,
        use_triton=use_triton,
        magnitude=magnitude,
    )
    scale_slot = magnitude.logits if magnitude is not None else scale
    return _JoraLinearFunction.apply(
        static, x, weight, bias, base_output, theta_R, theta_L, scale_slot, *core_params, *(core_offset or ())
    )
