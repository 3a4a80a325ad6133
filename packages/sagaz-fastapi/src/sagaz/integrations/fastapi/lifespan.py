"""The application lifespan: storage, the in-process runner, recovery and per-app config.

``FastAPI(lifespan=create_lifespan(config))`` opens the config's storage on start-up,
starts the recovery sweep (:class:`sagaz.core.RecoverySweep`: resumes this application's
unfinished sagas at once and, every half lease, those a crashed process left leased),
and on shutdown stops the sweep, waits a bounded grace period for running sagas,
cancels the rest (they stay recorded and resume at the next start-up) and closes the
storage. The config lives on ``app.state``, so several applications in
one process each keep their own; :func:`get_config` reads it through the request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar, overload

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from sagaz.core import SagaConfig, get_runner
from sagaz.core import get_config as get_default_config
from sagaz.core.recovery import DEFAULT_RECOVERY_CONCURRENCY, RecoverySweep

__all__ = [
    "DEFAULT_SHUTDOWN_GRACE",
    "STATE_ATTRIBUTE",
    "SagazNotInitializedError",
    "create_lifespan",
    "get_config",
]

logger = logging.getLogger("sagaz.fastapi")

_App = TypeVar("_App", bound=Starlette)

#: The attribute of ``app.state`` that holds the application's :class:`SagaConfig`.
STATE_ATTRIBUTE = "sagaz_config"
#: Seconds the shutdown waits for running sagas before cancelling them.
DEFAULT_SHUTDOWN_GRACE = 10.0

_NOT_INITIALIZED = (
    "Sagaz not initialized. Did you use create_lifespan()? Pass it to the application, "
    "e.g. FastAPI(lifespan=create_lifespan(config)), and serve the application with its "
    "lifespan on (use TestClient as a context manager: `with TestClient(app) as client`; "
    "do not run uvicorn with --lifespan off)."
)


class SagazNotInitializedError(RuntimeError):
    """Raised by :func:`get_config` when the application has no Sagaz lifespan running."""

    def __init__(self) -> None:
        super().__init__(_NOT_INITIALIZED)


class _Runtime:
    """One running lifespan: its config, the event loop it runs on."""

    __slots__ = ("config", "loop")

    def __init__(self, config: SagaConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop


# Every lifespan currently between start-up and shutdown, in any thread of the process.
_active: list[_Runtime] = []
_active_lock = threading.Lock()


def _others(runtime: _Runtime) -> list[_Runtime]:
    with _active_lock:
        return [r for r in _active if r is not runtime]


async def _close_storage(runtime: _Runtime) -> None:
    with _active_lock:
        _active.remove(runtime)
    storage = runtime.config.storage
    if any(r.config.storage is storage for r in _others(runtime)):
        logger.debug("sagaz: storage %r is still used by another application", storage)
        return
    if storage.is_open:
        # Sagas cancelled at shutdown keep their leases until they expire: release them
        # so the next start-up (or a worker) resumes them at once.
        try:
            await storage.release_leases()
        except Exception:
            logger.warning("sagaz: could not release this process's saga leases", exc_info=True)
    await storage.close()


async def _stop_sagas(runtime: _Runtime, grace: float) -> None:
    """Wait up to ``grace`` seconds for this loop's sagas, then cancel what still runs."""
    runner = get_runner()
    if len(runner) and grace > 0:
        try:
            async with asyncio.timeout(grace):
                await runner.drain()
        except TimeoutError:
            pass
    if not len(runner):
        return
    if any(r.loop is runtime.loop for r in _others(runtime)):
        # Another application serves from this loop and shares its runner: leave its
        # sagas running; they end when that application shuts down.
        logger.info(
            "sagaz: %d saga(s) still running after %ss; another application on this event "
            "loop keeps them running",
            len(runner),
            grace,
        )
        return
    logger.warning(
        "sagaz: cancelling %d saga(s) still running after the %ss shutdown grace period; "
        "they stay recorded and resume at the next start-up (or on a worker)",
        len(runner),
        grace,
    )
    await runner.shutdown()


def _forget(app: Starlette, config: SagaConfig) -> None:
    if getattr(app.state, STATE_ATTRIBUTE, None) is config:
        delattr(app.state, STATE_ATTRIBUTE)


@overload
def create_lifespan(
    config: SagaConfig | None = None,
    *,
    lifespan: None = None,
    recover: bool = True,
    recover_interval: float | None = None,
    recover_concurrency: int = DEFAULT_RECOVERY_CONCURRENCY,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]: ...


@overload
def create_lifespan(
    config: SagaConfig | None = None,
    *,
    lifespan: Callable[[_App], AbstractAsyncContextManager[None]],
    recover: bool = True,
    recover_interval: float | None = None,
    recover_concurrency: int = DEFAULT_RECOVERY_CONCURRENCY,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
) -> Callable[[_App], AbstractAsyncContextManager[None]]: ...


@overload
def create_lifespan(
    config: SagaConfig | None = None,
    *,
    lifespan: Callable[[_App], AbstractAsyncContextManager[Mapping[str, Any]]],
    recover: bool = True,
    recover_interval: float | None = None,
    recover_concurrency: int = DEFAULT_RECOVERY_CONCURRENCY,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
) -> Callable[[_App], AbstractAsyncContextManager[Mapping[str, Any]]]: ...


def create_lifespan(
    config: SagaConfig | None = None,
    *,
    lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
    recover: bool = True,
    recover_interval: float | None = None,
    recover_concurrency: int = DEFAULT_RECOVERY_CONCURRENCY,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """Create the lifespan of a FastAPI (or Starlette) application that uses Sagaz.

    ::

        app = FastAPI(lifespan=create_lifespan(SagaConfig(storage_url="sqlite:///app.db")))

    On start-up it stores ``config`` (default: the process-wide
    :func:`sagaz.core.get_config`) on ``app.state``, opens its storage, enters the
    application's own ``lifespan`` (if given; what it yields is passed on as the lifespan
    state), then, with ``recover=True``, starts the recovery sweep on this event loop
    (unless another running application of this process uses the same storage object
    and sweeps it already): a :class:`sagaz.core.RecoverySweep` that claims, at
    start-up (before the application serves) and then every ``recover_interval``
    seconds (default: half the storage's ``lease_seconds``), the runnable sagas whose
    definitions are registered here, including those a crashed process left leased
    once their lease expires, and runs them on this loop's runner, at most
    ``recover_concurrency`` at a time. Sagas leased by another live process are never
    touched, so several processes on one database may each sweep; pass
    ``recover=False`` when the application leaves its sagas to ``sagaz worker``.

    On shutdown it stops the sweep, waits up to ``shutdown_grace`` seconds for running
    sagas, cancels the rest (they stay recorded as RUNNING or PENDING and resume at the
    next start-up), leaves the application's own lifespan, and closes the storage.
    """
    if shutdown_grace < 0:
        raise ValueError(f"shutdown_grace must be >= 0 seconds, got {shutdown_grace!r}")
    if recover_concurrency < 1:
        raise ValueError(f"recover_concurrency must be >= 1, got {recover_concurrency!r}")
    if recover_interval is not None and not recover_interval > 0:
        raise ValueError(
            f"recover_interval must be > 0 seconds, got {recover_interval!r}; pass None "
            "for the default (half the storage's lease_seconds)"
        )

    @asynccontextmanager
    async def sagaz_lifespan(app: Any) -> AsyncIterator[Any]:
        cfg = config if config is not None else get_default_config()
        runtime = _Runtime(cfg, asyncio.get_running_loop())
        async with AsyncExitStack() as stack:
            with _active_lock:
                _active.append(runtime)
            stack.push_async_callback(_close_storage, runtime)
            await cfg.storage.ensure_open()
            setattr(app.state, STATE_ATTRIBUTE, cfg)
            stack.callback(_forget, app, cfg)
            state = None
            if lifespan is not None:
                state = await stack.enter_async_context(lifespan(app))
            stack.push_async_callback(_stop_sagas, runtime, shutdown_grace)
            shared = any(r.config.storage is cfg.storage for r in _others(runtime))
            # An application already running on this storage has recovered it (and may be
            # running those sagas now): recovering again would run them twice.
            if recover and not shared:
                sweep = RecoverySweep(
                    cfg, interval=recover_interval, concurrency=recover_concurrency
                )
                # Stopped before the runner drains (callbacks run last-in first-out), so
                # it claims nothing more while the application shuts down.
                stack.push_async_callback(sweep.stop)
                await sweep.start()
                if sweep.stats.claimed:
                    logger.info("sagaz: resuming %d unfinished saga(s)", sweep.stats.claimed)
            yield state

    return sagaz_lifespan


def get_config(request: HTTPConnection) -> SagaConfig:
    """FastAPI dependency: the :class:`SagaConfig` of the application serving the request.

    ``config: SagaConfig = Depends(get_config)``. Raises
    :class:`SagazNotInitializedError` when the application's lifespan was not created
    with :func:`create_lifespan` (or is not running).
    """
    config = getattr(request.app.state, STATE_ATTRIBUTE, None)
    if not isinstance(config, SagaConfig):
        raise SagazNotInitializedError()
    return config
