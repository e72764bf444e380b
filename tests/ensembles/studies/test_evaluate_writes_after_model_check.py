"""``evaluate`` checks that every run's model can be built before it writes anything: a model it
cannot build leaves no cached labels or logits behind, in that run or in any other of the call."""
import pytest

from tiny_runs import SMALL_BUDGETS, copy_run, files_under, invoke, one_error_line, train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("trained") / "run")


def evaluate(*runs):
    return invoke("evaluate", *runs, *SMALL_BUDGETS["evaluate"], "--device", "cpu")


@pytest.mark.parametrize("changes, message", [
    ({"model": "no_such_model"}, "unknown model 'no_such_model'"),
    ({"model_args": {"width": 4, "depth": 3}}, "has no option 'depth'"),
    ({"model_args": {"width": "4"}}, "width='4' is text"),
    ({"model_args": {"width": 0}}, "width must be an integer >= 1"),  # passes the type check, fails in the builder
])
def test_a_model_that_cannot_be_built_leaves_no_cache_behind(trained, tmp_path, changes, message):
    run = copy_run(trained, tmp_path / "run", **changes)
    before = files_under(run)
    line = one_error_line(evaluate(run))
    assert message in line
    assert files_under(run) == before and not (run / "logits").exists()


def test_no_run_of_the_call_is_written_to_when_one_model_cannot_be_built(trained, tmp_path):
    good = copy_run(trained, tmp_path / "good")
    bad = copy_run(trained, tmp_path / "bad", model="no_such_model")
    one_error_line(evaluate(good, bad))
    assert not (good / "logits").exists() and not (bad / "logits").exists()
    assert evaluate(good).exit_code == 0 and (good / "logits").is_dir()
