"""Cleaning rules and the report of what each one did.

Rules run in this order; each sees the output of the one before (so a text that becomes blank
after ``strip_html`` is then removed by ``drop_empty``):

=====================  =========================================================================
``label_map``          relabel: ``{"neg": 0, "pos": 1}`` sets the class ids (names keep their
                       text), ``{"negative": "neg"}`` renames/merges (names sorted again)
``strip_html``         remove HTML tags of known HTML elements and comments; line-breaking tags
                       (``<br />``, ``<p>``, ``<hr>``, ``<li>`` ...) become ``"\\n"``, inline ones
                       (``<i>``, ``<em>``, ``<a href>`` ...) nothing. ``<grin>``, ``<SPOILER>``,
                       ``<http://...>`` or ``</3`` are not HTML and stay. Character references
                       (``&#8217;``) are left as written (the inspector counts them)
``normalize_whitespace``  runs of whitespace (newlines included) -> one space; ends stripped
``drop_empty``         remove rows whose text is missing or whitespace-only, and rows whose label
                       is missing (``-1``)
``min_chars``/``max_chars``  remove rows with ``len(text)`` (characters) below / above
``dedupe``             keep the first row of each exact text; later copies are removed (groups
                       whose copies carry different labels are reported as conflicting)
=====================  =========================================================================

Rules apply to every split except a held-out ``test`` split of a dataset that was split
(``label_map`` excepted: ids must mean the same in every split, so it relabels ``test`` too).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError, opt, unknown

# Elements whose tags are removed by strip_html (HTML 4/5 names that appear in scraped text).
HTML_BLOCK = (
    "br",
    "p",
    "div",
    "hr",
    "li",
    "ul",
    "ol",
    "tr",
    "table",
    "tbody",
    "thead",
    "td",
    "th",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "pre",
    "dd",
    "dt",
    "dl",
)
HTML_INLINE = (
    "a",
    "abbr",
    "b",
    "big",
    "center",
    "cite",
    "code",
    "del",
    "em",
    "font",
    "i",
    "img",
    "ins",
    "kbd",
    "q",
    "s",
    "small",
    "span",
    "strike",
    "strong",
    "sub",
    "sup",
    "tt",
    "u",
)
_NAMES = "|".join(sorted(HTML_BLOCK + HTML_INLINE, key=len, reverse=True))
TAG_RE = re.compile(rf"<(/?)({_NAMES})\b([^<>]*?)(/?)>", re.IGNORECASE)
COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
ENTITY_RE = re.compile(r"&(#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
_WS_RE = re.compile(r"\s+")
_BLOCK = frozenset(HTML_BLOCK)

MAX_EXAMPLES = 5  # examples kept per rule in a CleanReport
EXAMPLE_CHARS = 80  # characters of text shown per example


def tag_key(m: re.Match) -> str:
    """How a matched tag is listed: ``<br />``, ``</i>``, ``<a …>`` (lowercased)."""
    slash, name, attrs, selfclose = m.group(1), m.group(2).lower(), m.group(3), m.group(4)
    if attrs.strip() and attrs.strip() != "/":
        return f"<{slash}{name} …>"
    return f"<{slash}{name}{' /' if (selfclose or attrs.strip() == '/') else ''}>"


def find_markup(text: str) -> set[str]:
    """The distinct markup in one text: tag keys (:func:`tag_key`), ``<!-- -->`` and valid
    character references (``&#305;``)."""
    found = {tag_key(m) for m in TAG_RE.finditer(text)}
    if COMMENT_RE.search(text):
        found.add("<!-- -->")
    for m in ENTITY_RE.finditer(text):
        if html.unescape(m.group(0)) != m.group(0):
            found.add(m.group(0))
    return found


def strip_html(text: str) -> str:
    """Remove HTML tags and comments (see the module docstring). ``"a<br /><br />b"`` ->
    ``"a\\n\\nb"``; ``"<i>Heat</i>"`` -> ``"Heat"``."""
    if "<" not in text:
        return text
    text = COMMENT_RE.sub("", text)
    return TAG_RE.sub(lambda m: "\n" if m.group(2).lower() in _BLOCK else "", text)


def normalize_whitespace(text: str) -> str:
    """Collapse whitespace runs to one space and strip the ends."""
    return _WS_RE.sub(" ", text).strip()


def parse_label_map(spec: Any) -> dict:
    """``"neg=0,pos=1"`` or ``{"neg": 0}`` -> ``{"neg": 0, "pos": 1}`` (int-like values -> int).

    Raises:
        UsageError: an item without ``=``, or an empty map.
    """
    if isinstance(spec, str):
        items = {}
        for part in spec.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise UsageError(
                    f"label map item '{part.strip()}' has no '='; write OLD=NEW pairs "
                    f"separated by commas, e.g. neg=0,pos=1"
                )
            old, new = part.split("=", 1)
            items[old.strip()] = new.strip()
        spec = items
    if not isinstance(spec, dict) or not spec:
        raise UsageError("label_map is empty; write OLD=NEW pairs, e.g. neg=0,pos=1")
    out = {}
    for k, v in spec.items():
        if isinstance(v, str) and re.fullmatch(r"[+-]?\d+", v.strip()):
            v = int(v)
        out[str(k).strip()] = v
    return out


def plan_label_map(names: list[str], mapping: dict) -> tuple[list[int], list[str]]:
    """Work out a relabelling.

    Args:
        names: current ``ClassLabel`` names.
        mapping: from :func:`parse_label_map`; keys are current names (or ids as text).

    Returns:
        ``(new_id_of_old_id, new_names)``.

    Raises:
        UsageError/NotFoundError: unknown key, mixed int/str values, ints that are not a
            permutation of ``0..n-1``.
    """
    index = {n: i for i, n in enumerate(names)}
    by_old: dict[int, Any] = {}
    for k, v in mapping.items():
        if k in index:
            old = index[k]
        elif re.fullmatch(r"\d+", k) and int(k) < len(names):
            old = int(k)
        else:
            raise unknown("label", k, names, "label_map keys are the current label names")
        by_old[old] = v
    values = list(by_old.values())
    if all(isinstance(v, int) for v in values):
        if len(by_old) != len(names) or sorted(values) != list(range(len(names))):
            raise UsageError(
                f"label_map with ids must give each of {names} a different id "
                f"0..{len(names) - 1}, e.g. {','.join(f'{n}={i}' for i, n in enumerate(names))}"
            )
        new_names = [""] * len(names)
        for old, new in by_old.items():
            new_names[new] = names[old]
        return [by_old[i] for i in range(len(names))], new_names
    if all(isinstance(v, str) for v in values):
        targets = [str(by_old.get(i, n)).strip() for i, n in enumerate(names)]
        if any(not t for t in targets):
            raise UsageError("label_map gives an empty name; write OLD=NEW with a NEW name")
        new_names = sorted(set(targets))
        if len(new_names) < 2:
            raise UsageError(
                f"label_map merges every label into '{new_names[0]}'; a classifier needs two or more classes"
            )
        return [new_names.index(t) for t in targets], new_names
    raise UsageError("label_map values must be all ids (neg=0,pos=1) or all names (negative=neg); not a mix")


@dataclass
class RuleResult:
    """What one rule did: rows ``removed`` and ``changed`` (over the cleaned splits),
    up to :data:`MAX_EXAMPLES` ``examples`` (dicts with split, row, before/after or reason) and
    rule-specific ``detail`` (e.g. per-tag row counts for ``strip_html``)."""

    rule: str
    removed: int = 0
    changed: int = 0
    examples: list = field(default_factory=list)
    detail: dict = field(default_factory=dict)


def _short(text: Any, n: int = EXAMPLE_CHARS) -> str:
    if text is None:
        return "None"
    s = repr(text) if not text.strip() else text
    return s if len(s) <= n else s[: n - 1] + "…"


def diff_window(before: str, after: str, context: int = 20, width: int = 60) -> tuple[str, str]:
    """The part of ``before`` and ``after`` around their first difference (``…`` marks cuts),
    so an example shows what a rule changed, not a common prefix."""
    p = next((i for i, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
    start = max(0, p - context)

    def cut(t: str) -> str:
        piece = t[start : start + width]
        return ("…" if start else "") + piece + ("…" if start + width < len(t) else "")

    return cut(before), cut(after)


@dataclass
class CleanReport:
    """The outcome of :meth:`DataStore.clean`.

    Attributes:
        name: dataset name; ``parent_version``/``version``: versions before and after;
        fingerprint/parent: fingerprints after and before;
        rules: one :class:`RuleResult` per rule that ran, in order;
        rows_before/rows_after: ``{split: rows}``;
        untouched: splits left as they were (a held-out ``test``);
        warnings: lines shown to the user (also issued as ``UserWarning``).
    """

    name: str
    parent_version: int
    version: int
    fingerprint: str
    parent: str
    rules: list
    rows_before: dict
    rows_after: dict
    untouched: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def rule(self, name: str) -> RuleResult:
        """The :class:`RuleResult` of rule ``name``.

        Raises:
            NotFoundError: the rule did not run.
        """
        for r in self.rules:
            if r.rule == name:
                return r
        raise unknown("rule", name, [r.rule for r in self.rules], "that rule was not asked for")

    @property
    def removed(self) -> int:
        """Rows removed by all rules together."""
        return sum(self.rows_before.values()) - sum(self.rows_after.values())

    def _example_line(self, ex: dict) -> str:
        where = f"{ex['split']}[{ex['row']}]"
        if "after" in ex:
            before, after = diff_window(ex["before"], ex["after"])
            return f"{where} {before!r} -> {after!r}"
        return f"{where} {ex['reason']}: {_short(ex['text'])}"

    def __str__(self) -> str:
        rows = ", ".join(f"{s} {self.rows_before[s]:,} -> {self.rows_after.get(s, 0):,}" for s in self.rows_before)
        lines = [
            f"clean {self.name}: v{self.parent_version} -> v{self.version} "
            f"(fingerprint {self.fingerprint}, parent {self.parent})",
            f"rows: {rows}",
        ]
        for r in self.rules:
            lines.append(f"  {r.rule:<22} removed {r.removed:>6,}  changed {r.changed:>6,}")
            for k, v in r.detail.items():
                lines.append(f"      {k}: {v}")
            for ex in r.examples:
                lines.append(f"      e.g. {self._example_line(ex)}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><td><code>{esc(r.rule)}</code></td><td style='text-align:right'>{r.removed:,}</td>"
            f"<td style='text-align:right'>{r.changed:,}</td><td>"
            + "".join(f"<div>{esc(k)}: {esc(str(v))}</div>" for k, v in r.detail.items())
            + "".join(f"<div style='font-size:90%'>{esc(self._example_line(e))}</div>" for e in r.examples)
            + "</td></tr>"
            for r in self.rules
        )
        splits = ", ".join(
            f"{esc(s)} {self.rows_before[s]:,} → {self.rows_after.get(s, 0):,}" for s in self.rows_before
        )
        warn = "".join(f"<div style='color:#b45309'>⚠ {esc(w)}</div>" for w in self.warnings)
        return (
            f"<div><b>clean {esc(self.name)}</b>: v{self.parent_version} → v{self.version} "
            f"<code>{esc(self.fingerprint)}</code> (parent <code>{esc(self.parent)}</code>)"
            f"<div>rows: {splits}</div>{warn}"
            f"<table><tr><th>rule</th><th>removed</th><th>changed</th><th>what</th></tr>"
            f"{rows}</table></div>"
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/plain": str(self), "text/html": self._repr_html_()}


def apply_label_map(
    labels: list, names: list[str], plan: tuple[list[int], list[str]], *, split: str, rule: RuleResult
) -> list[int]:
    """Relabel one split with a plan from :func:`plan_label_map`; missing labels stay ``-1``.

    Args:
        labels: label ids of the split (``-1`` or ``None`` = missing); ``names`` their names.
        rule: the ``label_map`` result to count changed rows in (with examples) and to describe
            the whole map in.

    Returns:
        the new label ids.
    """
    new_id, new_names = plan
    mapped = [new_id[x] if x is not None and x >= 0 else -1 for x in labels]
    changed = [
        i
        for i, (a, b) in enumerate(zip(labels, mapped))
        if a is not None and a >= 0 and (a != b or names[a] != new_names[b])
    ]
    rule.changed += len(changed)
    for i in changed[: MAX_EXAMPLES - len(rule.examples)]:
        rule.examples.append(
            {
                "split": split,
                "row": i,
                "before": f"{names[labels[i]]} ({labels[i]})",
                "after": f"{new_names[mapped[i]]} ({mapped[i]})",
            }
        )
    rule.detail = {"map": ", ".join(f"{a}->{new_names[new_id[i]]}({new_id[i]})" for i, a in enumerate(names))}
    return mapped


def clean_split(
    texts: list,
    labels: list | None,
    *,
    split: str,
    rules: list[RuleResult],
    strip: bool,
    normalize: bool,
    drop_empty: bool,
    min_chars: int | None,
    max_chars: int | None,
    dedupe: bool,
) -> tuple[list[int], list]:
    """Apply the text rules to one split's columns.

    Args:
        texts: the text column (``str`` or ``None``), ``N`` rows.
        labels: label ids (``-1`` = missing) or ``None`` when unlabelled.
        rules: results to add to (created by the caller in rule order, matched by name).

    Returns:
        ``(kept row indices into the input, new texts for those rows)``.
    """
    c = _SplitCleaner(texts, labels, split, rules)
    if strip:
        c.count_tags()
        c.change("strip_html", strip_html)
    if normalize:
        c.change("normalize_whitespace", normalize_whitespace)
    if drop_empty:
        c.remove("drop_empty", c.empty_reason)
    if min_chars is not None:
        c.remove(
            "min_chars",
            lambda i: (
                f"shorter than {min_chars} chars" if c.texts[i] is not None and len(c.texts[i]) < min_chars else None
            ),
        )
    if max_chars is not None:
        c.remove(
            "max_chars",
            lambda i: (
                f"longer than {max_chars} chars" if c.texts[i] is not None and len(c.texts[i]) > max_chars else None
            ),
        )
    if dedupe:
        c.dedupe()
    return c.keep, [c.texts[i] for i in c.keep]


class _SplitCleaner:
    """One split's texts while :func:`clean_split` runs: ``texts`` (changed in place), ``keep``
    (the row indices still kept), and the :class:`RuleResult` of each rule (``by``)."""

    def __init__(self, texts: list, labels: list | None, split: str, rules: list[RuleResult]):
        self.texts, self.labels, self.split = list(texts), labels, split
        self.by = {r.rule: r for r in rules}
        self.keep = list(range(len(self.texts)))

    def change(self, rule: str, fn) -> None:
        """Rewrite every text with ``fn``, counting (and keeping examples of) the ones it changed."""
        r, texts = self.by[rule], self.texts
        for i, t in enumerate(texts):
            if t is None:
                continue
            new = fn(t)
            if new != t:
                r.changed += 1
                if len(r.examples) < MAX_EXAMPLES:
                    r.examples.append({"split": self.split, "row": i, "before": t, "after": new})
                texts[i] = new

    def count_tags(self) -> None:
        """Add ``rows with <tag>`` counts to the strip_html rule's detail (most frequent first)."""
        tags: dict[str, int] = {}
        for t in self.texts:
            if t is not None and "<" in t:
                for k in {tag_key(m) for m in TAG_RE.finditer(t)}:
                    tags[k] = tags.get(k, 0) + 1
        detail = self.by["strip_html"].detail
        for k, v in sorted(tags.items(), key=lambda kv: -kv[1]):
            detail[f"rows with {k}"] = detail.get(f"rows with {k}", 0) + v

    def remove(self, rule: str, reason_of, tally: bool = True) -> None:
        """Drop the kept rows for which ``reason_of(i)`` gives a reason (tallied by reason)."""
        r = self.by[rule]
        kept = []
        for i in self.keep:
            reason = reason_of(i)
            if reason:
                r.removed += 1
                if tally:
                    r.detail[reason] = r.detail.get(reason, 0) + 1
                if len(r.examples) < MAX_EXAMPLES:
                    r.examples.append({"split": self.split, "row": i, "reason": reason, "text": self.texts[i]})
            else:
                kept.append(i)
        self.keep = kept

    def empty_reason(self, i: int) -> str | None:
        t, labels = self.texts[i], self.labels
        if t is None:
            return "missing text"
        if not t.strip():
            return "blank text"
        if labels is not None and labels[i] is not None and labels[i] < 0:
            return "missing label"
        return None

    def dedupe(self) -> None:
        """Drop exact copies of an earlier kept text (the first is kept); count the texts with
        copies and, when labelled, those whose copies disagree on the label."""
        texts, labels, keep, detail = self.texts, self.labels, self.keep, self.by["dedupe"].detail
        first: dict[str, int] = {}
        for i in keep:
            if texts[i] is not None:
                first.setdefault(texts[i], i)
        groups: dict[str, set] = {}
        if labels is not None:
            for i in keep:
                t = texts[i]
                if t is not None:
                    groups.setdefault(t, set()).add(labels[i])
        conflicting = sum(1 for t, ls in groups.items() if len(ls) > 1)
        detail["texts with copies"] = detail.get("texts with copies", 0) + len(
            {texts[i] for i in keep if texts[i] is not None and first[texts[i]] != i}
        )
        if labels is not None:
            detail["with conflicting labels (first kept)"] = (
                detail.get("with conflicting labels (first kept)", 0) + conflicting
            )
        self.remove(
            "dedupe",
            lambda i: f"copy of row {first[texts[i]]}" if texts[i] is not None and first[texts[i]] != i else None,
            tally=False,
        )


def check_clean_args(min_chars, max_chars) -> None:
    """Raise :class:`UsageError` for negative or crossed ``min_chars``/``max_chars``."""
    for n, v in (("min_chars", min_chars), ("max_chars", max_chars)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise UsageError(
                f"{opt(n, v)} is not allowed: a number of characters is a whole number >= 0; e.g. {opt(n, 20)}"
            )
    if min_chars is not None and max_chars is not None and min_chars > max_chars:
        raise UsageError(f"{opt('min_chars', min_chars)} is above {opt('max_chars', max_chars)}; swap them")
