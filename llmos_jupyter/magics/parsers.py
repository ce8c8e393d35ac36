"""The ``%llm`` grammar: splitting a magic line into a subcommand, arguments and options.

Rules (also shown by ``%llm help``):

* ``%llm SUBCOMMAND POSITIONAL... [--option VALUE | --flag]...``; ``%llm data SUB ...`` and
  ``%llm runs show ID`` / ``%llm job cancel ID`` are two-word subcommands.
* Values may be quoted with ``"..."`` or ``'...'`` (``--system "a b"`` → ``a b``); an
  unterminated quote in an option value is an error.
* Subcommands that take free text (``chat``, ``generate``, ``classify``, ``embed``, ``data
  search``) follow one rule for options and text:

  - **the subcommand's options may come before or after the text** (``%llm chat smol --reset Say
    hi --max-new-tokens 4`` sends ``Say hi`` with both options): a word that starts with ``--``
    and a letter is an option;
  - **a ``--word`` that is not one of the subcommand's options is an error** (did-you-mean), never
    silently part of the text — so a mistyped option cannot change the prompt;
  - **``--`` ends the options**: everything after it is the text exactly as typed
    (``%llm generate smol -- Explain what --seed does``);
  - **quotes keep text verbatim**: ``--words`` inside a quoted span are text
    (``%llm generate smol "Explain --seed" --max-new-tokens 40``), and a text that is one quoted
    string is unquoted. Quotes that do not open or close a span (``don't``, ``"quoted"`` inside a
    sentence) stay in the text as typed, as do ``$``, braces and JSON.

  Text split by options is joined with one space; the spacing inside each part is kept. In a
  cell magic the body is the text, verbatim, and options go on the ``%%llm`` line.
* Prompts are never rewritten by IPython (the magics are ``@no_var_expand``). llmos's own
  interpolation replaces ``{name}`` — a bare identifier in braces that names a variable of the
  notebook — with ``str(value)``; everything else (``{12}``, ``{}``, ``{"a": 1}``, ``$5``) is
  kept as written, ``{{name}}`` gives a literal ``{name}``, and ``--raw`` turns it off.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UsageError, close_matches


@dataclass
class Opt:
    """One option: ``--name`` (``dest`` in the parsed dict), a ``type`` (``bool`` for flags)."""

    name: str
    type: type = str
    dest: str | None = None
    help: str = ""
    metavar: str = "VALUE"

    @property
    def key(self) -> str:
        return self.dest or self.name.replace("-", "_")


@dataclass
class Command:
    """A subcommand: positional names, an optional free-text argument, options, help text."""

    name: str
    summary: str
    positionals: list[str] = field(default_factory=list)
    optional_positionals: list[str] = field(default_factory=list)
    text: str | None = None  # name of the free-text argument (the rest of the line / the cell body)
    options: list[Opt] = field(default_factory=list)
    cell: bool = False  # also usable as %%llm NAME with the body as text
    example: str = ""

    def usage(self) -> str:
        parts = [f"%llm {self.name}"] + [p.upper() for p in self.positionals]
        parts += [f"[{p.upper()}]" for p in self.optional_positionals]
        if self.text:
            parts.append(self.text.upper() + "...")
        parts += [f"[--{o.name}]" if o.type is bool else f"[--{o.name} {o.metavar}]" for o in self.options]
        return " ".join(parts)


@dataclass
class Parsed:
    command: Command
    args: dict

    def __getitem__(self, k):
        return self.args[k]

    def get(self, k, default=None):
        return self.args.get(k, default)


def _next_token(line: str, i: int):
    """Scan one shell-style token at or after ``i``: ``(value, start, end, quoted)`` or ``None``.

    Raises:
        UsageError: an unterminated quote.
    """
    n = len(line)
    while i < n and line[i].isspace():
        i += 1
    if i >= n:
        return None
    s, buf, quoted = i, [], False
    while i < n and not line[i].isspace():
        c = line[i]
        if c in "\"'":
            quoted = True
            j = i + 1
            part = []
            while j < n and line[j] != c:
                if c == '"' and line[j] == "\\" and j + 1 < n and line[j + 1] in '"\\':
                    j += 1
                part.append(line[j])
                j += 1
            if j >= n:
                raise UsageError(f"unterminated {c} quote in: {line[s:].strip()[:60]} — close it or drop it")
            buf.append("".join(part))
            i = j + 1
        else:
            buf.append(c)
            i += 1
    return ("".join(buf), s, i, quoted)


def _coerce(opt: Opt, raw: str, cmd: Command):
    if opt.type is int:
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"--{opt.name} takes a whole number, got '{raw}' (see `%llm help {cmd.name}`)") from None
    if opt.type is float:
        try:
            return float(raw)
        except ValueError:
            raise UsageError(f"--{opt.name} takes a number, got '{raw}' (see `%llm help {cmd.name}`)") from None
    return raw


_OPTION_WORD = re.compile(r"--[A-Za-z][A-Za-z0-9_-]*(=.*)?", re.S)
_CLOSES = set(" \t\r\n,.;:!?)]}")


def _text_word(line: str, i: int) -> tuple[int, int, bool]:
    """One word of free text at ``i`` (no leading whitespace): ``(start, end, quoted)``.

    A word that starts with a quote runs to the matching quote followed by whitespace, the end
    or punctuation (``"Explain --seed",``), and is *quoted*; a quote with no such match (``'tis``)
    is an ordinary character. Never raises: free text may hold any quotes.
    """
    n, q = len(line), line[i]
    if q in "\"'":
        j = i + 1
        while j < n:
            if line[j] == q and (j + 1 == n or line[j + 1] in _CLOSES):
                return i, j + 1, True
            j += 1
    j = i
    while j < n and not line[j].isspace():
        j += 1
    return i, j, False


def parse_args(cmd: Command, line: str, *, body: str | None = None) -> Parsed:
    """Parse ``line`` (the part after the subcommand words) for ``cmd`` (rules: module docstring).

    ``body`` is a cell body for ``%%llm``; it becomes the free-text argument.

    Raises:
        UsageError: unknown option (also inside free text, unless after ``--`` or quoted),
            missing value, missing positional, bad number, unterminated quote in an option
            value — one line naming the fix.
    """
    by_name = {o.name: o for o in cmd.options}
    args: dict = {o.key: (False if o.type is bool else None) for o in cmd.options}
    pos: list[str] = []
    want = len(cmd.positionals) + len(cmd.optional_positionals)
    free = bool(cmd.text) and body is None
    parts: list = []  # free text: (start, end) spans of the line, or verbatim strings after `--`
    quoted_only = None  # the unquoted value when the text so far is one quoted word
    last_text = False  # the previous word was text (so this one extends the same span)
    options_done = False
    n, i = len(line), 0

    def option(at: int) -> int:
        value, _, e, _ = _next_token(line, at)  # strict: quotes in an option value must close
        name, eq, inline = value[2:].partition("=")
        opt = by_name.get(name)
        if opt is None:
            hint = close_matches("--" + name, ["--" + o for o in by_name])
            text_fix = "; to send it as text, put the text after `--` or in quotes" if cmd.text else ""
            raise UsageError(f"unknown option --{name} for `%llm {cmd.name}`{hint}{text_fix}; "
                             f"see `%llm help {cmd.name}`")
        if opt.type is bool:
            if eq:
                raise UsageError(f"--{name} is a flag and takes no value")
            args[opt.key] = True
            return e
        if eq:
            raw = inline
        else:
            nxt = _next_token(line, e)
            if nxt is None or (nxt[0].startswith("--") and not nxt[3]):
                raise UsageError(f"--{name} needs a value ({opt.metavar}); see `%llm help {cmd.name}`")
            raw, e = nxt[0], nxt[2]
        args[opt.key] = _coerce(opt, raw, cmd)
        return e

    while True:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            break
        if free and len(pos) >= want:  # the free text, with options anywhere in it
            if options_done:
                parts.append(line[i:].rstrip())
                quoted_only, last_text = None, False
                break
            s, e, quoted = _text_word(line, i)
            word = line[s:e]
            if not quoted and word == "--":
                rest = line[e:].strip()
                if rest:
                    parts.append(rest)
                    quoted_only = None
                break
            if not quoted and _OPTION_WORD.fullmatch(word):
                i, last_text = option(s), False
                continue
            if last_text and parts and isinstance(parts[-1], tuple):
                parts[-1] = (parts[-1][0], e)
                quoted_only = None
            else:
                quoted_only = word[1:-1] if quoted and not parts else None
                parts.append((s, e))
            i, last_text = e, True
            continue
        value, s, e, quoted = _next_token(line, i)
        if value == "--" and not quoted and not options_done:
            options_done, i = True, e
            continue
        if not options_done and value.startswith("--") and not quoted and len(value) > 2:
            i = option(s)
            continue
        i = e
        if len(pos) < want:
            pos.append(value)
            continue
        raise UsageError(f"unexpected argument '{value}' for `%llm {cmd.name}`; usage: {cmd.usage()}")
    if len(pos) < len(cmd.positionals):
        missing = cmd.positionals[len(pos)]
        raise UsageError(f"`%llm {cmd.name}` needs {missing.upper()}; usage: {cmd.usage()}")
    for k, v in zip(cmd.positionals + cmd.optional_positionals, pos):
        args[k] = v
    for k in cmd.optional_positionals[max(0, len(pos) - len(cmd.positionals)):]:
        args.setdefault(k, None)
    if cmd.text:
        if body is not None:
            text = body
        elif quoted_only is not None and len(parts) == 1:
            text = quoted_only
        else:
            text = " ".join(line[p[0]:p[1]] if isinstance(p, tuple) else p for p in parts) if parts else None
        if text is None or not str(text).strip():
            where = "the cell body" if body is not None else "the line"
            raise UsageError(f"`%llm {cmd.name}` needs {cmd.text.upper()}: {where} is empty; usage: {cmd.usage()}")
        args[cmd.text] = text
    return Parsed(cmd, args)


_IDENT = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate(text: str, namespace: dict) -> str:
    """Replace ``{name}`` with ``str(namespace[name])`` where ``name`` is a bare identifier
    bound in ``namespace``; ``{{name}}`` → ``{name}``; everything else unchanged.

    >>> interpolate('hi {name}, {12} {} {"a": 1} {{name}} {nope} $5', {"name": "Bob"})
    'hi Bob, {12} {} {"a": 1} {name} {nope} $5'
    """
    def sub(m: re.Match) -> str:
        if m.group(1):
            return "{" + m.group(1) + "}"
        name = m.group(2)
        return str(namespace[name]) if name in namespace else m.group(0)

    return _IDENT.sub(sub, text)
