"""Models from outside the zoo, by name: ``torchvision:<builder>``, ``timm:<name>`` and a user's
own ``package.module:callable``.

Every route builds a freshly initialized network and never downloads weights: torchvision
builders get ``weights=None``, timm ``pretrained=False``; pretrained weights come in through
``sharpdiv import`` of a file the user has. ``num_classes`` is passed as each library spells
it (both libraries and user factories take the keyword ``num_classes``).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Mapping

from torch import nn

from landscape.errors import InputError

ROUTES = ("torchvision", "timm")


def build_external(name: str, num_classes: int, options: Mapping) -> nn.Module:
    """The network ``name`` (``route:target``) with ``num_classes`` outputs and builder options."""
    route, _, target = name.partition(":")
    if not route or not target:
        raise InputError(f"model {name!r}: expected torchvision:<name>, timm:<name> or module.path:callable")
    options = dict(options)
    for owned in ("num_classes", "weights", "pretrained"):
        if owned in options:
            raise InputError(f"--model-arg {owned}=...: sharpdiv sets {owned} itself (num_classes from "
                             "--num-classes or the data, never pretrained weights: use sharpdiv import); drop it")
    if route == "torchvision":
        builder, call = _torchvision_builder(target), {"weights": None}
    elif route == "timm":
        builder, call = _timm_builder(target), {"pretrained": False}
    else:
        builder, call = _user_callable(route, target), {}
    try:
        model = builder(num_classes=num_classes, **call, **options)
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


def _torchvision_builder(target: str):
    import torchvision.models

    names = torchvision.models.list_models()
    if target not in names:
        raise InputError(f"unknown torchvision model {target!r}{_close(target, names)}; "
                         "see torchvision.models.list_models()")
    return lambda **kwargs: torchvision.models.get_model(target, **kwargs)


def _timm():
    try:
        import timm
    except ImportError:
        raise InputError("timm models need the timm package: pip install 'sharpdiv[timm]'") from None
    return timm


def _timm_builder(target: str):
    timm = _timm()
    if not timm.is_model(target):
        raise InputError(f"unknown timm model {target!r}{_close(target, timm.list_models())}; "
                         "see timm.list_models()")
    return lambda **kwargs: timm.create_model(target, **kwargs)


def _user_callable(module_name: str, attribute: str):
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
    _require_num_classes(factory, f"{module_name}:{attribute}")
    return factory


def _require_num_classes(factory, name: str) -> None:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): let the call decide
        return
    if not any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in parameters):
        raise InputError(f"{name} must accept the keyword argument num_classes (the number of outputs); "
                         f"its signature is {inspect.signature(factory)}")


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
