"""Prometheus metrics: saga and step counters and histograms, storage backlog gauges.

Needs ``prometheus-client`` (``pip install 'sagaz-core[prometheus]'``). Importing this
module never imports it: the classes and functions below do, when called.

::

    from prometheus_client import CollectorRegistry
    from sagaz.core import SagaConfig
    from sagaz.core.observability import (
        PrometheusListener, collect_storage_metrics, render_metrics,
    )

    registry = CollectorRegistry()          # or None: the global REGISTRY
    config = SagaConfig(listeners=[PrometheusListener(registry)])

    # in a /metrics route (or periodically in a worker):
    await collect_storage_metrics(config.storage, registry)
    body, content_type = render_metrics(registry, request_accept_header)

Metrics (label values lower-case; ``saga`` and ``step`` are definition names, so the
cardinality is bounded by the code, never by data):

=========================================== ======================= ==========================
``sagaz_sagas_total``                       saga, status            runs that ended: completed,
                                                                    compensated, failed
``sagaz_saga_duration_seconds``             saga, status            histogram of those runs
                                                                    (measured in this process)
``sagaz_sagas_in_flight``                   saga                    runs going on here
``sagaz_sagas_interrupted_total``           saga                    runs that stopped without
                                                                    finishing (lease lost,
                                                                    worker stopped, cancelled)
``sagaz_steps_total``                       saga, step, outcome     step attempts: completed,
                                                                    failed (a failed attempt may
                                                                    be retried)
``sagaz_step_duration_seconds``             saga, step, outcome     histogram of step attempts
``sagaz_step_retries_total``                saga, step              attempts after the first
``sagaz_compensations_total``               saga, step, outcome     compensation attempts
``sagaz_compensation_duration_seconds``     saga, step, outcome     histogram of those
=========================================== ======================= ==========================

Storage gauges, set by :func:`collect_storage_metrics`: ``sagaz_outbox_events{status}``
(pending, sent, dead), ``sagaz_outbox_oldest_pending_age_seconds``,
``sagaz_sagas_unfinished{status}`` (pending, running, compensating),
``sagaz_saga_oldest_pending_age_seconds`` (no worker picking sagas up shows here),
``sagaz_saga_leases_expired`` (unfinished sagas whose owner stopped renewing its lease:
crashed workers) and ``sagaz_saga_leases_held`` (sagas this process is running).

Every metric lives on the registry given (default: the global ``REGISTRY``); one set
of metrics is created per registry, however many listeners share it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sagaz.core.errors import ConfigurationError
from sagaz.core.listeners import SagaListener, SagaListenerEvent
from sagaz.core.observability._tracking import RunTracker
from sagaz.core.records import OutboxStatus, SagaQuery
from sagaz.core.status import SagaStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from sagaz.core.config import SagaConfig
    from sagaz.core.storage.base import SagaStorage

logger = logging.getLogger("sagaz.observability")

__all__ = [
    "SAGA_DURATION_BUCKETS",
    "STEP_DURATION_BUCKETS",
    "MetricsEndpoint",
    "PrometheusListener",
    "SagazMetrics",
    "StorageMetrics",
    "collect_storage_metrics",
    "render_metrics",
]

_INSTALL = "pip install 'sagaz-core[prometheus]'"
_ATTRIBUTE = "_sagaz_metrics"

#: Histogram buckets (seconds) of ``sagaz_saga_duration_seconds``.
SAGA_DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
#: Histogram buckets (seconds) of step and compensation durations.
STEP_DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

_UNFINISHED = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError(
            f"Sagaz's Prometheus metrics need prometheus-client: {_INSTALL}"
        ) from exc
    return prometheus_client


def _registry_or_default(registry: CollectorRegistry | None) -> CollectorRegistry:
    if registry is not None:
        return registry
    default: CollectorRegistry = _client().REGISTRY
    return default


class SagazMetrics:
    """Every Sagaz metric, registered on one ``prometheus_client.CollectorRegistry``.

    Use :meth:`for_registry` (one set per registry, shared by every listener and
    collector using it); creating a second set on the same registry raises
    :class:`~sagaz.core.ConfigurationError`. Buckets are in seconds.
    """

    _lock = threading.Lock()

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        saga_buckets: Sequence[float] = SAGA_DURATION_BUCKETS,
        step_buckets: Sequence[float] = STEP_DURATION_BUCKETS,
    ) -> None:
        client = _client()
        counter, gauge, histogram = client.Counter, client.Gauge, client.Histogram
        self.registry = registry
        try:
            self.sagas_total: Counter = counter(
                "sagaz_sagas_total",
                "Saga runs that ended, by saga and final status.",
                ["saga", "status"],
                registry=registry,
            )
            self.saga_duration: Histogram = histogram(
                "sagaz_saga_duration_seconds",
                "Duration of saga runs that ended (from start or resumption in this process).",
                ["saga", "status"],
                registry=registry,
                buckets=tuple(saga_buckets),
            )
            self.sagas_in_flight: Gauge = gauge(
                "sagaz_sagas_in_flight",
                "Saga runs going on in this process.",
                ["saga"],
                registry=registry,
                multiprocess_mode="livesum",
            )
            self.sagas_interrupted: Counter = counter(
                "sagaz_sagas_interrupted_total",
                "Saga runs that stopped before the saga finished (lease lost, worker "
                "stopped, cancelled); the saga resumes from storage.",
                ["saga"],
                registry=registry,
            )
            self.steps_total: Counter = counter(
                "sagaz_steps_total",
                "Step attempts by outcome (completed or failed; a failed attempt may be retried).",
                ["saga", "step", "outcome"],
                registry=registry,
            )
            self.step_duration: Histogram = histogram(
                "sagaz_step_duration_seconds",
                "Duration of step attempts.",
                ["saga", "step", "outcome"],
                registry=registry,
                buckets=tuple(step_buckets),
            )
            self.step_retries: Counter = counter(
                "sagaz_step_retries_total",
                "Step attempts after the first (retries).",
                ["saga", "step"],
                registry=registry,
            )
            self.compensations_total: Counter = counter(
                "sagaz_compensations_total",
                "Compensation attempts by outcome (completed or failed).",
                ["saga", "step", "outcome"],
                registry=registry,
            )
            self.compensation_duration: Histogram = histogram(
                "sagaz_compensation_duration_seconds",
                "Duration of compensation attempts.",
                ["saga", "step", "outcome"],
                registry=registry,
                buckets=tuple(step_buckets),
            )
            self.outbox_events: Gauge = gauge(
                "sagaz_outbox_events",
                "Outbox events by status (pending, sent, dead), as last collected.",
                ["status"],
                registry=registry,
                multiprocess_mode="mostrecent",
            )
            self.outbox_oldest_pending_age: Gauge = gauge(
                "sagaz_outbox_oldest_pending_age_seconds",
                "Age of the oldest outbox event not yet published (0 when none).",
                registry=registry,
                multiprocess_mode="mostrecent",
            )
            self.sagas_unfinished: Gauge = gauge(
                "sagaz_sagas_unfinished",
                "Unfinished sagas in storage by status (pending, running, compensating).",
                ["status"],
                registry=registry,
                multiprocess_mode="mostrecent",
            )
            self.saga_oldest_pending_age: Gauge = gauge(
                "sagaz_saga_oldest_pending_age_seconds",
                "Age of the oldest saga waiting to be run (0 when none).",
                registry=registry,
                multiprocess_mode="mostrecent",
            )
            self.leases_expired: Gauge = gauge(
                "sagaz_saga_leases_expired",
                "Unfinished sagas whose lease expired (their process stopped renewing it); "
                "a worker takes them over.",
                registry=registry,
                multiprocess_mode="mostrecent",
            )
            self.leases_held: Gauge = gauge(
                "sagaz_saga_leases_held",
                "Sagas this process is running (and holds the lease of).",
                registry=registry,
                multiprocess_mode="livesum",
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"Sagaz metrics are already registered on {registry!r}: use "
                f"SagazMetrics.for_registry(registry) to share them ({exc})"
            ) from None

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> SagazMetrics:
        """The metrics on ``registry`` (default: the global ``REGISTRY``), created once."""
        registry = _registry_or_default(registry)
        with cls._lock:
            # Kept on the registry itself: the metrics live exactly as long as it does.
            metrics = getattr(registry, _ATTRIBUTE, None)
            if not isinstance(metrics, SagazMetrics):
                metrics = cls(registry)
                setattr(registry, _ATTRIBUTE, metrics)
            return metrics


class PrometheusListener(SagaListener):
    """Counts and times sagas, step attempts and compensations (see the module docs).

    ``registry``: where the metrics live (default: the global ``REGISTRY``), or pass
    ``metrics`` (a :class:`SagazMetrics`, e.g. with custom buckets). The per-event cost
    is a dictionary lookup and one or two metric updates.

    Raises :class:`~sagaz.core.ConfigurationError` when ``prometheus-client`` is not
    installed.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        metrics: SagazMetrics | None = None,
        max_sagas: int = 100_000,
    ) -> None:
        self.metrics = metrics if metrics is not None else SagazMetrics.for_registry(registry)
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self._runs: RunTracker[tuple[float, str]] = RunTracker(self._abandoned, max_sagas)

    @property
    def registry(self) -> CollectorRegistry:
        """The registry the metrics are on."""
        return self.metrics.registry

    def _child(self, metric: Counter | Gauge | Histogram, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _abandoned(self, saga_id: str, state: tuple[float, str]) -> None:
        name = state[1]
        self._child(self.metrics.sagas_in_flight, name).dec()
        self._child(self.metrics.sagas_interrupted, name).inc()

    def _ended(self, event: SagaListenerEvent, status: str) -> None:
        metrics = self.metrics
        name = event.saga_name
        self._child(metrics.sagas_total, name, status).inc()
        state = self._runs.finish(event.saga_id)
        if state is not None:
            self._child(metrics.sagas_in_flight, name).dec()
            self._child(metrics.saga_duration, name, status).observe(time.perf_counter() - state[0])

    # -- saga events -----------------------------------------------------------------

    def on_saga_started(self, event: SagaListenerEvent) -> None:
        """Count the run as in flight."""
        self._runs.start(event.saga_id, (time.perf_counter(), event.saga_name))
        self._child(self.metrics.sagas_in_flight, event.saga_name).inc()

    def on_saga_completed(self, event: SagaListenerEvent) -> None:
        """Count and time a completed saga."""
        self._ended(event, "completed")

    def on_saga_compensated(self, event: SagaListenerEvent) -> None:
        """Count and time a compensated saga."""
        self._ended(event, "compensated")

    def on_saga_failed(self, event: SagaListenerEvent) -> None:
        """Count and time a saga that needs intervention."""
        self._ended(event, "failed")

    def on_saga_interrupted(self, event: SagaListenerEvent) -> None:
        """Count a run that stopped without finishing (for engines that report it;
        otherwise the end of the run's task does the same)."""
        self._runs.abandon(event.saga_id)

    # -- step events -----------------------------------------------------------------

    def on_step_started(self, event: SagaListenerEvent) -> None:
        """Count a retry (attempts after the first)."""
        if event.attempt > 1:
            self._child(self.metrics.step_retries, event.saga_name, event.step or "").inc()

    def _step(
        self, event: SagaListenerEvent, total: Counter, duration: Histogram, outcome: str
    ) -> None:
        labels = (event.saga_name, event.step or "", outcome)
        self._child(total, *labels).inc()
        if event.duration is not None:
            self._child(duration, *labels).observe(event.duration)

    def on_step_completed(self, event: SagaListenerEvent) -> None:
        """Count and time a completed attempt."""
        metrics = self.metrics
        self._step(event, metrics.steps_total, metrics.step_duration, "completed")

    def on_step_failed(self, event: SagaListenerEvent) -> None:
        """Count and time a failed attempt."""
        metrics = self.metrics
        self._step(event, metrics.steps_total, metrics.step_duration, "failed")

    def on_compensation_completed(self, event: SagaListenerEvent) -> None:
        """Count and time a completed compensation attempt."""
        metrics = self.metrics
        self._step(event, metrics.compensations_total, metrics.compensation_duration, "completed")

    def on_compensation_failed(self, event: SagaListenerEvent) -> None:
        """Count and time a failed compensation attempt."""
        metrics = self.metrics
        self._step(event, metrics.compensations_total, metrics.compensation_duration, "failed")


@dataclass(frozen=True, slots=True)
class StorageMetrics:
    """What :func:`collect_storage_metrics` read (also handy for a health route).

    ``sagas_unfinished`` and the saga ages are counted over at most ``scan_limit``
    unfinished sagas (``scanned`` says how many were read).
    """

    outbox: dict[OutboxStatus, int]
    outbox_oldest_pending_age: float
    sagas_unfinished: dict[SagaStatus, int]
    saga_oldest_pending_age: float
    leases_expired: int
    leases_held: int
    scanned: int


async def collect_storage_metrics(
    storage: SagaStorage,
    registry: CollectorRegistry | None = None,
    *,
    metrics: SagazMetrics | None = None,
    scan_limit: int = 1000,
) -> StorageMetrics:
    """Read the outbox backlog, unfinished sagas and leases from ``storage`` and set the
    storage gauges on ``registry`` (or ``metrics``); return what was read.

    Call it from a ``/metrics`` route before rendering, or every few seconds in a
    worker. Queries: ``outbox_counts()``, the oldest pending outbox event, and one
    listing of at most ``scan_limit`` unfinished sagas (``scan_limit=0`` skips it).
    """
    metrics = metrics if metrics is not None else SagazMetrics.for_registry(registry)
    await storage.ensure_open()
    now = time.time()
    counts = await storage.outbox_counts()
    oldest_event = 0.0
    if counts.get(OutboxStatus.PENDING):
        pending = await storage.list_outbox(OutboxStatus.PENDING, limit=1)
        if pending:
            oldest_event = max(0.0, now - pending[0].event.created_at)
    unfinished = dict.fromkeys(_UNFINISHED, 0)
    oldest_saga = 0.0
    expired = 0
    records = (
        await storage.list_sagas(SagaQuery(status=_UNFINISHED, limit=scan_limit))
        if scan_limit > 0
        else []
    )
    for record in records:
        unfinished[record.status] = unfinished.get(record.status, 0) + 1
        if record.status is SagaStatus.PENDING and record.lease_owner is None:
            oldest_saga = max(oldest_saga, now - record.created_at)
        elif record.lease_expires_at is not None and record.lease_expires_at < now:
            expired += 1
    held = len(storage.running_here)
    for status, count in counts.items():
        metrics.outbox_events.labels(status.value.lower()).set(count)
    metrics.outbox_oldest_pending_age.set(oldest_event)
    for saga_status, count in unfinished.items():
        metrics.sagas_unfinished.labels(saga_status.value.lower()).set(count)
    metrics.saga_oldest_pending_age.set(oldest_saga)
    metrics.leases_expired.set(expired)
    metrics.leases_held.set(held)
    return StorageMetrics(
        outbox=counts,
        outbox_oldest_pending_age=oldest_event,
        sagas_unfinished=unfinished,
        saga_oldest_pending_age=oldest_saga,
        leases_expired=expired,
        leases_held=held,
        scanned=len(records),
    )


def render_metrics(
    registry: CollectorRegistry | None = None, accept: str | None = None
) -> tuple[bytes, str]:
    """The exposition text of ``registry`` (default: the global ``REGISTRY``) and its
    content type, for a plugin's ``/metrics`` route.

    ``accept`` is the request's ``Accept`` header: OpenMetrics when it asks for it,
    else the Prometheus text format.
    """
    client = _client()
    registry = _registry_or_default(registry)
    encoder, content_type = client.exposition.choose_encoder(accept or "")
    body: bytes = encoder(registry)
    return body, content_type


class MetricsEndpoint:
    """What a web plugin's ``/metrics`` route does; the plugins' routes wrap one.

    Creating it registers the Sagaz metrics on ``registry`` (default: the global
    ``REGISTRY``), so every metric family is exposed from the first scrape; it raises
    :class:`~sagaz.core.ConfigurationError` naming ``pip install
    'sagaz-core[prometheus]'`` when prometheus-client is missing. :meth:`attach` adds a
    :class:`PrometheusListener` on the same metrics to a config (once), so its sagas
    are counted; :meth:`render` refreshes the storage gauges (outbox backlog and age,
    unfinished sagas, leases; ``collect_storage=False`` skips that) and returns the
    exposition body and its content type.

    Metrics are per process: a worker process exposes its own (e.g. with
    ``prometheus_client.start_http_server``), or use prometheus-client's multiprocess
    mode.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        metrics: SagazMetrics | None = None,
        collect_storage: bool = True,
        scan_limit: int = 1000,
    ) -> None:
        self.metrics = metrics if metrics is not None else SagazMetrics.for_registry(registry)
        self.collect_storage = collect_storage
        self.scan_limit = scan_limit

    @property
    def registry(self) -> CollectorRegistry:
        """The registry the route exposes."""
        return self.metrics.registry

    def attach(self, config: SagaConfig) -> PrometheusListener:
        """The :class:`PrometheusListener` of ``config`` on these metrics, added if missing."""
        for listener in config.listeners:
            if isinstance(listener, PrometheusListener) and listener.metrics is self.metrics:
                return listener
        added = PrometheusListener(metrics=self.metrics)
        config.listeners.append(added)
        return added

    async def render(
        self, storage: SagaStorage | None = None, accept: str | None = None
    ) -> tuple[bytes, str]:
        """Collect the storage gauges from ``storage`` (when given), then render.

        A storage that cannot be read is logged (WARNING on ``sagaz.observability``)
        and the other metrics are still returned: a scrape never fails because of it.
        """
        if self.collect_storage and storage is not None:
            try:
                await collect_storage_metrics(
                    storage, metrics=self.metrics, scan_limit=self.scan_limit
                )
            except Exception:
                logger.warning(
                    "sagaz: could not read the storage gauges for /metrics; the saga and "
                    "step metrics are still exposed",
                    exc_info=True,
                )
        return render_metrics(self.registry, accept)
