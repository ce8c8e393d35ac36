"""Test homes: an ``LLMOS_HOME`` of a test's own that reuses what is already pulled.

The packaged catalog entries are pulled once per machine into the shared test home
(``<repo>/.llmos_home/test``, see ``conftest.py``); a test that changes state (fine-tunes,
registry rows, saved datasets) gets its own home under ``tmp_path`` whose ``models/`` and
``datasets/`` link those entries, so nothing is copied or re-downloaded and the shared home
stays as pulled.
"""

from __future__ import annotations

import os
from pathlib import Path


def linked_home(parent: Path) -> Path:
    """Create ``parent/home``, link each pulled entry of the shared ``LLMOS_HOME`` into its
    ``models/`` and ``datasets/`` (an entry counts as pulled when it has ``.llmos-pulled.json``),
    and return it. Raises ``FileExistsError`` when ``parent/home`` already exists."""
    shared = Path(os.environ["LLMOS_HOME"])
    home = parent / "home"
    for sub in ("models", "datasets"):
        (home / sub).mkdir(parents=True)
        for entry in sorted((shared / sub).glob("*")):
            if (entry / ".llmos-pulled.json").is_file():
                (home / sub / entry.name).symlink_to(entry)
    return home
