"""The `kvplan` command: a click group; each subcommand lives in its own module."""

from __future__ import annotations

import errno
import sys

import click

from planner import __version__
from planner.errors import KvplanError


class KvplanGroup(click.Group):
    """Turns every user-facing failure into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KvplanError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing was written.", err=True)
            ctx.exit(130)
        except MemoryError:
            click.echo("Error: out of host memory; try fewer --layers or a smaller --batch", err=True)
            ctx.exit(2)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                click.echo("Error: disk full; nothing was written", err=True)
            else:
                click.echo(f"Error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            ctx.exit(2)


@click.group(cls=KvplanGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kvplan")
def main() -> None:
    """Plan and run LLM decoding when the KV cache does not fit in accelerator memory.

    \b
    Typical session:
      kvplan demo                          all of the below on a small model
      kvplan profile --quick               measure this machine
      kvplan solve --model llama-13b --seq 8192
      kvplan execute plans/<plan>.json     run it, measured vs predicted
      kvplan report --models ... --gpus ...
    """


def _register() -> None:
    # One module per subcommand; each exposes `command`.
    from planner.cli import (
        demo_cmd,
        execute_cmd,
        explain_cmd,
        gpus_cmd,
        models_cmd,
        predict_cmd,
        profile_cmd,
        report_cmd,
        solve_cmd,
    )

    for module in (models_cmd, gpus_cmd, profile_cmd, predict_cmd, solve_cmd, explain_cmd, execute_cmd, report_cmd,
                   demo_cmd):
        main.add_command(module.command)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
