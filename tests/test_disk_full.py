"""A full disk while writing a plan or a report: one line, exit 2, and no file left behind."""

import errno
import os

import pytest


@pytest.fixture
def full_disk(monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("planner.jsonio.os.fsync", no_space)


def test_solve_on_a_full_disk(run_cli, tmp_path, full_disk):
    out = tmp_path / "plans" / "plan.json"
    result = run_cli("solve", "--model", "opt-6.7b", "--seq", "1024", "--gpu", "a100-40g-pcie", "-o", out)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == f"Error: disk full while writing {out}; nothing was written"
    assert list((tmp_path / "plans").iterdir()) == []  # neither the plan nor a temporary file


def test_report_on_a_full_disk(run_cli, tmp_path, full_disk):
    out = tmp_path / "report"
    result = run_cli("report", "--models", "opt-6.7b", "--gpus", "a100-40g-pcie", "--seqs", "1024", "--batches", "8",
                     "--strategies", "auto", "--jobs", "1", "-o", out)
    assert result.exit_code == 2
    assert "disk full while writing" in result.stderr
    assert "Traceback" not in result.output
    leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert leftovers == []
