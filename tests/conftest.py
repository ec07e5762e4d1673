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


@pytest.fixture(scope="session")
def local_profile_path(tmp_path_factory) -> Path:
    """A real measured profile of this machine (`kvplan profile --smoke`, a few seconds), made once
    per test session in a temporary folder (disk probe included); returns the profile's path."""
    folder = tmp_path_factory.mktemp("local-profile")
    (folder / "disk").mkdir()
    path = folder / "local-test-cpu.json"
    result = CliRunner().invoke(
        main, ["profile", "--smoke", "--cpu", "--disk-dir", str(folder / "disk"), "-o", str(path)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def one_torch_thread():
    """Tiny matrices: one torch intra-op thread (on a shared, loaded machine more threads only wait for
    each other). A module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch  # only the modules that run the runtime pay for the import

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
