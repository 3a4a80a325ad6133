"""Configuration: where sagas are stored and the defaults every saga inherits."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from sagaz.core.errors import ConfigurationError
from sagaz.core.listeners import SagaListener
from sagaz.core.retry import RetryPolicy
from sagaz.core.storage import SagaStorage, storage_from_url

__all__ = [
    "ENVIRONMENT_VARIABLES",
    "FailurePolicy",
    "SagaConfig",
    "configure",
    "get_config",
    "redact_url",
]

_T = TypeVar("_T")


def redact_url(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***``.

    ``postgresql://app:s3cret@db/orders`` becomes ``postgresql://app:***@db/orders``;
    a URL without a password is returned unchanged.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user_part, _, host_part = parts.netloc.rpartition("@")
    user = user_part.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host_part}"))


class FailurePolicy(StrEnum):
    """What happens to steps still running on parallel branches when one step fails.

    ``FAIL_FAST`` cancels them, then compensates what completed; ``WAIT_ALL`` lets
    them finish (starting nothing new), then compensates everything that completed.
    A plain-function (sync) step runs in a thread that cannot be interrupted: under
    ``FAIL_FAST`` the saga still waits for such a sibling to return before compensating.
    """

    FAIL_FAST = "fail_fast"
    WAIT_ALL = "wait_all"


#: The environment variables :meth:`SagaConfig.from_env` reads, with what each sets.
ENVIRONMENT_VARIABLES: Mapping[str, str] = {
    "SAGAZ_STORAGE_URL": "storage URL: memory://, sqlite:///path.db or postgresql://...",
    "SAGAZ_MAX_PARALLEL": "most steps of one saga running at once (integer >= 1)",
    "SAGAZ_STEP_TIMEOUT": "default timeout of a step or compensation in seconds",
    "SAGAZ_SAGA_TIMEOUT": "default timeout of a whole saga in seconds",
    "SAGAZ_RETRY_ATTEMPTS": "default attempts per step, the first included (integer >= 1)",
    "SAGAZ_FAILURE_POLICY": "fail_fast or wait_all",
    "SAGAZ_OUTBOX": "1/true to write saga events to the transactional outbox",
    "SAGAZ_LEASE_SECONDS": "seconds before a crashed process's sagas are taken over",
    "SAGAZ_MAX_RECOVERIES": "recoveries after which a saga is parked as FAILED",
}


class SagaConfig:
    """Where sagas are stored and the defaults a saga uses where it sets nothing.

    ``storage`` (an instance) wins over ``storage_url``. ``retry`` is the default step
    retry policy; ``compensation_retry`` the default for compensations (three attempts:
    undoing matters more than failing fast). Timeouts are in seconds (None: no limit).
    ``outbox`` writes saga events to the transactional outbox (for a relay to publish);
    ``lease_seconds`` is how long a crashed process keeps its sagas before another
    takes them over; a saga recovered more than ``max_recoveries`` times is parked
    as FAILED.
    """

    def __init__(
        self,
        *,
        storage_url: str = "memory://",
        storage: SagaStorage | None = None,
        retry: RetryPolicy | None = None,
        compensation_retry: RetryPolicy | None = None,
        step_timeout: float | None = None,
        saga_timeout: float | None = None,
        max_parallel: int = 10,
        failure_policy: FailurePolicy | str = FailurePolicy.FAIL_FAST,
        listeners: Iterable[SagaListener] = (),
        outbox: bool = False,
        lease_seconds: float | None = None,
        max_recoveries: int = 5,
    ) -> None:
        if max_recoveries < 1:
            raise ConfigurationError(f"max_recoveries must be >= 1, got {max_recoveries}")
        if max_parallel < 1:
            raise ConfigurationError(f"max_parallel must be >= 1, got {max_parallel}")
        for name, value in (
            ("lease_seconds", lease_seconds),
            ("step_timeout", step_timeout),
            ("saga_timeout", saga_timeout),
        ):
            if value is not None and not 0 < value < math.inf:  # NaN fails too
                raise ConfigurationError(f"{name} must be > 0 seconds (finite), got {value}")
        try:
            self.failure_policy = FailurePolicy(failure_policy)
        except ValueError:
            raise ConfigurationError(
                f"failure_policy {failure_policy!r} is not one of "
                f"{', '.join(p.value for p in FailurePolicy)}"
            ) from None
        self.storage_url = storage_url
        self.storage: SagaStorage = (
            storage if storage is not None else storage_from_url(storage_url)
        )
        self.retry = retry or RetryPolicy()
        self.compensation_retry = compensation_retry or RetryPolicy(max_attempts=3)
        self.step_timeout = step_timeout
        self.saga_timeout = saga_timeout
        self.max_parallel = max_parallel
        self.listeners: list[SagaListener] = list(listeners)
        self.outbox = outbox
        self.max_recoveries = max_recoveries
        if lease_seconds is not None:
            self.storage.lease_seconds = lease_seconds

    @property
    def storage_location(self) -> str:
        """``storage_url`` with any password replaced by ``***``: safe to print or log."""
        return redact_url(self.storage_url)

    def __repr__(self) -> str:
        return (
            f"SagaConfig(storage={type(self.storage).__name__}, max_parallel={self.max_parallel}, "
            f"failure_policy={self.failure_policy.value!r})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> SagaConfig:
        """A config from ``SAGAZ_*`` variables (see :data:`ENVIRONMENT_VARIABLES`).

        Keyword ``overrides`` win over the environment. A malformed value raises
        :class:`~sagaz.core.errors.ConfigurationError` naming the variable.
        """
        env = os.environ if env is None else env
        kwargs: dict[str, Any] = {}
        # Each variable is checked on its own so an error names the variable.
        for variable, keyword, parse in _ENV_FIELDS:
            if variable not in env:
                continue
            value = parse(env, variable)
            try:
                cls(**{keyword: value})
            except ConfigurationError as exc:
                raise ConfigurationError(
                    f"environment variable {variable}={env[variable]!r} is invalid: {exc} "
                    f"({ENVIRONMENT_VARIABLES[variable]})"
                ) from None
            kwargs[keyword] = value
        kwargs.update(overrides)
        return cls(**kwargs)


def _retry_from_env(env: Mapping[str, str], name: str) -> RetryPolicy:
    attempts = _parse(env, name, int)
    if attempts < 1:
        raise ConfigurationError(
            f"environment variable {name}={env[name]!r} must be >= 1 "
            f"({ENVIRONMENT_VARIABLES[name]})"
        )
    return RetryPolicy(max_attempts=attempts)


def _bool_from_env(env: Mapping[str, str], name: str) -> bool:
    flag = env[name].strip().lower()
    if flag not in {"1", "0", "true", "false", "yes", "no", "on", "off", ""}:
        raise ConfigurationError(
            f"environment variable {name}={env[name]!r} is not a boolean; use 1/0, "
            "true/false, yes/no or on/off"
        )
    return flag in {"1", "true", "yes", "on"}


def _parse(env: Mapping[str, str], name: str, kind: Callable[[str], _T]) -> _T:
    try:
        return kind(env[name])
    except ValueError:
        raise ConfigurationError(
            f"environment variable {name}={env[name]!r} is not a valid "
            f"{getattr(kind, '__name__', 'value')}: {ENVIRONMENT_VARIABLES[name]}"
        ) from None


_global_config: SagaConfig | None = None


def configure(config: SagaConfig | None = None, **kwargs: Any) -> SagaConfig:
    """Set the process-wide default config (from an instance or SagaConfig keywords)."""
    global _global_config
    if config is not None and kwargs:
        raise TypeError("configure() takes a SagaConfig or keyword arguments, not both")
    _global_config = config if config is not None else SagaConfig(**kwargs)
    return _global_config


def get_config() -> SagaConfig:
    """The process-wide default config; created from the environment on first use."""
    global _global_config
    if _global_config is None:
        _global_config = SagaConfig.from_env()
    return _global_config


_ENV_FIELDS: tuple[tuple[str, str, Callable[[Mapping[str, str], str], Any]], ...] = (
    ("SAGAZ_STORAGE_URL", "storage_url", lambda env, name: env[name]),
    ("SAGAZ_MAX_PARALLEL", "max_parallel", lambda env, name: _parse(env, name, int)),
    ("SAGAZ_STEP_TIMEOUT", "step_timeout", lambda env, name: _parse(env, name, float)),
    ("SAGAZ_SAGA_TIMEOUT", "saga_timeout", lambda env, name: _parse(env, name, float)),
    ("SAGAZ_RETRY_ATTEMPTS", "retry", _retry_from_env),
    ("SAGAZ_FAILURE_POLICY", "failure_policy", lambda env, name: env[name].strip().lower()),
    ("SAGAZ_OUTBOX", "outbox", _bool_from_env),
    ("SAGAZ_LEASE_SECONDS", "lease_seconds", lambda env, name: _parse(env, name, float)),
    ("SAGAZ_MAX_RECOVERIES", "max_recoveries", lambda env, name: _parse(env, name, int)),
)
