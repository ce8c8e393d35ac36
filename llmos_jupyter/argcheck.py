"""Argument types at the API boundary: one decorator, one line for a wrong type.

Every public function of :mod:`llmos_jupyter.api` is wrapped in :func:`checked`. Before the
function runs, each argument is compared with the function's own annotation; a value of the
wrong type (``llm.classify("minilm", 123)``, ``llm.load(None)``), a missing argument or an
unknown keyword raises :class:`~llmos_jupyter.errors.UsageError` — one line naming the function,
the parameter, what it takes and what it got — instead of a ``TypeError`` or ``AttributeError``
from deep inside. Values are checked for *type* only; ranges stay with the functions.

Annotations understood: ``str``, ``int`` (not ``bool``), ``float`` (``int`` accepted), ``bool``,
``dict``, ``list[X]`` (a list or tuple of X), ``os.PathLike``, ``None`` and unions of them
(``str | None``). Unannotated parameters, ``Any`` and ``**kwargs`` are not checked.

>>> @checked
... def f(alias: str, n: int | None = None): return alias
>>> f("a", n=3)
'a'
>>> f(3)                                                   # doctest: +ELLIPSIS
Traceback (most recent call last):
...
llmos_jupyter.errors.UsageError: f(): alias must be a str, got int 3
"""

from __future__ import annotations

import functools
import inspect
import os
import types
import typing
from typing import Any, Callable

from .errors import UsageError, close_matches


class _Check:
    """``ok(value) -> bool`` and a description (``"a str or None"``) for one annotation."""

    def __init__(self, ok: Callable[[Any], bool], text: str):
        self.ok, self.text = ok, text


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_SIMPLE = {
    str: _Check(lambda v: isinstance(v, str), "a str"),
    int: _Check(_is_int, "a whole number"),
    float: _Check(_is_num, "a number"),
    bool: _Check(lambda v: isinstance(v, bool), "True or False"),
    dict: _Check(lambda v: isinstance(v, dict), "a dict"),
    type(None): _Check(lambda v: v is None, "None"),
    os.PathLike: _Check(lambda v: isinstance(v, os.PathLike), "a path"),
}


def _check_for(hint: Any) -> _Check | None:
    """The check of one annotation, or None when it is not checked (``Any``, unknown types)."""
    if hint is Any:
        return None
    if hint in _SIMPLE:
        return _SIMPLE[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_check_for(a) for a in args]
        if any(p is None for p in parts):
            return None
        text = " or ".join(dict.fromkeys(p.text for p in parts))
        return _Check(lambda v: any(p.ok(v) for p in parts), text)
    if origin in (list, tuple) and args:
        inner = _check_for(args[0])
        if inner is None:
            return _Check(lambda v: isinstance(v, (list, tuple)), "a list")
        word = inner.text.removeprefix("a ")
        return _Check(lambda v: isinstance(v, (list, tuple)) and all(inner.ok(x) for x in v), f"a list of {word}")
    if origin is dict or hint is list:
        return _Check(lambda v: isinstance(v, origin or list), f"a {getattr(origin or hint, '__name__', 'value')}")
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def checked(fn: Callable) -> Callable:
    """Wrap ``fn`` so wrong argument types, missing arguments and unknown keywords raise one
    :class:`UsageError` line before it runs (see the module docstring)."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: check nothing rather than fail at import
        hints = {}
    checks = {
        name: c
        for name, h in hints.items()
        if name in sig.parameters
        and sig.parameters[name].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        and (c := _check_for(h)) is not None
    }
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            known = [p for p in sig.parameters if not p.startswith("_")]
            bad = [k for k in kwargs if k not in sig.parameters]
            if bad and not takes_kwargs:
                raise UsageError(
                    f"{name}() takes no argument {bad[0]!r}{close_matches(bad[0], known)}; it takes {', '.join(known)}"
                ) from None
            raise UsageError(f"{name}(): {e}; see help(llmos_jupyter.api.{name})") from None
        for param, value in bound.arguments.items():
            c = checks.get(param)
            if c is not None and not c.ok(value):
                raise UsageError(f"{name}(): {param} must be {c.text}, got {type(value).__name__} {_show(value)}")
        return fn(*args, **kwargs)

    wrapper.__signature__ = sig  # help() and tab completion show the real parameters
    return wrapper
