"""The query interface over a profile: GEMM, attention, element-wise and transfer times."""

from __future__ import annotations

from planner.costmodel import roofline
from planner.errors import KvplanError
from planner.layer_costs import Gemm, attention_flops
from planner.models import DTYPE_BYTES, ModelConfig
from planner.profile import Profile

WHERE = ("device", "cpu")


class CostModel:
    """Predicts op and transfer times on one machine. `where` is "device" (the compute device:
    a GPU, or the CPU on a CPU-only machine) or "cpu" (the host CPU as a helper)."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self.efficiency = roofline.Efficiency.from_dict(profile.data.get("efficiency"))

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

    # -- queries -----------------------------------------------------------------------------
    def gemm_s(self, gemm: Gemm, dtype: str, where: str = "device") -> float:
        self._check(where)
        if gemm.m <= 0:
            return 0.0
        return roofline.gemm_time_s(
            gemm.m, gemm.n, gemm.k, DTYPE_BYTES[dtype], self._peak_tflops(dtype, where),
            self._memory_gb_per_s(where), self.efficiency,
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
        return roofline.attention_time_s(
            flops, kv_bytes, self._peak_tflops(dtype, where), self._memory_gb_per_s(where), self.efficiency
        )

    def elementwise_s(self, nbytes: float, where: str = "device") -> float:
        self._check(where)
        if nbytes <= 0:
            return 0.0
        return roofline.elementwise_time_s(nbytes, self._memory_gb_per_s(where), self.efficiency)

    def transfer_s(self, link: str, nbytes: float) -> float:
        if link not in self.profile.links:
            raise KvplanError(f"profile {self.profile.name} has no link '{link}'")
        return self.profile.links[link].time_s(nbytes)
