"""Background work that stays attached to the cell that started it.

ipykernel routes output by the *parent header* of the request being handled. A thread started
from a cell sees the last parent set from any thread, so its later output lands in whichever
cell runs then (C12). :func:`keep_output_parent` captures the starting cell's parent when the
function is wrapped and sets it as the *thread's own* parent inside the thread (ipykernel ≥ 6.?
``ZMQInteractiveShell.set_thread_parent``; older kernels fall back to the streams'
thread-local setters). See ``ipykernel/zmqshell.py`` and ``ipykernel/iostream.py``.
"""
from __future__ import annotations

import functools
import sys


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    ip = get_ipython()
    return ip if getattr(ip, "kernel", None) is not None else None


def current_parent():
    """The parent header of the running cell (``None`` outside ipykernel)."""
    ip = _shell()
    if ip is None:
        return None
    try:
        return ip.get_parent()
    except AttributeError:
        return getattr(ip, "parent_header", None)


def set_output_parent(parent) -> None:
    """Route this thread's stdout/stderr/display output to the cell of ``parent``.

    Only the calling thread is affected; the main thread's parent is left alone.
    """
    ip = _shell()
    if ip is None or not parent:
        return
    if hasattr(ip, "set_thread_parent"):
        ip.set_thread_parent(parent)
        return
    for obj in (sys.stdout, sys.stderr, getattr(ip, "display_pub", None), getattr(ip, "displayhook", None)):
        setter = getattr(obj, "set_thread_parent", None)
        if setter is not None:
            try:
                setter(parent)
            except Exception:
                pass


def keep_output_parent(fn):
    """Wrap ``fn`` (to be run in another thread) so its output goes to the cell that wrapped it."""
    parent = current_parent()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        set_output_parent(parent)
        return fn(*args, **kwargs)

    return wrapper
