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
computed again (:func:`ensembles.runs.find_results` semantics: same scope, metric, slice,
settings and data fingerprint, :func:`ensembles.data.data_digest` of the split read, in the row's
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
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ensembles.data import datasets
from ensembles.runs import run_folder
from ensembles.runs.files import atomic_path
from ensembles.runs.logit_cache import dataset_label
from landscape import connectivity, fisher, hessian, sharpness
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
#: Columns that place one row on an axis (a curve, a grid, a spectrum) rather than set the measurement.
AXIS_COLUMNS = ("alpha", "u", "v", "rank", "eigenvalue")
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

    The table is read once per run; the lookup is that of :func:`runs.find_results` with the axis
    columns (``alpha``, ``rank`` ...) taken out of the settings and returned with each row.
    """

    def __init__(self, path: Path):
        table = run_folder.read_results(path, current_only=True)
        columns = ["scope", "metric", "dataset", "split", "corruption", "settings", "data", "value", "stderr"]
        self._rows: dict[tuple, list[tuple[dict, float, float]]] = defaultdict(list)
        if table.empty:
            return
        for scope, metric, dataset, split, corruption, text, data, value, stderr in \
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

    def get(self, scope: str, metric: str, where: Mapping, settings: Mapping) -> list[tuple[dict, float, float]]:
        """``[(axes, value, stderr), ...]`` of the stored rows of one measurement."""
        if where.get("data") is None:
            return []  # rows of unknown data are never reused
        key = (scope, metric, where["dataset"], where["split"], run_folder.canonical_settings(settings), where["data"])
        return self._rows.get(key, [])

    def value(self, scope: str, metric: str, where: Mapping, settings: Mapping) -> float | None:
        rows = self.get(scope, metric, where, settings)
        return rows[-1][1] if rows else None


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
        rows pass them to :func:`ensembles.runs.append_results`, which refuses files changed since."""
        return None if self.run is None else self.run.weights


class _Splits:
    """Clean splits loaded once per call (several runs usually share one dataset)."""

    def __init__(self, root):
        self.root, self._loaded, self._digests = root, {}, {}

    def digest(self, label: str, split: str) -> str:
        """The fingerprint of the split's images and labels (:func:`ensembles.data.data_digest`)."""
        if (label, split) not in self._digests:
            self._digests[label, split] = datasets.data_digest(label, self.root, split)
        return self._digests[label, split]

    def get(self, label: str, split: str, n_classes: int) -> datasets.ImageDataset:
        if (label, split) not in self._loaded:
            self._loaded[label, split] = datasets.load_dataset(label, self.root, split, augment=False)
        images = self._loaded[label, split]
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


def _run_inputs(paths, dataset: str | None, split: str, splits: "_Splits") -> Iterator[_RunInput]:
    """Each run's config, finished members and split, checked before any measurement starts."""
    for path in _run_paths(paths):
        config = run_folder.read_config(path)
        members = _members_of(path, config)
        label = dataset_label(dataset or config["dataset"])
        yield _RunInput(path, config, members, label, splits.get(label, split, int(config["num_classes"])))


def _members_of(path: Path, config: Mapping) -> list[int]:
    members = run_folder.finished_members(config)
    if not members:
        raise InputError(f"{path} has no finished members yet; train or import them first")
    return members


def _count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


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


_NOT_SETTINGS = {"scope", "metric", "value", "stderr", "dataset", "split", "data", *AXIS_COLUMNS}  # data: a fingerprint, noise in a message


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
                        n_samples: int, exclude: tuple[str, ...], ascent: str = "apgd") -> dict:
    """The settings columns of a sharpness row (docs/results-table.md): those that change the value.

    ``ascent`` is stored only when it is ``reference``: rows without it are APGD's (every row
    written before the setting existed was), so their keys stay valid and the two never match."""
    settings = {"rho": float(rho), "m": m, "n_batches": n_batches, "seed": seed, "logit_normalization": False}
    settings.update({"n_iters": n_iters, "n_restarts": n_restarts} if kind == "worst" else {"n_samples": n_samples})
    if ascent == "reference":
        settings["ascent"] = "reference"
    if exclude:
        settings["exclude"] = ",".join(exclude)
    return settings


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
    if kind not in ("worst", "average"):
        raise InputError(f"unknown --kind {kind!r}; choose worst or average")
    if norm not in ("l2", "linf"):
        raise InputError(f"unknown --norm {norm!r}; choose l2 or linf")
    if ascent not in ASCENTS:
        raise InputError(f"unknown --ascent {ascent!r}; choose apgd or reference")
    if ascent == "reference" and kind != "worst":
        raise InputError("--ascent reference applies to the worst case only; drop it or use --kind worst")
    rhos = [rhos] if isinstance(rhos, (int, float)) else list(rhos)
    if not rhos:
        raise InputError("no radius given; pass --rho R or a comma list R1,R2")
    for rho in rhos:
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (math.isfinite(rho) and rho > 0):
            raise InputError(f"--rho must be finite and > 0, got {rho!r}; e.g. --rho 0.5 or --rho 0.25,0.5")
    rhos = list(dict.fromkeys(float(rho) for rho in rhos))
    m, n_batches = _count("--batch-size", m), _count("--n-batches", n_batches)
    n_iters, n_restarts, n_samples = _count("--n-iters", n_iters), _count("--n-restarts", n_restarts), \
        _count("--n-samples", n_samples)
    if chunk_size is not None:
        chunk_size = _count("--chunk-size", chunk_size)
    exclude = tuple(exclude or ())
    metric = f"sharpness/{kind}/{norm}/{'adaptive' if adaptive else 'standard'}"
    error_metric = "sharpness-error/" + metric.split("/", 1)[1]
    splits = _Splits(root)

    plans = []
    for rho in rhos:  # a radius the models' dtype cannot hold is refused before any work
        sharpness.check_radius(rho, norm, kind, dtype or torch.get_default_dtype())
    for run in _run_inputs(paths, dataset, split, splits):
        path, config, members, label, images = run.path, run.config, run.members, run.label, run.images
        _check_sample_budget(images, m, n_batches)
        if exclude:  # a pattern that matches nothing is a typo: say so before any work
            sharpness.select_parameters(run_folder.build_member_model(config), exclude=exclude)
        plans.append((path, members, label, images))

    measurements = []
    for path, members, label, images in plans:
        where = {"dataset": label, "split": split, "data": splits.digest(label, split)}
        stored = _StoredRows(path)
        settings = {rho: _sharpness_settings(kind, rho, m, n_batches, seed, n_iters, n_restarts, n_samples, exclude,
                                             ascent) for rho in rhos}
        values: dict[tuple[int, float], tuple[float, float, float]] = {}
        missing = []
        for index in members:
            for rho in rhos:
                found = [stored.get(f"member-{index}", name, where, settings[rho]) for name in (metric, error_metric)]
                if all(found):
                    values[index, rho] = (found[0][-1][1], found[0][-1][2], found[1][-1][1])
                else:
                    missing.append((index, rho))
        models = _Members(path, device, dtype)
        batches = sharpness_batches(images, m, n_batches, seed, device) if missing else None
        rows = []
        bar = _progress(len(missing), path.name, "measurement", progress)
        try:
            for index in members:
                member_rows = []
                for rho in [rho for i, rho in missing if i == index]:
                    model = models[index]
                    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
                    try:
                        if kind == "worst":
                            result = sharpness.worst_case_sharpness(
                                model, LOSS, batches, rho, norm, adaptive, n_iters=n_iters, n_restarts=n_restarts,
                                exclude=exclude or None, chunk_size=chunk_size, generator=generator,
                                reference_ascent=ascent == "reference")
                        else:
                            result = sharpness.average_case_sharpness(
                                model, LOSS, batches, rho, norm, adaptive, n_samples=n_samples,
                                exclude=exclude or None, chunk_size=chunk_size, generator=generator)
                    except NonFiniteError as error:
                        raise _not_finite(path, {"scope": f"member-{index}", "metric": metric, **settings[rho]},
                                          str(error), rows) from None
                    values[index, rho] = (result.value, result.stderr, result.error_increase)
                    member_rows += [
                        {"scope": f"member-{index}", "metric": metric, "value": result.value,
                         "stderr": result.stderr, **where, **settings[rho]},
                        {"scope": f"member-{index}", "metric": error_metric, "value": result.error_increase,
                         **where, **settings[rho]}]
                    bar.update()
                if member_rows:
                    _append_finite(path, member_rows, rows, models.weights)
        finally:
            bar.close()
        ensemble_rows = []
        for rho in rhos:
            mean_settings = {**settings[rho], "aggregate": "mean"}
            measured_now = any(r == rho for _, r in missing)
            for name, position in ((metric, 0), (error_metric, 2)):
                if measured_now or not stored.get("ensemble", name, where, mean_settings):
                    mean, stderr = _mean_over_members([values[i, rho][position] for i in members])
                    ensemble_rows.append({"scope": "ensemble", "metric": name, "value": mean, "stderr": stderr,
                                          **where, **mean_settings})
        if ensemble_rows:
            _append_finite(path, ensemble_rows, rows, models.weights)

        shown_metric = metric + (" (reference code's ascent)" if ascent == "reference" else "")
        lines = [f"{path.name}: {shown_metric}, {label} {split}, m={m} x {n_batches} batches, seed {seed}: "
                 f"{len(missing)} measured now, {len(members) * len(rhos) - len(missing)} stored",
                 "  " + f"{'rho':<8}" + "".join(f"{f'member-{i}':>22}" for i in members)
                 + f"{'mean over members':>24}{'error increase':>16}"]
        for rho in rhos:
            mean, stderr = _mean_over_members([values[i, rho][0] for i in members])
            error = float(np.mean([values[i, rho][2] for i in members]))
            lines.append("  " + f"{rho:<8g}" + "".join(f"{_format(*values[i, rho][:2]):>22}" for i in members)
                         + f"{_format(mean, stderr):>24}{100 * error:>15.2f}%")
        measurements.append(Measurement(path, tuple(f"member-{i}@{rho:g}" for i, rho in missing),
                                        tuple(f"member-{i}@{rho:g}" for i in members for rho in rhos
                                              if (i, rho) not in missing), rows, tuple(lines)))
    return measurements


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
      ``hessian/density`` with the grid point in ``eigenvalue``.

    Samples: the first ``n_examples`` (default ``min(1024, N)``) of a permutation seeded by
    ``seed``, which also seeds the probes and the Lanczos starts.
    """
    if method not in hessian.TRACE_METHODS:
        raise InputError(f"unknown --method {method!r}; choose {' or '.join(hessian.TRACE_METHODS)}")
    eigenvalues = _count("--eigenvalues", eigenvalues, minimum=0)
    trace = (not eigenvalues and not density) if trace is None else bool(trace)
    if not (trace or eigenvalues or density):
        raise InputError("nothing to measure; pass --trace, --eigenvalues K and/or --density")
    n_probes = _count("--n-probes", n_probes, minimum=3 if method == "hutch++" else 1)
    batch_size = _count("--batch-size", batch_size)
    lanczos_steps = _count("lanczos_steps", lanczos_steps, minimum=max(eigenvalues, 1))
    density_runs, density_grid = _count("density_runs", density_runs), _count("density_grid", density_grid, 2)
    if n_examples is not None:
        n_examples = _count("--n-examples", n_examples)
    splits = _Splits(root)

    plans = []
    for run in _run_inputs(paths, dataset, split, splits):
        count = _example_count("--n-examples", n_examples, run.images, HESSIAN_EXAMPLES)
        plans.append((run.path, run.members, run.label, run.images, count))

    measurements = []
    for path, members, label, images, count in plans:
        where = {"dataset": label, "split": split, "data": splits.digest(label, split)}
        data = {"n_examples": count, "batch_size": batch_size, "seed": seed}
        wanted = {}
        if trace:
            wanted["hessian/trace"] = {"n_probes": n_probes, "method": method, **data}
        if eigenvalues:
            wanted["hessian/eigenvalue"] = {**data, "n_iters": lanczos_steps}
        if density:
            wanted["hessian/density"] = {**data, "n_iters": lanczos_steps, "n_runs": density_runs,
                                         "grid": density_grid}
        stored = _StoredRows(path)

        def is_stored(index: int, metric: str) -> bool:
            rows = stored.get(f"member-{index}", metric, where, wanted[metric])
            if metric == "hessian/eigenvalue":
                return {int(axes["rank"]) for axes, _, _ in rows} >= set(range(1, eigenvalues + 1))
            return len(rows) == (density_grid if metric == "hessian/density" else 1)

        missing = [(index, metric) for index in members for metric in wanted if not is_stored(index, metric)]
        samples = _Samples(images, _permutation(len(images), seed)[:count], batch_size, device)
        models = _Members(path, device, dtype)
        traces = {}  # member -> (value, stderr)
        if trace:
            traces = {index: stored.get(f"member-{index}", "hessian/trace", where, wanted["hessian/trace"])[-1][1:]
                      for index in members if (index, "hessian/trace") not in missing}
        tops: dict[int, float] = {}
        rows = []
        bar = _progress(len(missing), path.name, "measurement", progress)
        try:
            for index in members:
                member_rows, scope = [], f"member-{index}"
                for metric in [metric for i, metric in missing if i == index]:
                    generator = torch.Generator().manual_seed(seed)
                    if metric == "hessian/trace":
                        estimate = hessian.hessian_trace(models[index], LOSS, samples, n_probes=n_probes,
                                                         method=method, generator=generator)
                        traces[index] = (estimate.value, estimate.stderr)
                        member_rows.append({"scope": scope, "metric": metric, "value": estimate.value,
                                            "stderr": estimate.stderr, **where, **wanted[metric]})
                    elif metric == "hessian/eigenvalue":
                        pairs = hessian.hessian_eigenvalues(models[index], LOSS, samples, k=eigenvalues,
                                                            n_iters=lanczos_steps, generator=generator)
                        tops[index] = float(pairs.eigenvalues[0])
                        member_rows += [{"scope": scope, "metric": metric, "value": float(value), "rank": rank,
                                         **where, **wanted[metric]}
                                        for rank, value in enumerate(pairs.eigenvalues.tolist(), start=1)]
                    else:
                        spectrum = hessian.hessian_spectral_density(
                            models[index], LOSS, samples, n_iters=lanczos_steps, n_runs=density_runs,
                            grid=density_grid, generator=generator)
                        member_rows += [{"scope": scope, "metric": metric, "value": float(value),
                                         "eigenvalue": float(point), **where, **wanted[metric]}
                                        for point, value in zip(spectrum.grid.tolist(), spectrum.density.tolist())]
                    bar.update()
                if member_rows:
                    _append_finite(path, member_rows, rows, models.weights)
        finally:
            bar.close()
        if trace:
            mean_settings = {**wanted["hessian/trace"], "aggregate": "mean"}
            mean, stderr = _mean_over_members([traces[i][0] for i in members])
            if any(m == "hessian/trace" for _, m in missing) or \
                    not stored.get("ensemble", "hessian/trace", where, mean_settings):
                ensemble_row = {"scope": "ensemble", "metric": "hessian/trace", "value": mean, "stderr": stderr,
                                **where, **mean_settings}
                _append_finite(path, [ensemble_row], rows, models.weights)
        if eigenvalues:
            for index in members:
                if index not in tops:
                    found = stored.get(f"member-{index}", "hessian/eigenvalue", where, wanted["hessian/eigenvalue"])
                    tops[index] = next(value for axes, value, _ in found if int(axes["rank"]) == 1)

        lines = [f"{path.name}: Hessian of the {label} {split} loss on {count} samples (seed {seed}): "
                 f"{len(missing)} measured now, {len(members) * len(wanted) - len(missing)} stored"]
        for index in members:
            parts = []
            if trace:
                parts.append(f"trace {_format(*traces[index])} ({method}, {n_probes} probes)")
            if eigenvalues:
                parts.append(f"largest eigenvalue {tops[index]:.4g}")
            if density:
                parts.append("density stored")
            lines.append(f"  member-{index}: " + ", ".join(parts))
        if trace:
            lines.append(f"  mean trace over members: {_format(mean, stderr)}")
        measurements.append(Measurement(path, tuple(f"member-{i}:{m}" for i, m in missing),
                                        tuple(f"member-{i}:{m}" for i in members for m in wanted
                                              if (i, m) not in missing), rows, tuple(lines)))
    return measurements


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
    batch_size = _count("--batch-size", batch_size)
    if chunk_size is not None:
        chunk_size = _count("--chunk-size", chunk_size)
    if n_examples is not None:
        n_examples = _count("--n-examples", n_examples)
    splits = _Splits(root)
    metrics = ("fisher/mean", *(f"fisher/q{q}" for q in FISHER_QUANTILES), "fisher/max")

    plans = []
    for run in _run_inputs(paths, dataset, split, splits):
        plans.append((run.path, run.members, run.label, run.images,
                      _example_count("--n-examples", n_examples, run.images)))

    measurements = []
    for path, members, label, images, count in plans:
        where, settings = {"dataset": label, "split": split, "data": splits.digest(label, split)}, {"n_examples": count}
        stored = _StoredRows(path)
        summaries: dict[int, dict[str, float]] = {}
        missing = []
        for index in members:
            values = {metric: stored.value(f"member-{index}", metric, where, settings) for metric in metrics}
            scores = _read_fisher(fisher_path(path, index, split), count)
            consistent = scores is not None and values["fisher/mean"] is not None and math.isclose(
                float(scores.astype(np.float64).mean()), values["fisher/mean"], rel_tol=1e-6, abs_tol=1e-12)
            if consistent and None not in values.values():
                summaries[index] = values
            else:
                missing.append(index)
        samples = _Samples(images, torch.arange(count), batch_size, device)
        models = _Members(path, device, dtype)
        rows = []
        for index in tqdm(missing, desc=path.name, unit="member", file=sys.stderr, disable=not progress, leave=False):
            scores = fisher.per_sample_fisher_trace(models[index], LOSS, samples, chunk_size=chunk_size)
            scores = scores.detach().cpu().numpy()
            exact = scores.astype(np.float64)
            if not np.isfinite(exact).all():
                raise _not_finite(path, {"scope": f"member-{index}", "metric": "fisher/mean", **settings},
                                  f"{int((~np.isfinite(exact)).sum())} of {count} per-sample traces are NaN or inf",
                                  rows)
            with atomic_path(fisher_path(path, index, split)) as temporary:
                with open(temporary, "wb") as stream:  # a file object: np.save would add ".npy" to a name
                    np.save(stream, scores, allow_pickle=False)
            values = {"fisher/mean": exact.mean(), "fisher/max": exact.max(),
                      **{f"fisher/q{q}": np.quantile(exact, q / 100) for q in FISHER_QUANTILES}}
            stderr = exact.std(ddof=1) / math.sqrt(count) if count > 1 else math.nan
            member_rows = [{"scope": f"member-{index}", "metric": metric, "value": float(values[metric]),
                            "stderr": stderr if metric == "fisher/mean" else math.nan, **where, **settings}
                           for metric in metrics]
            _append_finite(path, member_rows, rows, models.weights)
            summaries[index] = {metric: float(values[metric]) for metric in metrics}

        lines = [f"{path.name}: per-sample Fisher trace on {label} {split}, {count} samples: "
                 f"{len(missing)} members measured now, {len(members) - len(missing)} stored "
                 f"(arrays in {path / FISHER_DIR})",
                 "  " + f"{'member':<10}" + "".join(f"{metric.split('/')[1]:>12}" for metric in metrics)]
        lines += ["  " + f"{index:<10}" + "".join(f"{summaries[index][metric]:>12.4g}" for metric in metrics)
                  for index in members]
        measurements.append(Measurement(path, tuple(f"member-{i}" for i in missing),
                                        tuple(f"member-{i}" for i in members if i not in missing), rows,
                                        tuple(lines)))
    return measurements


# ----------------------------------------------------------------------------------------------
# connectivity


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats
               for module in model.modules())


def measure_connectivity(paths: Iterable[str | os.PathLike], *, dataset: str | None = None, root=None,
                         split: str = "test", n_examples: int | None = None, alphas: int = 21, plane: bool = False,
                         grid: int = 21, bn_reset: bool = True, bn_examples: int = 2048, batch_size: int = 256,
                         seed: int = 0, chunk_size: int = 8, device: torch.device | str = "cpu",
                         dtype: torch.dtype | None = None, progress: bool = False) -> list[Measurement]:
    """Linear paths and loss barriers between every pair of members, and optionally the loss plane
    through members 0, 1, 2 (:mod:`landscape.connectivity`), on the first ``n_examples`` samples of
    ``split`` (default all).

    Per pair ``i < j`` (scope ``pair-<i>-<j>``): ``connectivity/loss`` and ``connectivity/accuracy``
    at each of ``alphas`` evenly spaced ``α`` in [0, 1] (column ``alpha``), ``connectivity/barrier``
    and ``connectivity/barrier_alpha`` (setting ``alphas``); every row has ``bn_mode``. With
    ``plane``: ``plane/loss`` and ``plane/accuracy`` on a ``grid`` x ``grid`` grid (columns ``u``,
    ``v``; scope ``ensemble``). BatchNorm statistics: with ``bn_reset`` every evaluated network gets
    statistics recomputed from ``bn_examples`` training samples without augmentation (drawn with
    ``seed``; ``bn_mode="reset"``), otherwise they are interpolated like the weights
    (``"interpolated"``); networks without BatchNorm give ``"none"``.
    """
    alphas, grid = _count("--alphas", alphas, 2), _count("--grid", grid, 2)
    batch_size, chunk_size = _count("--batch-size", batch_size), _count("--chunk-size", chunk_size)
    bn_examples = _count("--bn-examples", bn_examples, 2)
    if n_examples is not None:
        n_examples = _count("--n-examples", n_examples)
    splits = _Splits(root)

    plans = []
    for run in _run_inputs(paths, dataset, split, splits):
        path, config, members, label, images = run.path, run.config, run.members, run.label, run.images
        if len(members) < 2:
            raise InputError(f"{path} has {len(members)} finished member; connectivity needs at least two "
                             "(finish training the others or pass another run)")
        if plane and len(members) < 3:
            raise InputError(f"--plane needs three members but {path} has {len(members)}; drop --plane for this run")
        n_classes = int(config["num_classes"])
        count = _example_count("--n-examples", n_examples, images)
        has_batchnorm = _has_batchnorm(run_folder.build_member_model(config))
        reset = bn_reset and has_batchnorm
        training = splits.get(label, "train", n_classes) if reset else None
        bn_count = min(bn_examples, len(training)) if reset else None
        bn_mode = "reset" if reset else ("interpolated" if has_batchnorm else "none")
        plans.append((path, members, label, images, count, bn_mode, training, bn_count))

    measurements = []
    for path, members, label, images, count, bn_mode, training, bn_count in plans:
        data = splits.digest(label, split)
        if training is not None:  # BatchNorm statistics come from training samples: their data counts too
            data = hashlib.sha256(f"{data}|{splits.digest(label, 'train')}".encode()).hexdigest()[:16]
        where = {"dataset": label, "split": split, "data": data}
        models = _Members(path, device, dtype)
        reset = bn_mode == "reset"
        common = {"bn_mode": bn_mode, "n_examples": count}
        if reset:
            common.update(bn_examples=bn_count, batch_size=batch_size, seed=seed)
        curve_settings, barrier_settings = common, {**common, "alphas": alphas}
        plane_settings = {**common, "grid": grid}
        grid_points = set(torch.linspace(0.0, 1.0, alphas, dtype=torch.float64).tolist())
        stored = _StoredRows(path)
        pairs = [(i, j) for position, i in enumerate(members) for j in members[position + 1:]]

        def pair_stored(scope: str) -> bool:
            ends = all(stored.get(scope, m, where, barrier_settings)
                       for m in ("connectivity/barrier", "connectivity/barrier_alpha"))
            curves = [{float(axes["alpha"]) for axes, _, _ in stored.get(scope, m, where, curve_settings)}
                      for m in ("connectivity/loss", "connectivity/accuracy")]
            return ends and all(curve >= grid_points for curve in curves)

        missing = [(i, j) for i, j in pairs if not pair_stored(f"pair-{i}-{j}")]
        plane_missing = plane and not all(len(stored.get("ensemble", m, where, plane_settings)) == grid * grid
                                          for m in ("plane/loss", "plane/accuracy"))
        loader = _Samples(images, torch.arange(count), batch_size, device)
        bn_loader = (_Samples(training, _permutation(len(training), seed)[:bn_count], batch_size, device)
                     if reset else None)
        barriers = {}
        for i, j in pairs:
            if (i, j) not in missing:
                scope = f"pair-{i}-{j}"
                barriers[i, j] = (stored.value(scope, "connectivity/barrier", where, barrier_settings),
                                  stored.value(scope, "connectivity/barrier_alpha", where, barrier_settings))
        rows = []
        bar = _progress(len(missing) + int(plane_missing), path.name, "path", progress)
        try:
            for i, j in missing:
                scope = f"pair-{i}-{j}"
                barrier = connectivity.loss_barrier(models[i], models[j], loader, LOSS, alphas=alphas,
                                                    bn_loader=bn_loader, chunk_size=chunk_size)
                path_rows = []
                curve = barrier.interpolation
                for alpha, loss, accuracy in zip(curve.alphas.tolist(), curve.loss.tolist(), curve.accuracy.tolist()):
                    path_rows += [{"scope": scope, "metric": "connectivity/loss", "value": loss, "alpha": alpha,
                                   **where, **curve_settings},
                                  {"scope": scope, "metric": "connectivity/accuracy", "value": accuracy,
                                   "alpha": alpha, **where, **curve_settings}]
                path_rows += [{"scope": scope, "metric": "connectivity/barrier", "value": barrier.value,
                               **where, **barrier_settings},
                              {"scope": scope, "metric": "connectivity/barrier_alpha", "value": barrier.alpha,
                               **where, **barrier_settings}]
                _append_finite(path, path_rows, rows, models.weights)
                barriers[i, j] = (barrier.value, barrier.alpha)
                bar.update()
            if plane_missing:
                surface = connectivity.plane([models[i] for i in members[:3]], loader, LOSS, grid=grid,
                                             bn_loader=bn_loader, chunk_size=chunk_size)
                plane_rows = []
                for a, u in enumerate(surface.u.tolist()):
                    for b, v in enumerate(surface.v.tolist()):
                        plane_rows += [{"scope": "ensemble", "metric": "plane/loss", "value": float(surface.loss[a, b]),
                                        "u": u, "v": v, **where, **plane_settings},
                                       {"scope": "ensemble", "metric": "plane/accuracy",
                                        "value": float(surface.accuracy[a, b]), "u": u, "v": v, **where,
                                        **plane_settings}]
                _append_finite(path, plane_rows, rows, models.weights)
                bar.update()
        finally:
            bar.close()

        lines = [f"{path.name}: linear paths between members on {label} {split}, {count} samples, {alphas} alphas, "
                 f"BatchNorm {bn_mode}: {len(missing)} pairs measured now, {len(pairs) - len(missing)} stored",
                 f"  {'pair':<12}{'barrier':>12}{'at alpha':>10}"]
        lines += [f"  {f'{i}-{j}':<12}{barriers[i, j][0]:>12.4g}{barriers[i, j][1]:>10.3g}" for i, j in pairs]
        if plane:
            lines.append(f"  plane through members {', '.join(map(str, members[:3]))}: {grid}x{grid} grid "
                         + ("measured now" if plane_missing else "stored"))
        measurements.append(Measurement(path, tuple(f"pair-{i}-{j}" for i, j in missing)
                                        + (("plane",) if plane_missing else ()),
                                        tuple(f"pair-{i}-{j}" for i, j in pairs if (i, j) not in missing)
                                        + (("plane",) if plane and not plane_missing else ()), rows, tuple(lines)))
    return measurements
