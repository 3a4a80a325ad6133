"""The Flask extension: :class:`SagaFlask` (alias :data:`SagazExtension`).

::

    app = Flask(__name__)
    app.config["SAGAZ_STORAGE_URL"] = "sqlite:///sagas.db"
    sagaz = SagaFlask(app)                      # or SagaFlask() + sagaz.init_app(app)
    sagaz.register_webhook_blueprint("/webhooks")

    @app.post("/orders")
    def create_order():
        result = sagaz.run_sync(OrderSaga, {"order_id": "A-1"})   # blocks until done
        return {"saga_id": result.saga_id, "state": result.status.value}

Flask is synchronous and the saga engine is asyncio: every call the extension makes
into the engine runs on the process's one background event loop
(:mod:`sagaz.core.portal`), created lazily and again in each forked worker, never per
request. Sagas started without waiting keep running on that loop after the request
has returned; :meth:`SagaFlask.close` (and process exit) waits for them, bounded by
``SAGAZ_SHUTDOWN_TIMEOUT``. With ``SAGAZ_RUN_IN_PROCESS`` on, a recovery sweep on that
loop (:meth:`SagaFlask.start_recovery`, or the first request of each process) resumes
sagas that a crashed process left unfinished.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from flask import Blueprint, Flask, Response, current_app, g, has_app_context, jsonify, request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from sagaz.core import (
    CORRELATION_ID_HEADER,
    FireResult,
    Saga,
    SagaConfig,
    SagaContextManager,
    SagaResult,
    correlation_id_from_header,
    fire_event,
    import_saga_modules,
    start_saga,
    storage_from_url,
)
from sagaz.core.portal import run_sync as portal_run_sync
from sagaz.core.portal import shutdown_portal
from sagaz.core.recovery import RecoverySweep
from sagaz.core.runner import get_runner
from sagaz.core.web import WebhookService, WebResponse, error_response
from sagaz.integrations.flask.settings import (
    SagaFlaskSettings,
    check_keywords,
    resolve_settings,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from werkzeug.wrappers import Response as BaseResponse

__all__ = [
    "EXTENSION_KEY",
    "SagaFlask",
    "SagaFlaskState",
    "SagazExtension",
    "close_all",
    "gunicorn_worker_exit",
    "json_response",
]

logger = logging.getLogger("sagaz.flask")

#: The key of the per-app state in ``app.extensions``.
EXTENSION_KEY = "sagaz"

_T = TypeVar("_T")
_S = TypeVar("_S", bound=Saga)

# Process bookkeeping (not per-app state): the states whose storage may need closing at
# exit or rebuilding after a fork. Weak: an app that is dropped is forgotten.
_live_states: weakref.WeakSet[SagaFlaskState] = weakref.WeakSet()
_process_hooks_lock = threading.Lock()
_process_hooks_installed = False


async def _in_scope(values: Mapping[str, Any], func: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``func()`` on the background loop inside a copy of the caller's scope."""
    with SagaContextManager.scope(**values):
        return await func()


def json_response(response: WebResponse) -> Response:
    """A Flask JSON response from the core's framework-neutral :class:`WebResponse`.

    An error body whose ``correlation_id`` is empty gets the request's correlation id.
    """
    body = dict(response.body)
    if "error" in body and body.get("correlation_id") is None:
        body["correlation_id"] = g.get("correlation_id")
    out = jsonify(body)
    out.status_code = response.status
    for name, value in response.headers.items():
        out.headers[name] = value
    return out


class SagaFlaskState:
    """What the extension keeps for one app, in ``app.extensions["sagaz"]``.

    ``config`` is the app's :class:`~sagaz.core.SagaConfig` (its storage is opened
    lazily, in the process that first uses it); ``service`` the core's
    :class:`~sagaz.core.web.WebhookService` with the app's settings.
    """

    def __init__(
        self,
        extension: SagaFlask,
        app_name: str,
        config: SagaConfig,
        settings: SagaFlaskSettings,
        storage_url: str | None,
        owns_config: bool,
    ) -> None:
        self.extension = extension
        self.app_name = app_name
        self.config = config
        self.settings = settings
        self.storage_url = storage_url
        self.owns_config = owns_config
        self.service = WebhookService(config, settings.webhook_settings())
        #: URL prefixes of the webhook blueprints registered on the app.
        self.webhook_prefixes: list[str] = []
        self.blueprints: list[Blueprint] = []
        self.closed = False
        self._used_in_pid: int | None = None
        self._sweep: RecoverySweep | None = None
        self._sweep_pid: int | None = None

    def __repr__(self) -> str:
        return f"<SagaFlaskState app={self.app_name!r} config={self.config!r}>"

    # -- the sync bridge -------------------------------------------------------------

    def call(self, func: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any) -> _T:
        """``await func(*args, **kwargs)`` on the background loop; blocks until done.

        The call carries the current :class:`~sagaz.core.SagaContextManager` scope
        (in a request: its correlation id and ``g.sagaz_context``), so sagas started
        by it record the request's correlation id.
        """
        return self.call_with_correlation_id(None, func, *args, **kwargs)

    def call_with_correlation_id(
        self,
        correlation_id: str | None,
        func: Callable[..., Awaitable[_T]],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> _T:
        """As :meth:`call`, with ``correlation_id`` (when given) as the scope's id."""
        values = SagaContextManager.snapshot()
        if has_app_context():
            extra = g.get("sagaz_context")
            if isinstance(extra, Mapping):
                values.update(extra)
        if correlation_id is not None:
            values["correlation_id"] = correlation_id
        self._mark_used()
        self.start_recovery()
        bound: Callable[[], Awaitable[_T]] = functools.partial(func, *args, **kwargs)
        return cast(_T, portal_run_sync(_in_scope, values, bound))

    def _mark_used(self) -> None:
        self._used_in_pid = os.getpid()
        if self.closed:
            self.closed = False
            _live_states.add(self)

    # -- the recovery sweep ------------------------------------------------------------

    @property
    def recovery_sweep(self) -> RecoverySweep | None:
        """The app's :class:`~sagaz.core.RecoverySweep` in this process, if started."""
        return self._sweep if self._sweep_pid == os.getpid() else None

    def start_recovery(self) -> bool:
        """Start the app's recovery sweep in this process unless it runs already.

        With ``SAGAZ_RUN_IN_PROCESS`` on (the default), a sweep on the background loop
        resumes this app's unfinished sagas, including those a crashed process left
        leased once their lease expires, at start and every half lease. Returns
        whether a sweep runs (False with ``SAGAZ_RUN_IN_PROCESS`` off: a ``sagaz
        worker`` runs the sagas).
        """
        if not self.settings.run_in_process:
            return False
        pid = os.getpid()
        if self._sweep_pid == pid:
            return True
        self._sweep_pid = pid
        self._mark_used()
        sweep = self._sweep = RecoverySweep(self.config, saga_registry=self.service.registry)
        portal_run_sync(sweep.start)
        return True

    async def _stop_sweep(self) -> None:
        sweep, self._sweep = self._sweep, None
        self._sweep_pid = None
        if sweep is not None:
            await sweep.stop()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's connections (run by an at-fork hook)."""
        self._used_in_pid = None
        self._sweep = None  # its task ran on the parent's loop, which is not here
        self._sweep_pid = None
        storage = self.config.storage
        if not storage.is_open:
            return
        if self.owns_config and self.storage_url is not None:
            fresh = storage_from_url(self.storage_url)
            fresh.lease_seconds = storage.lease_seconds
            self.config.storage = fresh
        else:
            logger.warning(
                "sagaz: the storage of Flask app %r was opened before this process forked; "
                "its connections belong to the parent. Open storage only after the fork "
                "(without gunicorn --preload, or in a post_fork hook)",
                self.app_name,
            )

    def close(self, timeout: float | None = None, *, cancel_remaining: bool = False) -> None:
        """Wait (up to ``timeout`` seconds) for sagas still running, then close storage.

        With ``cancel_remaining`` (the loop is about to stop), sagas still running
        after the timeout are cancelled first; they stay recorded (RUNNING or PENDING)
        and are resumed by recovery or a worker. Using the app again reopens its storage.
        """
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        if self._used_in_pid == os.getpid():
            portal_run_sync(self._drain_and_close, timeout, cancel_remaining)
        self._used_in_pid = None
        self._sweep = None
        self._sweep_pid = None
        self.closed = True
        _live_states.discard(self)

    async def _drain_and_close(self, wait: float, cancel_remaining: bool) -> None:
        await self._stop_sweep()  # claims nothing more while the app closes
        runner = get_runner()
        if len(runner):
            try:
                async with asyncio.timeout(wait):
                    await runner.drain()
            except TimeoutError:
                logger.warning(
                    "sagaz: %d saga(s) still running after %.1f s while closing Flask app %r; "
                    "%s; they stay recorded and resume on recovery",
                    len(runner),
                    wait,
                    self.app_name,
                    "cancelling them" if cancel_remaining else "they keep running",
                )
                if cancel_remaining:
                    await runner.shutdown()
                    # Let the next start-up (or a worker) resume them at once.
                    with contextlib.suppress(Exception):
                        await self.config.storage.release_leases()
        await self.config.storage.close()


def close_all(*, at_exit: bool = False) -> None:
    """Finish and close every Flask app with Sagaz in this process, then stop the loop.

    Sagas still running get each app's ``SAGAZ_SHUTDOWN_TIMEOUT`` to finish; those
    still running after it are cancelled and stay recorded for recovery.
    """
    pid = os.getpid()
    states = list(_live_states)
    used = any(state._used_in_pid == pid for state in states)
    timeout: float | None = None  # each app's own
    if used and at_exit and not _threads_can_start():
        # Python 3.12 starts no thread once the interpreter is finalizing, so steps that
        # are plain functions (run with asyncio.to_thread) would fail and their sagas
        # be compensated for nothing. Cancel instead: they stay recorded, and resume.
        logger.warning(
            "sagaz: the interpreter is exiting and can start no thread, so running sagas "
            "cannot finish here; they are cancelled and stay recorded for recovery. "
            "Finish them before exit: sagaz.close(app), or gunicorn's worker_exit hook "
            "(from sagaz.integrations.flask import gunicorn_worker_exit as worker_exit)"
        )
        timeout = 0.0
    for state in states:
        try:
            state.close(timeout, cancel_remaining=True)
        except Exception:  # pragma: no cover - best effort at exit
            logger.exception("sagaz: closing Flask app %r failed", state.app_name)
    if used:
        shutdown_portal()


def _threads_can_start() -> bool:
    try:
        probe = threading.Thread(target=lambda: None, name="sagaz-exit-probe")
        probe.start()
    except RuntimeError:
        return False
    probe.join()
    return True


def _close_all_at_exit() -> None:
    close_all(at_exit=True)


def gunicorn_worker_exit(server: object, worker: object) -> None:
    """A gunicorn ``worker_exit`` hook: finish running sagas before the worker exits.

    In ``gunicorn.conf.py``::

        from sagaz.integrations.flask import gunicorn_worker_exit as worker_exit

    It runs before the interpreter starts finalizing, so sagas can still run every
    kind of step (on Python 3.12 no thread can start during finalization, so the
    extension's own exit hook can only cancel sagas there).
    """
    close_all()


def _reset_all_after_fork() -> None:
    # sagaz.core.portal and the storages reset themselves in a forked child; each
    # extension state drops what it derived from them.
    for state in list(_live_states):
        state.reset_after_fork()


def _register_exit_hook() -> None:
    """Run :func:`_close_all_at_exit` when the interpreter starts shutting down.

    It must run before ``concurrent.futures`` refuses new work (its own exit hook):
    sagas finishing at exit still run plain-function steps in worker threads
    (``asyncio.to_thread``). Hooks registered with ``threading._register_atexit`` run
    first thing in ``threading._shutdown``, newest first, so registering ours after
    ``concurrent.futures.thread`` is imported runs it before that module's hook; a
    plain ``atexit`` hook would run after it, when every new step would fail.
    """
    import concurrent.futures.thread  # noqa: F401 - registers its exit hook first

    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - every supported Python has it
        atexit.register(_close_all_at_exit)
    else:
        register(_close_all_at_exit)


def _install_process_hooks() -> None:
    global _process_hooks_installed
    with _process_hooks_lock:
        if _process_hooks_installed:
            return
        _register_exit_hook()
        os.register_at_fork(after_in_child=_reset_all_after_fork)
        _process_hooks_installed = True


def _under(path: str, prefix: str) -> bool:
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def _normalise_prefix(prefix: str) -> str:
    prefix = "/" + prefix.strip().strip("/")
    return "" if prefix == "/" else prefix


class SagaFlask:
    """The Sagaz extension for Flask.

    ``SagaFlask(app, **settings)`` or, with an application factory, ``sagaz =
    SagaFlask(**settings)`` then ``sagaz.init_app(app)`` for each app (several apps
    may share one process and one extension; each keeps its own state in
    ``app.extensions["sagaz"]``). Settings come from keyword arguments and
    ``app.config["SAGAZ_*"]``; see :data:`~sagaz.integrations.flask.settings.SETTINGS`.

    ``init_app`` does no I/O: each process opens the storage on first use, so it is
    safe with gunicorn's forking workers and needs no ``before_first_request``. It
    installs request hooks that read (or generate) the ``X-Correlation-ID`` header,
    set ``g.correlation_id`` and ``g.sagaz_context``, and echo the header on every
    response, errors included; and the ``flask sagaz`` commands.
    """

    def __init__(self, app: Flask | None = None, **settings: Any) -> None:
        check_keywords(settings, "SagaFlask()")
        self._defaults: dict[str, Any] = dict(settings)
        self._app: Flask | None = None
        if app is not None:
            self.init_app(app)
            self._app = app

    # -- set-up -------------------------------------------------------------------

    def init_app(self, app: Flask, **settings: Any) -> SagaFlaskState:
        """Set the extension up on ``app``; keyword ``settings`` win for this app only.

        Raises :class:`~sagaz.core.ConfigurationError` for an invalid setting and
        RuntimeError when ``app`` already has Sagaz.
        """
        check_keywords(settings, "SagaFlask.init_app()")
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"Sagaz is already initialised on Flask app {app.name!r}")
        resolved = resolve_settings(app.name, app.config, self._defaults, settings)
        import_saga_modules(resolved.settings.saga_modules)
        state = SagaFlaskState(
            self,
            app.name,
            resolved.config,
            resolved.settings,
            resolved.storage_url,
            resolved.owns_config,
        )
        app.extensions[EXTENSION_KEY] = state
        if resolved.settings.metrics_endpoint is not None:
            from sagaz.integrations.flask.metrics import register_metrics

            register_metrics(app, state, resolved.settings.metrics_endpoint)
        app.before_request(self._before_request)
        app.after_request(self._after_request)
        app.teardown_request(self._teardown_request)

        from sagaz.integrations.flask.cli import sagaz_command

        app.cli.add_command(sagaz_command)
        _install_process_hooks()
        _live_states.add(state)
        return state

    def state(self, app: Flask | None = None) -> SagaFlaskState:
        """The per-app state of ``app``, of the current app, or of the app given to
        the constructor (in that order)."""
        if app is None:
            if has_app_context():
                extensions = current_app.extensions
                name = current_app.name
            elif self._app is not None:
                extensions = self._app.extensions
                name = self._app.name
            else:
                raise RuntimeError(
                    "no Flask app: call this inside an app or request context, pass app=..., "
                    "or create the extension with SagaFlask(app)"
                )
        else:
            extensions = app.extensions
            name = app.name
        state = extensions.get(EXTENSION_KEY)
        if not isinstance(state, SagaFlaskState) or state.extension is not self:
            raise RuntimeError(
                f"this SagaFlask is not initialised on Flask app {name!r}: call init_app(app)"
            )
        return state

    @property
    def config(self) -> SagaConfig:
        """The current app's :class:`~sagaz.core.SagaConfig`."""
        return self.state().config

    def start_recovery(self, app: Flask | None = None) -> bool:
        """Start the app's recovery sweep in this process now; return whether one runs.

        The sweep (:class:`sagaz.core.RecoverySweep`, on the background loop) resumes
        the app's unfinished sagas, including those a crashed process left leased once
        their lease expires, at start and every half ``SAGAZ_LEASE_SECONDS``. It starts
        by itself on the first request (or first use of the extension) in each
        process; call this at start-up (the app factory, or gunicorn's
        ``post_worker_init``) so a restarted process resumes its sagas before any
        request. Off (returns False) with ``SAGAZ_RUN_IN_PROCESS`` false, where ``sagaz
        worker`` runs the sagas. :meth:`close` stops it.
        """
        return self.state(app).start_recovery()

    # -- request hooks -------------------------------------------------------------

    def _before_request(self) -> BaseResponse | None:
        state = current_app.extensions.get(EXTENSION_KEY)
        if isinstance(state, SagaFlaskState) and state._sweep_pid != os.getpid():
            state.start_recovery()  # once per process: the first request of a worker
        correlation_id = correlation_id_from_header(request.headers.get(CORRELATION_ID_HEADER))
        g.correlation_id = correlation_id
        g.sagaz_context = {"correlation_id": correlation_id}
        scope = SagaContextManager.scope(correlation_id=correlation_id)
        scope.__enter__()
        g._sagaz_scope = scope
        error = request.routing_exception
        if isinstance(error, NotFound | MethodNotAllowed):
            return self._routing_error(error)
        return None

    def _routing_error(self, error: NotFound | MethodNotAllowed) -> BaseResponse | None:
        """Flask's own 404/405 as JSON on the webhook routes (other paths untouched)."""
        state = current_app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, SagaFlaskState):  # pragma: no cover - defensive
            return None
        path = request.path
        if not any(_under(path, prefix) for prefix in state.webhook_prefixes):
            return None
        if isinstance(error, MethodNotAllowed):
            allowed = sorted(error.valid_methods or ())
            response = json_response(
                error_response(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed on {path}; use {', '.join(allowed)}",
                )
            )
            response.headers["Allow"] = ", ".join(allowed)
            return response
        return json_response(error_response(404, "not_found", f"no route {path}"))

    @staticmethod
    def _after_request(response: BaseResponse) -> BaseResponse:
        correlation_id = g.get("correlation_id")
        if correlation_id is None:  # another before_request answered before ours ran
            correlation_id = correlation_id_from_header(request.headers.get(CORRELATION_ID_HEADER))
        response.headers[CORRELATION_ID_HEADER] = correlation_id
        return response

    @staticmethod
    def _teardown_request(exc: BaseException | None) -> None:
        scope: AbstractContextManager[None] | None = g.pop("_sagaz_scope", None)
        if scope is not None:
            with contextlib.suppress(ValueError):  # torn down in another context
                scope.__exit__(None, None, None)

    # -- running sagas ---------------------------------------------------------------

    def create_saga(self, saga_class: type[_S]) -> _S:
        """A new ``saga_class`` bound to the current app's config (storage etc.)."""
        return saga_class(config=self.state().config)

    def _bind(self, saga: Saga | type[Saga], state: SagaFlaskState) -> Saga:
        if isinstance(saga, type):
            return saga(config=state.config)
        if saga.own_config is None:  # no config of its own: use the app's
            return saga.with_config(state.config)
        return saga

    def call(self, func: Callable[..., Awaitable[_T]], /, *args: Any, **kwargs: Any) -> _T:
        """``await func(*args, **kwargs)`` on the process's background loop, from sync code.

        Blocks until it returns, carrying the request's correlation scope. Any async
        Sagaz API can be reached this way, e.g. ``sagaz.call(resume_saga, saga_id)``.
        """
        return self.state().call(func, *args, **kwargs)

    def run_sync(
        self,
        saga: Saga | type[Saga],
        context: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> SagaResult:
        """Run ``saga`` (an instance or a class) to its end and return its SagaResult.

        Blocks the calling (request) thread while the saga runs on the background
        loop: fine for short sagas; use :meth:`start_saga` or :meth:`fire_event` for
        long ones. A saga without a config of its own uses the app's. The saga records
        the request's correlation id unless ``correlation_id`` is given.
        """
        state = self.state()
        bound = self._bind(saga, state)
        return state.call_with_correlation_id(
            correlation_id,
            bound.run,
            context,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )

    def start_saga(
        self,
        saga: Saga | type[Saga],
        context: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Record ``saga`` and return its id at once; it runs on the background loop.

        The saga is durable when this returns (with durable storage). With
        ``SAGAZ_RUN_IN_PROCESS`` false it is left PENDING for a worker. A known
        ``idempotency_key`` returns the existing saga's id.
        """
        state = self.state()
        bound = self._bind(saga, state)
        saga_id, _ = state.call_with_correlation_id(
            correlation_id,
            start_saga,
            bound,
            context,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            run=state.settings.run_in_process,
        )
        return saga_id

    def fire_event(
        self,
        source: str,
        payload: Mapping[str, Any],
        *,
        correlation_id: str | None = None,
        wait: bool = False,
    ) -> FireResult:
        """Record an event at ``source`` and start the sagas its triggers accept.

        As :func:`sagaz.core.fire_event`, with the app's config; ``wait=True`` blocks
        until the started sagas have finished.
        """
        state = self.state()
        return state.call_with_correlation_id(
            correlation_id,
            fire_event,
            source,
            payload,
            correlation_id=correlation_id,
            config=state.config,
            run=state.settings.run_in_process,
            wait=wait,
            saga_registry=state.service.registry,
        )

    # -- responses for the app's own routes ------------------------------------------

    def health_response(self) -> Response:
        """A JSON health response: 200 when storage answers, 503 when it does not."""
        state = self.state()
        return json_response(state.call(state.service.health))

    def diagram_response(
        self,
        saga: Saga | type[Saga],
        saga_id: str | None = None,
        *,
        direction: str = "TD",
        **extra: Any,
    ) -> Response:
        """A JSON response with the Mermaid diagram of ``saga`` for an app route.

        ``{"saga_name", "mermaid", "direction"}`` plus ``extra`` fields; with
        ``saga_id`` (a recorded execution of this saga) the steps are coloured by
        their state and ``saga_id`` and ``state`` are added. 404 for an unknown
        execution, 400 for a bad ``direction``. For example::

            @app.get("/orders/<order_id>/diagram")
            def order_diagram(order_id):
                return sagaz.diagram_response(
                    OrderSaga, request.args.get("saga_id"), order_id=order_id
                )
        """
        from sagaz.integrations.flask.webhooks import diagram_body

        state = self.state()
        bound = self._bind(saga, state)
        return json_response(state.call(diagram_body, bound, saga_id, direction, extra))

    # -- webhooks ---------------------------------------------------------------------

    def register_webhook_blueprint(
        self,
        prefix: str = "/webhooks",
        *,
        app: Flask | None = None,
        secrets: Mapping[str, str] | None = None,
        max_body_bytes: int | None = None,
        expose_context: bool | None = None,
        run_in_process: bool | None = None,
        name: str | None = None,
    ) -> Blueprint:
        """Register the webhook and status routes under ``prefix`` and return the blueprint.

        - ``POST {prefix}/<source>``: start the sagas triggered by ``source`` (202);
        - ``GET {prefix}/<source>/status/<correlation_id>``: the sagas an event started;
        - ``GET {prefix}/status/<saga_id>`` and ``.../<saga_id>/diagram``: one saga;
        - ``GET {prefix}/health``: 200, or 503 when storage does not answer.

        Keyword options override the app's settings for these routes: ``secrets``
        (source -> HMAC secret), ``max_body_bytes``, ``expose_context`` (show the saga
        context in status responses), ``run_in_process``. Call it before the app
        serves its first request.
        """
        from sagaz.integrations.flask.webhooks import make_webhook_blueprint

        if app is None:
            app = current_app if has_app_context() else self._app
        if app is None:
            raise RuntimeError(
                "register_webhook_blueprint needs the app: pass app=..., call it inside an "
                "app context, or create the extension with SagaFlask(app)"
            )
        state = self.state(app)
        settings = state.settings.webhook_settings(
            secrets=secrets,
            max_body_bytes=max_body_bytes,
            expose_context=expose_context,
            run_in_process=run_in_process,
        )
        prefix = _normalise_prefix(prefix)
        service = WebhookService(state.config, settings, state.service.registry)
        if name is None:
            name = "sagaz_webhooks"
            if name in app.blueprints:
                name = f"sagaz_webhooks_{len(state.blueprints) + 1}"
        blueprint = make_webhook_blueprint(name, state, service)
        app.register_blueprint(blueprint, url_prefix=prefix or None)
        state.webhook_prefixes.append(prefix)
        state.blueprints.append(blueprint)
        return blueprint

    def register_metrics_endpoint(
        self,
        path: str = "/metrics",
        *,
        app: Flask | None = None,
        registry: CollectorRegistry | None = None,
        collect_storage: bool = True,
    ) -> Blueprint:
        """Serve Prometheus metrics on ``GET {path}`` and count this app's sagas.

        Adds a :class:`~sagaz.core.observability.PrometheusListener` on ``registry``
        (default: prometheus-client's global one) to the app's config; each scrape also
        reads the outbox backlog, unfinished sagas and leases from storage
        (``collect_storage=False`` skips that). The same as the
        ``SAGAZ_METRICS_ENDPOINT`` setting. Raises
        :class:`~sagaz.core.ConfigurationError` naming ``pip install
        'sagaz-core[prometheus]'`` when prometheus-client is missing.
        """
        from sagaz.integrations.flask.metrics import register_metrics

        if app is None:
            app = current_app if has_app_context() else self._app
        if app is None:
            raise RuntimeError(
                "register_metrics_endpoint needs the app: pass app=..., call it inside an "
                "app context, or create the extension with SagaFlask(app)"
            )
        state = self.state(app)
        return register_metrics(app, state, path, registry, collect_storage=collect_storage)

    # -- shutting down ------------------------------------------------------------------

    def close(
        self,
        app: Flask | None = None,
        *,
        timeout: float | None = None,
        shutdown_loop: bool | None = None,
    ) -> None:
        """Wait for the app's running sagas (up to ``timeout``, default
        ``SAGAZ_SHUTDOWN_TIMEOUT``), close its storage, and stop the background loop
        when no other app with Sagaz is open in this process (``shutdown_loop``
        forces either way).

        Runs at process exit on its own; call it to stop an app earlier (tests,
        embedded servers). Using the app afterwards reopens what it needs.
        """
        state = self.state(app)
        pid = os.getpid()
        used = state._used_in_pid == pid
        others = any(s is not state and s._used_in_pid == pid for s in _live_states)
        stop = bool(shutdown_loop) or (shutdown_loop is None and used and not others)
        state.close(timeout, cancel_remaining=stop)
        if stop:
            shutdown_portal()


#: The name the implementation plan uses for :class:`SagaFlask`.
SagazExtension = SagaFlask
