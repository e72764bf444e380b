"""The small checks and context managers every measurement in ``landscape/`` shares.

One home for each: the eval-mode context manager, the parameter-selection rule (``params`` and
``exclude`` globs), the model's dtype and device, the integer and float checks, the spelling of
norms, and the deprecation shims that keep old keyword names and argument orders working for one
release. Every check raises :class:`landscape.errors.InputError` with one line naming the problem
and the fix, so the CLI can print it and exit with status 2; every public function checks the
network it is given with :func:`require_model` and reads its batches with :func:`batch_pair`.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> list(select_parameters(model, params="*.weight", exclude="2.*"))
    ['0.weight']
    >>> positive_int("n_probes", 10), norm_name("Linf")
    (10, 'linf')
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
import math
import numbers
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from landscape.errors import InputError

__all__ = [
    "NORMS",
    "Patterns",
    "batch_pair",
    "check_loss_and_batches_order",
    "differentiable_parameters",
    "evaluation_mode",
    "finite_float",
    "frozen_parameters",
    "legacy_positionals",
    "model_dtype_device",
    "norm_name",
    "patterns",
    "positive_int",
    "require_model",
    "select_parameters",
]

Patterns = str | Sequence[str] | None
NORMS = ("l2", "linf")


# -- model mode ------------------------------------------------------------------------------------

@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every submodule in eval mode (batch norm on its running statistics, dropout off) inside the
    block; each submodule's own ``training`` flag comes back afterwards, even on error."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """No parameter requires grad inside the block (an attack differentiates in the inputs only);
    each parameter's own ``requires_grad`` comes back afterwards."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, required in flags:
            parameter.requires_grad_(required)


# -- what a measurement is given --------------------------------------------------------------------

def require_model(model, name: str = "model") -> nn.Module:
    """``model`` if it is a ``torch.nn.Module``, else an :class:`InputError` naming the argument
    ``name``: every public function that takes a network checks it here first."""
    if not isinstance(model, nn.Module):
        raise InputError(f"{name} must be a torch.nn.Module (the network itself), got {_described(model)}; "
                         "build the model and load its weights first.")
    return model


def batch_pair(batch, name: str = "batches", index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(inputs, targets)`` tensors of one batch (NumPy arrays become tensors; items after
    the second, such as sample indices, are ignored), else an :class:`InputError` naming the
    argument ``name`` and the batch: every function that reads batches reads them here."""
    which = f"batch {index}" if index is not None else "a batch"
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise InputError(f"{name} must yield (inputs, targets) pairs of tensors, but {which} is "
                         f"{_described(batch)}; pass a DataLoader yielding (x, y) or a list of such tuples.")
    pair = []
    for role, item in zip(("inputs", "targets"), batch):
        if isinstance(item, np.ndarray):
            item = torch.as_tensor(item)
        if not isinstance(item, torch.Tensor):
            raise InputError(f"{name} must yield (inputs, targets) pairs of tensors, but the {role} of {which} "
                             f"are {_described(item)}.")
        pair.append(item)
    return pair[0], pair[1]


def _described(value) -> str:
    """``a str ('resnet')``, ``a dict with keys 'x', 'y'``: what was passed, briefly."""
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    if isinstance(value, dict):
        return f"{article} {kind} with keys {', '.join(map(repr, list(value)[:4]))}"
    if isinstance(value, (str, int, float)) or value is None:
        return f"{article} {kind} ({value!r})" if value is not None else "None"
    return f"{article} {kind}"


# -- which parameters ------------------------------------------------------------------------------

def patterns(value: Patterns, what: str = "params") -> tuple[str, ...] | None:
    """``value`` as a tuple of name patterns (``None`` stays ``None``; one string is one pattern)."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    value = tuple(value)
    if not all(isinstance(pattern, str) for pattern in value):
        raise InputError(f"{what} must be a parameter-name pattern or a list of them (strings), got {value!r}.")
    return value


def _matches(name: str, pattern: str) -> bool:
    """A shell glob on the whole name (``layer1.*``; an exact name matches itself) or, failing that,
    a regular expression matching the whole name (``.*bn\\d\\.weight``)."""
    if fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def select_parameters(model: nn.Module, params: Patterns = None, exclude: Patterns = None
                      ) -> dict[str, torch.Tensor]:
    """The trainable parameters to measure, by name, in the order of ``model.named_parameters()``:
    those matching a ``params`` pattern (every trainable parameter when ``None``) and no ``exclude``
    pattern. The same rule in every module of ``landscape/``. A pattern that matches no trainable
    parameter is an :class:`InputError` (almost always a typo); the result may be empty."""
    params, exclude = patterns(params, "params"), patterns(exclude, "exclude")
    trainable = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    for chosen, what in ((params, "params"), (exclude, "exclude")):
        for pattern in chosen or ():
            if not any(_matches(name, pattern) for name in trainable):
                shown = ", ".join(list(trainable)[:8]) + (", ..." if len(trainable) > 8 else "")
                raise InputError(f"unknown parameter: {what} pattern {pattern!r} matches no trainable parameter; "
                                 f"names look like: {shown or '(none: call requires_grad_(True))'}")
    return {name: parameter for name, parameter in trainable.items()
            if (params is None or any(_matches(name, p) for p in params))
            and not any(_matches(name, p) for p in exclude or ())}


def differentiable_parameters(model: nn.Module, params: Patterns = None, exclude: Patterns = None
                              ) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    """The names and tensors of the parameters to differentiate (:func:`select_parameters`), which
    must be at least one and share one floating dtype."""
    selected = select_parameters(model, params, exclude)
    if not selected:
        raise InputError("no parameter to differentiate: the model has none that requires grad, or params/exclude "
                         "select none (params is empty?); call requires_grad_(True) or widen params.")
    dtypes = {tensor.dtype for tensor in selected.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        raise InputError(f"the measured parameters must share one floating dtype, found {sorted(map(str, dtypes))}; "
                         "convert the model with model.double() or model.float().")
    return tuple(selected), tuple(selected.values())


# -- dtype and device ------------------------------------------------------------------------------

def model_dtype_device(model: nn.Module, *, purpose: str | None = None) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's first floating parameter (else its first floating buffer,
    else the default dtype on the CPU). With ``purpose`` (e.g. ``"to perturb"``) a model without a
    floating parameter is an :class:`InputError` instead."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    if purpose is not None:
        raise InputError(f"{type(model).__name__} has no floating-point parameters {purpose}; pass a trainable network.")
    for tensor in model.buffers():
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


# -- numbers ---------------------------------------------------------------------------------------

def positive_int(name: str, value, *, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as an ``int`` if it is an integer ``>= minimum`` (``None`` too when ``optional``),
    else an :class:`InputError` naming ``name``. An integer is a Python or NumPy integer: booleans,
    and floats even when whole (``3.0``), are refused. The one integer check of the project
    (``landscape/``, ``ensembles/``, ``reports/``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}{' or None' if optional else ''}, got {value!r}.")
    return int(value)


def finite_float(name: str, value, *, minimum: float | None = None, exclusive: bool = False) -> float:
    """``value`` as a ``float`` if it is a finite real number ``>= minimum`` (``> minimum`` when
    ``exclusive``), else an :class:`InputError` naming ``name``. Booleans are refused."""
    bound = "" if minimum is None else f" {'>' if exclusive else '>='} {minimum:g}"
    try:
        number = float(value) if not isinstance(value, (bool, str)) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (minimum is not None and (number <= minimum if exclusive else number < minimum)):
        raise InputError(f"{name} must be a finite number{bound}, got {value!r}.")
    return number


def norm_name(norm: str) -> str:
    """The one spelling of a norm: ``"l2"`` or ``"linf"`` (``"L2"``, ``"Linf"``… accepted)."""
    spelled = norm.lower() if isinstance(norm, str) else norm
    if spelled not in NORMS:
        raise InputError(f"unknown norm {norm!r}; choose 'l2' or 'linf'.")
    return spelled


# -- deprecations ----------------------------------------------------------------------------------

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _warn_deprecated(message: str) -> None:
    """A ``DeprecationWarning`` attributed to the first caller outside ``landscape/`` (so Python's
    default filters show it where the old spelling is written, whatever the depth of wrappers)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def _deprecated_alias(**renamed: str) -> Callable:
    """Decorator: the old keyword ``old=...`` still works for one release, as ``new``, with a
    ``DeprecationWarning`` (``@_deprecated_alias(loader="batches")``). Both at once is an error."""
    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in renamed.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{function.__name__}() got both {old!r} (deprecated) and {new!r}; "
                                        f"pass {new!r} only.")
                    _warn_deprecated(f"{function.__name__}({old}=...) is deprecated; use {new}=... instead.")
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)
        return wrapper
    return decorate


def legacy_positionals(*names: str) -> Callable:
    """Decorator: arguments that became keyword-only may still be passed by position, in their old
    order ``names`` (after the positional ones), for one release, with a ``DeprecationWarning``."""
    def decorate(function: Callable) -> Callable:
        positional = sum(parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
                         for parameter in inspect.signature(function).parameters.values())

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if len(args) > positional:
                extra = args[positional:]
                if len(extra) > len(names):
                    raise TypeError(f"{function.__name__}() takes at most {positional + len(names)} positional "
                                    f"arguments but {len(args)} were given.")
                moved = names[:len(extra)]
                _warn_deprecated(f"passing {', '.join(moved)} to {function.__name__}() by position is deprecated; "
                                 "pass them by keyword.")
                for name, value in zip(moved, extra):
                    if name in kwargs:
                        raise TypeError(f"{function.__name__}() got multiple values for argument {name!r}.")
                    kwargs[name] = value
                args = args[:positional]
            return function(*args, **kwargs)
        return wrapper
    return decorate


def check_loss_and_batches_order(function: str, loss_fn, batches):
    """``(loss_fn, batches)``, accepting the old order ``(loader, loss_fn)`` for one release with a
    ``DeprecationWarning``: a callable where the data belongs, and data where the loss belongs."""
    if not callable(loss_fn) and callable(batches):
        _warn_deprecated(f"{function}(..., loader, loss_fn) is deprecated; pass (..., loss_fn, batches).")
        loss_fn, batches = batches, loss_fn
    if not callable(loss_fn):
        raise InputError(f"loss_fn must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}.")
    return loss_fn, batches


# ``include`` was sharpness's name for ``params``
select_parameters = _deprecated_alias(include="params")(select_parameters)
