"""Disk probes on the folder where the KV cache will live: host->disk writes and disk->host reads
past the page cache, so a cached read never poses as a disk read.

Method: O_DIRECT on a page-aligned buffer (an anonymous mmap is page aligned) with page-multiple
sizes. Where the file system refuses O_DIRECT (tmpfs, some overlay and network file systems), the
fallback writes with fsync and drops the file's pages with posix_fadvise(DONTNEED) before every
timed read; the profile records which method was used ("o_direct" or "fadvise_dontneed").

The runtime's situation (docs/profiling.md, "disk under load"): while the disk worker reads K,V the
compute thread runs GEMMs and attention on the same cores and memory bus, so `disk_samples` can time
the transfers with a compute loop running on another thread (`busy`); and the runtime's write-back
is a small write (one token's K,V or X) appended to a preallocated file, which
`writeback_samples` times through the runtime's own DiskFile.

Scratch files: every file a probe creates in the disk folder is named `.kvplan-probe-<pid>-<what>`
(`probe_path`) and removed in a `finally` (Ctrl-C, SIGTERM turned into the same path, any error).
A process killed outright (SIGKILL, power loss) cannot clean up, so `remove_stale_probe_files`,
called when a profile starts, deletes the probe files of processes that no longer exist.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from planner.disk_classes import DiskClass
from planner.errors import KvplanError
from planner.profiling.compute import MIN_SAMPLES, Progress, SampleSet
from planner.profiling.shapes import DiskSizes
from planner.profiling.timing import Repeats

PAGE = 4096
PROBE_PREFIX = ".kvplan-probe-"
_PROBE_NAME = re.compile(r"^\.kvplan-probe-(\d+)-")
# the fixed names used before the scratch files carried the process id: nobody owns these any more
LEGACY_PROBE_FILES = (".kvplan-disk-probe", ".kvplan-disk-probe-writeback")
# Bytes of destination memory the timed reads rotate over: the runtime reads each GPU batch's K,V into
# its own gather buffer, two pipeline slots deep (runtime/executor.py), e.g. 200 MB for opt-125m at
# seq 2048, batch 8 (docs/validation.md, "Disk reads").
READ_DEST_BYTES = 256 << 20
# rounds over the sizes (at least), and the seed of their order in each round
DISK_PASSES = 3
DISK_ORDER_SEED = 20261123
WRITEBACK_MANY_BYTES = 4 << 20


def probe_path(disk_dir: Path, what: str) -> Path:
    """The scratch file `what` of this process in `disk_dir`: .kvplan-probe-<pid>-<what>."""
    return disk_dir / f"{PROBE_PREFIX}{os.getpid()}-{what}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def remove_stale_probe_files(disk_dir: Path) -> list[Path]:
    """Delete the probe scratch files in `disk_dir` left by processes that are gone (killed before
    their `finally` ran), and the fixed-name files of older versions; files of live processes, this
    one included, stay. Returns what was removed. A pid reused by an unrelated live process keeps its
    file until that process ends."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(disk_dir))
    except OSError:
        return removed
    for entry in entries:
        match = _PROBE_NAME.match(entry.name)
        stale = entry.name in LEGACY_PROBE_FILES or (match is not None and not _pid_alive(int(match.group(1))))
        if stale and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def check_disk_dir(path: Path, need_bytes: int) -> int:
    """Free bytes of `path` after checking it exists, is writable and has room; one-line errors."""
    if not path.exists():
        raise KvplanError(f"--disk-dir {path} does not exist")
    if not path.is_dir():
        raise KvplanError(f"--disk-dir {path} is not a folder")
    try:  # os.access says yes to root on a read-only mount; creating a file is the real test
        with tempfile.NamedTemporaryFile(dir=path, prefix=f"{PROBE_PREFIX}{os.getpid()}-write-test-"):
            pass
    except OSError as exc:
        raise KvplanError(f"--disk-dir {path} is not writable: {exc.strerror}") from exc
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise KvplanError(
            f"--disk-dir {path} has {free / 1e6:.0f} MB free; the disk probe needs {need_bytes / 1e6:.0f} MB"
        )
    return free


def _open(path: Path, flags: int) -> tuple[int, str]:
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return os.open(path, flags | direct, 0o600), "o_direct"
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
    return os.open(path, flags, 0o600), "fadvise_dontneed"


def _drop_cache(fd: int) -> None:
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        done += n


def _read_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "short read")
        done += n


def _time_size(fd: int, view: memoryview, size: int, method: str, reps: Repeats,
               file_bytes: int | None = None, dest: memoryview | None = None,
               writes: bool = True) -> tuple[list[float], list[float]]:
    """Writes (unless `writes` is False), then reads, of `size` bytes, warmup + max(min_reps, 4) of
    each; (write times, read times). The reads run back to back over successive chunks of the file (wrapping within
    `file_bytes`), as the runtime's disk worker streams one GPU batch's K,V after another: on this
    VM's virtual disk an isolated 12 MB read ran at 2.7 GB/s but a stream of them at 2.1 GB/s, the
    sustained rate (docs/profiling.md). Each read lands in the next `size`-byte slot of `dest` (default:
    `view`), as the runtime's reads land in a different gather buffer per GPU batch and pipeline slot:
    reading into one reused buffer measured 1.1-1.5x faster than rotating over 200 MB of destinations
    on this VM (docs/validation.md, "Disk reads")."""
    wtimes, rtimes = [], []
    count = reps.warmup + max(reps.min_reps, 4)
    span = max(size, (file_bytes or size) // size * size)
    dest = view if dest is None else dest
    slots = max(1, len(dest) // size)
    with view[:size] as part:
        for i in range(count if writes else 0):
            t0 = time.perf_counter()
            _write_all(fd, part, 0)
            if method != "o_direct":
                os.fsync(fd)  # buffered writes are only on the disk after fsync
            if i >= reps.warmup:
                wtimes.append(time.perf_counter() - t0)
        if method != "o_direct":
            _drop_cache(fd)
        for i in range(count):
            k = i % slots
            t2 = time.perf_counter()
            with dest[k * size:(k + 1) * size] as slot:
                _read_all(fd, slot, (i * size) % span)
            t3 = time.perf_counter()
            if method != "o_direct":
                _drop_cache(fd)
            if i >= reps.warmup:
                rtimes.append(t3 - t2)
    return wtimes, rtimes


@contextmanager
def busy_thread(work: Callable[[], object] | None) -> Iterator[None]:
    """Run `work` in a loop on another thread for the duration (torch ops release the GIL, so it
    really computes while this thread does I/O); nothing when `work` is None."""
    if work is None:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            work()

    thread = threading.Thread(target=loop, name="kvplan-probe-compute", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _disk_file_class():
    """The runtime's disk file (O_DIRECT, aligned staging, tail-page cache), which the write-back and
    disk->device probes time."""
    from planner.directio import DiskFile
    return DiskFile


def writeback_samples(
    disk_dir: Path, sizes: Sequence[int], reps: Repeats, budget_s: float, busy: Callable[[], object] | None = None,
    timed: dict[int, list[float]] | None = None, first_round: int = 0,
) -> SampleSet:
    """Writes as the runtime makes them: `size` bytes appended at successive (unaligned) offsets of a
    preallocated file through the runtime's DiskFile.write (page read-modify-write kept in its tail
    cache, a copy into an aligned buffer, O_DIRECT pwrite), as the executor writes each new token's
    K,V or X and prefill writes the prompt's; median of the calls per size (the runtime reports a
    mean; the disk's drift is not one-sided), optionally with a compute loop running (`busy`).
    Sizes up to WRITEBACK_MANY_BYTES get 8 calls, larger ones 3; the offsets wrap within twice the
    largest size, so the file stays small. `timed` (size -> call times) accumulates over calls, as
    in `disk_samples`, so the rounds can be spread over the profile; each call orders the sizes by
    its `first_round` seed and returns the samples of everything timed so far."""
    import torch

    DiskFile = _disk_file_class()  # noqa: N806 (a class)
    timed = {} if timed is None else timed
    start = time.perf_counter()
    path = probe_path(disk_dir, "writeback")
    window = 2 * max(sizes) + PAGE
    f = None
    try:
        f = DiskFile(path, window + PAGE)
        offset = 0
        with busy_thread(busy):
            for size in random.Random(DISK_ORDER_SEED + first_round).sample(list(sizes), len(sizes)):
                # the budget never cuts below MIN_SAMPLES sizes (over all calls): a loaded machine
                # must still give a profile that can be fitted
                if time.perf_counter() - start > budget_s and len(timed) >= MIN_SAMPLES:
                    continue
                calls = max(reps.min_reps, 8 if size <= WRITEBACK_MANY_BYTES else 3)
                data = torch.full((size,), 7, dtype=torch.uint8)
                times = []
                for _ in range(calls):
                    if offset + size > window:
                        offset = 0
                    t0 = time.perf_counter()
                    f.write(offset, data, 0)
                    times.append(time.perf_counter() - t0)
                    offset += size
                timed.setdefault(size, []).extend(times)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise KvplanError(f"--disk-dir {disk_dir} filled up during the disk probe") from exc
        raise KvplanError(f"write-back probe on {disk_dir} failed: {exc.strerror or exc}") from exc
    finally:
        if f is not None:
            f.close()
        _remove(path)  # also when the file was created but DiskFile failed (or was interrupted) after
    rows = [[float(size), statistics.median(timed[size])] for size in sorted(timed)]
    return SampleSet(["bytes", "time_s"], rows, len(sizes) - len(rows))


def floor_sizes(sizes: Sequence[int]) -> set[int]:
    """The MIN_SAMPLES read sizes every round times even when its time budget is spent (a loaded
    machine): enough to fit, and the same in every round so `time_spread` can compare rounds. The
    smallest of at least SPREAD_MIN_BYTES (cheap, and the sizes time_spread uses), else the largest."""
    big = sorted(s for s in sizes if s >= SPREAD_MIN_BYTES)
    return set(big[:MIN_SAMPLES]) if len(big) >= MIN_SAMPLES else set(sorted(sizes)[-MIN_SAMPLES:])


def disk_passes(reps: Repeats) -> int:
    """Rounds over the sizes that `disk_samples` makes by default."""
    return max(reps.passes, DISK_PASSES)


def disk_samples(
    disk_dir: Path, sizes: Sequence[int], reps: Repeats, budget_s: float, progress: Progress | None = None,
    busy: Callable[[], object] | None = None, passes: int | None = None,
    timed: dict[int, tuple[list[float], list[float]]] | None = None, first_round: int = 0, writes: bool = True,
    floor: set[int] | None = None,
) -> tuple[SampleSet, SampleSet, str]:
    """(reads, writes, method). Sizes are rounded up to whole pages. With `busy`, every transfer is
    timed while another thread runs `busy` in a loop (the runtime's compute beside its disk worker).
    `timed` (size -> write times, read times) accumulates over calls, so a caller can spread the
    rounds over minutes (planner/profiling/measure.py) and take the samples of the last call;
    `first_round` numbers this call's rounds (each round orders the sizes differently). With `writes`
    False only reads are timed (callers that take their writes from `writeback_samples`) and the
    writes sample set is empty. `floor`: the sizes every round times even past its budget (default
    `floor_sizes(sizes)`; callers with several disk classes pass each class's floor)."""
    sizes = [max(PAGE, -(-s // PAGE) * PAGE) for s in sizes]
    largest = max(sizes)
    path = probe_path(disk_dir, "read")
    buf = mmap.mmap(-1, largest)
    view = memoryview(buf)
    buf.write(os.urandom(min(largest, 1 << 20)) * (largest // min(largest, 1 << 20)))
    # where the reads land: a page-aligned arena of at least READ_DEST_BYTES, touched once so that page
    # faults stay out of the timings (the runtime's gather buffers are faulted in after its first step)
    arena = mmap.mmap(-1, max(largest, READ_DEST_BYTES))
    dest = memoryview(arena)
    dest[::PAGE] = bytes(len(dest[::PAGE]))
    reads: list[list[float]] = []
    write_rows: list[list[float]] = []
    skipped = 0
    start = time.perf_counter()
    fd, method = -1, "o_direct"
    try:
        fd, method = _open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        _write_all(fd, view, 0)  # the file the reads come from
        os.fsync(fd)
        # every size is timed in each of `passes` rounds, the sizes in a different (seeded) order each
        # round, and the median of all its timed transfers is kept: this virtual disk drifts between
        # about 1.3 and 2.0 GB/s over tens of seconds (docs/profiling.md, "Disk statistic"), so a size
        # timed at one moment only, or the fastest of several rounds, would record the disk's mood
        timed = {} if timed is None else timed
        floor = floor_sizes(sizes) if floor is None else floor
        with busy_thread(busy):
            for k in range(passes or disk_passes(reps)):
                order = random.Random(DISK_ORDER_SEED + first_round + k)
                for size in order.sample(sizes, len(sizes)):
                    if time.perf_counter() - start <= budget_s or size in floor:
                        wtimes, rtimes = _time_size(fd, view, size, method, reps, largest, dest, writes)
                        w, r = timed.setdefault(size, ([], []))
                        w.extend(wtimes)
                        r.extend(rtimes)
                    if progress:
                        progress(1)
        write_rows = [[size, statistics.median(timed[size][0])] for size in sizes if size in timed and timed[size][0]]
        reads = [[size, statistics.median(timed[size][1])] for size in sizes if size in timed]
        skipped = len(sizes) - len(timed)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise KvplanError(f"--disk-dir {disk_dir} filled up during the disk probe") from exc
        raise KvplanError(f"disk probe on {disk_dir} failed: {exc.strerror or exc}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
        view.release()
        buf.close()
        dest.release()
        arena.close()
        _remove(path)
    cols = ["bytes", "time_s"]
    return SampleSet(cols, reads, skipped), SampleSet(cols, write_rows, skipped), method


def split_by_class(samples: SampleSet, sizes: DiskSizes, classes: Sequence[DiskClass]) -> dict[str, SampleSet]:
    """The samples of each disk class (planner/disk_classes.py), keyed by its model: the rows whose
    bytes are one of the class's sizes (`sizes.of(cls)`, whole pages as the reads were timed), so a
    class's fit never sees another class's transfers; `skipped` counts the class's untimed sizes."""
    out = {}
    for cls in classes:
        own = set(sizes.of(cls))
        rows = [row for row in samples.rows if int(row[0]) in own]
        out[cls.model_key] = SampleSet(list(samples.columns), rows, len(own) - len(rows))
    return out


def disk_to_device_samples(disk_dir: Path, sizes: Sequence[int], reps: Repeats, budget_s: float,
                           staging_pool, sync, device: str = "cuda") -> SampleSet:
    """Disk -> device along the runtime's path (runtime/tiers.py, TokenStore.read): the runtime's
    DiskFile reads past the page cache into a staging buffer of the runtime's pool (`staging_pool`,
    Kernels.staging_pool), which is copied to the device (non-blocking when the buffer is pinned),
    then `sync` waits for the copy. Wall clock from the read's start to the copy's completion;
    median of the calls per size, like every other probe. Only on CUDA machines."""
    import torch

    sizes = [max(PAGE, -(-s // PAGE) * PAGE) for s in sizes]
    largest = max(sizes)
    pool = staging_pool(3)
    rows: list[list[float]] = []
    start = time.perf_counter()
    f = None
    path = probe_path(disk_dir, "device")
    try:
        f = _disk_file_class()(path, largest)
        f.write(0, torch.full((largest,), 7, dtype=torch.uint8), 0)
        for size in sizes:
            if rows and time.perf_counter() - start > budget_s:
                break
            times = []
            for i in range(reps.warmup + max(reps.min_reps, 3)):
                t0 = time.perf_counter()
                raw = f.read_into(0, size, pool)
                raw.to(device, non_blocking=raw.is_pinned())
                sync()
                if i >= reps.warmup:
                    times.append(time.perf_counter() - t0)
            rows.append([size, statistics.median(times)])
    except OSError as exc:
        raise KvplanError(f"disk->device probe on {disk_dir} failed: {exc.strerror or exc}") from exc
    finally:
        if f is not None:
            f.close()
        _remove(path)
    return SampleSet(["bytes", "time_s"], rows, len(sizes) - len(rows))


SPREAD_MIN_BYTES = 1 << 20  # below this a read's time is mostly latency, not the disk's rate
SPREAD_QUANTILES = (0.1, 0.9)


def round_medians(timed: dict[int, tuple[list[float], list[float]]], before: dict[int, int],
                  round_index: int) -> list[list[float]]:
    """Rows [bytes, round, median read time] of the reads `disk_samples` appended to `timed` since
    `before` (size -> how many read times it held then)."""
    rows = []
    for size in sorted(timed):
        new = timed[size][1][before.get(size, 0):]
        if new:
            rows.append([size, round_index, statistics.median(new)])
    return rows


def time_spread(rows: Sequence[Sequence[float]]) -> dict[str, float | int | list[float]] | None:
    """How far the disk's rate moved between the profile's rounds: each size's per-round median read
    time over that size's median across rounds, pooled over sizes of at least SPREAD_MIN_BYTES; the
    SPREAD_QUANTILES of those ratios are the "fast" and "slow" multipliers of a transfer's time
    (clamped to <= 1 and >= 1). None with fewer than two rounds."""
    by_size: dict[float, list[float]] = {}
    for size, _round, t in rows:
        if size >= SPREAD_MIN_BYTES and t > 0:
            by_size.setdefault(size, []).append(t)
    ratios = [t / statistics.median(ts) for ts in by_size.values() if len(ts) >= 2 for t in ts]
    if len(ratios) < 2:
        return None
    cuts = statistics.quantiles(ratios, n=100, method="inclusive")  # percentiles: cuts[p - 1] = the p-th
    lo, hi = (cuts[round(100 * q) - 1] for q in SPREAD_QUANTILES)
    return {"fast": round(min(1.0, lo), 4), "slow": round(max(1.0, hi), 4),
            "quantiles": list(SPREAD_QUANTILES), "ratios": len(ratios)}
