"""A model builder's keyword arguments: read from ``--model-arg`` text, checked against its signature.

Every command rebuilds a run's members from run.json ``model`` and ``model_args``, so an argument
must mean the same thing each time it is read:

- :func:`parse_value` reads ``True``, ``False`` and ``None`` as Python spells them, then JSON
  (``true``, ``0.1``, ``[2, 3]``), and keeps anything else as text;
- :func:`check_arguments` accepts only the builder's named parameters (a ``**kwargs`` catch-all
  accepts nothing: an unknown key is refused, never forwarded to code that may ignore it or do
  something else with it) and only values of the type the parameter declares, by annotation or,
  without one, by its default (``zero_init_residual: bool = False`` takes ``true``/``false``,
  never the text ``"False"``, which Python would read as true).

Imports neither torch nor the builders, so the command line can parse arguments before torch loads.

    >>> parse_value("False"), parse_value("0.1"), parse_value("[2, 3]"), parse_value("batch")
    (False, 0.1, [2, 3], 'batch')
    >>> def builder(num_classes: int, *, zero_init: bool = False, hidden=(8,), **kwargs): ...
    >>> check_arguments("net", keyword_parameters(builder), {"zero_init": True, "hidden": [4, 4]})
    >>> check_arguments("net", keyword_parameters(builder), {"zero_init": "False"})
    Traceback (most recent call last):
    ...
    landscape.errors.InputError: model 'net': zero_init='False' is text, but the builder declares zero_init: bool; give true or false
"""
from __future__ import annotations

import collections.abc
import inspect
import json
import numbers
import types
import typing
from collections.abc import Callable, Mapping

from landscape.errors import InputError

__all__ = ["check_arguments", "keyword_parameters", "parse_value"]

_LITERALS = {"True": True, "False": False, "None": None}
_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def parse_value(text: str):
    """``text`` as a value: ``True``/``False``/``None``, else JSON, else the text itself."""
    stripped = text.strip()
    if stripped in _LITERALS:
        return _LITERALS[stripped]
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        return text


def keyword_parameters(builder: Callable, *, keyword_only: bool = False) -> dict[str, inspect.Parameter] | None:
    """The parameters of ``builder`` a caller can pass by name (``keyword_only``: only those after
    ``*``), annotations evaluated where they can be; None when it has no signature to read."""
    try:
        signature = inspect.signature(builder, eval_str=True)
    except (NameError, AttributeError, SyntaxError, TypeError):  # an annotation naming what is not importable
        try:
            signature = inspect.signature(builder)
        except (TypeError, ValueError):
            return None
    except ValueError:
        return None
    kinds = (inspect.Parameter.KEYWORD_ONLY,) if keyword_only else _BY_KEYWORD
    return {name: parameter for name, parameter in signature.parameters.items()
            if parameter.kind in kinds and name != "self"}


def check_arguments(name: str, parameters: Mapping[str, inspect.Parameter] | None, options: Mapping,
                    *, set_by_sharpdiv: tuple[str, ...] = ("num_classes",)) -> None:
    """An :class:`InputError` unless every key of ``options`` is one of ``parameters`` (the builder's
    named ones, :func:`keyword_parameters`) and its value has the parameter's declared type.
    ``set_by_sharpdiv`` are parameters the caller fills itself; they are not listed as options."""
    if not options:
        return
    if parameters is None:
        raise InputError(f"model {name!r}: its builder has no signature to check "
                         f"{', '.join(map(repr, options))} against; drop the model arguments")
    offered = {key: parameter for key, parameter in parameters.items() if key not in set_by_sharpdiv}
    unknown = [key for key in options if key not in offered]
    if unknown:
        listed = ", ".join(key if parameter.default is inspect.Parameter.empty else f"{key}={parameter.default!r}"
                           for key, parameter in offered.items()) or "none"
        raise InputError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; its options are: {listed}")
    for key, value in options.items():
        declared, spelled = _declared_type(offered[key])
        if declared is not None and not _accepts(declared, value):
            raise InputError(f"model {name!r}: {key}={value!r} is {_kind(value)}, but the builder declares "
                             f"{key}: {spelled}; give {_example(declared)}")


def _declared_type(parameter: inspect.Parameter) -> tuple[object, str]:
    """The type a parameter declares and how to spell it: its annotation, else the type of its
    default (a number for a numeric default), else None (anything goes)."""
    annotation = parameter.annotation
    if annotation is not inspect.Parameter.empty and not isinstance(annotation, str):
        return annotation, inspect.formatannotation(annotation)
    default = parameter.default
    for kind, spelled in ((bool, "bool"), ((int, float), "a number"), (str, "str"), ((list, tuple), "a list"),
                          (dict, "a table")):
        if isinstance(default, kind):
            target = float if kind == (int, float) else list if kind == (list, tuple) else kind
            return target, f"{spelled} (its default is {default!r})"
    return None, ""


def _accepts(annotation, value) -> bool:
    """Whether ``value`` (a JSON value) has the declared type; True where the annotation is not a
    type this can check (a type variable, a forward reference)."""
    if annotation in (typing.Any, object):
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(member, value) for member in arguments)
    if origin is typing.Literal:
        return any(type(value) is type(choice) and value == choice for choice in arguments)
    if origin is typing.Annotated:
        return _accepts(arguments[0], value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:  # NumPy's integers are integers too
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    container = origin or annotation
    if origin is collections.abc.Callable or annotation is collections.abc.Callable:
        return callable(value)
    if not isinstance(container, type):
        return True
    if container is not str and issubclass(container, collections.abc.Iterable) and isinstance(value, (list, tuple)) \
            and (issubclass(list, container) or issubclass(tuple, container)):
        return _items_accepted(container, arguments, value)
    if issubclass(dict, container) and container is not object and isinstance(value, dict):
        return len(arguments) != 2 or all(_accepts(arguments[1], item) for item in value.values())
    return isinstance(value, container)


def _items_accepted(container: type, arguments: tuple, value) -> bool:
    if not arguments:
        return True
    if container is tuple and not (len(arguments) == 2 and arguments[1] is Ellipsis):
        return len(arguments) == len(value) and all(_accepts(a, item) for a, item in zip(arguments, value))
    return all(_accepts(arguments[0], item) for item in value)


def _kind(value) -> str:
    if value is None:
        return "None"
    return {bool: "a bool", int: "an integer", float: "a number", str: "text", list: "a list",
            dict: "a table"}.get(type(value), f"a {type(value).__name__}")


def _example(annotation) -> str:
    if annotation is bool:
        return "true or false"
    if annotation in (int, float):
        return "a number, unquoted"
    return "a value of that type"
