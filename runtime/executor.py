"""The decode loop: runs a plan's decisions for real on this machine.

Per decode step (new token at position t, split l = decisions.split_tokens, fixed for the run) and per
layer, for each GPU batch:
  1. the layer's weights arrive (resident, or streamed from host / disk when the plan says so);
  2. X[0:min(l, t)] crosses the link first, then K,V[l:t] streams in (one I/O worker per link, in
     that order), while the compute thread projects the new token (input norm -> X_new -> q, k, v);
  3. as soon as X is in, K,V[0:min(l, t)] are recomputed from it (RoPE at positions 0..), overlapping
     the K,V stream; attention runs over [recomputed | streamed | new token];
  4. the new token is written back where its position belongs: X_new if t < l (the recompute range),
     else its K,V, on the tier that holds position t. l never moves, so a plan with l >= seq stores
     only X and recomputes everything, and l = 0 is plain K,V offloading (FlexGen).
While layer i computes, the reads of layer i+1 (and across the step boundary, layer 0 of the next
step) are already queued: double buffering, so the link never waits for the compute thread.

On a GPU the I/O workers issue copies on a separate CUDA stream and wait for them, the compute thread
works on the default stream; on the CPU the workers are threads (file reads and torch ops release the
GIL), so disk transfer and compute really overlap.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from planner.errors import KvplanError
from planner.memory import cache_bytes
from planner.models import ModelConfig
from planner.placement import layer_counts, piece_spans
from planner.plan import Decisions
from runtime import model as M
from runtime.measure import Recorder
from runtime.tiers import GatherBuffer, TokenStore, WeightStore, align_up, flat_layout

LINKS = ("disk", "h2d")


@dataclass(frozen=True)
class Setup:
    model: ModelConfig
    decisions: Decisions
    seq: int  # positions the stores hold: [0, seq)
    layers: int  # decoder layers actually run (--layers K)
    device: str = "cpu"  # "cpu" or "cuda"
    disk_dir: Path | None = None
    seed: int = 0
    weights_dir: Path | None = None
    # timing runs of deep models on small machines: run this many layers per decode step, cycling
    # through the `layers` stored ones (layer v uses weights and caches of layer v % layers); the
    # I/O and compute of every layer are real, the logits are not those of any model
    virtual_layers: int | None = None


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


class Executor:
    """Holds the model's weights and caches on their tiers and runs prefill and decode steps."""

    def __init__(self, s: Setup):
        M.check_runnable(s.model, s.seq)  # before anything is allocated
        if s.layers < 1 or s.layers > s.model.num_layers:
            raise KvplanError(f"--layers must be in [1, {s.model.num_layers}], got {s.layers}")
        if s.device == "cuda" and not torch.cuda.is_available():
            raise KvplanError("the run asks for CUDA but torch sees no GPU")
        self.s, self.m, self.d = s, s.model, s.decisions
        self.dev = torch.device(s.device)
        self.dtype = M.TORCH_DTYPES[self.d.dtype]
        self.arch = M.Arch.of(self.m)
        self.L = s.layers
        # decoder layers per step: with virtual_layers > layers the K stored layers are cycled through
        self.V = max(s.virtual_layers or s.layers, s.layers)
        self.l = self.d.split_tokens
        self.gb, self.ngb = self.d.gpu_batch, self.d.num_gpu_batches
        # attention on the host CPU next to the K,V (only differs from "device" when the device is a GPU)
        self.att_dev = torch.device("cpu") if self.d.attention_where == "cpu" else self.dev
        self.rec = Recorder(sync=torch.cuda.synchronize if self.dev.type == "cuda" else None)
        self.copy_stream = torch.cuda.Stream() if self.dev.type == "cuda" else None
        ckpt = M.Checkpoint(s.weights_dir, self.m) if s.weights_dir else None
        outer = ckpt.outer(torch.float32) if ckpt else M.random_outer_weights(self.m, s.seed, torch.float32)
        self.outer = {k: v.to(self.dev, self.dtype) for k, v in outer.items()}
        layer_ws = [ckpt.layer(i, self.dtype) if ckpt else M.random_layer_weights(self.m, i, s.seed, self.dtype)
                    for i in range(self.L)]
        self.stores: list = []
        try:
            self.weights = WeightStore(M.layer_weight_shapes(self.m), layer_ws, self.d.weight_placement,
                                       self.dtype, self.dev, s.disk_dir, virtual=self.V)
            self.stores.append(self.weights)
            del layer_ws
            self.x = TokenStore("x", self.m.hidden_size, 0, min(self.l, s.seq), self.d.x_placement, self.L,
                                self.ngb, self.gb, self.dtype, self.dev, s.disk_dir)
            self.stores.append(self.x)
            self.kv = TokenStore("kv", 2 * self.m.kv_dim, self.l, s.seq, self.d.kv_placement, self.L,
                                 self.ngb, self.gb, self.dtype, self.dev, s.disk_dir)
            self.stores.append(self.kv)
        except BaseException:
            self.close()
            raise
        disk_t0 = next((sp.t0 for sp in self.kv.spans if sp.tier == "disk"), None)
        self.bufs = {(slot, j): GatherBuffer(s.seq, self.gb, 2 * self.m.kv_dim, self.dtype, self.att_dev, disk_t0)
                     for slot in range(2) for j in range(self.ngb)}
        self.workers = {link: ThreadPoolExecutor(1, thread_name_prefix=f"kvplan-{link}") for link in LINKS}
        self.pending: dict[tuple[int, int], dict] = {}
        self.writes: list[Future] = []

    def close(self) -> None:
        for w in getattr(self, "workers", {}).values():
            w.shutdown(wait=True)
        for st in self.stores:
            st.close()
        self.stores = []

    def direct_io(self) -> bool:
        files = [st.disk for st in self.stores if st.disk is not None]
        return all(f.direct for f in files)

    # -- I/O on the workers ----------------------------------------------------------------------
    def _on_worker(self, link: str, fn, *args) -> Future:
        def run():
            if self.copy_stream is not None:
                with torch.cuda.stream(self.copy_stream):
                    out = fn(*args)
                self.copy_stream.synchronize()
                return out
            return fn(*args)
        return self.workers[link].submit(run)

    def _timed_read(self, store: TokenStore, sp, n: int, i: int, j: int, a: int, b: int, target) -> torch.Tensor:
        res = "disk_read" if sp.tier == "disk" else "h2d"
        with self.rec.busy(n, i, res, (b - a) * store.token_bytes):
            return store.read(sp, i % self.L, j, a, b, target)

    def _timed_read_into(self, sp, n: int, i: int, j: int, a: int, b: int, buf: GatherBuffer) -> None:
        res = "disk_read" if sp.tier == "disk" else "h2d"
        with self.rec.busy(n, i, res, (b - a) * self.kv.token_bytes):
            self.kv.read_into(sp, i % self.L, j, a, b, buf)

    def _timed_weights(self, n: int, i: int, res: str) -> dict[str, torch.Tensor]:
        with self.rec.busy(n, i, res, self.weights.record_bytes):
            return self.weights.get(i)

    def _fetch(self, store: TokenStore, n: int, i: int, j: int, a: int, b: int, target=None) -> list:
        """Futures (or ready views) for positions [a, b) of one GPU batch, in position order."""
        parts: list = []
        for sp, lo, hi in store.pieces(a, b):
            if store.is_local(sp, target):
                parts.append(store.read(sp, i % self.L, j, lo, hi, target))
            else:
                link = "disk" if sp.tier == "disk" else "h2d"
                parts.append(self._on_worker(link, self._timed_read, store, sp, n, i, j, lo, hi, target))
        return parts

    def _kv_plan(self, n: int, i: int, j: int, t: int, slot: int) -> dict:
        """How K,V[l:t] of one GPU batch reach attention: in place (one local piece that will also take
        the new token: no copy at all), or gathered into a buffer (link pieces read straight into it)."""
        pieces = self.kv.pieces(self.l, t)
        if t >= self.l and self.l == 0 and all(self.kv.is_local(sp, self.att_dev) for sp, _, _ in pieces):
            sp_new = self.kv.span_of(t)
            if self.kv.is_local(sp_new, self.att_dev) and all(sp == sp_new for sp, _, _ in pieces):
                return {"in_place": sp_new}
        buf = self.bufs[(slot, j)]
        local, futures = [], []
        for sp, lo, hi in pieces:
            if self.kv.is_local(sp, self.att_dev):
                local.append((sp, lo, hi))
            else:
                link = "disk" if sp.tier == "disk" else "h2d"
                futures.append(self._on_worker(link, self._timed_read_into, sp, n, i, j, lo, hi, buf))
        return {"buf": buf, "local": local, "futures": futures}

    def _submit(self, n: int, i: int, t: int, slot: int) -> None:
        """Queue every read layer i of step n needs (context t): weights, then X then K,V per GPU batch."""
        entry: dict = {"t": t}
        res = self.weights.streamed(i)
        if res is None:
            entry["w"] = self.weights.get(i)
        else:
            entry["w"] = self._on_worker("disk" if res == "disk_read" else "h2d", self._timed_weights, n, i, res)
        for j in range(self.ngb):
            entry[("x", j)] = self._fetch(self.x, n, i, j, 0, min(self.l, t))
            entry[("kv", j)] = self._kv_plan(n, i, j, t, slot)
        self.pending[(n, i)] = entry

    def _timed_write(self, store: TokenStore, n: int, i: int, j: int, pos: int, data: torch.Tensor) -> None:
        res = "disk_write" if store.span_of(pos).tier == "disk" else "d2h"
        with self.rec.busy(n, i, res, data.shape[0] * data.shape[-1] * data.element_size()):
            store.write(i % self.L, j, pos, data)

    def _write_back(self, store: TokenStore, n: int, i: int, j: int, pos: int, data: torch.Tensor) -> Future | None:
        """Store the new token's X or K,V where position `pos` lives; a write over a link is queued on
        that link's worker (after the reads already queued there) and its future returned."""
        sp = store.span_of(pos)
        if store.is_local(sp, data.device):
            with self.rec.busy(n, i, "compute"):
                store.write(i % self.L, j, pos, data)
            return None
        fut = self._on_worker("disk" if sp.tier == "disk" else "h2d", self._timed_write, store, n, i, j, pos, data)
        self.writes.append(fut)
        return fut

    def _ready(self, x):
        """The value of a read; on CUDA, tensors made on the copy stream are marked as used by the
        compute stream so the caching allocator does not hand their memory out early."""
        if not isinstance(x, Future):
            return x
        out = x.result()
        if self.copy_stream is not None:
            for t in out.values() if isinstance(out, dict) else [out]:
                if isinstance(t, torch.Tensor) and t.is_cuda:
                    t.record_stream(torch.cuda.current_stream())
        return out

    # -- prefill ---------------------------------------------------------------------------------
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the prompt through the run layers (one GPU batch at a time, each layer's weights loaded
        once), store X[0:l] and K,V[l:P] on their tiers; returns the last position's logits [batch, vocab]."""
        a, P = self.arch, tokens.shape[1]
        tokens = tokens.to(self.dev)
        pos = torch.arange(P, device=self.dev)
        hs = [M.embed(a, self.outer, tokens[j * self.gb:(j + 1) * self.gb], pos) for j in range(self.ngb)]
        for i in range(self.L):
            w = self.weights.get(i)
            for j in range(self.ngb):
                x = M.input_norm(a, w, hs[j])
                q, kv = M.query_and_kv(a, w, x, pos)
                hs[j] = M.finish_layer(a, w, hs[j], M.attention(a, q, kv, causal=True))
                if min(self.l, P) > 0:
                    self.x.write(i, j, 0, x[:, :min(self.l, P)])
                if P > self.l:
                    self.kv.write(i, j, self.l, kv[:, self.l:])
        if self.dev.type == "cuda":  # the writes above were asynchronous on the compute stream
            torch.cuda.synchronize()
        return torch.cat([M.head(a, self.outer, h[:, -1:])[:, 0] for h in hs])

    def fill_random(self, context: int, seed: int = 0) -> None:
        """Put random X and K,V for positions [0, context) on their tiers, without computing them:
        for timing runs at long contexts, where a real prefill would take longer than the run."""
        gen = torch.Generator().manual_seed(seed)
        for i in range(self.L):
            for j in range(self.ngb):
                if min(self.l, context) > 0:
                    x = torch.randn(self.gb, min(self.l, context), self.m.hidden_size, generator=gen)
                    self.x.write(i, j, 0, x.to(self.dev, self.dtype))
                if context > self.l:
                    kv = torch.randn(self.gb, context - self.l, 2 * self.m.kv_dim, generator=gen)
                    self.kv.write(i, j, self.l, kv.to(self.dev, self.dtype))
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    # -- decode ----------------------------------------------------------------------------------
    def decode(self, start: int, tokens: torch.Tensor, steps: int, forced: torch.Tensor | None = None,
               keep_logits: bool = False) -> list[torch.Tensor]:
        """`steps` decode steps; the first new token (ids `tokens`, [batch]) sits at position `start`.
        With `forced` ([batch, steps-1]) the next inputs are taken from it (teacher forcing), else greedy.
        Returns each step's logits [batch, vocab] if keep_logits."""
        if start + steps > self.s.seq:
            raise KvplanError(f"{steps} steps from position {start} run past the plan's seq {self.s.seq}")
        a = self.arch
        out = []
        schedule = [(step, layer) for step in range(steps) for layer in range(self.V)]
        ids = tokens.to(self.dev)
        self._submit(0, 0, start, 0)
        for k, (n, i) in enumerate(schedule):
            t = start + n  # position of this step's new token
            if i == 0:
                step_start = time.perf_counter()
                with self.rec.busy(n, -1, "compute"):
                    hidden = M.embed(a, self.outer, ids[:, None], torch.tensor([t], device=self.dev))
            following = schedule[k + 1] if k + 1 < len(schedule) else None
            # prefetch the next layer's data now, unless it must see this layer's write-back first
            # (the same stored layer again: a run with one stored layer, or the step boundary)
            early = following is not None and following[1] != i
            if early:
                self._submit(following[0], following[1], start + following[0], (k + 1) % 2)
            hidden = self._decode_layer(n, i, t, self.pending.pop((n, i)), hidden)
            if following is not None and not early:
                self._submit(following[0], following[1], start + following[0], (k + 1) % 2)
            self.rec.mark_layer_end(n, i)
            if i == self.V - 1:
                with self.rec.busy(n, -1, "compute"):
                    logits = M.head(a, self.outer, hidden)[:, 0].float()
                    ids = forced[:, n].to(self.dev) if forced is not None and n + 1 < steps else logits.argmax(-1)
                self.rec.mark_step(n, step_start, time.perf_counter())
                self.next_tokens = ids  # the inputs of the step after the last one run
                if keep_logits:
                    out.append(logits.cpu())
        for f in self.writes:
            f.result()
        self.writes.clear()
        return out

    def _decode_layer(self, n: int, i: int, t: int, entry: dict, hidden: torch.Tensor) -> torch.Tensor:
        """Layer i of step n for the whole batch (hidden: [batch, 1, h]). The projections and the MLP run
        once over all rows, so the layer's weights are read once per step however many GPU batches
        there are (FlexGen's reuse of a layer's weights across GPU batches); attention runs per GPU
        batch over that batch's recomputed, streamed and new K,V."""
        a = self.arch
        w = self._ready(entry["w"])
        with self.rec.busy(n, i, "compute"):
            pos_new = torch.tensor([t], device=self.dev)
            x_new = M.input_norm(a, w, hidden)
            q, kv_new = M.query_and_kv(a, w, x_new, pos_new)  # one GEMM: the planner's qkv_proj
        attn = []
        for j in range(self.ngb):
            rows = slice(j * self.gb, (j + 1) * self.gb)
            attn.append(self._attend(n, i, j, t, w, entry, q[rows], kv_new[rows]))
            # the new token goes where position t lives: its X inside the recompute range, else its K,V
            if t < self.l:
                self._write_back(self.x, n, i, j, t, x_new[rows])
            elif not attn[-1][1]:
                self._write_back(self.kv, n, i, j, t, kv_new[rows])
        with self.rec.busy(n, i, "compute"):
            return M.finish_layer(a, w, hidden, torch.cat([out for out, _ in attn]))

    def _attend(self, n: int, i: int, j: int, t: int, w: dict[str, torch.Tensor], entry: dict,
                q: torch.Tensor, kv_new: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Attention of GPU batch j over positions [0, t]: K,V[0:l] recomputed from X as soon as X is
        in, K,V[l:t] streamed (or local), the new token's K,V last. Returns (output [gb, 1, heads*d],
        whether the new K,V was already stored)."""
        a, ad = self.arch, self.att_dev
        resource = "cpu" if self.d.attention_where == "cpu" else "compute"
        x_parts = [self._ready(p) for p in entry[("x", j)]]
        plan = entry[("kv", j)]
        kv_rec = None
        if x_parts:
            with self.rec.busy(n, i, "compute"):
                x_tm = torch.cat([p.transpose(0, 1) for p in x_parts])  # token-major [tokens, gb, hidden]
                recomputed = x_tm.shape[0]
                pos_rec = torch.arange(recomputed, device=self.dev)
                if "buf" in plan and plan["buf"].tensor.device.type == self.dev.type:
                    # straight into rows [0, l) of the attention buffer while K,V[l:t] still streams into
                    # rows [l, t): that read starts at a page boundary (the buffer is placed so)
                    M.kv_from_x_into(a, w, x_tm, pos_rec, out=plan["buf"].tensor[:recomputed])
                else:
                    kv_rec = M.kv_from_x(a, w, x_tm.transpose(0, 1), pos_rec)
        if "in_place" in plan:  # resident K,V: append the new token, attend over the store itself
            fut = self._write_back(self.kv, n, i, j, t, kv_new)
            if fut is not None:  # CPU attention on a GPU machine: the append crossed the link
                fut.result()
            with self.rec.busy(n, i, resource):
                kv_all = self.kv.read(plan["in_place"], i % self.L, j, self.l, t + 1, ad)
                return M.attention(a, q.to(ad), kv_all, causal=False).to(self.dev), True
        for f in plan["futures"]:
            f.result()  # the streamed pieces are now in their rows of the buffer
        buf = plan["buf"]
        with self.rec.busy(n, i, resource):
            if kv_rec is not None:
                buf.tensor[:kv_rec.shape[1]].copy_(kv_rec.transpose(0, 1))
            for sp, lo, hi in plan["local"]:
                buf.tensor[lo:hi].copy_(self.kv.read(sp, i % self.L, j, lo, hi, ad).transpose(0, 1))
            buf.tensor[t].copy_(kv_new[:, 0])
            return M.attention(a, q.to(ad), buf.rows_view(0, t + 1), causal=False).to(self.dev), False
