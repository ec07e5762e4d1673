"""`kvplan report` under signals and failures, through real processes: workers die with their parent,
Ctrl-C while workers start is one line and exit 130, and a report folder appears whole or not at all."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
# 12 cells with the planner choosing the batch: long enough (seconds per worker) to signal mid-solve.
GRID = ("--models", "opt-1.3b,llama-2-7b", "--gpus", "t4,l4,a100-40g-pcie", "--seqs", "4k,32k", "--gen", "32")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for child processes")


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path))
    return subprocess.Popen([sys.executable, "-c", "from planner.cli import main; main()", "report", *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _children(pid: int) -> set[int]:
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for_children(proc: subprocess.Popen, n: int, timeout_s: float = 60) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kids = _children(proc.pid)
        if len(kids) >= n:
            return kids
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"the report did not start {n} child processes in {timeout_s} s")


def test_workers_exit_when_the_report_process_is_killed(tmp_path):
    proc = _start(tmp_path, *GRID, "--jobs", "2", "-o", "out")
    kids = _wait_for_children(proc, 3)  # the resource tracker and two workers
    time.sleep(1.0)  # let the workers get into solving
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "worker or tracker processes outlived the report"
    assert not (tmp_path / "out").exists()


def test_ctrl_c_while_workers_start_is_one_line_and_exit_130(tmp_path):
    proc = _start(tmp_path, *GRID, "--jobs", "2", "-o", "out")
    kids = _wait_for_children(proc, 3)  # the tracker and two workers, which are still importing
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0].lower(), stderr
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no report folder, no temporary sibling


BASE = ("report", "--models", "opt-125m", "--gpus", "t4", "--batches", "8", "--jobs", "1")
SMALL = (*BASE, "--seqs", "1k,2k")


def test_an_interrupted_write_leaves_no_half_folder_and_keeps_the_earlier_report(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run_cli(*SMALL, "-o", out).exit_code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("planner.report.write.render_html", interrupted)  # after results.csv and the figures
    result = run_cli(*BASE, "--seqs", "1k", "-o", out)
    assert result.exit_code == 130
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the earlier report, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary sibling left
    monkeypatch.undo()
    result = run_cli(*BASE, "--seqs", "1k", "-o", tmp_path / "new")
    assert result.exit_code == 0 and len(pd.read_csv(tmp_path / "new" / "results.csv")) == 5


def test_a_full_disk_midway_leaves_no_folder(run_cli, tmp_path, monkeypatch):
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 2:  # results.csv and a figure are written, then the disk fills up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("planner.jsonio.os.fsync", fsync)
    result = run_cli(*SMALL, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "disk full" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_folder_with_other_files_is_refused_and_left_alone(run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run_cli(*SMALL, "-o", tmp_path)
    assert result.exit_code == 2 and "notes.txt, which is not part of a kvplan report" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
