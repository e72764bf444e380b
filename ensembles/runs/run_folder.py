"""Run folders: one ensemble on disk, and its results table.

A run folder holds::

    run.json                 what the ensemble is: dataset, model, method, hyper-parameters, seeds,
                             which weights the members are, per-member status, library versions
    member-<i>.safetensors   the weights analyses use (parameters and buffers)
    train/                   whatever the trainer needs to resume; analyses never read it
    results/                 the results table: long-format rows in parquet parts

The results table is the one store every measurement writes to. A row is one number: ``run``,
``scope`` (``member-<i>``, ``ensemble``, ``ensemble@<k>``, ``pair-<i>-<j>``), ``metric``, ``value``,
``stderr``, ``dataset``, ``split``, ``corruption``, ``severity``, and the settings that produced it
as further columns (a point of a computed grid is keyed by its index, its place is a location
column beside the value). Each row also carries ``weights``, a digest of the member files its scope
reads (taken when the weights were read, and checked again when the row is written), so new weights
make old rows stale instead of wrong; ``data``, the fingerprint of the data it was measured on
(:func:`ensembles.data.datasets.data_digest`), so other data never passes for the same; and ``key``, which
identifies the measurement (scope, metric, slice, settings, weights, data): writing the same key
again replaces the row. Every append writes its own parquet part (temporary file + rename), so two
processes that append at once both keep their rows; reading merges the parts.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import re
import sys
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd
import safetensors.torch
import torch
from filelock import FileLock

from ensembles.models import checkpoints, inputs, zoo
from ensembles.models.trust import UntrustedModelCode
from ensembles.runs.files import RUN_FILE, atomic_path, file_digest, require_run_folder, write_json
from landscape.errors import InputError

RESULTS_DIR = "results"
#: run.json's mark of a results-only copy of a run (:func:`write_results_only_copy`): its member
#: weights were left out, and each member records the digest of the weights file it had.
RESULTS_ONLY = "results_only"
TRAIN_DIR = "train"
FORMAT_VERSION = 1

#: Columns every results row has, in this order; settings columns follow.
RESULT_COLUMNS = ("run", "scope", "metric", "value", "stderr", "dataset", "split", "corruption", "severity")
#: Columns the table adds itself; they are never settings.
BOOKKEEPING_COLUMNS = ("weights", "data", "settings", "key", "created", "sharpdiv_version", "torch_version")
#: Where a row's value lies when the measurement itself computes that place (the eigenvalue of a
#: spectral density's grid point, a loss plane point's coordinates): stored with the value, like
#: ``stderr``, never a setting and never in the key, since its last bits differ between CPUs. The row
#: is keyed by its grid index instead. (Rows written before held these as settings; they still read.)
LOCATION_COLUMNS = ("eigenvalue", "u", "v")
_SLICE_COLUMNS = ("dataset", "split", "corruption", "severity")
_COMPACT_AFTER_PARTS = 64


def member_path(run_path: str | os.PathLike, index: int) -> Path:
    return Path(run_path) / f"member-{index}.safetensors"


def library_versions() -> dict[str, str]:
    """Versions that can change a number: recorded in run.json and on every results row."""
    import numpy

    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("sharpdiv")
    except PackageNotFoundError:  # running from a source tree that is not installed
        own = "unknown"
    return {"sharpdiv": own, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def model_library_version(model: str) -> dict[str, str]:
    """``{"timm": "1.0.9"}`` for a ``timm:``/``torchvision:`` model, else ``{}``: the builder's
    defaults (activations, pooling ...) are part of the module, and a later command rebuilds it
    with whatever version is installed then (:func:`build_member_model` says when that differs)."""
    from importlib.metadata import PackageNotFoundError, version

    library = model.partition(":")[0] if model.startswith(("timm:", "torchvision:")) else None
    if library is None:
        return {}
    try:
        return {library: version(library)}
    except PackageNotFoundError:
        return {}


# ----------------------------------------------------------------------------------------------
# run.json and member weights


def create_run(path: str | os.PathLike, *, dataset: str, num_classes: int, model: str,
               model_args: Mapping | None = None, method: str = "sgd", seeds: Iterable[int] = (),
               keep: str = "best", n_members: int | None = None, exist_ok: bool = False,
               model_input: Mapping | None = None, **settings) -> dict:
    """Write a new run folder's run.json and return the config.

    ``settings`` are the method's hyper-parameters (rho, k, td, epochs, lr, width, sparsity ...);
    they are stored flat at the top level so reports can group by any of them. ``model_input`` is
    the input size and normalization the model applies itself (:mod:`ensembles.models.inputs`;
    None: the data pipeline normalises with the dataset's statistics).
    """
    path = Path(path)
    seeds = [int(s) for s in seeds]
    n_members = len(seeds) if n_members is None else int(n_members)
    config = {
        "format": FORMAT_VERSION,
        "dataset": dataset,
        "num_classes": int(num_classes),
        "model": model,
        "model_args": dict(model_args or {}),
        "model_input": dict(model_input) if model_input else None,
        "method": method,
        "seeds": seeds,
        "keep": keep,
        **settings,
        "members": [{"index": i, "seed": seeds[i] if i < len(seeds) else None, "status": "pending"}
                    for i in range(n_members)],
        "versions": {**library_versions(), **model_library_version(model)},
        "created": _now(),
    }
    if (path / RUN_FILE).exists() and not exist_ok:
        raise InputError(f"{path} already holds a run (run.json exists); choose another folder or remove it")
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / RUN_FILE, config)
    return config


def read_config(path: str | os.PathLike) -> dict:
    """run.json of a run folder, with a clear error when the folder is not a run."""
    file = require_run_folder(path) / RUN_FILE
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{file} is not valid JSON ({error}); restore it or recreate the run") from None
    check_config(config, file)
    return config


# The fields every reader of run.json relies on, and the type each must have.
_REQUIRED_FIELDS = (("dataset", str, "a dataset name"), ("num_classes", int, "an integer of at least 2"),
                    ("model", str, "a model name"), ("model_args", dict, "an object of model options"),
                    ("members", list, "a list of members"))


def check_config(config, file: str | os.PathLike = RUN_FILE) -> None:
    """One clear InputError naming ``file`` and the field when run.json is not a run's config
    (a list, a field missing or of the wrong type); a few type checks, so reading stays fast."""
    fix = "restore it from a backup or recreate the run (`sharpdiv train` or `sharpdiv import`)"
    if not isinstance(config, dict):
        raise InputError(f"{file} holds a JSON {type(config).__name__}, not a run's settings object; {fix}")
    for name, kind, meaning in _REQUIRED_FIELDS:
        if name not in config:
            raise InputError(f"{file} lacks the field {name!r} ({meaning}); {fix}")
        value = config[name]
        wrong = (not isinstance(value, kind) or isinstance(value, bool)
                 or (kind is str and not value.strip()) or (name == "num_classes" and value < 2))
        if wrong:
            raise InputError(f"{file}: field {name!r} must be {meaning}, got {_short(value)}; {fix}")
    if not isinstance(config.get("model_input") or {}, dict):
        raise InputError(f"{file}: field 'model_input' must be an object (size, mean, std) or null, got "
                         f"{_short(config['model_input'])}; {fix}")
    for position, member in enumerate(config["members"]):
        if not isinstance(member, dict) or member.get("index") != position or isinstance(member.get("index"), bool) \
                or not isinstance(member.get("status", ""), str):
            raise InputError(f"{file}: members[{position}] must be an object with \"index\": {position} and a "
                             f"\"status\", got {_short(member)}; {fix}")


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def update_config(path: str | os.PathLike, **changes) -> dict:
    """Change top-level fields of run.json under the run's lock (safe across processes)."""
    path = Path(path)
    with FileLock(str(path / ".run.lock")):
        config = read_config(path)
        config.update(changes)
        write_json(path / RUN_FILE, config)
    return config


def save_member(path: str | os.PathLike, index: int, weights: torch.nn.Module | Mapping[str, torch.Tensor],
                *, status: str = "done", **info) -> Path:
    """Write member ``index``'s weights (parameters and buffers) and mark it in run.json.

    ``info`` (seed, epoch, val_accuracy, source file ...) is stored in the member's run.json entry.
    """
    path = Path(path)
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else dict(weights)
    # safetensors wants contiguous tensors that share no memory; clone to be sure.
    tensors = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in state.items()}
    target = member_path(path, index)
    with atomic_path(target) as temporary:
        safetensors.torch.save_file(tensors, str(temporary), metadata={"member": str(index)})
    with FileLock(str(path / ".run.lock")):
        config = read_config(path)
        members = config.setdefault("members", [])
        while len(members) <= index:
            members.append({"index": len(members), "seed": None, "status": "pending"})
        members[index].update({"status": status, "file": target.name, **info})
        write_json(path / RUN_FILE, config)
    return target


def load_member_state(path: str | os.PathLike, index: int) -> dict[str, torch.Tensor]:
    file = member_path(path, index)
    if not file.is_file():
        raise InputError(f"member {index} of {path} has no weights ({file.name} is missing); "
                         "finish its training or re-import it")
    try:
        return safetensors.torch.load_file(str(file))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own types for truncated or foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"cannot read {file}, member {index}'s weights ({reason}); the file is damaged: "
                         "re-import the member (`sharpdiv import`) or retrain it") from None


@dataclass
class Run:
    """A loaded run folder: its config and its members (modules in eval mode)."""

    path: Path
    config: dict
    members: list[torch.nn.Module] = field(repr=False)
    member_indices: list[int]
    #: member index -> digest of its weights file as it was read (what rows of these members carry)
    weights: dict[int, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])


def finished_members(config: Mapping) -> list[int]:
    return [m["index"] for m in config.get("members", []) if m.get("status") == "done"]


def legacy_asam_scale(record: Mapping) -> dict:
    """ASAM runs recorded before ``asam_scale`` existed scaled every parameter: read them as "all"
    (training's resume check and the reports' run table both read run.json this way)."""
    if record.get("method") == "asam" and "asam_scale" not in record:
        return {"asam_scale": "all"}
    return {}


def data_normalized(config: Mapping) -> bool:
    """Whether the run's members take images normalised by the data pipeline (the zoo's way),
    rather than ``[0, 1]`` pixels they normalise themselves (run.json ``model_input``)."""
    return not inputs.normalizes(config.get("model_input"))


def data_root(config: Mapping, root, dataset: str | None = None) -> tuple[str | None, str | None]:
    """``(root, note)``: the given ``--data-path``; else the data root the run was trained on
    (run.json ``data_path``, e.g. a quickstart's own data folder) when it still exists and the run's
    own dataset is read; else None (the default root), with a note when the recorded one is gone."""
    recorded = config.get("data_path")
    if root is not None or not isinstance(recorded, str) or dataset not in (None, config["dataset"]):
        return root, None
    if Path(recorded).is_dir():
        return recorded, None
    return None, f"the data root the run was trained on ({recorded}, run.json data_path) is gone; the default is used"


def build_member_model(config: Mapping, *, trust_model_code: bool | None = None,
                       source: str = RUN_FILE) -> torch.nn.Module:
    """A fresh module of the run's architecture (run.json ``model``, ``model_args``,
    ``model_input``). A model naming Python code (``module.path:callable``) is built only when
    trusted (``trust_model_code``, else ``SHARPDIV_TRUST_MODEL_CODE``): a run folder from someone
    else must not run code by being read. ``source`` names run.json in messages."""
    recorded = (config.get("versions") or {}) if isinstance(config.get("versions"), dict) else {}
    for library, installed in model_library_version(str(config["model"])).items():
        if recorded.get(library) not in (None, installed):
            warnings.warn(f"{config['model']} is rebuilt with {library} {installed}, but the run was made with "
                          f"{library} {recorded[library]}: if the builder's defaults changed in between, the "
                          f"module differs from the one trained; install {library}=={recorded[library]} to be sure",
                          stacklevel=2)
    try:
        return zoo.build(config["model"], int(config["num_classes"]), model_input=config.get("model_input"),
                         trust_model_code=trust_model_code, **config.get("model_args", {}))
    except UntrustedModelCode as error:
        raise UntrustedModelCode(f"{source}: {error}") from None
    except InputError as error:
        raise InputError(f"{source}: {error}; fix model/model_args in run.json or recreate the run") from None
    except (TypeError, ValueError) as error:  # an option of the right name but a wrong value
        raise InputError(f"{source}: model {config['model']!r} cannot be built with model_args "
                         f"{config.get('model_args')} ({error}); fix model_args in run.json or recreate the run") from None


def check_member_model(config: Mapping, *, trust_model_code: bool | None = None, source: str = RUN_FILE) -> None:
    """The refusal :func:`build_member_model` would raise, without building the model: a command
    calls it before it writes anything (:func:`ensembles.models.zoo.check_model`)."""
    try:
        zoo.check_model(config["model"], config.get("model_args"), trust_model_code=trust_model_code)
    except UntrustedModelCode as error:
        raise UntrustedModelCode(f"{source}: {error}") from None
    except InputError as error:
        raise InputError(f"{source}: {error}; fix model/model_args in run.json or recreate the run") from None


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None, *, trust_model_code: bool | None = None) -> Run:
    """Load a run folder's finished members as modules in eval mode on ``device``; a model that
    names Python code only with ``trust_model_code`` (see :func:`build_member_model`)."""
    path = Path(path)
    config = read_config(path)
    indices = finished_members(config)
    if not indices:
        raise InputError(f"{path} has no finished members yet; train or import them first")
    if config.get(RESULTS_ONLY):
        raise InputError(f"{path} is a results-only copy of the run {config[RESULTS_ONLY].get('from')!r}: its member "
                         "weights were left out, so nothing can be measured on it; measure the original run folder")
    members, digests = [], {}
    for index in indices:
        model = build_member_model(config, trust_model_code=trust_model_code, source=str(path / RUN_FILE))
        digests[index] = _member_digest(path, index)
        state = load_member_state(path, index)
        if _member_digest(path, index) != digests[index]:
            raise InputError(f"{member_path(path, index)} changed while it was being read; run the command again")
        checkpoints.require_finite_weights(state, str(member_path(path, index)))
        try:
            zoo.load_weights(model, state)
        except InputError as error:
            raise InputError(f"member {index} of {path}: {error}") from None
        model.to(device=device, dtype=dtype).eval()
        members.append(model)
    return Run(path=path, config=config, members=members, member_indices=indices, weights=digests)


# ----------------------------------------------------------------------------------------------
# the results table


def scope_members(scope: str, config: Mapping) -> list[int]:
    """Which members a scope reads: ``member-3`` -> [3], ``ensemble@2`` -> first two, ``pair-0-2``."""
    done = finished_members(config)
    if match := re.fullmatch(r"member-(\d+)", scope):
        return [int(match.group(1))]
    if match := re.fullmatch(r"ensemble@(\d+)", scope):
        return done[: int(match.group(1))]
    if match := re.fullmatch(r"pair-(\d+)-(\d+)", scope):
        return [int(match.group(1)), int(match.group(2))]
    return done


def stopping(config: Mapping, scope: str) -> dict:
    """How the members a scope reads stopped training to a criterion: ``stop_epoch`` (the largest
    of them) and ``reached_criterion`` (whether all of them met it), as run.json records each member;
    ``{}`` when a member of the scope has no such record (a run trained without a criterion, an
    imported or older run), so its rows read as they always did."""
    entries = {member.get("index"): member for member in config.get("members", [])}
    chosen = [entries.get(index, {}) for index in scope_members(scope, config)]
    if not chosen or any(entry.get("stop_epoch") is None or entry.get("reached_criterion") is None
                         for entry in chosen):
        return {}
    return {"stop_epoch": max(int(entry["stop_epoch"]) for entry in chosen),
            "reached_criterion": all(bool(entry["reached_criterion"]) for entry in chosen)}


def _member_digest(path: Path, index: int, config: Mapping | None = None) -> str:
    file = member_path(path, index)
    if file.is_file():
        return file_digest(file)
    return recorded_digest(config, index) or "missing"


def recorded_digest(config: Mapping | None, index: int) -> str | None:
    """The digest a results-only copy (:func:`write_results_only_copy`) records for member ``index``,
    whose weights file it left out; None for any other run folder."""
    if not config or not config.get(RESULTS_ONLY):
        return None
    for member in config.get("members", []):
        if member.get("index") == index and isinstance(member.get("digest"), str):
            return member["digest"]
    return None


def weights_digest(path: str | os.PathLike, scope: str, config: Mapping | None = None,
                   read: Mapping[int, str] | None = None) -> str:
    """Digest of the member files a scope reads: the part of a row's key that new weights change.

    ``read`` gives member digests taken when the weights were read (:attr:`Run.weights`); members
    not in it are digested as their files are now.
    """
    path = Path(path)
    config = read_config(path) if config is None else config
    read = read or {}
    parts = [f"{index}:{read[index] if index in read else _member_digest(path, index, config)}"
             for index in scope_members(scope, config)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _check_unchanged(path: Path, read: Mapping[int, str]) -> None:
    """Refuse to store rows of weights that were replaced after they were read."""
    for index, digest in sorted(read.items()):
        if _member_digest(path, index) != digest:
            raise InputError(f"{member_path(path, index)} changed during the measurement (its weights are not "
                             "the ones measured); no rows were stored: run the command again")


def settings_of(record: Mapping) -> dict:
    """The fields of a results row that are settings: all but the fixed, bookkeeping and location columns."""
    return {k: v for k, v in record.items()
            if k not in RESULT_COLUMNS and k not in BOOKKEEPING_COLUMNS and k not in LOCATION_COLUMNS}


def canonical_settings(settings: Mapping) -> str:
    """One string per settings dict, independent of key order and of int/float spelling."""
    return json.dumps({k: _plain(v) for k, v in sorted(settings.items())}, sort_keys=True, default=str)


def _plain(value):
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str)):
        value = value.item()  # numpy scalars
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)  # (not beyond: 1e30 as an int overflows the table's int64 columns)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _row_key(scope, metric, slice_values, settings_text, weights, data=None) -> str:
    identity = [scope, metric, [None if _missing(v) else _plain(v) for v in slice_values], settings_text, weights]
    if data is not None:  # rows written before the data column keep their keys
        identity.append(data)
    text = json.dumps(identity, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _path_of(run) -> Path:
    return run.path if isinstance(run, Run) else Path(run)


def append_results(run: Run | str | os.PathLike, rows: Iterable[Mapping] | pd.DataFrame, *,
                   weights: Mapping[int, str] | None = None) -> pd.DataFrame:
    """Add measurement rows to a run's results table and return them as written.

    Each row needs ``scope``, ``metric`` and ``value``; ``stderr``, the slice columns (``dataset``,
    ``split``, ``corruption``, ``severity``) and ``data`` (the :func:`ensembles.data.datasets.data_digest`
    of the data measured; rows without it are never reused) are optional, and so are the location
    columns (``LOCATION_COLUMNS``, stored but not part of the key); every other field is a setting
    and becomes a column. NaN values are allowed (an undefined metric is a result).

    ``weights`` maps member indices to the digests of their files taken when they were read (a
    :class:`Run` brings its own); the rows carry those, and if a file differs now nothing is
    stored (:class:`InputError`: the file changed during the measurement).
    """
    path = _path_of(run)
    config = run.config if isinstance(run, Run) else read_config(path)
    if weights is None and isinstance(run, Run):
        weights = run.weights
    read = dict(weights or {})
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else [dict(r) for r in rows]
    if not records:
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    versions = library_versions()
    created = _now()
    digests: dict[str, str] = {}
    prepared = []
    for record in records:
        for required in ("scope", "metric", "value"):
            if required not in record:
                raise ValueError(f"results row without {required!r}: {record}")
        settings = settings_of(record)
        scope = str(record["scope"])
        if scope not in digests:
            digests[scope] = weights_digest(path, scope, config, read)
        settings_text = canonical_settings(settings)
        row = {"run": path.name, "scope": scope, "metric": str(record["metric"]),
               "value": float(record["value"]),
               "stderr": float("nan") if _missing(record.get("stderr")) else float(record["stderr"])}
        for column in _SLICE_COLUMNS:
            row[column] = None if _missing(record.get(column)) else _plain(record.get(column))
        row.update({k: _column_value(v) for k, v in settings.items()})
        row.update({k: float(record[k]) for k in LOCATION_COLUMNS if not _missing(record.get(k))})
        data = None if _missing(record.get("data")) else str(record["data"])
        row.update(weights=digests[scope], data=data, settings=settings_text,
                   key=_row_key(scope, row["metric"], [row[c] for c in _SLICE_COLUMNS], settings_text,
                                digests[scope], data),
                   created=created, sharpdiv_version=versions["sharpdiv"], torch_version=versions["torch"])
        prepared.append(row)
    keys = [row["key"] for row in prepared]
    if len(set(keys)) < len(keys):  # one would silently replace the other
        twice = next(row for row in prepared if keys.count(row["key"]) > 1)
        raise ValueError(f"two results rows measure the same thing ({twice['scope']}, {twice['metric']}, "
                         f"settings {twice['settings']}); rows of a grid need their grid index")
    frame = _uniform_columns(pd.DataFrame(prepared))
    # Last, just before the write: rows of weights replaced since they were read store nothing.
    used = {index for scope in digests for index in scope_members(scope, config)}
    _check_unchanged(path, {index: digest for index, digest in read.items() if index in used})
    results = path / RESULTS_DIR
    results.mkdir(parents=True, exist_ok=True)
    part = results / f"part-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S%f}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
    with atomic_path(part) as temporary:
        frame.to_parquet(temporary, index=False)
    if len(list(results.glob("part-*.parquet"))) > _COMPACT_AFTER_PARTS:
        compact_results(path)
    return frame


def _column_value(value):
    value = _plain(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)  # parquet columns hold scalars; lists are kept as JSON text
    return value


def _uniform_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: a column mixing text and numbers becomes text."""
    for column in frame.columns:
        kinds = {type(v) for v in frame[column] if not _missing(v)}
        if str in kinds and len(kinds) > 1:
            frame[column] = [None if _missing(v) else str(v) for v in frame[column]]
        elif kinds and kinds <= {int, float, bool} and len(kinds) > 1 and bool not in kinds:
            frame[column] = frame[column].astype(float)
    return frame


#: Columns a results part must hold to be read (older parts may lack the optional ones).
_PART_COLUMNS = ("scope", "metric", "value", "weights", "settings", "key", "created")
_warned_parts: set[tuple[str, int, int]] = set()


def _foreign_part(part: Path, frame: pd.DataFrame) -> str | None:
    """Why ``frame`` is not a results part sharpdiv wrote, or None."""
    missing = [column for column in _PART_COLUMNS if column not in frame.columns]
    if missing:
        return f"it lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    if not frame.empty and not pd.api.types.is_numeric_dtype(frame["value"]):
        return "its value column is not numeric"
    return None


def _skip_part(part: Path, reason: str) -> None:
    """One line on stderr (once per file version) naming the part that is left out, and the fix."""
    try:
        stat = part.stat()
        version = (str(part), stat.st_size, stat.st_mtime_ns)
    except OSError:
        version = (str(part), -1, -1)
    if version not in _warned_parts:
        _warned_parts.add(version)
        print(f"sharpdiv: warning: skipping results part {part}: {reason}; its rows are left out — move it out of "
              f"{part.parent} (or delete it) to silence this", file=sys.stderr)


def _read_parts(results: Path) -> list[pd.DataFrame]:
    """Every readable results part; an unreadable or foreign one is named on stderr and skipped,
    so one bad file never makes the run's other rows unreadable."""
    frames = []
    for part in sorted(results.glob("part-*.parquet")):
        if not part.is_file():
            if not os.path.lexists(part):  # compacted away by another process between listing and reading
                return _read_parts(results)
            _skip_part(part, "it is not a file")
            continue
        try:
            frame = pd.read_parquet(part)
        except FileNotFoundError:  # compacted away by another process between listing and reading
            return _read_parts(results)
        except Exception as error:  # noqa: BLE001 - pyarrow raises many kinds for a damaged file
            _skip_part(part, f"not a readable parquet file ({type(error).__name__})")
            continue
        reason = _foreign_part(part, frame)
        if reason:
            _skip_part(part, reason)
            continue
        frames.append(frame)
    return frames


def read_results(run: Run | str | os.PathLike, current_only: bool = False) -> pd.DataFrame:
    """The run's results table: one row per measurement (the newest write of each key).

    A ``stale`` column is True where the member files have changed since the row was written, or
    where a newer row measured the same thing (scope, metric, slice, settings, weights) on other data
    (``data`` differs); ``current_only=True`` drops those rows. Rows of tables written before the
    ``data`` column have it empty: they stay readable (and current for reports), but
    :func:`find_results` never reuses them.
    """
    path = _path_of(run)
    config = run.config if isinstance(run, Run) else read_config(path)
    frames = [f for f in _read_parts(path / RESULTS_DIR) if not f.empty]
    if not frames:
        empty = pd.DataFrame(columns=[*RESULT_COLUMNS, *BOOKKEEPING_COLUMNS, "stale"])
        return empty
    table = pd.concat(frames, ignore_index=True, sort=False)
    table = table.sort_values("created", kind="stable").drop_duplicates("key", keep="last")
    digests = {scope: weights_digest(path, scope, config) for scope in table["scope"].unique()}
    if "data" not in table.columns:
        table["data"] = None
    table["stale"] = table["weights"] != table["scope"].map(digests)
    # The same measurement on other data: only the newest data's rows are current.
    table["stale"] |= table.duplicated(["scope", "metric", *_SLICE_COLUMNS, "settings", "weights"], keep="last")
    # Rows that also depend on a member outside their scope (aligned pairs depend on the reference
    # member they were aligned to) are stale once that member's file changed.
    if {"aligned_to", "reference_weights"} <= set(table.columns):
        tied = table["reference_weights"].notna() & table["aligned_to"].notna()
        current = {int(m): file_digest(member_path(path, int(m))) if member_path(path, int(m)).is_file()
                   else recorded_digest(config, int(m)) for m in table.loc[tied, "aligned_to"].unique()}
        table.loc[tied, "stale"] |= table.loc[tied, "reference_weights"] != table.loc[tied, "aligned_to"].map(
            lambda member: current[int(member)])
    if current_only:
        table = table[~table["stale"]]
    leading = [c for c in RESULT_COLUMNS if c in table.columns]
    others = [c for c in table.columns if c not in leading]
    return table[leading + others].reset_index(drop=True)


def find_results(run: Run | str | os.PathLike, settings: Mapping, data: str | None = None,
                 **where) -> pd.DataFrame:
    """Stored, current rows produced with exactly ``settings`` on the data whose fingerprint is
    ``data`` (:func:`ensembles.data.datasets.data_digest`), filtered by column values.

    ``where`` filters on any column (``scope="member-0"``, ``metric=...``, ``split="train"``).
    A command that finds its rows here can skip the work. ``data=None`` asks for rows of unknown
    data, of which there are none: rows without a fingerprint are never reused.
    """
    table = read_results(run, current_only=True)
    if table.empty:
        return table
    mask = (table["settings"] == canonical_settings(settings)) & (table["data"] == data)
    for column, wanted in where.items():
        if column not in table.columns:
            return table.iloc[0:0]
        if _missing(wanted):
            mask &= table[column].isna()
        else:
            mask &= table[column] == _plain(wanted)
    return table[mask].reset_index(drop=True)


def write_results_only_copy(source: str | os.PathLike, destination: str | os.PathLike,
                            rows: pd.DataFrame | None = None) -> Path:
    """A copy of the run folder ``source`` at ``destination`` (new or empty) without its weights:
    run.json, marked as a results-only copy (``results_only = {"from": <source folder name>}``) with
    each finished member's weights digest, and one results part holding ``rows`` (default: every
    current row of ``source``; pass a subset of them, as :func:`read_results` returns them, to keep
    fewer). Reports read the copy as they read the source: its rows stay current, since the digests
    of the weights they were measured on are recorded; measuring on it is refused (:func:`load_run`).
    A member file put into the copy later is digested itself, so rows of other weights go stale."""
    source, destination = Path(source), Path(destination)
    config = read_config(source)
    origin = (config.get(RESULTS_ONLY) or {}).get("from") or source.resolve().name  # a copy of a copy keeps it
    current = read_results(source, current_only=True)
    rows = current if rows is None else rows
    if not set(rows.get("key", pd.Series(dtype=object))) <= set(current["key"]):
        raise InputError(f"rows to copy from {source} must be current rows of its results table (read_results)")
    if destination.exists() and any(destination.iterdir()):
        raise InputError(f"{destination} is not empty; give a new or empty folder for the results-only copy")
    members = []
    for member in config.get("members", []):
        digest = _member_digest(source, member["index"], config) if member.get("status") == "done" else "missing"
        members.append({**member, **({"digest": digest} if digest != "missing" else {})})
    config = {**config, "members": members, RESULTS_ONLY: {"from": origin}}
    destination.mkdir(parents=True, exist_ok=True)
    write_json(destination / RUN_FILE, config)
    if not rows.empty:
        (destination / RESULTS_DIR).mkdir()
        frame = rows.drop(columns=["stale"], errors="ignore").reset_index(drop=True)
        with atomic_path(destination / RESULTS_DIR / "part-results-only-copy.parquet") as temporary:
            frame.to_parquet(temporary, index=False, compression="zstd")  # copies are kept in repositories: small
    return destination


def compact_results(run: Run | str | os.PathLike) -> None:
    """Merge the results parts into one (newest row per key); safe while others append."""
    path = _path_of(run)
    results = path / RESULTS_DIR
    with FileLock(str(results / ".compact.lock")):
        parts = sorted(results.glob("part-*.parquet"))
        if len(parts) < 2:
            return
        table = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True, sort=False)
        table = table.sort_values("created", kind="stable").drop_duplicates("key", keep="last")
        # Which row wins is decided by its `created` time, not by file names.
        merged = results / f"part-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S%f}-merged-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_path(merged) as temporary:
            _uniform_columns(table).to_parquet(temporary, index=False)
        for part in parts:
            if part != merged:
                part.unlink(missing_ok=True)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
