"""The dataset inspector: statistics, a static HTML report and an ipywidgets view.

:func:`inspect_version` computes everything once (one pass over the text column, plus one
tokenizer call when a tokenizer is given); :class:`DataReport` renders it as text/plain +
text/html (``_repr_mimebundle_``: works in saved notebooks, nbconvert and terminals) and as an
interactive widget (:meth:`DataReport.widget`). Plots are drawn with matplotlib's object API
(``matplotlib.figure.Figure``, no pyplot state) into PNGs.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cleaning import find_markup
from .sources import column

PAGE_SIZE = 10  # rows per page in the widget table
EXAMPLES = 5  # rows shown in the static report
CELL_CHARS = 200  # characters of a text cell shown in tables
HIST_BINS = 30


@dataclass
class LengthStats:
    """Lengths of the text column: ``unit`` ``"chars"`` or ``"tokens"``; ``counts``/``edges``
    the histogram (``numpy.histogram``, ``len(edges) == len(counts) + 1``); ``truncated`` the
    share (0..1) of texts longer than ``max_length`` tokens (tokens only)."""

    unit: str
    n: int
    min: int
    median: float
    mean: float
    p95: float
    max: int
    counts: list
    edges: list
    max_length: int | None = None
    truncated: float | None = None

    @classmethod
    def of(cls, lengths: np.ndarray, unit: str, max_length: int | None = None) -> "LengthStats":
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size == 0:
            return cls(unit, 0, 0, 0.0, 0.0, 0.0, 0, [], [])
        counts, edges = np.histogram(lengths, bins=HIST_BINS)
        trunc = float((lengths > max_length).mean()) if max_length else None
        return cls(
            unit,
            int(lengths.size),
            int(lengths.min()),
            float(np.median(lengths)),
            float(lengths.mean()),
            float(np.percentile(lengths, 95)),
            int(lengths.max()),
            counts.tolist(),
            edges.tolist(),
            max_length,
            trunc,
        )

    def line(self) -> str:
        s = (
            f"{self.unit}: min {self.min:,}, median {self.median:,.0f}, mean {self.mean:,.1f}, "
            f"p95 {self.p95:,.0f}, max {self.max:,}"
        )
        if self.truncated is not None:
            s += f"; {self.truncated:.1%} longer than max_length={self.max_length}"
        return s


@dataclass
class DataReport:
    """What :meth:`DataStore.show` returns.

    Attributes (counts are over all splits together unless named per split):
        name, version, fingerprint: which dataset version;
        rows: ``{split: rows}``; schema: ``[(column, feature, role)]``;
        label_counts: ``{split: {label name: rows}}`` (``"(missing)"`` for ``-1``);
        missing: rows whose text is missing; blank: whitespace-only (``""`` included);
        duplicates: extra copies of a text (rows minus distinct texts, missing excluded);
        duplicate_texts: distinct texts that appear more than once;
        conflicting: distinct texts that appear with more than one label;
        conflicting_rows: rows carrying those texts;
        overlap: ``{split: rows whose text also appears in train}`` for the non-train splits;
        markup: ``{markup: rows containing it}``, e.g. ``{"<br />": 14665}``;
        chars, tokens: :class:`LengthStats` (tokens only with a tokenizer);
        examples: the first rows of the first split.
    """

    name: str
    version: int
    fingerprint: str
    text_column: str
    label_column: str | None
    rows: dict
    schema: list
    label_counts: dict
    missing: int
    blank: int
    duplicates: int
    duplicate_texts: int
    conflicting: int
    conflicting_rows: int
    overlap: dict
    markup: dict
    chars: LengthStats
    tokens: LengthStats | None
    examples: list
    _version_obj: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ text
    def __str__(self) -> str:
        rows = ", ".join(f"{s} {n:,}" for s, n in self.rows.items())
        lines = [
            f"{self.name} v{self.version} ({self.fingerprint}): {sum(self.rows.values()):,} rows ({rows})",
            "columns: " + ", ".join(f"{c} [{f}{', ' + r if r else ''}]" for c, f, r in self.schema),
        ]
        for s, counts in self.label_counts.items():
            lines.append(f"labels {s}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        lines.append(
            f"text '{self.text_column}': {self.missing:,} missing, {self.blank:,} blank, "
            f"{self.duplicates:,} duplicate rows ({self.duplicate_texts:,} texts), "
            f"{self.conflicting:,} texts with conflicting labels ({self.conflicting_rows:,} rows)"
        )
        for s, n in self.overlap.items():
            lines.append(f"{s}: {n:,} rows whose text is also in train")
        if self.markup:
            lines.append("markup: " + ", ".join(f"{k} in {v:,} rows" for k, v in self.markup.items()))
        lines.append("lengths " + self.chars.line())
        if self.tokens:
            lines.append("lengths " + self.tokens.line())
        for ex in self.examples:
            text = ex["text"] if ex["text"] is None or len(ex["text"]) <= 100 else ex["text"][:99] + "…"
            lines.append(f"  [{ex['row']}] {ex.get('label', '')!s:>10}  {text!r}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ html
    def _quality_html(self) -> str:
        esc = html.escape
        items = [
            (
                "rows",
                f"{sum(self.rows.values()):,} (" + ", ".join(f"{esc(s)} {n:,}" for s, n in self.rows.items()) + ")",
            ),
            ("missing text", f"{self.missing:,}"),
            ("blank text", f"{self.blank:,}"),
            ("duplicate rows", f"{self.duplicates:,} ({self.duplicate_texts:,} texts)"),
            ("conflicting labels", f"{self.conflicting:,} texts ({self.conflicting_rows:,} rows)"),
        ]
        items += [(f"{esc(s)} rows also in train", f"{n:,}") for s, n in self.overlap.items()]
        items.append(
            ("markup", ", ".join(f"<code>{esc(k)}</code> in {v:,} rows" for k, v in self.markup.items()) or "none")
        )
        items.append(("length", esc(self.chars.line())))
        if self.tokens:
            items.append(("tokens", esc(self.tokens.line())))
        rows = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{v}</td></tr>" for k, v in items
        )
        schema = "".join(
            f"<tr><td><code>{esc(c)}</code></td><td>{esc(f)}</td><td>{esc(r)}</td></tr>" for c, f, r in self.schema
        )
        return (
            f"<table>{rows}</table><details><summary>schema</summary><table><tr><th>column</th>"
            f"<th>feature</th><th>role</th></tr>{schema}</table></details>"
        )

    def _repr_html_(self) -> str:
        esc = html.escape
        head = (
            f"<div><b>{esc(self.name)}</b> v{self.version} <code>{esc(self.fingerprint)}</code> "
            f"— text <code>{esc(self.text_column)}</code>"
            + (f", label <code>{esc(self.label_column)}</code>" if self.label_column else "")
            + "</div>"
        )
        imgs = "".join(
            f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'/>"
            for png in (self.label_png(), self.length_png())
            if png
        )
        return (
            f"<div class='llmos-data-report'>{head}{self._quality_html()}<div>{imgs}</div>"
            f"{rows_table_html(self.examples, self.label_column is not None)}</div>"
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/plain": str(self), "text/html": self._repr_html_()}

    # ------------------------------------------------------------------ plots
    def label_png(self) -> bytes | None:
        """Bar chart of label counts per split as PNG bytes (``None`` when unlabelled)."""
        if not self.label_counts:
            return None
        from matplotlib.figure import Figure

        names = list(dict.fromkeys(k for c in self.label_counts.values() for k in c))
        fig = Figure(figsize=(4.2, 2.6), dpi=90)
        ax = fig.subplots()
        width = 0.8 / len(self.label_counts)
        x = np.arange(len(names))
        for j, (s, counts) in enumerate(self.label_counts.items()):
            ax.bar(x + j * width, [counts.get(n, 0) for n in names], width, label=s)
        ax.set_xticks(x + width * (len(self.label_counts) - 1) / 2, names, rotation=30 if len(names) > 4 else 0)
        ax.set_ylabel("rows")
        ax.set_title("labels")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return _png(fig)

    def length_png(self) -> bytes | None:
        """Histogram of text lengths (characters, and tokens when measured) as PNG bytes."""
        stats = [s for s in (self.chars, self.tokens) if s and s.n]
        if not stats:
            return None
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.2 * len(stats), 2.6), dpi=90)
        axes = np.atleast_1d(fig.subplots(1, len(stats)))
        for ax, s in zip(axes, stats):
            ax.stairs(s.counts, s.edges, fill=True)
            ax.set_xlabel(s.unit)
            ax.set_ylabel("rows")
            title = f"length ({s.unit})"
            if s.truncated is not None:
                ax.axvline(s.max_length, color="crimson", lw=1)
                title += f": {s.truncated:.1%} > {s.max_length}"
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        return _png(fig)

    # ------------------------------------------------------------------ widget
    def widget(self):
        """An ipywidgets inspector: a paginated table (split chooser, ``PAGE_SIZE`` rows a page),
        the schema and quality counts, the label bar chart and the length histograms.

        Raises:
            LLMOSError: ipywidgets is not installed (the static report still works).
        """
        try:
            import ipywidgets as w
        except ImportError:
            from ..errors import LLMOSError

            raise LLMOSError(
                "ipywidgets is not installed; display the report itself for the "
                "static HTML view, or `pip install ipywidgets`"
            ) from None
        version = self._version_obj
        splits = list(self.rows)
        split = w.Dropdown(options=splits, value=splits[0], description="split", layout=w.Layout(width="220px"))
        prev, nxt = (
            w.Button(description="◀", layout=w.Layout(width="40px")),
            w.Button(description="▶", layout=w.Layout(width="40px")),
        )
        page = w.BoundedIntText(value=1, min=1, max=1, description="page", layout=w.Layout(width="150px"))
        total = w.Label()
        table = w.HTML()
        labelled = self.label_column is not None

        def render(*_):
            n = self.rows[split.value]
            pages = max(1, -(-n // PAGE_SIZE))
            page.max = pages
            start = (page.value - 1) * PAGE_SIZE
            table.value = rows_table_html(page_rows(version, split.value, start, PAGE_SIZE), labelled)
            total.value = f"of {pages:,} ({n:,} rows)"

        def move(step):
            page.value = min(max(1, page.value + step), page.max)

        prev.on_click(lambda _: move(-1))
        nxt.on_click(lambda _: move(1))
        split.observe(lambda ch: (setattr(page, "value", 1), render()), names="value")
        page.observe(render, names="value")
        render()
        rows_tab = w.VBox([w.HBox([split, prev, page, nxt, total]), table])
        tabs = [rows_tab, w.HTML(self._quality_html())]
        titles = ["rows", "schema & quality"]
        for title, png in (("labels", self.label_png()), ("lengths", self.length_png())):
            if png:
                tabs.append(w.Image(value=png, format="png"))
                titles.append(title)
        tab = w.Tab(children=tabs)
        for i, t in enumerate(titles):
            tab.set_title(i, t)
        head = w.HTML(f"<b>{html.escape(self.name)}</b> v{self.version} <code>{html.escape(self.fingerprint)}</code>")
        return _inspector_class(w)([head, tab], report=self)


_INSPECTOR = None


def _inspector_class(w):
    """A ``VBox`` whose display bundle also carries the static report (text/plain + text/html),
    so a saved notebook or a renderer without widget state still shows the inspector's content."""
    global _INSPECTOR
    if _INSPECTOR is None:

        class DataInspector(w.VBox):
            def __init__(self, children, report):
                super().__init__(children)
                self._report = report

            def _repr_mimebundle_(self, **kwargs):
                data = super()._repr_mimebundle_(**kwargs) or {}
                data["text/plain"] = str(self._report)
                data["text/html"] = self._report._repr_html_()
                return data

        _INSPECTOR = DataInspector
    return _INSPECTOR


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _cell(text: Any) -> str:
    if text is None:
        return "<i style='color:#888'>missing</i>"
    s = str(text)
    if not s.strip():
        return f"<i style='color:#888'>blank {html.escape(repr(s))}</i>"
    short = s if len(s) <= CELL_CHARS else s[: CELL_CHARS - 1] + "…"
    return html.escape(short)


def rows_table_html(rows: list[dict], labelled: bool) -> str:
    """An HTML table of rows (``{"row", "text", "label"?}``); markup in texts is shown escaped."""
    head = "<tr><th>row</th><th style='text-align:left'>text</th>" + ("<th>label</th>" if labelled else "") + "</tr>"
    body = "".join(
        f"<tr><td>{r['row']}</td><td style='text-align:left;white-space:normal'>{_cell(r['text'])}</td>"
        + (f"<td>{html.escape(str(r.get('label')))}</td>" if labelled else "")
        + "</tr>"
        for r in rows
    )
    return f"<table class='llmos-rows'>{head}{body}</table>"


def page_rows(version, split: str, start: int, n: int) -> list[dict]:
    """Rows ``start..start+n`` of ``split`` as ``{"row", "text", "label"}`` (label as its name)."""
    ds = version.splits[split]
    batch = ds[start : start + n]
    out = []
    names = version.label_names
    for j, text in enumerate(batch[version.text_column]):
        r = {"row": start + j, "text": text}
        if version.label_column:
            v = batch[version.label_column][j]
            r["label"] = ("(missing)" if v is None or (names and v < 0) else names[v]) if names else v
        out.append(r)
    return out


def inspect_version(version, *, tokenizer=None, max_length: int | None = None) -> DataReport:
    """Compute a :class:`DataReport` for a :class:`~llmos_jupyter.data.store.DatasetVersion`.

    Args:
        version: the dataset version.
        tokenizer: optional; when given, token lengths (special tokens included, no truncation)
            are measured for every row (missing text counts as ``""``; never raises on a
            non-string cell).
        max_length: tokens; with a tokenizer, the share of rows longer than this is reported
            (default: the tokenizer's ``model_max_length`` when it is below 100,000).
    """
    tc, lc = version.text_column, version.label_column
    rows = {s: len(ds) for s, ds in version.splits.items()}
    roles = {
        tc: "text",
        lc: "label",
        getattr(version, "prompt_column", None): "prompt",
        getattr(version, "response_column", None): "response",
    }
    first = next(iter(version.splits.values()))
    schema = [(c, _feature_str(f), roles.get(c, "")) for c, f in first.features.items()]

    texts_by_split = {s: column(ds, tc) for s, ds in version.splits.items()}
    labels_by_split = {s: column(ds, lc) for s, ds in version.splits.items()} if lc else {}
    label_counts = _label_counts(labels_by_split, version.label_names) if lc else {}
    all_texts = [t for s in version.splits for t in texts_by_split[s]]
    all_labels = [v for s in version.splits for v in labels_by_split.get(s, [])] if lc else None
    missing = sum(t is None for t in all_texts)
    blank = sum(1 for t in all_texts if t is not None and not t.strip())
    duplicates, duplicate_texts, conflicting, conflicting_rows = _duplicates(all_texts, all_labels)
    overlap = {}
    if "train" in texts_by_split and len(texts_by_split) > 1:
        train = {t for t in texts_by_split["train"] if t is not None}
        for s, ts in texts_by_split.items():
            if s != "train":
                overlap[s] = sum(1 for t in ts if t is not None and t in train)
    chars = LengthStats.of(np.array([len(t) for t in all_texts if t is not None], dtype=np.int64), "chars")
    tokens = _token_lengths(tokenizer, all_texts, max_length) if tokenizer is not None else None
    examples = page_rows(version, next(iter(version.splits)), 0, EXAMPLES)
    return DataReport(
        version.name,
        version.version,
        version.fingerprint,
        tc,
        lc,
        rows,
        schema,
        label_counts,
        missing,
        blank,
        duplicates,
        duplicate_texts,
        conflicting,
        conflicting_rows,
        overlap,
        _markup_counts(all_texts),
        chars,
        tokens,
        examples,
        version,
    )


def _label_counts(labels_by_split: dict[str, list], names: list[str] | None) -> dict[str, dict[str, int]]:
    """Rows per class name in each split (``(missing)`` for ids below 0); empty for a regression
    target (no class names)."""
    if not names:
        return {}
    out = {}
    for s, labels in labels_by_split.items():
        arr = np.asarray(labels, dtype=np.int64)
        counts = {n: int((arr == i).sum()) for i, n in enumerate(names)}
        if (arr < 0).any():
            counts["(missing)"] = int((arr < 0).sum())
        out[s] = counts
    return out


def _duplicates(texts: list, labels: list | None) -> tuple[int, int, int, int]:
    """``(duplicate rows, texts with copies, texts whose copies disagree on the label, rows of
    those texts)`` over every split; missing texts are not counted."""
    seen: dict[str, int] = {}
    label_sets: dict[str, set] = {}
    for i, t in enumerate(texts):
        if t is None:
            continue
        seen[t] = seen.get(t, 0) + 1
        if labels is not None:
            label_sets.setdefault(t, set()).add(labels[i])
    present = sum(t is not None for t in texts)
    conflicted = [t for t, ls in label_sets.items() if len(ls) > 1]
    return (
        present - len(seen),
        sum(1 for c in seen.values() if c > 1),
        len(conflicted),
        sum(seen[t] for t in conflicted),
    )


def _markup_counts(texts: list) -> dict[str, int]:
    """Rows holding each kind of HTML markup (:func:`.cleaning.find_markup`), most frequent first."""
    markup: dict[str, int] = {}
    for t in texts:
        if t is not None and ("<" in t or "&" in t):
            for k in find_markup(t):
                markup[k] = markup.get(k, 0) + 1
    return dict(sorted(markup.items(), key=lambda kv: (-kv[1], kv[0])))


def _token_lengths(tokenizer, texts: list, max_length: int | None) -> LengthStats:
    """Token lengths of every text (special tokens in, no truncation; a missing text counts as
    ``""``); ``max_length`` defaults to the tokenizer's ``model_max_length`` below 100,000."""
    from ..models.embedding import as_text

    if max_length is None:
        mml = getattr(tokenizer, "model_max_length", None)
        max_length = int(mml) if mml and mml < 100_000 else None
    enc = tokenizer(
        [as_text(t) for t in texts], add_special_tokens=True, truncation=False, padding=False, verbose=False
    )
    return LengthStats.of(np.array([len(x) for x in enc["input_ids"]], dtype=np.int64), "tokens", max_length)


def _feature_str(f) -> str:
    if type(f).__name__ == "ClassLabel":
        return f"ClassLabel({', '.join(f.names)})"
    if type(f).__name__ == "Value":
        return f.dtype
    return type(f).__name__
