"""Importing the checkpoints people already have into a run folder, one member per file.

The files are read by :mod:`ensembles.models.checkpoints` (``weights_only=True``, never running
code they carry), must fit the named model strictly (:func:`ensembles.models.zoo.load_weights`),
and become ``member-<i>.safetensors`` of a new run folder (:mod:`ensembles.runs.run_folder`), all
or nothing. SharpBalance's layout ``seed_<s>/model_best.pth.tar`` gives each member its seed.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

from ensembles.data import datasets
from ensembles.models import checkpoints, zoo
from ensembles.runs import run_folder
from landscape.errors import InputError


def seed_from_path(path: str | os.PathLike) -> int | None:
    """SharpBalance stores member s as ``seed_<s>/model_best.pth.tar``: recover s."""
    for part in reversed(Path(path).parts[:-1]):
        if match := re.fullmatch(r"seed_?(\d+)", part):
            return int(match.group(1))
    return None


# run.json fields the import sets itself: from its own options, or as sharpdiv's bookkeeping.
_FROM_OPTIONS = {"dataset": "--data", "num_classes": "--num-classes", "model": "--model",
                 "model_args": "--model-arg and --width", "model_input": "--input-size, --mean and --std"}
_BOOKKEEPING = ("format", "members", "versions", "created", "path", "n_members", "exist_ok")
_KEEP = ("best", "last", "imported")
_MAX_SEED = 2**63 - 1  # results columns are int64
# Hidden folders an import assembles a run in: ``.<out>.sharpdiv-import-<host>-<pid>-<random>``.
_STAGING = ".sharpdiv-import-"
_STAGING_NAME = re.compile(r"\.sharpdiv-import-(?P<host>[A-Za-z0-9.-]+)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_STALE_AFTER_SECONDS = 24 * 3600


def import_checkpoints(out: str | os.PathLike, files: Sequence[str | os.PathLike], *, model: str,
                       num_classes: int, dataset: str, model_args: Mapping | None = None,
                       settings: Mapping | None = None, model_input: Mapping | None = None) -> Path:
    """Build the run folder ``out`` from foreign checkpoint files, one member per file, in order.

    All or nothing: the folder is assembled beside ``out`` and renamed into place only when every
    file has been read and fits the model, so a refused file leaves no partial output. Everything
    that can be checked without reading the files (the folder, the settings, the seeds, a file
    given twice) is checked before anything is written. Hidden folders left by an import that was
    killed are removed (see :func:`remove_stale_staging`).
    """
    datasets.normalization(dataset)  # an unknown dataset name is an error before anything is read
    out = Path(out)
    _check_out(out)
    if not files:
        raise InputError("no checkpoint files given; pass one file per member")
    _check_distinct(files)
    settings = dict(settings or {})
    model_args = dict(model_args or {})
    model_input = zoo.resolve_input(model, _check_model(model, num_classes, model_args), **(model_input or {}))
    seeds = [seed_from_path(f) for f in files]
    recorded_seeds = _check_settings(settings, files, seeds)
    method = settings.pop("method", "imported")
    keep = settings.pop("keep", "imported")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{_STAGING}{_host()}-{os.getpid()}-",
                                    dir=out.parent))
    try:
        run_folder.create_run(staging, dataset=dataset, num_classes=num_classes, model=model,
                              model_args=model_args, model_input=model_input, method=method, seeds=recorded_seeds,
                              keep=keep, n_members=len(files), exist_ok=True, **settings)
        for index, file in enumerate(files):
            state = checkpoints.extract_state_dict(checkpoints.read_checkpoint(file), source=str(file))
            checkpoints.require_finite_weights(state, str(file))
            network = zoo.build(model, num_classes, model_input=model_input, **model_args)
            try:
                zoo.load_weights(network, state)
            except InputError as error:
                raise InputError(f"{file} does not fit --model {model}: {error}") from None
            run_folder.save_member(staging, index, network, source=str(Path(file).resolve()),
                                   seed=seeds[index] if seeds[index] is not None else
                                   (recorded_seeds[index] if index < len(recorded_seeds) else None))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder; choose a new folder for the run")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{parent} is a file, so the run folder {out} cannot be made inside it; "
                             "choose another place for the run")
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} already exists and is not empty; choose a new folder for the run")


def _check_distinct(files: Sequence[str | os.PathLike]) -> None:
    """Each member's file once: the same file twice (by any path, link or not) would make one
    member count as two, as duplicate seeds would in ``sharpdiv train``."""
    seen: dict[tuple[int, int], str] = {}
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise InputError(f"checkpoint {path} does not exist" if not path.exists() else
                             f"checkpoint {path} is not a file")
        status = path.stat()
        identity = (status.st_dev, status.st_ino)
        if identity in seen:
            raise InputError(f"{seen[identity]} and {path} are the same checkpoint file ({path.resolve()}); "
                             "give each member's file once")
        seen[identity] = str(path)


def _check_model(model: str, num_classes: int, model_args: Mapping):
    try:
        return zoo.build(model, num_classes, **model_args)
    except InputError:
        raise
    except (TypeError, ValueError) as error:  # an option of the right name with a wrong value
        raise InputError(f"--model {model} cannot be built with {dict(model_args)} ({error}); "
                         "check --width") from None


def _check_settings(settings: dict, files: Sequence, path_seeds: list[int | None]) -> list[int]:
    """Refuse ``--set`` keys the import owns and bad values of the ones it reads; return the seeds
    to record (``--set seeds``, else those in the files' paths when every file has one)."""
    for key in settings:
        if key in _FROM_OPTIONS:
            raise InputError(f"--set {key}=...: the import sets {key} from {_FROM_OPTIONS[key]}; use that option")
        if key in _BOOKKEEPING or not key:
            raise InputError(f"--set {key}=...: sharpdiv writes {key!r} in run.json itself; choose another name")
    keep = settings.get("keep", "imported")
    if keep not in _KEEP:
        raise InputError(f"--set keep={keep}: expected best (the members are best-on-validation weights), last "
                         "(the final epoch's) or imported (not known, the default)")
    if "seeds" not in settings:
        return list(path_seeds) if all(s is not None for s in path_seeds) else []
    seeds = settings.pop("seeds")
    seeds = list(seeds) if isinstance(seeds, tuple) else seeds
    text = ",".join(map(str, seeds)) if isinstance(seeds, list) else str(seeds)
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= _MAX_SEED
                                              for s in seeds):
        raise InputError(f"--set seeds={text}: seeds are whole numbers from 0 to 2^63-1, one per file")
    if len(seeds) != len(files):
        raise InputError(f"--set seeds={text} gives {len(seeds)} seeds for {len(files)} checkpoint files; "
                         "give one seed per file, in the order of the files")
    if len(set(seeds)) != len(seeds):
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        raise InputError(f"--set seeds={text} repeats seed {', '.join(map(str, repeated))}; "
                         "every member has its own seed")
    for file, given, found in zip(files, seeds, path_seeds):
        if found is not None and found != given:
            raise InputError(f"--set seeds={text} gives {file} seed {given} but its path says seed {found}; "
                             "drop --set seeds or make them agree")
    return seeds


def remove_stale_staging(parent: Path) -> None:
    """Remove the hidden folders of imports into ``parent`` that were killed before they finished.

    Only folders named as an import names them are touched, and only when their import is surely
    over: it ran on this machine and its process no longer exists, or the folder has not changed
    for a day (an import on another machine sharing the folder; a live import changes its folder
    with every member it writes, so it is never a day old). A pid reused by another process keeps
    the folder until the day has passed: removing too late is harmless, too early is not.
    """
    now = time.time()
    host = _host()
    for folder in parent.glob(f".*{_STAGING}*"):
        match = _STAGING_NAME.search(folder.name)
        if match is None or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            old = now - folder.stat().st_mtime > _STALE_AFTER_SECONDS
        except FileNotFoundError:  # removed meanwhile by another import
            continue
        if old or (match["host"] == host and not _running(int(match["pid"]))):
            shutil.rmtree(folder, ignore_errors=True)


def _host() -> str:
    """This machine's name as it can appear in a folder name."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; or not a pid we can ask about
        return True
    return True
