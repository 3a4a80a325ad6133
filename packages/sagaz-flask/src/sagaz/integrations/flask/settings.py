"""How a Flask app configures Sagaz: ``app.config["SAGAZ_*"]`` and keyword arguments.

Each setting can be given in four places; a higher one wins:

1. keyword arguments of :meth:`SagaFlask.init_app` (this app only);
2. ``app.config["SAGAZ_..."]`` (this app only);
3. keyword arguments of the :class:`SagaFlask` constructor (defaults for every app);
4. the ``SAGAZ_*`` environment variables that :meth:`sagaz.core.SagaConfig.from_env`
   reads (storage and engine defaults only), then the built-in defaults.

:data:`SETTINGS` lists every ``app.config`` key with its keyword argument and meaning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from werkzeug.utils import ImportStringError, import_string

from sagaz.core import ConfigurationError, SagaConfig
from sagaz.core.web import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SIGNATURE_TOLERANCE,
    AuthorizeHook,
    WebhookSettings,
)

__all__ = [
    "CONFIG_KEYWORDS",
    "EXTENSION_KEYWORDS",
    "SETTINGS",
    "ResolvedSettings",
    "SagaFlaskSettings",
    "check_keywords",
    "resolve_settings",
]

logger = logging.getLogger("sagaz.flask")

#: ``app.config`` keys that become :class:`~sagaz.core.SagaConfig` arguments, with the
#: keyword argument each maps to (the same names as the ``SAGAZ_*`` environment).
_CONFIG_KEYS: Mapping[str, str] = {
    "SAGAZ_STORAGE_URL": "storage_url",
    "SAGAZ_MAX_PARALLEL": "max_parallel",
    "SAGAZ_STEP_TIMEOUT": "step_timeout",
    "SAGAZ_SAGA_TIMEOUT": "saga_timeout",
    "SAGAZ_RETRY_ATTEMPTS": "retry",
    "SAGAZ_FAILURE_POLICY": "failure_policy",
    "SAGAZ_OUTBOX": "outbox",
    "SAGAZ_LEASE_SECONDS": "lease_seconds",
    "SAGAZ_MAX_RECOVERIES": "max_recoveries",
}

#: Keyword arguments passed on to :class:`~sagaz.core.SagaConfig`.
CONFIG_KEYWORDS: frozenset[str] = frozenset(
    {
        "storage_url",
        "storage",
        "retry",
        "compensation_retry",
        "step_timeout",
        "saga_timeout",
        "max_parallel",
        "failure_policy",
        "listeners",
        "outbox",
        "lease_seconds",
        "max_recoveries",
    }
)

#: Keyword arguments of the extension itself (and ``config``, a ready SagaConfig).
EXTENSION_KEYWORDS: frozenset[str] = frozenset(
    {
        "config",
        "webhook_secrets",
        "max_body_bytes",
        "expose_context",
        "run_in_process",
        "saga_modules",
        "shutdown_timeout",
        "signature_tolerance",
        "legacy_signatures",
        "authorize",
        "metrics_endpoint",
    }
)

#: Every ``app.config`` key the extension reads: ``key -> (keyword argument, meaning)``.
SETTINGS: Mapping[str, tuple[str, str]] = {
    "SAGAZ_CONFIG": (
        "config",
        "a ready sagaz.core.SagaConfig; when given, the storage and engine settings below "
        "are not read",
    ),
    "SAGAZ_STORAGE_URL": (
        "storage_url",
        "where sagas are stored: memory:// (default; this process only), "
        "sqlite:///path.db, postgresql://... (keyword storage=: a storage instance instead)",
    ),
    "SAGAZ_MAX_PARALLEL": ("max_parallel", "most steps of one saga running at once (default 10)"),
    "SAGAZ_STEP_TIMEOUT": ("step_timeout", "default timeout of a step in seconds (default none)"),
    "SAGAZ_SAGA_TIMEOUT": ("saga_timeout", "default timeout of a saga in seconds (default none)"),
    "SAGAZ_RETRY_ATTEMPTS": (
        "retry",
        "default attempts per step, the first included (keyword: a RetryPolicy)",
    ),
    "SAGAZ_FAILURE_POLICY": ("failure_policy", "fail_fast (default) or wait_all"),
    "SAGAZ_OUTBOX": ("outbox", "write saga events to the transactional outbox (default False)"),
    "SAGAZ_LEASE_SECONDS": (
        "lease_seconds",
        "seconds before a crashed process's sagas are taken over (default 30)",
    ),
    "SAGAZ_MAX_RECOVERIES": (
        "max_recoveries",
        "recoveries after which a saga is parked as FAILED (default 5)",
    ),
    "SAGAZ_WEBHOOK_SECRETS": (
        "webhook_secrets",
        "mapping source -> shared secret; that source then requires X-Sagaz-Timestamp and "
        'X-Sagaz-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + the body> (default: '
        "none; a source not named here takes SAGAZ_WEBHOOK_SECRET_<SOURCE> from the "
        "environment when set)",
    ),
    "SAGAZ_SIGNATURE_TOLERANCE": (
        "signature_tolerance",
        "replay window of signed webhooks in seconds: an X-Sagaz-Timestamp further from "
        f"the server's clock gets 401 (default {DEFAULT_SIGNATURE_TOLERANCE:g})",
    ),
    "SAGAZ_LEGACY_SIGNATURES": (
        "legacy_signatures",
        "also accept the older body-only X-Sagaz-Signature without a timestamp (default "
        "False: it has no replay protection)",
    ),
    "SAGAZ_AUTHORIZE": (
        "authorize",
        "a function (or its dotted path, 'pkg.module:func') taking the Flask request and "
        "returning True to allow or False to refuse with 403; guards the webhook, status "
        "and diagram routes (default: none)",
    ),
    "SAGAZ_MAX_BODY_BYTES": (
        "max_body_bytes",
        f"largest webhook body accepted, larger ones get 413 (default {DEFAULT_MAX_BODY_BYTES})",
    ),
    "SAGAZ_METRICS_ENDPOINT": (
        "metrics_endpoint",
        "serve Prometheus metrics on this path (True: /metrics) and count this app's "
        "sagas; needs sagaz-core[prometheus] (default: off)",
    ),
    "SAGAZ_EXPOSE_CONTEXT": (
        "expose_context",
        "show each saga's context in the status routes (default False: it may hold personal data)",
    ),
    "SAGAZ_RUN_IN_PROCESS": (
        "run_in_process",
        "run started sagas in this process on its background loop (default True); "
        "False leaves them PENDING for `sagaz worker`",
    ),
    "SAGAZ_SAGA_MODULES": (
        "saga_modules",
        "modules to import at init_app so their sagas and triggers register "
        "(a list, or a comma-separated string)",
    ),
    "SAGAZ_SHUTDOWN_TIMEOUT": (
        "shutdown_timeout",
        "seconds close() (and process exit) waits for sagas still running (default 10)",
    ),
}

_KEYWORD_OF_KEY: Mapping[str, str] = {key: kw for key, (kw, _) in SETTINGS.items()}
_KEY_OF_KEYWORD: Mapping[str, str] = {
    kw: key for key, kw in _KEYWORD_OF_KEY.items() if key != "SAGAZ_RETRY_ATTEMPTS"
}


@dataclass(frozen=True, slots=True)
class SagaFlaskSettings:
    """The extension's own settings for one app (see :data:`SETTINGS`)."""

    webhook_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    expose_context: bool = False
    run_in_process: bool = True
    saga_modules: tuple[str, ...] = ()
    shutdown_timeout: float = 10.0
    signature_tolerance: float = DEFAULT_SIGNATURE_TOLERANCE
    legacy_signatures: bool = False
    authorize: AuthorizeHook | None = None
    metrics_endpoint: str | None = None

    def webhook_settings(
        self,
        *,
        secrets: Mapping[str, str] | None = None,
        max_body_bytes: int | None = None,
        expose_context: bool | None = None,
        run_in_process: bool | None = None,
    ) -> WebhookSettings:
        """The core's :class:`~sagaz.core.web.WebhookSettings`, with per-blueprint overrides."""
        return WebhookSettings(
            max_body_bytes=self.max_body_bytes if max_body_bytes is None else max_body_bytes,
            secrets=dict(self.webhook_secrets if secrets is None else secrets),
            expose_context=self.expose_context if expose_context is None else expose_context,
            run_in_process=self.run_in_process if run_in_process is None else run_in_process,
            signature_tolerance=self.signature_tolerance,
            legacy_signatures=self.legacy_signatures,
            authorize=self.authorize,
        )


@dataclass(frozen=True, slots=True)
class ResolvedSettings:
    """What :func:`resolve_settings` found for one app."""

    config: SagaConfig
    settings: SagaFlaskSettings
    #: The storage URL the app's storage was built from, or None when it was given as
    #: an instance (the ``flask sagaz`` commands need a URL).
    storage_url: str | None
    #: True when the extension built the SagaConfig (and may rebuild its storage).
    owns_config: bool


def check_keywords(kwargs: Mapping[str, Any], where: str) -> None:
    """Raise TypeError naming any keyword argument the extension does not know."""
    unknown = sorted(set(kwargs) - CONFIG_KEYWORDS - EXTENSION_KEYWORDS)
    if unknown:
        known = ", ".join(sorted(CONFIG_KEYWORDS | EXTENSION_KEYWORDS))
        raise TypeError(f"{where} got unknown keyword argument(s) {unknown}; known: {known}")


def _as_env(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ConfigurationError(
        f"app.config[{key!r}] must be a string or a number, got {type(value).__name__}"
    )


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        flag = value.strip().lower()
        if flag in {"1", "true", "yes", "on"}:
            return True
        if flag in {"0", "false", "no", "off", ""}:
            return False
    raise ConfigurationError(f"Sagaz setting {key} must be a boolean, got {value!r}")


def _as_number(key: str, value: Any, kind: type[int] | type[float], low: float) -> Any:
    if isinstance(value, bool):
        raise ConfigurationError(f"Sagaz setting {key} must be a number, got {value!r}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"Sagaz setting {key} must be a number, got {value!r}") from None
    if number < low:
        raise ConfigurationError(f"Sagaz setting {key} must be >= {low}, got {value!r}")
    return number


def _as_modules(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(m.strip() for m in value.split(",") if m.strip())
    if isinstance(value, Iterable) and all(isinstance(m, str) for m in value):
        return tuple(m.strip() for m in value if m.strip())
    raise ConfigurationError(
        f"Sagaz setting {key} must be a list of module names or a comma-separated string"
    )


def _as_secrets(key: str, value: Any) -> dict[str, str]:
    if isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
    ):
        return dict(value)
    raise ConfigurationError(
        f"Sagaz setting {key} must map each source name to a non-empty secret string"
    )


def _as_hook(key: str, value: Any) -> Callable[..., Any]:
    if isinstance(value, str):
        try:
            value = import_string(value.strip())
        except ImportStringError as exc:
            raise ConfigurationError(
                f"Sagaz setting {key} names {exc.import_name!r}, which cannot be imported: "
                f"{exc.exception}"
            ) from None
    if not callable(value):
        raise ConfigurationError(
            f"Sagaz setting {key} must be a function taking the request (or its dotted "
            f"path), got {type(value).__name__}"
        )
    hook: Callable[..., Any] = value
    return hook


def _extension_settings(values: Mapping[str, Any]) -> SagaFlaskSettings:
    kwargs: dict[str, Any] = {}
    for kw, value in values.items():
        key = _KEY_OF_KEYWORD[kw]
        if kw == "webhook_secrets":
            kwargs[kw] = _as_secrets(key, value)
        elif kw == "max_body_bytes":
            kwargs[kw] = _as_number(key, value, int, 0)
        elif kw in {"expose_context", "run_in_process", "legacy_signatures"}:
            kwargs[kw] = _as_bool(key, value)
        elif kw == "signature_tolerance":
            kwargs[kw] = _as_number(key, value, float, 1)
        elif kw == "authorize":
            kwargs[kw] = _as_hook(key, value)
        elif kw == "saga_modules":
            kwargs[kw] = _as_modules(key, value)
        elif kw == "shutdown_timeout":
            kwargs[kw] = _as_number(key, value, float, 0)
        elif kw == "metrics_endpoint":
            kwargs[kw] = _as_metrics_path(key, value)
    return SagaFlaskSettings(**kwargs)


def _as_metrics_path(key: str, value: Any) -> str | None:
    if value is True or value is False or value is None:
        return "/metrics" if value else None
    if isinstance(value, str) and value.startswith("/"):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return "/metrics"
    if isinstance(value, str) and value.strip().lower() in {"", "0", "false", "no", "off"}:
        return None
    raise ConfigurationError(
        f"Sagaz setting {key} must be True/False or a path starting with '/', got {value!r}"
    )


def resolve_settings(
    app_name: str,
    app_config: Mapping[str, Any],
    defaults: Mapping[str, Any],
    overrides: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> ResolvedSettings:
    """Combine constructor ``defaults``, ``app_config`` and init_app ``overrides``.

    Raises :class:`~sagaz.core.ConfigurationError` naming the setting at fault.
    """
    environ = os.environ if environ is None else environ
    for key in app_config:
        if isinstance(key, str) and key.startswith("SAGAZ_") and key not in SETTINGS:
            logger.warning(
                "app.config[%r] is not a Sagaz setting (known: %s); it is ignored",
                key,
                ", ".join(SETTINGS),
            )

    # The extension's own settings: overrides > app.config > defaults.
    ext: dict[str, Any] = {}
    for kw in EXTENSION_KEYWORDS - {"config"}:
        key = _KEY_OF_KEYWORD[kw]
        if kw in overrides:
            ext[kw] = overrides[kw]
        elif app_config.get(key) is not None:
            ext[kw] = app_config[key]
        elif kw in defaults:
            ext[kw] = defaults[kw]
    try:
        settings = _extension_settings(ext)
    except ConfigurationError as exc:
        raise ConfigurationError(f"Flask app {app_name!r}: {exc}") from None

    # A ready SagaConfig, if any (same precedence).
    ready = overrides.get("config")
    if ready is None:
        ready = app_config.get("SAGAZ_CONFIG")
    if ready is None:
        ready = defaults.get("config")
    if ready is not None:
        if not isinstance(ready, SagaConfig):
            raise ConfigurationError(
                f"Flask app {app_name!r}: SAGAZ_CONFIG / config= must be a "
                f"sagaz.core.SagaConfig, got {type(ready).__name__}"
            )
        return ResolvedSettings(ready, settings, ready.storage_url, owns_config=False)

    # SagaConfig arguments: overrides > app.config > defaults > environment.
    env = {key: environ[key] for key in _CONFIG_KEYS if key in environ}
    kwargs = {kw: v for kw, v in defaults.items() if kw in CONFIG_KEYWORDS}
    for key, kw in _CONFIG_KEYS.items():
        value = app_config.get(key)
        if value is not None:
            env[key] = _as_env(key, value)
            kwargs.pop(kw, None)
    kwargs.update({kw: v for kw, v in overrides.items() if kw in CONFIG_KEYWORDS})
    try:
        config = SagaConfig.from_env(env, **kwargs)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"Flask app {app_name!r}: invalid Sagaz setting (app.config, keyword arguments "
            f"or the SAGAZ_* environment): {exc}"
        ) from None
    storage_url = None if kwargs.get("storage") is not None else config.storage_url
    return ResolvedSettings(config, settings, storage_url, owns_config=True)
