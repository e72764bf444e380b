"""A sweep's [report] group_by may name the construction (a grouping the report derives from run.json)."""
import json

import pytest

import results_fixtures as fixtures
from ensembles.studies import sweep
from landscape.errors import InputError

FILE = """
[base]
dataset = "digits"
model = "small_cnn"
epochs = 4
[[grid]]
seeds = [[13, 17]]
[[grid]]
spawn_epoch = [1]
seeds = [[13, 17]]
[report]
group_by = {group_by}
"""


def test_construction_is_accepted_and_handed_to_the_report_without_touching_run_json(tmp_path):
    plan = sweep.parse_sweep(FILE.format(group_by='"construction"'))
    assert plan.group_by == ("construction",)
    paths = [fixtures.make_run(tmp_path / name, method="sgd", seeds=(13, 17), **settings)
             for name, settings in (("deep", {}), ("spawned", {"spawn_epoch": 1}))]
    before = [(path / "run.json").read_text() for path in paths]
    assert sweep.group_runs(plan, paths) == "construction"
    assert sweep.group_runs(plan, paths, ["construction", "width"]) == "construction,width"
    assert [(path / "run.json").read_text() for path in paths] == before
    assert "sweep_group" not in json.loads(before[0])
    # axes alone are stored as before
    assert sweep.group_runs(plan, paths, ["spawn_epoch", "width"]) == "sweep_group"


def test_an_unknown_grouping_is_refused_naming_construction_among_the_choices():
    with pytest.raises(InputError, match=r"unknown axis 'constructions'.*construction"):
        sweep.parse_sweep(FILE.format(group_by='"constructions"'))
    with pytest.raises(InputError, match="cannot group by 'shape'.*construction"):
        sweep.group_runs(sweep.parse_sweep(FILE.format(group_by='"construction"')), [], ["shape"])
