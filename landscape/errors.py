"""The one error type for input a user can fix.

Every layer raises :class:`InputError` for bad input (a missing file, a wrong shape, NaNs,
mismatched members); its message names the problem and the fix. The CLI prints it on one
line and exits with status 2, without a traceback.
"""


class InputError(ValueError):
    """Bad input that the user can fix; the message says what is wrong and how to fix it."""


class NonFiniteError(InputError):
    """A computation gave NaN or ±inf where a number was due (weights, a loss that overflows);
    never stored or averaged away. The message names the quantity and the setting that caused it."""
