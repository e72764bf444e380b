"""Cached logits are checked like cached labels: each member file records a digest of its tensor
(bound to the weights and data it came from), and logits edited after they were written are
computed again, with a warning naming the file, instead of being reported."""
import shutil
import warnings

import pytest
import safetensors
import safetensors.torch
import torch

from ensembles.runs import logit_cache, run_folder
from tiny_runs import SMALL_BUDGETS, invoke, train_tiny

TEST = logit_cache.DataSlice("digits", "test")


@pytest.fixture
def evaluated(tmp_path):
    run = train_tiny(tmp_path / "run")
    assert invoke("evaluate", run, *SMALL_BUDGETS["evaluate"], "--device", "cpu").exit_code == 0
    return run


def cached_file(run):
    return logit_cache.member_logits_path(run, TEST, 0)


def rewrite(file, change, drop=()):
    """Write ``change(logits)`` into the cache file, keeping its metadata (less the keys ``drop``)."""
    with safetensors.safe_open(str(file), framework="pt") as stored:
        metadata, logits = stored.metadata(), stored.get_tensor("logits")
    safetensors.torch.save_file({"logits": change(logits)}, str(file),
                                metadata={k: v for k, v in metadata.items() if k not in drop})
    return logits


def member_accuracy(run) -> float:
    rows = run_folder.read_results(run, current_only=True)
    chosen = rows[(rows["scope"] == "member-0") & (rows["metric"] == "accuracy") & (rows["split"] == "test")]
    assert len(chosen) == 1
    return float(chosen["value"].iloc[0])


def test_negated_logits_are_recomputed_not_reported(evaluated):
    honest = member_accuracy(evaluated)
    original = rewrite(cached_file(evaluated), torch.neg)
    shutil.rmtree(evaluated / "results")  # so evaluate reads the cache again
    result = invoke("evaluate", evaluated, *SMALL_BUDGETS["evaluate"], "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"note: cache file {cached_file(evaluated)} holds logits that differ" in result.stderr
    assert member_accuracy(evaluated) == honest
    with safetensors.safe_open(str(cached_file(evaluated)), framework="pt") as stored:
        assert torch.equal(stored.get_tensor("logits"), original)  # computed again and cached again


def test_the_cache_reads_its_own_logits_silently_and_warns_on_edited_ones(evaluated):
    n_samples, n_classes = logit_cache.read_cached_labels(evaluated, TEST).numel(), 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stored = logit_cache.read_cached_logits(evaluated, TEST, 0, n_samples, n_classes)
    assert stored is not None
    rewrite(cached_file(evaluated), lambda logits: logits.index_fill(0, torch.tensor([0]), 3.0))
    with pytest.warns(UserWarning, match="edited after it was written"):
        assert logit_cache.read_cached_logits(evaluated, TEST, 0, n_samples, n_classes) is None


def test_a_file_without_a_logits_digest_is_computed_once_more(evaluated):
    """Caches written before the digest existed hold no record of their logits: they are computed
    again (silently: nothing was edited) and rewritten with one."""
    n_samples = logit_cache.read_cached_labels(evaluated, TEST).numel()
    rewrite(cached_file(evaluated), lambda logits: logits, drop=("logits",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert logit_cache.read_cached_logits(evaluated, TEST, 0, n_samples, 10) is None
    shutil.rmtree(evaluated / "results")
    assert invoke("evaluate", evaluated, *SMALL_BUDGETS["evaluate"], "--device", "cpu").exit_code == 0
    with safetensors.safe_open(str(cached_file(evaluated)), framework="pt") as stored:
        assert "logits" in stored.metadata()
