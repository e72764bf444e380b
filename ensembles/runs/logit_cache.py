"""The logit cache: each member's logits on each dataset slice, computed once and kept in the run folder.

Every evaluation metric (accuracy, calibration, diversity, ensemble gains) is a function of the
member logits ``L`` ``(M, N, C)`` and the labels ``y`` ``(N,)`` of one slice (the convention of every
metric in :mod:`landscape`), so
the forward passes are done once and stored::

    <run>/logits/<dataset>/<slice>/member-<i>.safetensors   tensor "logits" (N, C), model dtype
    <run>/logits/<dataset>/<slice>/labels.safetensors       tensor "labels" (N,), int64

``<slice>`` is ``val``, ``test`` or ``<corruption>-<severity>`` (``fog-3``). Each member file
records in its metadata the digest of the member's weights file as it was read
(:func:`ensembles.runs.files.file_digest`) and the fingerprint of the slice's data
(:func:`ensembles.data.datasets.data_digest`, images and labels), so new weights or other data (another
``--data-path``, a ``-C`` folder regenerated with another seed) make the cached logits stale and
they are computed again (silently: that is the cache working). The labels file records the data's
fingerprint and a digest of the labels it holds, and each member file a digest of its logits
bound to those weights and data; labels of other data are read again from the data, and labels or
logits edited after they were written are read or computed again with a warning naming the file
(the digests catch edits and damage, not a forger who recomputes them: the cache is as
trustworthy as the folder it lies in). A member file written before logits digests existed is
computed once more, silently. A member file
without a weights digest (written by another tool or an early version) cannot be matched to any
weights, so it is computed again with a warning naming it. A file that is unreadable,
has the wrong shape or holds NaN or Inf is an :class:`InputError` naming the file (delete it and
re-run). Files are written whole (temporary file + rename), so an interrupted evaluation leaves
complete slices behind and resumes from them, and two processes writing the same file leave one
complete copy.

Forward passes run in eval mode under ``torch.inference_mode``; each batch is read once and every
member that needs it sees it once. On a GPU, members run in ``channels_last`` memory format under
float16 autocast (logits stored in float32); that path is written for GPUs but was only run on
CPUs here.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import safetensors
import safetensors.torch
import torch

from ensembles.data import datasets
from ensembles.runs import run_folder
from ensembles.runs.files import atomic_path, file_digest
from landscape._checks import model_dtype_device
from landscape.errors import InputError

__all__ = [
    "DataSlice",
    "SliceLogits",
    "cache_folder",
    "compute_member_logits",
    "dataset_label",
    "labels_path",
    "member_logits_path",
    "read_cached_labels",
    "read_cached_logits",
    "slice_logits",
]

CACHE_DIR = "logits"
CACHE_FORMAT = "1"


def dataset_label(name: str) -> str:
    """The one name of a dataset in results rows and cache folders: ``cifar10`` for ``CIFAR-10``,
    ``cifar10-c`` or ``cifar_10``; ``folder:<path>`` for a user's folder (as ``ImageDataset.name``)."""
    kind, path, _ = datasets._parse_name(name)
    return f"folder:{path}" if kind == "folder" else kind


@dataclass(frozen=True)
class DataSlice:
    """One slice of a dataset: a clean split (``val``, ``test``), or one corruption at one severity
    of the ``-C`` version (its split is ``test``, as in Hendrycks & Dietterich 2019)."""

    dataset: str
    split: str
    corruption: str | None = None
    severity: int | None = None

    @property
    def name(self) -> str:
        """``val``, ``test`` or ``<corruption>-<severity>``: the slice's cache folder."""
        return f"{self.corruption}-{self.severity}" if self.corruption else self.split

    @property
    def corrupted(self) -> bool:
        return self.corruption is not None

    def columns(self) -> dict:
        """The slice columns of a results row (docs/results-table.md)."""
        return {"dataset": self.dataset, "split": self.split, "corruption": self.corruption,
                "severity": self.severity}

    def digest(self, root=None) -> str:
        """The fingerprint of the slice's images and labels (:func:`ensembles.data.datasets.data_digest`)."""
        return datasets.data_digest(self.dataset, root, self.split, self.corruption, self.severity)

    def load(self, root=None, normalize: bool = True) -> datasets.ImageDataset:
        """The slice's images (normalized with the dataset's statistics unless ``normalize=False``)."""
        if self.corrupted:
            return datasets.load_corrupted(self.dataset, root, self.corruption, self.severity, normalize=normalize)
        return datasets.load_dataset(self.dataset, root, self.split, normalize=normalize)


def _folder_name(dataset: str) -> str:
    """A file-system-safe folder for a dataset label; a user's folder gets its base name plus a
    digest of its full path, so two folders of the same name do not share a cache."""
    if dataset.startswith("folder:"):
        path = Path(dataset[len("folder:"):]).expanduser().resolve()
        return f"folder-{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    return dataset


def cache_folder(run_path: str | os.PathLike, data_slice: DataSlice) -> Path:
    return Path(run_path) / CACHE_DIR / _folder_name(data_slice.dataset) / data_slice.name


def member_logits_path(run_path: str | os.PathLike, data_slice: DataSlice, member: int) -> Path:
    return cache_folder(run_path, data_slice) / f"member-{member}.safetensors"


def labels_path(run_path: str | os.PathLike, data_slice: DataSlice) -> Path:
    return cache_folder(run_path, data_slice) / "labels.safetensors"


# ----------------------------------------------------------------------------------------------
# reading and writing cache files


def _fix(file: Path) -> str:
    return f"delete {file} and run `sharpdiv evaluate` again to recompute it"


def _cached(file: Path) -> bool:
    """Whether the cache file is there; anything else in its place (a folder where the file belongs,
    a file where a cache folder belongs) is an InputError naming it, before any work is done."""
    if file.is_file():
        return True
    if file.exists():
        kind = "a folder" if file.is_dir() else "not a regular file"
        raise InputError(f"{file} is {kind} where the logit cache keeps a file; move or delete it and run again")
    for folder in file.parents:
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{folder} is a file where the logit cache keeps a folder; move or delete it and run again")
    return False


def _read(file: Path, tensor_name: str) -> tuple[torch.Tensor, dict]:
    try:
        with safetensors.safe_open(str(file), framework="pt") as stored:
            metadata = stored.metadata() or {}
            if tensor_name not in stored.keys():
                raise InputError(f"cache file {file} holds no {tensor_name!r} tensor; {_fix(file)}")
            return stored.get_tensor(tensor_name), metadata
    except InputError:
        raise
    except Exception as error:  # safetensors raises its own error types for truncated or foreign files
        raise InputError(f"cannot read cache file {file} ({error}); {_fix(file)}") from None


def _write(file: Path, tensor_name: str, tensor: torch.Tensor, metadata: dict[str, str]) -> None:
    with atomic_path(file) as temporary:
        safetensors.torch.save_file({tensor_name: tensor.detach().to("cpu").contiguous().clone()},
                                    str(temporary), metadata={"format": CACHE_FORMAT, **metadata})


def _labels_digest(labels: torch.Tensor, data: str) -> str:
    """Digest of the labels tensor bound to the data's fingerprint: an edited labels file no longer matches."""
    return hashlib.sha256(data.encode() + labels.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def _logits_digest(logits: torch.Tensor, weights: str, data: str) -> str:
    """Digest of a logits tensor (dtype, shape, bytes) bound to the weights and data it came from:
    logits edited after they were written no longer match it."""
    tensor = logits.detach().to("cpu").contiguous()
    header = f"{tensor.dtype}|{tuple(tensor.shape)}|{weights}|{data}|".encode()
    return hashlib.sha256(header + tensor.flatten().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def read_cached_labels(run_path: str | os.PathLike, data_slice: DataSlice,
                       data: str | None = None) -> torch.Tensor | None:
    """The slice's cached labels ``(N,)`` (int64), or None when they are not cached yet, or (when
    ``data``, the slice's current fingerprint, is given) were cached from other data or were edited
    since (a warning then names the file)."""
    file = labels_path(run_path, data_slice)
    if not _cached(file):
        return None
    labels, metadata = _read(file, "labels")
    if labels.dim() != 1 or labels.numel() == 0 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise InputError(f"cache file {file} must hold integer labels of shape (N,), got {labels.dtype} "
                         f"{tuple(labels.shape)}; {_fix(file)}")
    labels = labels.long()
    if data is None:
        return labels
    if metadata.get("data") != data:
        return None  # cached from other data (or before fingerprints): read them again
    if metadata.get("labels") != _labels_digest(labels, data):
        warnings.warn(f"cache file {file} holds labels that differ from those it recorded for "
                      f"{data_slice.dataset} {data_slice.name} (edited after it was written); reading them "
                      "again from the data", stacklevel=2)
        return None
    return labels


def read_cached_logits(run_path: str | os.PathLike, data_slice: DataSlice, member: int, n_samples: int,
                       n_classes: int, data: str | None = None) -> torch.Tensor | None:
    """Member ``member``'s cached logits ``(n_samples, n_classes)``, or None when they are missing or
    stale (written for other weights or, when ``data`` is given, for data of another fingerprint;
    or of unknown weights: a warning then says so). A damaged file is an :class:`InputError` naming it."""
    file = member_logits_path(run_path, data_slice, member)
    if not _cached(file):
        return None
    logits, metadata = _read(file, "logits")
    if "weights" not in metadata:
        warnings.warn(f"cache file {file} does not record which weights it was computed from (no 'weights' "
                      f"digest in its metadata); recomputing member {member}'s logits on {data_slice.dataset} "
                      f"{data_slice.name}", stacklevel=2)
        return None
    weights = run_folder.member_path(run_path, member)
    current = file_digest(weights) if weights.is_file() else None
    if metadata.get("weights") != current:
        return None  # new weights: recompute, never an error
    if data is not None and metadata.get("data") != data:
        return None  # other data (or written before data fingerprints): recompute
    if logits.shape != (n_samples, n_classes):
        raise InputError(f"cache file {file} holds logits of shape {tuple(logits.shape)} but slice "
                         f"{data_slice.name} has {n_samples} samples and the run {n_classes} classes; {_fix(file)}")
    if not logits.is_floating_point():
        raise InputError(f"cache file {file} holds {logits.dtype} logits, not floating point; {_fix(file)}")
    if not torch.isfinite(logits).all():
        raise InputError(f"cache file {file} holds NaN or Inf logits; {_fix(file)} (if they come back, "
                         f"member {member}'s weights are broken: check or retrain it)")
    if "logits" not in metadata:
        return None  # written before logits digests: computed once more, with one
    if metadata["logits"] != _logits_digest(logits, metadata["weights"], metadata.get("data", "")):
        warnings.warn(f"cache file {file} holds logits that differ from those it recorded for member {member} on "
                      f"{data_slice.dataset} {data_slice.name} (edited after it was written); recomputing them",
                      stacklevel=2)
        return None
    return logits


# ----------------------------------------------------------------------------------------------
# forward passes


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def compute_member_logits(members: Sequence[torch.nn.Module], dataset: datasets.ImageDataset,
                          batch_size: int = 512, device: torch.device | str | None = None) -> torch.Tensor:
    """``L[i, n] = f_i(x_n)``, shape ``(M, N, C)``, on the CPU in the members' dtype (float32 under
    autocast): each batch is gathered once and passed once through every member, in eval mode under
    ``torch.inference_mode``."""
    dtype, own_device = model_dtype_device(members[0])
    device = torch.device(device) if device is not None else own_device
    outputs: list[list[torch.Tensor]] = [[] for _ in members]
    on_gpu = device.type == "cuda"
    if on_gpu:
        for member in members:
            member.to(memory_format=torch.channels_last)
    for member in members:
        member.eval()
    with torch.inference_mode(), _autocast(device):
        for inputs, _ in datasets.batches(dataset, batch_size, device=device):
            inputs = inputs.to(dtype)
            if on_gpu:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            for member, collected in zip(members, outputs):
                logits = member(inputs)
                collected.append((logits.float() if on_gpu else logits).to("cpu"))
    # Outside inference mode, so the result is an ordinary tensor.
    return torch.stack([torch.cat(collected) for collected in outputs]).clone()


@dataclass(frozen=True)
class SliceLogits:
    """The member logits ``(M, N, C)`` and labels ``(N,)`` of one slice, and which members'
    logits were computed now (the others came from the cache)."""

    data_slice: DataSlice
    member_logits: torch.Tensor
    labels: torch.Tensor
    members: tuple[int, ...]
    computed: tuple[int, ...]
    #: the fingerprint of the slice's data (:meth:`DataSlice.digest`)
    data: str | None = None
    #: member index -> digest of the weights file its logits came from
    weights: dict = field(default_factory=dict)


def _load_checked(data_slice: DataSlice, root, n_classes: int, normalize: bool = True) -> datasets.ImageDataset:
    dataset = data_slice.load(root, normalize=normalize)
    if dataset.num_classes != n_classes:
        raise InputError(f"{data_slice.dataset} has {dataset.num_classes} classes but the run's members have "
                         f"{n_classes}; evaluate on the dataset the run was trained for (--data)")
    return dataset


def slice_logits(run_path: str | os.PathLike, data_slice: DataSlice, *, members: Sequence[int], n_classes: int,
                 load_members: Callable[[Sequence[int]], Sequence[torch.nn.Module]], root=None,
                 batch_size: int = 512, device: torch.device | str = "cpu",
                 member_weights: Callable[[int], str] | None = None, normalize: bool = True) -> SliceLogits:
    """The slice's member logits from the cache, computing (and caching) only what is missing.

    ``members`` are the run's member indices; ``load_members(indices)`` returns those members as
    modules on ``device`` (called only when some logits must be computed), and
    ``member_weights(index)`` the digest of the member's weights file as ``load_members`` read it
    (default: the file's digest now). Cached logits count only for the current weights and the
    data's current fingerprint (:meth:`DataSlice.digest`). The data is loaded only when labels or
    logits are missing; then its labels must equal the cached ones. ``normalize=False`` feeds
    ``[0, 1]`` pixels to members that normalise their inputs themselves.
    """
    run_path = Path(run_path)
    data = data_slice.digest(root)
    labels = read_cached_labels(run_path, data_slice, data)
    dataset = None
    new_labels = labels is None
    if new_labels:
        dataset = _load_checked(data_slice, root, n_classes, normalize)
        labels = dataset.targets.clone()
    elif int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        file = labels_path(run_path, data_slice)
        raise InputError(f"cache file {file} holds labels {int(labels.min())}..{int(labels.max())} but the run "
                         f"has {n_classes} classes; {_fix(file)}")
    cached, weights = {}, {}
    for member in members:
        logits = read_cached_logits(run_path, data_slice, member, len(labels), n_classes, data)
        if logits is not None:
            cached[member] = logits
            weights[member] = file_digest(run_folder.member_path(run_path, member))
    missing = [member for member in members if member not in cached]
    computed = torch.empty(0)
    if missing:
        if dataset is None:
            dataset = _load_checked(data_slice, root, n_classes, normalize)
            if not torch.equal(labels, dataset.targets):
                raise InputError(f"the cached labels {labels_path(run_path, data_slice)} differ from the labels "
                                 f"of {data_slice.dataset} {data_slice.name} on disk: the cache was made from other "
                                 f"data; delete {cache_folder(run_path, data_slice)} and run `sharpdiv evaluate` again")
        computed = compute_member_logits(load_members(missing), dataset, batch_size, device)
        if computed.shape[-1] != n_classes:
            raise InputError(f"members {missing} of {run_path} output {computed.shape[-1]} classes but "
                             f"run.json says {n_classes}; fix num_classes in run.json or re-import the members")
    # Written only now, once the members were built and ran: a model that cannot be built leaves nothing.
    if new_labels:
        _write(labels_path(run_path, data_slice), "labels", labels,
               {"dataset": data_slice.dataset, "slice": data_slice.name, "data": data,
                "labels": _labels_digest(labels, data)})
    for member, logits in zip(missing, computed):
        if not torch.isfinite(logits).all():
            raise InputError(f"member {member} of {run_path} gives NaN or Inf logits on {data_slice.dataset} "
                             f"{data_slice.name}; its weights are broken: retrain or re-import it")
        cached[member] = logits
        weights[member] = (member_weights(member) if member_weights is not None
                           else file_digest(run_folder.member_path(run_path, member)))
        _write(member_logits_path(run_path, data_slice, member), "logits", logits,
               {"weights": weights[member], "member": str(member), "data": data,
                "dataset": data_slice.dataset, "slice": data_slice.name,
                "logits": _logits_digest(logits, weights[member], data)})
    dtype = functools.reduce(torch.promote_types, (cached[member].dtype for member in members))
    member_logits = torch.stack([cached[member].to(dtype) for member in members])
    return SliceLogits(data_slice, member_logits, labels, tuple(members), tuple(missing), data, weights)
