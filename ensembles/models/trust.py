"""Whether the user trusts the Python code a model names: the opt-in that keeps run folders data.

A ``module.path:callable`` model imports and calls Python code, and run folders (checkpoints
and run.json) are what people exchange, so reading one must never run code it names unless the
user said so for that command, as Hugging Face's ``trust_remote_code`` does: ``--trust-model-code``
on the command line, ``trust_model_code=True`` in Python, or the environment variable
:data:`TRUST_VARIABLE` set to 1 for every command. Imports no torch (the command line sets it
while parsing).

    >>> import os
    >>> with trusting_model_code():
    ...     model_code_trusted()
    True
    >>> model_code_trusted(False)
    False
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from landscape.errors import InputError

__all__ = ["TRUST_VARIABLE", "UntrustedModelCode", "model_code_trusted", "trusting_model_code"]

#: Set to 1 to trust the code ``module.path:callable`` models name, for every command.
TRUST_VARIABLE = "SHARPDIV_TRUST_MODEL_CODE"
_YES, _NO = ("1", "true", "yes"), ("", "0", "false", "no")


class UntrustedModelCode(InputError):
    """A model names Python code (``module.path:callable``) and the user has not opted in to run it."""


def model_code_trusted(trust: bool | None = None) -> bool:
    """``trust`` when given, else whether :data:`TRUST_VARIABLE` is set to 1 (true, yes)."""
    if trust is not None:
        return bool(trust)
    value = os.environ.get(TRUST_VARIABLE, "").strip().lower()
    if value not in _YES + _NO:
        raise InputError(f"{TRUST_VARIABLE}={os.environ[TRUST_VARIABLE]!r}: set it to 1 to trust model code, "
                         "or to 0 (or unset it)")
    return value in _YES


@contextlib.contextmanager
def trusting_model_code() -> Iterator[None]:
    """Inside the block models naming Python code are built, here and in the processes started
    meanwhile (they inherit the environment); :data:`TRUST_VARIABLE` is restored afterwards."""
    before = os.environ.get(TRUST_VARIABLE)
    os.environ[TRUST_VARIABLE] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRUST_VARIABLE, None)
        else:
            os.environ[TRUST_VARIABLE] = before
