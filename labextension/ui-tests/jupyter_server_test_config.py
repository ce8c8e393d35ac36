"""Jupyter Server configuration for the galata UI tests (never for real use: no token, no XSRF).

Started by ``run.sh``: ``jupyter lab --config jupyter_server_test_config.py``. Listens on
127.0.0.1 only; the port comes from ``LLMOS_UI_PORT`` (default 8888).
"""
import os

from jupyterlab.galata import configure_jupyter_server

configure_jupyter_server(c)  # noqa: F821 - `c` is the config object Jupyter passes in

c.ServerApp.ip = "127.0.0.1"  # noqa: F821
c.ServerApp.port = int(os.environ.get("LLMOS_UI_PORT", "8888"))  # noqa: F821
c.ServerApp.allow_root = True  # noqa: F821 - CI runs as root
c.LabApp.news_url = None  # noqa: F821 - no network look-ups
c.LabServerApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"  # noqa: F821
