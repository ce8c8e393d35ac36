"""Where llmos keeps things: ``LLMOS_HOME`` (default ``~/.cache/llmos``).

Layout::

    $LLMOS_HOME/models/<catalog-name>/...     pulled weights
    $LLMOS_HOME/datasets/<name>/...           pulled files and saved dataset versions
    $LLMOS_HOME/runs.sqlite                   the run registry
    $LLMOS_HOME/checkpoints/<run-id>/...      checkpoints (safetensors) and manifests
    $LLMOS_HOME/cache/                        tokenisation and embedding caches
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Return ``LLMOS_HOME`` as an absolute path, creating it if needed."""
    p = Path(os.environ.get("LLMOS_HOME") or Path.home() / ".cache" / "llmos").expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def sub(*parts: str) -> Path:
    """Return ``LLMOS_HOME/<parts...>``, creating the directory."""
    p = home().joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p
