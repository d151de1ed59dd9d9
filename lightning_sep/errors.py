"""User-facing errors.

Every problem a user can fix (a wrong path, an unknown name, a missing program, a corrupt file) is
raised as :class:`LightningSepError`.  The CLI prints its message, without a traceback, and exits
with status 2.  A message names the file or option at fault and says what to do about it.
"""

from __future__ import annotations


class LightningSepError(Exception):
    """An error in the user's input or environment, with a message that says what to do."""


class UnknownNameError(LightningSepError, KeyError):
    """A name (``MODEL=``, ``DATA=``, a target, ...) that is not one of the available ones."""

    def __init__(self, kind: str, name: str, available: list[str] | tuple[str, ...]):
        self.kind, self.name, self.available = kind, name, list(available)
        super().__init__(
            f"Unknown {kind} {name!r}. Available: {', '.join(self.available) or '(none)'}."
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]
