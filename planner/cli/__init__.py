"""The `kvplan` command: a click group; each subcommand lives in its own module."""

from __future__ import annotations

import errno
import sys

import click

from planner import __version__
from planner.cli import signals
from planner.errors import KvplanError
from planner.units import escape_name


def error_line(message: object) -> None:
    """`Error: ...` on stderr as one line: control characters in the message (a model name with a
    newline, a file name with an escape sequence) are printed escaped, so no input can add a line."""
    click.echo(f"Error: {escape_name(message)}", err=True)


# click >= 8.2 raises this for a group called without a command; its message is the whole help text
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class KvplanGroup(click.Group):
    """Turns every user-facing failure into one line on stderr and exit code 2, never a traceback;
    Ctrl-C and SIGTERM into the line "interrupted" and exit 130 / 143 (planner/cli/signals.py)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra):
        signals.install()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as exc:  # plain `kvplan`: the help, as click prints it
            exc.show()
            code = exc.exit_code
        except click.ClickException as exc:  # a usage error: one line, with where to find the usage
            hint = f" (see '{exc.ctx.command_path} --help')" if getattr(exc, "ctx", None) else ""
            error_line(exc.format_message() + hint)
            code = exc.exit_code
        except click.Abort as exc:  # Ctrl-C while click parsed the command line
            code = signals.report(exc.__cause__ or exc.__context__)
        except KeyboardInterrupt as exc:
            code = signals.report(exc)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KvplanError as exc:
            error_line(exc)
            ctx.exit(2)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the `finally` blocks have cleaned up
            ctx.exit(signals.report(exc))
        except MemoryError:
            error_line("out of host memory; try fewer --layers or a smaller --batch")
            ctx.exit(2)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                error_line("disk full; nothing was written")
            else:
                error_line(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
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
        export_cmd,
        gpus_cmd,
        models_cmd,
        predict_cmd,
        profile_cmd,
        report_cmd,
        schema_cmd,
        solve_cmd,
    )

    for module in (models_cmd, gpus_cmd, profile_cmd, predict_cmd, solve_cmd, explain_cmd, execute_cmd, report_cmd,
                   demo_cmd, schema_cmd, export_cmd):
        main.add_command(module.command)


# The subcommands' imports take about a second (pandas, matplotlib, torch): SIGTERM's handler goes in
# first, and an interrupt while they load is the one line, not a traceback.
signals.install()
with signals.startup_guard():
    _register()
