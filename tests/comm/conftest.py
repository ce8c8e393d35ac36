"""Fixtures for the side-panel protocol tests: a real ipykernel driven by jupyter_client.

``kernel`` is one kernel per module (started with this checkout on PYTHONPATH and its stderr in
a log file); ``panel`` gives each test a fresh ``FakeAPI`` provider in that kernel and a
:class:`comm_kernel.Client` that speaks the protocol like the JupyterLab panel does.
"""

from __future__ import annotations

import pytest

pytest.importorskip("jupyter_client")

from comm_kernel import start_kernel, stop_kernel  # noqa: E402


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    # Use the kernel of the Python running the tests, whatever kernelspecs the machine has.
    tmp = tmp_path_factory.mktemp("kernel")
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    client, log_file = start_kernel(tmp, NATIVE_KERNEL_NAME)
    client.run("import sys; assert sys.executable")  # warm up
    yield client
    stop_kernel(client, log_file)


SETUP = """
import comm_fake_api, importlib
from llmos_jupyter import comm as llmos_comm
fake = comm_fake_api.{cls}()
llmos_comm.set_provider(fake)
assert llmos_comm.register(get_ipython())
"""


@pytest.fixture
def panel(kernel):
    """A fresh FakeAPI in the module's kernel; closes this test's comms afterwards."""
    kernel.run(SETUP.format(cls="FakeAPI"))
    kernel.iopub.clear()
    kernel.log_mark = len(kernel.log_text())
    yield kernel
    for comm_id in list(kernel.comm_ids):
        kernel.close(comm_id)
    kernel.run(
        "import time\nfor _ in range(50):\n    if not llmos_comm.open_comms(): break\n"
        "    time.sleep(0.02)\nassert llmos_comm.open_comms() == 0"
    )
    kernel.pump(0.1)
