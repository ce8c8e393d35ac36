"""User-facing errors.

Every mistake a user can make (an unknown name, a bad flag, a file that does not exist) raises
:class:`LLMOSError` or a subclass. Its message is one line that names the fix. The magics print
it on stderr as ``llmos: <message>``; in plain Python, IPython shows the same single line instead
of a traceback (``_render_traceback_``). Anything else that escapes is a bug in llmos.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class LLMOSError(Exception):
    """A user error: one line, naming the fix. Never a traceback in a notebook."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

    def _render_traceback_(self) -> list[str]:  # IPython hook: show one line, not a traceback
        return [f"{type(self).__name__}: {self}"]


class NotFoundError(LLMOSError, KeyError):
    """An unknown model alias, catalog name, dataset, column, run or job."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0] if self.args else ""


class UsageError(LLMOSError, ValueError):
    """A bad flag, a missing value, or options that conflict."""


class ResourceError(LLMOSError, MemoryError):
    """A load or job that does not fit the memory budget."""


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean: a, b?)"`` for the nearest of ``choices``, or ``""``.

    Uses :func:`difflib.get_close_matches` (Ratcliff/Obershelp similarity, cutoff 0.5).
    """
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(found)}?)" if found else ""


def unknown(kind: str, word: str, choices: Iterable[str], fix: str = "") -> NotFoundError:
    """Build the standard one-line error for an unknown name of ``kind``."""
    choices = list(choices)
    hint = close_matches(word, choices)
    if not hint and choices and len(choices) <= 8:
        hint = f" (known: {', '.join(sorted(map(str, choices)))})"
    msg = f"unknown {kind} '{word}'{hint}"
    if fix:
        msg += f"; {fix}"
    return NotFoundError(msg)
