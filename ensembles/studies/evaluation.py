"""Evaluating ensembles: cached member logits -> metrics -> rows of the run's results table.

``sharpdiv evaluate`` and ``sharpdiv robustness`` are thin layers over :func:`evaluate_runs` and
:func:`evaluate_robustness`. Every number comes from a function of :mod:`landscape` applied to the
member logits ``L`` ``(M, N, C)`` and labels ``y`` ``(N,)`` of one data slice (the convention of
every metric in :mod:`landscape`), which
:mod:`ensembles.runs.logit_cache` computes once per slice and member and keeps in the run folder.

Rows follow ``docs/results-table.md``. For each slice (``val``, clean ``test``, and each corruption
at each severity of the ``-C`` data, split ``test``):

- ``member-<i>``: ``accuracy``, ``nll``, ``brier``, ``ece`` (setting ``n_bins``) and the reliability
  bins ``reliability/{confidence,accuracy,count}`` (settings ``bin``, ``n_bins``);
- ``ensemble`` and ``ensemble@<k>`` (the first ``k`` members, ``k = 2..M``), each with setting
  ``combine``: ``accuracy`` (``1 − E_ens``), ``nll``, ``ece``, ``brier`` of the combined
  log-probabilities (not for ``combine="vote"``, where they are undefined), ``eir``,
  ``mean_member_error``, and with two or more members ``der``, ``disagreement`` (mean ``Dis(i, j)``
  over pairs), ``variance/logits``, ``variance/probs`` and ``kl``; the reliability bins for
  ``ensemble`` only.

A slice whose rows are all stored (current weights, same settings) is skipped without touching its
logits; rows are written only after every slice of every run succeeded, so bad input leaves no
partial rows (the logit cache keeps what was computed, so a re-run resumes).
"""
from __future__ import annotations

import difflib
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ensembles.data import datasets
from ensembles.runs import run_folder
from ensembles.runs.logit_cache import DataSlice, dataset_label, slice_logits
from ensembles.studies import options
from landscape import calibration, diversity, ensemble
from landscape._checks import positive_int
from landscape.errors import InputError

__all__ = [
    "Evaluation",
    "RobustnessEvaluation",
    "evaluate_robustness",
    "evaluate_runs",
    "evaluation_slices",
    "missing_corruptions_note",
    "planned_measurements",
    "slice_rows",
]

COMBINE_MODES = ensemble.COMBINE_MODES
MEMBER_METRICS = ("accuracy", "nll", "ece", "brier")
# NLL, ECE and Brier need probabilities, which a majority vote does not give.
CALIBRATION_METRICS = ("nll", "ece", "brier")
GAIN_METRICS = ("eir", "mean_member_error")
DIVERSITY_METRICS = ("der", "disagreement", "variance/logits", "variance/probs", "kl")
RELIABILITY_METRICS = ("reliability/confidence", "reliability/accuracy", "reliability/count")
ROBUSTNESS_METRICS = ("robust_accuracy", "clean_accuracy")
NORMS = {"linf": "Linf", "l2": "L2"}
#: Clean splits evaluated by default; ``train`` is added by asking (``--splits train,val,test``).
CLEAN_SPLITS = ("val", "test")


def _clean_splits(splits: str | Sequence[str]) -> list[str]:
    names = splits.split(",") if isinstance(splits, str) else list(splits)
    chosen = list(dict.fromkeys(str(name).strip() for name in names if str(name).strip()))
    unknown = [name for name in chosen if name not in datasets.SPLITS]
    if unknown or not chosen:
        raise InputError(f"--splits {','.join(chosen) or '(none)'}: give a comma list of "
                         f"{', '.join(datasets.SPLITS)}, e.g. --splits train,val,test")
    return chosen


# ----------------------------------------------------------------------------------------------
# slices


def evaluation_slices(dataset: str, root=None, corruptions: str | Sequence[str] = "all",
                      severities: Iterable[int] = datasets.SEVERITIES,
                      splits: str | Sequence[str] = CLEAN_SPLITS) -> list[DataSlice]:
    """The clean ``splits`` (``val``, ``test``; ``train`` too when asked, without augmentation, for
    the train error of a generalization gap), then each corruption at each severity.

    ``corruptions`` is ``"all"`` (the 15 standard corruptions present on disk; none when the ``-C``
    folder is missing, which :func:`missing_corruptions_note` explains), ``"none"``, or a list (or
    comma text) of names, which may include the four extra ones. Named corruptions are checked
    against the disk here, before any forward pass: an unknown name, a missing ``-C`` folder or a
    corruption absent from it is an :class:`InputError` saying how to get the data.
    """
    label = dataset_label(dataset)
    severities = sorted(set(severities))
    for severity in severities:
        datasets.check_severity(severity, example="--severities 1-5")
    if isinstance(corruptions, str) and corruptions in ("all", "none"):
        chosen = ([] if corruptions == "none" else
                  [c for c in datasets.available_corruptions(label, root) if c in datasets.STANDARD_CORRUPTIONS])
    else:
        names = corruptions.split(",") if isinstance(corruptions, str) else corruptions
        chosen = list(dict.fromkeys(name.strip() for name in names if name.strip()))
        if not chosen:
            raise InputError("no corruptions named; pass all, none or a comma list such as fog,contrast")
        _check_named_corruptions(label, root, chosen)
    slices = [DataSlice(label, split) for split in _clean_splits(splits)]
    slices += [DataSlice(label, "test", corruption, int(severity)) for corruption in chosen for severity in severities]
    return slices


def _how_to_get_corruptions(label: str, root, folder: Path) -> str:
    """How to put a ``-C`` dataset at ``folder``: download the published one (CIFAR, TinyImageNet)
    or write it with ``sharpdiv corrupt`` (every dataset; the only way for digits and folders)."""
    kind, _, _ = datasets._parse_name(label)
    clean = "" if root is None else f" --data-path {root}"   # where `corrupt` reads the clean test split
    write = f"`sharpdiv corrupt --data {label}{clean} --out {folder.parent}`"
    if kind in ("digits", "folder"):
        return f"write it with {write}"
    return f"{datasets._WHERE_TO_GET[f'{kind}-c']} and extract it into {folder.parent} (or write one with {write})"


def _check_named_corruptions(label: str, root, chosen: Sequence[str]) -> None:
    known = datasets.STANDARD_CORRUPTIONS + datasets.EXTRA_CORRUPTIONS
    folder = datasets.corrupted_folder(label, root)
    present = datasets.available_corruptions(label, root)
    for name in chosen:
        if name not in known and name not in present:
            close = difflib.get_close_matches(name, known + tuple(present), n=1)
            guess = f" (did you mean {close[0]}?)" if close else ""
            raise InputError(f"unknown corruption {name!r}{guess}; choose from {', '.join(known)}")
    if not folder.is_dir():
        raise InputError(f"--corruptions {','.join(chosen)} needs the corrupted data, but {folder} does not exist; "
                         f"{_how_to_get_corruptions(label, root, folder)}, pass --data-path to the folder holding it, "
                         "or use --corruptions none")
    absent = [name for name in chosen if name not in present]
    if absent:
        raise InputError(f"corruption{'s' * (len(absent) > 1)} {', '.join(absent)} not found in {folder} "
                         f"(present: {', '.join(present) or 'none'}); leave it out or add it: "
                         f"{_how_to_get_corruptions(label, root, folder)}")


def missing_corruptions_note(dataset: str, root=None) -> str | None:
    """Why ``corruptions="all"`` finds no corrupted slice of ``dataset`` (no ``-C`` folder, or none of
    the 15 standard corruptions in it) and how to get them; None when it finds some."""
    label = dataset_label(dataset)
    folder = datasets.corrupted_folder(label, root)
    present = datasets.available_corruptions(label, root)
    if any(name in datasets.STANDARD_CORRUPTIONS for name in present):
        return None
    if not folder.is_dir():
        found = f"no corrupted data: {folder} does not exist"
    else:
        found = (f"{folder} holds none of the 15 standard corruptions (present: {', '.join(present) or 'none'}; "
                 "name them with --corruptions)")
    return (f"{found}, so only val and test were evaluated. For the corrupted slices "
            f"{_how_to_get_corruptions(label, root, folder)}, then evaluate again "
            "(--corruptions none skips them quietly)")


# ----------------------------------------------------------------------------------------------
# rows of one slice


def _settings(scope: str, metric: str, combine: str, n_bins: int, bin: int | None = None) -> dict:
    """The settings a row carries: ``combine`` on ensemble scopes, ``n_bins`` on ECE and the
    reliability bins, ``bin`` on the bins."""
    settings = {"combine": combine} if scope.startswith("ensemble") else {}
    if metric == "ece" or metric.startswith("reliability/"):
        settings["n_bins"] = n_bins
    if bin is not None:
        settings["bin"] = bin
    return settings


def _ensemble_metrics(n_members: int, combine: str) -> tuple[str, ...]:
    metrics = ("accuracy",) + (() if combine == "vote" else CALIBRATION_METRICS) + GAIN_METRICS
    return metrics + (DIVERSITY_METRICS if n_members >= 2 else ())


def _ensemble_scopes(n_members: int) -> list[tuple[str, int]]:
    """``(scope, number of leading members)``: the whole ensemble and the first ``k``, ``k = 2..M``."""
    return [("ensemble", n_members)] + [(f"ensemble@{k}", k) for k in range(2, n_members + 1)]


def planned_measurements(member_indices: Sequence[int], combine: str = "probs",
                         n_bins: int = 15) -> list[tuple[str, str, dict]]:
    """``(scope, metric, settings)`` of every row :func:`slice_rows` writes for one slice."""
    planned = []
    for index in member_indices:
        scope = f"member-{index}"
        planned += [(scope, metric, _settings(scope, metric, combine, n_bins)) for metric in MEMBER_METRICS]
        planned += [(scope, metric, _settings(scope, metric, combine, n_bins, b))
                    for b in range(n_bins) for metric in RELIABILITY_METRICS]
    for scope, k in _ensemble_scopes(len(member_indices)):
        planned += [(scope, metric, _settings(scope, metric, combine, n_bins)) for metric in _ensemble_metrics(k, combine)]
    if combine != "vote":
        planned += [("ensemble", metric, _settings("ensemble", metric, combine, n_bins, b))
                    for b in range(n_bins) for metric in RELIABILITY_METRICS]
    return planned


def _probability_metrics(log_probabilities: torch.Tensor, labels: torch.Tensor, n_bins: int) -> dict[str, torch.Tensor]:
    return {"nll": calibration.negative_log_likelihood(log_probabilities, labels),
            "ece": calibration.expected_calibration_error(log_probabilities, labels, n_bins),
            "brier": calibration.brier_score(log_probabilities, labels)}


def _reliability(bins: calibration.ReliabilityBins) -> dict[str, torch.Tensor]:
    return {"reliability/confidence": bins.confidence, "reliability/accuracy": bins.accuracy,
            "reliability/count": bins.count}


def _ensemble_values(member_logits: torch.Tensor, labels: torch.Tensor, combine: str,
                     n_bins: int) -> dict[str, torch.Tensor]:
    values = {"accuracy": 1 - ensemble.ensemble_error(member_logits, labels, combine)}
    if combine != "vote":
        values.update(_probability_metrics(ensemble.combine(member_logits, combine), labels, n_bins))
    with warnings.catch_warnings():
        # Ē = 0 makes EIR and DER undefined: the row says NaN, which is the result.
        warnings.simplefilter("ignore", ensemble.UndefinedMetricWarning)
        values["eir"] = ensemble.ensemble_improvement_rate(member_logits, labels, combine)
        values["mean_member_error"] = ensemble.mean_member_error(member_logits, labels)
        n_members = member_logits.shape[0]
        if n_members >= 2:
            values["der"] = diversity.disagreement_error_ratio(member_logits, labels)
            # Dis has a zero diagonal, so the mean over the M(M−1) ordered pairs is sum / (M(M−1)).
            values["disagreement"] = diversity.disagreement_matrix(member_logits).sum() / (n_members * (n_members - 1))
            values["variance/logits"] = diversity.prediction_variance(member_logits, "logits")
            values["variance/probs"] = diversity.prediction_variance(member_logits, "probs")
            values["kl"] = diversity.pairwise_kl(member_logits)
    return values


def slice_rows(member_logits: torch.Tensor, labels: torch.Tensor, data_slice: DataSlice, *,
               member_indices: Sequence[int] | None = None, combine: str = "probs",
               n_bins: int = 15) -> list[dict]:
    """The results rows of one slice (see the module docstring) from its member logits ``(M, N, C)``
    and labels ``(N,)``; ``member_indices`` name the members (default ``0..M−1``)."""
    ensemble.validate_member_logits(member_logits, labels)
    if combine not in COMBINE_MODES:
        raise InputError(f"combine must be one of {', '.join(COMBINE_MODES)}, got {combine!r}")
    member_indices = list(range(member_logits.shape[0])) if member_indices is None else list(member_indices)
    if len(member_indices) != member_logits.shape[0]:
        raise InputError(f"{len(member_indices)} member indices for {member_logits.shape[0]} members' logits")
    where = data_slice.columns()

    def rows(scope: str, values: Mapping[str, torch.Tensor]) -> list[dict]:
        out = []
        for metric, value in values.items():
            if value.dim() == 0:
                out.append({"scope": scope, "metric": metric, "value": float(value), **where,
                            **_settings(scope, metric, combine, n_bins)})
            else:  # reliability bins: one row per bin
                out += [{"scope": scope, "metric": metric, "value": float(v), **where,
                         **_settings(scope, metric, combine, n_bins, b)} for b, v in enumerate(value.tolist())]
        return out

    written = []
    for index, logits in zip(member_indices, member_logits):
        values = {"accuracy": calibration.accuracy(logits, labels), **_probability_metrics(logits, labels, n_bins)}
        written += rows(f"member-{index}", {**values, **_reliability(calibration.reliability_bins(logits, labels, n_bins))})
    for scope, k in _ensemble_scopes(len(member_indices)):
        written += rows(scope, _ensemble_values(member_logits[:k], labels, combine, n_bins))
    if combine != "vote":
        combined = ensemble.combine(member_logits, combine)
        written += rows("ensemble", _reliability(calibration.reliability_bins(combined, labels, n_bins)))
    return written


# ----------------------------------------------------------------------------------------------
# what the results table already holds


def _slice_value(value):
    """Slice and setting values as comparable Python scalars (parquet gives NaN for None, floats for ints)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _measurement(scope: str, metric: str, where: Mapping, settings_text: str) -> tuple:
    """One measurement's identity: scope, metric, slice, settings and the data's fingerprint
    (``where["data"]``; rows without one match nothing measured now)."""
    return (scope, metric, *(_slice_value(where.get(c)) for c in ("dataset", "split", "corruption", "severity")),
            settings_text, _slice_value(where.get("data")))


def _stored_measurements(table: pd.DataFrame) -> dict[tuple, float]:
    """``measurement -> value`` of the current rows (the lookup of :func:`run_folder.find_results`,
    done once per run instead of once per row)."""
    if table.empty:
        return {}
    columns = ["scope", "metric", "dataset", "split", "corruption", "severity", "settings", "data", "value"]
    table = table.reindex(columns=columns)
    return {_measurement(scope, metric, {"dataset": d, "split": s, "corruption": c, "severity": v, "data": data},
                         settings): value
            for scope, metric, d, s, c, v, settings, data, value in table.itertuples(index=False)}


def _row_measurement(row: Mapping) -> tuple:
    return _measurement(row["scope"], row["metric"], row, run_folder.canonical_settings(run_folder.settings_of(row)))


# ----------------------------------------------------------------------------------------------
# evaluating runs


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_runs` did for one run: the slices, which needed forward passes
    (``computed``), which were measured from cached logits (``from_cache``), which had all rows
    stored already (``stored``); the new ``rows``; and ``values[slice name][metric]`` for the summary
    (ensemble rows; ``member_accuracy`` is the mean member accuracy); ``notes`` say what was left
    out and why (no corrupted data on disk)."""

    path: Path
    dataset: str
    combine: str
    n_bins: int
    n_members: int
    slices: tuple[DataSlice, ...]
    computed: tuple[str, ...]
    from_cache: tuple[str, ...]
    stored: tuple[str, ...]
    rows: list[dict] = field(repr=False)
    values: dict[str, dict[str, float]] = field(repr=False)
    notes: tuple[str, ...] = ()
    #: member index -> digest of the weights file the new rows' logits came from
    weights: dict[int, str] = field(default_factory=dict, repr=False)

    def summary(self) -> list[str]:
        """A compact text summary: ensemble and mean member accuracy, EIR, DER and ECE on the
        validation and test data, and on the corrupted data per severity (mean over corruptions)."""
        lines = [f"{self.path.name}: {self.dataset}, {self.n_members} members, combine={self.combine}; "
                 f"{len(self.slices)} slices: {len(self.computed)} needed forward passes, "
                 f"{len(self.from_cache)} came from cached logits, {len(self.stored)} were already stored"]
        columns = ("accuracy", "member_accuracy", "eir", "der", "ece")
        lines.append(f"  {'slice':<14}{'accuracy':>10}{'members':>10}{'EIR':>9}{'DER':>9}{'ECE':>9}")

        def line(label: str, values: Mapping[str, float]) -> str:
            cells = [f"{100 * values.get(c, math.nan):9.2f}%" for c in columns[:2]]
            cells += [f"{values.get(c, math.nan):9.4f}" if c in values else f"{'n/a':>9}" for c in columns[2:]]
            return f"  {label:<14}" + "".join(cells)

        for data_slice in self.slices:
            if not data_slice.corrupted:
                lines.append(line(f"{data_slice.split} (ID)", self.values[data_slice.name]))
        corrupted = [s for s in self.slices if s.corrupted]
        for severity in sorted({s.severity for s in corrupted}):
            at = [self.values[s.name] for s in corrupted if s.severity == severity]
            mean = {c: float(np.mean([v[c] for v in at])) for c in columns if all(c in v for v in at)}
            lines.append(line(f"OOD severity {severity}", mean))
        if corrupted:
            names = sorted({s.corruption for s in corrupted})
            lines.append(f"  (OOD rows: mean over {len(names)} corruptions: {', '.join(names)})")
        if self.combine == "vote":
            lines.append("  combine=vote gives classes, not probabilities: NLL, ECE and Brier are not defined for "
                         "the ensemble and no such rows were written")
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def _summary_values(measurements: Mapping[tuple, float], where: Mapping, member_indices: Sequence[int],
                    combine: str, n_bins: int) -> dict[str, float]:
    values = {}
    for metric in ("accuracy", "eir", "der", "ece"):
        key = _measurement("ensemble", metric, where,
                           run_folder.canonical_settings(_settings("ensemble", metric, combine, n_bins)))
        if key in measurements:
            values[metric] = float(measurements[key])
    member = [measurements.get(_measurement(f"member-{i}", "accuracy", where, run_folder.canonical_settings({})))
              for i in member_indices]
    if member and all(value is not None for value in member):
        values["member_accuracy"] = float(np.mean(member))
    return values


class _MemberLoader:
    """Loads a run's members on first use only: a fully cached evaluation never builds a model."""

    def __init__(self, path: Path, device):
        self.path, self.device, self.run = path, device, None

    def __call__(self, indices: Sequence[int]) -> list[torch.nn.Module]:
        if self.run is None:
            self.run = run_folder.load_run(self.path, self.device)
        return [self.run.members[self.run.member_indices.index(i)] for i in indices]

    def digest(self, index: int) -> str:
        """The digest of member ``index``'s weights file as it was loaded."""
        return self.run.weights[index]


def _same_weights(path: Path, seen: dict[int, str], new: Mapping[int, str]) -> None:
    """Rows of one call must all come from the same weights of each member."""
    for index, digest in new.items():
        if seen.setdefault(index, digest) != digest:
            raise InputError(f"{run_folder.member_path(path, index)} changed during the evaluation (its cached logits "
                             "come from other weights than those just read); no rows were stored: run it again")


def _fits(check, value) -> bool:
    try:
        check(value)
    except (InputError, TypeError):
        return False
    return True


def _severities(value) -> bool:
    """Whether ``value`` is a non-empty list of severities (:func:`ensembles.data.datasets.check_severity`)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return False
    chosen = list(value)
    return bool(chosen) and all(_fits(datasets.check_severity, severity) for severity in chosen)


#: Every option of :func:`evaluate_runs` and the rule its value must meet
#: (:mod:`ensembles.studies.options`); which corruptions a ``-C`` folder holds is checked on the disk.
OPTION_RULES = {
    "corruptions": options.names("corruption names, or all or none"),
    "severities": options.Rule(lambda value: _severities(value), "a list of integers in 1..5, each a corruption severity"),
    "combine": options.choice(COMBINE_MODES),
    "n_bins": options.whole(1),
    "batch_size": options.whole(1),
    "splits": options.Rule(lambda value: _fits(_clean_splits, value),
                           f"a list of clean splits ({', '.join(datasets.SPLITS)}) or a comma-separated text"),
}


@dataclass(frozen=True)
class _Plan:
    """One run's members, classes, slices and notes, settled before any forward pass."""

    path: Path
    members: list[int]
    n_classes: int
    slices: list[DataSlice]
    notes: tuple[str, ...]
    normalize: bool = True  # False: the members normalise [0, 1] inputs themselves
    root: str | None = None  # the data root this run is evaluated on


def _plan_run(path: Path, *, dataset, root, corruptions, severities, splits=CLEAN_SPLITS) -> _Plan:
    config = run_folder.read_config(path)
    members = run_folder.finished_members(config)
    if not members:
        raise InputError(f"{path} has no finished members yet; train or import them first")
    # A model that cannot be built (unknown, untrusted code, bad model_args) is refused before any write.
    run_folder.check_member_model(config, source=str(path / run_folder.RUN_FILE))
    label = dataset or config["dataset"]
    root, root_note = run_folder.data_root(config, root, dataset)
    slices = evaluation_slices(label, root, corruptions, severities, splits)
    note = missing_corruptions_note(label, root) if isinstance(corruptions, str) and corruptions == "all" else None
    notes = tuple(text for text in (root_note, note) if text)
    return _Plan(path, members, int(config["num_classes"]), slices, notes, run_folder.data_normalized(config), root)


def _evaluate_run(plan: _Plan, *, root, combine, n_bins, batch_size, device, progress) -> Evaluation:
    path, members, n_classes, slices = plan.path, plan.members, plan.n_classes, plan.slices
    measurements = _stored_measurements(run_folder.read_results(path, current_only=True))
    load_members = _MemberLoader(path, device)
    computed, from_cache, stored, rows, values, weights = [], [], [], [], {}, {}
    for data_slice in tqdm(slices, desc=path.name, unit="slice", file=sys.stderr, disable=not progress, leave=False):
        where = {**data_slice.columns(), "data": data_slice.digest(root)}
        planned = [_measurement(scope, metric, where, run_folder.canonical_settings(settings))
                   for scope, metric, settings in planned_measurements(members, combine, n_bins)]
        if all(key in measurements for key in planned):
            stored.append(data_slice.name)
            values[data_slice.name] = _summary_values(measurements, where, members, combine, n_bins)
            continue
        logits = slice_logits(path, data_slice, members=members, n_classes=n_classes, load_members=load_members,
                              root=root, batch_size=batch_size, device=device, member_weights=load_members.digest,
                              normalize=plan.normalize)
        _same_weights(path, weights, logits.weights)
        (computed if logits.computed else from_cache).append(data_slice.name)
        where["data"] = logits.data
        new = [{**row, "data": logits.data}
               for row in slice_rows(logits.member_logits, logits.labels, data_slice, member_indices=members,
                                     combine=combine, n_bins=n_bins)]
        rows += new
        values[data_slice.name] = _summary_values({_row_measurement(r): r["value"] for r in new}, where,
                                                  members, combine, n_bins)
    return Evaluation(path=path, dataset=slices[0].dataset, combine=combine, n_bins=n_bins, n_members=len(members),
                      slices=tuple(slices), computed=tuple(computed), from_cache=tuple(from_cache),
                      stored=tuple(stored), rows=rows, values=values, notes=plan.notes, weights=weights)


def evaluate_runs(paths: Iterable[str | os.PathLike], *, dataset: str | None = None, root=None,
                  corruptions: str | Sequence[str] = "all", severities: Iterable[int] = datasets.SEVERITIES,
                  combine: str = "probs", n_bins: int = 15, batch_size: int = 512,
                  device: torch.device | str = "cpu", progress: bool = False,
                  splits: str | Sequence[str] = CLEAN_SPLITS) -> list[Evaluation]:
    """Evaluate each run on every slice and append the new rows to its results table.

    ``dataset`` defaults to each run's own, and ``root`` to the data root the run was trained on
    (run.json ``data_path``) when it still exists, else the default. Member logits come from the cache (computed once, see
    :mod:`ensembles.runs.logit_cache`); slices whose rows are all stored are skipped. Every run's slices are
    checked (severities, corruption names, the ``-C`` folder) before the first forward pass, and rows
    are written only after every run succeeded.
    """
    options.check_options(OPTION_RULES, {name: value for name, value in locals().items() if name in OPTION_RULES},
                          str)
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no run folders given; pass at least one RUN folder")
    plans = [_plan_run(path, dataset=dataset, root=root, corruptions=corruptions, severities=severities,
                       splits=splits) for path in paths]
    evaluations = [_evaluate_run(plan, root=plan.root, combine=combine, n_bins=n_bins, batch_size=batch_size,
                                 device=device, progress=progress) for plan in plans]
    for evaluation in evaluations:
        if evaluation.rows:
            run_folder.append_results(evaluation.path, evaluation.rows, weights=evaluation.weights)
    return evaluations


# ----------------------------------------------------------------------------------------------
# adversarial robustness


@dataclass(frozen=True)
class RobustnessEvaluation:
    """What :func:`evaluate_robustness` did for one run: ``values[scope] = (clean, robust)`` accuracy,
    ``attacked`` the scopes attacked now (the others were stored), and the new ``rows``."""

    path: Path
    dataset: str
    split: str
    settings: dict
    values: dict[str, tuple[float, float]]
    attacked: tuple[str, ...]
    rows: list[dict] = field(repr=False)
    #: member index -> digest of the weights file as it was read for the attacks
    weights: dict[int, str] = field(default_factory=dict, repr=False)

    def summary(self) -> list[str]:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        lines = [f"{self.path.name}: {self.dataset} {self.split}, {settings}; "
                 f"{len(self.attacked)} of {len(self.values)} scopes attacked now, the rest were stored",
                 f"  {'scope':<12}{'clean':>9}{'robust':>9}"]
        lines += [f"  {scope:<12}{100 * clean:8.2f}%{100 * robust:8.2f}%" for scope, (clean, robust) in self.values.items()]
        return lines


def _robustness_settings(norm: str, eps: float, attacks: Sequence[str], n_examples: int, seed: int) -> dict:
    return {"norm": norm, "eps": float(eps), "attacks": ",".join(attacks), "n_examples": int(n_examples),
            "seed": int(seed)}


def _robustness_run(path: Path, *, norm, eps, n_examples, attacks, split, batch_size, seed, combine, dataset,
                    root, device, progress) -> RobustnessEvaluation:
    from landscape.robustness import EnsembleClassifier, Normalized, check_radius, robust_accuracy

    config = run_folder.read_config(path)
    members = run_folder.finished_members(config)
    if not members:
        raise InputError(f"{path} has no finished members yet; train or import them first")
    label = dataset_label(dataset or config["dataset"])
    where = {**DataSlice(label, split).columns(), "data": DataSlice(label, split).digest(root)}
    base = _robustness_settings(norm, eps, attacks, n_examples, seed)
    scopes = {f"member-{i}": base for i in members}
    scopes["ensemble"] = {**base, "combine": combine}
    measurements = _stored_measurements(run_folder.read_results(path, current_only=True))

    def stored(scope: str, metric: str):
        return measurements.get(_measurement(scope, metric, where, run_folder.canonical_settings(scopes[scope])))

    values = {scope: (stored(scope, "clean_accuracy"), stored(scope, "robust_accuracy")) for scope in scopes}
    missing = [scope for scope, pair in values.items() if None in pair]
    rows, weights = [], {}
    if missing:
        images = DataSlice(label, split).load(root, normalize=False)  # attacks work in [0, 1]
        if images.num_classes != int(config["num_classes"]):
            raise InputError(f"{label} has {images.num_classes} classes but the run's members have "
                             f"{config['num_classes']}; evaluate on the dataset the run was trained for (--data)")
        if n_examples > len(images):
            raise InputError(f"--n-examples {n_examples} but {label} {split} has {len(images)} images; "
                             f"choose at most {len(images)}")
        # The first n examples of the split, as AutoAttack's own evaluations take them.
        inputs = images.batch(np.arange(n_examples), device=device)
        labels = images.targets[:n_examples].to(device)
        check_radius(NORMS[norm], eps, inputs[0].numel())  # the l2 bound needs the image size
        run = run_folder.load_run(path, device)
        weights = run.weights
        # members that normalise their inputs themselves take the [0, 1] images as they are
        mean, std = (images.mean, images.std) if run_folder.data_normalized(config) else (None, None)
        for scope in tqdm(missing, desc=path.name, unit="model", file=sys.stderr, disable=not progress, leave=False):
            if scope == "ensemble":
                model = EnsembleClassifier(run.members, combine=combine, mean=mean, std=std)
            else:
                member = run.members[run.member_indices.index(int(scope.split("-")[1]))]
                model = Normalized(member, mean, std)
            result = robust_accuracy(model, inputs, labels, eps=eps, norm=NORMS[norm], attacks=tuple(attacks),
                                     batch_size=batch_size, seed=seed)
            values[scope] = (result.clean_accuracy, result.robust_accuracy)
            rows += [{"scope": scope, "metric": metric, "value": value, **where, **scopes[scope]}
                     for metric, value in zip(ROBUSTNESS_METRICS, (result.robust_accuracy, result.clean_accuracy))]
    return RobustnessEvaluation(path=path, dataset=label, split=split, settings={**base, "combine": combine},
                                values={s: (float(c), float(r)) for s, (c, r) in values.items()},
                                attacked=tuple(missing), rows=rows, weights=weights)


def evaluate_robustness(paths: Iterable[str | os.PathLike], *, norm: str, eps: float, n_examples: int,
                        attacks: Sequence[str] = ("apgd-ce", "apgd-t"), split: str = "test", batch_size: int = 250,
                        seed: int = 0, combine: str = "probs", dataset: str | None = None, root=None,
                        device: torch.device | str = "cpu", progress: bool = False) -> list[RobustnessEvaluation]:
    """AutoAttack robust and clean accuracy (:func:`landscape.robustness.robust_accuracy`) of each
    member and of the ensemble as one model (its combined log-probabilities), on the first
    ``n_examples`` images of ``split`` in ``[0, 1]``, the normalization inside the attacked model.

    ``norm`` is ``"linf"`` or ``"l2"``; ``eps`` at most 1 for linf and ``√(C·H·W)`` for l2 (the
    input box's diameter, :func:`landscape.robustness.check_radius`). Scopes whose rows are stored are
    not attacked again; rows are written after every run succeeded.
    """
    from landscape.robustness import check_attacks, check_radius

    if norm not in NORMS:
        raise InputError(f"norm must be linf or l2, got {norm!r}")
    check_radius(NORMS[norm], eps)
    positive_int("n_examples", n_examples)
    if combine not in ("probs", "logits"):
        raise InputError(f"combine must be probs or logits for an attacked ensemble, got {combine!r} "
                         "(a majority vote has no gradient to attack)")
    attacks = [attacks] if isinstance(attacks, str) else list(attacks)
    check_attacks(attacks)
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no run folders given; pass at least one RUN folder")
    evaluations = [_robustness_run(path, norm=norm, eps=eps, n_examples=n_examples, attacks=attacks, split=split,
                                   batch_size=batch_size, seed=seed, combine=combine, dataset=dataset, root=root,
                                   device=device, progress=progress) for path in paths]
    for evaluation in evaluations:
        if evaluation.rows:
            run_folder.append_results(evaluation.path, evaluation.rows, weights=evaluation.weights)
    return evaluations
