"""Models from outside the zoo, by name: ``torchvision:<builder>``, ``timm:<name>`` and a user's
own ``package.module:callable``.

Every route builds a freshly initialized network and never downloads weights: torchvision
builders get ``weights=None``, timm ``pretrained=False``; pretrained weights come in through
``sharpdiv import`` of a file the user has. ``num_classes`` is passed as each library spells
it (both libraries and user factories take the keyword ``num_classes``).

A run folder is data that people exchange, and reading one must never run code it names: a
``module.path:callable`` model imports and calls Python code, so it is built only when the user
trusts it for that command (:mod:`ensembles.models.trust`). torchvision and timm names must be entries of the library's own
registry of classification models (``torchvision.models.list_models``, ``timm.is_model``), never an
attribute path, and their arguments must be parameters of the network class the builder returns
(:mod:`ensembles.models.arguments`): builder-level keys (timm's ``checkpoint_path``,
``pretrained_cfg_overlay`` ...) and keys a ``**kwargs`` would swallow are refused.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from ensembles.models.arguments import check_arguments, keyword_parameters
from ensembles.models.trust import TRUST_VARIABLE, UntrustedModelCode, model_code_trusted
from landscape.errors import InputError

__all__ = ["build_external", "check_external", "default_input"]

ROUTES = ("torchvision", "timm")
#: What sharpdiv passes every builder itself; never a model argument.
_SET_BY_SHARPDIV = ("num_classes", "weights", "pretrained")


@dataclass(frozen=True)
class _Builder:
    """How to build one named model: ``call(num_classes=..., **options)``, the options it accepts."""

    call: Callable[..., nn.Module]
    parameters: Mapping[str, inspect.Parameter] | None


def check_external(name: str, options: Mapping, *, trust_model_code: bool | None = None) -> None:
    """An :class:`InputError` unless ``name`` resolves to a builder (trusted, for user code) that
    takes ``options``; builds nothing (user code is imported, once trusted)."""
    _checked_builder(name, options, trust_model_code)


def build_external(name: str, num_classes: int, options: Mapping, *,
                   trust_model_code: bool | None = None) -> nn.Module:
    """The network ``name`` (``route:target``) with ``num_classes`` outputs and builder options."""
    builder = _checked_builder(name, options, trust_model_code)
    try:
        model = builder.call(num_classes=num_classes, **options)
    except InputError:
        raise
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:  # the builder refused the options
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no --model-arg"
        raise InputError(f"model {name!r} cannot be built with num_classes={num_classes} and {shown} "
                         f"({reason}); check --model-arg") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module; "
                         "the callable must build and return the network")
    return model


def _checked_builder(name: str, options: Mapping, trust_model_code: bool | None) -> _Builder:
    route, _, target = name.partition(":")
    if not route or not target:
        raise InputError(f"model {name!r}: expected torchvision:<name>, timm:<name> or module.path:callable")
    for owned in _SET_BY_SHARPDIV:
        if owned in options:
            raise InputError(f"--model-arg {owned}=...: sharpdiv sets {owned} itself (num_classes from "
                             "--num-classes or the data, never pretrained weights: use sharpdiv import); drop it")
    if route == "torchvision":
        builder = _torchvision_builder(target)
    elif route == "timm":
        builder = _timm_builder(target)
    else:
        _require_trust(route, target, options, trust_model_code)
        builder = _user_builder(route, target)
    check_arguments(name, builder.parameters, options, set_by_sharpdiv=_SET_BY_SHARPDIV)
    return builder


# -- torchvision and timm: registry entries, arguments of the network class ------------------------


def _torchvision_builder(target: str) -> _Builder:
    import torchvision.models

    # Classification models only (the top-level module): detection and segmentation builders take
    # num_classes in another sense and fetch backbone weights on their own.
    names = torchvision.models.list_models(module=torchvision.models)
    if target not in names:
        raise InputError(f"unknown torchvision model {target!r}{_close(target, names)}; "
                         "see torchvision.models.list_models(module=torchvision.models)")
    builder = torchvision.models.get_model_builder(target)
    own = {key: parameter for key, parameter in (keyword_parameters(builder, keyword_only=True) or {}).items()
           if key not in ("weights", "progress")}
    return _Builder(lambda **kwargs: builder(weights=None, **kwargs),
                    {**_class_parameters("torchvision", target), **own})


def _timm():
    try:
        import timm
    except ImportError:
        raise InputError("timm models need the timm package: pip install 'sharpdiv[timm]'") from None
    return timm


def _timm_builder(target: str) -> _Builder:
    timm = _timm()
    if not timm.is_model(target):
        raise InputError(f"unknown timm model {target!r}{_close(target, timm.list_models())}; "
                         "see timm.list_models()")
    return _Builder(lambda **kwargs: timm.create_model(target, pretrained=False, **kwargs),
                    _class_parameters("timm", target))


@functools.lru_cache(maxsize=None)
def _class_parameters(route: str, target: str) -> dict[str, inspect.Parameter]:
    """The named parameters of the network class a library builder returns. Both libraries'
    builders pass ``**kwargs`` on to that class, so its signature says which arguments mean
    something; the class is found by building the default network on the meta device (no
    memory, no weights, the caller's random state untouched)."""
    import torch

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        if route == "torchvision":
            import torchvision.models

            network = torchvision.models.get_model(target, weights=None)
        else:
            network = _timm().create_model(target, pretrained=False)
    return keyword_parameters(type(network)) or {}


# -- a user's own code: only when trusted ---------------------------------------------------------


def _require_trust(module_name: str, attribute: str, options: Mapping, trust: bool | None) -> None:
    if model_code_trusted(trust):
        return
    arguments = ", ".join(["num_classes=...", *(f"{k}={v!r}" for k, v in options.items())])
    raise UntrustedModelCode(
        f"model {module_name}:{attribute} is Python code: building it imports the module {module_name!r} (from the "
        f"current folder, PYTHONPATH or the installed packages) and calls {attribute}({arguments}). sharpdiv runs code a model names only "
        f"when you trust it: pass --trust-model-code (or set {TRUST_VARIABLE}=1) if you trust that code")


def _user_builder(module_name: str, attribute: str) -> _Builder:
    """``module_name.attribute`` imported as ``uvicorn app:factory`` does: the current folder first."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InputError(f"cannot import {module_name!r} for model {module_name}:{attribute} ({error}); run from "
                         "the folder holding it or add that folder to PYTHONPATH") from None
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise InputError(f"module {module_name!r} has no {attribute!r}; model {module_name}:{attribute} "
                             "names a factory function or an nn.Module class in it")
        factory = getattr(factory, part)
    if not callable(factory):
        raise InputError(f"{module_name}:{attribute} is a {type(factory).__name__}, not a factory or class")
    parameters = keyword_parameters(factory)
    if parameters is None or "num_classes" not in parameters:
        shown = "no signature" if parameters is None else f"the signature {inspect.signature(factory)}"
        raise InputError(f"{module_name}:{attribute} must accept the keyword argument num_classes (the number of "
                         f"outputs) by name; it has {shown}")
    return _Builder(factory, parameters)


def _close(target: str, names) -> str:
    near = difflib.get_close_matches(target, list(names), n=3)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def default_input(name: str, model: nn.Module) -> dict | None:
    """The input a model expects as its library records it (timm's ``pretrained_cfg`` through
    ``resolve_data_config``): ``{"size": [H, W], "mean": [...], "std": [...]}``, or None."""
    if not name.startswith("timm:"):
        return None
    from timm.data import resolve_data_config

    config = resolve_data_config(model=model)
    return {"size": list(config["input_size"][1:]), "mean": [float(v) for v in config["mean"]],
            "std": [float(v) for v in config["std"]]}
