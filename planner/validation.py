"""One way to check a file against its schema: a pydantic model validates types, ranges and
cross-field rules, and the first problem becomes a one-line KvplanError naming the file and field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from planner.errors import KvplanError
from planner.units import escape_name

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for file schemas: no type coercion ("768" is not 768, 12.5 is not a layer count), unknown
    fields kept (newer writers may add some), and the model is frozen once read."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)


def field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def validate(schema: type[M], data: Any, origin: str, what: str) -> M:
    """`data` checked against `schema`; a KvplanError naming `origin`, the field and the problem."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise KvplanError(f"{escape_name(origin)}: {describe(exc.errors()[0], what)}") from None


def describe(err: Any, what: str) -> str:
    """One pydantic error as words: "plan field inputs.seq: Input should be ... (got '8')", or a schema's
    own rule (a PydanticCustomError of type "kvplan") as its message after the section it came from."""
    loc = tuple(err.get("loc", ()))
    msg = escape_name(err.get("msg", "invalid"))
    if err.get("type") == "kvplan":  # a schema's own rule: its message names the fields
        return f"{what} {field_path(loc)}: {msg}" if loc else f"{what}: {msg}"
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {escape_name(repr(value))[:60]})"
    return f"{what} field {field_path(loc)}: {msg}{shown}"
