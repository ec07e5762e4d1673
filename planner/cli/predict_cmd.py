"""`kvplan predict` (placeholder while it is being built; replaced by its real module)."""

from __future__ import annotations

import click

from planner.errors import KvplanError


@click.command("predict", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """(not built yet)"""
    raise KvplanError("'kvplan predict' is not built yet")
