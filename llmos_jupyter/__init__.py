"""llmos-jupyter: an LLM operating system inside Jupyter.

``%load_ext llmos_jupyter`` registers the ``%llm`` magics (and the side panel's comm target when
running in a kernel). It imports neither torch nor transformers: those load on first use.
The Python API is :mod:`llmos_jupyter.api`.
"""

try:
    from ._version import __version__  # written by the build from labextension/package.json
except ImportError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython) -> None:
    """Register ``%llm``/``%%llm`` on ``ipython`` (called by ``%load_ext llmos_jupyter``)."""
    from .magics.magics import LLMMagics

    ipython.register_magics(LLMMagics)
    try:
        from . import comm
    except ImportError:
        return
    register = getattr(comm, "register", None)
    if register is not None:
        register(ipython)


def unload_ipython_extension(ipython) -> None:
    """Remove ``%llm`` and stop a running ``%llm serve`` server (models stay loaded until the
    kernel ends or ``api.unload``)."""
    import sys

    server = sys.modules.get("llmos_jupyter.serve.server")  # imported only if one was started
    if server is not None:
        server.stop()
    mm = ipython.magics_manager
    for kind in ("line", "cell"):
        mm.magics[kind].pop("llm", None)
