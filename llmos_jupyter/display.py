"""Small result objects that render in Jupyter (HTML) and in terminals (text).

They implement ``_repr_mimebundle_`` with ``text/plain`` and ``text/html`` so they survive
saved notebooks and nbconvert, and hold only plain data (never a model), so showing one as a
cell result does not keep a model alive.
"""

from __future__ import annotations

import html
import json
from typing import Any, Iterable


def fmt_value(v: Any) -> str:
    """One cell of a result: ``None`` → ``-``, a float with 4 significant digits, a dict as JSON."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v)


def kv_html(rows: Iterable[tuple[str, Any]], css_class: str) -> str:
    """A two-column key/value HTML table (keys as row headers, values through :func:`fmt_value`)."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(fmt_value(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table class='{css_class}'>{body}</table>"


class Table:
    """A titled table: ``columns`` (names) and ``rows`` (lists of cells, already formatted or raw).

    Attributes:
        data: the raw rows as dicts (``[{column: value}]``), for code that wants the values.
    """

    def __init__(self, title: str, columns: list[str], rows: list[list], note: str = "", data=None):
        self.title, self.columns, self.rows, self.note = title, list(columns), [list(r) for r in rows], note
        self.data = data if data is not None else [dict(zip(self.columns, r)) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.data)

    def __getitem__(self, i):
        return self.data[i]

    def _text(self) -> str:
        cells = [self.columns] + [[("" if c is None else str(c)) for c in r] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.title] if self.title else []
        if self.rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells[0], widths)).rstrip())
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells[1:]]
        else:
            lines.append("(none)")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def _html(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(str(c))}</th>" for c in self.columns)
        body = "".join(
            "<tr>"
            + "".join(f"<td style='text-align:left'>{html.escape('' if c is None else str(c))}</td>" for c in r)
            + "</tr>"
            for r in self.rows
        )
        if not self.rows:
            body = f"<tr><td colspan='{len(self.columns)}'><i>none</i></td></tr>"
        title = f"<b>{html.escape(self.title)}</b>" if self.title else ""
        note = f"<div style='opacity:.7'>{html.escape(self.note)}</div>" if self.note else ""
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        return f"<div class='llmos-table'>{title}{table}{note}</div>"

    def __repr__(self) -> str:
        return self._text()

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": self._text(), "text/html": self._html()}


class Message:
    """One or more lines of plain text (rendered as <pre> in HTML), with the figures behind them
    as ``data`` (read like a dict: ``msg["key"]``, ``msg.get``, ``in``, ``dict(msg)``)."""

    def __init__(self, text: str, **data):
        self.text, self.data = text, data

    def __repr__(self) -> str:
        return self.text

    def __getitem__(self, key):
        return self.data[key]

    # the fields read like a dict's: ``msg["url"]``, ``msg.get("url")``, ``"url" in msg``, ``dict(msg)``
    def keys(self):
        return self.data.keys()

    def get(self, key, default=None):
        return self.data.get(key, default)

    def __contains__(self, key) -> bool:
        return key in self.data

    def __iter__(self):
        return iter(self.data)

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": self.text, "text/html": f"<pre>{html.escape(self.text)}</pre>"}


class Reply(str):
    """Generated text. When it was already streamed to the output, showing it as a cell result
    prints nothing more (no duplicate); ``str(reply)`` is the text."""

    streamed: bool = False

    def _ipython_display_(self):
        if not self.streamed:
            print(str(self))
