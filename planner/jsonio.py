"""Reading and writing JSON files: atomic writes and one-line errors for bad files."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from planner.errors import KvplanError


def dumps_canonical(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, fixed indentation, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename, so a crash,
    Ctrl-C or a full disk never leaves a half-written file behind. The file gets the usual
    permissions (0666 less the umask) rather than mkstemp's 0600."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KvplanError(f"cannot create folder {folder}: {exc.strerror}") from exc
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise KvplanError(f"cannot write in {folder}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(exc, OSError):
            if exc.errno == errno.ENOSPC:
                raise KvplanError(f"disk full while writing {path}; nothing was written") from exc
            raise KvplanError(f"cannot write {path}: {exc.strerror}") from exc
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, dumps_canonical(obj))


def read_json(path: str | Path, what: str) -> Any:
    """Load a JSON file, turning every way it can be bad into a one-line KvplanError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise KvplanError(f"{what} file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise KvplanError(f"{what} path is a folder, not a file: {path}") from exc
    except UnicodeDecodeError as exc:
        raise KvplanError(f"{what} file {path} is not UTF-8 text") from exc
    except OSError as exc:
        raise KvplanError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    if not text.strip():
        raise KvplanError(f"{what} file {path} is empty")
    try:
        return json.loads(text)  # NaN and Infinity parse: each file's schema refuses them naming the field
    except json.JSONDecodeError as exc:
        hint = "" if text.rstrip().endswith(("}", "]")) else " (truncated?)"
        raise KvplanError(
            f"{what} file {path} is not valid JSON{hint}: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError:
        raise KvplanError(f"{what} file {path} is nested too deeply to be a {what}") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise KvplanError(f"{what} file {path} is not usable JSON: {exc}") from None
