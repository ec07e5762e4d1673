"""The report's command-line values parsed into typed values: contexts, batches, strategies, prices,
models and GPUs. Every bad value is a one-line KvplanError naming the option."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from planner.errors import KvplanError
from planner.models import CATALOG, ModelConfig, load_model
from planner.profile import Profile, datasheet_names, find_local_profile, load_profile
from planner.report.grid import STRATEGY_CHOICES, GpuEntry
from planner.search.request import MAX_SEQ
from planner.units import escape_name, parse_tokens

MAX_RANGE_CONTEXTS = 10_000
ALL = "all"


def split_values(values: Iterable[str]) -> list[str]:
    """Options may be repeated and comma-separated: ('a,b', 'c') -> ['a', 'b', 'c']."""
    out: list[str] = []
    for value in values:
        out.extend(part.strip() for part in str(value).split(",") if part.strip())
    return out


def parse_seq_spec(spec: str) -> list[int]:
    """One --seqs item: a token count ('4096', '4k'; planner.units.parse_tokens) or a range
    START:STOP:STEP, inclusive of STOP when the steps land on it. STEP is 'xF' (multiply by F >= 2)
    or '+N' / 'N' (add N)."""
    parts = spec.split(":")
    if len(parts) == 1:
        return [parse_tokens(spec, "--seqs", MAX_SEQ)]
    if len(parts) != 3:
        raise KvplanError(f"--seqs: range '{escape_name(spec)}' must be START:STOP:STEP, e.g. 1024:32768:x2 "
                          "or 1k:8k:+1k")
    where = f"--seqs range '{escape_name(spec)}'"
    start, stop = parse_tokens(parts[0], where, MAX_SEQ), parse_tokens(parts[1], where, MAX_SEQ)
    step = parts[2].strip().lower()
    if stop < start:
        raise KvplanError(f"--seqs: range '{spec}' is empty (STOP {stop} is below START {start})")
    out: list[int] = []
    if step.startswith(("x", "*")):
        factor_text = step[1:]
        if not factor_text.isdigit() or int(factor_text) < 2:
            raise KvplanError(f"--seqs: range '{spec}': multiplicative step must be x2, x4, ... (got '{parts[2]}')")
        value = start
        while value <= stop and len(out) <= MAX_RANGE_CONTEXTS:
            out.append(value)
            value *= int(factor_text)
    else:
        if step.lstrip("+") in ("0", ""):
            raise KvplanError(f"--seqs: range '{spec}': step must be positive")
        add = parse_tokens(step.lstrip("+"), f"{where} step", MAX_SEQ)
        if (stop - start) // add + 1 > MAX_RANGE_CONTEXTS:
            raise KvplanError(f"--seqs: range '{spec}' expands to more than {MAX_RANGE_CONTEXTS:,} contexts; "
                              "use a coarser step")
        out = list(range(start, stop + 1, add))
    if len(out) > MAX_RANGE_CONTEXTS:
        raise KvplanError(f"--seqs: range '{spec}' expands to more than {MAX_RANGE_CONTEXTS:,} contexts; "
                          "use a coarser step")
    return out


def parse_seqs(values: Iterable[str]) -> list[int]:
    items = split_values(values)
    if not items:
        raise KvplanError("--seqs is empty: give contexts such as 1k,4k,16k or a range 1024:32768:x2")
    seqs: set[int] = set()
    for item in items:
        seqs.update(parse_seq_spec(item))
    return sorted(seqs)


def parse_batches(values: Iterable[str]) -> list[int | None]:
    """'auto' (the planner picks; None in a SolveRequest) or positive integers; order kept, duplicates dropped."""
    from planner.search.request import MAX_BATCH

    out: list[int | None] = []
    for item in split_values(values) or ["auto"]:
        value = None if item.lower() == "auto" else (int(item) if item.isdigit() else -1)
        if value is not None and not 1 <= value <= MAX_BATCH:
            raise KvplanError(f"--batches: '{escape_name(item)}' is not a positive batch size in [1, {MAX_BATCH:,}] "
                              "or 'auto'")
        if value not in out:
            out.append(value)
    return out


def parse_strategies(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in split_values(values) or list(STRATEGY_CHOICES):
        key = item.lower()
        if key not in STRATEGY_CHOICES:
            raise KvplanError(f"--strategies: unknown strategy '{escape_name(item)}' "
                              f"(known: {', '.join(STRATEGY_CHOICES)})")
        if key not in out:
            out.append(key)
    return out


def parse_prices(values: Iterable[str], gpu_names: Sequence[str]) -> dict[str, float]:
    """--price NAME=USD_PER_HOUR for GPUs in the grid."""
    prices: dict[str, float] = {}
    for item in split_values(values):
        name, sep, amount = item.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise KvplanError(f"--price: '{escape_name(item)}' must be GPU=USD_PER_HOUR, e.g. a100-40g-pcie=1.8")
        try:
            usd = float(amount)
        except ValueError as exc:
            raise KvplanError(f"--price: '{escape_name(amount)}' in '{escape_name(item)}' is not a number of "
                              "dollars per hour") from exc
        if not math.isfinite(usd) or usd <= 0:
            raise KvplanError(f"--price: {escape_name(item)}: the price must be a positive number of dollars per hour")
        if name not in gpu_names:
            raise KvplanError(f"--price: '{escape_name(name)}' is not one of the GPUs in this sweep "
                              f"({', '.join(gpu_names)})")
        prices[name] = usd
    return prices


def resolve_models(values: Iterable[str]) -> list[ModelConfig]:
    """Names from `kvplan models`, config.json paths, or 'all' (every catalog model)."""
    names = split_values(values)
    if not names:
        raise KvplanError("--models is empty: give one or more names from 'kvplan models', config.json paths, "
                          "or 'all'")
    expanded: list[str] = []
    for name in names:
        expanded.extend(sorted(CATALOG) if name.lower() == ALL else [name])
    out: list[ModelConfig] = []
    for name in expanded:
        model = load_model(name)
        same = [m for m in out if m.name == model.name]
        if same and same[0] != model:
            raise KvplanError(f"two different models are both named '{escape_name(model.name)}' in --models; "
                              "put each config.json in a folder of its own name")
        if not same:
            out.append(model)
    return out


def _profiles(values: Iterable[str], profile_files: Iterable[str | Path]) -> list[tuple[str, Profile]]:
    pairs: list[tuple[str, Profile]] = []
    for name in split_values(values):
        if name.lower() == "local":
            path = find_local_profile()
            if path is None:
                raise KvplanError("--gpus local: this machine has no measured profile yet; run 'kvplan profile' first")
            pairs.append(("local", load_profile(path=path)))
        elif name.lower() == ALL:
            pairs.extend(("datasheet", load_profile(gpu=gpu)) for gpu in datasheet_names())
        else:
            pairs.append(("datasheet", load_profile(gpu=name)))
    pairs.extend((str(path), load_profile(path=path)) for path in profile_files)
    return pairs


def resolve_gpus(values: Iterable[str], profile_files: Iterable[str | Path] = ()) -> list[GpuEntry]:
    """Datasheet GPUs by name ('all': every datasheet profile), 'local' for this machine's measured
    profile, and --profile files."""
    pairs = _profiles(values, profile_files)
    if not pairs:
        raise KvplanError(f"--gpus is empty: give names from 'kvplan gpus' ({', '.join(datasheet_names())}), "
                          "'all', 'local', or --profile FILE")
    entries: list[GpuEntry] = []
    for source, profile in pairs:
        name = profile.name.strip().lower()
        same = [e for e in entries if e.name == name]
        if same and same[0].profile_hash == profile.profile_hash:
            continue
        if same:
            raise KvplanError(f"two different profiles are both named '{escape_name(name)}' "
                              f"({same[0].source} and {source})")
        entries.append(GpuEntry(name=name, source=source, profile_hash=profile.profile_hash, data=profile.data,
                                host_is_device=profile.host_is_device))
    return entries
