"""Sagaz core: durable saga orchestration.

Everything public is importable from here::

    from sagaz.core import Saga, action, compensate, trigger, fire_event, SagaConfig
"""

from __future__ import annotations

import logging

from sagaz.core._compat import check_no_legacy_sagaz
from sagaz.core._version import __version__

check_no_legacy_sagaz()
# A library never configures logging; this keeps "No handlers" warnings away.
logging.getLogger("sagaz").addHandler(logging.NullHandler())

from sagaz.core.config import (  # noqa: E402
    ENVIRONMENT_VARIABLES,
    FailurePolicy,
    SagaConfig,
    configure,
    get_config,
)
from sagaz.core.context import (  # noqa: E402
    CORRELATION_ID_HEADER,
    SagaContextManager,
    check_correlation_id,
    correlation_id_from_header,
    current_correlation_id,
    generate_correlation_id,
    is_valid_correlation_id,
)
from sagaz.core.definition import SagaDefinition, StepDefinition  # noqa: E402
from sagaz.core.diagrams import to_mermaid  # noqa: E402
from sagaz.core.engine import StepInfo, current_step, emit_event  # noqa: E402
from sagaz.core.errors import (  # noqa: E402
    ConfigurationError,
    ContextNotSerializableError,
    SagaCancelledError,
    SagaDefinitionError,
    SagaError,
    SagaNotFoundError,
    SagaTimeoutError,
    StepTimeoutError,
    StorageError,
    TriggerPayloadError,
    UnknownSagaError,
    UnknownSourceError,
)
from sagaz.core.listeners import LoggingListener, SagaListener, SagaListenerEvent  # noqa: E402
from sagaz.core.operations import (  # noqa: E402
    BulkOutcome,
    bulk_cancel,
    bulk_retry,
    cancel_saga,
    retry_saga,
)
from sagaz.core.outbox import (  # noqa: E402
    Broker,
    BrokerMessage,
    Inbox,
    InMemoryBroker,
    OutboxRelay,
    broker_from_url,
)
from sagaz.core.records import (  # noqa: E402
    HistoryEntry,
    OutboxEvent,
    OutboxRecord,
    OutboxStatus,
    SagaQuery,
    SagaRecord,
    StepRecord,
    TransitionKind,
    TriggerEvent,
)
from sagaz.core.recovery import RecoverySweep  # noqa: E402
from sagaz.core.registry import import_saga_modules, registry  # noqa: E402
from sagaz.core.result import SagaResult  # noqa: E402
from sagaz.core.retry import RetryPolicy  # noqa: E402
from sagaz.core.runner import (  # noqa: E402
    InProcessRunner,
    get_runner,
    recover_unfinished,
    resume_saga,
    start_saga,
)
from sagaz.core.saga import Saga, action, compensate  # noqa: E402
from sagaz.core.status import SagaStatus, StepStatus  # noqa: E402
from sagaz.core.storage import InMemorySagaStorage, SagaStorage, storage_from_url  # noqa: E402
from sagaz.core.storage.base import LeaseLostError  # noqa: E402
from sagaz.core.triggers import FireResult, fire_event, trigger  # noqa: E402
from sagaz.core.worker import SagaWorker, WorkerStats  # noqa: E402

__all__ = [
    "CORRELATION_ID_HEADER",
    "ENVIRONMENT_VARIABLES",
    "Broker",
    "BrokerMessage",
    "BulkOutcome",
    "ConfigurationError",
    "ContextNotSerializableError",
    "FailurePolicy",
    "FireResult",
    "HistoryEntry",
    "InMemoryBroker",
    "InMemorySagaStorage",
    "InProcessRunner",
    "Inbox",
    "LeaseLostError",
    "LoggingListener",
    "OutboxEvent",
    "OutboxRecord",
    "OutboxRelay",
    "OutboxStatus",
    "RecoverySweep",
    "RetryPolicy",
    "Saga",
    "SagaCancelledError",
    "SagaConfig",
    "SagaContextManager",
    "SagaDefinition",
    "SagaDefinitionError",
    "SagaError",
    "SagaListener",
    "SagaListenerEvent",
    "SagaNotFoundError",
    "SagaQuery",
    "SagaRecord",
    "SagaResult",
    "SagaStatus",
    "SagaStorage",
    "SagaTimeoutError",
    "SagaWorker",
    "StepDefinition",
    "StepInfo",
    "StepRecord",
    "StepStatus",
    "StepTimeoutError",
    "StorageError",
    "TransitionKind",
    "TriggerEvent",
    "TriggerPayloadError",
    "UnknownSagaError",
    "UnknownSourceError",
    "WorkerStats",
    "__version__",
    "action",
    "broker_from_url",
    "bulk_cancel",
    "bulk_retry",
    "cancel_saga",
    "check_correlation_id",
    "compensate",
    "configure",
    "correlation_id_from_header",
    "current_correlation_id",
    "current_step",
    "emit_event",
    "fire_event",
    "generate_correlation_id",
    "get_config",
    "get_runner",
    "import_saga_modules",
    "is_valid_correlation_id",
    "recover_unfinished",
    "registry",
    "resume_saga",
    "retry_saga",
    "start_saga",
    "storage_from_url",
    "to_mermaid",
    "trigger",
]
