"""Gather what the run folders' results tables hold, and read per-run quantities from it.

Reports never measure anything: every number here is a stored row (``docs/results-table.md``),
selected, and averaged over members, corruption slices or runs.

:func:`collect` joins the current (non-stale) rows of many run folders with the settings in
each folder's ``run.json``, into one long table:

- the results columns keep their names (``run``, ``scope``, ``metric``, ``value``, ``rho`` ...);
- every run.json field is added as ``run.<field>``: ``run.method``, ``run.rho`` (the training
  radius, not the ``rho`` of a sharpness row), ``run.width``, ``run.sparsity``, ``run.dataset``,
  ``run.model``. The prefix is always there, so a column never changes name with the metrics a
  run happens to have. ``model_args`` entries are lifted to ``run.<key>`` (``run.width``) unless
  run.json has the same key at the top level; lists become comma text (``run.seeds`` = "13,17,27");
  ``run.n_members`` is the number of members run.json lists;
- a run trained to a criterion (``run.until_train_loss``, ``run.until_train_accuracy``) also has
  ``run.stop_epoch`` and ``run.reached_criterion`` of the members each row's scope reads (a member's
  own; for an ensemble or pair the largest stop epoch, and whether all met the criterion:
  :func:`ensembles.runs.run_folder.stopping`), and in :func:`run_table` ``run.n_reached`` of its
  ``run.n_stopped`` finished members met it; other runs have none of these columns filled;
- ``path`` is the run folder as given, ``run_label`` a short unique name for legends and files.

The readers below turn that table into one number per run. Their conventions:

- clean test data (``on="test"``) is ``split == "test"`` with no corruption; corrupted data
  (``on="ood"``) is every row with a corruption, averaged over the corruption × severity slices;
- ``scope="members"`` averages ``member-<i>`` rows over members within each slice first; the
  mean is NaN (and :func:`missing_measurements` names the run) unless every member the run lists
  (``run.n_members``) has a finite value there: a mean over some members is not the run's value;
- a NaN anywhere in what is averaged makes the average NaN (never a mean over the rest);
- ensemble rows are those of the chosen ``combine`` mode (rows without a ``combine`` column count
  for every mode);
- when one quantity was stored under several settings (two bin counts, two batch sizes), the
  newest measurement is used, for all members of a run alike (their mean is one measurement's).
"""
from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ensembles.runs import run_folder
from ensembles.studies.measurements import FISHER_QUANTILES
from landscape.errors import InputError

__all__ = [
    "DIVERSITY_METRICS",
    "Missing",
    "ASCENTS",
    "SharpnessSpec",
    "ascent_of",
    "collect",
    "combined_grouping",
    "comparable_grouping",
    "criterion_counts",
    "diversity_metric",
    "group_labels",
    "group_order",
    "missing_measurements",
    "mixed_settings",
    "partial_corruptions",
    "per_corruption",
    "per_run",
    "run_table",
    "sharpness_per_run",
    "barriers_per_run",
    "with_alignment",
    "tradeoff_points",
]

RUN_PREFIX = "run."
_NOT_SETTINGS = {"format", "members", "versions", "created", "model_args", "results_only"}
_SLICE = ["dataset", "split", "corruption", "severity"]
UNSET = "(unset)"

#: ``--diversity`` names and the results-table metric each reads (variance is paper eq. 1 on logits).
DIVERSITY_METRICS = {"der": "der", "variance": "variance/logits", "kl": "kl",
                     "variance/logits": "variance/logits", "variance/probs": "variance/probs",
                     "disagreement": "disagreement"}
_DIVERSITY_NAMES = {"der": "DER", "variance/logits": "prediction variance (logits)",
                    "variance/probs": "prediction variance (probabilities)", "kl": "pairwise KL (nats)",
                    "disagreement": "disagreement"}


# ----------------------------------------------------------------------------------------------
# run folders and their settings


def _text(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _settings(config: dict) -> dict:
    config = {**config, **run_folder.legacy_asam_scale(config)}
    flat = {key: _text(value) for key, value in config.items() if key not in _NOT_SETTINGS}
    for key, value in (config.get("model_args") or {}).items():
        flat.setdefault(key, _text(value))  # a top-level field wins over the model's argument
    flat["n_members"] = len(config.get("members", []))
    stopped = [member for member in config.get("members", []) if member.get("status") == "done"
               and member.get("reached_criterion") is not None]
    if stopped:
        flat.update(run_folder.stopping(config, "ensemble"), n_stopped=len(stopped),
                    n_reached=sum(bool(member["reached_criterion"]) for member in stopped))
    return {RUN_PREFIX + key: value for key, value in flat.items()}


def _unique_paths(paths: Iterable) -> list[Path]:
    seen, unique = set(), []
    for path in paths:
        path = Path(path)
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    if not unique:
        raise InputError("no run folders given; pass at least one RUN folder")
    return unique


def _labels(paths: Sequence[Path]) -> list[str]:
    """The shortest trailing part of each path that tells the runs apart (the folder name usually)."""
    for depth in range(1, max(len(p.resolve().parts) for p in paths) + 1):
        labels = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def run_table(paths: Iterable) -> pd.DataFrame:
    """One row per run folder: ``path``, ``run_label`` and the flattened run.json (``run.<field>``)."""
    paths = _unique_paths(paths)
    rows = [{"path": str(path), **_settings(run_folder.read_config(path))} for path in paths]
    table = pd.DataFrame(rows)
    table.insert(1, "run_label", _labels(paths))
    return table


def collect(paths: Iterable, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The current results rows of every run folder, with that run's settings as ``run.*`` columns.

    Stale rows (written for member weights that have since changed) are left out. ``runs`` may be
    passed when :func:`run_table` was already called for the same paths.
    """
    runs = run_table(paths) if runs is None else runs
    frames = []
    for path in runs["path"]:
        table = run_folder.read_results(path, current_only=True)
        if not table.empty:
            frames.append(table.drop(columns=["stale"]).assign(path=path))
    if not frames:
        return pd.DataFrame(columns=[*run_folder.RESULT_COLUMNS, *runs.columns])
    results = pd.concat(frames, ignore_index=True, sort=False)
    return _stopping_of_scopes(results.merge(runs, on="path", how="left", validate="many_to_one"))


def _stopping_of_scopes(results: pd.DataFrame) -> pd.DataFrame:
    """``run.stop_epoch`` and ``run.reached_criterion`` of each row's own scope (a member row: that
    member's, not the ensemble's); rows of runs without a criterion keep what they had (nothing)."""
    if RUN_PREFIX + "stop_epoch" not in results:
        return results
    configs = {path: run_folder.read_config(path) for path in results.loc[results[RUN_PREFIX + "stop_epoch"].notna(),
                                                                          "path"].unique()}
    scopes = {(path, scope): run_folder.stopping(configs[path], scope) if path in configs else {}
              for path, scope in results[["path", "scope"]].drop_duplicates().itertuples(index=False)}
    of_row = [scopes[key] for key in zip(results["path"], results["scope"])]
    results[RUN_PREFIX + "stop_epoch"] = [values.get("stop_epoch") for values in of_row]
    results[RUN_PREFIX + "reached_criterion"] = [values.get("reached_criterion") for values in of_row]
    return results


# ----------------------------------------------------------------------------------------------
# groups


def _plain_label(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNSET
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def group_labels(frame: pd.DataFrame, group_by: str) -> pd.Series:
    """The group each row belongs to, as text: the run.json field ``group_by`` (``method``, ``rho``,
    ``width``, ``sparsity`` ...; with or without the ``run.`` prefix). Runs without it get "(unset)"."""
    column = group_by if group_by.startswith(RUN_PREFIX) else RUN_PREFIX + group_by
    if column not in frame.columns:
        fields = sorted(c[len(RUN_PREFIX):] for c in frame.columns if c.startswith(RUN_PREFIX))
        raise InputError(f"no run has the field {group_by!r} in its run.json; group by one of: "
                         f"{', '.join(fields) or '(no fields)'}")
    return frame[column].map(_plain_label).rename(group_by)


def combined_grouping(runs: pd.DataFrame, group_by: str) -> tuple[pd.DataFrame, str]:
    """``runs`` grouped by a comma list of run.json fields (``"method,rho"``), as sweeps group: a
    field ``run.method,rho`` holding labels such as ``method=sam rho=0.05`` is added (in memory; the
    run folders are not touched) and its name returned. One field is returned unchanged."""
    fields = [field.strip().removeprefix(RUN_PREFIX) for field in group_by.split(",") if field.strip()]
    if not fields:
        raise InputError(f"--group-by {group_by!r} names no field; e.g. --group-by method or method,rho")
    if len(fields) == 1:
        return runs, fields[0]
    labels = [group_labels(runs, field).map(lambda value, field=field: f"{field}={value}") for field in fields]
    name = ",".join(fields)
    return runs.assign(**{RUN_PREFIX + name: pd.concat(labels, axis=1).agg(" ".join, axis=1).values}), name


def group_order(labels: Iterable[str]) -> list[str]:
    """Groups in reading order: numerically when every label is a number, else alphabetically with
    the numbers inside labels compared as numbers ("0.2 (cifar10)" before "10 (cifar10)"); "(unset)" last."""
    unique = [label for label in dict.fromkeys(labels) if label != UNSET]
    try:
        ordered = sorted(unique, key=float)
    except ValueError:
        ordered = sorted(unique, key=_natural_key)
    return ordered + ([UNSET] if UNSET in set(labels) else [])


def _natural_key(label: str) -> list:
    parts = re.split(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)", label)
    return [(0, float(part), "") if index % 2 else (1, 0.0, part) for index, part in enumerate(parts)]


#: run.json fields that make numbers incomparable: runs that differ in them are never pooled.
COMPARABILITY_FIELDS = ("dataset", "num_classes")


def comparable_grouping(runs: pd.DataFrame, group_by: str) -> tuple[pd.DataFrame, str, str | None]:
    """Groups that never pool runs on different data: ``(runs, group_by, note)``.

    When the runs span more than one dataset (or number of classes), each ``group_by`` group is
    split by it: ``runs`` gains the field ``"<group_by>, dataset"`` with labels such as
    ``sam (cifar10)``, that name is returned as the new ``group_by``, and ``note`` says so. Otherwise
    ``runs`` and ``group_by`` are returned unchanged with no note. ``runs`` is :func:`run_table`'s.
    """
    base = group_labels(runs, group_by)
    name = group_by.removeprefix(RUN_PREFIX)
    labels = {field: runs[RUN_PREFIX + field].map(_plain_label) for field in COMPARABILITY_FIELDS
              if field != name and RUN_PREFIX + field in runs.columns}
    spanned = [field for field, values in labels.items() if values.nunique() > 1]
    if "dataset" in labels and "num_classes" in spanned:
        # The class count adds nothing where each dataset has one: it only shows when it splits a dataset.
        per_dataset = pd.DataFrame(labels).groupby("dataset")["num_classes"].nunique()
        if (per_dataset <= 1).all() and "dataset" in spanned:
            spanned.remove("num_classes")
    if not spanned:
        return runs, group_by, None
    words = {"dataset": lambda value: value, "num_classes": lambda value: f"{value} classes"}
    extra = pd.concat([labels[field].map(words[field]) for field in spanned], axis=1)
    composite = base + " (" + extra.agg(", ".join, axis=1) + ")"
    split_name = ", ".join([name, *spanned])
    kinds = {"dataset": "datasets", "num_classes": "class counts"}
    spans = " and ".join(f"{labels[field].nunique()} {kinds[field]} ({', '.join(sorted(set(labels[field])))})"
                         for field in spanned)
    note = (f"the runs span {spans}: each {name} group is split by {' and '.join(spanned)} (grouped by "
            f"{split_name}), so numbers from different data are never averaged together; to report one "
            "dataset, pass only its runs")
    return runs.assign(**{RUN_PREFIX + split_name: composite.values}), split_name, note


def criterion_counts(runs: pd.DataFrame) -> list[str]:
    """How many models reached their training criterion, one sentence per criterion and cap among
    ``runs`` (:func:`run_table`): "5 of 6 models reached train loss <= 0.01 within 100 epochs";
    none when no run was trained to a criterion."""
    from ensembles.training.settings import criterion_text

    if RUN_PREFIX + "n_stopped" not in runs:
        return []
    trained = runs[runs[RUN_PREFIX + "n_stopped"].notna()]
    counts: dict[tuple, list[int]] = {}
    for _, run in trained.iterrows():
        key = tuple(None if pd.isna(run.get(RUN_PREFIX + name)) else run.get(RUN_PREFIX + name)
                    for name in ("until_train_loss", "until_train_accuracy", "epochs"))
        tally = counts.setdefault(key, [0, 0])
        tally[0] += int(run[RUN_PREFIX + "n_reached"])
        tally[1] += int(run[RUN_PREFIX + "n_stopped"])
    sentences = []
    for (loss, accuracy, cap), (reached, total) in counts.items():
        cap = "" if cap is None else f" within {int(cap)} epochs"
        sentences.append(f"{reached} of {total} models reached {criterion_text(loss, accuracy)}{cap}"
                         + ("" if reached == total else " (the others stopped at the cap; marked in the runs "
                                                       "table by run.n_reached and in the correlation figure by "
                                                       "hollow markers)"))
    return sentences


# ----------------------------------------------------------------------------------------------
# one number per run


#: Worst-case ascents a sharpness row may have been measured with (its ``ascent`` setting).
ASCENTS = ("apgd", "reference")
#: The sharpness metrics ``sharpdiv sharpness`` stores (they need a radius), and their form in messages.
SHARPNESS_PATTERN = r"sharpness(-error)?/(worst|average)/(l2|linf)/(adaptive|standard)"
SHARPNESS_FORM = "sharpness/<worst|average>/<l2|linf>/<adaptive|standard>"
#: Curvature metrics with one value per member (``sharpdiv hessian --trace``, ``sharpdiv fisher``);
#: eigenvalue and density rows are spectra, not one number, so they cannot stand in for sharpness.
CURVATURE_METRICS = ("hessian/trace", "fisher/mean", *(f"fisher/q{q}" for q in FISHER_QUANTILES), "fisher/max")


@dataclass(frozen=True)
class SharpnessSpec:
    """Which sharpness the reports read: ``METRIC@RHO``, e.g. ``sharpness/worst/l2/adaptive@0.5``.

    Sharpness metrics need the radius; curvature metrics (``hessian/trace``) take none. A worst case
    may name its ascent after the radius: ``@0.5:reference`` reads only the rows measured with the
    reference code's update (``sharpdiv sharpness --ascent reference``), plain ``@0.5`` (or
    ``@0.5:apgd``) only sharpdiv's APGD rows — rows without an ``ascent`` setting, which every row
    stored before the setting existed is. The two are never read into one table or figure.
    """

    metric: str
    rho: float | None
    ascent: str = "apgd"

    @classmethod
    def parse(cls, text: str) -> "SharpnessSpec":
        """``METRIC@RHO`` for a sharpness metric, plain ``METRIC`` for a curvature one; anything
        else is refused here, before a report is written around a metric no command stores."""
        metric, at, radius = str(text).partition("@")
        radius, colon, ascent = radius.partition(":")
        metric, radius, ascent = metric.strip(), radius.strip(), ascent.strip() or "apgd"
        if colon and ascent not in ASCENTS:
            raise InputError(f"--sharpness {text!r}: unknown ascent {ascent!r} after ':'; use "
                             f"{metric}@{radius}:reference (or :apgd, the default)")
        if colon and not re.fullmatch(r"sharpness(-error)?/worst/.*", metric):
            raise InputError(f"--sharpness {text!r}: only a worst case has an ascent; drop ':{ascent}'")
        if re.fullmatch(r"sharpness(-error)?/.*", metric):
            if not re.fullmatch(SHARPNESS_PATTERN, metric):
                raise InputError(f"--sharpness {text!r}: the metric is {SHARPNESS_FORM} "
                                 "(or sharpness-error/...), e.g. sharpness/worst/l2/adaptive@0.5")
            if not radius:
                raise InputError(f"--sharpness {text!r} names no radius; add it, e.g. {metric}@0.5")
            try:
                rho = float(radius)
            except ValueError:
                raise InputError(f"--sharpness {text!r}: {radius!r} is not a number; e.g. {metric}@0.5") from None
            if not (rho > 0 and math.isfinite(rho)):
                raise InputError(f"--sharpness {text!r}: the radius must be a positive number")
            return cls(metric, rho, ascent)
        if metric in CURVATURE_METRICS:
            if at:
                raise InputError(f"--sharpness {text!r}: {metric} takes no radius; use --sharpness {metric}")
            return cls(metric, None)
        raise InputError(f"--sharpness {text!r}: expected {SHARPNESS_FORM}@RHO (e.g. "
                         f"sharpness/worst/l2/adaptive@0.5), sharpness-error/...@RHO, or one of "
                         f"{', '.join(CURVATURE_METRICS)}")

    def __str__(self) -> str:
        if self.rho is None:
            return self.metric
        return f"{self.metric}@{self.rho:g}" + (":reference" if self.ascent == "reference" else "")

    @property
    def description(self) -> str:
        """Axis text, e.g. "worst-case ℓ2 adaptive, ρ = 0.5 (loss increase)"."""
        parts = self.metric.split("/")
        if parts[0] in ("sharpness", "sharpness-error") and len(parts) == 4:
            kind = "worst-case" if parts[1] == "worst" else "average-case"
            norm = "ℓ2" if parts[2] == "l2" else "ℓ∞"
            unit = "loss increase" if parts[0] == "sharpness" else "error increase"
            ascent = ", reference code's ascent" if self.ascent == "reference" else ""
            return f"{kind} {norm} {parts[3]}, ρ = {self.rho:g}{ascent} ({unit})"
        return self.metric

    def command(self, path: str) -> str:
        """The command that stores this measurement for run ``path``."""
        parts = self.metric.split("/")
        if parts[0] in ("sharpness", "sharpness-error"):
            options = []
            if parts[1] != "worst":
                options.append(f"--kind {parts[1]}")
            if parts[2] != "l2":
                options.append(f"--norm {parts[2]}")
            if parts[3] != "adaptive":
                options.append("--standard")
            options.append(f"--rho {self.rho:g}")
            if self.ascent == "reference":
                options.append("--ascent reference")
            return " ".join(["sharpdiv sharpness", shlex.quote(path), *options])
        if parts[0] == "hessian":
            return f"sharpdiv hessian {shlex.quote(path)} --trace"
        if parts[0] == "fisher":
            return f"sharpdiv fisher {shlex.quote(path)}"
        raise InputError(f"no command stores {self.metric}; build the spec with SharpnessSpec.parse")


def diversity_metric(name: str) -> str:
    """The results-table metric a ``--diversity`` name reads (der, variance, kl ...)."""
    try:
        return DIVERSITY_METRICS[name]
    except KeyError:
        raise InputError(f"unknown diversity {name!r}; use one of {', '.join(DIVERSITY_METRICS)}") from None


def diversity_description(metric: str, on: str) -> str:
    """Axis text, e.g. "DER on corrupted data (mean over slices)"."""
    where = "corrupted data (mean over slices)" if on == "ood" else "clean test data"
    return f"{_DIVERSITY_NAMES.get(metric, metric)} on {where}"


def _on_slice(rows: pd.DataFrame, on: str) -> pd.DataFrame:
    corrupted = rows["corruption"].notna() if "corruption" in rows else pd.Series(False, index=rows.index)
    if on == "test":
        return rows[(rows["split"] == "test") & ~corrupted]
    if on == "ood":
        return rows[corrupted]
    if on == "any":
        return rows
    raise InputError(f"unknown data slice {on!r}; use test (clean test split) or ood (corrupted test data)")


def _of_scope(rows: pd.DataFrame, scope: str) -> pd.DataFrame:
    if scope == "members":
        return rows[rows["scope"].str.fullmatch(r"member-\d+")]
    return rows[rows["scope"] == scope]


def _of_combine(rows: pd.DataFrame, combine: str | None) -> pd.DataFrame:
    if combine is None or "combine" not in rows:
        return rows
    return rows[rows["combine"].isna() | (rows["combine"] == combine)]


def _filled(rows: pd.DataFrame, columns: Sequence[str]) -> list[pd.Series]:
    """The columns as grouping keys, with every kind of missing value (None, NaN) as ""."""
    cells = rows[list(columns)].astype(object)
    return [cells[c].where(cells[c].notna(), "") for c in columns]


def _newest_settings(rows: pd.DataFrame, within: Sequence[str]) -> pd.DataFrame:
    """Within each group of ``within`` columns, only the rows of the newest measurement's settings."""
    if rows.empty:
        return rows
    rows = rows.sort_values("created", kind="stable")
    newest = rows.groupby(_filled(rows, within), sort=False)["settings"].transform("last")
    return rows[rows["settings"] == newest]


def _slice_values(results: pd.DataFrame, metric: str, scope: str, on: str, combine: str | None) -> pd.DataFrame:
    """One value per (run, slice): the newest measurement, averaged over members for ``members``.
    Missing slice values (clean data has no corruption) are "" here."""
    if results.empty or "metric" not in results:
        return pd.DataFrame(columns=["path", *_SLICE, "value"])
    rows = results[results["metric"] == metric]
    rows = _of_combine(_on_slice(_of_scope(rows, scope), on), combine)
    # members: one settings for all of them (the newest), so their mean is one measurement's
    rows = _newest_settings(rows, ["path", *_SLICE] if scope == "members" else ["path", "scope", *_SLICE])
    if rows.empty:
        return pd.DataFrame(columns=["path", *_SLICE, "value"])
    slices = rows[_SLICE].astype(object)
    rows = rows.assign(**{c: slices[c].where(slices[c].notna(), "") for c in _SLICE})
    if scope == "members":
        return _member_means(rows)
    return rows.groupby(["path", *_SLICE], as_index=False)["value"].mean(skipna=False)


def _member_means(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean over members per (run, slice), NaN unless every member has a finite value there. The
    members expected are ``run.n_members`` (from run.json), else every member with a row of the run."""
    member = rows["scope"].str.slice(len("member-")).astype(int)
    seen = member.groupby(rows["path"]).agg(lambda indices: set(indices))
    listed = rows.groupby("path")["run.n_members"].first() if "run.n_members" in rows else pd.Series(dtype=float)
    expected = {path: set(range(int(listed[path]))) if path in listed and pd.notna(listed[path]) else indices
                for path, indices in seen.items()}
    finite = rows.assign(_member=member)[np.isfinite(rows["value"].astype(float))]
    values = []
    for key, group in rows.groupby(["path", *_SLICE], sort=True):
        present = set(finite.loc[finite.index.intersection(group.index), "_member"])
        complete = present >= expected[key[0]]
        values.append((*key, group["value"].mean() if complete else math.nan))
    return pd.DataFrame(values, columns=["path", *_SLICE, "value"])


def per_run(results: pd.DataFrame, metric: str, *, scope: str = "ensemble", on: str = "test",
            combine: str | None = "probs", by_severity: bool = False) -> pd.Series | pd.DataFrame:
    """One value of ``metric`` per run (a Series indexed by ``path``), averaged over slices.

    ``scope`` is ``ensemble``, ``members`` (mean over members), or any stored scope (``ensemble@2``).
    ``by_severity=True`` gives a DataFrame (index ``path``, one column per severity) whose values
    are averaged over corruptions at each severity.
    """
    values = _slice_values(results, metric, scope, on, combine)
    if by_severity:
        values = values[values["severity"] != ""]
        if values.empty:
            return pd.DataFrame(index=pd.Index([], name="path"))
        values = values.assign(severity=values["severity"].astype(float).astype(int))
        return values.pivot_table(index="path", columns="severity", values="value", dropna=False,
                                  aggfunc=lambda v: v.mean(skipna=False))
    return values.groupby("path")["value"].mean(skipna=False)


def per_corruption(results: pd.DataFrame, metric: str, *, scope: str = "ensemble",
                   combine: str | None = "probs") -> pd.DataFrame:
    """One value of ``metric`` per run, corruption and severity (columns ``path``, ``corruption``,
    ``severity`` as int, ``value``): the corrupted slices one by one, not averaged."""
    values = _slice_values(results, metric, scope, "ood", combine)
    values = values[(values["corruption"] != "") & (values["severity"] != "")]
    if values.empty:
        return pd.DataFrame(columns=["path", "corruption", "severity", "value"])
    values = values.assign(severity=values["severity"].astype(float).astype(int))
    return values[["path", "corruption", "severity", "value"]].reset_index(drop=True)


def ascent_of(rows: pd.DataFrame) -> pd.Series:
    """Each row's worst-case ascent: its ``ascent`` setting, ``apgd`` where it has none."""
    if "ascent" not in rows:
        return pd.Series("apgd", index=rows.index, dtype=object)
    return rows["ascent"].where(rows["ascent"].notna() & (rows["ascent"] != ""), "apgd")


#: Alignments of ``sharpdiv connectivity --align``, in the order reports show them (rows stored
#: before alignment existed have no ``alignment`` setting: they are unaligned).
ALIGNMENTS = ("none", "weight", "activation")


def with_alignment(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with an ``alignment`` column in which a missing value reads ``"none"``."""
    if "alignment" not in rows:
        return rows.assign(alignment="none")
    return rows.assign(alignment=rows["alignment"].astype(object).where(rows["alignment"].notna(), "none"))


def barriers_per_run(results: pd.DataFrame) -> pd.DataFrame:
    """Mean loss barrier over member pairs per run (index ``path``) and alignment (columns, in
    :data:`ALIGNMENTS` order): the newest ``connectivity/barrier`` measurement (one settings, one
    slice of data) that holds every pair of the run's ``run.n_members`` members; NaN when none
    does, or when a barrier in it is not finite. Pairs are never pooled across settings or data."""
    if results.empty or "metric" not in results:
        return pd.DataFrame(index=pd.Index([], name="path"))
    rows = with_alignment(results[results["metric"] == "connectivity/barrier"])
    if rows.empty:
        return pd.DataFrame(index=pd.Index([], name="path"))
    means = pd.Series({key: _complete_barrier_mean(group)
                       for key, group in rows.groupby(["path", "alignment"], sort=True)}, dtype=float)
    means = means.rename_axis(["path", "alignment"]).unstack("alignment")
    order = [kind for kind in ALIGNMENTS if kind in means.columns]
    return means[order + [kind for kind in means.columns if kind not in order]]


def _complete_barrier_mean(rows: pd.DataFrame) -> float:
    """Mean barrier of the newest measurement among ``rows`` (one run, one alignment) that covers
    every member pair, else NaN."""
    pairs = rows["scope"].str.extract(r"^pair-(\d+)-(\d+)$").astype(float)
    members = set(pairs.stack().astype(int))
    listed = rows["run.n_members"].iloc[0] if "run.n_members" in rows else math.nan
    if pd.notna(listed):
        members = set(range(int(listed)))
    expected = {f"pair-{i}-{j}" for i in members for j in members if i < j}
    rows = rows.sort_values("created", kind="stable")
    identity = list(zip(*_filled(rows, [c for c in ("settings", *_SLICE, "data") if c in rows])))
    for measurement in dict.fromkeys(reversed(identity)):  # newest measurement first
        chosen = rows[[key == measurement for key in identity]].drop_duplicates("scope", keep="last")
        if expected and set(chosen["scope"]) >= expected:
            return float(chosen[chosen["scope"].isin(expected)]["value"].mean(skipna=False))
    return math.nan


def _rows_of_spec(results: pd.DataFrame, spec: SharpnessSpec) -> pd.DataFrame | None:
    """The rows of ``spec``'s metric at its radius and ascent; None when no row has a radius."""
    rows = results[results["metric"] == spec.metric] if "metric" in results else results.iloc[0:0]
    if spec.rho is not None:
        if "rho" not in rows:
            return None
        rows = rows[np.isclose(rows["rho"].astype(float), spec.rho, rtol=1e-9, atol=0)]
        rows = rows[ascent_of(rows) == spec.ascent]
    return _newest_slice(rows)


def _newest_slice(rows: pd.DataFrame) -> pd.DataFrame:
    """Per run, only the rows on the data slice of its newest row: a run measured on its training
    split and later on its test split has two numbers of two data sets, never their mean."""
    if rows.empty:
        return rows
    rows = rows.sort_values("created", kind="stable")
    columns = [c for c in _SLICE if c in rows]
    key = pd.Series(list(zip(*_filled(rows, columns))), index=rows.index) if columns else pd.Series("", index=rows.index)
    return rows[key == key.groupby(rows["path"]).transform("last")]


def sharpness_per_run(results: pd.DataFrame, spec: SharpnessSpec) -> pd.Series:
    """The members' mean sharpness per run: the stored ensemble mean row (``scope="ensemble"``),
    or the mean of the member rows where a run has no mean row. Rows at the spec's radius only."""
    rows = _rows_of_spec(results, spec)
    if rows is None:
        return pd.Series(dtype=float, name=str(spec))
    mean_rows = per_run(rows, spec.metric, scope="ensemble", on="any", combine=None)
    member_rows = per_run(rows, spec.metric, scope="members", on="any", combine=None)
    # a NaN mean row stays NaN: filling it from the member rows would be a mean over the finite ones
    member_rows = member_rows[~member_rows.index.isin(mean_rows.index)]
    return pd.concat([mean_rows, member_rows]).rename(str(spec))


#: Settings that may differ between the runs of a group without changing what a number measures.
_NOT_BUDGETS = {"seed", "aggregate"}  # aggregate: the ensemble-mean row of the same measurement


def mixed_settings(results: pd.DataFrame, groups: pd.Series, spec: SharpnessSpec) -> list[str]:
    """A note for each group whose runs measured ``spec`` (or the Hessian trace) with different
    settings — budgets such as ``n_batches``, ``n_iters``, ``n_probes``, ``m`` — whose values the
    group's means and β would otherwise mix silently. ``groups`` maps run path to group label."""
    notes = []
    for read in dict.fromkeys([spec, SharpnessSpec("hessian/trace", None)]):
        rows = _rows_of_spec(results, read)
        if rows is None or rows.empty:
            continue
        rows = _newest_settings(rows, ["path", "scope"])
        # the data slice counts as a setting here: a group measured on different splits mixes them too
        columns = [c for c in _SLICE if c in rows]
        slices = ([{c: v for c, v in zip(columns, values) if v != ""} for values in zip(*_filled(rows, columns))]
                  if columns else [{}] * len(rows))
        texts = [json.dumps({**json.loads(text), **where}, sort_keys=True) for text, where in zip(rows["settings"], slices)]
        used = pd.Series(texts, index=rows.index).groupby(rows["path"]).agg(lambda texts: sorted(set(texts)))
        for group in group_order(groups.reindex(used.index).dropna()):
            settings = [json.loads(text) for path in used.index if groups.get(path) == group for text in used[path]]
            differing = sorted(key for key in set().union(*settings) - _NOT_BUDGETS
                               if len({json.dumps(entry.get(key)) for entry in settings}) > 1)
            if differing:
                values = "; ".join(f"{key} " + " vs ".join(dict.fromkeys(str(entry.get(key)) for entry in settings))
                                   for key in differing)
                notes.append(f"group {group}: its runs measured {read} with different settings ({values}); "
                             "the group's mean and β mix them: measure every run with the same settings")
    return notes


def partial_corruptions(results: pd.DataFrame, runs: pd.DataFrame | None = None) -> list[str]:
    """A note for each run whose corrupted-data rows cover fewer (corruption, severity) slices than
    another run on the same dataset has: its OOD and per-severity means are over a subset of them,
    so they are not the same quantity as the others' (evaluate it with the same --corruptions)."""
    rows = results[results["corruption"].notna()] if "corruption" in results else results.iloc[0:0]
    rows = rows[(rows["metric"] == "accuracy") & (rows["scope"] == "ensemble")] if not rows.empty else rows
    if rows.empty:
        return []
    dataset, corruption, severity = _filled(rows, ["dataset", "corruption", "severity"])
    slices = pd.Series(list(zip(corruption, severity.astype(str))), index=rows.index)
    held = slices.groupby([rows["path"], dataset]).agg(set)
    notes = []
    for (path, label), own in held.items():
        every = set().union(*held.xs(label, level=1))
        if own < every:
            label_of = runs.set_index("path")["run_label"].get(path, path) if runs is not None else path
            notes.append(f"run {label_of}: corrupted-data rows on {len(own)} of the {len(every)} {label} slices "
                         "other runs have, so its OOD and per-severity means cover a subset; evaluate it with "
                         "the same --corruptions and --severities")
    return notes


def tradeoff_points(results: pd.DataFrame, *, sharpness: SharpnessSpec, diversity: str = "der",
                    on: str = "ood", combine: str | None = "probs", group_by: str = "method") -> pd.DataFrame:
    """One row per run with every number the trade-off plot needs.

    Columns: ``group``, ``sharpness`` (members' mean), ``diversity`` (ensemble, on ``on``), ``eir``,
    ``member_accuracy`` and ``ensemble_accuracy`` (fractions, on ``on``), ``run_label``; runs missing
    sharpness or diversity are dropped.
    """
    metric = diversity_metric(diversity)
    if results.empty or "path" not in results:
        return pd.DataFrame(columns=["group", "sharpness", "diversity", "eir", "member_accuracy",
                                     "ensemble_accuracy", "run_label"])
    firsts = results.drop_duplicates("path").set_index("path")
    points = pd.DataFrame({
        "group": group_labels(firsts, group_by),
        "sharpness": sharpness_per_run(results, sharpness),
        "diversity": per_run(results, metric, on=on, combine=combine),
        "eir": per_run(results, "eir", on=on, combine=combine),
        "member_accuracy": per_run(results, "accuracy", scope="members", on=on, combine=combine),
        "ensemble_accuracy": per_run(results, "accuracy", on=on, combine=combine),
        "run_label": firsts["run_label"],
    }, index=firsts.index)
    points.index.name = "path"
    return points.dropna(subset=["sharpness", "diversity"])


# ----------------------------------------------------------------------------------------------
# what is missing, and the command that would store it


@dataclass(frozen=True)
class Missing:
    """A measurement a run lacks for this report, and the command that would store it."""

    path: str
    what: str
    command: str

    def __str__(self) -> str:
        return f"run {self.path} has no {self.what}: run `{self.command}`"


def missing_measurements(results: pd.DataFrame, runs: pd.DataFrame, *, sharpness: SharpnessSpec,
                         diversity: str = "der", on: str = "ood", combine: str | None = "probs") -> list[Missing]:
    """For every run, the measurements this report reads that its results table does not hold (no
    diversity of a one-member run: there is no ensemble to be diverse)."""
    metric = diversity_metric(diversity)
    column = RUN_PREFIX + "n_members"
    members = runs.set_index("path")[column] if column in runs else pd.Series(dtype=float)
    # a NaN value (some member lacks the number, or it is NaN) counts as missing
    clean = set(per_run(results, "accuracy", scope="members", on="test", combine=None).dropna().index)
    corrupted = set(per_run(results, "accuracy", scope="members", on="ood", combine=None).dropna().index)
    combined = set(per_run(results, "accuracy", on="any", combine=combine).dropna().index)
    diverse = set(per_run(results, metric, on=on, combine=combine).dropna().index)
    sharpness_values = sharpness_per_run(results, sharpness)
    sharp = set(sharpness_values.dropna().index)
    found = []
    for path in runs["path"]:
        quoted = shlex.quote(path)
        if path not in clean:
            found.append(Missing(path, "evaluation", f"sharpdiv evaluate {quoted}"))
        if path not in corrupted:
            found.append(Missing(path, "corrupted-data evaluation", f"sharpdiv evaluate {quoted} --corruptions all"))
        evaluated = path in clean or path in corrupted
        if evaluated and combine is not None and path not in combined:
            found.append(Missing(path, f"ensemble rows with combine={combine}",
                                 f"sharpdiv evaluate {quoted} --combine {combine}"))
        elif (evaluated and not (on == "ood" and path not in corrupted) and path not in diverse
              and not members.get(path, 2) < 2):
            found.append(Missing(path, f"{metric} on {'corrupted' if on == 'ood' else 'clean test'} data",
                                 f"sharpdiv evaluate {quoted}" + (" --corruptions all" if on == "ood" else "")))
        if path in sharpness_values.index and path not in sharp:
            found.append(Missing(path, f"finite {sharpness} for every member (one lacks it or holds NaN)",
                                 sharpness.command(path)))
        elif path not in sharp:
            found.append(Missing(path, str(sharpness), sharpness.command(path)))
    return found
