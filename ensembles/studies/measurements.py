"""Measuring run folders: sharpness, Hessian, Fisher and connectivity of every member, stored as rows.

``sharpdiv sharpness``, ``hessian``, ``fisher`` and ``connectivity`` are thin layers over
:func:`measure_sharpness`, :func:`measure_hessian`, :func:`measure_fisher` and
:func:`measure_connectivity`. Every number comes from :mod:`landscape` (nothing is measured here):
this module picks the data, loads the members, skips what the results table already holds and
writes rows named as ``docs/results-table.md`` says. The loss is always the mean cross-entropy of
the member's logits, the members are in eval mode, and the data is never augmented.

Data. Every measurement reads one clean split of the run's dataset (``dataset`` overrides it),
normalized as in training, and the same samples for every member, so members are comparable:

- sharpness: ``n_batches`` batches of ``m`` samples drawn without replacement, ``order =
  torch.randperm(N, generator=torch.Generator().manual_seed(seed))``, batch ``b`` being
  ``order[b·m:(b+1)·m]`` (SharpBalance: 100 batches of 5 training samples, seed 13);
- Hessian: ``n_examples`` samples (default ``min(1024, N)``), the first ones of the same kind of
  seeded permutation, in batches of ``batch_size``;
- Fisher and connectivity: the first ``n_examples`` samples of the split (default all), in order, so
  that entry ``j`` of a stored Fisher array is sample ``j`` of the split; BatchNorm statistics for
  connectivity are recomputed from ``bn_examples`` training samples (seeded permutation again).

Randomness. Each (member, measurement) gets a fresh generator seeded with ``seed``: a value does not
depend on which other radii or members were measured in the same call, so stored rows and new ones
agree. (The draws of average-case sharpness also depend on ``chunk_size``, a memory knob that is
not a setting: rows measured with another chunk size are reused as equivalent.)

Reuse. A measurement whose rows are all stored for the current weights and the same settings is not
computed again (:func:`ensembles.runs.run_folder.find_results` semantics: same scope, metric, slice,
settings and data fingerprint, :func:`ensembles.data.datasets.data_digest` of the split read, in the row's
``data`` column). Rows carry the digests of the member files taken when the members were loaded; a
file replaced before its rows are written stores nothing (an :class:`InputError`). Input is
checked for every run before anything is measured, so bad input leaves no rows;
each member's rows are written as soon as the member is done, so an interrupted call resumes.

Ensemble rows (``scope="ensemble"``, ``aggregate="mean"``) of member-level measurements (sharpness,
its error increase, the Hessian trace) hold the mean over members, with ``stderr`` the standard
error of that mean over members, ``std(values, ddof=1)/√M`` (NaN for one member). It describes the
spread of the members, the quantity an ensemble-level comparison needs; the members' own
(batch or probe) standard errors are not propagated, since all members share the batches and their
errors are not independent.
Connectivity's ``connectivity/q_bar`` is the same over member pairs: the mean of the pairs' ``q``
with ``std(ddof=1)/√P`` over the ``P`` pairs.

Shape. Each ``measure_*`` checks its input for every run and plans one ``_Study`` per run (its
tasks, how a stored result is found, how one task is computed, its ensemble means and summary);
``_measure_run`` is the one skeleton they share: reuse stored results → compute the missing tasks
→ store their rows (finite, with the weights' digests) → store the ensemble means → summarize. A
stored result may come with rows that a newer version of the measurement adds and that follow from
the stored rows alone (``_Derived``: connectivity's ``q`` of a stored path); those are stored first,
tied to the digests of the files the stored rows were measured on.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import operator
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ensembles.data import datasets
from ensembles.models import permutation_specs
from ensembles.runs import run_folder
from ensembles.runs.files import atomic_path, file_digest
from ensembles.runs.logit_cache import dataset_label
from ensembles.studies import options
from landscape import alignment, connectivity, fisher, hessian, sharpness
from landscape._checks import positive_int, select_parameters
from landscape.errors import InputError, NonFiniteError

__all__ = [
    "Measurement",
    "fisher_path",
    "measure_connectivity",
    "measure_fisher",
    "measure_hessian",
    "measure_sharpness",
    "sharpness_batches",
]

#: The loss of every measurement: mean cross-entropy of logits and integer labels.
LOSS = F.cross_entropy
#: Columns that place one row on an axis (a curve, a grid, a spectrum) rather than set the measurement:
#: ``alpha``, ``rank`` and the grid indices of densities and planes, and the computed places that rows
#: written before the indices were keyed by (``eigenvalue``, ``u``, ``v``; now location columns).
AXIS_COLUMNS = ("alpha", "rank", "grid_index", "u_index", "v_index", "eigenvalue", "u", "v")
#: The pair connectivity of a path (:func:`landscape.connectivity.pair_connectivity`): accuracy and loss form.
Q_METRICS = ("connectivity/q", "connectivity/q_loss")
#: Two α closer than this are one point of a path: rows written before α was computed exactly hold
#: ``torch.linspace``'s values, an ulp off on some CPUs; grid points are ≥ 1e-6 apart up to a million α.
ALPHA_TOLERANCE = 1e-9
HESSIAN_EXAMPLES = 1024  # the first 1024 training points of Andriushchenko et al.'s measurements
FISHER_DIR = "fisher"
FISHER_QUANTILES = (50, 90, 99)


# ----------------------------------------------------------------------------------------------
# shared machinery


@dataclass(frozen=True)
class Measurement:
    """What one command did for one run: the measurements computed now (``computed``) and those
    found stored (``reused``), the rows written now (``rows``) and a text summary (``lines``)."""

    path: Path
    computed: tuple[str, ...]
    reused: tuple[str, ...]
    rows: list[dict] = field(repr=False)
    lines: tuple[str, ...] = field(repr=False)

    def summary(self) -> list[str]:
        return list(self.lines)


class _StoredRows:
    """The run's current rows, looked up by scope, metric, slice and settings (axis columns apart).

    The table is read once per run; the lookup is that of :func:`run_folder.find_results` with the axis
    columns (``alpha``, ``rank`` ...) taken out of the settings and returned with each row.
    """

    def __init__(self, path: Path):
        table = run_folder.read_results(path, current_only=True)
        columns = ["scope", "metric", "dataset", "split", "corruption", "settings", "data", "value", "stderr",
                   "weights"]
        self._rows: dict[tuple, list[tuple[dict, float, float]]] = defaultdict(list)
        self._weights: dict[str, str] = {}
        if table.empty:
            return
        for scope, metric, dataset, split, corruption, text, data, value, stderr, weights in \
                table.reindex(columns=columns).itertuples(index=False):
            if isinstance(corruption, str):
                continue  # these measurements are on clean splits only
            if not math.isfinite(float(value)):
                continue  # a NaN row (stored before NaNs were refused) is no result: measure again
            settings = json.loads(text)
            axes = {name: settings.pop(name) for name in AXIS_COLUMNS if name in settings}
            key = (scope, metric, dataset, split, run_folder.canonical_settings(settings),
                   data if isinstance(data, str) else None)
            self._rows[key].append((axes, float(value), float(stderr)))
            self._weights[scope] = weights  # current rows: the digest of the scope's files when read

    def get(self, scope: str, metric: str, where: Mapping, settings: Mapping) -> list[tuple[dict, float, float]]:
        """``[(axes, value, stderr), ...]`` of the stored rows of one measurement."""
        if where.get("data") is None:
            return []  # rows of unknown data are never reused
        key = (scope, metric, where["dataset"], where["split"], run_folder.canonical_settings(settings), where["data"])
        return self._rows.get(key, [])

    def value(self, scope: str, metric: str, where: Mapping, settings: Mapping) -> float | None:
        rows = self.get(scope, metric, where, settings)
        return rows[-1][1] if rows else None

    def weights(self, scope: str) -> str | None:
        """The weights digest (:func:`run_folder.weights_digest`) the scope's stored rows belong to."""
        return self._weights.get(scope)


def _whole_grid(rows: Sequence[tuple[dict, float, float]], index_columns: Sequence[str],
                location_columns: Sequence[str], shape: Sequence[int]) -> bool:
    """Whether stored ``rows`` (of one measurement) hold every point of a grid of ``shape``: rows
    keyed by grid index (``index_columns``, one per axis) cover every index, or rows written before
    those existed, keyed by the computed place (``location_columns``), hold as many distinct places
    as the grid has points. The two kinds are never added up: a grid is taken whole from one of
    them, or measured again."""
    indexed = {tuple(int(axes[c]) for c in index_columns) for axes, _, _ in rows if index_columns[0] in axes}
    if indexed >= set(itertools.product(*map(range, shape))):
        return True
    placed = {tuple(float(axes[c]) for c in location_columns) for axes, _, _ in rows
              if index_columns[0] not in axes and all(c in axes for c in location_columns)}
    return len(placed) == math.prod(shape)


def _point(rows: Sequence[tuple[dict, float, float]], alpha: float) -> float:
    """The value of the newest stored row at ``alpha`` (within :data:`ALPHA_TOLERANCE`)."""
    return [value for axes, value, _ in rows if abs(float(axes["alpha"]) - alpha) <= ALPHA_TOLERANCE][-1]


def _covers(stored: Sequence[float], wanted: np.ndarray) -> bool:
    """Whether every wanted α has a stored row within :data:`ALPHA_TOLERANCE`."""
    if not len(stored):
        return False
    distance = np.abs(wanted[:, None] - np.asarray(stored, dtype=np.float64)[None, :]).min(axis=1)
    return bool((distance <= ALPHA_TOLERANCE).all())


class _Members:
    """A run's members, loaded on first use only: a fully stored measurement builds no model."""

    def __init__(self, path: Path, device, dtype):
        self.path, self.device, self.dtype, self.run = path, device, dtype, None

    def __getitem__(self, index: int) -> torch.nn.Module:
        if self.run is None:
            self.run = run_folder.load_run(self.path, self.device, self.dtype)
        return self.run.members[self.run.member_indices.index(index)]

    @property
    def weights(self) -> dict[int, str] | None:
        """Digests of the member files taken when they were loaded (None before any is loaded):
        rows pass them to :func:`ensembles.runs.run_folder.append_results`, which refuses files changed since."""
        return None if self.run is None else self.run.weights


class _Splits:
    """Clean splits loaded once per call (several runs usually share one dataset)."""

    def __init__(self, root):
        self.root, self._loaded, self._digests = root, {}, {}

    def digest(self, label: str, split: str, root=None) -> str:
        """The fingerprint of the split's images and labels (:func:`ensembles.data.datasets.data_digest`);
        ``root``: a run's own data root (run.json ``data_path``), else the call's."""
        root = self.root if root is None else root
        if (label, split, root) not in self._digests:
            self._digests[label, split, root] = datasets.data_digest(label, root, split)
        return self._digests[label, split, root]

    def get(self, label: str, split: str, n_classes: int, normalize: bool = True, root=None) -> datasets.ImageDataset:
        """``normalize=False``: ``[0, 1]`` images for members that normalise them themselves."""
        root = self.root if root is None else root
        if (label, split, normalize, root) not in self._loaded:
            self._loaded[label, split, normalize, root] = datasets.load_dataset(label, root, split, augment=False,
                                                                                normalize=normalize)
        images = self._loaded[label, split, normalize, root]
        if images.num_classes != n_classes:
            raise InputError(f"{label} has {images.num_classes} classes but the run's members have {n_classes}; "
                             "measure on the dataset the run was trained for (--data)")
        return images


class _Samples:
    """Re-iterable ``(inputs, targets)`` batches of chosen samples of a split, in the given order;
    each pass gathers them again from the stored images (no copy of the data is kept)."""

    def __init__(self, images: datasets.ImageDataset, indices: torch.Tensor, batch_size: int, device):
        self.images, self.indices, self.batch_size, self.device = images, indices, batch_size, device

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.indices), self.batch_size):
            rows = self.indices[start:start + self.batch_size]
            yield self.images.batch(rows.numpy(), device=self.device), self.images.targets[rows].to(self.device)


def _permutation(count: int, seed: int) -> torch.Tensor:
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))


def _run_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no run folders given; pass at least one RUN folder")
    return paths


@dataclass(frozen=True)
class _RunInput:
    """What every measurement needs of one run before it measures: its finished members and data."""

    path: Path
    config: Mapping
    members: list[int]
    label: str
    images: datasets.ImageDataset
    root: str | None = None  # the data root read: --data-path, else the run's own (run.json data_path)


def _run_inputs(paths, dataset: str | None, split: str, splits: "_Splits") -> Iterator[_RunInput]:
    """Each run's config, finished members and split, checked before any measurement starts."""
    for path in _run_paths(paths):
        config = run_folder.read_config(path)
        members = _members_of(path, config)
        label = dataset_label(dataset or config["dataset"])
        root, _ = run_folder.data_root(config, splits.root, dataset)
        yield _RunInput(path, config, members, label, splits.get(label, split, int(config["num_classes"]),
                                                                    run_folder.data_normalized(config), root), root)


def _members_of(path: Path, config: Mapping) -> list[int]:
    members = run_folder.finished_members(config)
    if not members:
        raise InputError(f"{path} has no finished members yet; train or import them first")
    return members


def _example_count(option: str, wanted: int | None, images: datasets.ImageDataset, default: int | None = None) -> int:
    """``wanted`` samples of the split (``None``: ``default``, capped at the split, or all of it)."""
    if wanted is None:
        return len(images) if default is None else min(default, len(images))
    if wanted > len(images):
        raise InputError(f"{option} {wanted} but {images.name} {images.split} has {len(images)} samples; "
                         f"choose at most {len(images)}")
    return wanted


def _mean_over_members(values: Sequence[float]) -> tuple[float, float]:
    """Mean over members and its standard error ``std(ddof=1)/√M`` (module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(values.mean()), stderr


_NOT_SETTINGS = {"scope", "metric", "value", "stderr", "dataset", "split", "data", "reference_weights", *AXIS_COLUMNS}  # data: a fingerprint, noise in a message


def _not_finite(path: Path, row: Mapping, reason: str, written: Sequence[Mapping]) -> NonFiniteError:
    """The one-line refusal of a non-finite measurement: run, scope, metric, settings, and what was stored."""
    settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in row.items() if k not in _NOT_SETTINGS)
    kept = sorted({r["scope"] for r in written}, key=lambda scope: (len(scope), scope))
    kept = f"the rows of {', '.join(kept)} measured before it are" if kept else "nothing of this run was"
    return NonFiniteError(f"{path.name}: {row['scope']} {row['metric']} ({settings}) is not finite ({reason}); "
                          f"not stored ({kept})")


def _append_finite(path: Path, new_rows: Sequence[Mapping], written: list, weights: Mapping) -> None:
    """Store rows only if every value is finite (a stderr may be NaN, undefined for one batch or one
    member, but never infinite); then add them to ``written``, the rows this call has stored."""
    for row in new_rows:
        value, stderr = float(row["value"]), row.get("stderr")
        if not math.isfinite(value) or (stderr is not None and math.isinf(stderr)):
            raise _not_finite(path, row, f"value {value}" + (f", stderr {stderr}" if stderr is not None else ""),
                              written)
    run_folder.append_results(path, new_rows, weights=weights)
    written += new_rows


def _progress(total: int, label: str, unit: str, enabled: bool):
    return tqdm(total=total, desc=label, unit=unit, file=sys.stderr, disable=not enabled or total == 0, leave=False)


def _format(value: float, stderr: float = math.nan) -> str:
    text = f"{value:.4g}"
    return text if math.isnan(stderr) else f"{text} ± {stderr:.2g}"


def _where(splits: _Splits, run: _RunInput, split: str) -> dict:
    """The columns that place a row on its data: dataset, split and the split's fingerprint."""
    return {"dataset": run.label, "split": split, "data": splits.digest(run.label, split, run.root)}


# ----------------------------------------------------------------------------------------------
# the skeleton every measurement shares


@dataclass(frozen=True)
class _Derived:
    """A task found stored, with rows a newer version of the measurement adds, computed from the
    stored rows alone (no model is loaded): ``rows``, the task's ``result``, and ``weights``, the
    digests of the member files those stored rows belong to (the new rows are stored with them, and
    not at all if a file has changed since)."""

    rows: list[dict]
    result: Any
    weights: Mapping[int, str]


class _Refused(Exception):
    """A task's result is not finite; ``row`` names it (scope, metric, settings), ``reason`` says why."""

    def __init__(self, row: Mapping, reason: str):
        super().__init__(reason)
        self.row, self.reason = row, reason


@dataclass(frozen=True)
class _Mean:
    """One ensemble-mean row: ``metric`` with ``settings``, the mean over the members' ``tasks`` of
    the value ``pick`` takes from each task's result."""

    metric: str
    settings: Mapping
    tasks: Sequence
    pick: Callable[[Any], float]


@dataclass
class _Study:
    """What one measurement does to one run: the part that differs between measurements.

    A run's work is a list of ``tasks`` (a member, a (member, radius), a pair ...), each with a
    ``result`` (what the summary shows). :func:`_measure_run` does the rest, the same for every
    measurement: reuse stored results, compute the missing ones, store their rows, add the means.
    """

    path: Path
    members: list[int]
    where: dict
    unit: ClassVar[str] = "measurement"

    def tasks(self) -> list:
        raise NotImplementedError

    def name(self, task) -> str:
        """How :class:`Measurement` names the task in ``computed`` and ``reused``."""
        raise NotImplementedError

    def lookup(self, stored: _StoredRows, task):
        """The task's stored result, or ``None``: measure it (or a :class:`_Derived`: stored, with rows
        to add that are computed from the stored ones)."""
        raise NotImplementedError

    def compute(self, models: _Members, task) -> tuple[list[dict], Any]:
        """The task's rows and result; raises :class:`_Refused` for a non-finite one."""
        raise NotImplementedError

    def group(self, task):
        """Tasks of one group are stored together, as soon as the group is done (default: each alone)."""
        return task

    def means(self) -> list[_Mean]:
        return []

    def summary(self, results: Mapping, missing: Sequence) -> list[str]:
        raise NotImplementedError


def _measure(studies: Sequence[_Study], device, dtype, progress: bool) -> list[Measurement]:
    """Measure every (already checked) run in turn."""
    return [_measure_run(study, _Members(study.path, device, dtype), progress) for study in studies]


def _measure_run(study: _Study, models: _Members, progress: bool) -> Measurement:
    """Reuse stored results (storing the rows derived from them) → compute the missing tasks → store
    each group's rows (finite, with the digests of the weights as read) → store the ensemble means →
    summarize."""
    stored, tasks = _StoredRows(study.path), study.tasks()
    results = {task: study.lookup(stored, task) for task in tasks}
    derived = {task: found for task, found in results.items() if isinstance(found, _Derived)}
    results.update({task: found.result for task, found in derived.items()})
    missing = [task for task in tasks if results[task] is None]
    written: list[dict] = []
    derived_from = _same_weights(found.weights for found in derived.values())
    if derived:
        _append_finite(study.path, [row for found in derived.values() for row in found.rows], written, derived_from)
    with _progress(len(missing), study.path.name, study.unit, progress) as bar:
        for _, group in itertools.groupby(missing, key=study.group):
            rows = []
            for task in group:
                try:
                    new_rows, results[task] = study.compute(models, task)
                except _Refused as refused:
                    raise _not_finite(study.path, refused.row, refused.reason, written) from None
                rows += new_rows
                bar.update()
            _append_finite(study.path, rows, written, models.weights)
    means = [_mean_row(study.where, mean, results) for mean in study.means()
             if any(task in missing for task in mean.tasks)
             or not stored.get("ensemble", mean.metric, study.where, {**mean.settings, "aggregate": "mean"})]
    if means:
        _append_finite(study.path, means, written, _same_weights([derived_from, models.weights or {}]) or None)
    return Measurement(study.path, tuple(map(study.name, missing)),
                       tuple(study.name(task) for task in tasks if task not in missing), written,
                       tuple(study.summary(results, missing)))


def _same_weights(digests: Iterable[Mapping[int, str]]) -> dict[int, str]:
    """One map of member digests from several reads, refused when a member was read as two files."""
    merged: dict[int, str] = {}
    for read in digests:
        for index, digest in read.items():
            if merged.setdefault(index, digest) != digest:
                raise InputError(f"member {index} changed during the measurement (its stored rows and the weights "
                                 "loaded now differ); no rows of it were stored: run the command again")
    return merged


def _mean_row(where: Mapping, mean: _Mean, results: Mapping) -> dict:
    value, stderr = _mean_over_members([mean.pick(results[task]) for task in mean.tasks])
    return {"scope": "ensemble", "metric": mean.metric, "value": value, "stderr": stderr, **where,
            **mean.settings, "aggregate": "mean"}


# ----------------------------------------------------------------------------------------------
# sharpness


def sharpness_batches(images: datasets.ImageDataset, m: int, n_batches: int, seed: int,
                      device: torch.device | str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` batches of ``m`` samples drawn without replacement with a generator seeded by
    ``seed``: batch ``b`` is ``order[b·m:(b+1)·m]`` of ``order = randperm(N)``."""
    _check_sample_budget(images, m, n_batches)
    order = _permutation(len(images), seed)[:m * n_batches]
    return list(_Samples(images, order, m, device))


def _check_sample_budget(images: datasets.ImageDataset, m: int, n_batches: int) -> None:
    needed = m * n_batches
    if needed > len(images):
        raise InputError(f"--batch-size {m} x --n-batches {n_batches} = {needed} samples, but {images.name} "
                         f"{images.split} has only {len(images)}; lower --n-batches or --batch-size")


#: Worst-case ascents: sharpdiv's APGD in the ball's own metric, or the reference code's update.
ASCENTS = ("apgd", "reference")


def _sharpness_settings(kind: str, rho: float, m: int, n_batches: int, seed: int, n_iters: int, n_restarts: int,
                        n_draws: int, exclude: tuple[str, ...], ascent: str = "apgd") -> dict:
    """The settings columns of a sharpness row (docs/results-table.md): those that change the value.
    The draws of average-case sharpness keep their first name, ``n_samples``, so stored tables still match.
    ``ascent`` is stored only when it is ``reference``: rows without it are APGD's (every row written
    before the setting existed was), so their keys stay valid and the two never match."""
    settings = {"rho": float(rho), "m": m, "n_batches": n_batches, "seed": seed, "logit_normalization": False}
    settings.update({"n_iters": n_iters, "n_restarts": n_restarts} if kind == "worst" else {"n_samples": n_draws})
    if ascent == "reference":
        settings["ascent"] = "reference"
    if exclude:
        settings["exclude"] = ",".join(exclude)
    return settings


def _radii(rhos) -> list[float]:
    """The distinct radii, in order (checked by the rule of ``rhos``: each finite and > 0)."""
    rhos = [rhos] if isinstance(rhos, (int, float)) else list(rhos)
    return list(dict.fromkeys(float(rho) for rho in rhos))


def measure_sharpness(paths: Iterable[str | os.PathLike], *, dataset: str | None = None, root=None,
                      split: str = "train", kind: str = "worst", norm: str = "l2", adaptive: bool = True,
                      rhos: Sequence[float] = (0.5,), m: int = 5, n_batches: int = 100, seed: int = 13,
                      n_iters: int = 20, n_restarts: int = 1, n_samples: int = 100,
                      exclude: Sequence[str] | None = None, chunk_size: int | None = None, ascent: str = "apgd",
                      device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                      progress: bool = False) -> list[Measurement]:
    """m-sharpness of every member of every run at every radius in ``rhos``, stored as rows.

    :func:`landscape.sharpness.worst_case_sharpness` (``kind="worst"``: APGD with ``n_iters`` steps,
    ``n_restarts`` starts) or :func:`~landscape.sharpness.average_case_sharpness` (``"average"``,
    ``n_samples`` draws per batch), on the :func:`sharpness_batches` of ``split``. Rows per member
    and radius: ``sharpness/<kind>/<norm>/<adaptive|standard>`` (value, stderr over batches) and
    ``sharpness-error/...`` (the mean 0-1 error increase at the perturbed point; no stderr), plus
    the ensemble-mean rows of both. Defaults are SharpBalance's (worst, l2, adaptive, rho 0.5,
    m 5, 100 batches, seed 13, training split without augmentation).

    ``ascent`` (worst case): ``"apgd"``, sharpdiv's ascent in the ball's own metric, or
    ``"reference"``, the update of Andriushchenko et al.'s code (``reference_ascent=True``), which
    every published sharpness value used; adaptive ℓ2 values differ between them (see
    ``benchmarks/bench_ascent.py``), so reference rows carry the setting ``ascent=reference`` and
    are never read as APGD's.
    """
    _check_measure_options("sharpness", locals())
    rhos, n_draws = _radii(rhos), n_samples
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
    splits = _Splits(root)
    runs = []
    for run in _run_inputs(paths, dataset, split, splits):
        _check_sample_budget(run.images, m, n_batches)
        if exclude:  # a pattern that matches nothing is a typo: say so before any work
            select_parameters(run_folder.build_member_model(run.config), exclude=exclude)
        runs.append(run)
    return _measure([_Sharpness(run.path, run.members, _where(splits, run, split), run.images, kind, norm, adaptive,
                                rhos, m, n_batches, seed, n_iters, n_restarts, n_draws, exclude, chunk_size, device,
                                ascent)
                     for run in runs], device, dtype, progress)


@dataclass
class _Sharpness(_Study):
    """Tasks ``(member, rho)``; result ``(sharpness, its stderr, error increase)``."""

    images: datasets.ImageDataset
    kind: str
    norm: str
    adaptive: bool
    rhos: list[float]
    m: int
    n_batches: int
    seed: int
    n_iters: int
    n_restarts: int
    n_draws: int
    exclude: tuple[str, ...]
    chunk_size: int | None
    device: torch.device | str
    ascent: str = "apgd"

    def __post_init__(self):
        self.metric = f"sharpness/{self.kind}/{self.norm}/{'adaptive' if self.adaptive else 'standard'}"
        self.error_metric = "sharpness-error/" + self.metric.split("/", 1)[1]

    @functools.cached_property
    def batches(self) -> list:  # drawn only when something is measured
        return sharpness_batches(self.images, self.m, self.n_batches, self.seed, self.device)

    def settings(self, rho: float) -> dict:
        return _sharpness_settings(self.kind, rho, self.m, self.n_batches, self.seed, self.n_iters, self.n_restarts,
                                   self.n_draws, self.exclude, self.ascent)

    def tasks(self) -> list:
        return [(index, rho) for index in self.members for rho in self.rhos]

    def name(self, task) -> str:
        return f"member-{task[0]}@{task[1]:g}"

    def group(self, task):
        return task[0]  # a member's radii are stored together

    def lookup(self, stored: _StoredRows, task):
        scope, settings = f"member-{task[0]}", self.settings(task[1])
        found = [stored.get(scope, metric, self.where, settings) for metric in (self.metric, self.error_metric)]
        return (found[0][-1][1], found[0][-1][2], found[1][-1][1]) if all(found) else None

    def compute(self, models: _Members, task):
        (index, rho), scope = task, f"member-{task[0]}"
        model, settings = models[index], self.settings(rho)
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(self.seed)
        if self.kind == "worst":
            measure, extra = sharpness.worst_case_sharpness, {"n_iters": self.n_iters, "n_restarts": self.n_restarts,
                                                                "reference_ascent": self.ascent == "reference"}
        else:
            measure, extra = sharpness.average_case_sharpness, {"n_draws": self.n_draws}
        try:
            result = measure(model, LOSS, self.batches, rho, self.norm, self.adaptive, exclude=self.exclude or None,
                             chunk_size=self.chunk_size, generator=generator, **extra)
        except NonFiniteError as error:
            raise _Refused({"scope": scope, "metric": self.metric, **settings}, str(error)) from None
        rows = [{"scope": scope, "metric": self.metric, "value": result.value, "stderr": result.stderr,
                 **self.where, **settings},
                {"scope": scope, "metric": self.error_metric, "value": result.error_increase, **self.where, **settings}]
        return rows, (result.value, result.stderr, result.error_increase)

    def means(self) -> list[_Mean]:
        return [_Mean(metric, self.settings(rho), [(index, rho) for index in self.members],
                      operator.itemgetter(position))
                for rho in self.rhos for metric, position in ((self.metric, 0), (self.error_metric, 2))]

    def summary(self, results: Mapping, missing: Sequence) -> list[str]:
        shown = self.metric + (" (reference code's ascent)" if self.ascent == "reference" else "")
        lines = [f"{self.path.name}: {shown}, {self.where['dataset']} {self.where['split']}, "
                 f"m={self.m} x {self.n_batches} batches, seed {self.seed}: "
                 f"{len(missing)} measured now, {len(results) - len(missing)} stored",
                 "  " + f"{'rho':<8}" + "".join(f"{f'member-{i}':>22}" for i in self.members)
                 + f"{'mean over members':>24}{'error increase':>16}"]
        for rho in self.rhos:
            mean, stderr = _mean_over_members([results[i, rho][0] for i in self.members])
            error = float(np.mean([results[i, rho][2] for i in self.members]))
            lines.append("  " + f"{rho:<8g}" + "".join(f"{_format(*results[i, rho][:2]):>22}" for i in self.members)
                         + f"{_format(mean, stderr):>24}{100 * error:>15.2f}%")
        return lines


# ----------------------------------------------------------------------------------------------
# Hessian


def measure_hessian(paths: Iterable[str | os.PathLike], *, dataset: str | None = None, root=None,
                    split: str = "train", n_examples: int | None = None, batch_size: int = 128,
                    trace: bool | None = None, eigenvalues: int = 0, density: bool = False, n_probes: int = 100,
                    method: str = "hutchinson", seed: int = 0, lanczos_steps: int = 100, density_runs: int = 1,
                    density_grid: int = 200, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                    progress: bool = False) -> list[Measurement]:
    """Curvature of every member's loss on ``n_examples`` samples of ``split``, stored as rows.

    - ``trace`` (the default when nothing else is asked): :func:`landscape.hessian.hessian_trace`
      with ``n_probes`` products by ``method`` (``hutchinson`` or ``hutch++``); rows ``hessian/trace``
      per member (stderr over probes) and its ensemble mean;
    - ``eigenvalues=K``: the K largest by Lanczos (:func:`~landscape.hessian.hessian_eigenvalues`,
      at most ``lanczos_steps`` products); rows ``hessian/eigenvalue`` with ``rank`` 1..K. ``K`` is
      not a setting: asking for fewer reuses stored ranks (each is within Lanczos' tolerance);
    - ``density``: stochastic Lanczos quadrature (:func:`~landscape.hessian.hessian_spectral_density`,
      ``density_runs`` starts of ``lanczos_steps`` steps) on ``density_grid`` points; rows
      ``hessian/density`` keyed by ``grid_index`` (0 … ``density_grid`` − 1), with the grid point in
      the location column ``eigenvalue`` (computed from the spectrum, so not part of the key). Rows
      written before, keyed by their ``eigenvalue``, are reused as they are.

    Samples: the first ``n_examples`` (default ``min(1024, N)``) of a permutation seeded by
    ``seed``, which also seeds the probes and the Lanczos starts.
    """
    _check_measure_options("hessian", locals())
    trace = _hessian_trace_asked(trace, eigenvalues, density)
    splits = _Splits(root)
    runs = [(run, _example_count("--n-examples", n_examples, run.images, HESSIAN_EXAMPLES))
            for run in _run_inputs(paths, dataset, split, splits)]
    return _measure([_Hessian(run.path, run.members, _where(splits, run, split),
                              _Samples(run.images, _permutation(len(run.images), seed)[:count], batch_size, device),
                              count, batch_size, seed, trace, eigenvalues, density, n_probes, method, lanczos_steps,
                              density_runs, density_grid) for run, count in runs], device, dtype, progress)


@dataclass
class _Hessian(_Study):
    """Tasks ``(member, metric)``; results: the trace ``(value, stderr)``, the K largest eigenvalues,
    ``True`` for a stored density."""

    samples: _Samples
    count: int
    batch_size: int
    seed: int
    trace: bool
    eigenvalues: int
    density: bool
    n_probes: int
    method: str
    lanczos_steps: int
    density_runs: int
    density_grid: int

    def __post_init__(self):
        data = {"n_examples": self.count, "batch_size": self.batch_size, "seed": self.seed}
        self.wanted = {}  # metric -> settings of its rows
        if self.trace:
            self.wanted["hessian/trace"] = {"n_probes": self.n_probes, "method": self.method, **data}
        if self.eigenvalues:
            self.wanted["hessian/eigenvalue"] = {**data, "n_iters": self.lanczos_steps}
        if self.density:
            self.wanted["hessian/density"] = {**data, "n_iters": self.lanczos_steps, "n_runs": self.density_runs,
                                              "grid": self.density_grid}

    def tasks(self) -> list:
        return [(index, metric) for index in self.members for metric in self.wanted]

    def name(self, task) -> str:
        return f"member-{task[0]}:{task[1]}"

    def group(self, task):
        return task[0]  # a member's metrics are stored together

    def lookup(self, stored: _StoredRows, task):
        index, metric = task
        rows = stored.get(f"member-{index}", metric, self.where, self.wanted[metric])
        if metric == "hessian/eigenvalue":
            ranks = {int(axes["rank"]): value for axes, value, _ in reversed(rows)}  # the first row of each rank
            wanted = range(1, self.eigenvalues + 1)
            return tuple(ranks[rank] for rank in wanted) if set(ranks) >= set(wanted) else None
        if metric == "hessian/trace":
            return rows[-1][1:] if len(rows) == 1 else None
        return True if _whole_grid(rows, ("grid_index",), ("eigenvalue",), (self.density_grid,)) else None

    def compute(self, models: _Members, task):
        index, metric = task
        model = models[index]
        generator = torch.Generator().manual_seed(self.seed)
        row = {"scope": f"member-{index}", "metric": metric}
        if metric == "hessian/trace":
            estimate = hessian.hessian_trace(model, LOSS, self.samples, n_probes=self.n_probes, method=self.method,
                                             generator=generator)
            return [{**row, "value": estimate.value, "stderr": estimate.stderr, **self.where,
                     **self.wanted[metric]}], (estimate.value, estimate.stderr)
        if metric == "hessian/eigenvalue":
            pairs = hessian.hessian_eigenvalues(model, LOSS, self.samples, k=self.eigenvalues,
                                                n_iters=self.lanczos_steps, generator=generator)
            return [{**row, "value": float(value), "rank": rank, **self.where, **self.wanted[metric]}
                    for rank, value in enumerate(pairs.eigenvalues.tolist(), start=1)], \
                tuple(float(value) for value in pairs.eigenvalues.tolist())
        spectrum = hessian.hessian_spectral_density(model, LOSS, self.samples, n_iters=self.lanczos_steps,
                                                    n_runs=self.density_runs, grid=self.density_grid,
                                                    generator=generator)
        return [{**row, "value": float(value), "grid_index": index, "eigenvalue": float(point), **self.where,
                 **self.wanted[metric]}
                for index, (point, value) in enumerate(zip(spectrum.grid.tolist(), spectrum.density.tolist()))], True

    def means(self) -> list[_Mean]:
        if not self.trace:
            return []
        return [_Mean("hessian/trace", self.wanted["hessian/trace"],
                      [(index, "hessian/trace") for index in self.members], operator.itemgetter(0))]

    def summary(self, results: Mapping, missing: Sequence) -> list[str]:
        lines = [f"{self.path.name}: Hessian of the {self.where['dataset']} {self.where['split']} loss on "
                 f"{self.count} samples (seed {self.seed}): "
                 f"{len(missing)} measured now, {len(results) - len(missing)} stored"]
        for index in self.members:
            parts = []
            if self.trace:
                parts.append(f"trace {_format(*results[index, 'hessian/trace'])} "
                             f"({self.method}, {self.n_probes} probes)")
            if self.eigenvalues:
                values = results[index, "hessian/eigenvalue"]
                parts.append(f"{'largest eigenvalue' if len(values) == 1 else f'{len(values)} largest eigenvalues'} "
                             + ", ".join(f"{value:.4g}" for value in values))
            if self.density:
                parts.append("density stored")
            lines.append(f"  member-{index}: " + ", ".join(parts))
        if self.trace:
            mean = _mean_over_members([results[index, "hessian/trace"][0] for index in self.members])
            lines.append(f"  mean trace over members: {_format(*mean)}")
        return lines


# ----------------------------------------------------------------------------------------------
# Fisher


def fisher_path(run_path: str | os.PathLike, member: int, split: str) -> Path:
    """Where member ``member``'s per-sample Fisher traces on ``split`` are stored (a float ``.npy``)."""
    return Path(run_path) / FISHER_DIR / f"member-{member}-{split}.npy"


def _read_fisher(file: Path, count: int) -> np.ndarray | None:
    if not file.is_file():
        return None
    try:
        scores = np.load(file, allow_pickle=False)
    except (OSError, ValueError):
        return None  # damaged: measure again
    return scores if scores.shape == (count,) else None


FISHER_METRICS = ("fisher/mean", *(f"fisher/q{q}" for q in FISHER_QUANTILES), "fisher/max")


def measure_fisher(paths: Iterable[str | os.PathLike], *, dataset: str | None = None, root=None,
                   split: str = "train", n_examples: int | None = None, batch_size: int = 256,
                   chunk_size: int | None = 256, device: torch.device | str = "cpu",
                   dtype: torch.dtype | None = None, progress: bool = False) -> list[Measurement]:
    """Per-sample Fisher trace ``‖∇θ ℓ(x_j, y_j)‖²`` of every member on the first ``n_examples``
    samples of ``split`` (default all; :func:`landscape.fisher.per_sample_fisher_trace`).

    The scores go to :func:`fisher_path` (``fisher/member-<i>-<split>.npy``, entry ``j`` = sample
    ``j`` of the split, written atomically); rows ``fisher/mean`` (stderr ``std/√N``),
    ``fisher/q50``, ``q90``, ``q99`` (linear interpolation between order statistics, NumPy's
    default) and ``fisher/max``, setting ``n_examples``. A member is measured again when its rows
    or its array are missing, or when the array does not match the stored mean.
    """
    _check_measure_options("fisher", locals())
    splits = _Splits(root)
    runs = [(run, _example_count("--n-examples", n_examples, run.images))
            for run in _run_inputs(paths, dataset, split, splits)]
    return _measure([_Fisher(run.path, run.members, _where(splits, run, split),
                             _Samples(run.images, torch.arange(count), batch_size, device), count, chunk_size)
                     for run, count in runs], device, dtype, progress)


@dataclass
class _Fisher(_Study):
    """Tasks: the members; result: ``{metric: value}`` of the summary rows."""

    samples: _Samples
    count: int
    chunk_size: int | None
    unit: ClassVar[str] = "member"

    def tasks(self) -> list:
        return list(self.members)

    def name(self, task) -> str:
        return f"member-{task}"

    def lookup(self, stored: _StoredRows, index: int):
        settings = {"n_examples": self.count}
        values = {metric: stored.value(f"member-{index}", metric, self.where, settings) for metric in FISHER_METRICS}
        scores = _read_fisher(fisher_path(self.path, index, self.where["split"]), self.count)
        consistent = scores is not None and values["fisher/mean"] is not None and math.isclose(
            float(scores.astype(np.float64).mean()), values["fisher/mean"], rel_tol=1e-6, abs_tol=1e-12)
        return values if consistent and None not in values.values() else None

    def compute(self, models: _Members, index: int):
        settings = {"n_examples": self.count}
        scores = fisher.per_sample_fisher_trace(models[index], LOSS, self.samples, chunk_size=self.chunk_size)
        scores = scores.detach().cpu().numpy()
        exact = scores.astype(np.float64)
        if not np.isfinite(exact).all():
            raise _Refused({"scope": f"member-{index}", "metric": "fisher/mean", **settings},
                           f"{int((~np.isfinite(exact)).sum())} of {self.count} per-sample traces are NaN or inf")
        with atomic_path(fisher_path(self.path, index, self.where["split"])) as temporary:
            with open(temporary, "wb") as stream:  # a file object: np.save would add ".npy" to a name
                np.save(stream, scores, allow_pickle=False)
        values = {"fisher/mean": exact.mean(), "fisher/max": exact.max(),
                  **{f"fisher/q{q}": np.quantile(exact, q / 100) for q in FISHER_QUANTILES}}
        stderr = exact.std(ddof=1) / math.sqrt(self.count) if self.count > 1 else math.nan
        rows = [{"scope": f"member-{index}", "metric": metric, "value": float(values[metric]),
                 "stderr": stderr if metric == "fisher/mean" else math.nan, **self.where, **settings}
                for metric in FISHER_METRICS]
        return rows, {metric: float(values[metric]) for metric in FISHER_METRICS}

    def summary(self, results: Mapping, missing: Sequence) -> list[str]:
        lines = [f"{self.path.name}: per-sample Fisher trace on {self.where['dataset']} {self.where['split']}, "
                 f"{self.count} samples: {len(missing)} members measured now, "
                 f"{len(self.members) - len(missing)} stored (arrays in {self.path / FISHER_DIR})",
                 "  " + f"{'member':<10}" + "".join(f"{metric.split('/')[1]:>12}" for metric in FISHER_METRICS)]
        return lines + ["  " + f"{index:<10}" + "".join(f"{results[index][metric]:>12.4g}"
                                                         for metric in FISHER_METRICS) for index in self.members]


# ----------------------------------------------------------------------------------------------
# connectivity


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats
               for module in model.modules())


ALIGNMENTS = ("none", "weight", "activation")


def _alignments(align: str | Sequence[str], name: str = "--align") -> list[str]:
    kinds = [align] if isinstance(align, str) else list(align)
    kinds = [part.strip() for kind in kinds for part in str(kind).split(",") if part.strip()]
    unknown = [kind for kind in kinds if kind not in ALIGNMENTS]
    if unknown or not kinds:
        raise InputError(f"{name} {','.join(unknown) or repr(align)}: use none, weight or activation "
                         "(a comma list such as weight,none measures each)")
    return list(dict.fromkeys(kinds))


class _AlignedMembers:
    """Members permuted to match member ``reference`` (:mod:`landscape.alignment`), each aligned
    on first use; the reference itself is returned unchanged."""

    def __init__(self, members: _Members, kind: str, reference: int, seed: int, batches,
                 spec: alignment.PermutationSpec):
        self.members, self.kind, self.reference, self.seed, self.batches = members, kind, reference, seed, batches
        self.spec = spec
        self.aligned: dict[int, torch.nn.Module] = {}

    def __getitem__(self, index: int) -> torch.nn.Module:
        if index == self.reference:
            return self.members[index]
        if index not in self.aligned:
            reference, member = self.members[self.reference], self.members[index]
            self.aligned[index] = (alignment.weight_matching(reference, member, self.spec, seed=self.seed)
                                   if self.kind == "weight" else
                                   alignment.activation_matching(reference, member, self.spec, self.batches))
        return self.aligned[index]


def measure_connectivity(paths: Iterable[str | os.PathLike], *, dataset: str | None = None, root=None,
                         split: str = "test", n_examples: int | None = None, alphas: int = 21, plane: bool = False,
                         grid: int = 21, bn_reset: bool = True, bn_examples: int = 2048, batch_size: int = 256,
                         seed: int = 0, chunk_size: int = 8, align: str | Sequence[str] = "none",
                         device: torch.device | str = "cpu",
                         dtype: torch.dtype | None = None, progress: bool = False) -> list[Measurement]:
    """Linear paths and loss barriers between every pair of members, and optionally the loss plane
    through members 0, 1, 2 (:mod:`landscape.connectivity`), on the first ``n_examples`` samples of
    ``split`` (default all).

    Per pair ``i < j`` (scope ``pair-<i>-<j>``): ``connectivity/loss`` and ``connectivity/accuracy``
    at each of ``alphas`` evenly spaced ``α`` in [0, 1] (column ``alpha``), ``connectivity/barrier``
    and ``connectivity/barrier_alpha``, and the pair connectivity ``connectivity/q`` and
    ``connectivity/q_loss`` of that path (:func:`landscape.connectivity.pair_connectivity`: our
    reconstruction of Lion et al. 2024's ``q_pair``, whose exact formula could not be recovered),
    all with the setting ``alphas``; per ensemble (scope ``ensemble``, ``aggregate="mean"``)
    ``connectivity/q_bar`` and ``connectivity/q_loss_bar``, their means over the pairs, with
    ``stderr = std(ddof=1)/√P`` over the ``P`` pairs (a spread: pairs share members, so it is no
    sampling error). Every row has ``bn_mode``. Tables stored before ``q`` existed keep their
    paths and barriers: their ``q`` rows are computed from the stored path rows (the ``alphas`` points
    of the same settings, data and weights) when those are whole, else the pair is measured again. With
    ``plane``: ``plane/loss`` and ``plane/accuracy`` on a ``grid`` x ``grid`` grid (scope
    ``ensemble``, keyed by ``u_index``, ``v_index``; scope ``member-<i>`` at each member's own
    position), with the coordinates, computed from the members' weights, in the location columns
    ``u``, ``v`` (rows written before, keyed by ``u``, ``v``, are reused as they are). BatchNorm
    statistics: with ``bn_reset`` every evaluated network gets statistics recomputed from
    ``bn_examples`` training samples without augmentation (drawn with ``seed``; ``bn_mode="reset"``),
    otherwise they are interpolated like the weights
    (``"interpolated"``); networks without BatchNorm give ``"none"``.

    Alignment (``align``: ``none``, ``weight``, ``activation`` or a list of them, each measured):
    every member is permuted to match member 0 (:mod:`landscape.alignment`; Git Re-Basin weight
    matching with ``seed``, or activation matching on the BatchNorm samples of the training split)
    before paths, barriers and the plane are measured. Aligned rows have the settings
    ``alignment``, ``aligned_to`` (the reference member), ``reference_weights`` (the digest of its
    weights file, so new reference weights make the pair rows stale) and ``align_seed`` (and
    ``align_examples`` for activation matching); rows without ``alignment`` are unaligned, as they
    always were. The permutation groups are the zoo's hand-written ones, or for any other model
    traced from its graph (:mod:`ensembles.models.permutation_specs`), whose rows also carry
    ``align_spec``, a digest of the traced groups. Either kind is proven on two samples of ``split``
    (a random permutation must leave the outputs unchanged), and a model whose groups cannot be
    derived is refused, before anything is measured.
    """
    _check_measure_options("connectivity", locals())
    alignments = _alignments(align)
    splits = _Splits(root)
    studies = []
    for run in _run_inputs(paths, dataset, split, splits):
        _check_member_count(run, plane)
        count = _example_count("--n-examples", n_examples, run.images)
        architecture = run_folder.build_member_model(run.config)
        spec = spec_digest = None
        if alignments != ["none"]:  # refuses what it cannot align, before any write
            spec = permutation_specs.permutation_spec(architecture, run.images.batch(np.arange(min(2, count))))
            if permutation_specs.zoo_permutation_spec(architecture) is None:
                spec_digest = permutation_specs.spec_digest(spec)
        has_batchnorm = _has_batchnorm(architecture)
        bn_mode = "reset" if bn_reset and has_batchnorm else ("interpolated" if has_batchnorm else "none")
        training = splits.get(run.label, "train", int(run.config["num_classes"]), run_folder.data_normalized(run.config), run.root) \
            if bn_mode == "reset" or "activation" in alignments else None
        for kind in alignments:
            read = training if bn_mode == "reset" or kind == "activation" else None  # training data this study reads
            studies.append(_Connectivity(run.path, run.members, _connectivity_where(splits, run, split, read),
                                         run.images, count, alphas, plane, grid, bn_mode, read, bn_examples,
                                         batch_size, seed, chunk_size, device, kind, spec, spec_digest))
    return _measure(studies, device, dtype, progress)


def _check_member_count(run: _RunInput, plane: bool) -> None:
    if len(run.members) < 2:
        raise InputError(f"{run.path} has {len(run.members)} finished member; connectivity needs at least two "
                         "(finish training the others or pass another run)")
    if plane and len(run.members) < 3:
        raise InputError(f"--plane needs three members but {run.path} has {len(run.members)}; "
                         "drop --plane for this run")


def _connectivity_where(splits: _Splits, run: _RunInput, split: str, training) -> dict:
    where = _where(splits, run, split)
    if training is not None:  # BatchNorm statistics or activation matching read training samples: they count too
        where["data"] = hashlib.sha256(f"{where['data']}|{splits.digest(run.label, 'train', run.root)}".encode()).hexdigest()[:16]
    return where


@dataclass
class _Connectivity(_Study):
    """Tasks: the pairs ``(i, j)``, then ``"plane"``; results ``(barrier, its alpha)``, ``True``."""

    images: datasets.ImageDataset
    count: int
    alphas: int
    plane: bool
    grid: int
    bn_mode: str
    training: datasets.ImageDataset | None
    bn_examples: int
    batch_size: int
    seed: int
    chunk_size: int
    device: torch.device | str
    alignment: str = "none"
    spec: alignment.PermutationSpec | None = None
    spec_digest: str | None = None  # of a traced spec; the zoo's hand-written groups are as they always were
    unit: ClassVar[str] = "path"

    def __post_init__(self):
        self.curve_settings = {"bn_mode": self.bn_mode, "n_examples": self.count}
        self.bn_batches = self.align_batches = self.aligned = None
        if self.training is not None:
            bn_count = min(self.bn_examples, len(self.training))
            samples = _Samples(self.training, _permutation(len(self.training), self.seed)[:bn_count],
                               self.batch_size, self.device)
            if self.bn_mode == "reset":
                self.curve_settings.update(bn_examples=bn_count, batch_size=self.batch_size, seed=self.seed)
                self.bn_batches = samples
            if self.alignment == "activation":
                self.curve_settings.update(align_examples=bn_count)
                self.align_batches = samples
        self._digests: dict[int, str] = {}  # member files digested to tie rows derived from stored ones
        if self.alignment != "none":  # pairs are aligned to member 0: one reference for the whole ensemble
            # (unaligned rows keep the settings they always had, so stored ones are still reused)
            # an aligned pair's numbers depend on the reference's weights too, which its scope does not read
            reference = run_folder.member_path(self.path, self.members[0])
            self.curve_settings.update(alignment=self.alignment, aligned_to=self.members[0], align_seed=self.seed,
                                       reference_weights=file_digest(reference))
            if self.spec_digest is not None:
                self.curve_settings.update(align_spec=self.spec_digest)
        self.barrier_settings = {**self.curve_settings, "alphas": self.alphas}
        self.plane_settings = {**self.curve_settings, "grid": self.grid}
        self.batches = _Samples(self.images, torch.arange(self.count), self.batch_size, self.device)

    def tasks(self) -> list:
        pairs = [(i, j) for position, i in enumerate(self.members) for j in self.members[position + 1:]]
        return pairs + (["plane"] if self.plane else [])

    def name(self, task) -> str:
        return "plane" if task == "plane" else f"pair-{task[0]}-{task[1]}"

    def lookup(self, stored: _StoredRows, task):
        if task == "plane":
            complete = all(_whole_grid(stored.get("ensemble", metric, self.where, self.plane_settings),
                                       ("u_index", "v_index"), ("u", "v"), (self.grid, self.grid))
                           for metric in ("plane/loss", "plane/accuracy"))
            return True if complete else None
        scope = self.name(task)
        ends = [stored.value(scope, metric, self.where, self.barrier_settings)
                for metric in ("connectivity/barrier", "connectivity/barrier_alpha")]
        wanted = connectivity.evenly_spaced_alphas(self.alphas).numpy()
        curves = [stored.get(scope, metric, self.where, self.curve_settings)
                  for metric in ("connectivity/loss", "connectivity/accuracy")]
        if None in ends or not all(_covers([float(axes["alpha"]) for axes, _, _ in curve], wanted) for curve in curves):
            return None
        qs = [stored.value(scope, metric, self.where, self.barrier_settings) for metric in Q_METRICS]
        if None not in qs:
            return (*ends, *qs)
        return self._q_of_stored_path(stored, task, tuple(ends), curves, wanted)

    def _q_of_stored_path(self, stored: _StoredRows, task, ends: tuple, curves, wanted: np.ndarray):
        """The q rows of a pair whose path and barrier are stored without them (a table written before
        q existed): computed from the stored points at exactly the ``alphas`` grid, tied to the files
        those rows were measured on; ``None`` (measure it) when the files have changed since."""
        scope = self.name(task)
        read = {index: self._digest(index) for index in task}
        if run_folder.weights_digest(self.path, scope, None, read) != stored.weights(scope):
            return None
        loss, accuracy = (torch.tensor([_point(curve, alpha) for alpha in wanted], dtype=torch.float64)
                          for curve in curves)
        path = connectivity.Interpolation(alphas=torch.from_numpy(wanted), loss=loss, accuracy=accuracy,
                                          bn_mode=self.bn_mode)
        pair = connectivity.pair_connectivity(path)
        return _Derived(self._q_rows(scope, pair), (*ends, pair.q, pair.q_loss), read)

    def _digest(self, index: int) -> str:
        if index not in self._digests:
            self._digests[index] = file_digest(run_folder.member_path(self.path, index))
        return self._digests[index]

    def _q_rows(self, scope: str, pair: connectivity.PairConnectivity) -> list[dict]:
        return [{"scope": scope, "metric": metric, "value": value, **self.where, **self.barrier_settings}
                for metric, value in zip(Q_METRICS, (pair.q, pair.q_loss))]

    def _members(self, models: _Members):
        if self.alignment == "none":
            return models
        if self.aligned is None or self.aligned.members is not models:
            models[self.members[0]]  # loads the members: their digests are those read
            if models.weights[self.members[0]] != self.curve_settings["reference_weights"]:
                raise InputError(f"{run_folder.member_path(self.path, self.members[0])} changed during the measurement "
                                 "(the alignment's reference is not the one planned); no rows were stored: run it again")
            self.aligned = _AlignedMembers(models, self.alignment, self.members[0], self.seed, self.align_batches,
                                           self.spec)
        return self.aligned

    def compute(self, models: _Members, task):
        models = self._members(models)
        if task == "plane":
            return self._plane(models), True
        scope, curve_settings = self.name(task), self.curve_settings
        barrier = connectivity.loss_barrier(models[task[0]], models[task[1]], LOSS, self.batches, alphas=self.alphas,
                                            bn_batches=self.bn_batches, chunk_size=self.chunk_size)
        rows, curve = [], barrier.interpolation
        for alpha, loss, accuracy in zip(curve.alphas.tolist(), curve.loss.tolist(), curve.accuracy.tolist()):
            rows += [{"scope": scope, "metric": "connectivity/loss", "value": loss, "alpha": alpha,
                      **self.where, **curve_settings},
                     {"scope": scope, "metric": "connectivity/accuracy", "value": accuracy, "alpha": alpha,
                      **self.where, **curve_settings}]
        rows += [{"scope": scope, "metric": "connectivity/barrier", "value": barrier.value,
                  **self.where, **self.barrier_settings},
                 {"scope": scope, "metric": "connectivity/barrier_alpha", "value": barrier.alpha,
                  **self.where, **self.barrier_settings}]
        pair = connectivity.pair_connectivity(curve)
        return rows + self._q_rows(scope, pair), (barrier.value, barrier.alpha, pair.q, pair.q_loss)

    def means(self) -> list[_Mean]:
        pairs = [task for task in self.tasks() if task != "plane"]
        return [_Mean(metric, self.barrier_settings, pairs, operator.itemgetter(position))
                for metric, position in (("connectivity/q_bar", 2), ("connectivity/q_loss_bar", 3))]

    def _plane(self, models: _Members) -> list[dict]:
        surface = connectivity.plane([models[i] for i in self.members[:3]], LOSS, self.batches, grid=self.grid,
                                     bn_batches=self.bn_batches, chunk_size=self.chunk_size)
        rows = []
        for a, u in enumerate(surface.u.tolist()):
            for b, v in enumerate(surface.v.tolist()):
                place = {"u_index": a, "v_index": b, "u": u, "v": v}
                rows += [{"scope": "ensemble", "metric": "plane/loss", "value": float(surface.loss[a, b]),
                          **place, **self.where, **self.plane_settings},
                         {"scope": "ensemble", "metric": "plane/accuracy", "value": float(surface.accuracy[a, b]),
                          **place, **self.where, **self.plane_settings}]
        # Where the members sit on the plane, so the figure can mark them (scope member-<i>).
        for index, (u, v), loss, accuracy in zip(self.members[:3], surface.member_coordinates.tolist(),
                                                 surface.member_loss.tolist(), surface.member_accuracy.tolist()):
            rows += [{"scope": f"member-{index}", "metric": metric, "value": float(value), "u": u, "v": v,
                      **self.where, **self.plane_settings}
                     for metric, value in (("plane/loss", loss), ("plane/accuracy", accuracy))]
        return rows

    def summary(self, results: Mapping, missing: Sequence) -> list[str]:
        pairs = [task for task in results if task != "plane"]
        measured = [task for task in missing if task != "plane"]
        lines = [f"{self.path.name}: linear paths between members on {self.where['dataset']} {self.where['split']}, "
                 f"{self.count} samples, {self.alphas} alphas, BatchNorm {self.bn_mode}, alignment {self.alignment}"
                 + (f" (to member {self.members[0]})" if self.alignment != "none" else "") + ": "
                 f"{len(measured)} pairs measured now, {len(pairs) - len(measured)} stored",
                 f"  {'pair':<12}{'barrier':>12}{'at alpha':>10}{'q':>10}{'q_loss':>10}"]
        lines += [f"  {f'{i}-{j}':<12}{results[i, j][0]:>12.4g}{results[i, j][1]:>10.3g}{results[i, j][2]:>10.4g}"
                  f"{results[i, j][3]:>10.4g}" for i, j in pairs]
        q_bar, spread = _mean_over_members([results[pair][2] for pair in pairs])
        lines.append(f"  q̄ = {_format(q_bar, spread)} over {len(pairs)} pairs (q: the worst fraction of the chord "
                     "between the ends' accuracies the path keeps; our reconstruction of Lion et al. 2024's q_pair)")
        if self.plane:
            lines.append(f"  plane through members {', '.join(map(str, self.members[:3]))}: {self.grid}x{self.grid} "
                         "grid " + ("measured now" if "plane" in missing else "stored"))
        return lines


# ----------------------------------------------------------------------------------------------
# options: one rule each, for the command line, Python and sweep files alike


def _option_rules() -> dict[str, dict[str, options.Rule]]:
    """Every option of each ``measure_*`` function and the rule its value must meet
    (:mod:`ensembles.studies.options`); cross-option checks are :func:`check_combinations`."""
    split = options.choice(datasets.SPLITS)
    examples = options.whole(1).optional()
    return {
        "sharpness": {"split": split, "kind": options.choice(("worst", "average")),
                      "norm": options.choice(("l2", "linf")), "adaptive": options.boolean(), "rhos": options.radii(),
                      "m": options.whole(1), "n_batches": options.whole(1), "seed": options.integer(),
                      "n_iters": options.whole(1), "n_restarts": options.whole(1), "n_samples": options.whole(1),
                      "exclude": options.patterns().optional(), "chunk_size": options.whole(1).optional(),
                      "ascent": options.choice(ASCENTS)},
        "hessian": {"split": split, "n_examples": examples, "batch_size": options.whole(1),
                    "trace": options.boolean().optional(), "eigenvalues": options.whole(0),
                    "density": options.boolean(), "n_probes": options.whole(1),
                    "method": options.choice(hessian.TRACE_METHODS), "seed": options.integer(),
                    "lanczos_steps": options.whole(1), "density_runs": options.whole(1),
                    "density_grid": options.whole(2)},
        "fisher": {"split": split, "n_examples": examples, "batch_size": options.whole(1),
                   "chunk_size": options.whole(1).optional()},
        "connectivity": {"split": split, "n_examples": examples, "alphas": options.whole(2),
                         "plane": options.boolean(), "grid": options.whole(2), "bn_reset": options.boolean(),
                         "bn_examples": options.whole(2), "batch_size": options.whole(1), "seed": options.integer(),
                         "chunk_size": options.whole(1), "align": options.names("alignment kinds")},
    }


OPTION_RULES = _option_rules()
#: Options whose command-line flag is not ``--`` + their name.
_FLAGS = {"m": "--batch-size", "rhos": "--rho"}


def check_combinations(command: str, chosen: Mapping, dtype: torch.dtype | None = None,
                       name: Callable[[str], str] = functools.partial(options.flag, renamed=_FLAGS)) -> None:
    """The checks of a measurement that involve more than one option (each option already meets
    its rule); ``chosen`` holds every option (:data:`OPTION_RULES`), ``name(option)`` spells one
    in messages (default: its command-line flag)."""
    if command == "sharpness":
        if chosen["ascent"] == "reference" and chosen["kind"] != "worst":
            raise InputError(f"{name('ascent')} reference applies to the worst case only; drop it or use "
                             f"{name('kind')} worst")
        for rho in _radii(chosen["rhos"]):  # a radius the models' dtype cannot hold is refused before any work
            sharpness.check_radius(rho, chosen["norm"], chosen["kind"], dtype or torch.get_default_dtype())
    elif command == "hessian":
        eigenvalues = chosen["eigenvalues"]
        if not (_hessian_trace_asked(chosen["trace"], eigenvalues, chosen["density"]) or eigenvalues
                or chosen["density"]):
            raise InputError(f"nothing to measure; ask for {name('trace')}, {name('eigenvalues')} K and/or "
                             f"{name('density')}")
        positive_int(name("n_probes"), chosen["n_probes"], minimum=3 if chosen["method"] == "hutch++" else 1)
        positive_int(name("lanczos_steps"), chosen["lanczos_steps"], minimum=max(eigenvalues, 1))
    elif command == "connectivity":
        _alignments(chosen["align"], name("align"))


def _check_measure_options(command: str, given: Mapping) -> None:
    """The options among ``given`` (a ``measure_*`` function's arguments), each by its rule, named
    by its command-line flag; then their combinations."""
    chosen = {name: given[name] for name in OPTION_RULES[command]}
    options.check_options(OPTION_RULES[command], chosen, lambda name: options.flag(name, _FLAGS))
    check_combinations(command, chosen, given.get("dtype"))


def _hessian_trace_asked(trace: bool | None, eigenvalues: int, density: bool) -> bool:
    """``trace`` when given, else True when nothing else is asked (the trace is the default)."""
    return (not eigenvalues and not density) if trace is None else bool(trace)
