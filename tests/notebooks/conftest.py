"""Fixture ``notebook``: ``notebook(NAME, **env) -> Executed`` runs ``notebooks/NAME`` in a fresh
kernel with its own linked ``LLMOS_HOME`` under ``tmp_path``; ``env`` goes to the kernel.
The runner itself is :mod:`notebook_kit`."""
from __future__ import annotations

import pytest
from home_kit import linked_home
from notebook_kit import Executed, execute_notebook


@pytest.fixture
def notebook(pulled, tmp_path):
    """``notebook(NAME, **env) -> Executed`` in a linked home of its own (see the module docstring)."""
    def run(name: str, **env) -> Executed:
        return execute_notebook(name, env={"LLMOS_HOME": str(linked_home(tmp_path)), **env}, save_to=tmp_path / name)

    return run
