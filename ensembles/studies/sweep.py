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

    [grid]                           # axes to cross (a list of values each); or [[grid]] tables
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
    group_by = "width"               # or a list of axes: ["width", "method"]; or "construction"

**Grid.** The jobs are the cross product of the axes, in file order (the last axis varies fastest).
An axis that does not apply to a method (its declaration in :mod:`ensembles.training.settings` names
the methods that use it: ``rho`` is not SGD's; ``k``, ``td``, ``reference_compatible`` and
``reselect_every`` are SharpBalance's; ``eta`` and ``asam_scale`` ASAM's) is dropped from that job, and
jobs that then train the same ensemble are one job: crossing ``method = ["sgd", "sam"]`` with two
radii gives three jobs, not four. Settings that differ only in spelling train the same ensemble
(``model_input = {size = 32}`` and ``{size = [32, 32]}``, as ``train`` records both); settings that
differ in any value, ``model_input`` included, are different jobs.

**Several grids.** ``[[grid]]`` tables instead of the one ``[grid]``: the jobs are the union of
each grid's cross product over ``[base]``, in file order, merged as above. What is not one grid's
axis is the ``[base]`` value or the default, so each grid is a construction of its own::

    [[grid]]                         # deep ensembles
    seeds = [[13, 17, 27], [113, 117, 127]]
    [[grid]]                         # SAM at two radii, on the same seeds
    method = ["sam"]
    rho = [0.05, 0.2]
    seeds = [[13, 17, 27], [113, 117, 127]]

**Folders.** Each job is the run folder ``ROOT/<name>``, named from its method and the values of
its grid's axes (``sam-rho0.2-w16-s13.17.27``, each value spelled as its declaration says; with
several grids the parts keep the order in which the file first names the axes, and a job leaves
out the axes of other grids, where it holds the default: ``sgd-s13.17.27`` beside
``sam-rho0.2-s13.17.27``): readable, and unique within the sweep (checked). Every value of
``[base]`` and the grids is checked against its declared rule when the file is read (``width`` an
integer >= 1, ``rho`` a finite number >= 0, ``method`` a known one ...), so ``sweep plan`` refuses
what ``sweep run`` would; names are built from checked values only, and every run folder must
resolve inside ROOT. A ``[grid]`` file names its runs as it did before ``[[grid]]`` existed.

**Runs that read runs.** A setting declared as a reference (:class:`~ensembles.training.settings.Setting`
``reference``, e.g. a teacher to distill from) names another run folder, relative to ROOT, and may
hold ``{field}`` placeholders filled with the job's own values as its folder name spells them::

    [[grid]]
    seeds = [[13, 17, 27], [113, 117, 127]]
    distill_from = ["sgd-s{seeds}"]  # each student reads the deep ensemble of its own seeds

When the file is read, each reference must name a folder under ROOT (no ``..``, not absolute); one
that names another job of the sweep makes this job wait for it, and one that names no job must be a
finished run folder under ROOT when the sweep runs (``sweep plan`` says so, ``sweep run`` checks it
before anything starts). A job that reads itself, or jobs that read each other in a cycle, are
refused in one line naming them. ``sweep plan`` shows each job's wave and the folders it reads.

**Jobs.** :func:`run_job` trains (:func:`ensembles.training.trainer.train`; an interrupted run is continued
with :func:`ensembles.training.trainer.resume`, a finished one is kept) and then runs every measurement
through its own ``ensembles`` function, which reuses the rows the run's results table already
holds. So a sweep can be stopped at any moment and run again: only the missing work happens. A run
folder that holds a different ensemble than the job describes (say ``epochs`` changed in the file)
is an error, never silently reused. That includes what it read: a run records, under its
reference's role (``teacher = {"members": [...], ...}`` in run.json), the digests of the member
weights it read; when the folder it read holds other weights now (the teacher was retrained), the
run is refused ("changed since this run was trained; remove it to retrain"). References are handed
to the trainer as absolute paths under ROOT and compared as such, so a moved ROOT is refused too.
Every finished step is appended to ``ROOT/sweep-log.jsonl``, with its wall seconds and the CPU seconds
(user + system) of the process that ran it: on a machine shared with other work, the CPU time is what
the step cost.

**Executors** (submitit, :func:`run_sweep`): ``local`` runs the jobs in this process (``jobs=1``) or
N at a time in submitit's local processes, each pinned to its own GPU through
``CUDA_VISIBLE_DEVICES`` when there are GPUs; ``slurm`` submits one array job per sweep, one task per
grid point, every task at once unless ``jobs`` caps it, with the GPU and time requests of
:class:`~ensembles.studies.slurm.ClusterRequest`; a preempted or timed-out task is requeued by
submitit's checkpointing (:class:`SweepJob` is ``Checkpointable``) and resumes from its run folder,
and a task that leaves the queue without its result (killed, its node lost) has failed, with or
without job accounting (:mod:`ensembles.studies.slurm`); ``debug`` is submitit's in-process
executor. Failed jobs are submitted again up to ``retries`` times. Jobs that read other jobs' runs
run in dependency waves (:attr:`Sweep.waves`): each wave as above (slurm: one array per wave) once
the one before has ended; a job whose run to read failed (after its retries) is not run, but
reported and logged as "skipped: its teacher X failed". Without waiting (``--no-wait``), only the jobs whose runs to read are finished are
submitted; run the sweep again for the rest. ``sweep status`` shows a job not started as
``waiting for`` the runs it reads, or as skipped. Reports are not made here (``ensembles`` does not
depend on ``reports``): the CLI builds them over :func:`sweep_runs`.
"""
from __future__ import annotations

import contextlib
import datetime
import inspect
import itertools
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from ensembles import cpus
from ensembles.studies import slurm
from ensembles.studies.slurm import ClusterRequest, slurm_parameters, timeout_minutes
from ensembles.training.settings import declared
from landscape.checks import positive_int
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
#: Groupings the report derives from each run.json itself rather than one field of it: ``construction``,
#: a run's single-basin construction (deep ensemble, spawned at T, constrained at λ, distilled).
DERIVED_GROUPS = ("construction",)
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
                  settings_class: type | None = None, index: int | None = None) -> None:
    """One InputError naming the setting and the first value of the wrong type or range (the rule
    of its declaration). Values reach folder names, so only declared types are ever let through. A
    reference with ``{field}`` placeholders is a string here; its rule is checked once they are filled."""
    declaration = declared(settings_class)[setting]
    for value in values:
        if declaration.reference and isinstance(value, str) and re.search(r"[{}]", value):
            continue
        if declaration.problem(value) is not None:
            raise InputError(f"{_where(source, text, section, setting, index)}: {_shown(value)} is not a valid "
                             f"{setting}; it must be {declaration.wanted}")


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
    """One grid point: its run folder name, the ensemble it trains, and its swept values.

    ``references`` maps each reference setting the job sets to the run folder it names, relative to
    the sweep root (placeholders filled); ``needs`` are the jobs of the sweep among them, which are
    trained first."""

    name: str
    settings: object  # ensembles.training.trainer.TrainingSettings
    point: Mapping = field(default_factory=dict)
    references: Mapping[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()

    @property
    def outside(self) -> tuple[str, ...]:
        """The run folders it reads that no job of the sweep trains: they must exist under the root."""
        return tuple(dict.fromkeys(folder for folder in self.references.values() if folder not in self.needs))


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep file: the jobs of the grid and what follows their training.

    ``grids`` holds each grid of the file (one for ``[grid]``, one per ``[[grid]]``); ``grid`` is
    every axis of them with all its values, in file order."""

    name: str
    base: Mapping
    grid: Mapping[str, tuple]
    jobs: tuple[Job, ...]
    measurements: tuple[Measure, ...]
    report: Mapping
    data_path: str | None = None
    source: str = "<sweep>"
    grids: tuple[Mapping[str, tuple], ...] = ()

    @property
    def swept(self) -> tuple[str, ...]:
        """Axes with more than one value (the ones that tell the runs apart)."""
        return tuple(axis for axis, values in self.grid.items() if len(values) > 1)

    @property
    def waves(self) -> tuple[tuple[Job, ...], ...]:
        """The jobs in dependency waves, each in file order: a job runs one wave after the last of
        the jobs it reads (wave 1: those that read none of the sweep's runs)."""
        level: dict[str, int] = {}
        remaining = list(self.jobs)
        while remaining:
            ready = [job for job in remaining if all(need in level for need in job.needs)]
            if not ready:  # parse_sweep refuses cycles; a Sweep built by hand may still hold one
                raise InputError(f"{self.source}: runs {', '.join(job.name for job in remaining)} read each "
                                 "other in a cycle; a run can only read runs trained before it")
            for job in ready:
                level[job.name] = 1 + max((level[need] for need in job.needs), default=-1)
            remaining = [job for job in remaining if job.name not in level]
        count = 1 + max(level.values(), default=-1)
        return tuple(tuple(job for job in self.jobs if level[job.name] == number) for number in range(count))

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


def _line_of(text: str, section: str, key: str, index: int | None = None) -> int | None:
    """Line (1-based) where ``key`` is assigned inside the table ``section`` ("" = top level); with
    ``index``, inside the ``index``-th (from 0) of the tables of that name (``[[grid]]``)."""
    current, count = "", -1
    assignment = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""")
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$", line)
        if header:
            current = header.group(1).replace(" ", "").replace('"', "")
            count += current == section
            if current == section and not key and index in (None, count):
                return number
            continue
        if current == section and index in (None, count) and assignment.match(line):
            return number
    return None


def _where(source: str, text: str, section: str, key: str, index: int | None = None) -> str:
    """Where ``key`` of table ``section`` is set, as messages name it: ``file: [grid] rho (line 5)``,
    or ``file: [[grid]] #2 rho (line 12)`` for the second of several grids."""
    line = _line_of(text, section, key, index) if text else None
    place = f"[[{section}]] #{index + 1} " if index is not None else f"[{section}] " if section else ""
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
    # [grid] is one table of axes; [[grid]] several, whose jobs are united
    several = isinstance(table.get("grid"), list)
    grids = table["grid"] if several else [table.get("grid", {})]
    if several and not grids:
        raise InputError(f"{_where(source, text, '', 'grid')}: an empty list of grids has no jobs; give [[grid]] tables")
    indices = list(range(len(grids))) if several else [None]
    for section, values, index in [("base", base, None)] + [("grid", g, i) for g, i in zip(grids, indices)]:
        if not isinstance(values, dict):
            raise InputError(f"{source}: [{section}] must be a table of settings"
                             + (" ([[grid]]: one table of axes each)" if several else ""))
        for key in values:
            if key not in axis_names(settings_class):
                what = "axis" if section == "grid" else "setting"
                hint = " (the data folder is the top-level data_path)" if key == "data_path" else ""
                raise InputError(f"{_where(source, text, section, key, index)}: unknown {what} {key!r}{hint}; "
                                 f"choose from {', '.join(axis_names(settings_class))}")
    for grid, index in zip(grids, indices):
        for key in base:
            if key in grid:
                raise InputError(f"{_where(source, text, 'base', key)} and {_where(source, text, 'grid', key, index)} "
                                 f"conflict: {key!r} is both fixed and swept; keep it in one of them")
    grid_tables = tuple(_grid_axes(grid, index, source, text, settings_class) for grid, index in zip(grids, indices))
    grid_axes: dict[str, tuple] = {}  # every axis with all its values, in file order
    for grid in grid_tables:
        for axis, values in grid.items():
            grid_axes[axis] = grid_axes.get(axis, ()) + tuple(v for v in values if v not in grid_axes.get(axis, ()))
    if "seeds" in base:
        if not isinstance(base["seeds"], list) or not all(isinstance(s, int) for s in base["seeds"]):
            raise InputError(f"{_where(source, text, 'base', 'seeds')}: seeds is one list of integers, "
                             "one per member, e.g. seeds = [13, 17, 27]")
        base = {**base, "seeds": tuple(base["seeds"])}
    for setting, value in base.items():
        _check_values("base", setting, [value], source, text, settings_class)
    for required in ("dataset", "model"):
        for grid, index in zip(grid_tables, indices):
            if required not in base and required not in grid:
                raise InputError(f"{source}: no {required!r}" + (f" in [[grid]] #{index + 1}" if several else "")
                                 + f"; set it in [base] (or sweep it in {'that grid' if several else '[grid]'})")

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
        known = axis_names(settings_class) + DERIVED_GROUPS
        unknown = [a for a in chosen if a not in known]
        if unknown:
            raise InputError(f"{_where(source, text, 'report', 'group_by')}: unknown axis {unknown[0]!r}; "
                             f"choose from {', '.join(known)}")

    jobs = expand_grid(base, grid_tables, source=source, text=text, settings_class=settings_class)
    return Sweep(name=name, base=base, grid=grid_axes, jobs=tuple(jobs), measurements=tuple(measurements),
                 report=report, data_path=data_path, source=source, grids=grid_tables)


def _grid_axes(grid: Mapping, index: int | None, source: str, text: str,
               settings_class: type | None) -> dict[str, tuple]:
    """One grid's axes, each a checked tuple of values (``index``: which [[grid]], None for [grid])."""
    axes: dict[str, tuple] = {}
    for axis, values in grid.items():
        where = _where(source, text, "grid", axis, index)
        if not isinstance(values, list):
            raise InputError(f"{where}: an axis is a list of values, e.g. {axis} = [{_text(values)}]")
        if not values:
            raise InputError(f"{where} has no values, so the grid is empty; give at least one value or remove it")
        values = [tuple(v) if isinstance(v, list) else v for v in values]
        if axis == "seeds" and not all(isinstance(v, tuple) for v in values):
            raise InputError(f"{where}: seeds is a list of seed lists, one per ensemble, e.g. "
                             "seeds = [[13, 17, 27], [113, 117, 127]]")
        _check_values("grid", axis, values, source, text, settings_class, index)
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise InputError(f"{where} lists {_text(repeated[0])} twice; each value once")
        axes[axis] = tuple(values)
    return axes


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


def _spelled(declaration, value) -> str:
    """A setting's value as a run folder name spells it, without its prefix: ``0.2``, ``16``,
    ``ref``/``paper`` for a switch, ``13.17.27`` for seeds, a name (``folder:../data``) path-safe."""
    if declaration.kind == "seeds":
        return ".".join(str(seed) for seed in value)
    if declaration.words:
        return declaration.words[0 if value else 1]
    if declaration.short == "":
        # A name ("folder:../data") keeps letters, digits and single dots only: never a path.
        return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9.]+|\.{2,}", "_", str(value))).strip("_.")
    return "none" if value is None else _text(value)


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
        if declaration.words or declaration.short == "":
            parts.append(_spelled(declaration, value))
        else:
            short = axis if declaration.short is None else declaration.short
            parts.append(f"{short}{_spelled(declaration, value)}")
    parts.append("s" + _spelled(declared(type(settings))["seeds"], settings.seeds))
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


def _references(settings_class: type | None) -> dict:
    """The settings whose value names another run folder (declared with a ``reference`` role)."""
    return {name: declaration for name, declaration in declared(settings_class).items() if declaration.reference}


def _identity(settings) -> tuple:
    """What makes two settings the same ensemble: the trainer's own normalized fields (a reference
    as the folder it resolves to). The model's input is compared apart (:func:`_input_identity`)."""
    table = declared(type(settings))
    values = {name: value for name, value in settings.run_fields().items() if name in table}
    for name in _not_identity(settings):
        values.pop(name, None)
    for name in _references(type(settings)):
        if values.get(name) is not None:
            values[name] = str(Path(values[name]).resolve())
    return (settings.dataset, settings.model, settings.method, tuple(settings.seeds), settings.keep,
            tuple(sorted((k, _text(v)) for k, v in values.items())),
            json.dumps(settings.model_args or {}, sort_keys=True))


def _input_identity(settings, library_default: bool) -> str:
    """``model_input`` as train() records it: the values given in one spelling (size 32 is [32, 32])
    and, with ``library_default``, what a timm model's own data config fills in for the rest
    (:func:`ensembles.training.trainer.with_resolved_input`; that builds the model, so it is done
    only when a sweep varies model_input). Grid points that differ in it are different ensembles."""
    if library_default and settings.model.startswith("timm:"):
        from ensembles.training.trainer import with_resolved_input

        resolved = with_resolved_input(settings, num_classes=10).model_input  # the head never changes the input
    else:
        from ensembles.models.inputs import resolve_input

        resolved = resolve_input(**(settings.model_input or {}))
    return json.dumps(resolved, sort_keys=True)


def _filled(template: str, setting: str, settings) -> str:
    """A reference's ``{field}`` placeholders filled with the job's own values as its folder name
    spells them (``"sgd-s{seeds}"`` -> ``"sgd-s13.17.27"``), checked to name a folder under the root."""
    table = declared(type(settings))

    def value(match) -> str:
        name = match.group(1)
        if name not in table or table[name].reference:
            raise InputError(f"{setting} {template!r}: {{{name}}} is not a setting to fill in; use a setting's "
                             "name, e.g. {seeds}")
        # spelled as in the folder name, whose characters outside [A-Za-z0-9._+-] become '_'
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", _spelled(table[name], getattr(settings, name)))

    folder = re.sub(r"\{([^{}]*)\}", value, template)
    if re.search(r"[{}]", folder):
        raise InputError(f"{setting} {template!r} has an unmatched brace; a placeholder is {{field}}, e.g. {{seeds}}")
    folder = os.path.normpath(folder) if folder else folder
    if not folder or os.path.isabs(folder) or ".." in Path(folder).parts or folder == ".":
        raise InputError(f"{setting} {folder!r} is not a run folder under the sweep root; name one relative to "
                         "the root, e.g. \"sgd-s{seeds}\"")
    return folder


def _settings_of(settings_class: type, merged: Mapping) -> tuple[object, dict[str, str]]:
    """The settings of one grid point and the run folders its references name (placeholders
    filled from the point's own settings, which are first made with the references as written)."""
    references = {name: merged[name] for name in _references(settings_class) if isinstance(merged.get(name), str)}
    settings = settings_class(**merged)
    if not references:
        return settings, {}
    folders = {name: _filled(template, name, settings) for name, template in references.items()}
    return settings_class(**{**merged, **folders}), folders


def expand_grid(base: Mapping, grid: Mapping[str, Sequence] | Sequence[Mapping[str, Sequence]], *,
                source: str = "<sweep>", text: str = "", settings_class: type | None = None) -> list[Job]:
    """The jobs of the cross product of ``grid`` over ``base`` (several grids: the union of their
    cross products, in order): axes that do not apply to a job's method are dropped from it, jobs
    that train the same ensemble are merged, names are checked unique, references are filled in
    and linked (:func:`_linked`). Settings a job cannot have (``td >= epochs`` ...) are an
    InputError naming the job."""
    from ensembles.training.settings import TrainingSettings

    settings_class = settings_class or TrainingSettings
    grids = [grid] if isinstance(grid, Mapping) else list(grid)
    every_axis = list(dict.fromkeys(axis for one in grids for axis in one))
    library_input = "model_input" in every_axis
    jobs: list[Job] = []
    seen: dict[tuple, Job] = {}
    names: dict[str, Job] = {}
    for one in grids:
        axes = list(one)
        named = [axis for axis in every_axis if axis in one]  # one order of name parts across grids
        for values in itertools.product(*(one[axis] for axis in axes)):
            point = dict(zip(axes, values))
            merged = {**base, **point}
            # A setting the job's method does not use (rho for sgd, eta outside asam, k and td outside
            # sharpbalance) is dropped here: the trainer refuses it, rightly, when a user passes it by hand.
            method = merged.get("method", "sgd")
            merged = {name: value for name, value in merged.items() if applies(name, method, settings_class)}
            try:
                settings, references = _settings_of(settings_class, merged)
                identity = (_identity(settings), _input_identity(settings, library_input))
            except InputError as error:
                shown = ", ".join(f"{axis}={_text(value)}" for axis, value in point.items()) or "the [base] settings"
                raise InputError(f"{source}: grid point {shown}: {error}") from None
            if identity in seen:
                continue
            name = run_name(settings, named)
            if name in names:
                raise InputError(f"{source}: two grid points would share the run folder {name!r} "
                                 f"({_text(list(names[name].point.values()))} and {_text(list(point.values()))}); "
                                 "their values differ only in spelling — make them distinct")
            applicable = {axis: value for axis, value in point.items() if applies(axis, settings.method, settings_class)}
            job = Job(name=name, settings=settings, point=applicable, references=references)
            seen[identity] = names[name] = job
            jobs.append(job)
    return _linked(jobs, source)


def _linked(jobs: Sequence[Job], source: str) -> list[Job]:
    """``jobs`` with ``needs`` set: the jobs of the sweep each one reads. A job that reads itself, or
    jobs that read each other in a cycle, are an InputError naming them."""
    names = {job.name for job in jobs}
    linked = []
    for job in jobs:
        for setting, folder in job.references.items():
            if folder == job.name:
                raise InputError(f"{source}: run {job.name} reads itself ({setting} = {folder!r}); a run can "
                                 "only read runs trained before it")
        linked.append(replace(job, needs=tuple(dict.fromkeys(f for f in job.references.values() if f in names))))
    needs = {job.name: job.needs for job in linked}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            raise InputError(f"{source}: runs {' -> '.join(cycle)} read each other in a cycle; a run can only "
                             "read runs trained before it")
        if name not in done:
            for need in needs[name]:
                visit(need, path + [name])
            done.add(name)

    for job in linked:
        visit(job.name, [])
    return linked


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
    """The jobs as a DataFrame: run folder, each axis value, members and epochs; when runs read
    other runs, also each job's wave and the run folders it reads (``(under ROOT)``: not a job of
    the sweep, so it must exist when the sweep runs)."""
    import pandas as pd

    linked = any(job.references for job in sweep.jobs)
    wave_of = {job.name: number for number, wave in enumerate(sweep.waves, 1) for job in wave} if linked else {}
    rows = []
    for job in sweep.jobs:
        row = {"run": job.name}
        for axis in sweep.grid:
            value = getattr(job.settings, axis)
            row[axis] = _text(value) if applies(axis, job.settings.method, type(job.settings)) else "-"
        row.update(members=len(job.settings.seeds), epochs=job.settings.epochs)
        if linked:
            row.update(wave=wave_of[job.name],
                       reads=", ".join(job.needs + tuple(f"{folder} (under ROOT)" for folder in job.outside)) or "-")
        rows.append(row)
    return pd.DataFrame(rows)


def plan_notes(sweep: Sweep) -> list[str]:
    """What ``sweep plan`` adds under the table: how many waves the jobs run in, and each run
    folder a job reads that no job of the sweep trains."""
    notes = []
    if len(sweep.waves) > 1:
        notes.append(f"{len(sweep.waves)} waves: a run is trained after the runs it reads, and skipped if one fails")
    for job in sweep.jobs:
        for folder in job.outside:
            notes.append(f"{job.name} reads {folder}, which is not a job of this sweep: it must be a finished run "
                         "folder under ROOT when the sweep runs")
    return notes


# ----------------------------------------------------------------------------------------------
# one job


@dataclass(frozen=True)
class Step:
    """One step of a job: ``name`` (train, sharpness, ...), what happened (``action``: trained,
    resumed, kept; measured, reused), how many measurements were computed and reused, wall seconds
    and the CPU seconds of the job's process (all its threads; what a study's cost on an idle
    machine is estimated from, where wall seconds also count the other work of a shared machine)."""

    name: str
    action: str
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


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
    from ensembles.training.trainer import with_resolved_input

    if not (path / run_folder.RUN_FILE).is_file():
        return "new"
    stored = _stored_settings(path, type(settings))
    if _identity(stored) != _identity(settings):
        table = declared(type(settings))
        differences = [name for name in settings.run_fields() if name in table and name not in _not_identity(settings)
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
    _check_references(path, config, settings, done)
    return "done" if done else "partial"


def _stored_settings(path: Path, settings_class: type):
    """The settings ``path`` was trained with (:func:`ensembles.training.trainer.settings_of_run`), as
    ``settings_class``: a subclass's own fields are read from run.json too."""
    from ensembles.runs import run_folder
    from ensembles.training.trainer import settings_of_run

    stored = settings_of_run(path)
    extra = [name for name in declared(settings_class) if name not in declared(type(stored))]
    if not extra:
        return stored
    config = run_folder.read_config(path)
    values = {name: getattr(stored, name) for name in declared(type(stored))}
    return settings_class(**values, **{name: config[name] for name in extra if config.get(name) is not None})


def reference_content(folder: str | os.PathLike) -> list[str]:
    """What a run folder holds now, as a run that read it records it: the digest of each member's
    weights file in member order (:func:`ensembles.runs.files.file_digest`; ``missing`` for a member
    without one). An empty list when ``folder`` is no run folder."""
    from ensembles.runs import run_folder
    from ensembles.runs.files import file_digest

    folder = Path(folder)
    if not (folder / run_folder.RUN_FILE).is_file():
        return []
    members = sorted(run_folder.read_config(folder).get("members", []), key=lambda member: member["index"])
    files = [run_folder.member_path(folder, member["index"]) for member in members]
    return [file_digest(file) if file.is_file() else "missing" for file in files]


def _check_references(path: Path, config: Mapping, settings, done: bool) -> None:
    """The hook that makes a referenced run's content part of a job's identity: a run trained from
    another run folder records, under the reference's role (``teacher``), the member digests it read
    (``{"members": [...], ...}``); when they differ from what that folder holds now, the run was
    trained from something else and is refused. A finished run that records nothing cannot be
    checked and is refused too; an unfinished one is left to the trainer's resume, which checks it."""
    for name, declaration in _references(type(settings)).items():
        folder = getattr(settings, name)
        if folder is None:
            continue
        role = declaration.reference
        record = config.get(role)
        recorded = record.get("members") if isinstance(record, Mapping) else None
        if recorded is None:
            if done:
                raise InputError(f"{path} records no {role} digests in its run.json, so it cannot be told apart from "
                                 f"a run of another {role}; remove it to retrain")
            continue
        current = reference_content(folder)
        if not current:
            raise InputError(f"{path} was trained from the {role} {folder}, which is no run folder now; restore it, "
                             "or remove this run to retrain it")
        if list(recorded) != current:
            raise InputError(f"{path}: its {role} {folder} changed since this run was trained; remove it to retrain")


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


def job_settings(job: Job, root: str | os.PathLike, data_path=None):
    """The settings ``job`` trains with under ``root``: each reference as the absolute path of the
    run folder it names under the root (so a job in any working directory reads the same folder),
    and ``data_path`` when given."""
    changes = {setting: str(Path(root).resolve() / folder) for setting, folder in job.references.items()}
    if data_path is not None:
        changes["data_path"] = str(data_path)
    return replace(job.settings, **changes) if changes else job.settings


def _finished(path: Path) -> bool:
    """Whether ``path`` is a run folder whose members all finished training."""
    from ensembles.runs import run_folder

    if not (path / run_folder.RUN_FILE).is_file():
        return False
    members = run_folder.read_config(path).get("members", [])
    return bool(members) and all(member.get("status") == "done" for member in members)


def _role(job: Job, folder: str) -> str:
    """What ``folder`` is to ``job`` (its reference's role, e.g. ``teacher``)."""
    table = _references(type(job.settings))
    return next((table[setting].reference for setting, named in job.references.items() if named == folder),
                "reference")


def _require_finished_references(job: Job, root: Path) -> None:
    """An InputError unless every run folder ``job`` reads is a finished run under ``root``."""
    for folder in dict.fromkeys(job.references.values()):
        if not _finished(root / folder):
            where = "a job of this sweep that has not finished" if folder in job.needs else "not a job of this sweep"
            raise InputError(f"{job.name} reads its {_role(job, folder)} {root / folder}, which is no finished run "
                             f"folder ({where}); train it first")


def run_job(job: Job, root: str | os.PathLike, measurements: Sequence[Measure] = (), *, data_path=None,
            device: str | None = "auto", progress: bool = False,
            echo: Callable[[str], None] | None = None) -> JobOutcome:
    """Train ``job`` into ``root/<job.name>`` and measure it; each step skips what is stored.

    Training: a new folder is trained, an unfinished one resumed, a finished one kept; a job that
    reads other run folders (its references, resolved under ``root``) trains only once they are
    finished. Then every measurement in ``measurements`` is run through its ``ensembles`` function,
    which computes only the rows the results table lacks. Each step is appended to
    ``root/sweep-log.jsonl``.
    """
    from ensembles.training import trainer

    root = Path(root)
    path = job_folder(root, job.name)
    settings = job_settings(job, root, data_path)
    chosen = _device(device)
    say = echo or (lambda message: None)
    started = time.perf_counter()
    steps = []

    def record(step: Step) -> None:
        steps.append(step)
        _log(root, {"job": job.name, "step": step.name, "action": step.action, "computed": step.computed,
                    "reused": step.reused, "seconds": round(step.seconds, 3),
                    "cpu_seconds": round(step.cpu_seconds, 3), "host": socket.gethostname(),
                    "pid": os.getpid(), "time": datetime.datetime.now().isoformat(timespec="seconds")})

    state = _training_state(path, settings)
    if state != "done":
        _require_finished_references(job, root)
    clock, cpu = time.perf_counter(), time.process_time()
    if state == "new":
        say(f"{job.name}: training {len(settings.seeds)} members for {settings.epochs} epochs")
        trainer.train(path, settings, device=chosen, progress=progress)
        record(Step("train", "trained", computed=len(settings.seeds), seconds=time.perf_counter() - clock,
                    cpu_seconds=time.process_time() - cpu))
    elif state == "partial":
        say(f"{job.name}: resuming the interrupted training")
        trainer.resume(path, device=chosen, progress=progress)
        record(Step("train", "resumed", computed=len(settings.seeds), seconds=time.perf_counter() - clock,
                    cpu_seconds=time.process_time() - cpu))
    else:
        record(Step("train", "kept", reused=len(settings.seeds)))
    for measure in measurements:
        clock, cpu = time.perf_counter(), time.process_time()
        function = _measurement_function(measure.command)
        options = dict(measure.options)
        if measure.command == "evaluate":
            options.setdefault("corruptions", "all")
        say(f"{job.name}: {measure.command}")
        results = function([path], root=settings.data_path, device=chosen, progress=progress, **options)
        computed, reused = map(sum, zip(*(_counts(measure.command, result) for result in results)))
        record(Step(measure.command, "measured" if computed else "reused", computed=computed, reused=reused,
                    seconds=time.perf_counter() - clock, cpu_seconds=time.process_time() - cpu))
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
    """An error as one line: its type and last line; for a job that failed in its own process
    (submitit's FailedJobError, whose text ends with log paths), the last line of the job's traceback."""
    trace = re.search(r"\n-{10,}\n(.*?)\n-{10,}\n", str(error), re.S)
    if trace:
        lines = [line for line in trace.group(1).splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` did: one outcome per finished job, the error of each failed one, the
    submitted job ids (cluster executors) and whether it waited for them; the jobs not run because a
    run they read failed (``skipped``, with the reason), and, without waiting, the jobs not submitted
    because runs they read are not finished yet (``waiting``, with those runs)."""

    outcomes: tuple[JobOutcome, ...]
    failures: Mapping[str, str]
    job_ids: Mapping[str, str]
    waited: bool = True
    skipped: Mapping[str, str] = field(default_factory=dict)
    waiting: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


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


def run_sweep(sweep: Sweep, root: str | os.PathLike, *, executor: str = "local", jobs: int | None = None,
              retries: int = 1, cluster: ClusterRequest | None = None, data_path=None, device: str = "auto",
              wait: bool = True, progress: bool = False, echo: Callable[[str], None] | None = None,
              poll_seconds: float = 2.0, threads: int | None = None,
              trust_model_code: bool | None = None) -> SweepResult:
    """Run every job of ``sweep`` into ``root`` with ``executor`` (local, slurm or debug).

    ``jobs`` bounds how many run at once (local: processes, each on its own GPU when there are
    several, default 1; slurm: the array's parallelism, default every task of it, as the scheduler
    allows). ``threads``: torch threads of each local process on a CPU (default: the usable cores
    shared out, ``cores // jobs``). Jobs that fail are submitted again up to ``retries`` times; each
    attempt redoes only the missing work. SLURM tasks are followed through the queue
    (:func:`ensembles.studies.slurm.watch`, every ``poll_seconds`` at first): one that leaves it
    without its result has failed, even on a cluster without job accounting, and its failure names
    its SLURM state, exit code and the end of its error log. Jobs that read other jobs' run folders
    run in dependency waves (:attr:`Sweep.waves`), each wave as above (slurm: one array per wave); a
    job whose run to read failed is skipped and reported. ``wait=False`` (slurm) submits the jobs whose
    runs to read are finished and returns; the others wait for the next call.
    ``trust_model_code`` (None: ``SHARPDIV_TRUST_MODEL_CODE``) lets models that name Python code be
    built, here and in every job. ``sharpdiv sweep run`` calls :func:`check_before_running` first,
    so a sweep whose data or models are missing creates nothing; here a job that lacks them fails
    alone, and its dependents are skipped.
    """
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    positive_int("--jobs", jobs, optional=True)
    positive_int("--threads", threads, optional=True)
    positive_int("--retries", retries, minimum=0)
    if not sweep.jobs:
        raise InputError(f"{sweep.source}: the grid has no jobs")
    root = Path(root)
    # A folder outside the root, holding another ensemble or trained from a run that changed since
    # fails now, as does a run folder to read that no job trains and that is not there.
    for job in sweep.jobs:
        _training_state(job_folder(root, job.name), job_settings(job, root))
        for folder in job.outside:
            if not _finished(root / folder):
                raise InputError(f"{job.name} reads its {_role(job, folder)} {root / folder}, which no job of this "
                                 "sweep trains and which is no finished run folder; train it there first")
    data_path = data_path if data_path is not None else sweep.data_path
    from ensembles.models.trust import model_code_trusted

    trusted = model_code_trusted(trust_model_code)
    root.mkdir(parents=True, exist_ok=True)
    say = echo or (lambda message: None)
    if executor == "slurm":
        at_once = "every task at once" if jobs is None else f"at most {jobs} tasks at once"
    else:
        jobs = jobs or 1
        at_once = f"{jobs} at once"
    say(f"sweep {sweep.name}: {len(sweep.jobs)} jobs into {root} ({executor} executor, {at_once})")
    queue = slurm.Queue() if executor == "slurm" else None

    outcomes: dict[str, JobOutcome] = {}
    failures: dict[str, str] = {}
    skipped: dict[str, str] = {}
    job_ids: dict[str, str] = {}
    if not wait and executor != "local":
        ready = [job for job in sweep.jobs if all(_finished(root / need) for need in job.needs)]
        waiting = {job.name: tuple(need for need in job.needs if not _finished(root / need))
                   for job in sweep.jobs if job not in ready}
        _run_submitit(ready, root, sweep, data_path, device, executor, jobs, cluster, wait, say, job_ids,
                      trusted, queue, poll_seconds)
        return SweepResult(outcomes=(), failures={}, job_ids=dict(job_ids), waited=False, waiting=waiting)
    waves = sweep.waves
    for number, wave in enumerate(waves, start=1):
        todo = []
        for job in wave:
            blocked = next((need for need in job.needs if need in failures or need in skipped), None)
            if blocked is None:
                todo.append(job)
                continue
            skipped[job.name] = (f"skipped: its {_role(job, blocked)} {blocked} "
                                 + ("failed" if blocked in failures else "was skipped"))
            say(f"{job.name}: {skipped[job.name]}")
            _log(root, {"job": job.name, "step": "train", "action": "skipped", "reason": skipped[job.name],
                        "time": datetime.datetime.now().isoformat(timespec="seconds")})
        if len(waves) > 1 and todo:
            say(f"wave {number} of {len(waves)}: {len(todo)} job(s)")
        for attempt in range(retries + 1):
            if not todo:
                break
            if attempt:
                say(f"retrying {len(todo)} failed job(s) (attempt {attempt + 1} of {retries + 1})")
            if executor == "local" and jobs == 1:
                finished = _run_here(todo, root, sweep, data_path, device, progress, say, trusted)
            elif executor == "local":
                finished = _run_local_processes(todo, root, sweep, data_path, device, jobs, poll_seconds, say,
                                                job_ids, threads, trusted)
            else:
                finished = _run_submitit(todo, root, sweep, data_path, device, executor, jobs, cluster, wait, say,
                                         job_ids, trusted, queue, poll_seconds)
            todo = []
            for job in wave:
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
    return SweepResult(outcomes=ordered, failures=failures, job_ids=job_ids, skipped=skipped)


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
                  trusted=False, queue: slurm.Queue | None = None, poll_seconds: float = 2.0):
    """One submitit array over ``todo`` (SLURM), or submitit's debug executor in this process."""
    import submitit

    executor = submitit.AutoExecutor(folder=root / SUBMITIT_DIR / sweep.name, cluster=executor_name)
    if executor_name == "slurm":
        executor.update_parameters(**slurm_parameters(cluster or ClusterRequest(), sweep.name, jobs, len(todo)))
    handles = []
    with executor.batch():
        for job in todo:
            handles.append((job, executor.submit(SweepJob(job, str(root), sweep.measurements, data_path, device,
                                                          trust_model_code=trusted))))
    for job, handle in handles:
        job_ids[job.name] = str(handle.job_id)
    if executor_name == "slurm":
        queue = queue or slurm.Queue()
        array = str(handles[0][1].job_id).split("_")[0]
        submitted = f"array {array}" if len(handles) > 1 else f"job {array}"  # submitit submits one job alone
        say(f"submitted {len(handles)} job(s) to SLURM as {submitted} (logs in {root / SUBMITIT_DIR / sweep.name})")
        first = queue.accounting is None
        problem = queue.accounting_problem(array)
        if first and problem:
            say(f"SLURM job accounting is unavailable (sacct: {problem}); following the tasks through the queue "
                "(squeue) instead: a task that leaves it without its result counts as failed")
    if not wait:
        return None
    if executor_name == "slurm":
        return _follow_slurm(handles, queue, poll_seconds, say)
    finished = {}
    for job, handle in handles:
        finished[job.name] = _collect(handle)
        outcome, error = finished[job.name]
        say("  " + (outcome.line() if outcome else f"{job.name}: failed"))
    return finished


def _follow_slurm(handles, queue: slurm.Queue, poll_seconds: float, say) -> dict:
    """Each SLURM task's outcome, or its failure (state, exit code, end of its error log), as it ends."""
    by_name = {job.name: handle for job, handle in handles}
    tasks = {name: (str(handle.job_id), handle.paths.result_pickle) for name, handle in by_name.items()}
    finished = {}
    for name, end in slurm.watch(tasks, queue, poll_seconds=poll_seconds, echo=say):
        handle = by_name[name]
        task = str(handle.job_id)
        if end is None:  # its result is there: what it returned, or the error it raised
            outcome, error = _collect(handle)
            if error is not None:
                error = slurm.failure(task, queue.ended(task, settle=10.0), handle.paths.stderr, error)
        else:  # it left the queue without a result: killed, cancelled, its node lost
            outcome, error = None, slurm.failure(task, end, handle.paths.stderr)
        finished[name] = (outcome, error)
        say("  " + (outcome.line() if outcome else f"{name}: failed"))
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
    """One row per job: its training state (not started, unfinished, done, conflict; a job not
    started that reads runs of the sweep: ``waiting for`` those not finished, or ``skipped`` with the
    reason when its last run skipped it) and the last action of each step."""
    import pandas as pd

    last: dict[tuple[str, str], str] = {}
    reasons: dict[str, str] = {}
    for record in read_log(root):
        last[record["job"], record["step"]] = record["action"]
        if record["action"] == "skipped":
            reasons[record["job"]] = record.get("reason", "skipped")
    states = {}
    for job in sweep.jobs:
        try:
            states[job.name] = _training_state(job_folder(root, job.name), job_settings(job, root))
        except InputError:
            states[job.name] = "conflict"
    rows = []
    for job in sweep.jobs:
        state = states[job.name]
        training = {"new": "not started", "partial": "unfinished"}.get(state, state)
        if state == "new" and last.get((job.name, "train")) == "skipped":
            training = reasons[job.name]
        elif state == "new" and any(states[need] != "done" for need in job.needs):
            training = "waiting for " + ", ".join(need for need in job.needs if states[need] != "done")
        row = {"run": job.name, "training": training}
        for measure in dict.fromkeys(m.command for m in sweep.measurements):
            row[measure] = last.get((job.name, measure), "-")
        rows.append(row)
    return pd.DataFrame(rows)


def group_runs(sweep: Sweep, paths: Iterable[str | os.PathLike], group_by: Sequence[str] | None = None) -> str:
    """The run.json field the report should group ``paths`` by.

    One axis is a field of every run already. Several (``["width", "method"]``) are joined into one
    label, ``width=16 method=sam``, stored as ``sweep_group`` in each run.json (via
    :func:`ensembles.runs.run_folder.update_config`), and ``"sweep_group"`` is returned. A grouping
    the report derives itself (:data:`DERIVED_GROUPS`), alone or with axes, is handed over as the
    comma list of the axes (``"construction"``, ``"construction,width"``), and nothing is stored.
    """
    from ensembles.runs import run_folder

    axes = tuple(group_by or sweep.group_by)
    unknown = [axis for axis in axes if axis not in AXES + DERIVED_GROUPS]
    if unknown:
        raise InputError(f"cannot group by {unknown[0]!r}; choose from {', '.join(AXES + DERIVED_GROUPS)}")
    if len(axes) == 1 or any(axis in DERIVED_GROUPS for axis in axes):
        return ",".join(axes)
    for path in paths:
        config = run_folder.read_config(path)
        label = " ".join(f"{axis}={_text(config.get(axis))}" for axis in axes)
        if config.get("sweep_group") != label:
            run_folder.update_config(path, sweep_group=label)
    return "sweep_group"
