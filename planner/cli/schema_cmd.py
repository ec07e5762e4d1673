"""`kvplan schema plan|run`: the JSON Schema of a plan file or a run record, generated from the pydantic
models that check those files on load (planner/schemas.py). docs/plan.schema.json and
docs/run.schema.json are this command's output."""

from __future__ import annotations

from pathlib import Path

import click

from planner.cli.output import OutputPath, check_outputs, echo_json
from planner.jsonio import write_json_atomic
from planner.schemas import SCHEMAS, json_schema


@click.command("schema")
@click.argument("kind", type=click.Choice(sorted(SCHEMAS)))
@click.option("-o", "--output", type=OutputPath(dir_okay=False, path_type=Path), default=None,
              help="Write the schema to this file instead of printing it.")
def command(kind: str, output: Path | None) -> None:
    """Print the JSON Schema of KIND: 'plan' (kvplan solve's output) or 'run' (kvplan execute --out)."""
    schema = json_schema(kind)
    if output is None:
        echo_json(schema)
        return
    check_outputs([output], [])
    write_json_atomic(output, schema)
    click.echo(f"wrote {output}")
