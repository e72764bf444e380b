"""Reading the checkpoints people already have, without running anything they carry.

Every ``.pt``/``.pth``/``.pth.tar`` file is opened with ``torch.load(weights_only=True)``: the
restricted unpickler builds tensors and plain containers only, so a file whose pickle carries code
is refused before any of it runs. Understood layouts: a plain state dict; a dict holding
``'state_dict'`` (preferred, SharpBalance's ``seed_<s>/model_best.pth.tar``), ``'model'`` (when
it is a state dict) or ``'last'`` (the ICML sharpness code); DataParallel's ``module.`` prefix;
and ``.safetensors`` files.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import safetensors.torch
import torch

from landscape.errors import InputError

_CONTAINER_KEYS = ("state_dict", "model", "last")


def _is_state_dict(value) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw object stored in a checkpoint file, loaded safely (tensors and containers only)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise InputError(f"cannot read {path} as a safetensors file ({error})") from None
    if not _looks_like_torch_save(path):
        raise InputError(f"{path} is not a checkpoint: expected a file written by torch.save "
                         "(.pt, .pth, .pth.tar) or a .safetensors file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"refused {path}: its pickle holds objects other than tensors and plain containers "
            f"({first_line}); sharpdiv never runs code from a checkpoint. If you trust the file, "
            "re-save just the weights: torch.save(model.state_dict(), 'weights.pt')") from None
    except Exception as error:  # noqa: BLE001 - any other failure means "not a checkpoint we can read"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"cannot read {path} as a checkpoint ({reason}); expected a file written by "
                         "torch.save (.pt, .pth, .pth.tar) or a .safetensors file") from None


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive (current format) or a pickle (the legacy format, protocol 2+)."""
    with open(path, "rb") as stream:
        head = stream.read(4)
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


def extract_state_dict(checkpoint, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model's state dict inside a loaded checkpoint, with any ``module.`` prefix removed."""
    if _is_state_dict(checkpoint):
        state = dict(checkpoint)
    else:
        state = None
        if isinstance(checkpoint, Mapping):
            for key in _CONTAINER_KEYS:
                if _is_state_dict(checkpoint.get(key)):
                    state = dict(checkpoint[key])
                    break
        if state is None:
            found = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise InputError(f"{source}: no model weights found (looked for a state dict, or one under "
                             f"{', '.join(repr(k) for k in _CONTAINER_KEYS)}; found {found})")
    if all(name.startswith("module.") for name in state):
        state = {name[len("module."):]: tensor for name, tensor in state.items()}
    return state


def require_finite_weights(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or ±inf: every number measured from them would be meaningless."""
    for name, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = tensor[~finite]
                kinds = " and ".join(kind for kind, present in (("NaN", bad.isnan().any()), ("inf", bad.isinf().any()))
                                     if bool(present))
                raise InputError(f"{source}: tensor {name!r} holds {kinds} ({bad.numel()} of {tensor.numel()} "
                                 "entries); refusing non-finite weights (the training diverged or the file is "
                                 "damaged): use a checkpoint from before the divergence")


def seed_from_path(path: str | os.PathLike) -> int | None:
    """SharpBalance stores member s as ``seed_<s>/model_best.pth.tar``: recover s."""
    for part in reversed(Path(path).parts[:-1]):
        if match := re.fullmatch(r"seed_?(\d+)", part):
            return int(match.group(1))
    return None


def import_checkpoints(out: str | os.PathLike, files: Sequence[str | os.PathLike], *, model: str,
                       num_classes: int, dataset: str, model_args: Mapping | None = None,
                       settings: Mapping | None = None) -> Path:
    """Build the run folder ``out`` from foreign checkpoint files, one member per file, in order.

    All or nothing: the folder is assembled beside ``out`` and renamed into place only when every
    file has been read and fits the model, so a refused file leaves no partial output.
    """
    from ensembles import data, models, runs

    data.normalization(dataset)  # an unknown dataset name is an error before anything is read
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} already exists and is not empty; choose a new folder for the run")
    if not files:
        raise InputError("no checkpoint files given; pass one file per member")
    settings = dict(settings or {})
    model_args = dict(model_args or {})
    seeds = [seed_from_path(f) for f in files]
    recorded_seeds = settings.pop("seeds", None)
    if recorded_seeds is None:
        recorded_seeds = [s for s in seeds] if all(s is not None for s in seeds) else []
    method = settings.pop("method", "imported")
    keep = settings.pop("keep", "imported")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        runs.create_run(staging, dataset=dataset, num_classes=num_classes, model=model,
                        model_args=model_args, method=method, seeds=recorded_seeds, keep=keep,
                        n_members=len(files), exist_ok=True, **settings)
        for index, file in enumerate(files):
            state = extract_state_dict(read_checkpoint(file), source=str(file))
            require_finite_weights(state, str(file))
            network = models.build(model, num_classes, **model_args)
            try:
                models.load_weights(network, state)
            except InputError as error:
                raise InputError(f"{file} does not fit --model {model}: {error}") from None
            runs.save_member(staging, index, network, source=str(Path(file).resolve()),
                             seed=seeds[index] if seeds[index] is not None else
                             (recorded_seeds[index] if index < len(recorded_seeds) else None))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out
