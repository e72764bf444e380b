"""How the members a results row's scope reads stopped training to a criterion
(ensembles.runs.run_folder.stopping): a member's own stop epoch and whether it met the criterion;
for an ensemble, sub-ensemble or pair the largest stop epoch and whether all met it; nothing for a
run (or a member) recorded without a criterion, so older run folders read as before."""
from ensembles.runs.run_folder import stopping


def _config(*members) -> dict:
    return {"members": [{"index": i, "status": "done", **entry} for i, entry in enumerate(members)]}


def test_a_members_scope_has_its_own_stop_epoch_and_an_ensembles_the_largest_and_all():
    config = _config({"stop_epoch": 12, "reached_criterion": True}, {"stop_epoch": 40, "reached_criterion": False},
                     {"stop_epoch": 30, "reached_criterion": True})
    assert stopping(config, "member-0") == {"stop_epoch": 12, "reached_criterion": True}
    assert stopping(config, "member-1") == {"stop_epoch": 40, "reached_criterion": False}
    assert stopping(config, "ensemble") == {"stop_epoch": 40, "reached_criterion": False}
    assert stopping(config, "pair-0-2") == {"stop_epoch": 30, "reached_criterion": True}
    assert stopping(config, "ensemble@2") == {"stop_epoch": 40, "reached_criterion": False}


def test_a_failed_member_is_not_part_of_the_ensemble():
    config = _config({"stop_epoch": 12, "reached_criterion": True}, {"stop_epoch": 20, "reached_criterion": True})
    config["members"].append({"index": 2, "status": "failed", "diverged_epoch": 3})
    assert stopping(config, "ensemble") == {"stop_epoch": 20, "reached_criterion": True}


def test_runs_and_members_recorded_without_a_criterion_have_nothing():
    assert stopping(_config({"epoch": 200}, {"epoch": 200}), "ensemble") == {}
    assert stopping(_config({"epoch": 200}), "member-0") == {}
    assert stopping({"members": []}, "ensemble") == {}
    mixed = _config({"stop_epoch": 12, "reached_criterion": True}, {"epoch": 200})  # an imported member, say
    assert stopping(mixed, "member-0") == {"stop_epoch": 12, "reached_criterion": True}
    assert stopping(mixed, "ensemble") == {}  # never a value that holds for some of its members only
