"""planner/stepcost.py: the MILP's linear pricing and the evaluator's exact pricing of the same step.

- Where the linearisation is exact (no link latency, whole tokens, weights resident, one GPU batch,
  every piece wholly before or wholly after the average context) the surrogate equals the evaluator
  term by term.
- Elsewhere (hypothesis, random settings) the link terms differ by no more than the layout
  approximation allows: each piece's present tokens by at most seq - context + 1, its new tokens by 1.
- Every term against a value computed by hand from bytes, datasheet rates and the cost model's
  primitive queries (not through planner/stepcost.py), so that dropping or mis-signing a term fails.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from planner.costmodel.layer_time import recompute_kv_s
from planner.layer_costs import kv_bytes_per_token, layer_weight_bytes, x_bytes_per_token
from planner.models import load_model
from planner.plan import Decisions
from planner.prediction import cost_model_for, evaluate, exact_amounts, setting_for
from planner.profile import DATASHEET_DIR, profile_from_dict
from planner.search.formulation import coefficients
from planner.stepcost import Combo, ExactPricer, decode_terms, linear_terms, prefill_terms

MODEL = dataclasses.replace(load_model("opt-1.3b"), name="opt-1.3b-8l", num_layers=8)
LINKS = ("h2d", "d2h", "disk_read", "disk_write")


def _profile(latency: bool) -> object:
    data = copy.deepcopy(json.loads((DATASHEET_DIR / "a100-40g-pcie.json").read_text()))
    data["name"] = "a100-no-latency" if not latency else "a100-test"
    if not latency:
        for link in data["links"].values():
            link["latency_s"] = 0.0
    return profile_from_dict(data)


NO_LATENCY = _profile(latency=False)
A100 = _profile(latency=True)


def _frac(tier: str) -> dict[str, float]:
    return {t: 1.0 if t == tier else 0.0 for t in ("device", "host", "disk")}


def _decisions(batch: int, nb: int, split: int, kv: str | dict, x: str | dict, where: str = "device",
               weights: dict | None = None, activations: str = "device") -> Decisions:
    kv_p = _frac(kv) if isinstance(kv, str) else kv
    x_p = _frac(x) if isinstance(x, str) else x
    return Decisions(strategy="mixed", dtype="float16", batch=batch, gpu_batch=batch // nb, num_gpu_batches=nb,
                     split_tokens=split, kv_placement=kv_p, x_placement=x_p,
                     weight_placement=weights or _frac("device"), attention_where=where,
                     activation_placement=activations)


def _both(inputs: dict, d: Decisions, profile) -> tuple[dict, dict]:
    """Each resource's busy seconds: (exact pricing, linear pricing at the same decisions)."""
    st = setting_for(MODEL, inputs, d.dtype, profile)
    cost = cost_model_for(profile)
    combo = Combo(d.batch, d.gpu_batch, d.num_gpu_batches, d.attention_where, d.activation_placement)
    a = exact_amounts(st, d)
    pr = ExactPricer(cost, MODEL, d.dtype)
    t, p = decode_terms(st, combo, cost, a, pr), prefill_terms(st, combo, cost, a, pr)
    exact = {"compute": t.compute, "cpu": t.cpu, "h2d": t.h2d, "d2h": t.d2h, "disk": t.disk, "chain": t.chain,
             "pf_compute": p.compute, "pf_h2d": p.h2d, "pf_d2h": p.d2h, "pf_disk": p.disk}
    values = {k: v / st.seq for k, v in a.stored.items()}
    values.update({"nd": a.layers["device"], "nh": a.layers["host"], "nk": a.layers["disk"]})
    dec, pf = linear_terms(st, combo, cost)
    linear = {k: f.at(values) for k, f in dec.items()}
    linear.update({"pf_" + k: f.at(values) for k, f in pf.items()})
    return exact, linear


# prompt 480 + gen 33: the average context 496 is a whole token, every K,V piece lies before it or is empty
INPUTS = {"seq": 513, "prompt": 480, "gen": 33, "objective": "throughput"}


@pytest.mark.parametrize("name,decisions", [
    ("transfer, K,V in host memory", _decisions(16, 1, 0, "host", "device")),
    ("transfer, K,V on disk", _decisions(16, 1, 0, "disk", "device")),
    ("cpu attention, K,V in host memory", _decisions(16, 1, 0, "host", "device", where="cpu")),
    ("resident", _decisions(16, 1, 0, "device", "device")),
    ("transfer, activations on the host", _decisions(16, 1, 0, "host", "device", activations="host")),
    ("cpu attention, activations on the host", _decisions(16, 1, 0, "host", "device", where="cpu",
                                                          activations="host")),
])
def test_surrogate_equals_the_evaluator_term_by_term_where_linear_is_exact(name, decisions):
    exact, linear = _both(INPUTS, decisions, NO_LATENCY)
    assert exact.keys() == linear.keys()
    for term in exact:
        assert linear[term] == pytest.approx(exact[term], rel=1e-9, abs=1e-15), term
    pred = evaluate(MODEL, INPUTS, decisions, NO_LATENCY)
    assert pred["surrogate_decode_step_s"] == pytest.approx(pred["decode_step_s"], rel=1e-8)
    assert pred["surrogate_total_s"] == pytest.approx(pred["total_s"], rel=1e-8)


def test_recompute_terms_agree_when_the_split_is_the_average_context():
    """X[0:l] with l = the average context: both price the recompute GEMM at its real shape and the X
    transfer in full; only the one K,V token past the context and the new tokens' tier differ."""
    ctx = 496
    d = _decisions(16, 1, ctx, "host", "host")
    exact, linear = _both(INPUTS, d, NO_LATENCY)
    for term in ("compute", "chain", "cpu", "pf_compute", "pf_h2d"):
        assert linear[term] == pytest.approx(exact[term], rel=1e-9, abs=1e-15), term
    assert exact["chain"] > 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_log=hs.integers(0, 5), nb_log=hs.integers(0, 3), prompt=hs.integers(16, 900),
       gen=hs.integers(1, 300), split_share=hs.floats(0, 1), kv_cut=hs.tuples(hs.floats(0, 1), hs.floats(0, 1)),
       x_cut=hs.tuples(hs.floats(0, 1), hs.floats(0, 1)), cpu=hs.booleans())
def test_linear_link_terms_stay_within_the_layout_bound(batch_log, nb_log, prompt, gen, split_share, kv_cut,
                                                        x_cut, cpu):
    batch = 1 << batch_log
    nb = min(1 << nb_log, batch)
    seq = prompt + gen
    split = 0 if cpu else round(split_share * seq)

    def cut(pair: tuple[float, float]) -> dict[str, float]:
        lo, hi = sorted(pair)
        return {"device": 0.0 if cpu else lo, "host": hi - (0.0 if cpu else lo), "disk": 1 - hi}

    d = _decisions(batch, nb, split, cut(kv_cut), cut(x_cut), where="cpu" if cpu else "device")
    inputs = {"seq": seq, "prompt": prompt, "gen": gen, "objective": "throughput"}
    exact, linear = _both(inputs, d, NO_LATENCY)
    st = setting_for(MODEL, inputs, "float16", NO_LATENCY)
    L, per_tok = MODEL.num_layers, max(kv_bytes_per_token(MODEL), x_bytes_per_token(MODEL))
    rate = {k: NO_LATENCY.links[k].gb_per_s * 1e9 for k in LINKS}
    # per piece: present tokens off by <= seq - context + 1, new tokens off by <= 1; 3 pieces cross a link
    read_tok = 3 * (seq - st.context + 1) + 3
    slack = {"h2d": L * batch * per_tok * read_tok / rate["h2d"],
             "d2h": L * batch * per_tok * 3 / rate["d2h"],
             "disk": L * batch * per_tok * (read_tok / rate["disk_read"] + 2 / rate["disk_write"])}
    for term, bound in slack.items():
        assert abs(linear[term] - exact[term]) <= bound * (1 + 1e-9) + 1e-12, term
    assert linear["cpu"] == pytest.approx(exact["cpu"], rel=1e-12)
    if split == 0:
        assert linear["compute"] == pytest.approx(exact["compute"], rel=1e-12)


# ---- every term by hand: bytes over datasheet rates plus a latency per transfer, op times from the
# cost model's primitive queries (planner/costmodel), never through planner/stepcost.py ----------------

def _xfer(profile, link: str, nbytes: float) -> float:
    lk = profile.links[link]
    return lk.latency_s + nbytes / (lk.gb_per_s * 1e9) if nbytes > 0 else 0.0


def _ops(batch: int, query: int, context: int) -> tuple[float, float]:
    from planner.costmodel.layer_time import layer_op_times_s

    ops = layer_op_times_s(cost_model_for(A100), MODEL, batch, query, context, "float16")
    return sum(v for k, v in ops.items() if k != "attention"), ops["attention"]


def test_every_decode_and_prefill_term_of_a_host_and_disk_kv_plan_by_hand():
    """K,V half in host memory (positions [0, 256)), half on disk ([256, 513)); 2 GPU batches of 8.
    At the average context 496 the host piece is all present, the disk piece holds 240 of its tokens;
    every new token (positions 480..512) and 224 of the prompt's go to disk."""
    b, nb, gb, L = 16, 2, 8, MODEL.num_layers
    d = _decisions(b, nb, 0, {"device": 0.0, "host": 0.5, "disk": 0.5}, "device")
    pred = evaluate(MODEL, INPUTS, d, A100)
    kvpt = kv_bytes_per_token(MODEL)
    proj, att = _ops(b, 1, 496)
    _, att_gb = _ops(gb, 1, 496)
    want = {
        "compute": L * (proj + nb * att_gb),
        "cpu": 0.0,
        "h2d": L * nb * _xfer(A100, "h2d", gb * kvpt * (256 + 240)),
        "d2h": L * nb * _xfer(A100, "d2h", gb * kvpt * 1),
        "disk_read": L * nb * _xfer(A100, "disk_read", gb * kvpt * 240),
        "disk_write": L * nb * _xfer(A100, "disk_write", gb * kvpt * 1),
    }
    for r, v in want.items():
        assert pred["per_layer_busy_s"][r] * L == pytest.approx(v, rel=1e-8, abs=1e-15), r
    step = max(want["compute"], want["h2d"], want["d2h"], want["disk_read"] + want["disk_write"])
    assert pred["decode_step_s"] == pytest.approx(step, rel=1e-8)
    assert pred["link_bytes_per_step"] == {"h2d": L * b * kvpt * 496, "d2h": L * b * kvpt,
                                           "disk_read": L * b * kvpt * 240, "disk_write": L * b * kvpt}
    pf_proj, pf_att = _ops(gb, 480, 0)
    prefill = max(L * nb * (pf_proj + pf_att), L * nb * _xfer(A100, "d2h", gb * kvpt * 480),
                  L * nb * _xfer(A100, "disk_write", gb * kvpt * 224))
    assert pred["prefill_s"] == pytest.approx(prefill, rel=1e-8)
    assert pred["memory_bytes"]["host"] == L * b * kvpt * 256
    assert pred["memory_bytes"]["disk"] == L * b * kvpt * 257


def test_cpu_attention_terms_by_hand():
    """CPU attention: the host CPU reads the whole batch's K,V; only q goes down and the attention
    output up per GPU batch, plus the new token's K,V down (design.md §2.4)."""
    b, nb, gb, L = 16, 2, 8, MODEL.num_layers
    d = _decisions(b, nb, 0, "host", "device", where="cpu")
    pred = evaluate(MODEL, INPUTS, d, A100)
    cost = cost_model_for(A100)
    q_bytes = gb * MODEL.q_dim * 2
    proj, _ = _ops(b, 1, 496)
    want = {"compute": L * proj, "cpu": L * cost.attention_s(MODEL, b, 1, 496, "float16", where="cpu"),
            "h2d": L * nb * _xfer(A100, "h2d", q_bytes),
            "d2h": L * nb * _xfer(A100, "d2h", q_bytes + gb * kv_bytes_per_token(MODEL)),
            "disk_read": 0.0, "disk_write": 0.0}
    for r, v in want.items():
        assert pred["per_layer_busy_s"][r] * L == pytest.approx(v, rel=1e-8, abs=1e-15), r
    assert want["cpu"] > 0


def test_recompute_and_chain_terms_by_hand():
    """X[0:200] in host memory, K,V [200, 513) in host memory, one GPU batch: compute carries the
    recompute GEMM of 200 tokens, the chain is X's transfer then that GEMM (KVPR's T(l))."""
    b, L = 16, MODEL.num_layers
    d = _decisions(b, 1, 200, "host", "host")
    pred = evaluate(MODEL, INPUTS, d, A100)
    rc = recompute_kv_s(cost_model_for(A100), MODEL, b, 200, "float16")
    proj, att = _ops(b, 1, 496)
    assert rc > 0
    assert pred["per_layer_busy_s"]["compute"] * L == pytest.approx(L * (proj + att + rc), rel=1e-8)
    x_in = _xfer(A100, "h2d", b * x_bytes_per_token(MODEL) * 200)
    assert pred["timeline"]["chain_s"] * L == pytest.approx(L * (x_in + rc), rel=1e-8)
    kv_in = _xfer(A100, "h2d", b * kv_bytes_per_token(MODEL) * (496 - 200))
    assert pred["per_layer_busy_s"]["h2d"] * L == pytest.approx(L * (kv_in + x_in), rel=1e-8)


def test_milp_coefficients_by_hand():
    """The MILP's linear forms: per-token rates sampled at one layer's K,V for one GPU batch, the
    recompute at the full-context shape, CPU attention as a constant (docs/planner.md, "Time")."""
    b, nb, gb, L = 16, 2, 8, MODEL.num_layers
    st = setting_for(MODEL, INPUTS, "float16", A100)
    cost = cost_model_for(A100)
    kvpt, xpt, W = kv_bytes_per_token(MODEL), x_bytes_per_token(MODEL), layer_weight_bytes(MODEL)
    seq, avg = 513, 496.0
    piece = max(1 << 20, gb * 496 * kvpt)
    rate = {k: piece / _xfer(A100, k, piece) for k in LINKS}
    dev = coefficients(st, Combo(b, gb, nb, "device"), cost, A100)
    rc = L * nb * seq * recompute_kv_s(cost, MODEL, gb, 496, "float16") / 496
    compute = dict(dev.decode["compute"].coefs)
    for var in ("xd", "xh", "xk"):
        assert compute[var] == pytest.approx(rc, rel=1e-9)
    proj, _ = _ops(b, 1, 496)
    _, att_gb = _ops(gb, 1, 496)
    assert dev.decode["compute"].const == pytest.approx(L * (proj + nb * att_gb), rel=1e-9)
    h2d = dict(dev.decode["h2d"].coefs)
    assert h2d["kh"] == pytest.approx(L * b * kvpt * avg / rate["h2d"], rel=1e-9)
    assert h2d["xh"] == pytest.approx(L * b * xpt * seq / rate["h2d"], rel=1e-9)
    assert h2d["nh"] == pytest.approx(W / rate["h2d"], rel=1e-9)
    disk = dict(dev.decode["disk"].coefs)
    assert disk["kk"] == pytest.approx(L * b * kvpt * (avg / rate["disk_read"] + 1 / rate["disk_write"]), rel=1e-9)
    chain = dict(dev.decode["chain"].coefs)
    assert chain["xh"] == pytest.approx(rc + L * gb * xpt * seq / rate["h2d"], rel=1e-9)
    assert chain["xk"] == pytest.approx(rc + L * gb * xpt * seq * (1 / rate["h2d"] + 1 / rate["disk_read"]),
                                        rel=1e-9)
    cpu = coefficients(st, Combo(b, gb, nb, "cpu"), cost, A100)
    assert cpu.decode["cpu"].const == pytest.approx(L * cost.attention_s(MODEL, b, 1, 496, "float16", where="cpu"),
                                                    rel=1e-9)
    assert cpu.decode["cpu"].const > 0 and not cpu.decode["chain"].coefs
    pf = dict(dev.prefill["disk"].coefs)
    assert pf["kk"] == pytest.approx(L * b * 480 * kvpt / rate["disk_write"], rel=1e-9)
    # a layer's weights from disk at their own size (planner/disk_classes.py): one read of W bytes
    assert pf["nk"] == pytest.approx(_xfer(A100, "disk_read", W), rel=1e-9)
    assert disk["nk"] == pytest.approx(_xfer(A100, "disk_read", W), rel=1e-9)


def test_streamed_weights_are_paid_layer_by_layer_by_hand():
    """Half the layers' weights on disk, K,V resident: the device layers are compute-bound, the disk
    layers read their weights (from disk, then over h2d) one layer ahead, so the step is the sum over
    layers of max(compute, that layer's reads) — more than the max of the totals (FlexGen's cost model)."""
    b, L = 16, MODEL.num_layers
    d = _decisions(b, 1, 0, "device", "device", weights={"device": 0.5, "host": 0.0, "disk": 0.5})
    pred = evaluate(MODEL, INPUTS, d, A100)
    proj, att = _ops(b, 1, 496)
    own = proj + att
    W = layer_weight_bytes(MODEL)
    disk_layer = max(own, _xfer(A100, "disk_read", W), _xfer(A100, "h2d", W))
    assert pred["decode_step_s"] == pytest.approx(L // 2 * (own + disk_layer), rel=1e-8)
    totals = max(L * own, L // 2 * _xfer(A100, "disk_read", W), L // 2 * _xfer(A100, "h2d", W))
    assert pred["decode_step_s"] > totals * (1 + 1e-4)
    assert pred["timeline"]["bound_by"] == "pipeline"


def test_weights_streamed_from_host_memory_are_paid_layer_by_layer_by_hand():
    """Half the layers' weights and all K,V in host memory: every layer copies its K,V over h2d, the
    host layers a whole layer's weights too, so the step is L/2 * max(compute, K,V in) + L/2 *
    max(compute, K,V in + weights in)."""
    b, L = 16, MODEL.num_layers
    d = _decisions(b, 1, 0, "host", "device", weights={"device": 0.5, "host": 0.5, "disk": 0.0})
    pred = evaluate(MODEL, INPUTS, d, A100)
    proj, att = _ops(b, 1, 496)
    own = proj + att
    kv_in = _xfer(A100, "h2d", b * kv_bytes_per_token(MODEL) * 496)
    host_layer = max(own, kv_in + _xfer(A100, "h2d", layer_weight_bytes(MODEL)))
    assert host_layer > max(own, kv_in)
    assert pred["decode_step_s"] == pytest.approx(L // 2 * (max(own, kv_in) + host_layer), rel=1e-8)
    assert pred["timeline"]["bound_by"] == "pipeline"


def test_auto_compares_plans_by_the_objective():
    """refine.better: throughput compares tokens per second (prefill included), latency the decode
    step; a plan with the faster step but the slower prefill wins only for latency."""
    from planner.search.refine import better

    fast_step = {"throughput_tokens_per_s": 90.0, "decode_step_s": 0.010}
    fast_total = {"throughput_tokens_per_s": 100.0, "decode_step_s": 0.012}
    assert better(fast_total, fast_step, "throughput") and not better(fast_step, fast_total, "throughput")
    assert better(fast_step, fast_total, "latency") and not better(fast_total, fast_step, "latency")
    assert not better(fast_total, dict(fast_total), "throughput")  # equal is not better
