"""Fixtures of the hostile-input tests (helpers: ``hostile_kit.py``)."""

from __future__ import annotations

import pytest
from hostile_kit import Kernel


@pytest.fixture
def kernel_factory(tmp_path):
    """Start real kernels (LLMOS_HOME in tmp_path); all are shut down at the end of the test."""
    pytest.importorskip("jupyter_client")
    made = []

    def make(**env):
        k = Kernel(tmp_path / "home", env)
        made.append(k)
        return k

    yield make
    for k in made:
        k.close()


@pytest.fixture
def shell(fresh_api):
    """An ``InteractiveShell`` with ``%llm`` loaded over a fresh API (LLMOS_HOME in tmp_path)."""
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "llmos_jupyter")
    ip.api = fresh_api
    return ip
