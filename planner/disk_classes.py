"""What a disk transfer carries decides which fitted model prices it (docs/profiling.md, "Disk size
classes"). Written once here and used by the probes (planner/profiling/shapes.py `disk_sizes`, one size
list per class), the fit (planner/profiling/measure.py: each class's samples fitted alone) and the
pricer (planner/costmodel/cost_model.py `transfer_s`, planner/stepcost.py).

One line over every size does not fit the drive: a layer's weights (tens of MB to GB, read once per
step) and a GPU batch's K,V or X piece (KB to hundreds of MB) sit at different points of the drive's
curve, and a fit over both trades one class's error for the other's. Each class:

- `KV_READ`: one layer's K,V (or X) piece of one GPU batch, a contiguous token-major region of the
  piece's file read past the page cache (runtime/tiers.py, TokenStore.disk_extent; page-aligned span).
- `WEIGHTS_READ`: one layer's weight record (runtime/tiers.py, WeightStore.disk_extent), streamed from
  disk once per step.
- `WRITE`: a decode step's write-back of one new token's K,V or X of one GPU batch (bytes to hundreds
  of KB, appended at an unaligned offset through planner/directio.py's DiskFile.write) and prefill's
  write of the prompt's K,V and X per layer and GPU batch (a K,V piece's size).

A profile without a class's own model (profiles older than these classes, datasheet profiles) prices
it with its `fallback_key`'s model, then with the profile's summary link `link`: older profiles
price weight reads exactly as before, with their single `link.disk_read`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiskClass:
    name: str  # what the step cost prices it under (stepcost.Pricer.xfer's link)
    link: str  # the profile's summary link (links.<link>) when no fitted model answers
    model_key: str  # its own fitted model under cost_models
    fallback_key: str | None  # the model that answers when the profile has no `model_key`
    carries: str

    def model_keys(self) -> tuple[str, ...]:
        """The fitted models that may price this class, in the order they are tried."""
        return (self.model_key,) if self.fallback_key is None else (self.model_key, self.fallback_key)


KV_READ = DiskClass("disk_read", "disk_read", "link.disk_read", None, "one layer's K,V or X piece of one GPU batch")
WEIGHTS_READ = DiskClass("disk_read_weights", "disk_read", "link.disk_read_weights", "link.disk_read",
                         "one layer's weights")
WRITE = DiskClass("disk_write", "disk_write", "link.disk_write", None,
                  "one new token's K,V or X of one GPU batch (decode), the prompt's (prefill)")
DISK_CLASSES: dict[str, DiskClass] = {c.name: c for c in (KV_READ, WEIGHTS_READ, WRITE)}
# every fitted model that describes the drive (a composed profile takes them from its storage part)
STORAGE_MODEL_KEYS = tuple(c.model_key for c in DISK_CLASSES.values())
