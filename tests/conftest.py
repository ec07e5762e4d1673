import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from planner.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def run_cli():
    """Run `kvplan ARGS...` in-process; returns the click Result (exit_code, stdout, stderr)."""

    def _run(*args: str, input: str | None = None):
        runner = CliRunner()
        return runner.invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)

    return _run


@pytest.fixture
def write_json(tmp_path):
    def _write(name: str, obj) -> Path:
        path = tmp_path / name
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return path

    return _write
