"""Reading a checkpoint file into a state dict, without running anything it carries.

Every ``.pt``/``.pth``/``.pth.tar`` file is opened with ``torch.load(weights_only=True)``: the
restricted unpickler builds tensors and plain containers only, so a file whose pickle carries code
is refused before any of it runs. Understood layouts: a plain state dict; a dict holding
``'state_dict'`` (preferred, SharpBalance's ``seed_<s>/model_best.pth.tar``), ``'model'`` (when
it is a state dict) or ``'last'`` (the ICML sharpness code); DataParallel's ``module.`` prefix;
and ``.safetensors`` files. Weights holding NaN or ±inf are refused (:func:`require_finite_weights`).

A leaf: it imports nothing from the rest of ``ensembles``, so the zoo (strict loading), the run
folder (loading members) and the import of foreign checkpoints
(:mod:`ensembles.runs.checkpoint_import`) all read weights the same way.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import safetensors.torch
import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from landscape.errors import InputError

_CONTAINER_KEYS = ("state_dict", "model", "last")
_DATA_PARALLEL = "module."  # nn.DataParallel and DistributedDataParallel prefix every name with it


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
    return without_data_parallel_prefix(state)


def without_data_parallel_prefix(state: Mapping[str, torch.Tensor], model_keys: Iterable[str] = ()
                                 ) -> dict[str, torch.Tensor]:
    """``state`` without the ``module.`` that ``nn.DataParallel`` puts before every name: removed
    only when every key has it and no key of the model (``model_keys``) does.

    >>> sorted(without_data_parallel_prefix({"module.fc.weight": torch.ones(1), "module.fc.bias": torch.ones(1)}))
    ['fc.bias', 'fc.weight']
    """
    state = dict(state)
    if state and all(name.startswith(_DATA_PARALLEL) for name in state) \
            and not any(name.startswith(_DATA_PARALLEL) for name in model_keys):
        consume_prefix_in_state_dict_if_present(state, _DATA_PARALLEL)
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
