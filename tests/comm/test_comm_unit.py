"""In-process checks of llmos_jupyter.comm that need no kernel."""

from __future__ import annotations

import json
import math
from pathlib import Path

from llmos_jupyter import comm

ROOT = Path(__file__).resolve().parents[2]


def test_register_is_a_no_op_without_a_kernel():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    assert comm.register(shell) is False
    assert comm.register(shell) is False
    assert comm.open_comms() == 0


def test_register_is_idempotent_on_one_comm_manager():
    calls = []

    class Manager:
        def register_target(self, name, f):
            calls.append(name)

    class Kernel:
        comm_manager = Manager()

    class Shell:
        kernel = Kernel()

    shell = Shell()
    assert comm.register(shell) and comm.register(shell) and comm.register(shell)
    assert calls == ["llmos"]
    comm._hub.manager = None


def test_jsonable_makes_plain_json():
    class Scalar:
        def item(self):
            return 3

    out = comm.jsonable({"a": (1, float("inf")), 2: {Scalar()}, "n": math.nan, "o": object})
    json.dumps(out, allow_nan=False)
    assert out["a"] == [1, None] and out["2"] == [3] and out["n"] is None
    assert out["o"].startswith("<class")


def test_package_json_version_matches_the_python_package():
    from llmos_jupyter._version import __version__

    pkg = json.loads((ROOT / "labextension" / "package.json").read_text())
    assert pkg["version"] == __version__
