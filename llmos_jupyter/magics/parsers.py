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
  kept as written, ``{{name}}`` gives a literal ``{name}``, and ``--raw`` turns it off (for the
  text). Option values and positionals are interpolated the same way (``--lr {lr}``,
  ``%llm load {path}``), before their type is checked; a value that is just ``{name}`` naming
  no variable is an error there (braces inside a longer value stay as typed). Options that are
  templates themselves (``data prompt --prompt "Review:
  {text}"``, where ``{text}`` is a column) are never interpolated.
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
    verbatim: bool = False  # a template of its own (``{column}``): never takes notebook variables

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


def parse_args(cmd: Command, line: str, *, body: str | None = None, namespace: dict | None = None) -> Parsed:
    """Parse ``line`` (the part after the subcommand words) for ``cmd`` (rules: module docstring).

    ``body`` is a cell body for ``%%llm``; it becomes the free-text argument. ``namespace`` (the
    notebook's variables; None: no interpolation) fills ``{name}`` in option values, positionals
    and the free text (the text not with ``--raw``).

    Raises:
        UsageError: unknown option (also inside free text, unless after ``--`` or quoted),
            missing value, missing positional, bad number, unterminated quote in an option
            value, an option value or positional that is just a ``{name}`` naming no variable —
            one line naming the fix.
    """
    scan = _LineScan(cmd, line, free=bool(cmd.text) and body is None, namespace=namespace)
    scan.run()
    args, pos = scan.args, scan.pos
    if len(pos) < len(cmd.positionals):
        missing = cmd.positionals[len(pos)]
        raise UsageError(f"`%llm {cmd.name}` needs {missing.upper()}; usage: {cmd.usage()}")
    for k, v in zip(cmd.positionals + cmd.optional_positionals, pos):
        args[k] = v
    for k in cmd.optional_positionals[max(0, len(pos) - len(cmd.positionals)) :]:
        args.setdefault(k, None)
    if cmd.text:
        args[cmd.text] = scan.text(body)
        if namespace is not None and not args.get("raw"):
            args[cmd.text] = interpolate(args[cmd.text], namespace)
    return Parsed(cmd, args)


class _LineScan:
    """One left-to-right scan of a magic line for :func:`parse_args`: options into ``args``,
    positionals into ``pos``, and (for a free-text command without a cell body) the spans of the
    free text into ``parts``."""

    def __init__(self, cmd: Command, line: str, *, free: bool, namespace: dict | None = None):
        self.cmd, self.line, self.free, self.namespace = cmd, line, free, namespace
        self.by_name = {o.name: o for o in cmd.options}
        self.args: dict = {o.key: (False if o.type is bool else None) for o in cmd.options}
        self.pos: list[str] = []
        self.want = len(cmd.positionals) + len(cmd.optional_positionals)
        self.parts: list = []  # free text: (start, end) spans of the line, or verbatim strings after `--`
        self.quoted_only = None  # the unquoted value when the text so far is one quoted word
        self.last_text = False  # the previous word was text (so this one extends the same span)
        self.options_done = False

    def run(self) -> None:
        line, n, i = self.line, len(self.line), 0
        while i is not None:
            while i < n and line[i].isspace():
                i += 1
            if i >= n:
                break
            if self.free and len(self.pos) >= self.want:  # the free text, with options anywhere in it
                i = self._text_word(i)
            else:
                i = self._token(i)

    def _option(self, at: int) -> int:
        """Read the ``--name [VALUE]`` at ``at`` into ``args``; return where it ends."""
        cmd, line = self.cmd, self.line
        value, _, e, _ = _next_token(line, at)  # strict: quotes in an option value must close
        name, eq, inline = value[2:].partition("=")
        opt = self.by_name.get(name)
        if opt is None:
            hint = close_matches("--" + name, ["--" + o for o in self.by_name])
            text_fix = "; to send it as text, put the text after `--` or in quotes" if cmd.text else ""
            raise UsageError(
                f"unknown option --{name} for `%llm {cmd.name}`{hint}{text_fix}; see `%llm help {cmd.name}`"
            )
        if opt.type is bool:
            if eq:
                raise UsageError(f"--{name} is a flag and takes no value")
            self.args[opt.key] = True
            return e
        if eq:
            raw = inline
        else:
            nxt = _next_token(line, e)
            if nxt is None or (nxt[0].startswith("--") and not nxt[3]):
                raise UsageError(f"--{name} needs a value ({opt.metavar}); see `%llm help {cmd.name}`")
            raw, e = nxt[0], nxt[2]
        value = raw if opt.verbatim else self._expand(raw, f"--{name}")
        self.args[opt.key] = _coerce(opt, value, cmd)
        return e

    def _expand(self, value: str, what: str) -> str:
        """``value`` with each ``{name}`` that names a notebook variable replaced (see
        :func:`interpolate`); unchanged without a namespace.

        Raises:
            UsageError: the whole value is one ``{name}`` that names no variable (it can only be
                meant as one: a model called ``{x}`` would be a typo's result).
        """
        if self.namespace is None or "{" not in value:
            return value
        out = interpolate(value, self.namespace)
        whole = _IDENT.fullmatch(value)
        if out == value and whole is not None and whole.group(2):
            name = whole.group(2)
            raise UsageError(f"{what} {value}: there is no variable '{name}' in the notebook; define it first")
        return out

    def _text_word(self, i: int) -> int | None:
        """One word of free text (or an option among it) at ``i``; None when the text ends here."""
        line, parts = self.line, self.parts
        if self.options_done:
            parts.append(line[i:].rstrip())
            self.quoted_only, self.last_text = None, False
            return None
        s, e, quoted = _text_word(line, i)
        word = line[s:e]
        if not quoted and word == "--":
            rest = line[e:].strip()
            if rest:
                parts.append(rest)
                self.quoted_only = None
            return None
        if not quoted and _OPTION_WORD.fullmatch(word):
            self.last_text = False
            return self._option(s)
        if self.last_text and parts and isinstance(parts[-1], tuple):
            parts[-1] = (parts[-1][0], e)
            self.quoted_only = None
        else:
            self.quoted_only = word[1:-1] if quoted and not parts else None
            parts.append((s, e))
        self.last_text = True
        return e

    def _token(self, i: int) -> int:
        """One token before the free text at ``i``: ``--``, an option or a positional."""
        value, s, e, quoted = _next_token(self.line, i)
        if value == "--" and not quoted and not self.options_done:
            self.options_done = True
            return e
        if not self.options_done and value.startswith("--") and not quoted and len(value) > 2:
            return self._option(s)
        if len(self.pos) < self.want:
            names = self.cmd.positionals + self.cmd.optional_positionals
            self.pos.append(self._expand(value, names[len(self.pos)].upper()))
            return e
        raise UsageError(f"unexpected argument '{value}' for `%llm {self.cmd.name}`; usage: {self.cmd.usage()}")

    def text(self, body: str | None) -> str:
        """The free-text argument: the cell body, else the line's text parts joined with one space.

        Raises:
            UsageError: the text is empty.
        """
        cmd, parts = self.cmd, self.parts
        if body is not None:
            text = body
        elif self.quoted_only is not None and len(parts) == 1:
            text = self.quoted_only
        else:
            text = " ".join(self.line[p[0] : p[1]] if isinstance(p, tuple) else p for p in parts) if parts else None
        if text is None or not str(text).strip():
            where = "the cell body" if body is not None else "the line"
            raise UsageError(f"`%llm {cmd.name}` needs {cmd.text.upper()}: {where} is empty; usage: {cmd.usage()}")
        return text


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
