"""execute's machine check prices its disk read by the read's own disk class (planner/disk_classes.py):
a layer's weights by link.disk_read_weights, a K,V or X piece by link.disk_read."""

from __future__ import annotations

import copy
import json

import pytest

from planner.costmodel import CostModel
from planner.disk_classes import KV_READ, WEIGHTS_READ
from planner.plan import plan_from_dict
from planner.profile import profile_from_dict
from runtime.check import Where, _disk_probe, disk_piece
from runtime.probe_kernels import runtime_kernels
from tests.test_execute_cli import DISK, RAM, tiny_plan


def _with_slow_weight_reads(path) -> CostModel:
    """The profile with a link.disk_read_weights model twice as slow per byte as its link.disk_read."""
    data = json.loads(path.read_text())
    slow = copy.deepcopy(data["cost_models"]["link.disk_read"])
    slow["linear"] = [c * 2 for c in slow["linear"]]
    data["cost_models"]["link.disk_read_weights"] = slow
    data["name"] = "weights-read-twice-as-slow"
    return CostModel(profile_from_dict(data))


def test_the_largest_read_and_its_class():
    with_weights = plan_from_dict(tiny_plan(weight_placement=DISK))  # one tiny layer's weights > a K,V piece
    without = plan_from_dict(tiny_plan(weight_placement=RAM))
    size, cls = disk_piece(with_weights, with_weights.decisions, 31)
    assert cls is WEIGHTS_READ and size > disk_piece(without, without.decisions, 31)[0]
    assert disk_piece(without, without.decisions, 31)[1] is KV_READ


@pytest.mark.parametrize("cls", [KV_READ, WEIGHTS_READ], ids=lambda c: c.name)
def test_the_disk_probe_is_priced_by_its_class(cls, local_profile_path, tmp_path):
    cost = _with_slow_weight_reads(local_profile_path)
    probe = _disk_probe(cost, 1 << 20, cls, tmp_path, Where("cpu", "cpu", "device"), runtime_kernels())
    assert probe.predicted_s == pytest.approx(cost.transfer_s(cls.name, 1 << 20), rel=1e-9)
    other = WEIGHTS_READ if cls is KV_READ else KV_READ
    assert probe.predicted_s != pytest.approx(cost.transfer_s(other.name, 1 << 20), rel=0.2)
