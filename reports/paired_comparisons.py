"""Paired comparisons of training methods: on the same seeds, is one method's ensemble better?

SharpBalance (Lu et al., NeurIPS 2024, §4.4, Fig. 7 and Tables 2–4) claims that, at the same SAM
radius ρ, its ensembles reach higher accuracy on corrupted data and a higher ensemble improvement rate
(EIR) than SAM ensembles and than deep ensembles. Ensembles trained from the same seeds share their
initialisations and data order, so the honest comparison pairs them: the difference of two methods on
one seed set removes what that seed set does to both.

**Pairs.** A run of method B and a run of method A form a pair when they agree on every training
setting both methods use (the declarations of :mod:`ensembles.training.settings`: dataset, model,
width, epochs, seeds, ..., and ρ when both take a SAM step), the number of classes included. So at
equal ρ and seed set, SharpBalance pairs with SAM; a deep ensemble (SGD has no ρ) pairs with the
SharpBalance run of its seed set at every ρ. The comparison is ``B − A`` with B the later method in
the order sgd, sam, asam, sharpbalance. A setting that varies among the paired runs, other than the
seeds, splits the pairs into rows (``rho=0.05``); two pairs on one seed set and row make the
comparison ambiguous, and it is left out with a note.

**The statistical unit.** A paired t interval treats its differences as independent draws. Up to
three rows are given per comparison and quantity:

- per row (per ρ), when there are several: the differences over seed sets, ``n`` = seed sets;
- over all pairs, when there are several rows and no run is in two pairs: ``n`` = pairs (radii ×
  seed sets). SharpBalance − SAM qualifies (each run has one partner); this unit assumes that two
  radii of one seed set give independent differences, which their shared seeds may not quite make
  true — the next row does not need it;
- by seed set: per seed set the mean of its differences over the rows, ``n`` = seed sets. This is
  the honest unit whenever a run is shared: the deep ensemble of a seed set is the partner of the
  SharpBalance (or SAM) run at every ρ, so its differences at the four radii share one deep
  ensemble and are not independent; averaged per seed set they are one number per independent
  draw. A seed set that lacks a finite difference at some row is left out (a mean over fewer rows
  is another quantity), with a note.

The interval of the mean difference ``d̄`` of ``n`` differences with sample standard deviation
``s`` is ``d̄ ± t_{n−1, 0.975} · s/√n`` (the paired t interval, as ``scipy.stats.ttest_rel``;
exact when the differences are Gaussian, which 3 of them cannot check). The verdict names the
higher method when the interval excludes 0, else says it is not told from 0; one difference has no
interval.

Quantities, per run from stored rows (:func:`reports.collect.per_run`, ensemble rows of the chosen
``combine``): ensemble accuracy (%) on clean test data (ID) and on corrupted data (OOD, the mean over
every corruption × severity slice), and EIR on both.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ensembles.runs import run_folder
from ensembles.runs.files import atomic_path
from ensembles.training.settings import METHODS, declared
from reports.collect import per_run
from reports.tables import write_table

__all__ = ["QUANTITIES", "Difference", "PairedComparisons", "paired_comparisons", "write_paired_comparisons"]

#: metric, data (``test``: clean test split, ``ood``: corrupted slices), label, scale (100: percent).
QUANTITIES = (("accuracy", "test", "ensemble accuracy ID (%)", 100.0),
              ("accuracy", "ood", "ensemble accuracy OOD (%)", 100.0),
              ("eir", "test", "EIR ID", 1.0),
              ("eir", "ood", "EIR OOD", 1.0))
TABLE_NAME = "paired-comparisons"
#: The ``over`` of the pooled rows.
ALL_PAIRS, BY_SEED_SET = "all pairs", "by seed set"


@dataclass(frozen=True)
class Difference:
    """The mean of ``n`` paired differences with its 95% t interval, two-sided p and verdict."""

    n: int
    mean: float
    stderr: float
    ci_low: float
    ci_high: float
    p: float

    @classmethod
    def of(cls, differences) -> "Difference":
        values = np.asarray(differences, dtype=float)
        n = int(values.size)
        if n == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        mean = float(values.mean())
        if n == 1:
            return cls(1, mean, math.nan, math.nan, math.nan, math.nan)
        stderr = float(values.std(ddof=1) / math.sqrt(n))
        half = float(stats.t.ppf(0.975, n - 1)) * stderr
        p = float(2 * stats.t.sf(abs(mean) / stderr, n - 1)) if stderr > 0 else (1.0 if mean == 0 else 0.0)
        return cls(n, mean, stderr, mean - half, mean + half, p)

    def verdict(self, higher: str, lower: str) -> str:
        if self.n < 2:
            return f"n = {self.n}: no interval"
        if self.ci_low <= 0 <= self.ci_high:
            return "interval contains 0: not told from 0"
        return f"{higher} higher" if self.ci_low > 0 else f"{lower} higher"


@dataclass(frozen=True)
class PairedComparisons:
    """``numbers`` (tidy: one row per comparison, quantity and row of pairs), ``text`` (formatted,
    indexed by comparison), ``title``, the ``pairs`` behind them (one row per pair and quantity:
    comparison, seeds, over, both runs' labels and values) and ``notes``."""

    numbers: pd.DataFrame
    text: pd.DataFrame
    title: str
    pairs: pd.DataFrame
    notes: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return self.numbers.empty


def _method_order(method: str) -> tuple:
    return (METHODS.index(method), "") if method in METHODS else (len(METHODS), method)


def _shared_fields(first: str, second: str) -> list[str]:
    """Training settings both methods use (a method sharpdiv does not know uses all of them)."""
    def uses(declaration, method):
        return declaration.used_by(method) if method in METHODS else True

    return [name for name, declaration in declared().items()
            if declaration.axis and name != "method" and uses(declaration, first) and uses(declaration, second)]


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(unset)"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _configs(runs: pd.DataFrame) -> dict[str, dict]:
    return {path: run_folder.read_config(path) for path in runs["path"]}


def _pairs(configs: dict[str, dict], first: str, second: str, labels: pd.Series) -> tuple[pd.DataFrame, str | None]:
    """The pairs (second-method run, first-method run) of two methods: columns ``seeds``, ``over``,
    ``later``, ``earlier`` (paths); and a note when the pairing is ambiguous (then no pairs)."""
    fields = _shared_fields(first, second)

    def key(config):
        values = {name: config.get(name) for name in fields}
        values["num_classes"] = config.get("num_classes")
        return json.dumps(values, sort_keys=True, default=str)

    earlier = {path: key(config) for path, config in configs.items() if config.get("method") == first}
    later = {path: key(config) for path, config in configs.items() if config.get("method") == second}
    matched = [(b, a) for b, key_b in later.items() for a, key_a in earlier.items() if key_a == key_b]
    if not matched:
        return pd.DataFrame(columns=["seeds", "over", "later", "earlier"]), None
    # What varies among the paired runs of either method, besides the seeds, names the row of a pair.
    varying = {}  # setting -> the side (0: later method, 1: earlier) whose runs it varies among
    for side in (0, 1):
        for name, declaration in declared().items():
            if not declaration.axis or name in ("method", "seeds") or name in varying:
                continue
            if len({_text(configs[pair[side]].get(name)) for pair in matched}) > 1:
                varying[name] = side
    rows = []
    for pair in matched:
        b, a = pair
        over = " ".join(f"{name}={_text(configs[pair[side]].get(name))}" for name, side in varying.items())
        rows.append({"seeds": _text(configs[b].get("seeds")), "over": over or "all", "later": b, "earlier": a})
    pairs = pd.DataFrame(rows)
    twice = pairs[pairs.duplicated(["seeds", "over"], keep=False)]
    if not twice.empty:
        shown = ", ".join(dict.fromkeys(labels.get(path, path) for path in [*twice["later"], *twice["earlier"]][:4]))
        return (pd.DataFrame(columns=pairs.columns),
                f"paired comparison {second} − {first} left out: several pairs on seeds {twice['seeds'].iloc[0]}"
                f"{'' if twice['over'].iloc[0] == 'all' else ' at ' + twice['over'].iloc[0]} ({shown}): they differ "
                "in no training setting run.json records (copies of one run?); report them separately")
    return pairs, None


def _row_order(over: pd.Series) -> list[str]:
    def number_or_text(part):
        value = part.split("=", 1)[-1]
        try:
            return (0, float(value), "")
        except ValueError:
            return (1, 0.0, value)

    return sorted(over.unique(), key=lambda label: [number_or_text(part) for part in label.split(" ")])


def paired_comparisons(results: pd.DataFrame, runs: pd.DataFrame, *, combine: str | None = "probs") -> PairedComparisons:
    """Every paired comparison between the methods of ``runs`` (from :func:`reports.collect.run_table`)
    on the stored rows ``results``: per comparison and quantity (:data:`QUANTITIES`) the mean difference
    per row of pairs (n = seed sets), over all pairs (when no run is shared) and by seed set, each
    with its paired 95% t interval and verdict (see the module text). Empty when no two methods
    have runs on the same seed sets and shared settings."""
    configs = _configs(runs)
    labels = runs.set_index("path")["run_label"]
    methods = sorted({config.get("method") for config in configs.values() if config.get("method")},
                     key=_method_order)
    values = {label: scale * per_run(results, metric, on=on, combine=combine)
              for metric, on, label, scale in QUANTITIES}
    numbers, text, details, notes = [], [], [], []
    for index, first in enumerate(methods):
        for second in methods[index + 1:]:
            pairs, note = _pairs(configs, first, second, labels)
            if note:
                notes.append(note)
            if pairs.empty:
                continue
            name = f"{second} − {first}"
            shared = pairs["later"].duplicated().any() or pairs["earlier"].duplicated().any()
            order = _row_order(pairs["over"])
            for metric, on, label, scale in QUANTITIES:
                value = values[label]
                diff = pairs.assign(later_value=pairs["later"].map(value), earlier_value=pairs["earlier"].map(value))
                diff["difference"] = diff["later_value"] - diff["earlier_value"]
                details.append(diff.assign(comparison=name, quantity=label,
                                           later_run=diff["later"].map(labels), earlier_run=diff["earlier"].map(labels)))
                finite = diff[np.isfinite(diff["difference"].astype(float))]
                rows = [(over, "seed set", Difference.of(finite.loc[finite["over"] == over, "difference"]))
                        for over in order] if len(order) > 1 else []
                if not shared and len(order) > 1:  # (with one row, the pairs are the seed sets: the next row)
                    rows.append((ALL_PAIRS, "pair", Difference.of(finite["difference"])))
                by_seed_set, incomplete = _seed_set_means(diff, order)
                if incomplete:
                    notes.append(f"paired comparison {name}, {label}: seed sets {', '.join(incomplete)} left out of "
                                 f"the by-seed-set row (no finite difference at every one of {', '.join(order)})")
                rows.append((BY_SEED_SET, "seed set", Difference.of(by_seed_set)))
                for over, unit, result in rows:
                    verdict = result.verdict(second, first)
                    numbers.append({"comparison": name, "later": second, "earlier": first, "quantity": label,
                                    "over": over, "unit": unit, "n": result.n, "mean_difference": result.mean,
                                    "stderr": result.stderr, "ci_low": result.ci_low, "ci_high": result.ci_high,
                                    "p": result.p, "verdict": verdict})
                    decimals = 2 if scale == 100 else 4
                    shown = "—" if result.n == 0 else _signed(result.mean, decimals)
                    interval = ("—" if result.n < 2 else
                                f"[{_signed(result.ci_low, decimals)}, {_signed(result.ci_high, decimals)}]")
                    text.append({"comparison": name, "quantity": label, "over": over, "n": f"{result.n} {unit}s"
                                 if result.n != 1 else f"1 {unit}", "mean difference": shown,
                                 "95% t interval": interval, "verdict": verdict})
    columns = ["comparison", "later", "earlier", "quantity", "over", "unit", "n", "mean_difference", "stderr",
               "ci_low", "ci_high", "p", "verdict"]
    text_frame = pd.DataFrame(text, columns=["comparison", "quantity", "over", "n", "mean difference",
                                             "95% t interval", "verdict"]).set_index("comparison")
    detail_columns = ["comparison", "quantity", "seeds", "over", "later_run", "earlier_run", "later_value",
                      "earlier_value", "difference"]
    pairs_frame = (pd.concat(details, ignore_index=True)[detail_columns] if details
                   else pd.DataFrame(columns=detail_columns))
    title = ("Paired comparisons of methods on the same seed sets (later − earlier method; pairs agree on every "
             "setting both methods use, ρ included when both use it): mean difference with its paired 95% t "
             "interval, per ρ over seed sets, over all pairs when no run is in two pairs, and by seed set "
             f"(the mean over ρ per seed set: the unit when a run is shared); ensemble rows with combine={combine}, "
             "ID = clean test data, OOD = mean over corrupted slices")
    return PairedComparisons(numbers=pd.DataFrame(numbers, columns=columns), text=text_frame, title=title,
                             pairs=pairs_frame, notes=tuple(notes))


def _signed(value: float, decimals: int) -> str:
    """``value`` with its sign, never "-0.00" for what rounds to zero."""
    rounded = round(value, decimals)
    return f"{rounded + 0.0 if rounded != 0 else 0.0:+.{decimals}f}"


def _seed_set_means(diff: pd.DataFrame, order: list[str]) -> tuple[list[float], list[str]]:
    """Per seed set, the mean of its differences over every row; seed sets lacking one are named."""
    means, incomplete = [], []
    for seeds, rows in diff.groupby("seeds", sort=True):
        present = rows.set_index("over")["difference"].astype(float)
        if set(present.index) >= set(order) and np.isfinite(present).all():
            means.append(float(present.reindex(order).mean()))
        else:
            incomplete.append(seeds)
    return means, incomplete


@dataclass(frozen=True)
class WrittenComparisons:
    """What :func:`write_paired_comparisons` wrote: the files, the formatted table, its title, notes."""

    files: list[Path]
    text: pd.DataFrame
    title: str
    notes: tuple[str, ...]


def write_paired_comparisons(results: pd.DataFrame, runs: pd.DataFrame, tables_dir: str | os.PathLike, *,
                             combine: str | None = "probs") -> WrittenComparisons | None:
    """The report's paired-comparisons section: ``tables/paired-comparisons.{csv,md,tex}`` and
    ``paired-comparisons-pairs.csv`` (every pair's values); None, with nothing written, when no two
    methods share seed sets."""
    comparisons = paired_comparisons(results, runs, combine=combine)
    if comparisons.empty:
        return None
    files = write_table(tables_dir, TABLE_NAME, comparisons.numbers, comparisons.text, comparisons.title)
    pairs_file = Path(tables_dir) / f"{TABLE_NAME}-pairs.csv"
    with atomic_path(pairs_file) as temporary:
        temporary.write_text(comparisons.pairs.to_csv(index=False), encoding="utf-8")
    return WrittenComparisons(files=[*files, pairs_file], text=comparisons.text, title=comparisons.title,
                              notes=comparisons.notes)
