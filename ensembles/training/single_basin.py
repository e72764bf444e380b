"""What a single-basin ensemble (Lion, Noci, Hofmann and Bachmann, "How good is a single basin?",
AISTATS 2024) keeps in its run folder: the spawn parent, the constraint's anchor and the teacher,
each recorded in run.json with digests and checked every time training reads it.

- **The parent** (``spawn_epoch``): member 0's complete training state after ``spawn_epoch`` epochs,
  in ``train/parent.pt``; run.json ``parent = {seed, epoch, digest, file}``, ``digest`` the SHA-256
  of its weights and buffers (:func:`tensors_digest`: the same for two runs with the same
  ``seeds[0]``, settings and epoch, so constructions can be checked to share a parent) and ``file``
  that of the whole file (a replaced or altered parent is refused, never used).
- **The anchor** (``connect_strength``): member 0's kept weights once it has finished; run.json
  ``anchor = {member: 0, digest}``, the digest of ``member-0.safetensors``.
- **The teacher** (``distill_from``): another run folder; run.json ``teacher = {path, members, data}``:
  its resolved path, the digests of its member files and the fingerprint of the training data. Its
  logits on the training split come from its logit cache (:mod:`ensembles.runs.logit_cache`, computed
  once per weights and data); a teacher that is missing, unfinished or changed since is an InputError.

The parent and the anchor live in the run folder itself, so one folder holds the whole construction
and nothing outside it can go stale; the cost is the parent's first epochs trained once per run.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

import torch

from ensembles.runs import logit_cache, run_folder
from ensembles.runs.files import RUN_FILE, atomic_path, file_digest
from landscape.errors import InputError

__all__ = ["PARENT_FILE", "tensors_digest", "parent_path", "save_parent", "read_parent", "record_anchor",
           "read_anchor", "teacher_record", "require_same_teacher", "teacher_logits"]

PARENT_FILE = "parent.pt"


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex, first 16 characters) of named tensors: names, dtypes, shapes and bytes, in name
    order, so equal weights give equal digests however they were saved."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# the parent of spawned members


def parent_path(run_path: str | os.PathLike) -> Path:
    return Path(run_path) / run_folder.TRAIN_DIR / PARENT_FILE


def _retrain(run_path: Path) -> str:
    return f"remove {run_path / run_folder.TRAIN_DIR} and the member files to train the run again"


def save_parent(run_path: str | os.PathLike, state: dict, settings) -> None:
    """Write member 0's training ``state`` at the spawn epoch as the parent and record it in run.json
    (nothing when run.json records one already: :func:`read_parent` checks that one)."""
    run_path = Path(run_path)
    if run_folder.read_config(run_path).get("parent") is not None:
        return
    if state["epoch"] != settings.spawn_epoch:
        raise InputError(f"{run_path}: member 0 is at epoch {state['epoch']} but the parent of the spawned members "
                         f"(epoch {settings.spawn_epoch}) was never recorded; the training state is inconsistent: "
                         f"{_retrain(run_path)}")
    file = parent_path(run_path)
    with atomic_path(file) as temporary:
        torch.save(state, temporary)
    # The file first, then its record: a kill in between leaves no record, and the parent is written again.
    run_folder.update_config(run_path, parent={"seed": int(state["seed"]), "epoch": int(state["epoch"]),
                                               "digest": tensors_digest(state["model"]), "file": file_digest(file)})


def read_parent(run_path: str | os.PathLike, settings) -> dict | None:
    """The parent's training state, checked against run.json; None when member 0 failed before the
    spawn epoch (no parent exists). A missing, replaced or altered parent is an InputError."""
    run_path = Path(run_path)
    config = run_folder.read_config(run_path)
    record, file = config.get("parent"), parent_path(run_path)
    if record is None:
        if config["members"][0].get("status") == "failed":
            return None
        raise InputError(f"{run_path}/{RUN_FILE} records no parent for the spawned members; the run folder was "
                         f"altered: {_retrain(run_path)}")
    if not file.is_file():
        raise InputError(f"{file}, the parent of the spawned members, is missing: {_retrain(run_path)}")
    if file_digest(file) != record.get("file"):
        raise InputError(f"{file} is not the parent {run_path}/{RUN_FILE} records (its digest differs): it was "
                         f"replaced or altered; {_retrain(run_path)}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    expected = (settings.seeds[0], settings.spawn_epoch, record.get("digest"))
    if (state["seed"], state["epoch"], tensors_digest(state["model"])) != expected:
        raise InputError(f"{file} does not hold member 0 (seed {settings.seeds[0]}) at epoch {settings.spawn_epoch} "
                         f"with the weights {run_path}/{RUN_FILE} records; {_retrain(run_path)}")
    return state


# ----------------------------------------------------------------------------------------------
# the anchor of the connectivity constraint


def record_anchor(run_path: str | os.PathLike) -> None:
    """Record member 0's weights file (just saved, finished) as the anchor; a different anchor
    recorded before is an InputError (member 0's training state changed since)."""
    run_path = Path(run_path)
    digest = file_digest(run_folder.member_path(run_path, 0))
    recorded = run_folder.read_config(run_path).get("anchor")
    if recorded is None:
        run_folder.update_config(run_path, anchor={"member": 0, "digest": digest})
    elif recorded.get("digest") != digest:
        raise InputError(f"member 0 of {run_path}, the anchor the other members were trained against, is not the "
                         f"one {RUN_FILE} records (its digest differs); {_retrain(run_path)}")


def read_anchor(run_path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The anchor's weights (member 0's file, checked against its recorded digest), or None when
    member 0 failed (the constrained members cannot train)."""
    run_path = Path(run_path)
    config = run_folder.read_config(run_path)
    recorded = config.get("anchor")
    if recorded is None:
        if config["members"][0].get("status") == "failed":
            return None
        raise InputError(f"{run_path}/{RUN_FILE} records no anchor for the connectivity constraint; the run folder "
                         f"was altered: {_retrain(run_path)}")
    file = run_folder.member_path(run_path, 0)
    if not file.is_file() or file_digest(file) != recorded.get("digest"):
        raise InputError(f"{file}, the anchor of the connectivity constraint, is missing or not the one "
                         f"{RUN_FILE} records; {_retrain(run_path)}")
    return run_folder.load_member_state(run_path, 0)


# ----------------------------------------------------------------------------------------------
# the teacher of distilled members


def _train_slice(settings) -> logit_cache.DataSlice:
    return logit_cache.DataSlice(logit_cache.dataset_label(settings.dataset), "train")


def teacher_record(teacher: str | os.PathLike, settings, num_classes: int, student: str = "") -> dict:
    """``{path, members, data}`` of the teacher run folder ``teacher`` as it is now, after checking
    that it can teach ``settings``: a finished run on the same dataset and classes, with as many
    members as the student when each member learns from its own (``distill_target = member``).
    ``student`` names the run in the messages."""
    folder = Path(teacher).expanduser()
    whose = f" (distill_from of {student})" if student else " (--distill-from)"
    if not (folder / RUN_FILE).is_file():
        state = "does not exist" if not folder.exists() else f"is not a run folder (no {RUN_FILE})"
        raise InputError(f"teacher run folder {teacher}{whose} {state}; train the teacher first or fix the path")
    config = run_folder.read_config(folder)
    ours, theirs = logit_cache.dataset_label(settings.dataset), logit_cache.dataset_label(config["dataset"])
    if (theirs, int(config["num_classes"])) != (ours, num_classes):
        raise InputError(f"teacher {teacher}{whose} was trained on {theirs} ({config['num_classes']} classes), not "
                         f"{ours} ({num_classes} classes); distil from a run on the same data")
    unfinished = [member["index"] for member in config["members"] if member.get("status") != "done"]
    if unfinished or not config["members"]:
        raise InputError(f"teacher {teacher}{whose} has unfinished members {unfinished}; finish its training "
                         f"(sharpdiv train --resume {teacher}) first")
    if settings.distill_target == "member" and len(config["members"]) != len(settings.seeds):
        raise InputError(f"teacher {teacher}{whose} has {len(config['members'])} members but the student "
                         f"{len(settings.seeds)}; with distill_target member each member learns from its own teacher "
                         "member: give as many seeds, or use --distill-target ensemble")
    members = []
    for member in config["members"]:
        file = run_folder.member_path(folder, member["index"])
        if not file.is_file():
            raise InputError(f"teacher {teacher}{whose}: member {member['index']} has no weights ({file.name} is "
                             "missing); retrain or re-import it")
        members.append(file_digest(file))
    data = _train_slice(settings).digest(settings.data_path)
    return {"path": str(folder.resolve()), "members": members, "data": data}


def require_same_teacher(run_path: str | os.PathLike, settings, num_classes: int) -> dict:
    """The teacher run.json records, after checking it is still the one ``run_path`` was trained
    from (same member weights, same training data); else an InputError naming it."""
    run_path = Path(run_path)
    recorded = run_folder.read_config(run_path).get("teacher")
    if not isinstance(recorded, dict) or not {"path", "members", "data"} <= set(recorded):
        raise InputError(f"{run_path}/{RUN_FILE} does not record the teacher it distils from; the run folder was "
                         f"altered: remove {run_path} to train it again")
    current = teacher_record(recorded["path"], settings, num_classes, student=str(run_path))
    changed = [index for index, (now, then) in enumerate(zip(current["members"], recorded["members"])) if now != then]
    if changed or len(current["members"]) != len(recorded["members"]):
        raise InputError(f"teacher {recorded['path']} changed since {run_path} was trained from it (members "
                         f"{changed or 'count'} differ); remove {run_path} to retrain it, or restore the teacher")
    if current["data"] != recorded["data"]:
        raise InputError(f"the training data of {settings.dataset} differs from the data {run_path} was distilled "
                         "on (its fingerprint changed); train it with the data it was trained on (--data-path)")
    return recorded


def teacher_logits(run_path: str | os.PathLike, settings, num_classes: int,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's member logits ``(M, N, C)`` on the whole un-augmented training split, and its
    labels ``(N,)``, from the teacher's logit cache (computed once per weights and data), after
    :func:`require_same_teacher`; the logits must come from exactly the recorded weights."""
    record = require_same_teacher(run_path, settings, num_classes)
    folder = Path(record["path"])
    config = run_folder.read_config(folder)
    loaded: dict[int, str] = {}

    def load_members(indices):
        run = run_folder.load_run(folder, device)
        loaded.update(run.weights)
        return [run.members[run.member_indices.index(index)] for index in indices]

    members = list(range(len(record["members"])))
    logits = logit_cache.slice_logits(folder, _train_slice(settings), members=members, n_classes=num_classes,
                                      load_members=load_members, root=settings.data_path, device=device,
                                      member_weights=loaded.__getitem__, normalize=run_folder.data_normalized(config))
    if [logits.weights[index] for index in members] != record["members"] or logits.data != record["data"]:
        raise InputError(f"teacher {folder} changed while its logits were read; run the training again")
    return logits.member_logits, logits.labels
