"""`kvplan explain` (placeholder while it is being built; replaced by its real module)."""

from __future__ import annotations

import click

from planner.errors import KvplanError


@click.command("explain", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """(not built yet)"""
    raise KvplanError("'kvplan explain' is not built yet")
