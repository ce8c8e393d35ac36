"""User-facing errors.

Every mistake a user can make (an unknown name, a bad flag, a file that does not exist) raises
:class:`LLMOSError` or a subclass. Its message is one line that names the fix. The magics print
it on stderr as ``llmos: <message>``; in plain Python, IPython shows the same single line instead
of a traceback (``_render_traceback_``). Anything else that escapes is a bug in llmos.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from typing import Any, Iterable, Iterator


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


class ContextLengthError(UsageError):
    """An input longer than the model's context window (over HTTP: 400 ``context_length_exceeded``,
    OpenAI's code for it)."""


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


# ---------------------------------------------------------------------------- surfaces
# A hint names an option the way the user typed it: ``--batch-size 32`` under ``%llm``,
# ``batch_size=32`` in Python. The magics run their handler inside ``on_surface("magic")``; every
# other caller is on the Python surface. Errors built in another thread (a background job) keep
# the Python spelling. ``%llm serve``'s workers answer on the ``"http"`` surface: their hints
# name request fields (``max_tokens``, ``messages``), which :func:`opt` spells as Python keywords.
_SURFACE: contextvars.ContextVar[str] = contextvars.ContextVar("llmos_surface", default="python")

# The one mapping from a Python keyword of :mod:`llmos_jupyter.api` to its ``%llm`` flag, where
# the flag is not simply ``--`` + the keyword with ``-`` for ``_`` (see magics/commands.py).
FLAG_OF = {
    "alias": "--as",
    "text_column": "--text",
    "label_column": "--label",
    "prompt_column": "--prompt",
    "response_column": "--response",
    "early_stopping_patience": "--patience",
    "metric_for_best": "--metric",
    "attn_implementation": "--attn",
    "stratify": "--stratify",
}


@contextlib.contextmanager
def on_surface(name: str) -> Iterator[None]:
    """Build hints for surface ``name`` (``"magic"``, ``"python"`` or ``"http"``) inside the block."""
    token = _SURFACE.set(name)
    try:
        yield
    finally:
        _SURFACE.reset(token)


def surface() -> str:
    """The surface the current call came from: ``"magic"``, ``"http"`` or ``"python"`` (the default)."""
    return _SURFACE.get()


def flag(name: str) -> str:
    """The ``%llm`` flag of API keyword ``name``: ``batch_size`` → ``--batch-size``,
    ``alias`` → ``--as`` (:data:`FLAG_OF`)."""
    return FLAG_OF.get(name, "--" + name.replace("_", "-"))


def opt(name: str, value: Any = None, *, flag_name: str | None = None) -> str:
    """Option ``name`` (an API keyword) with an example ``value``, spelled for the surface the
    user is on.

    >>> opt("overwrite", True), opt("batch_size", 32), opt("split", "train")  # Python surface
    ('overwrite=True', 'batch_size=32', "split='train'")

    Under ``%llm`` the same calls give ``--overwrite``, ``--batch-size 32`` and
    ``--split train``. ``value=None`` names the option alone (``batch_size=`` / ``--batch-size``);
    ``flag_name`` overrides :func:`flag` where one keyword has two flags (``name`` is ``--as``
    for ``data load``).
    """
    shown = f"{value:g}" if isinstance(value, float) else None  # 1e9, not 1000000000.0
    if surface() == "magic":
        f = flag_name or flag(name)
        if value is True or value is None:
            return f
        return f"{f} {shown or value}"
    if value is None:
        return f"{name}="
    return f"{name}={shown or repr(value)}"
