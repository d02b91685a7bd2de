"""The Triton kernels of the diag core (``jora_ops._diag_triton``) against the float64 references.

Outputs are compared with the dense float64 reference; every gradient with the float64 torch path (itself
gradchecked in ``test_fused.py``). Shapes, layouts, magnitude modes, rotation parameterisations, offsets,
biases, empty ``-1`` slots and slot counts above one kernel block are drawn by hypothesis. On CPU the kernels
run under ``TRITON_INTERPRET=1`` (CI); on a CUDA machine on the GPU.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jora_ops import CoreSpec, Magnitude, _dispatch, compute_scale, jora_linear
from jora_reference import adapted_weight, dense_core, dense_rotation, ecd_scale, oer_scale, rel_error

pytestmark = pytest.mark.skipif(
    not (_dispatch.triton_available() and (_dispatch.triton_interpreting() or torch.cuda.is_available())),
    reason="needs triton with TRITON_INTERPRET=1 (CI) or a CUDA device",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODES = ("none", "scale", "oer_softmax", "ecd_tanh")


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
            setup["mode"], leaves["logits"], nu, (nu**2).sum(), setup["temperature"], 1e-8, 0.4
        )
    stats_in = torch.zeros(m, device=DEVICE)
    stats_out = torch.zeros(n, device=DEVICE)
    out = jora_linear(
        leaves["x"], weight, leaves.get("bias"), core=CoreSpec("diag", n, m), core_params=(leaves["diag"],),
        core_offset=(setup["offset"].to(DEVICE, leaves["diag"].dtype),) if setup["offset"] is not None else None,
        pairs_L=slots["L"].to(DEVICE), theta_L=theta_L, pairs_R=slots["R"].to(DEVICE), theta_R=theta_R,
        scale=scale, magnitude=magnitude, weight_layout=setup["layout"], rotation_param=setup["rotation_param"],
        stats_in=stats_in, stats_out=stats_out, impl=impl,
    )  # fmt: skip
    grad = setup["grad"].to(DEVICE, out.dtype)
    out.backward(grad)
    return out.detach(), {k: v.grad for k, v in leaves.items()}, (stats_in, stats_out)


def _dense_reference(inputs: dict, setup: dict) -> torch.Tensor:
    n, m = setup["n"], setup["m"]
    active_L, active_R = setup["active_L"], setup["active_R"]
    if setup["mode"] == "scale":
        s = inputs["scale"].double()
    elif setup["mode"] == "oer_softmax":
        s = oer_scale(setup["row_norms"], inputs["logits"], setup["temperature"], 1e-8)
    elif setup["mode"] == "ecd_tanh":
        s = ecd_scale(setup["row_norms"], inputs["logits"], 0.4, setup["temperature"], 1e-8)
    else:
        s = None
    dense = adapted_weight(
        setup["weight"],
        dense_core("diag", (inputs["diag"],), n, m),
        dense_core("diag", (setup["offset"],), n, m) if setup["offset"] is not None else None,
        dense_rotation(setup["pairs_L"][:active_L], inputs["theta_L"][:active_L], n, setup["rotation_param"]),
        dense_rotation(setup["pairs_R"][:active_R], inputs["theta_R"][:active_R], m, setup["rotation_param"]),
        s,
    )
    out = inputs["x"].double() @ dense.T
    return out + inputs["bias"].double() if "bias" in inputs else out


def _make(n: int, m: int, tokens: int, seed: int, data: st.DataObject) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    slots_L = data.draw(st.integers(0, n // 2), label="slots_L")
    slots_R = data.draw(st.integers(0, m // 2), label="slots_R")
    active_L = data.draw(st.integers(0, slots_L), label="active_L")
    active_R = data.draw(st.integers(0, slots_R), label="active_R")
    mode = data.draw(st.sampled_from(MODES), label="mode")
    row_norms = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    if n > 1:
        row_norms[data.draw(st.integers(0, n - 1), label="excluded_row")] = 0.0  # a row outside the energy
    setup = {
        "n": n,
        "m": m,
        "layout": data.draw(st.sampled_from(["linear", "conv1d"]), label="layout"),
        "rotation_param": data.draw(st.sampled_from(["cayley", "angle"]), label="rotation_param"),
        "mode": mode,
        "pairs_L": _slot_table(n, active_L, slots_L, gen),
        "pairs_R": _slot_table(m, active_R, slots_R, gen),
        "active_L": active_L,
        "active_R": active_R,
        "weight": rand(n, m) / m**0.5,
        "offset": rand(min(n, m)) if data.draw(st.booleans(), label="offset") else None,
        "row_norms": row_norms,
        "temperature": data.draw(st.sampled_from([0.5, 1.0, 2.0]), label="temperature"),
        "grad": rand(tokens, n),
    }
    inputs = {
        "x": rand(tokens, m),
        "theta_L": rand(slots_L),
        "theta_R": rand(slots_R),
        "diag": rand(min(n, m)),
    }
    if data.draw(st.booleans(), label="bias"):
        inputs["bias"] = rand(n)
    if mode == "scale":
        inputs["scale"] = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    elif mode != "none":
        inputs["logits"] = rand(n)
    return inputs, setup


@given(
    n=st.integers(1, 48),
    m=st.integers(1, 48),
    tokens=st.integers(1, 70),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_triton_diag_matches_float64_references(n: int, m: int, tokens: int, seed: int, data) -> None:
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
        assert rel_error(got, expected) < 1e-5 or float((got.double() - expected).abs().max()) < 1e-6, key
    assert rel_error(stats_in, ref_in) < 1e-5
    assert rel_error(stats_out, ref_out_stats) < 1e-5


@pytest.mark.parametrize("slots", [31, 33, 70])
def test_triton_diag_handles_slot_tables_longer_than_one_block(slots: int) -> None:
    """More slots than the kernels' slot block (32): the lookups loop over blocks."""
    n = m = 2 * slots + 3
    gen = torch.Generator().manual_seed(slots)
    x = torch.randn(40, m, generator=gen)
    weight = torch.randn(n, m, generator=gen) / m**0.5
    pairs_L = torch.randperm(n, generator=gen)[: 2 * slots].view(slots, 2)
    pairs_R = torch.randperm(m, generator=gen)[: 2 * slots].view(slots, 2)
    leaves = {"theta_L": torch.randn(slots, generator=gen), "theta_R": torch.randn(slots, generator=gen),
              "diag": torch.randn(n, generator=gen), "logits": torch.randn(n, generator=gen)}  # fmt: skip
    nu = weight.norm(dim=1)
    results = {}
    for impl in ("torch", "triton"):
        params = {k: v.to(DEVICE).clone().requires_grad_() for k, v in leaves.items()}
        magnitude = Magnitude("oer_softmax", params["logits"], nu.to(DEVICE), (nu**2).sum().to(DEVICE), 1.0)
        out = jora_linear(
            x.to(DEVICE), weight.to(DEVICE), core=CoreSpec("diag", n, m), core_params=(params["diag"],),
            pairs_L=pairs_L.to(DEVICE), theta_L=params["theta_L"], pairs_R=pairs_R.to(DEVICE),
            theta_R=params["theta_R"], magnitude=magnitude, impl=impl,
        )  # fmt: skip
        out.square().sum().backward()
        results[impl] = (out.detach(), {k: v.grad for k, v in params.items()})
    assert rel_error(results["triton"][0], results["torch"][0]) < 1e-5
    for key, expected in results["torch"][1].items():
        assert rel_error(results["triton"][1][key], expected) < 1e-5, key


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
