"""The query interface over a profile: GEMM, attention, element-wise and transfer times.

A measured profile answers from its fitted regressions (planner/costmodel/fitted.py, stored under
"cost_models" as "<family>.<processor>.<dtype>", "elementwise.<processor>" and "link.<name>") where it
has one for the query; everything else, and every datasheet profile, falls back to the roofline
(planner/costmodel/roofline.py) at the sustained rates of planner/costmodel/calibration.py, the
same constants for every GPU. The host CPU's attention runs at the host part's rate
(`host_attention_s`); only old profiles without one still read the profile's "efficiency" block.
"""

from __future__ import annotations

from typing import Any

from planner.costmodel import fitted, roofline
from planner.costmodel.calibration import CALIBRATED
from planner.disk_classes import DISK_CLASSES
from planner.errors import KvplanError
from planner.layer_costs import Gemm, attention_flops
from planner.models import DTYPE_BYTES, ModelConfig
from planner.profile import Profile

WHERE = ("device", "cpu")


def host_attention_s(flops: float, kv_bytes: float, attention_gb_per_s: float, cpu_peak_tflops: float) -> float:
    """CPU attention beside a GPU: decode attention reads every K,V byte once (shared/design.md §9), so
    its time is the K,V bytes over the rate the host's attention kernel sustains on them (measured,
    stated or assumed: profile `host.attention_gb_per_s`), unless the CPU's GEMM peak is slower still
    (a GQA model does g times the FLOPs per K,V byte). The q and output transfers it needs are link
    terms of the step (planner/search), not part of this time."""
    return max(kv_bytes / (attention_gb_per_s * 1e9), flops / (cpu_peak_tflops * 1e12))


class CostModel:
    """Predicts op and transfer times on one machine. `where` is "device" (the compute device:
    a GPU, or the CPU on a CPU-only machine) or "cpu" (the host CPU as a helper)."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self.rates = CALIBRATED
        self.efficiency = roofline.Efficiency.from_dict(profile.data.get("efficiency"))  # old profiles' CPU attention
        stored = profile.data.get("cost_models") or {}
        if not isinstance(stored, dict):
            raise KvplanError(f"profile {profile.name}: cost_models must be an object")
        for key, model in stored.items():
            fitted.validate_model(model, f"profile {profile.name} cost_models.{key}")
        self.fitted: dict[str, dict[str, Any]] = dict(stored)
        self._memo: dict[tuple, float] = {}  # fitted predictions by (model key, dims): the planner repeats shapes

    def _fitted_s(self, key: str, model: dict[str, Any], dims: tuple) -> float:
        memo_key = (key, dims)
        hit = self._memo.get(memo_key)
        if hit is None:
            if len(self._memo) > 500_000:
                self._memo.clear()
            hit = self._memo[memo_key] = fitted.predict(model, dims)
        return hit

    # -- rates of the processor at `where` --------------------------------------------------
    def _peak_tflops(self, dtype: str, where: str) -> float:
        table = self.profile.device_peak_tflops if where == "device" else self.profile.host_peak_tflops
        if dtype in table:
            return table[dtype]
        return table.get("float32", min(table.values()))

    def _memory_gb_per_s(self, where: str) -> float:
        if where == "device":
            return self.profile.device_memory_gb_per_s
        return self.profile.host_memory_gb_per_s

    def _check(self, where: str) -> None:
        if where not in WHERE:
            raise KvplanError(f"unknown processor '{where}' (known: {', '.join(WHERE)})")

    def _key(self, family: str, where: str, dtype: str | None) -> str:
        proc = "device" if where == "device" or self.profile.host_is_device else "cpu"
        return f"{family}.{proc}" if dtype is None else f"{family}.{proc}.{dtype}"

    def fitted_model(self, family: str, where: str, dtype: str | None = None) -> dict[str, Any] | None:
        """The stored regression for a query, if the profile has one. On a CPU-only machine the
        CPU helper is the device, so "cpu" queries use the device's models."""
        return self.fitted.get(self._key(family, where, dtype))

    def fitted_model_key(self, family: str, where: str, dtype: str | None = None) -> str | None:
        """The cost_models key of `fitted_model`'s answer, or None when the profile has no such model."""
        key = self._key(family, where, dtype)
        return key if key in self.fitted else None

    def source(self, family: str, where: str = "device", dtype: str | None = None) -> str:
        """Which model answers a query: "fitted:<kind>" or "roofline" (shown by `kvplan predict`)."""
        if family == "link":
            key = self.link_model_key(where)
            model = self.fitted.get(key) if key else None
        else:
            model = self.fitted_model(family, where, dtype)
        return f"fitted:{fitted.label(model)}" if model else "roofline"

    # -- queries -----------------------------------------------------------------------------
    def gemm_s(self, gemm: Gemm, dtype: str, where: str = "device") -> float:
        """A projection with its weights streamed from memory (cold: the runtime reads a layer's
        weights once per decode step, docs/cost-models.md)."""
        self._check(where)
        if gemm.m <= 0:
            return 0.0
        model = self.fitted_model("gemm", where, dtype)
        if model is not None:
            return self._fitted_s(self._key("gemm", where, dtype), model, (gemm.m, gemm.n, gemm.k))
        return roofline.gemm_time_s(
            gemm.m, gemm.n, gemm.k, DTYPE_BYTES[dtype], self._peak_tflops(dtype, where),
            self._memory_gb_per_s(where), self.rates,
        )

    def attention_s(
        self, model: ModelConfig, batch: int, query_tokens: int, context: int, dtype: str, where: str = "device"
    ) -> float:
        """Attention of `query_tokens` new tokens per sequence over `context` cached ones."""
        self._check(where)
        if batch <= 0 or query_tokens <= 0:
            return 0.0
        flops = attention_flops(model, batch, query_tokens, context, causal=True)
        keys = context + query_tokens
        kv_bytes = batch * keys * 2 * model.kv_dim * DTYPE_BYTES[dtype]
        reg = self.fitted_model("attention", where, dtype)
        if reg is None and where == "cpu" and not self.profile.host_is_device:
            rate = self.profile.host.attention_gb_per_s.get(dtype)
            if rate is not None:
                return host_attention_s(flops, kv_bytes, rate, self._peak_tflops(dtype, "cpu"))
        if reg is not None:
            dims = (batch, keys, model.num_heads, model.num_kv_heads, model.head_dim)
            if query_tokens == 1:
                return self._fitted_s(self._key("attention", where, dtype), reg, dims)
            # several new tokens: the fitted line on this query's own FLOPs and bytes
            return fitted.predict_from_terms(reg, (flops / 1e9, kv_bytes / 1e9), dims)
        if where == "device":
            return float(roofline.device_attention_time_s(
                flops, kv_bytes, query_tokens, self._peak_tflops(dtype, where), self._memory_gb_per_s(where),
                self.rates, work_units=batch * model.num_kv_heads, sm_count=self.profile.device.sm_count,
            ))
        return roofline.attention_time_s(
            flops, kv_bytes, self._peak_tflops(dtype, where), self._memory_gb_per_s(where), self.efficiency
        )

    def cpu_attention_source(self, dtype: str) -> str:
        """Which number answers CPU attention on the host beside a GPU: the host's fitted model, its
        measured/stated/assumed attention rate, or (old profiles without one) the DRAM roofline."""
        model = self.fitted_model("attention", "cpu", dtype)
        if model is not None:
            return f"fitted:{fitted.label(model)}"
        host = self.profile.host
        if dtype in host.attention_gb_per_s:
            return f"host rate ({host.provenance_of('attention_gb_per_s')})"
        return "roofline"

    def elementwise_s(self, nbytes: float, where: str = "device") -> float:
        self._check(where)
        if nbytes <= 0:
            return 0.0
        model = self.fitted_model("elementwise", where)
        if model is not None:
            return self._fitted_s(self._key("elementwise", where, None), model, (float(nbytes),))
        return roofline.elementwise_time_s(nbytes, self._memory_gb_per_s(where), self.rates)

    def link_model_key(self, link: str) -> str | None:
        """The fitted model that prices `link`, or None (the profile's summary link then does): a disk
        class (planner/disk_classes.py) tries its own model, then its fallback (older profiles have one
        `link.disk_read` for every read); any other link its `link.<name>` model."""
        cls = DISK_CLASSES.get(link)
        keys = cls.model_keys() if cls is not None else (f"link.{link}",)
        return next((k for k in keys if k in self.fitted), None)

    def transfer_s(self, link: str, nbytes: float) -> float:
        """Seconds for one transfer of `nbytes` over `link`: a profile link ("h2d", "disk_write", ...)
        or a disk class ("disk_read_weights": a layer's weights, priced by the drive's read link)."""
        cls = DISK_CLASSES.get(link)
        summary = cls.link if cls is not None else link
        if summary not in self.profile.links:
            raise KvplanError(f"profile {self.profile.name} has no link '{link}'")
        if nbytes <= 0:
            return 0.0
        key = self.link_model_key(link)
        if key is not None:
            return self._fitted_s(key, self.fitted[key], (float(nbytes),))
        return self.profile.links[summary].time_s(nbytes)
