"""The planner prices the projection GEMMs the runtime runs: a gated MLP's gate and up are two GEMMs of
(rows, i, h) (runtime/model.py `finish_layer`), not one of (rows, 2i, h); a plain MLP's fc1 is one."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.costmodel import CostModel
from planner.costmodel.layer_time import layer_op_times_s
from planner.layer_costs import Gemm, layer_projections, op_flops
from planner.models import CATALOG, load_model
from planner.profile import load_profile
from planner.profiling.modes import get_mode
from planner.profiling.shapes import gemm_shapes
from runtime.check import CHECK_OPERAND_MAX_BYTES, check_gemm
from runtime.model import layer_weight_shapes

DOCS = Path(__file__).resolve().parents[1] / "docs"
MEASURED = (DOCS / "profile_quick_idle.json", DOCS / "validation_profile_cpu_1thread.json")


def runtime_matrices(model) -> dict[str, tuple[int, int]]:
    """The 2-D weights of one runtime layer: each is one F.linear, i.e. one GEMM of (rows, n, k)."""
    return {name: shape for name, shape in layer_weight_shapes(model).items() if len(shape) == 2}


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_projections_are_the_runtime_layers_matrices(name):
    model = CATALOG[name]
    projections = layer_projections(model, 3)
    assert {p.weight: (p.gemm.n, p.gemm.k) for p in projections} == runtime_matrices(model)
    assert len({p.weight for p in projections}) == len(projections)
    assert all(p.gemm.m == 3 for p in projections)


def test_gated_and_plain_mlp_by_hand():
    llama, opt = load_model("tinyllama-1.1b"), load_model("opt-1.3b")
    up = [p.gemm for p in layer_projections(llama, 8) if p.op == "mlp_up"]
    assert up == [Gemm(8, 5632, 2048), Gemm(8, 5632, 2048)]
    assert [p.gemm for p in layer_projections(opt, 8) if p.op == "mlp_up"] == [Gemm(8, 8192, 2048)]
    # the FLOPs are the fused GEMM's, 2 * rows * 2i * h, whichever way it is cut
    assert op_flops(llama, 8, 1, 0)["mlp_up"] == 2 * 8 * 2 * 5632 * 2048


@pytest.mark.parametrize("profile", ["a100-40g-pcie", *MEASURED], ids=lambda p: Path(str(p)).stem)
def test_mlp_up_time_is_the_runtimes_gemms(profile):
    """Roofline (datasheet) and fitted (measured, probed at the old fused shape) alike: a gated
    model's mlp_up costs two (rows, i, h) GEMMs, an OPT model's one (rows, i, h) GEMM."""
    p = load_profile(None, profile) if isinstance(profile, str) else load_profile(profile)
    cost = CostModel(p)
    dtype = "float32" if p.device_type == "cpu" else "float16"
    for name, count in (("tinyllama-1.1b", 2), ("llama-2-7b", 2), ("qwen2.5-7b", 2), ("opt-1.3b", 1)):
        model = load_model(name)
        h, i = model.hidden_size, model.intermediate_size
        for rows in (1, 8, 64):
            one = cost.gemm_s(Gemm(rows, i, h), dtype)
            got = layer_op_times_s(cost, model, rows, 1, 100, dtype)["mlp_up"]
            assert got == pytest.approx(count * one, rel=1e-12)
            if count == 2:  # the fused shape is priced differently, so the test tells them apart
                assert got != pytest.approx(cost.gemm_s(Gemm(rows, 2 * i, h), dtype), rel=1e-6)


@pytest.mark.parametrize("mode_name", ["smoke", "quick", "full"])
def test_probes_time_the_runtimes_shapes(mode_name):
    mode = get_mode(mode_name)
    shapes = set(gemm_shapes(mode))
    gated = [CATALOG[n] for n in mode.gemm_models if CATALOG[n].gated_mlp]
    assert gated
    for model in gated:
        h, i = model.hidden_size, model.intermediate_size
        fits = i * h * 4 <= mode.gemm_max_weight_bytes
        for m in mode.gemm_tokens:
            assert ((m, i, h) in shapes) == fits, (model.name, m)
            assert (m, 2 * i, h) not in shapes, (model.name, m)


def test_machine_check_times_a_gemm_the_runtime_runs():
    # tinyllama in fp16: the fused (8, 11264, 2048) would fit the check's 64 MiB; the runtime never runs it
    assert check_gemm(load_model("tinyllama-1.1b"), 8, "float16") == Gemm(8, 5632, 2048)
    for model in CATALOG.values():
        for dtype, elem in (("float16", 2), ("float32", 4)):
            g = check_gemm(model, 8, dtype)
            if any(n * k * elem <= CHECK_OPERAND_MAX_BYTES for n, k in runtime_matrices(model).values()):
                assert (g.n, g.k) in runtime_matrices(model).values(), (model.name, dtype, g)
