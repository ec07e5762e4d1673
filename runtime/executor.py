"""The decode loop: runs a plan's decisions for real on this machine.

A decode step puts the new token at position `pos`; the split `split` (= decisions.split_tokens, fixed
for the run) says which positions are stored as X (recomputed into K,V each step) and which as K,V.
Per step, each run layer goes

    prefetch(next layer)  ->  compute(layer)  ->  write back(layer)

- prefetch (`_prefetch`, a `LayerReads`): the layer's weights (resident, or streamed from host /
  disk), then for each GPU batch its X[0:min(split, pos)] and where its K,V[split:pos] come from (a
  `KvSource`: `InPlace` for resident K,V, else `Gathered` into a buffer that the link reads fill),
  all queued on the links' workers (runtime/links.py) so they run while the layer before computes;
- compute (`_compute_layer`): the new token of all rows projected at once (norm -> X_new -> q, k, v:
  the layer's weights are read once per step however many GPU batches there are), then per GPU batch
  K,V[0:split] recomputed from X as soon as X is in (RoPE at positions 0..), overlapping the K,V
  stream, and attention over [recomputed | streamed | new token]; then the output projection and MLP;
- write back (`_write_back`): the new token's X if pos < split, else its K,V, to the tier that holds
  position pos. The split never moves, so split >= seq stores only X and split = 0 is plain K,V
  offloading (FlexGen).

The next layer's reads are queued before this layer computes (double buffering: two gather buffers
per GPU batch, alternating), except when they must see this layer's write-back (the same run layer
again: a one-layer model's next step). With `--layers K` the K stored layers are cycled through the
model's L run layers (`_stored`).

On a GPU the copies run on copy streams with events between them and the compute stream
(runtime/streams.py); on a CPU the workers are threads (file reads and torch ops release the GIL),
so disk transfer and compute really overlap.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from planner.errors import KvplanError
from planner.memory import cache_bytes
from planner.models import ModelConfig
from planner.placement import layer_counts, piece_spans
from planner.plan import Decisions
from runtime import model as M
from runtime.links import Links, Tag, landed
from runtime.measure import Recorder
from runtime.streams import Streams, streams_for
from runtime.tiers import GatherBuffer, Piece, Span, TokenStore, WeightStore, align_up, flat_layout

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Setup:
    model: ModelConfig
    decisions: Decisions
    seq: int  # positions the stores hold: [0, seq)
    layers: int  # decoder layers actually stored (--layers K)
    device: str = "cpu"  # "cpu" or "cuda"
    disk_dir: Path | None = None
    seed: int = 0
    weights_dir: Path | None = None
    # timing runs of deep models on small machines: run this many layers per decode step, cycling
    # through the `layers` stored ones (run layer v uses weights and caches of layer v % layers); the
    # I/O and compute of every layer are real, the logits are not those of any model
    virtual_layers: int | None = None

    def __post_init__(self) -> None:
        if self.decisions.activation_placement != "device":
            raise KvplanError(f"plan decisions.activation_placement {self.decisions.activation_placement!r} is not "
                              "run by kvplan's runtime, which keeps the hidden states on the device; solve again "
                              "with --activations device")


def memory_needed(s: Setup) -> dict[str, int]:
    """Bytes this run will allocate, per place ("device", "host", "disk"), before allocating any.
    On a CPU-only machine "device" and "host" are the same RAM (add them)."""
    m, d = s.model, s.decisions
    elem = M.TORCH_DTYPES[d.dtype].itemsize
    need = {"device": 0, "host": 0, "disk": 0}
    split = min(d.split_tokens, s.seq)
    stored = {p: b - a for p, (a, b) in piece_spans(split, d.x_placement, d.kv_placement, s.seq).items()}
    for tier, n in cache_bytes(m, d.dtype, stored, d.batch, s.layers).items():  # planner/memory.py
        need[tier] += n
    for width, lo, hi, frac in ((m.hidden_size, 0, split, d.x_placement),
                                (2 * m.kv_dim, d.split_tokens, s.seq, d.kv_placement)):
        # staging for disk reads: 2*ngb+1 slots of one GPU batch's piece
        if frac["disk"] > 0 and hi > lo:
            need["host"] += (2 * d.num_gpu_batches + 1) * align_up(int((hi - lo) * frac["disk"] + 2) * d.gpu_batch
                                                                    * width * elem)
    _, rec = flat_layout(M.layer_weight_shapes(m), elem)
    v_total = max(s.virtual_layers or s.layers, s.layers)
    counts = layer_counts(d.weight_placement, v_total)  # planner/placement.py: the first layers on the device
    # a K-layer run keeps each of its K layers on every tier the whole model's placement uses
    n_dev, n_host, n_disk = (min(counts[t], s.layers) for t in ("device", "host", "disk"))
    need["device"] += n_dev * rec
    need["host"] += n_host * rec + (3 * rec if n_disk else 0)
    need["disk"] += n_disk * align_up(rec)
    outer = sum(_numel(sh) for sh in M.outer_weight_shapes(m).values()) * elem
    need["device"] += outer
    # working set of one GPU batch at the full context: K,V gathered, scores, MLP activations
    work = d.gpu_batch * (s.seq * 2 * m.kv_dim * 3 + m.num_heads * s.seq * 2 + 4 * m.intermediate_size) * elem
    need["device"] += work + d.batch * m.vocab_size * 4
    # two K,V gather buffers per GPU batch (double buffering), rows = seq
    need["host" if d.attention_where == "cpu" else "device"] += 2 * d.num_gpu_batches * (
        (s.seq + 1) * d.gpu_batch * 2 * m.kv_dim * elem + 3 * 4096)
    # random weights are generated one layer at a time in float32
    need["host"] += sum(_numel(sh) for sh in M.layer_weight_shapes(m).values()) * 4 * 2
    return need


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def available_bytes(disk_dir: Path | None) -> dict[str, int]:
    """RAM that can be allocated now (MemAvailable) and free space where the disk tier goes."""
    ram = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    ram = int(line.split()[1]) * 1024
    except OSError:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    out = {"ram": ram, "disk": shutil.disk_usage(disk_dir).free if disk_dir else 0}
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        out["device"] = free
    return out


def check_fits(s: Setup) -> dict[str, int]:
    """Refuse (KvplanError with the numbers) a run that would not fit this machine."""
    need = memory_needed(s)
    have = available_bytes(s.disk_dir)
    gib = 2**30
    ram_need = need["host"] + (need["device"] if s.device == "cpu" else 0)
    if ram_need > 0.9 * have["ram"]:
        raise KvplanError(f"this run needs {ram_need / gib:.1f} GiB of RAM, {have['ram'] / gib:.1f} GiB available; "
                          "try fewer --layers or a plan with a smaller batch or context")
    if s.device == "cuda" and need["device"] > 0.95 * have.get("device", 0):
        raise KvplanError(f"this run needs {need['device'] / gib:.1f} GiB of GPU memory, "
                          f"{have.get('device', 0) / gib:.1f} GiB free; try fewer --layers")
    if need["disk"] > 0.95 * have["disk"]:
        raise KvplanError(f"this run needs {need['disk'] / gib:.1f} GiB on disk in {s.disk_dir}, "
                          f"{have['disk'] / gib:.1f} GiB free; try fewer --layers or another --disk-dir")
    return need


@dataclass(frozen=True)
class InPlace:
    """Resident K,V read where they are kept: nothing recomputed and one piece, next to attention,
    holding positions [0, pos] — the new token is appended to it first, then attention reads it."""
    span: Span


@dataclass(frozen=True)
class Gathered:
    """K,V assembled in a gather buffer, row p = position p: rows [0, split) recomputed from X, the
    pieces across a link read into their rows by the workers (`streamed`), the pieces next to
    attention (`local`) copied in by the compute thread, the new token last. `host_write`: a
    write-back into a local host region that must land before that region is read."""
    buf: GatherBuffer
    local: list[Piece]
    streamed: list[Future]
    host_write: Future | None = None


KvSource = InPlace | Gathered


@dataclass(frozen=True)
class BatchReads:
    """One GPU batch's reads for a layer: X[0:min(split, pos)] as token-major parts [tokens, gpu_batch,
    hidden] in position order (tensors read in place, or futures), and where its K,V come from."""
    x_parts: list[torch.Tensor | Future]
    kv: KvSource


@dataclass(frozen=True)
class LayerReads:
    """Everything run layer `layer` of step `step` reads; the step's new token sits at `pos`."""
    step: int
    layer: int
    pos: int
    weights: Weights | Future
    batches: list[BatchReads]

    @property
    def tag(self) -> Tag:
        return Tag(self.step, self.layer)


@dataclass(frozen=True)
class NewToken:
    """The new token's X ([batch, 1, hidden]) and K,V ([batch, 1, 2*kv_dim]) of a layer, both made
    once the compute event `made` is reached; `in_place[j]`: GPU batch j's K,V already appended."""
    x: torch.Tensor
    kv: torch.Tensor
    made: Any
    in_place: list[bool]


class Executor:
    """Holds the model's weights and caches on their tiers and runs prefill and decode steps.
    `streams` (default: CUDA streams on a GPU, none on a CPU) is where copies run; a test passes a
    fake to check the ordering (tests/test_runtime_streams.py)."""

    def __init__(self, s: Setup, streams: Streams | None = None):
        M.check_runnable(s.model, s.seq)  # before anything is allocated
        if s.layers < 1 or s.layers > s.model.num_layers:
            raise KvplanError(f"--layers must be in [1, {s.model.num_layers}], got {s.layers}")
        if s.device == "cuda" and not torch.cuda.is_available():
            raise KvplanError("the run asks for CUDA but torch sees no GPU")
        self.s, self.m, self.d = s, s.model, s.decisions
        self.dev = torch.device(s.device)
        self.io = streams or streams_for(self.dev)
        self.dtype = M.TORCH_DTYPES[self.d.dtype]
        self.arch = M.Arch.of(self.m)
        self.L = s.layers  # stored layers
        self.V = max(s.virtual_layers or s.layers, s.layers)  # run layers per step
        self.split = self.d.split_tokens
        self.gb, self.ngb = self.d.gpu_batch, self.d.num_gpu_batches
        # attention on the host CPU next to the K,V: only another memory when the device is separate
        self.att_dev = torch.device("cpu") if self.d.attention_where == "cpu" else self.dev
        self.att_space = "host" if self.d.attention_where == "cpu" and self.io.separate_host else "device"
        self.att_resource = "cpu" if self.d.attention_where == "cpu" else "compute"
        self._rec = Recorder(sync=partial(self.io.sync_stream, "compute") if self.io.separate_host else None)
        self.stores: list = []
        self.links = Links(self.io, self._rec)
        try:
            self._load(s)
        except BaseException:
            self.close()
            raise
        disk_t0 = next((sp.t0 for sp in self.kv.spans if sp.tier == "disk"), None)
        disk_direct = self.att_space == "host" or not self.io.separate_host
        self.bufs = {(slot, j): GatherBuffer(s.seq, self.gb, 2 * self.m.kv_dim, self.dtype, self.io, disk_direct,
                                             disk_t0)
                     for slot in range(2) for j in range(self.ngb)}

    def _load(self, s: Setup) -> None:
        ckpt = M.Checkpoint(s.weights_dir, self.m) if s.weights_dir else None
        outer = ckpt.outer(torch.float32) if ckpt else M.random_outer_weights(self.m, s.seed, torch.float32)
        self.outer = {k: v.to(self.dev, self.dtype) for k, v in outer.items()}
        layer_ws = [ckpt.layer(i, self.dtype) if ckpt else M.random_layer_weights(self.m, i, s.seed, self.dtype)
                    for i in range(self.L)]
        self.weights = WeightStore(M.layer_weight_shapes(self.m), layer_ws, self.d.weight_placement,
                                   self.dtype, self.io, s.disk_dir, virtual=self.V)
        self.stores.append(self.weights)
        del layer_ws
        self.x = TokenStore("x", self.m.hidden_size, 0, min(self.split, s.seq), self.d.x_placement, self.L,
                            self.ngb, self.gb, self.dtype, self.io, s.disk_dir)
        self.stores.append(self.x)
        self.kv = TokenStore("kv", 2 * self.m.kv_dim, self.split, s.seq, self.d.kv_placement, self.L,
                             self.ngb, self.gb, self.dtype, self.io, s.disk_dir)
        self.stores.append(self.kv)

    @property
    def rec(self) -> Recorder:
        return self._rec

    @rec.setter
    def rec(self, rec: Recorder) -> None:
        self._rec = rec
        self.links.rec = rec

    def reset_timings(self) -> None:
        """Forget the intervals recorded so far (e.g. untimed catch-up steps)."""
        self.rec = Recorder(sync=self._rec.sync)

    def close(self) -> None:
        if getattr(self, "links", None) is not None:
            self.links.close()
        for st in self.stores:
            st.close()
        self.stores = []

    def direct_io(self) -> bool:
        files = [st.disk for st in self.stores if st.disk is not None]
        return all(f.direct for f in files)

    def _stored(self, layer: int) -> int:
        """The stored layer whose weights and caches run layer `layer` uses."""
        return layer % self.L

    # -- prefill ---------------------------------------------------------------------------------
    def _weights_now(self, layer: int) -> Weights:
        """Run layer `layer`'s weights on the compute device, read synchronously (prefill)."""
        if self.weights.tier(layer) == "disk":
            w = self.weights.read_disk(layer)
        else:
            w = self.weights.in_memory(layer)
        if self.weights.streamed(layer) is not None:
            return {k: v.to(self.dev) for k, v in w.items()}
        return w

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the prompt through the stored layers (one GPU batch at a time, each layer's weights
        loaded once), store X[0:split] and K,V[split:P] on their tiers; returns the last position's
        logits [batch, vocab]."""
        a, prompt = self.arch, tokens.shape[1]
        tokens = tokens.to(self.dev)
        positions = torch.arange(prompt, device=self.dev)
        hs = [M.embed(a, self.outer, tokens[j * self.gb:(j + 1) * self.gb], positions) for j in range(self.ngb)]
        for layer in range(self.L):
            w = self._weights_now(layer)
            for j in range(self.ngb):
                x = M.input_norm(a, w, hs[j])
                q, kv = M.query_and_kv(a, w, x, positions)
                hs[j] = M.finish_layer(a, w, hs[j], M.attention(a, q, kv, causal=True))
                if min(self.split, prompt) > 0:
                    self.x.write(layer, j, 0, x[:, :min(self.split, prompt)])
                if prompt > self.split:
                    self.kv.write(layer, j, self.split, kv[:, self.split:])
        self.io.sync_stream("compute")  # the writes to pinned memory above were asynchronous
        return torch.cat([M.head(a, self.outer, h[:, -1:])[:, 0] for h in hs])

    def fill_random(self, context: int, seed: int = 0) -> None:
        """Put random X and K,V for positions [0, context) on their tiers, without computing them:
        for timing runs at long contexts, where a real prefill would take longer than the run."""
        gen = torch.Generator().manual_seed(seed)
        for layer in range(self.L):
            for j in range(self.ngb):
                if min(self.split, context) > 0:
                    x = torch.randn(self.gb, min(self.split, context), self.m.hidden_size, generator=gen)
                    self.x.write(layer, j, 0, x.to(self.dev, self.dtype))
                if context > self.split:
                    kv = torch.randn(self.gb, context - self.split, 2 * self.m.kv_dim, generator=gen)
                    self.kv.write(layer, j, self.split, kv.to(self.dev, self.dtype))
        self.io.sync_stream("compute")

    # -- decode ----------------------------------------------------------------------------------
    def decode(self, start: int, tokens: torch.Tensor, steps: int, forced: torch.Tensor | None = None,
               keep_logits: bool = False, on_step: Callable[[int, float], None] | None = None) -> list[torch.Tensor]:
        """`steps` decode steps; the first new token (ids `tokens`, [batch]) sits at position `start`.
        With `forced` ([batch, steps-1]) the next inputs are taken from it (teacher forcing), else greedy.
        Returns each step's logits [batch, vocab] if keep_logits; `on_step(step, wall seconds)` is
        called after each step (progress)."""
        if start + steps > self.s.seq:
            raise KvplanError(f"{steps} steps from position {start} run past the plan's seq {self.s.seq}")
        out = []
        ids = tokens.to(self.dev)
        reads = self._prefetch(0, 0, start)
        for step in range(steps):
            pos = start + step
            step_start = time.perf_counter()
            with self.rec.busy(step, -1, "compute"):
                hidden = M.embed(self.arch, self.outer, ids[:, None], torch.tensor([pos], device=self.dev))
            for layer in range(self.V):
                after = self._after(step, layer, steps)
                # the next layer's reads overlap this layer's compute, unless they must see its
                # write-back (the same run layer at the next position: a one-layer model)
                early = after is not None and after[1] != layer
                following = self._prefetch(*after, start + after[0]) if early else None
                hidden, new = self._compute_layer(reads, hidden)
                self._write_back(reads, new)
                if after is not None and not early:
                    following = self._prefetch(*after, start + after[0])
                self.rec.mark_layer_end(step, layer)
                reads = following
            with self.rec.busy(step, -1, "compute"):
                logits = M.head(self.arch, self.outer, hidden)[:, 0].float()
                ids = forced[:, step].to(self.dev) if forced is not None and step + 1 < steps else logits.argmax(-1)
            self.rec.mark_step(step, step_start, time.perf_counter())
            self.next_tokens = ids  # the inputs of the step after the last one run
            if keep_logits:
                out.append(logits.cpu())
            if on_step is not None:
                on_step(step, time.perf_counter() - step_start)
        self.links.finish_writes()
        return out

    def _after(self, step: int, layer: int, steps: int) -> tuple[int, int] | None:
        """The (step, layer) run after this one, None after the last."""
        if layer + 1 < self.V:
            return step, layer + 1
        return (step + 1, 0) if step + 1 < steps else None

    # -- prefetch: queue a layer's reads ---------------------------------------------------------
    def _prefetch(self, step: int, layer: int, pos: int) -> LayerReads:
        """Queue every read run layer `layer` of step `step` needs: its weights, then per GPU batch X
        then K,V (one worker per link, so they cross it in that order)."""
        tag = Tag(step, layer)
        slot = (step * self.V + layer) % 2  # the gather buffers alternate between consecutive layers
        weights = self._read_weights(tag)
        batches = [BatchReads(self._read_x(tag, j, min(self.split, pos)), self._kv_source(tag, j, pos, slot))
                   for j in range(self.ngb)]
        return LayerReads(step, layer, pos, weights, batches)

    def _read_weights(self, tag: Tag) -> Weights | Future:
        link = self.weights.streamed(tag.layer)
        if link is None:
            return self.weights.in_memory(tag.layer)
        nbytes = self.weights.record_bytes
        if not self.io.separate_host:  # a CPU run: the record is read into host memory and used there
            return self.links.disk_read(tag, nbytes, partial(self.weights.read_disk, tag.layer))

        def to_device(src: Weights):
            def fill():
                dst = {k: self.io.device_empty(tuple(v.shape), v.dtype) for k, v in src.items()}
                return [(dst[k], src[k]) for k in src], dst
            return fill

        if link == "h2d":
            return self.links.copy(tag, "h2d", nbytes, to_device(self.weights.in_memory(tag.layer)))
        offset, n = self.weights.disk_extent(tag.layer)
        return self.links.disk_to_device(tag, self.links.ring("weights", 3), self.weights.disk, offset, n,
                                         lambda raw: to_device(self.weights.unpack(raw)))

    def _read_x(self, tag: Tag, j: int, upto: int) -> list[torch.Tensor | Future]:
        """X[0:upto] of GPU batch j on the compute device, token-major, one part per tier."""
        stored, store = self._stored(tag.layer), self.x
        parts: list[torch.Tensor | Future] = []
        for p in store.pieces(0, upto):
            space, nbytes = store.space(p.span), p.tokens * store.token_bytes
            if space == "device":
                parts.append(store.view(p, stored, j))
            elif space == "disk" and not self.io.separate_host:
                parts.append(self.links.disk_read(tag, nbytes, partial(store.read_disk, p, stored, j)))
            else:
                def to_device(src: torch.Tensor):
                    def fill():
                        dst = self.io.device_empty(tuple(src.shape), src.dtype)
                        return [(dst, src)], dst
                    return fill
                if space == "host":
                    parts.append(self.links.copy(tag, "h2d", nbytes, to_device(store.view(p, stored, j)),
                                                 after=self.links.host_writes.get((store.name, stored, j))))
                else:
                    offset, n = store.disk_extent(p, stored, j)
                    parts.append(self.links.disk_to_device(
                        tag, self.links.ring(store.name, 2 * self.ngb + 1), store.disk, offset, n,
                        lambda raw, p=p: to_device(store.tokens_of(raw, p))))
        return parts

    def _kv_source(self, tag: Tag, j: int, pos: int, slot: int) -> KvSource:
        """How K,V[split:pos] of GPU batch j reach attention: in place (resident, nothing to copy), or
        gathered into the slot's buffer (pieces across a link are read straight into their rows)."""
        stored, store = self._stored(tag.layer), self.kv
        pieces = store.pieces(self.split, pos)
        if self.split == 0:
            span_new = store.span_of(pos)
            if store.space(span_new) == self.att_space and all(p.span == span_new for p in pieces):
                return InPlace(span_new)
        buf = self.bufs[(slot, j)]
        local = [p for p in pieces if store.space(p.span) == self.att_space]
        streamed = [self._read_kv_into(tag, j, p, buf) for p in pieces if store.space(p.span) != self.att_space]
        host_write = None
        if self.io.separate_host and any(p.tier == "host" for p in local):
            host_write = self.links.host_writes.get((store.name, stored, j))
        return Gathered(buf, local, streamed, host_write)

    def _read_kv_into(self, tag: Tag, j: int, p: Piece, buf: GatherBuffer) -> Future:
        """One K,V piece across a link into rows [lo, hi) of a gather buffer, on the link's worker."""
        stored, store = self._stored(tag.layer), self.kv
        space, nbytes = store.space(p.span), p.tokens * store.token_bytes
        if space == "disk" and buf.disk_direct:
            return self.links.disk_read(tag, nbytes, partial(store.read_disk_into, p, stored, j, buf))
        rows = buf.tensor[p.lo:p.hi]

        def into_rows(src: torch.Tensor):
            return lambda: ([(rows, src)], None)

        if space == "disk":
            offset, n = store.disk_extent(p, stored, j)
            return self.links.disk_to_device(tag, self.links.ring(store.name, 2 * self.ngb + 1), store.disk,
                                             offset, n, lambda raw: into_rows(store.tokens_of(raw, p)),
                                             dst_free=buf.free)
        link = "h2d" if space == "host" else "d2h"  # device K,V to a host buffer: attention on the CPU
        return self.links.copy(tag, link, nbytes, into_rows(store.view(p, stored, j)),
                               after=self.links.host_writes.get((store.name, stored, j)), dst_free=buf.free)

    # -- compute ---------------------------------------------------------------------------------
    def _compute_layer(self, reads: LayerReads, hidden: torch.Tensor) -> tuple[torch.Tensor, NewToken]:
        """One layer for the whole batch (hidden: [batch, 1, h]). The projections and the MLP run once
        over all rows, so the layer's weights are read once per step however many GPU batches there
        are (FlexGen's reuse of a layer's weights across GPU batches); attention runs per GPU batch."""
        a, tag = self.arch, reads.tag
        w = landed(reads.weights, self.io)
        with self.rec.busy(tag.step, tag.layer, "compute"):
            x_new = M.input_norm(a, w, hidden)
            q, kv_new = M.query_and_kv(a, w, x_new, torch.tensor([reads.pos], device=self.dev))  # one GEMM
        self.io.accessed("compute", x_new, kv_new)
        new = NewToken(x_new, kv_new, self.io.record("compute"), [isinstance(b.kv, InPlace) for b in reads.batches])
        outs = []
        for j, batch in enumerate(reads.batches):
            rows = slice(j * self.gb, (j + 1) * self.gb)
            kv_rec = self._recompute(reads, w, batch)
            if isinstance(batch.kv, InPlace):
                outs.append(self._attend_in_place(reads, j, batch.kv, q[rows], kv_new[rows], new.made))
            else:
                outs.append(self._attend_gathered(reads, j, batch.kv, q[rows], kv_new[rows], kv_rec))
        with self.rec.busy(tag.step, tag.layer, "compute"):
            return M.finish_layer(a, w, hidden, torch.cat(outs)), new

    def _recompute(self, reads: LayerReads, w: Weights, batch: BatchReads) -> torch.Tensor | None:
        """K,V[0:min(split, pos)] from X as soon as X is in (RoPE at positions 0..): straight into rows
        [0, split) of the gather buffer while K,V[split:pos] still streams into the rows after them
        (a disk read into a host buffer starts on a page boundary: the buffer is placed so), or
        returned ([gpu_batch, tokens, 2*kv_dim]) when the buffer is on the other side of a link."""
        if not batch.x_parts:
            return None
        x_parts = [landed(p, self.io) for p in batch.x_parts]
        assert isinstance(batch.kv, Gathered)
        with self.rec.busy(reads.step, reads.layer, "compute"):
            x_tm = torch.cat(x_parts)  # token-major [tokens, gpu_batch, hidden]
            positions = torch.arange(x_tm.shape[0], device=self.dev)
            if self.att_space == "device":
                M.kv_from_x_into(self.arch, w, x_tm, positions, out=batch.kv.buf.tensor[:x_tm.shape[0]])
                return None
            return M.kv_from_x(self.arch, w, x_tm.transpose(0, 1), positions)

    def _attend_in_place(self, reads: LayerReads, j: int, src: InPlace, q: torch.Tensor, kv_new: torch.Tensor,
                         made: Any) -> torch.Tensor:
        """Append the new token's K,V to the resident store, then attend over the store itself."""
        appended = self._store_new(self.kv, reads, j, kv_new, made)
        if appended is not None:  # CPU attention on a GPU machine: the append crossed the link
            appended.result()
        with self.rec.busy(reads.step, reads.layer, self.att_resource):
            kv_all = self.kv.view(Piece(src.span, self.split, reads.pos + 1), self._stored(reads.layer), j)
            return M.attention(self.arch, q.to(self.att_dev), kv_all.transpose(0, 1), causal=False).to(self.dev)

    def _attend_gathered(self, reads: LayerReads, j: int, src: Gathered, q: torch.Tensor, kv_new: torch.Tensor,
                         kv_rec: torch.Tensor | None) -> torch.Tensor:
        """Attention over the gather buffer once the streamed pieces are in: recomputed rows (if made
        on the other side), local pieces and the new token are copied in first."""
        for f in src.streamed:
            landed(f, self.io)
        if src.host_write is not None:
            src.host_write.result()
        buf, stored = src.buf, self._stored(reads.layer)
        with self.rec.busy(reads.step, reads.layer, self.att_resource):
            if kv_rec is not None:
                buf.tensor[:kv_rec.shape[1]].copy_(kv_rec.transpose(0, 1))
            for p in src.local:
                buf.tensor[p.lo:p.hi].copy_(self.kv.view(p, stored, j))
            buf.tensor[reads.pos].copy_(kv_new[:, 0])
            out = M.attention(self.arch, q.to(self.att_dev), buf.rows_view(0, reads.pos + 1), causal=False)
            self.io.accessed("compute", buf.tensor)
            buf.free = self.io.record("compute")  # a copy stream may refill the buffer after this
            return out.to(self.dev)

    # -- write back ------------------------------------------------------------------------------
    def _write_back(self, reads: LayerReads, new: NewToken) -> None:
        """The new token goes where position pos lives: its X inside the recompute range, else its K,V
        (unless attention already appended it in place), on the tier that holds pos."""
        for j in range(self.ngb):
            rows = slice(j * self.gb, (j + 1) * self.gb)
            if reads.pos < self.split:
                self._store_new(self.x, reads, j, new.x[rows], new.made)
            elif not new.in_place[j]:
                self._store_new(self.kv, reads, j, new.kv[rows], new.made)

    def _store_new(self, store: TokenStore, reads: LayerReads, j: int, data: torch.Tensor, made: Any) -> Future | None:
        """Store one GPU batch's new token ([gpu_batch, 1, width]) at reads.pos: in device memory by the
        compute thread, else queued on the link's worker (after the reads queued there) and its future
        returned."""
        stored, span = self._stored(reads.layer), store.span_of(reads.pos)
        space = store.space(span)
        if space == "device":
            with self.rec.busy(reads.step, reads.layer, "compute"):
                store.write(stored, j, reads.pos, data)
            return None
        nbytes = data.shape[0] * data.shape[-1] * data.element_size()
        if space == "disk":
            return self.links.to_disk(reads.tag, nbytes, partial(store.write, stored, j, reads.pos), data, made)
        row = store.view(Piece(span, reads.pos, reads.pos + 1), stored, j)
        return self.links.copy_out(reads.tag, row, data.transpose(0, 1), made, (store.name, stored, j))

