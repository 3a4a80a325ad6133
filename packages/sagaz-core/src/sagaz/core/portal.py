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


def _loop_thread_alive(portal: BlockingPortal | None) -> bool:
    ident = getattr(portal, "_event_loop_thread_id", None)
    if ident is None:  # pragma: no cover - an anyio without the attribute: assume alive
        return portal is not None
    return any(t.ident == ident and t.is_alive() for t in threading.enumerate())


def shutdown_portal() -> None:
    """Stop the background loop (tasks still running on it are cancelled).

    Also runs by itself when the interpreter shuts down (see :func:`_stop_at_exit`).
    """
    global _portal, _portal_cm, _pid
    with _lock:
        cm, portal = _portal_cm, _portal
        _portal_cm = _portal = None
        owner, _pid = _pid, None
    if cm is None or owner != os.getpid():
        return
    if _loop_thread_alive(portal):
        cm.__exit__(None, None, None)
    else:
        # Exiting would wait forever for the dead loop to answer: keep it unexited.
        _inherited.append(cm)


def _stop_at_exit() -> None:
    """Stop this process's portal when the interpreter starts shutting down.

    ``threading._register_atexit`` hooks run first in ``threading._shutdown``, newest
    first. Registered at import, after ``concurrent.futures.thread`` (whose own hook
    joins its worker threads, the portal's loop thread among them, which would wait
    forever on a running loop), this one runs before that join; a plugin's hook
    registered later (Flask drains its sagas) runs before this one.
    """
    shutdown_portal()


def _register_exit_hook() -> None:
    import concurrent.futures.thread  # noqa: F401 - registers its exit hook first

    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - every supported Python has it
        import atexit

        atexit.register(_stop_at_exit)
    else:
        register(_stop_at_exit)


_register_exit_hook()
