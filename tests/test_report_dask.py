"""`kvplan report --dask ADDRESS` against a real (local, in-process) Dask cluster."""

from __future__ import annotations

import pytest

distributed = pytest.importorskip("distributed", reason="needs dask[distributed]: pip install 'kvplan[dask]'")

GRID = ("--models", "opt-125m", "--gpus", "t4,l4", "--seqs", "1k,4k", "--strategies", "auto,transfer", "--gen", "32")


def test_dask_cluster_gives_the_same_table_as_local_solving(run_cli, tmp_path):
    local = run_cli("report", *GRID, "--jobs", "1", "-o", tmp_path / "local")
    assert local.exit_code == 0, local.output
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        result = run_cli("report", *GRID, "--dask", cluster.scheduler_address, "-o", tmp_path / "dask")
    assert result.exit_code == 0, result.output
    assert f"on Dask cluster {cluster.scheduler_address}" in result.stderr
    assert (tmp_path / "dask" / "results.csv").read_bytes() == (tmp_path / "local" / "results.csv").read_bytes()


def test_unreachable_dask_scheduler_is_a_one_line_error(run_cli, tmp_path):
    # Port 9 (discard) on loopback: nothing listens there, so the connection is refused at once.
    result = run_cli("report", *GRID, "--dask", "tcp://127.0.0.1:9", "-o", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
