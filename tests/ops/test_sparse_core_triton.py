"""The Triton kernels of the diag, block and lowrank cores (``jora_ops._sparse_core_triton``,
``jora_ops._lowrank_triton``) against the float64 references.

Outputs are compared with the dense float64 reference; every gradient with the float64 torch path (itself
gradchecked in ``test_fused.py``) to 1e-5 relative, the magnitude logits' gradient to 1e-5 of its size before
cancellation (OER's ``(a − p Σa)/2T`` can cancel many digits at small ``n``; the bound is the same where
nothing cancels). Cores, block sizes (powers of two and not, up to the kernels' limit) and ranks,
shapes, layouts, magnitude modes, rotation parameterisations, offsets, biases, empty ``-1`` slots and slot
counts above one kernel block are drawn by hypothesis. On CPU the kernels
run under ``TRITON_INTERPRET=1`` (CI); on a CUDA machine on the GPU.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jora_ops import (
    CoreSpec,
    Magnitude,
    _dispatch,
    _fold_common,
    _sparse_core_triton,
    compute_scale,
    jora_linear,
)
from jora_ops._sparse_core_triton import TRITON_MAX_BLOCK_SIZE
from jora_reference import adapted_weight, dense_core, dense_rotation, ecd_scale, oer_scale, rel_error

pytestmark = pytest.mark.skipif(
    not (_dispatch.triton_available() and (_dispatch.triton_interpreting() or torch.cuda.is_available())),
    reason="needs triton with TRITON_INTERPRET=1 (CI) or a CUDA device",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODES = ("none", "scale", "oer_softmax", "ecd_tanh")
ECD_ALPHA = 0.4
_CORE_PARAMS = {"diag": ("diag",), "block": ("blocks", "tail"), "lowrank": ("A", "B")}
LOWRANK_ALPHA = 3.0


def _core_spec(setup: dict) -> CoreSpec:
    """The drawn core; ``block_size`` is the lowrank core's rank."""
    size = setup["block_size"]
    return CoreSpec(setup["core"], setup["n"], setup["m"], block_size=size, rank=size, alpha=LOWRANK_ALPHA)


def _core_values(kind: str, n: int, m: int, block_size: int, rand) -> tuple[torch.Tensor, ...]:
    d = min(n, m)
    if kind == "diag":
        return (rand(d),)
    if kind == "lowrank":
        return rand(n, block_size), rand(m, block_size)
    return rand(d // block_size, block_size, block_size), rand(d % block_size)


def _slot_table(dim: int, active: int, slots: int, gen: torch.Generator) -> torch.Tensor:
    """``slots`` rows: ``active`` random disjoint pairs, then ``-1`` rows (empty slots)."""
    table = torch.full((slots, 2), -1, dtype=torch.long)
    table[:active] = torch.randperm(dim, generator=gen)[: 2 * active].view(active, 2)
    return table


def _run(impl: str, dtype: torch.dtype, inputs: dict, setup: dict) -> tuple[torch.Tensor, dict, tuple]:
    """One forward + backward; returns the output, the leaves' gradients and the statistics buffers."""
    leaves = {
        k: v.to(DEVICE, dtype if k in ("x", "bias") else v.dtype).clone().requires_grad_()
        for k, v in inputs.items()
    }
    n, m = setup["n"], setup["m"]
    weight = setup["weight"].to(DEVICE, dtype)
    if setup["layout"] == "conv1d":
        weight = weight.T.contiguous()
    slots = {"L": setup["pairs_L"], "R": setup["pairs_R"]}
    if impl == "torch":  # the torch path takes only the active prefix
        slots = {side: table[: setup[f"active_{side}"]] for side, table in slots.items()}
    theta_L = leaves["theta_L"] if impl == "triton" else leaves["theta_L"][: setup["active_L"]]
    theta_R = leaves["theta_R"] if impl == "triton" else leaves["theta_R"][: setup["active_R"]]
    magnitude = scale = None
    if setup["mode"] == "scale":
        scale = leaves["scale"]
    elif setup["mode"] != "none":
        nu = setup["row_norms"].to(DEVICE, leaves["logits"].dtype)
        magnitude = Magnitude(
            setup["mode"], leaves["logits"], nu, (nu**2).sum(), setup["temperature"], 1e-8, ECD_ALPHA
        )
    stats_in = torch.zeros(m, device=DEVICE)
    stats_out = torch.zeros(n, device=DEVICE)
    out = jora_linear(
        leaves["x"], weight, leaves.get("bias"), core=_core_spec(setup),
        core_params=tuple(leaves[name] for name in _CORE_PARAMS[setup["core"]]),
        core_offset=tuple(v.to(DEVICE) for v in setup["offset"]) if setup["offset"] is not None else None,
        pairs_L=slots["L"].to(DEVICE), theta_L=theta_L, pairs_R=slots["R"].to(DEVICE), theta_R=theta_R,
        scale=scale, magnitude=magnitude, weight_layout=setup["layout"], rotation_param=setup["rotation_param"],
        stats_in=stats_in, stats_out=stats_out, impl=impl,
    )  # fmt: skip
    grad = setup["grad"].to(DEVICE, out.dtype)
    out.backward(grad)
    return out.detach(), {k: v.grad for k, v in leaves.items()}, (stats_in, stats_out)


def _reference_scale(inputs: dict, setup: dict) -> torch.Tensor | None:
    """The float64 row scale ``s`` of the drawn mode (``None`` without one)."""
    if setup["mode"] == "scale":
        return inputs["scale"].double()
    if setup["mode"] == "oer_softmax":
        return oer_scale(setup["row_norms"], inputs["logits"], setup["temperature"], 1e-8)
    if setup["mode"] == "ecd_tanh":
        return ecd_scale(setup["row_norms"], inputs["logits"], ECD_ALPHA, setup["temperature"], 1e-8)
    return None


def _dense_weight(inputs: dict, setup: dict) -> torch.Tensor:
    """The adapted weight ``diag(s)(W + R_Lᵀ C R_R − C₀)`` of the drawn problem, dense, in float64."""
    n, m = setup["n"], setup["m"]
    kind, block_size = setup["core"], setup["block_size"]
    active_L, active_R = setup["active_L"], setup["active_R"]
    core_scale = _core_spec(setup).scale
    return adapted_weight(
        setup["weight"],
        dense_core(kind, tuple(inputs[name] for name in _CORE_PARAMS[kind]), n, m, block_size, core_scale),
        dense_core(kind, setup["offset"], n, m, block_size, core_scale)
        if setup["offset"] is not None
        else None,
        dense_rotation(setup["pairs_L"][:active_L], inputs["theta_L"][:active_L], n, setup["rotation_param"]),
        dense_rotation(setup["pairs_R"][:active_R], inputs["theta_R"][:active_R], m, setup["rotation_param"]),
        _reference_scale(inputs, setup),
    )


def _dense_reference(inputs: dict, setup: dict) -> torch.Tensor:
    out = inputs["x"].double() @ _dense_weight(inputs, setup).T
    return out + inputs["bias"].double() if "bias" in inputs else out


def _angle_grad_magnitude(inputs: dict, setup: dict, side: str) -> float:
    """The size of one side's angle gradient before any cancellation, in float64.

    ``∂L/∂θ_k = Σ_{t,i,j} g[t,i] D_k[i,j] x[t,j]`` with ``D_k = ∂W_adapted/∂θ_k`` (a central difference of the
    dense reference weight); this is the norm over the active slots of ``Σ_{i,j} |D_k[i,j]| (|g|ᵀ|x|)[i,j]``,
    the sum of the terms' absolute values: an fp32 evaluation's rounding is a fraction of ``ε`` times it (the
    summation bound). Where a slot's gradient cancels (a small sum of large terms) it exceeds the gradient.
    """
    key, step = f"theta_{side}", 1e-6
    products = setup["grad"].double().abs().T @ inputs["x"].double().abs()  # [n, m]
    sizes = []
    for slot in range(setup[f"active_{side}"]):
        shifted = []
        for sign in (1.0, -1.0):
            theta = inputs[key].double().clone()
            theta[slot] += sign * step
            shifted.append(_dense_weight(inputs | {key: theta}, setup))
        sizes.append(float((((shifted[0] - shifted[1]) / (2 * step)).abs() * products).sum()))
    return float(torch.linalg.vector_norm(torch.tensor(sizes, dtype=torch.float64)))


def _make(n: int, m: int, tokens: int, seed: int, data: st.DataObject) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        """Float64 values the fp32 kernels receive exactly: the float64 references see the same inputs, so
        only the kernels' arithmetic is measured (not the rounding of their inputs, which a cancelling
        output, e.g. one token into one row, would turn into a large relative error)."""
        return torch.randn(*shape, generator=gen, dtype=torch.float64).float().double()

    slots_L = data.draw(st.integers(0, n // 2), label="slots_L")
    slots_R = data.draw(st.integers(0, m // 2), label="slots_R")
    active_L = data.draw(st.integers(0, slots_L), label="active_L")
    active_R = data.draw(st.integers(0, slots_R), label="active_R")
    mode = data.draw(st.sampled_from(MODES), label="mode")
    kind = data.draw(st.sampled_from(list(_CORE_PARAMS)), label="core")
    block_size = 1
    if kind == "block":
        block_size = data.draw(st.integers(1, TRITON_MAX_BLOCK_SIZE), label="block_size")
    elif kind == "lowrank":
        block_size = data.draw(st.integers(1, 9), label="rank")
    row_norms = (torch.rand(n, generator=gen, dtype=torch.float64) + 0.5).float().double()
    if n > 1:
        row_norms[data.draw(st.integers(0, n - 1), label="excluded_row")] = 0.0  # a row outside the energy
    setup = {
        "n": n,
        "m": m,
        "core": kind,
        "block_size": block_size,
        "layout": data.draw(st.sampled_from(["linear", "conv1d"]), label="layout"),
        "rotation_param": data.draw(st.sampled_from(["cayley", "angle"]), label="rotation_param"),
        "mode": mode,
        "pairs_L": _slot_table(n, active_L, slots_L, gen),
        "pairs_R": _slot_table(m, active_R, slots_R, gen),
        "active_L": active_L,
        "active_R": active_R,
        "weight": (rand(n, m) / m**0.5).float().double(),
        "offset": _core_values(kind, n, m, block_size, rand)
        if data.draw(st.booleans(), label="offset")
        else None,
        "row_norms": row_norms,
        "temperature": data.draw(st.sampled_from([0.5, 1.0, 2.0]), label="temperature"),
        "grad": rand(tokens, n),
    }
    inputs = {
        "x": rand(tokens, m),
        "theta_L": rand(slots_L),
        "theta_R": rand(slots_R),
    }
    inputs.update(zip(_CORE_PARAMS[kind], _core_values(kind, n, m, block_size, rand), strict=True))
    if data.draw(st.booleans(), label="bias"):
        inputs["bias"] = rand(n)
    if mode == "scale":
        inputs["scale"] = (torch.rand(n, generator=gen, dtype=torch.float64) + 0.5).float().double()
    elif mode != "none":
        inputs["logits"] = rand(n)
    return inputs, setup


def _logits_grad_magnitude(inputs: dict, setup: dict, ref_out: torch.Tensor) -> float:
    """The size of the logits' gradient before any cancellation, in float64: the norm of its closed form
    (``scale_vjp``) with every difference turned into a sum of absolute values and ``∂L/∂s = Σ_t g ⊙ h`` into
    ``Σ_t |g ⊙ h|`` (``h`` the pre-scale output).

    An fp32 evaluation is accurate to about ``ε`` times this. It exceeds ``‖∂L/∂w‖`` where the gradient
    cancels: OER's ``(a − p Σa)/2T`` and ECD's ``u − ν² g Σ(u g)/Σ(ν g)²`` at small ``n`` (exactly 0 at
    ``n = 1``); where nothing cancels it is the gradient's own size.
    """
    nu, temperature = setup["row_norms"], setup["temperature"]
    included = nu > 1e-8
    logits = inputs["logits"].double()
    s = _reference_scale(inputs, setup)
    pre_scale = (ref_out.double().cpu() - inputs.get("bias", torch.zeros(setup["n"])).double()) / s
    u = torch.where(included, (setup["grad"].double() * pre_scale).abs().sum(0), 0.0)
    energy = (nu[included] ** 2).sum()
    if setup["mode"] == "oer_softmax":
        a = u * s
        p = torch.where(included, s * s * nu * nu / energy, 0.0)
        terms = (a + p * a.sum()) / (2 * temperature)
    else:
        t = torch.tanh(logits / temperature)
        gain = torch.where(included, 1 + ECD_ALPHA * t, 0.0)
        norm_sq = ((nu * gain) ** 2).sum()
        d_gain = ECD_ALPHA * (1 - t * t) / temperature
        terms = d_gain * torch.sqrt(energy / norm_sq) * (u + nu * nu * gain * (u * gain).sum() / norm_sq)
    return float(torch.linalg.vector_norm(torch.where(included, terms, 0.0)))


@given(
    n=st.integers(1, 48),
    m=st.integers(1, 48),
    tokens=st.integers(1, 70),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_triton_sparse_cores_match_float64_references(n: int, m: int, tokens: int, seed: int, data) -> None:
    inputs, setup = _make(n, m, tokens, seed, data)
    out, grads, (stats_in, stats_out) = _run("triton", torch.float32, inputs, setup)
    assert rel_error(out.cpu(), _dense_reference(inputs, setup)) < 1e-5
    ref_out, ref_grads, (ref_in, ref_out_stats) = _run("torch", torch.float64, inputs, setup)
    assert rel_error(out, ref_out) < 1e-5
    for key, expected in ref_grads.items():
        got = grads[key]
        if key in ("theta_L", "theta_R"):  # the torch path saw only the active prefix: empty slots get zero
            active = setup[f"active_{key[-1]}"]
            assert torch.all(got[active:] == 0), key
            got = got[:active]
            expected = expected[:active]
        assert got.dtype == inputs[key].dtype or key in ("x", "bias")
        error = float(torch.linalg.vector_norm(got.double().cpu() - expected.cpu()))
        if key == "logits":  # relative to its size before cancellation (as small as 1e-5 relative otherwise)
            assert error <= 1e-5 * _logits_grad_magnitude(inputs, setup, ref_out), key
        elif key in ("theta_L", "theta_R") and rel_error(got, expected) >= 1e-5:
            # a cancelling angle gradient (a small sum of large terms; the fp32 torch path is as far off): within
            # one fp32 ε of its size before cancellation (where nothing cancels that is tighter than 1e-5)
            assert error <= torch.finfo(torch.float32).eps * _angle_grad_magnitude(inputs, setup, key[-1]), (
                key
            )
        else:
            assert rel_error(got, expected) < 1e-5 or float((got.double() - expected).abs().max()) < 1e-6, key
    assert rel_error(stats_in, ref_in) < 1e-5
    assert rel_error(stats_out, ref_out_stats) < 1e-5


def _random_problem(
    n: int, m: int, tokens: int, slots: int, core: str, block_size: int, seed: int
) -> tuple[
    torch.Tensor, torch.Tensor, CoreSpec, tuple[str, ...], dict[str, torch.Tensor], torch.Tensor, torch.Tensor
]:
    """``(x, weight, spec, core names, leaves, pairs_L, pairs_R)`` of a random fp32 problem: ``slots`` random
    pairs per side, the ``core`` (``"diag"``, ``"block"`` or ``"lowrank"`` of rank ``block_size``) and the angles
    and logits as leaves."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, m, generator=gen)
    weight = torch.randn(n, m, generator=gen) / m**0.5
    pairs_L = torch.randperm(n, generator=gen)[: 2 * slots].view(slots, 2)
    pairs_R = torch.randperm(m, generator=gen)[: 2 * slots].view(slots, 2)
    d = min(n, m)
    if core == "diag":
        spec, values = CoreSpec("diag", n, m), {"diag": torch.randn(d, generator=gen)}
    elif core == "lowrank":
        spec = CoreSpec("lowrank", n, m, rank=block_size, alpha=LOWRANK_ALPHA)
        values = {
            "A": torch.randn(n, block_size, generator=gen),
            "B": torch.randn(m, block_size, generator=gen),
        }
    else:
        spec = CoreSpec("block", n, m, block_size=block_size)
        values = {"blocks": torch.randn(d // block_size, block_size, block_size, generator=gen),
                  "tail": torch.randn(d % block_size, generator=gen)}  # fmt: skip
    leaves = {"theta_L": torch.randn(slots, generator=gen), "theta_R": torch.randn(slots, generator=gen),
              "logits": torch.randn(n, generator=gen), **values}  # fmt: skip
    return x, weight, spec, tuple(values), leaves, pairs_L, pairs_R


def _assert_triton_matches_torch_path(
    x: torch.Tensor,
    weight: torch.Tensor,
    spec: CoreSpec,
    core_names: tuple[str, ...],
    leaves: dict[str, torch.Tensor],
    pairs_L: torch.Tensor,
    pairs_R: torch.Tensor,
    magnitude_kind: str,
    temperature: float,
    frozen: tuple[str, ...] = (),
) -> None:
    """One fwd+bwd (loss ``Σ y²``) on each path; the Triton output and every leaf's gradient (shape included)
    within 1e-5 of the torch path's; the ``frozen`` leaves (no ``requires_grad``) get none on either path."""
    nu = weight.norm(dim=1)
    results = {}
    for impl in ("torch", "triton"):
        params = {k: v.to(DEVICE).clone().requires_grad_(k not in frozen) for k, v in leaves.items()}
        magnitude = Magnitude(
            magnitude_kind, params["logits"], nu.to(DEVICE), (nu**2).sum().to(DEVICE), temperature
        )
        out = jora_linear(
            x.to(DEVICE), weight.to(DEVICE), core=spec, core_params=tuple(params[k] for k in core_names),
            pairs_L=pairs_L.to(DEVICE), theta_L=params["theta_L"], pairs_R=pairs_R.to(DEVICE),
            theta_R=params["theta_R"], magnitude=magnitude, impl=impl,
        )  # fmt: skip
        out.square().sum().backward()
        results[impl] = (out.detach(), {k: v.grad for k, v in params.items()})
    assert rel_error(results["triton"][0], results["torch"][0]) < 1e-5
    for key, expected in results["torch"][1].items():
        got = results["triton"][1][key]
        if key in frozen:
            assert got is None and expected is None, key
            continue
        assert got.shape == leaves[key].shape, key
        assert rel_error(got, expected) < 1e-5, key


@pytest.mark.parametrize(
    ("core", "slots", "block_size"),
    [("diag", 31, 1), ("diag", 33, 1), ("diag", 70, 1), ("block", 70, 2), ("block", 40, 3), ("block", 70, 4),
     ("block", 33, 8), ("block", 40, 16), ("lowrank", 70, 3), ("lowrank", 33, 16)],
)  # fmt: skip
def test_triton_handles_many_slots_coordinate_blocks_and_token_splits(
    core: str, slots: int, block_size: int
) -> None:
    """More slots than the kernels' slot block (32), several coordinate blocks and token splits: the lookups
    loop over slot blocks, the block sums' tiles start at block boundaries (lowrank: ``block_size`` is the
    rank; several fold tiles)."""
    n, m = 2 * slots + 3 + 4 * block_size, 2 * slots + 7
    problem = _random_problem(n, m, 600, slots, core, block_size, slots + block_size)
    _assert_triton_matches_torch_path(*problem, "oer_softmax", 1.0)


@pytest.mark.parametrize("n_out", [45, 83])
def test_triton_long_split_launch_matches_torch_path(monkeypatch: pytest.MonkeyPatch, n_out: int) -> None:
    """The diag core's token sums with the long-split launch (16-token tiles on 4 warps, used from
    ``LONG_SPLIT_TOKENS`` tokens per split: T ≥ 32768 on the GPU), forced here at 600 tokens; more rows than
    columns and fewer (the fold's rotation tables then loop over the columns past the rows)."""
    monkeypatch.setattr(_sparse_core_triton, "LONG_SPLIT_TOKENS", 1)
    _sparse_core_triton._token_sum_geometry.cache_clear()
    try:
        assert _sparse_core_triton._token_sum_geometry(600, 64, 1, 0, False)[3] == 16  # the long-split tiles
        problem = _random_problem(n_out, 64, 600, 20, "diag", 1, n_out)
        _assert_triton_matches_torch_path(*problem, "oer_softmax", 1.0)
    finally:
        _sparse_core_triton._token_sum_geometry.cache_clear()  # no geometry of the patched value stays cached


def test_triton_wide_split_launch_matches_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The diag core's shorter token splits from ``WIDE_MIN_WIDTH`` on (96 tokens per split, up to 128 splits:
    d ≥ 4096 on the GPU), forced here at width 64: 600 tokens in 7 splits of 88, a count that is no power of two."""
    monkeypatch.setattr(_sparse_core_triton, "WIDE_MIN_WIDTH", 64)
    _sparse_core_triton._token_sum_geometry.cache_clear()
    try:
        splits, tokens_per_split = _sparse_core_triton._token_sum_geometry(600, 64, 1, 0, False)[:2]
        assert (splits, tokens_per_split) == (7, 88)  # 5 splits of 128 tokens without the rule
        problem = _random_problem(64, 57, 600, 20, "diag", 1, 64)
        _assert_triton_matches_torch_path(*problem, "oer_softmax", 1.0)
    finally:
        _sparse_core_triton._token_sum_geometry.cache_clear()  # no geometry of the patched value stays cached


def test_triton_lowrank_large_rank_steps_through_the_update() -> None:
    """Rank 70: the fold's update (128 wide, padded) in two ``tl.dot`` steps, the factors' rows wider than a
    slot block; a rank above ``TRITON_MAX_RANK`` is refused by the Triton entry point."""
    from jora_ops import _lowrank_triton

    problem = _random_problem(150, 140, 200, 30, "lowrank", 70, 5)
    _assert_triton_matches_torch_path(*problem, "ecd_tanh", 0.7)
    rank = _lowrank_triton.TRITON_MAX_RANK + 1
    x, weight = torch.randn(4, 8, device=DEVICE), torch.randn(6, 8, device=DEVICE)
    factors = (torch.randn(6, rank, device=DEVICE), torch.randn(8, rank, device=DEVICE))
    no_pairs, no_angles = torch.empty(0, 2, dtype=torch.long, device=DEVICE), torch.empty(0, device=DEVICE)
    with pytest.raises(ValueError, match=f"rank must be in \\[1, {rank - 1}\\]"):
        _lowrank_triton.lowrank_linear_triton(
            x, weight, None, layout="linear", core_values=factors, core_offset=None, core_scale=1.0,
            pairs_L=no_pairs, theta_L=no_angles, pairs_R=no_pairs, theta_R=no_angles, scale=None, magnitude=None,
            rotation_param="cayley", stats_in=None, stats_out=None, on_backward=None,
        )  # fmt: skip


@pytest.mark.parametrize(("n", "m", "block_size"), [(9, 6, 8), (5, 7, 16), (12, 3, 4)])
def test_triton_block_core_without_a_full_block(n: int, m: int, block_size: int) -> None:
    """``block_size > min(n, m)``: no full block, the core is its remainder diagonal and the blocks tensor is
    empty. An empty tensor's data pointer is null, so no kernel may take the blocks' gradient as a pointer
    (regression: the interpreter segfaulted writing through it)."""
    problem = _random_problem(n, m, 40, min(n, m) // 2, "block", block_size, n * m + block_size)
    assert problem[4]["blocks"].shape == (0, block_size, block_size)  # no full block
    _assert_triton_matches_torch_path(*problem, "ecd_tanh", 0.5)


def test_triton_diag_scale_matches_compute_scale_at_zero_and_nonzero_logits() -> None:
    """The in-kernel OER/ECD scale equals :func:`compute_scale` (identity at zero logits)."""
    n, m = 37, 19
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(n, m, generator=gen)
    nu = weight.norm(dim=1)
    nu[5] = 0.0
    eye = torch.eye(m)
    for kind in ("oer_softmax", "ecd_tanh"):
        for logits in (torch.zeros(n), torch.randn(n, generator=gen)):
            magnitude = Magnitude(
                kind, logits.to(DEVICE), nu.to(DEVICE), (nu**2).sum().to(DEVICE), 0.7, 1e-8, 0.3
            )
            out = jora_linear(
                eye.to(DEVICE), weight.to(DEVICE), core=CoreSpec("diag", n, m), core_params=(torch.zeros(m, device=DEVICE),),
                magnitude=magnitude, impl="triton",
            )  # fmt: skip
            expected_scale = compute_scale(kind, nu, (nu**2).sum(), logits, 0.7, 1e-8, 0.3)
            torch.testing.assert_close(out.cpu(), (weight * expected_scale[:, None]).T, rtol=1e-5, atol=1e-6)


def _poison_allocations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Floating-point buffers from ``torch.empty``/``empty_like`` start as NaN."""
    for name in ("empty", "empty_like"):
        allocate = getattr(torch, name)

        def poisoned(*args: object, _allocate=allocate, **kwargs: object) -> torch.Tensor:
            out = _allocate(*args, **kwargs)
            return out.fill_(float("nan")) if out.is_floating_point() else out

        monkeypatch.setattr(torch, name, poisoned)


@pytest.mark.parametrize(
    ("core", "block_size", "magnitude_kind"),
    [("diag", 1, "oer_softmax"), ("block", 4, "ecd_tanh"), ("lowrank", 5, "oer_softmax")],
)
def test_triton_reads_only_what_it_wrote(monkeypatch: pytest.MonkeyPatch, core: str, block_size: int,
                                         magnitude_kind: str) -> None:  # fmt: skip
    """Every buffer from ``torch.empty``/``empty_like`` starts as NaN here, and the gradients still match the
    torch path: the kernels never read a value they did not write in the same call (the angle gradients are
    accumulated on a zero that the token sums write, the logits' gradient reads the token sums' per-split
    totals, whose arrival counters the fold zeroes behind the scale with ``E_incl``/``κ``, the folded weight is
    written in full; the lowrank update's zero padding is written by its factors kernel)."""
    _poison_allocations(monkeypatch)
    problem = _random_problem(70, 52, 300, 9, core, block_size, block_size)
    _assert_triton_matches_torch_path(*problem, magnitude_kind, 0.8)


@pytest.mark.parametrize("frozen", ["theta_L", "theta_R", "core", "logits", "theta_L,theta_R,core"])
@pytest.mark.parametrize(("core", "block_size"), [("diag", 1), ("block", 3), ("lowrank", 2)])
def test_triton_gradients_with_a_frozen_leaf(frozen: str, core: str, block_size: int) -> None:
    """A leaf without ``requires_grad`` gets no gradient and the others still match the torch path (the
    kernels specialise on which gradients are needed, e.g. skip the columns' pass without θ_R; with the
    rotations and the core frozen the fold writes no rotation tables and only the scale's chain runs)."""
    problem = _random_problem(23, 17, 90, 5, core, block_size, block_size)
    names = problem[3]
    _assert_triton_matches_torch_path(
        *problem, "oer_softmax", 0.9,
        frozen=tuple(k for name in frozen.split(",") for k in (names if name == "core" else (name,))),
    )  # fmt: skip


@pytest.mark.parametrize(("core", "block_size"), [("diag", 1), ("block", 4), ("lowrank", 3)])
def test_triton_bf16_matches_the_float64_torch_path(core: str, block_size: int) -> None:
    """bf16 activations and weight on every core (the lowrank fold's ``tl.dot`` included: the interpreter
    multiplies bf16 in fp32, as numpy has no bfloat16): output and every gradient within 1e-2 of the float64
    torch path on the same bf16-rounded inputs."""
    x, weight, spec, names, leaves, pairs_L, pairs_R = _random_problem(37, 29, 200, 6, core, block_size, 5)
    x, weight = x.bfloat16(), weight.bfloat16()
    leaves |= {name: 0.1 * leaves[name] for name in names}  # an adapter's update, small beside W
    grad = torch.randn(200, 37, generator=torch.Generator().manual_seed(2)).bfloat16()
    results = {}
    for impl, dtype in (("triton", torch.bfloat16), ("torch", torch.float64)):
        params = {k: v.to(DEVICE, v.dtype if dtype == torch.bfloat16 else dtype).clone().requires_grad_() for k, v in
                  leaves.items()}  # fmt: skip
        x_in = x.to(DEVICE, dtype).clone().requires_grad_()
        nu = weight.to(DEVICE, params["logits"].dtype).norm(dim=1)
        out = jora_linear(
            x_in, weight.to(DEVICE, dtype), core=spec, core_params=tuple(params[k] for k in names),
            pairs_L=pairs_L.to(DEVICE), theta_L=params["theta_L"], pairs_R=pairs_R.to(DEVICE),
            theta_R=params["theta_R"], magnitude=Magnitude("oer_softmax", params["logits"], nu, (nu**2).sum(), 0.9),
            impl=impl,
        )  # fmt: skip
        out.backward(grad.to(DEVICE, dtype))
        results[impl] = {"out": out, "x": x_in.grad, **{k: v.grad for k, v in params.items()}}
    for key, expected in results["torch"].items():
        got = results["triton"][key]
        assert got.dtype == (torch.bfloat16 if key in ("out", "x") else torch.float32), key
        assert rel_error(got, expected) < 1e-2, key


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("layout", ["linear", "conv1d", "linear, strided", "linear, wider weight"])
@pytest.mark.parametrize(("core", "block_size"), [("diag", 1), ("block", 3), ("lowrank", 4)])
def test_without_a_scale_gradient_the_layer_saves_what_the_frozen_layer_saves(
    monkeypatch: pytest.MonkeyPatch, impl: str, layout: str, core: str, block_size: int
) -> None:
    """Without a magnitude, or with frozen logits, the fused function saves no weight- or activation-sized
    tensor but ``x`` and the base weight itself, a strided view or a wider weight too (an fp32 weight with fp16
    activations, autocast's case: no fp16 copy is kept) (PERFORMANCE.md: nothing beyond the base layer's); its
    backward folds again, and every gradient equals, bit for bit, the one of the same call whose forward kept
    the folded weight (``REFOLD_IN_BACKWARD`` off: the folded weight is the one tensor more it keeps; trainable
    logits: the output ``y`` and the folded weight are the two more it keeps). The two calls run the same
    computations but for where the folded weight comes from — on CUDA the torch path's compiled bookkeeping
    too (a call with trainable logits compiles other graphs, whose fused sums may round differently)."""
    x, weight, spec, names, leaves, pairs_L, pairs_R = _random_problem(40, 33, 150, 6, core, block_size, 17)
    nu = weight.norm(dim=1).to(DEVICE)
    if layout == "conv1d":
        weight = weight.T.contiguous()
    elif layout == "linear, strided":  # a transposed view: saved as it is, never as a contiguous copy
        weight, layout = weight.T.contiguous().T, "linear"
    dtype = torch.float32
    if layout == "linear, wider weight":
        dtype, layout = torch.float16, "linear"
    weight = weight.to(DEVICE)
    grad = torch.randn(150, 40, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    grads = {}
    for case in ("no magnitude", "frozen logits", "frozen logits, fold kept", "trainable logits"):
        params = {
            k: v.to(DEVICE).clone().requires_grad_(k != "logits" or case == "trainable logits")
            for k, v in leaves.items()
        }
        x_in = x.to(DEVICE, dtype).clone().requires_grad_()
        magnitude = None
        if case != "no magnitude":
            magnitude = Magnitude("oer_softmax", params["logits"], nu, (nu**2).sum(), 0.7)
        saved: list[torch.Tensor] = []
        with monkeypatch.context() as patched:
            patched.setattr(_fold_common, "REFOLD_IN_BACKWARD", case != "frozen logits, fold kept")
            with torch.autograd.graph.saved_tensors_hooks(
                lambda t, kept=saved: kept.append(t) or t, lambda t: t
            ):
                out = jora_linear(
                    x_in, weight, core=spec, core_params=tuple(params[k] for k in names),
                    pairs_L=pairs_L.to(DEVICE), theta_L=params["theta_L"], pairs_R=pairs_R.to(DEVICE),
                    theta_R=params["theta_R"], magnitude=magnitude, weight_layout=layout, impl=impl,
                )  # fmt: skip
            large = {t.untyped_storage().data_ptr() for t in saved if t.numel() >= weight.numel()}
            base = {x_in.untyped_storage().data_ptr(), weight.untyped_storage().data_ptr()}
            if case == "trainable logits":
                assert base < large and out.untyped_storage().data_ptr() in large and len(large) == 4
            elif case == "frozen logits, fold kept":
                assert base < large and out.untyped_storage().data_ptr() not in large and len(large) == 3
            else:
                assert large == base, case
            out.backward(grad)
        grads[case] = {"x": x_in.grad, **{k: v.grad for k, v in params.items() if k != "logits"}}
    # (the refolded path's numerics against float64: the hypothesis test above, magnitude mode "none")
    for key, kept in grads["frozen logits, fold kept"].items():
        assert torch.equal(grads["frozen logits"][key], kept), key


@pytest.mark.parametrize(("core", "block_size"), [("diag", 1), ("block", 4), ("lowrank", 3)])
def test_triton_forward_without_grad_mode_matches_torch_path(core: str, block_size: int) -> None:
    """Under ``torch.no_grad`` (no backward follows: no rotation tables) the Triton output matches torch's."""
    x, weight, spec, names, leaves, pairs_L, pairs_R = _random_problem(
        21, 26, 70, 6, core, block_size, 40 + block_size
    )
    x, weight, pairs_L, pairs_R = (t.to(DEVICE) for t in (x, weight, pairs_L, pairs_R))
    params = {
        k: v.to(DEVICE).requires_grad_() for k, v in leaves.items()
    }  # a backward could follow, none does
    nu = weight.norm(dim=1)
    magnitude = Magnitude("oer_softmax", params["logits"], nu, (nu**2).sum(), 1.0)
    outputs = {}
    with torch.no_grad():
        for impl in ("torch", "triton"):
            outputs[impl] = jora_linear(
                x, weight, core=spec, core_params=tuple(params[k] for k in names), pairs_L=pairs_L,
                theta_L=params["theta_L"], pairs_R=pairs_R, theta_R=params["theta_R"], magnitude=magnitude, impl=impl,
            )  # fmt: skip
    assert not outputs["triton"].requires_grad
    assert rel_error(outputs["triton"], outputs["torch"]) < 1e-5


@pytest.mark.parametrize(("core", "block_size"), [("diag", 1), ("block", 3), ("lowrank", 4)])
def test_triton_second_backward_of_one_forward_repeats_the_first(monkeypatch: pytest.MonkeyPatch, core: str,
                                                                 block_size: int) -> None:  # fmt: skip
    """Two backwards of one forward (``retain_graph``) give the same gradients, so they accumulate to exactly
    twice the first: the token sums' arrival counters, zeroed once by the forward's fold, are zeroed again by
    each split's last program (with NaN-poisoned buffers a counter left over would leave a total unwritten)."""
    _poison_allocations(monkeypatch)
    x, weight, spec, names, leaves, pairs_L, pairs_R = _random_problem(40, 33, 300, 7, core, block_size, 11)
    params = {k: v.to(DEVICE).requires_grad_() for k, v in leaves.items()}
    nu = weight.norm(dim=1).to(DEVICE)
    out = jora_linear(
        x.to(DEVICE), weight.to(DEVICE), core=spec, core_params=tuple(params[k] for k in names),
        pairs_L=pairs_L.to(DEVICE), theta_L=params["theta_L"], pairs_R=pairs_R.to(DEVICE), theta_R=params["theta_R"],
        magnitude=Magnitude("oer_softmax", params["logits"], nu, (nu**2).sum(), 0.8), impl="triton",
    )  # fmt: skip
    loss = out.square().sum()
    loss.backward(retain_graph=True)
    first = {k: v.grad.clone() for k, v in params.items()}
    loss.backward()
    for key, grad in first.items():
        assert torch.isfinite(grad).all(), key
        assert torch.equal(params[key].grad, 2 * grad), key


@pytest.mark.parametrize(
    ("stats", "g_sum", "with_out"), [(True, True, True), (False, False, True), (True, False, False)]
)
def test_triton_column_sums_match_torch(stats: bool, g_sum: bool, with_out: bool) -> None:
    """The token sums of the torch fold paths (blocks above 16, ranks above 128): the Triton pass equals the
    torch reference key by key; ``Σg`` only when asked for (``None`` otherwise, on both)."""
    from jora_ops._fold_common import column_sums_torch

    gen = torch.Generator().manual_seed(int(stats) + 2 * int(g_sum))
    grad, out, x = (torch.randn(300, width, generator=gen).to(DEVICE) for width in (37, 37, 52))
    args = (grad, out if with_out else None, x, 30, stats, g_sum)
    got, expected = _sparse_core_triton.column_sums_triton(*args), column_sums_torch(*args)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if value is not None:  # what was not asked for (statistics, Σg·out without out) is not compared
            assert rel_error(got[key], value) < 1e-5, key
    assert (got["g"] is None) == (expected["g"] is None) == (not g_sum)


@pytest.mark.parametrize(("core", "block_size"), [("diag", 1), ("block", 4), ("lowrank", 3)])
def test_triton_under_autocast_matches_the_torch_path(core: str, block_size: int) -> None:
    """Under ``torch.autocast`` (fp16 here: the interpreter has no bf16 arithmetic) the Triton kernels get the
    autocast-dtype input and weight and match the torch path under the same autocast."""
    x, weight, spec, names, leaves, pairs_L, pairs_R = _random_problem(30, 26, 64, 6, core, block_size, 17)
    nu = weight.norm(dim=1).to(DEVICE)
    results = {}
    for impl in ("torch", "triton"):
        params = {k: v.to(DEVICE).clone().requires_grad_() for k, v in leaves.items()}
        inputs = x.to(DEVICE).clone().requires_grad_()
        with torch.autocast(DEVICE, dtype=torch.float16):
            out = jora_linear(
                inputs, weight.to(DEVICE), core=spec, core_params=tuple(params[k] for k in names),
                pairs_L=pairs_L.to(DEVICE), theta_L=params["theta_L"], pairs_R=pairs_R.to(DEVICE),
                theta_R=params["theta_R"], magnitude=Magnitude("oer_softmax", params["logits"], nu, (nu**2).sum(), 1.0),
                impl=impl,
            )  # fmt: skip
        assert out.dtype == torch.float16
        out.float().square().sum().backward()
        results[impl] = (out.detach(), {"x": inputs.grad} | {k: v.grad for k, v in params.items()})
    assert rel_error(results["triton"][0], results["torch"][0]) < 1e-3
    for key, expected in results["torch"][1].items():
        assert results["triton"][1][key].dtype == expected.dtype, key
        assert rel_error(results["triton"][1][key], expected) < 1e-2, key


@pytest.mark.parametrize(("core", "block_size"), [("diag", 1), ("block", 3), ("lowrank", 5)])
@pytest.mark.parametrize("layout", ["linear", "conv1d"])
def test_triton_folds_a_wider_weight_straight_into_the_input_dtype(
    core: str, block_size: int, layout: str
) -> None:
    """An fp32 weight with fp16 activations (what autocast gives the Triton path): the diag/block folded weight
    is the float64 fold rounded once to fp16 (no fp16 copy of ``W`` first), so the output is closer to
    ``x · round(W_eff)ᵀ`` than the torch path's, which folds a cast copy; gradients match that path."""
    x, weight, spec, names, leaves, pairs_L, pairs_R = _random_problem(36, 29, 50, 6, core, block_size, 31)
    nu = weight.norm(dim=1)
    weight_in = weight if layout == "linear" else weight.T.contiguous()

    def run(
        impl: str, inputs: torch.Tensor, w: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, dict]:
        params = {k: v.to(DEVICE, dtype).clone().requires_grad_() for k, v in leaves.items()}
        norms = nu.to(DEVICE, dtype)
        out = jora_linear(
            inputs, w.to(DEVICE), core=spec, core_params=tuple(params[k] for k in names),
            pairs_L=pairs_L.to(DEVICE), theta_L=params["theta_L"], pairs_R=pairs_R.to(DEVICE),
            theta_R=params["theta_R"], magnitude=Magnitude("oer_softmax", params["logits"], norms, (norms**2).sum(), 1.0),
            weight_layout=layout, impl=impl,
        )  # fmt: skip
        return out, params

    # the float64 folded weight: the torch path on the identity (row t of the output is column t of W_eff)
    identity = torch.eye(29, dtype=torch.float64, device=DEVICE)
    folded64 = run("torch", identity, weight_in.double(), torch.float64)[0].detach().T
    expected = x.to(DEVICE).half().double() @ folded64.half().double().T
    grads = {}
    for impl in ("triton", "torch"):
        inputs = x.to(DEVICE).half().requires_grad_()
        out, params = run(impl, inputs, weight_in, torch.float32)
        assert out.dtype == torch.float16
        # the diag/block fold rounds once: under the cast copy's error (≈ 4e-4 here); the lowrank update's
        # factors are in fp16 too
        bound = 3e-4 if impl == "triton" and core != "lowrank" else 1e-3
        assert rel_error(out, expected) < bound, impl
        out.float().square().sum().backward()
        grads[impl] = {"x": inputs.grad} | {k: v.grad for k, v in params.items()}
    for key, expected_grad in grads["torch"].items():
        assert rel_error(grads["triton"][key], expected_grad) < 1e-2, key


@pytest.mark.gpu
@pytest.mark.parametrize(("core", "block_size"), [("diag", 1), ("block", 4), ("lowrank", 8)])
def test_triton_input_matmul_on_a_second_stream_matches_one_stream(
    monkeypatch: pytest.MonkeyPatch, core: str, block_size: int
) -> None:
    """The backward's ``∂L/∂x`` matmul on a second stream beside the token sums (``OVERLAP_MIN_ELEMENTS``)
    gives the one-stream backward's gradients bit for bit, on a user's stream too, through two chained layers
    (the second layer's ``∂L/∂x`` is the first's output gradient, read by its token sums at once: a missing
    join would read it unwritten) and with a bias and the statistics. The second stream writes into memory
    of the current stream: no ``record_stream``."""
    x, weight, spec, names, leaves, pairs_L, pairs_R = _random_problem(
        1040, 1040, 2100, 32, core, block_size, 23
    )
    weight2 = torch.randn(1040, 1040, generator=torch.Generator().manual_seed(5)) / 1040**0.5
    nu, nu2 = weight.norm(dim=1).cuda(), weight2.norm(dim=1).cuda()
    bias = torch.randn(1040).cuda()

    def run() -> dict[str, torch.Tensor]:
        params = {k: v.cuda().requires_grad_() for k, v in leaves.items()}
        inputs = x.cuda().requires_grad_()
        stats_in, stats_out = torch.zeros(1040, device="cuda"), torch.zeros(1040, device="cuda")
        hidden = inputs
        for w, norms in ((weight, nu), (weight2, nu2)):
            hidden = jora_linear(
                hidden, w.cuda(), bias, core=spec, core_params=tuple(params[k] for k in names),
                pairs_L=pairs_L.cuda(), theta_L=params["theta_L"], pairs_R=pairs_R.cuda(), theta_R=params["theta_R"],
                magnitude=Magnitude("oer_softmax", params["logits"], norms, (norms**2).sum(), 1.0),
                stats_in=stats_in, stats_out=stats_out, impl="triton",
            )  # fmt: skip
        hidden.square().sum().backward()
        return {"x": inputs.grad, "stats_in": stats_in, "stats_out": stats_out} | {
            k: v.grad for k, v in params.items()
        }

    monkeypatch.setattr(_sparse_core_triton, "OVERLAP_MIN_ELEMENTS", None)
    expected = run()
    monkeypatch.setattr(_sparse_core_triton, "OVERLAP_MIN_ELEMENTS", 0)
    recorded = []
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda tensor, stream: recorded.append(tensor.shape))
    user_stream = torch.cuda.Stream()
    for stream in (torch.cuda.current_stream(), user_stream):
        with torch.cuda.stream(stream):
            got = run()
        torch.cuda.synchronize()
        for key, value in expected.items():
            assert torch.isfinite(value).all(), key
            assert torch.equal(got[key], value), key
    assert recorded == []
