"""The ``%llm`` grammar: splitting a magic line into a subcommand, arguments and options.

Rules (also shown by ``%llm help``):

* ``%llm SUBCOMMAND POSITIONAL... [--option VALUE | --flag]...``; ``%llm data SUB ...`` and
  ``%llm runs show ID`` / ``%llm job cancel ID`` are two-word subcommands.
* Values may be quoted with ``"..."`` or ``'...'`` (``--system "a b"`` → ``a b``); an
  unterminated quote in the options is an error.
* Subcommands that take free text (``chat``, ``generate``, ``classify``, ``embed``, ``data
  search``) take **everything after their positionals verbatim** — quotes, ``$``, braces and
  all — unless the text is a single quoted string, which is unquoted and may be followed by
  options (``%llm data search rt "a boring plot" --k 5``).
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


def parse_args(cmd: Command, line: str, *, body: str | None = None) -> Parsed:
    """Parse ``line`` (the part after the subcommand words) for ``cmd``.

    ``body`` is a cell body for ``%%llm``; it becomes the free-text argument.

    Raises:
        UsageError: unknown option, missing value, missing positional, bad number, unterminated
            quote — one line naming the fix.
    """
    by_name = {o.name: o for o in cmd.options}
    args: dict = {o.key: (False if o.type is bool else None) for o in cmd.options}
    pos: list[str] = []
    want = len(cmd.positionals) + len(cmd.optional_positionals)
    text = None
    i = 0
    while True:
        rest = line[i:].lstrip()
        if not rest:
            break
        at = len(line) - len(rest)
        if cmd.text and body is None and text is None and len(pos) >= want and not rest.startswith("--"):
            # the free text: one quoted string (options may follow), or the rest verbatim
            tok = None
            if rest[0] in "\"'":
                try:
                    tok = _next_token(line, at)
                except UsageError:
                    tok = None
            after = line[tok[2]:].strip() if tok is not None else ""
            if (tok is not None and line[tok[2] - 1] == rest[0] and line[at:tok[2]].count(rest[0]) == 2
                    and (not after or after.startswith("--"))):
                text, i = tok[0], tok[2]
                continue
            text = rest.rstrip()
            break
        value, s, e, quoted = _next_token(line, at)
        i = e
        if value.startswith("--") and not quoted and len(value) > 2:
            name, eq, inline = value[2:].partition("=")
            opt = by_name.get(name)
            if opt is None:
                raise UsageError(f"unknown option --{name} for `%llm {cmd.name}`{close_matches('--' + name, ['--' + o for o in by_name])}; "
                                 f"see `%llm help {cmd.name}`")
            if opt.type is bool:
                if eq:
                    raise UsageError(f"--{name} is a flag and takes no value")
                args[opt.key] = True
                continue
            if eq:
                raw = inline
            else:
                nxt = _next_token(line, i)
                if nxt is None or (nxt[0].startswith("--") and not nxt[3]):
                    raise UsageError(f"--{name} needs a value ({opt.metavar}); see `%llm help {cmd.name}`")
                raw, i = nxt[0], nxt[2]
            args[opt.key] = _coerce(opt, raw, cmd)
            continue
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
