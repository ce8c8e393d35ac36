"""Nearest-row search over a dataset's text column, with an on-disk embedding cache.

Each split is embedded once per ``(split fingerprint, text column, model_key, max_length)``
with :func:`llmos_jupyter.models.embedding.embed` (normalised mean pooling), and the
``(rows, D)`` float32 matrix is saved as ``<cache>/<key>.npy`` (written to a temporary file and
renamed, so a crash never leaves a half file that looks complete). A split that cleaning left
untouched keeps its fingerprint, so its vectors are reused by the next version too. Scores are
cosine similarities (dot products of unit vectors), in ``[-1, 1]``.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def cache_key(split_fingerprint: str, text_column: str, model_key: str, max_length: int) -> str:
    """sha256 (first 32 hex) of what determines a split's vectors."""
    raw = json.dumps([split_fingerprint, text_column, model_key, int(max_length), "mean-normalized"])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


class EmbeddingCache:
    """``(N, D)`` float32 matrices on disk under ``root``, keyed by :func:`cache_key`.

    ``embedded_rows`` counts rows this object embedded (a cache hit adds nothing): the observable
    proof that a second search did not re-embed.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.embedded_rows = 0
        self._memory: dict[str, np.ndarray] = {}

    def get(self, key: str, rows: int) -> np.ndarray | None:
        """The cached matrix for ``key`` when it has ``rows`` rows, else ``None``."""
        if key in self._memory and len(self._memory[key]) == rows:
            return self._memory[key]
        path = self.root / f"{key}.npy"
        if not path.is_file():
            return None
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            return None  # unreadable: recompute and overwrite
        if arr.ndim != 2 or len(arr) != rows or arr.dtype != np.float32:
            return None
        self._memory[key] = arr
        return arr

    def put(self, key: str, arr: np.ndarray, meta: dict) -> None:
        """Store ``arr`` (atomically) with a small JSON sidecar describing it."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}-", suffix=".npy", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(arr, dtype=np.float32))
            os.replace(tmp, self.root / f"{key}.npy")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        (self.root / f"{key}.json").write_text(json.dumps(meta))
        self._memory[key] = arr


@dataclass
class SearchResult:
    """The ``k`` nearest rows to ``query``.

    Attributes:
        query, name, version, fingerprint, model_key: what was searched;
        rows: ``[{"rank", "score", "split", "row", "text", "label"}]`` best first (``score`` is
            the cosine similarity; ``label`` the label name, absent when unlabelled);
        cached: True when no row of the dataset had to be embedded for this search (only the
            query was); embedded_rows: rows embedded by this search (0 when cached).
    """

    query: str
    name: str
    version: int
    fingerprint: str
    model_key: str
    rows: list = field(default_factory=list)
    cached: bool = False
    embedded_rows: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    @property
    def labels(self) -> list:
        """Label names of the rows, best first."""
        return [r.get("label") for r in self.rows]

    def __str__(self) -> str:
        how = "cached vectors" if self.cached else f"embedded {self.embedded_rows:,} rows"
        lines = [f"search {self.name} v{self.version} for {self.query!r} with {self.model_key} ({how})"]
        for r in self.rows:
            text = r["text"] if r["text"] is None or len(r["text"]) <= 100 else r["text"][:99] + "…"
            label = f" [{r['label']}]" if "label" in r else ""
            lines.append(f"{r['rank']:>3}. {r['score']:.3f} {r['split']}[{r['row']}]{label} {text}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        labelled = any("label" in r for r in self.rows)
        body = "".join(
            f"<tr><td>{r['rank']}</td><td>{r['score']:.3f}</td><td>{esc(r['split'])}[{r['row']}]</td>"
            + (f"<td>{esc(str(r.get('label', '')))}</td>" if labelled else "")
            + f"<td style='text-align:left;white-space:normal'>{esc(str(r['text']))[:400]}</td></tr>"
            for r in self.rows
        )
        how = "cached vectors" if self.cached else f"embedded {self.embedded_rows:,} rows"
        return (
            f"<div><b>{esc(self.name)}</b> v{self.version} — “{esc(self.query)}” "
            f"<small>({esc(self.model_key)}, {how})</small><table><tr><th>#</th><th>score</th>"
            f"<th>row</th>{'<th>label</th>' if labelled else ''}<th>text</th></tr>{body}</table></div>"
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/plain": str(self), "text/html": self._repr_html_()}


def search_version(
    version,
    query: str,
    *,
    k: int,
    model,
    tokenizer,
    model_key: str,
    cache: EmbeddingCache,
    splits: list[str] | None = None,
    batch_size: int = 64,
    max_length: int = 256,
) -> SearchResult:
    """Search ``version``'s text column; see :meth:`DataStore.search` for the arguments."""
    from ..models.embedding import embed
    from .sources import column

    tc, lc, names = version.text_column, version.label_column, version.label_names
    before = cache.embedded_rows
    mats, where = [], []
    for s in splits or list(version.splits):
        ds = version.splits[s]
        key = cache_key(ds._fingerprint, tc, model_key, max_length)
        mat = cache.get(key, len(ds))
        if mat is None:
            mat = embed(model, tokenizer, column(ds, tc), batch_size=batch_size, max_length=max_length)
            cache.embedded_rows += len(ds)
            cache.put(
                key,
                mat,
                {
                    "split_fingerprint": ds._fingerprint,
                    "text_column": tc,
                    "model_key": model_key,
                    "max_length": max_length,
                    "rows": len(ds),
                    "dim": int(mat.shape[1]),
                    "dataset": version.name,
                    "version": version.version,
                    "split": s,
                },
            )
        mats.append(mat)
        where.append((s, len(ds)))
    q = embed(model, tokenizer, [query], max_length=max_length)[0]  # (D,)
    scores = np.concatenate([np.asarray(m) @ q for m in mats])  # (rows,)
    k = min(int(k), len(scores))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.lexsort((top, -scores[top]))]  # by score, ties by position
    offsets = np.cumsum([0] + [n for _, n in where])
    rows = []
    for rank, gi in enumerate(top, start=1):
        si = int(np.searchsorted(offsets, gi, side="right") - 1)
        split, row = where[si][0], int(gi - offsets[si])
        rec = version.splits[split][row]
        r = {"rank": rank, "score": float(scores[gi]), "split": split, "row": row, "text": rec[tc]}
        if lc:
            v = rec[lc]
            r["label"] = (names[v] if v is not None and v >= 0 else "(missing)") if names else v
        rows.append(r)
    embedded = cache.embedded_rows - before
    return SearchResult(
        query,
        version.name,
        version.version,
        version.fingerprint,
        model_key,
        rows,
        cached=embedded == 0,
        embedded_rows=embedded,
    )
