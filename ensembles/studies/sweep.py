"""Sweeps: grids of ensembles, each trained and then measured, run here or on a SLURM cluster.

A sweep file (TOML) names the settings every ensemble shares, the axes to cross, the measurements
that follow training and how the closing report groups the runs::

    name = "width-study"             # optional; default: the file's stem
    data_path = "/data"              # optional; where the datasets lie (--data-path overrides)

    [base]                           # TrainingSettings fields shared by every grid point
    dataset = "cifar10"
    model = "resnet18"               # or torchvision:<name>, timm:<name>, module.path:callable
    epochs = 200
    [base.model_args]                # optional: the builder's keyword arguments (--model-arg)
    [base.model_input]               # optional: size, mean, std the model applies itself

    [grid]                           # axes to cross (a list of values each)
    method = ["sgd", "sam", "sharpbalance"]
    rho = [0.05, 0.2]
    width = [16, 32, 64]
    seeds = [[13, 17, 27], [113, 117, 127]]

    [[measure.sharpness]]            # one table per kind; options of ensembles.studies.measurements
    kind = "worst"                   # measure_sharpness (``rho`` is a list of radii)
    rho = [0.5]
    [measure.hessian]                # options of measure_hessian
    [measure.evaluate]               # options of ensembles.studies.evaluation.evaluate_runs
    corruptions = "all"
    [measure.connectivity]           # options of measure_connectivity
    [measure.fisher]                 # options of measure_fisher

    [report]                         # what `sharpdiv sweep report` passes to reports.site.write_report
    group_by = "width"               # or a list of axes: ["width", "method"]

**Grid.** The jobs are the cross product of the axes, in file order (the last axis varies fastest).
An axis that does not apply to a method (its declaration in :mod:`ensembles.training.settings` names
the methods that use it: ``rho`` is not SGD's; ``k``, ``td``, ``reference_compatible`` and
``reselect_every`` are SharpBalance's; ``eta`` and ``asam_scale`` ASAM's) is dropped from that job, and
jobs that then train the same ensemble are one job: crossing ``method = ["sgd", "sam"]`` with two
radii gives three jobs, not four.

**Folders.** Each job is the run folder ``ROOT/<name>``, named from its method and its swept values
(``sam-rho0.2-w16-s13.17.27``, each value spelled as its declaration says): readable, and unique
within the sweep (checked). Every value of ``[base]`` and ``[grid]`` is checked against its
declared rule when the file is read (``width`` an integer >= 1, ``rho`` a finite number >= 0,
``method`` a known one ...), so ``sweep plan`` refuses what ``sweep run`` would; names are built
from checked values only, and every run folder must resolve inside ROOT.

**Jobs.** :func:`run_job` trains (:func:`ensembles.training.trainer.train`; an interrupted run is continued
with :func:`ensembles.training.trainer.resume`, a finished one is kept) and then runs every measurement
through its own ``ensembles`` function, which reuses the rows the run's results table already
holds. So a sweep can be stopped at any moment and run again: only the missing work happens. A run
folder that holds a different ensemble than the job describes (say ``epochs`` changed in the file)
is an error, never silently reused. Every finished step is appended to ``ROOT/sweep-log.jsonl``.

**Executors** (submitit, :func:`run_sweep`): ``local`` runs the jobs in this process (``jobs=1``) or
N at a time in submitit's local processes, each pinned to its own GPU through
``CUDA_VISIBLE_DEVICES`` when there are GPUs; ``slurm`` submits one array job per sweep, one task per
grid point, with the GPU and time requests of :class:`ClusterRequest`; a preempted or timed-out task
is requeued by submitit's checkpointing (:class:`SweepJob` is ``Checkpointable``) and resumes from
its run folder; ``debug`` is submitit's in-process executor. Failed jobs are submitted again up to
``retries`` times. Reports are not made here (``ensembles`` does not depend on ``reports``): the
CLI builds them over :func:`sweep_runs`.
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import itertools
import json
import math
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from ensembles import cpus
from ensembles.training.settings import declared
from landscape._checks import positive_int
from landscape.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, released separately for Python 3.10 (setup.cfg requires it there)
    import tomli
    tomllib = tomli

__all__ = [
    "AXES",
    "ClusterRequest",
    "EXECUTORS",
    "Job",
    "JobOutcome",
    "Measure",
    "MEASUREMENTS",
    "Step",
    "Sweep",
    "SweepJob",
    "expand_grid",
    "group_runs",
    "parse_sweep",
    "check_before_running",
    "check_library_models",
    "plan_table",
    "read_log",
    "read_sweep",
    "run_job",
    "job_folder",
    "run_name",
    "run_sweep",
    "slurm_parameters",
    "sweep_runs",
    "sweep_status",
    "timeout_minutes",
]

EXECUTORS = ("local", "slurm", "debug")
LOG_FILE = "sweep-log.jsonl"
SUBMITIT_DIR = ".submitit"
#: The measurements a sweep can run after training, in the order a job runs them.
MEASUREMENTS = ("sharpness", "hessian", "fisher", "evaluate", "connectivity")
#: Sections and top-level keys of a sweep file.
_TOP_LEVEL = ("name", "data_path", "base", "grid", "measure", "report")
_REPORT_KEYS = ("group_by", "sharpness", "diversity", "diversity_on", "baseline", "combine")
#: Keyword arguments of the measurement functions that a sweep sets itself.
_SET_BY_SWEEP = ("paths", "dataset", "root", "device", "dtype", "progress")


def axis_names(settings_class: type | None = None) -> tuple[str, ...]:
    """The settings a sweep may set, in [base] or as an axis of [grid]: the fields of
    ``settings_class`` (default TrainingSettings) declared as axes, i.e. all but where the data
    lies and how fast (:mod:`ensembles.training.settings`)."""
    return tuple(name for name, declaration in declared(settings_class).items() if declaration.axis)


AXES = axis_names()


def _not_identity(settings) -> tuple[str, ...]:
    """Fields that say where or how fast, not which ensemble (declared not an axis): never compared
    with an existing run folder."""
    return tuple(name for name, declaration in declared(type(settings)).items() if not declaration.axis)


def _check_values(section: str, setting: str, values: Sequence, source: str, text: str,
                  settings_class: type | None = None) -> None:
    """One InputError naming the setting and the first value of the wrong type or range (the rule
    of its declaration). Values reach folder names, so only declared types are ever let through."""
    declaration = declared(settings_class)[setting]
    for value in values:
        if declaration.problem(value) is not None:
            raise InputError(f"{_where(source, text, section, setting)}: {_shown(value)} is not a valid {setting}; "
                             f"it must be {declaration.wanted}")


def _shown(value) -> str:
    """A value as the sweep file spells it, strings quoted (so "2" and 2 read differently)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return _text(value)


def applies(axis: str, method: str, settings_class: type | None = None) -> bool:
    """Whether a setting changes the ensemble a method trains (its declaration's ``methods``)."""
    declaration = declared(settings_class).get(axis)
    return declaration is None or declaration.used_by(method)


# ----------------------------------------------------------------------------------------------
# the sweep file


@dataclass(frozen=True)
class Measure:
    """One measurement after training: ``command`` (sharpness, hessian, fisher, evaluate,
    connectivity) and the keyword arguments of its ``ensembles`` function."""

    command: str
    options: Mapping = field(default_factory=dict)

    def describe(self) -> str:
        shown = ", ".join(f"{'rho' if key == 'rhos' else key}={_text(value)}" for key, value in self.options.items())
        return f"{self.command}({shown})"


@dataclass(frozen=True)
class Job:
    """One grid point: its run folder name, the ensemble it trains, and its swept values."""

    name: str
    settings: object  # ensembles.training.trainer.TrainingSettings
    point: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: the jobs of the grid and what follows their training."""

    name: str
    base: Mapping
    grid: Mapping[str, tuple]
    jobs: tuple[Job, ...]
    measurements: tuple[Measure, ...]
    report: Mapping
    data_path: str | None = None
    source: str = "<sweep>"

    @property
    def swept(self) -> tuple[str, ...]:
        """Axes with more than one value (the ones that tell the runs apart)."""
        return tuple(axis for axis, values in self.grid.items() if len(values) > 1)

    @property
    def group_by(self) -> tuple[str, ...]:
        """Axes the report groups by: ``[report] group_by``, else ``method`` when it is swept,
        else the first swept axis other than the seeds."""
        chosen = self.report.get("group_by")
        if chosen:
            return tuple([chosen] if isinstance(chosen, str) else chosen)
        if "method" in self.swept:
            return ("method",)
        others = [axis for axis in self.swept if axis != "seeds"]
        return (others[0],) if others else ("method",)


def _line_of(text: str, section: str, key: str) -> int | None:
    """Line (1-based) where ``key`` is assigned inside the table ``section`` ("" = top level)."""
    current = ""
    assignment = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""")
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", line)
        if header:
            current = header.group(1).replace(" ", "").replace('"', "")
            if current == section and not key:
                return number
            continue
        if current == section and assignment.match(line):
            return number
    return None


def _where(source: str, text: str, section: str, key: str) -> str:
    line = _line_of(text, section, key) if text else None
    place = f"[{section}] " if section else ""
    return f"{source}: {place}{key}" + (f" (line {line})" if line else "")


def read_sweep(path: str | os.PathLike) -> Sweep:
    """Read and check a sweep file; every problem is an InputError naming the key (and line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"sweep file {path} does not exist; see examples/ for sweep files to start from")
    return parse_sweep(path.read_text(), source=str(path), default_name=path.stem)


def parse_sweep(text: str, source: str = "<sweep>", default_name: str = "sweep",
                settings_class: type | None = None) -> Sweep:
    """A :class:`Sweep` from the TOML ``text`` (see the module docstring for the format), over the
    settings ``settings_class`` declares (default TrainingSettings)."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{source} is not valid TOML: {error}; fix the file") from None
    for key in table:
        if key not in _TOP_LEVEL:
            raise InputError(f"{_where(source, text, '', key)}: unknown key {key!r}; a sweep file has "
                             f"{', '.join(_TOP_LEVEL)}")
    name = table.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise InputError(f"{_where(source, text, '', 'name')}: the sweep's name must be letters, digits, '.', "
                         f"'_' or '-', got {name!r}")
    data_path = table.get("data_path")
    if data_path is not None and not isinstance(data_path, str):
        raise InputError(f"{_where(source, text, '', 'data_path')}: must be a folder path in quotes")

    base = table.get("base", {})
    grid = table.get("grid", {})
    for section, values in (("base", base), ("grid", grid)):
        if not isinstance(values, dict):
            raise InputError(f"{source}: [{section}] must be a table of settings")
        for key in values:
            if key not in axis_names(settings_class):
                what = "axis" if section == "grid" else "setting"
                hint = " (the data folder is the top-level data_path)" if key == "data_path" else ""
                raise InputError(f"{_where(source, text, section, key)}: unknown {what} {key!r}{hint}; "
                                 f"choose from {', '.join(axis_names(settings_class))}")
    for key in base:
        if key in grid:
            raise InputError(f"{_where(source, text, 'base', key)} and {_where(source, text, 'grid', key)} "
                             f"conflict: {key!r} is both fixed and swept; keep it in one of them")
    grid_axes: dict[str, tuple] = {}
    for axis, values in grid.items():
        where = _where(source, text, "grid", axis)
        if not isinstance(values, list):
            raise InputError(f"{where}: an axis is a list of values, e.g. {axis} = [{_text(values)}]")
        if not values:
            raise InputError(f"{where} has no values, so the grid is empty; give at least one value or remove it")
        values = [tuple(v) if isinstance(v, list) else v for v in values]
        if axis == "seeds" and not all(isinstance(v, tuple) for v in values):
            raise InputError(f"{where}: seeds is a list of seed lists, one per ensemble, e.g. "
                             "seeds = [[13, 17, 27], [113, 117, 127]]")
        _check_values("grid", axis, values, source, text, settings_class)
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise InputError(f"{where} lists {_text(repeated[0])} twice; each value once")
        grid_axes[axis] = tuple(values)
    if "seeds" in base:
        if not isinstance(base["seeds"], list) or not all(isinstance(s, int) for s in base["seeds"]):
            raise InputError(f"{_where(source, text, 'base', 'seeds')}: seeds is one list of integers, "
                             "one per member, e.g. seeds = [13, 17, 27]")
        base = {**base, "seeds": tuple(base["seeds"])}
    for setting, value in base.items():
        _check_values("base", setting, [value], source, text, settings_class)
    for required in ("dataset", "model"):
        if required not in base and required not in grid_axes:
            raise InputError(f"{source}: no {required!r}; set it in [base] (or sweep it in [grid])")

    measurements = _parse_measurements(table.get("measure", {}), source, text)
    report = table.get("report", {})
    if not isinstance(report, dict):
        raise InputError(f"{source}: [report] must be a table")
    for key in report:
        if key not in _REPORT_KEYS:
            raise InputError(f"{_where(source, text, 'report', key)}: unknown key {key!r}; choose from "
                             f"{', '.join(_REPORT_KEYS)}")
    group_by = report.get("group_by")
    if group_by is not None:
        chosen = [group_by] if isinstance(group_by, str) else group_by
        if not isinstance(chosen, list) or not chosen or not all(isinstance(a, str) for a in chosen):
            raise InputError(f"{_where(source, text, 'report', 'group_by')}: an axis name or a list of them")
        unknown = [a for a in chosen if a not in axis_names(settings_class)]
        if unknown:
            raise InputError(f"{_where(source, text, 'report', 'group_by')}: unknown axis {unknown[0]!r}; "
                             f"choose from {', '.join(axis_names(settings_class))}")

    jobs = expand_grid(base, grid_axes, source=source, text=text, settings_class=settings_class)
    return Sweep(name=name, base=base, grid=grid_axes, jobs=tuple(jobs), measurements=tuple(measurements),
                 report=report, data_path=data_path, source=source)


def _measurement_function(command: str) -> Callable:
    if command == "evaluate":
        from ensembles.studies.evaluation import evaluate_runs

        return evaluate_runs
    from ensembles.studies import measurements

    return getattr(measurements, f"measure_{command}")


def _parse_measurements(section, source: str, text: str) -> list[Measure]:
    if not isinstance(section, dict):
        raise InputError(f"{source}: [measure] must hold tables such as [measure.hessian]")
    chosen = []
    for command, entries in section.items():
        if command not in MEASUREMENTS:
            raise InputError(f"{_where(source, text, 'measure', command)}: unknown measurement {command!r}; "
                             f"choose from {', '.join(MEASUREMENTS)}")
        entries = entries if isinstance(entries, list) else [entries]
        accepted = [name for name in inspect.signature(_measurement_function(command)).parameters
                    if name not in _SET_BY_SWEEP]
        for entry in entries:
            if not isinstance(entry, dict):
                raise InputError(f"{source}: [measure.{command}] must be a table of options")
            options = {}
            for key, value in entry.items():
                name = "rhos" if (command, key) == ("sharpness", "rho") else key
                if name not in accepted:
                    shown = ["rho" if a == "rhos" else a for a in accepted]
                    raise InputError(f"{_where(source, text, 'measure.' + command, key)}: unknown option {key!r} of "
                                     f"{command}; choose from {', '.join(shown)}")
                options[name] = tuple(value) if isinstance(value, list) else value
            _check_measure_options(command, options, source, text)
            chosen.append(Measure(command, options))
    order = {command: position for position, command in enumerate(MEASUREMENTS)}
    return sorted(chosen, key=lambda measure: order[measure.command])


def _check_measure_options(command: str, options: Mapping, source: str, text: str) -> None:
    """Each option by the rule the measurement itself applies (:mod:`ensembles.studies.options`),
    named by the sweep file's own key and line; then their combinations, named by the table. So
    ``sweep plan`` refuses what the measurement would refuse after the training."""
    from ensembles.studies import evaluation, measurements
    from ensembles.studies.options import check_options

    section = f"measure.{command}"
    rules = evaluation.OPTION_RULES if command == "evaluate" else measurements.OPTION_RULES[command]
    def key(name: str) -> str:
        return "rho" if (command, name) == ("sharpness", "rhos") else name

    check_options(rules, options, lambda name: _where(source, text, section, key(name)), _shown)
    if command == "evaluate":
        return
    defaults = {name: parameter.default for name, parameter
                in inspect.signature(_measurement_function(command)).parameters.items() if name in rules}
    try:
        measurements.check_combinations(command, {**defaults, **options}, name=key)
    except InputError as error:
        line = _line_of(text, section, "") if text else None
        raise InputError(f"{source}: [{section}]{f' (line {line})' if line else ''}: {error}") from None


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        shown = f"{value:g}"
        return shown if float(shown) == value else repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)


# ----------------------------------------------------------------------------------------------
# the grid


def run_name(settings, axes: Sequence[str]) -> str:
    """The run folder name of a grid point: its method, then each swept axis that applies to the
    method as its declaration spells it (``rho0.2``, ``w16``, ``k0.4``, ``ref``/``paper``, ``cifar10``),
    the seeds last (``s13.17.27``)."""
    parts = [settings.method]
    for axis in axes:
        declaration = declared(type(settings))[axis]
        if axis in ("method", "seeds") or not declaration.used_by(settings.method):
            continue
        value = getattr(settings, axis)
        if declaration.words:
            parts.append(declaration.words[0 if value else 1])
        elif declaration.short == "":
            # A name ("folder:../data") keeps letters, digits and single dots only: never a path.
            parts.append(re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.]+|\.{2,}", "_", str(value))).strip("_."))
        else:
            short = axis if declaration.short is None else declaration.short
            parts.append(f"{short}{'none' if value is None else _text(value)}")
    parts.append("s" + ".".join(str(seed) for seed in settings.seeds))
    # Values are validated at parse time; this keeps any name one plain path component regardless.
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", "-".join(parts)).lstrip(".") or "run"


def job_folder(root: str | os.PathLike, name: str) -> Path:
    """``root/name``, the run folder of a job, after checking it lies inside ``root``: a job name
    is one path component (no ``/``, ``..``), and the folder resolves (symlinks too) under the root."""
    root = Path(root)
    path = root / name
    inside = path.resolve().is_relative_to(root.resolve()) and path.resolve() != root.resolve()
    if not name or Path(name).name != name or name in (".", "..") or not inside:
        raise InputError(f"the run folder {name!r} would lie outside the sweep root {root}; a run folder "
                         "name is one plain folder name (letters, digits, '.', '_', '+', '-')")
    return path


def _identity(settings) -> tuple:
    """What makes two settings the same ensemble: the trainer's own normalized fields."""
    values = settings.run_fields()
    for name in _not_identity(settings):
        values.pop(name, None)
    return (settings.dataset, settings.model, settings.method, tuple(settings.seeds), settings.keep,
            tuple(sorted((k, _text(v)) for k, v in values.items())),
            json.dumps(settings.model_args or {}, sort_keys=True))


def expand_grid(base: Mapping, grid: Mapping[str, Sequence], *, source: str = "<sweep>", text: str = "",
                settings_class: type | None = None) -> list[Job]:
    """The jobs of the cross product of ``grid`` over ``base``: axes that do not apply to a job's
    method are dropped from it, jobs that train the same ensemble are merged, names are checked
    unique. Settings a job cannot have (``td >= epochs`` ...) are an InputError naming the job."""
    from ensembles.training.settings import TrainingSettings

    settings_class = settings_class or TrainingSettings

    axes = list(grid)
    jobs: list[Job] = []
    seen: dict[tuple, Job] = {}
    names: dict[str, Job] = {}
    for values in itertools.product(*(grid[axis] for axis in axes)):
        point = dict(zip(axes, values))
        merged = {**base, **point}
        # A setting the job's method does not use (rho for sgd, eta outside asam, k and td outside
        # sharpbalance) is dropped here: the trainer refuses it, rightly, when a user passes it by hand.
        method = merged.get("method", "sgd")
        merged = {name: value for name, value in merged.items() if applies(name, method, settings_class)}
        try:
            settings = settings_class(**merged)
        except InputError as error:
            shown = ", ".join(f"{axis}={_text(value)}" for axis, value in point.items()) or "the [base] settings"
            raise InputError(f"{source}: grid point {shown}: {error}") from None
        identity = _identity(settings)
        if identity in seen:
            continue
        name = run_name(settings, axes)
        if name in names:
            raise InputError(f"{source}: two grid points would share the run folder {name!r} "
                             f"({_text(list(names[name].point.values()))} and {_text(list(point.values()))}); "
                             "their values differ only in spelling — make them distinct")
        applicable = {axis: value for axis, value in point.items() if applies(axis, settings.method, settings_class)}
        job = Job(name=name, settings=settings, point=applicable)
        seen[identity] = names[name] = job
        jobs.append(job)
    return jobs


def _model_options(settings) -> dict:
    """The keyword arguments the trainer builds the job's model with (``width`` is one of them)."""
    return {**(settings.model_args or {}), **({} if settings.width is None else {"width": settings.width})}


def check_library_models(sweep: Sweep) -> None:
    """Every job's zoo, torchvision or timm model and its options (names, types), checked without
    data or trust, so ``sweep plan`` refuses what training would; a model that names Python code
    is checked when the sweep runs, where the user can trust it (:func:`check_before_running`)."""
    from ensembles.models import external, zoo

    for job in sweep.jobs:
        model = job.settings.model
        if ":" not in model or model.partition(":")[0] in external.ROUTES:
            try:
                zoo.check_model(model, _model_options(job.settings))
            except InputError as error:
                raise InputError(f"{sweep.source}: job {job.name}: {error}") from None


def plan_table(sweep: Sweep):
    """The jobs as a DataFrame: run folder, each axis value, members and epochs."""
    import pandas as pd

    rows = []
    for job in sweep.jobs:
        row = {"run": job.name}
        for axis in sweep.grid:
            value = getattr(job.settings, axis)
            row[axis] = _text(value) if applies(axis, job.settings.method, type(job.settings)) else "-"
        row.update(members=len(job.settings.seeds), epochs=job.settings.epochs)
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# one job


@dataclass(frozen=True)
class Step:
    """One step of a job: ``name`` (train, sharpness, ...), what happened (``action``: trained,
    resumed, kept; measured, reused), how many measurements were computed and reused, seconds."""

    name: str
    action: str
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class JobOutcome:
    """What :func:`run_job` did for one grid point."""

    job: str
    path: Path
    steps: tuple[Step, ...]
    seconds: float

    @property
    def trained(self) -> bool:
        return any(step.name == "train" and step.action != "kept" for step in self.steps)

    def line(self) -> str:
        parts = [f"{step.name} {step.action}" for step in self.steps]
        return f"{self.job}: " + ", ".join(parts) + f" ({self.seconds:.0f} s)"


def _device(device) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _training_state(path: Path, settings) -> str:
    """``new`` (no run folder), ``partial`` (members unfinished) or ``done``; a folder holding another
    ensemble than ``settings`` is an InputError."""
    from ensembles.runs import run_folder
    from ensembles.training.trainer import settings_of_run, with_resolved_input

    if not (path / run_folder.RUN_FILE).is_file():
        return "new"
    stored = settings_of_run(path)
    if _identity(stored) != _identity(settings):
        differences = [name for name in settings.run_fields() if name not in _not_identity(settings)
                       and _text(stored.run_fields().get(name)) != _text(settings.run_fields().get(name))]
        differences += [name for name in ("dataset", "model", "method", "seeds", "keep", "model_args")
                        if getattr(stored, name) != getattr(settings, name)]
        shown = ", ".join(f"{name} {_text(getattr(stored, name))} there vs {_text(getattr(settings, name))} here"
                          for name in differences)
        raise InputError(f"{path} holds another ensemble than the sweep asks for ({shown}); give the sweep "
                         "another --out or remove that folder")
    config = run_folder.read_config(path)
    # what the sweep leaves out resolves to the library's default (none for the zoo), as train() does
    asked = with_resolved_input(settings, int(config["num_classes"])).model_input
    if json.dumps(stored.model_input, sort_keys=True) != json.dumps(asked, sort_keys=True):
        raise InputError(f"{path} holds another ensemble than the sweep asks for (model_input {stored.model_input} "
                         f"there vs {asked} here); give the sweep another --out or remove that folder")
    members = config.get("members", [])
    done = len(members) == len(settings.seeds) and all(m.get("status") == "done" for m in members)
    return "done" if done else "partial"


def _log(root: Path, record: Mapping) -> None:
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / (LOG_FILE + ".lock"))):
        with open(root / LOG_FILE, "a") as stream:
            stream.write(json.dumps(record, default=str) + "\n")


def _counts(command: str, result) -> tuple[int, int]:
    if command == "evaluate":
        return len(result.computed) + len(result.from_cache), len(result.stored)
    return len(result.computed), len(result.reused)


def run_job(job: Job, root: str | os.PathLike, measurements: Sequence[Measure] = (), *, data_path=None,
            device: str | None = "auto", progress: bool = False,
            echo: Callable[[str], None] | None = None) -> JobOutcome:
    """Train ``job`` into ``root/<job.name>`` and measure it; each step skips what is stored.

    Training: a new folder is trained, an unfinished one resumed, a finished one kept. Then every
    measurement in ``measurements`` is run through its ``ensembles`` function, which computes only
    the rows the results table lacks. Each step is appended to ``root/sweep-log.jsonl``.
    """
    from ensembles.training import trainer

    root = Path(root)
    path = job_folder(root, job.name)
    settings = job.settings if data_path is None else replace(job.settings, data_path=str(data_path))
    chosen = _device(device)
    say = echo or (lambda message: None)
    started = time.perf_counter()
    steps = []

    def record(step: Step) -> None:
        steps.append(step)
        _log(root, {"job": job.name, "step": step.name, "action": step.action, "computed": step.computed,
                    "reused": step.reused, "seconds": round(step.seconds, 3), "host": socket.gethostname(),
                    "pid": os.getpid(), "time": datetime.datetime.now().isoformat(timespec="seconds")})

    state = _training_state(path, settings)
    clock = time.perf_counter()
    if state == "new":
        say(f"{job.name}: training {len(settings.seeds)} members for {settings.epochs} epochs")
        trainer.train(path, settings, device=chosen, progress=progress)
        record(Step("train", "trained", computed=len(settings.seeds), seconds=time.perf_counter() - clock))
    elif state == "partial":
        say(f"{job.name}: resuming the interrupted training")
        trainer.resume(path, device=chosen, progress=progress)
        record(Step("train", "resumed", computed=len(settings.seeds), seconds=time.perf_counter() - clock))
    else:
        record(Step("train", "kept", reused=len(settings.seeds)))
    for measure in measurements:
        clock = time.perf_counter()
        function = _measurement_function(measure.command)
        options = dict(measure.options)
        if measure.command == "evaluate":
            options.setdefault("corruptions", "all")
        say(f"{job.name}: {measure.command}")
        results = function([path], root=settings.data_path, device=chosen, progress=progress, **options)
        computed, reused = map(sum, zip(*(_counts(measure.command, result) for result in results)))
        record(Step(measure.command, "measured" if computed else "reused", computed=computed, reused=reused,
                    seconds=time.perf_counter() - clock))
    return JobOutcome(job=job.name, path=path, steps=tuple(steps), seconds=time.perf_counter() - started)


try:  # submitit's Checkpointable: on preemption or timeout the same job is queued again
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - submitit is a dependency; keep `import ensembles.studies.sweep` working
    _Checkpointable = object


class SweepJob(_Checkpointable):
    """A job as submitit runs it: a picklable callable. Being ``Checkpointable``, a preempted or
    timed-out job is requeued unchanged; since every step resumes from the run folder (the trainer
    checkpoints each epoch, measurements keep their rows), the requeued job continues the work."""

    def __init__(self, job: Job, root: str, measurements: Sequence[Measure], data_path=None, device="auto",
                 threads: int | None = None, trust_model_code: bool = False):
        self.job, self.root, self.measurements = job, str(root), tuple(measurements)
        self.data_path, self.device, self.threads = data_path, device, threads
        # the user's opt-in travels with the job: a cluster node need not share the environment
        self.trust_model_code = trust_model_code

    def __call__(self) -> JobOutcome:
        from ensembles.models.trust import trusting_model_code

        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        with trusting_model_code() if self.trust_model_code else contextlib.nullcontext():
            return run_job(self.job, self.root, self.measurements, data_path=self.data_path, device=self.device)


# ----------------------------------------------------------------------------------------------
# executors


@dataclass(frozen=True)
class ClusterRequest:
    """What each SLURM task asks for. ``time`` is ``HH:MM:SS``, ``D-HH:MM:SS`` or minutes."""

    partition: str | None = None
    gpus_per_job: int = 1
    time: str = "24:00:00"
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int | None = None
    setup: tuple[str, ...] = ()


def timeout_minutes(text: str | int | float) -> int:
    """SLURM time ``[D-]HH:MM:SS``, ``MM:SS`` or minutes as whole minutes (rounded up)."""
    value = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not match:
        raise InputError(f"--time {text!r}: use HH:MM:SS, D-HH:MM:SS or minutes, e.g. --time 24:00:00")
    days, first, second, third = match.groups()
    parts = [int(first)] + [int(p) for p in (second, third) if p is not None]
    if len(parts) == 1 and days is None:
        minutes = parts[0]  # plain minutes, as SLURM reads "--time 90"
        seconds = 0
    elif len(parts) == 1:
        minutes, seconds = 60 * parts[0], 0  # D-HH
    elif len(parts) == 2:
        if days is None:
            minutes, seconds = parts  # MM:SS
        else:
            minutes, seconds = 60 * parts[0] + parts[1], 0  # D-HH:MM
    else:
        minutes, seconds = 60 * parts[0] + parts[1], parts[2]
    total = 24 * 60 * int(days or 0) + minutes + math.ceil(seconds / 60)
    if total < 1:
        raise InputError(f"--time {text!r} is shorter than a minute")
    return total


def slurm_parameters(request: ClusterRequest, name: str, jobs: int | None = None) -> dict:
    """submitit's ``AutoExecutor.update_parameters`` arguments for ``request``: one task per grid
    point with its GPUs, CPUs and time; at most ``jobs`` tasks of the array at once."""
    if request.gpus_per_job < 0:
        raise InputError(f"--gpus-per-job must be >= 0, got {request.gpus_per_job}")
    parameters = {"name": f"sharpdiv-{name}", "timeout_min": timeout_minutes(request.time),
                  "gpus_per_node": request.gpus_per_job, "tasks_per_node": 1, "nodes": 1,
                  "slurm_signal_delay_s": 120}
    if request.cpus_per_job:
        parameters["cpus_per_task"] = request.cpus_per_job
    if request.mem_gb:
        parameters["mem_gb"] = request.mem_gb
    for option in ("partition", "account", "qos", "constraint"):
        if getattr(request, option):
            parameters[f"slurm_{option}"] = getattr(request, option)
    parallel = request.array_parallelism or jobs
    if parallel:
        parameters["slurm_array_parallelism"] = int(parallel)
    if request.setup:
        parameters["slurm_setup"] = list(request.setup)
    return parameters


def _visible_gpus() -> list[int]:
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


@dataclass
class _Attempt:
    job: Job
    handle: object = None
    slot: int | None = None


def _collect(handle) -> tuple[JobOutcome | None, str | None]:
    """A finished submitit job's outcome, or its error as text."""
    try:
        error = handle.exception()
    except Exception as failure:  # the job vanished (cancelled, node lost)
        return None, f"{type(failure).__name__}: {failure}"
    if error is not None:
        return None, _error_text(error)
    return handle.result(), None


def _error_text(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` did: one outcome per finished job, the error of each failed one, the
    submitted job ids (cluster executors) and whether it waited for them."""

    outcomes: tuple[JobOutcome, ...]
    failures: Mapping[str, str]
    job_ids: Mapping[str, str]
    waited: bool = True


def check_before_running(sweep: Sweep, data_path=None, *, trust_model_code: bool | None = None) -> None:
    """What would stop a job after it started, checked before anything is created: each job's
    dataset is on disk (under ``data_path``), its model can be built (a known name, options of
    the builder's types; code a model names only when trusted) and the corrupted data its
    evaluation names is there. What the sweep file alone decides was checked when it was read."""
    from ensembles.data import datasets
    from ensembles.models import zoo
    from ensembles.studies.evaluation import evaluation_slices

    checked = set()
    for job in sweep.jobs:
        settings = job.settings
        root = data_path if data_path is not None else settings.data_path
        try:
            if (settings.dataset, root) not in checked:
                checked.add((settings.dataset, root))
                datasets.load_dataset(settings.dataset, root, "train")  # as training starts: its message if missing
                for measure in sweep.measurements:
                    if measure.command == "evaluate":
                        evaluation_slices(settings.dataset, root, **{key: value for key, value in
                                                                     measure.options.items()
                                                                     if key in ("corruptions", "severities", "splits")})
            zoo.check_model(settings.model, _model_options(settings), trust_model_code=trust_model_code)
        except InputError as error:
            raise InputError(f"{sweep.source}: job {job.name}: {error}") from None


def run_sweep(sweep: Sweep, root: str | os.PathLike, *, executor: str = "local", jobs: int = 1, retries: int = 1,
              cluster: ClusterRequest | None = None, data_path=None, device: str = "auto", wait: bool = True,
              progress: bool = False, echo: Callable[[str], None] | None = None,
              poll_seconds: float = 2.0, threads: int | None = None,
              trust_model_code: bool | None = None) -> SweepResult:
    """Run every job of ``sweep`` into ``root`` with ``executor`` (local, slurm or debug).

    ``jobs`` bounds how many run at once (local: processes, each on its own GPU when there are
    several; slurm: the array's parallelism). ``threads``: torch threads of each local process on a CPU
    (default: the usable cores shared out, ``cores // jobs``). Jobs that fail are submitted again up to ``retries``
    times; each attempt redoes only the missing work. ``wait=False`` (slurm) submits and returns.
    ``trust_model_code`` (None: ``SHARPDIV_TRUST_MODEL_CODE``) lets models that name Python code be
    built, here and in every job. Nothing is created under ``root`` before every job's dataset,
    model and evaluation data are found (:func:`check_before_running`).
    """
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    positive_int("--jobs", jobs)
    positive_int("--threads", threads, optional=True)
    positive_int("--retries", retries, minimum=0)
    if not sweep.jobs:
        raise InputError(f"{sweep.source}: the grid has no jobs")
    root = Path(root)
    for job in sweep.jobs:  # a folder outside the root or holding another ensemble fails now
        _training_state(job_folder(root, job.name), job.settings)
    data_path = data_path if data_path is not None else sweep.data_path
    from ensembles.models.trust import model_code_trusted

    trusted = model_code_trusted(trust_model_code)
    check_before_running(sweep, data_path, trust_model_code=trusted)
    root.mkdir(parents=True, exist_ok=True)
    say = echo or (lambda message: None)
    say(f"sweep {sweep.name}: {len(sweep.jobs)} jobs into {root} ({executor} executor, {jobs} at once)")

    outcomes: dict[str, JobOutcome] = {}
    failures: dict[str, str] = {}
    job_ids: dict[str, str] = {}
    todo = list(sweep.jobs)
    for attempt in range(retries + 1):
        if not todo:
            break
        if attempt:
            say(f"retrying {len(todo)} failed job(s) (attempt {attempt + 1} of {retries + 1})")
        if executor == "local" and jobs == 1:
            finished = _run_here(todo, root, sweep, data_path, device, progress, say, trusted)
        elif executor == "local":
            finished = _run_local_processes(todo, root, sweep, data_path, device, jobs, poll_seconds, say, job_ids,
                                            threads, trusted)
        else:
            finished = _run_submitit(todo, root, sweep, data_path, device, executor, jobs, cluster, wait, say,
                                     job_ids, trusted)
            if finished is None:  # submitted without waiting
                return SweepResult(outcomes=(), failures={}, job_ids=dict(job_ids), waited=False)
        todo = []
        for job in sweep.jobs:
            if job.name not in finished:
                continue
            outcome, error = finished[job.name]
            if error is None:
                outcomes[job.name] = outcome
                failures.pop(job.name, None)
            else:
                failures[job.name] = error
                todo.append(job)
                say(f"{job.name}: failed: {error}")
    ordered = tuple(outcomes[job.name] for job in sweep.jobs if job.name in outcomes)
    return SweepResult(outcomes=ordered, failures=failures, job_ids=job_ids)


def _run_here(todo, root, sweep, data_path, device, progress, say, trusted=False) -> dict:
    """The jobs one after another in this process (``--executor local --jobs 1``)."""
    from ensembles.models.trust import trusting_model_code

    finished = {}
    for position, job in enumerate(todo, start=1):
        say(f"[{position}/{len(todo)}] {job.name}")
        try:
            with trusting_model_code() if trusted else contextlib.nullcontext():
                outcome = run_job(job, root, sweep.measurements, data_path=data_path, device=device,
                                  progress=progress, echo=say)
        except (KeyboardInterrupt, SystemExit):
            raise
        except InputError:
            raise  # bad input fails the same way on every retry: stop with its message
        except Exception as error:  # noqa: BLE001 - a failed job must not stop the others
            finished[job.name] = (None, _error_text(error))
            continue
        say("  " + outcome.line())
        finished[job.name] = (outcome, None)
    return finished


def _run_local_processes(todo, root, sweep, data_path, device, jobs, poll_seconds, say, job_ids,
                         threads=None, trusted=False) -> dict:
    """At most ``jobs`` submitit local processes at once; process slot ``i`` sees only GPU ``i``
    (``CUDA_VISIBLE_DEVICES``) when there are GPUs, else the CPU threads are shared out."""
    import submitit

    gpus = _visible_gpus() if _device(device).startswith("cuda") else []
    executor = submitit.LocalExecutor(folder=root / SUBMITIT_DIR / sweep.name)
    threads = None if gpus else threads or max(1, cpus.usable_cpus() // jobs)
    free = list(range(jobs))
    pending = list(todo)
    running: list[_Attempt] = []
    finished = {}
    while pending or running:
        while pending and free:
            slot = free.pop(0)
            job = pending.pop(0)
            if gpus:
                executor.update_parameters(timeout_min=60 * 24 * 365, gpus_per_node=1,
                                           visible_gpus=(gpus[slot % len(gpus)],))
            else:
                executor.update_parameters(timeout_min=60 * 24 * 365, gpus_per_node=0)
            handle = executor.submit(SweepJob(job, str(root), sweep.measurements, data_path, device, threads, trusted))
            job_ids[job.name] = str(handle.job_id)
            say(f"started {job.name} (process {handle.job_id}" + (f", GPU {gpus[slot % len(gpus)]})" if gpus else ")"))
            running.append(_Attempt(job, handle, slot))
        time.sleep(poll_seconds)
        for attempt in [a for a in running if a.handle.done()]:
            running.remove(attempt)
            free.append(attempt.slot)
            finished[attempt.job.name] = _collect(attempt.handle)
            outcome, error = finished[attempt.job.name]
            say("  " + (outcome.line() if outcome else f"{attempt.job.name}: failed"))
    return finished


def _run_submitit(todo, root, sweep, data_path, device, executor_name, jobs, cluster, wait, say, job_ids,
                  trusted=False):
    """One submitit array over ``todo`` (SLURM), or submitit's debug executor in this process."""
    import submitit

    executor = submitit.AutoExecutor(folder=root / SUBMITIT_DIR / sweep.name, cluster=executor_name)
    if executor_name == "slurm":
        executor.update_parameters(**slurm_parameters(cluster or ClusterRequest(), sweep.name, jobs))
    handles = []
    with executor.batch():
        for job in todo:
            handles.append((job, executor.submit(SweepJob(job, str(root), sweep.measurements, data_path, device,
                                                          trust_model_code=trusted))))
    for job, handle in handles:
        job_ids[job.name] = str(handle.job_id)
    if executor_name == "slurm":
        say(f"submitted {len(handles)} job(s) to SLURM as array {handles[0][1].job_id.split('_')[0]} "
            f"(logs in {root / SUBMITIT_DIR / sweep.name})")
    if not wait:
        return None
    finished = {}
    for job, handle in handles:
        finished[job.name] = _collect(handle)
        outcome, error = finished[job.name]
        say("  " + (outcome.line() if outcome else f"{job.name}: failed"))
    return finished


# ----------------------------------------------------------------------------------------------
# state of a sweep


def read_log(root: str | os.PathLike) -> list[dict]:
    """Every step the sweep's jobs recorded in ``root/sweep-log.jsonl``, oldest first."""
    file = Path(root) / LOG_FILE
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def sweep_runs(sweep: Sweep, root: str | os.PathLike) -> list[Path]:
    """The run folders of the sweep that exist under ``root`` (with finished members), in job order."""
    from ensembles.runs import run_folder

    paths = []
    for job in sweep.jobs:
        path = job_folder(root, job.name)
        if (path / run_folder.RUN_FILE).is_file() and run_folder.finished_members(run_folder.read_config(path)):
            paths.append(path)
    return paths


def sweep_status(sweep: Sweep, root: str | os.PathLike):
    """One row per job: its training state (new, partial, done) and the last action of each step."""
    import pandas as pd

    last: dict[tuple[str, str], str] = {}
    for record in read_log(root):
        last[record["job"], record["step"]] = record["action"]
    rows = []
    for job in sweep.jobs:
        path = job_folder(root, job.name)
        try:
            state = _training_state(path, job.settings)
        except InputError:
            state = "conflict"
        row = {"run": job.name, "training": {"new": "not started", "partial": "unfinished"}.get(state, state)}
        for measure in dict.fromkeys(m.command for m in sweep.measurements):
            row[measure] = last.get((job.name, measure), "-")
        rows.append(row)
    return pd.DataFrame(rows)


def group_runs(sweep: Sweep, paths: Iterable[str | os.PathLike], group_by: Sequence[str] | None = None) -> str:
    """The run.json field the report should group ``paths`` by.

    One axis is a field of every run already. Several (``["width", "method"]``) are joined into one
    label, ``width=16 method=sam``, stored as ``sweep_group`` in each run.json (via
    :func:`ensembles.runs.run_folder.update_config`), and ``"sweep_group"`` is returned.
    """
    from ensembles.runs import run_folder

    axes = tuple(group_by or sweep.group_by)
    unknown = [axis for axis in axes if axis not in AXES]
    if unknown:
        raise InputError(f"cannot group by {unknown[0]!r}; choose from {', '.join(AXES)}")
    if len(axes) == 1:
        return axes[0]
    for path in paths:
        config = run_folder.read_config(path)
        label = " ".join(f"{axis}={_text(config.get(axis))}" for axis in axes)
        if config.get("sweep_group") != label:
            run_folder.update_config(path, sweep_group=label)
    return "sweep_group"
