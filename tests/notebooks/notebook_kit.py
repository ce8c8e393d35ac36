"""Executing the walkthrough notebooks headless, each in a real kernel (nbclient); the fixture
``notebook`` (conftest.py next to this file) wraps it.

* :func:`execute_notebook` runs ``notebooks/NAME`` top to bottom and returns an :class:`Executed`:
  the notebook with its outputs, its stream lines, its ``RESULT …`` lines and any error outputs.

Each notebook gets an ``LLMOS_HOME`` of its own (``home_kit.linked_home``), so its datasets, runs
and checkpoints never touch the shared test home.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


@dataclass
class Executed:
    """An executed notebook: ``nb`` (nbformat node) and ``home`` (the ``LLMOS_HOME`` it ran with)."""

    nb: Any
    home: Path

    def outputs(self, kind: str) -> str:
        """Joined outputs of one kind: ``stdout``, ``stderr``, ``stream`` (both) or a MIME type."""
        out = []
        for cell in self.nb.cells:
            for o in cell.get("outputs", []):
                if o.get("output_type") == "stream" and kind in ("stream", o.get("name")):
                    out.append(o.get("text", ""))
                elif "data" in o and kind in o["data"]:
                    out.append(o["data"][kind])
        return "\n".join(out)

    @property
    def lines(self) -> list[str]:
        """Every stream line (stdout and stderr), in cell order."""
        return self.outputs("stream").splitlines()

    @property
    def results(self) -> str:
        """The ``RESULT …`` lines the notebook printed, joined by newlines."""
        return "\n".join(line for line in self.lines if line.startswith("RESULT"))

    @property
    def errors(self) -> list:
        """Error outputs (a cell that raised)."""
        return [o for c in self.nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]

    def cell_outputs(self, source_start: str) -> list:
        """Outputs of the code cells whose source starts with ``source_start``."""
        return [o for c in self.nb.cells if c.cell_type == "code" and c.source.startswith(source_start)
                for o in c.get("outputs", [])]


def execute_notebook(name: str, *, env: dict | None = None, drop: tuple = (), save_to: Path | None = None,
                     timeout: int = 1200) -> Executed:
    """Run ``notebooks/NAME`` in a fresh ``python3`` kernel whose environment is this process's,
    plus ``env``, minus the names in ``drop``; the working directory is ``notebooks/``."""
    import nbformat
    from nbclient import NotebookClient

    kernel_env = {k: v for k, v in os.environ.items() if k not in drop}
    kernel_env.update({k: str(v) for k, v in (env or {}).items()})
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute(env=kernel_env)
    if save_to is not None:
        nbformat.write(nb, save_to)
    return Executed(nb, Path(kernel_env["LLMOS_HOME"]))

