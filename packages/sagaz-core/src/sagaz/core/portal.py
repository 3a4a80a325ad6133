"""One background event loop per process for sync code (Flask, sync Django views).

Sync callers reach the async engine through :func:`run_sync`, which hands the
coroutine to a loop running in a daemon thread (an anyio blocking portal). The loop
is created lazily, once, and again in a child process after a fork (gunicorn's
workers), never per request; sagas started on it keep running after the call that
started them returns.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

__all__ = ["get_portal", "run_sync", "shutdown_portal"]

_T = TypeVar("_T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_portal_cm: AbstractContextManager[BlockingPortal] | None = None
_pid: int | None = None
# A forked child inherits the parent's portal objects but not its loop thread; exiting
# them would wait forever on that dead loop, so they are kept here, never exited.
_inherited: list[object] = []


def _after_fork_in_child() -> None:
    global _lock, _portal, _portal_cm, _pid
    _lock = threading.Lock()  # the parent may have held it while forking
    if _portal_cm is not None:
        _inherited.append(_portal_cm)
    _portal = _portal_cm = None
    _pid = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def get_portal() -> BlockingPortal:
    """The process's portal, started on first use (and anew in a forked child)."""
    global _portal, _portal_cm, _pid
    pid = os.getpid()
    portal = _portal
    if portal is not None and _pid == pid:
        return portal
    with _lock:
        if _portal is None or _pid != pid:
            # After a fork the parent's loop thread does not exist here: start afresh.
            cm = start_blocking_portal(backend="asyncio", name="sagaz-portal")
            _portal = cm.__enter__()
            _portal_cm = cm
            _pid = pid
        return _portal


def run_sync(func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """Run ``await func(*args)`` on the background loop and return its result.

    Blocks the calling thread; must not be called from the portal's own loop.
    """
    return get_portal().call(func, *args)


def shutdown_portal() -> None:
    """Stop the background loop (tasks still running on it are cancelled)."""
    global _portal, _portal_cm, _pid
    with _lock:
        cm, _portal_cm, _portal = _portal_cm, None, None
        owner, _pid = _pid, None
    if cm is not None and owner == os.getpid():
        cm.__exit__(None, None, None)
