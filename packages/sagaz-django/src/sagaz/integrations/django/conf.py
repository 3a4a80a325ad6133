"""``settings.SAGAZ``: the plugin's settings, their defaults and their validation.

Every key is optional::

    SAGAZ = {
        "DATABASE": "default",       # the Django database alias sagas are stored in
        "RUN_IN_PROCESS": True,      # run started sagas in the web process (else: sagaz_worker)
        "WEBHOOK_SECRETS": {},       # source -> HMAC-SHA256 shared secret (signature required)
        "SIGNATURE_TOLERANCE": 300,  # replay window of signed webhooks, in seconds
        "LEGACY_SIGNATURES": False,  # also accept body-only signatures without a timestamp
        "AUTHORIZE": None,           # "pkg.module.func" (or a function): request -> bool
        "MAX_BODY_BYTES": 1048576,   # largest webhook body accepted (413 above)
        "EXPOSE_CONTEXT": False,     # show a saga's context in the status routes
        "SAGA_MODULES": [],          # modules to import besides every installed app's sagas.py
        "OUTBOX": False,             # write saga events to the transactional outbox
        "LEASE_SECONDS": 30.0,       # a crashed process's sagas are taken over after this
        "MAX_RECOVERIES": 5,         # a saga recovered this often is parked as FAILED
    }

:func:`validate` checks a mapping and returns one problem per bad key (the system checks
report them at start-up, each naming its key); :func:`get_settings` returns the validated
settings and raises :class:`~django.core.exceptions.ImproperlyConfigured` naming the bad key.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from sagaz.core.web import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SIGNATURE_TOLERANCE,
    AuthorizeHook,
    WebhookSettings,
)

__all__ = ["DEFAULTS", "DOCS", "SagazSettings", "get_settings", "reset_settings", "validate"]

#: Each key of ``settings.SAGAZ`` with what it does (also shown by the system checks).
DOCS: Final[Mapping[str, str]] = {
    "DATABASE": "alias of the Django database that stores sagas (a key of DATABASES)",
    "RUN_IN_PROCESS": "run started sagas in this process (False: leave them to sagaz_worker)",
    "WEBHOOK_SECRETS": "dict of webhook source -> HMAC-SHA256 shared secret (non-empty str); "
    "a source not named here takes SAGAZ_WEBHOOK_SECRET_<SOURCE> from the environment",
    "SIGNATURE_TOLERANCE": "replay window of signed webhooks: an X-Sagaz-Timestamp further "
    "than this many seconds from the server's clock gets 401 (number > 0)",
    "LEGACY_SIGNATURES": "also accept the older body-only X-Sagaz-Signature without a "
    "timestamp (bool; no replay protection)",
    "AUTHORIZE": "dotted path of (or) a function taking the request and returning True "
    "(allow) or False (403); guards the webhook, status and diagram views",
    "MAX_BODY_BYTES": "largest webhook body accepted, in bytes (integer > 0)",
    "EXPOSE_CONTEXT": "show a saga's context in the status routes (bool; may hold personal data)",
    "SAGA_MODULES": "list of dotted module names defining sagas, imported at start-up",
    "OUTBOX": "write saga events to the transactional outbox table (bool)",
    "LEASE_SECONDS": "seconds before a crashed process's sagas are taken over (number > 0)",
    "MAX_RECOVERIES": "recoveries after which a saga is parked as FAILED (integer >= 1)",
}

#: The value of each key when ``settings.SAGAZ`` does not set it.
DEFAULTS: Final[Mapping[str, Any]] = {
    "DATABASE": "default",
    "RUN_IN_PROCESS": True,
    "WEBHOOK_SECRETS": {},
    "SIGNATURE_TOLERANCE": DEFAULT_SIGNATURE_TOLERANCE,
    "LEGACY_SIGNATURES": False,
    "AUTHORIZE": None,
    "MAX_BODY_BYTES": DEFAULT_MAX_BODY_BYTES,
    "EXPOSE_CONTEXT": False,
    "SAGA_MODULES": [],
    "OUTBOX": False,
    "LEASE_SECONDS": 30.0,
    "MAX_RECOVERIES": 5,
}


@dataclass(frozen=True, slots=True)
class SagazSettings:
    """The validated ``settings.SAGAZ`` (see the module docstring for each key)."""

    database: str = "default"
    run_in_process: bool = True
    webhook_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    expose_context: bool = False
    saga_modules: tuple[str, ...] = ()
    outbox: bool = False
    lease_seconds: float = 30.0
    max_recoveries: int = 5
    signature_tolerance: float = DEFAULT_SIGNATURE_TOLERANCE
    legacy_signatures: bool = False
    authorize: AuthorizeHook | None = None

    def webhook_settings(self) -> WebhookSettings:
        """The core's :class:`~sagaz.core.web.WebhookSettings` for the plugin's views."""
        return WebhookSettings(
            max_body_bytes=self.max_body_bytes,
            secrets=dict(self.webhook_secrets),
            expose_context=self.expose_context,
            run_in_process=self.run_in_process,
            signature_tolerance=self.signature_tolerance,
            legacy_signatures=self.legacy_signatures,
            authorize=self.authorize,
        )


def _key(name: str) -> str:
    return f"SAGAZ[{name!r}]"


def _hook(value: object) -> tuple[Callable[..., Any] | None, str | None]:
    """The AUTHORIZE hook (imported if given as a dotted path), or the problem with it."""
    if value is None:
        return None, None
    if isinstance(value, str):
        try:
            value = import_string(value.strip())
        except ImportError as exc:
            return None, f"{_key('AUTHORIZE')} is {value!r}, which cannot be imported: {exc}"
    if not callable(value):
        return None, (
            f"{_key('AUTHORIZE')} must be a function taking the request (or its dotted "
            f"path), not {type(value).__name__}"
        )
    hook: Callable[..., Any] = value
    return hook, None


def _bool(problems: dict[str, str], raw: Mapping[str, Any], name: str) -> None:
    if name in raw and not isinstance(raw[name], bool):
        problems[name] = f"{_key(name)} must be True or False, not {raw[name]!r}: {DOCS[name]}"


def validate(raw: object, databases: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Check a ``settings.SAGAZ`` value; return ``{key: problem}`` (empty when valid).

    The key ``""`` describes a problem with the value as a whole (not a dict).
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        return {
            "": f"settings.SAGAZ must be a dict, not a {type(raw).__name__}; e.g. "
            'SAGAZ = {"DATABASE": "default"}'
        }
    problems: dict[str, str] = {}
    for name in raw:
        if name not in DOCS:
            close = difflib.get_close_matches(str(name).upper(), list(DOCS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems[str(name)] = (
                f"settings.SAGAZ has an unknown key {name!r}{hint} (known keys: {', '.join(DOCS)})"
            )
    if "DATABASE" in raw:
        alias = raw["DATABASE"]
        if not isinstance(alias, str) or not alias:
            problems["DATABASE"] = (
                f"{_key('DATABASE')} must be a database alias (str), not {alias!r}"
            )
        elif databases is not None and alias not in databases:
            problems["DATABASE"] = (
                f"{_key('DATABASE')} is {alias!r}, which is not a key of settings.DATABASES "
                f"({', '.join(databases) or 'none'})"
            )
    for name in ("RUN_IN_PROCESS", "EXPOSE_CONTEXT", "OUTBOX", "LEGACY_SIGNATURES"):
        _bool(problems, raw, name)
    if "WEBHOOK_SECRETS" in raw:
        secrets = raw["WEBHOOK_SECRETS"]
        if not isinstance(secrets, Mapping):
            problems["WEBHOOK_SECRETS"] = (
                f"{_key('WEBHOOK_SECRETS')} must be a dict of source -> secret, not "
                f"{type(secrets).__name__}"
            )
        else:
            bad = [
                str(source)
                for source, secret in secrets.items()
                if not isinstance(source, str) or not isinstance(secret, str) or not secret
            ]
            if bad:
                problems["WEBHOOK_SECRETS"] = (
                    f"{_key('WEBHOOK_SECRETS')} maps each source name (str) to a non-empty "
                    f"secret (str); check the entries for: {', '.join(bad)}"
                )
    if "MAX_BODY_BYTES" in raw:
        value = raw["MAX_BODY_BYTES"]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems["MAX_BODY_BYTES"] = (
                f"{_key('MAX_BODY_BYTES')} must be an integer > 0 (bytes), not {value!r}"
            )
    if "SAGA_MODULES" in raw:
        modules = raw["SAGA_MODULES"]
        if (
            isinstance(modules, str)
            or not isinstance(modules, list | tuple)
            or not all(isinstance(m, str) and m for m in modules)
        ):
            problems["SAGA_MODULES"] = (
                f"{_key('SAGA_MODULES')} must be a list of dotted module names, not "
                f"{modules!r} (e.g. ['shop.workflows'])"
            )
    if "LEASE_SECONDS" in raw:
        value = raw["LEASE_SECONDS"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            problems["LEASE_SECONDS"] = (
                f"{_key('LEASE_SECONDS')} must be a number of seconds > 0, not {value!r}"
            )
    if "SIGNATURE_TOLERANCE" in raw:
        value = raw["SIGNATURE_TOLERANCE"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            problems["SIGNATURE_TOLERANCE"] = (
                f"{_key('SIGNATURE_TOLERANCE')} must be a number of seconds > 0, not {value!r}"
            )
    if "AUTHORIZE" in raw:
        problem = _hook(raw["AUTHORIZE"])[1]
        if problem is not None:
            problems["AUTHORIZE"] = problem
    if "MAX_RECOVERIES" in raw:
        value = raw["MAX_RECOVERIES"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems["MAX_RECOVERIES"] = (
                f"{_key('MAX_RECOVERIES')} must be an integer >= 1, not {value!r}"
            )
    return problems


def _raw() -> object:
    return getattr(django_settings, "SAGAZ", None)


_cached: SagazSettings | None = None


def get_settings() -> SagazSettings:
    """The validated settings (cached; reset when a test changes ``SAGAZ``).

    Raises :class:`~django.core.exceptions.ImproperlyConfigured` naming the bad key.
    """
    global _cached
    cached = _cached
    if cached is not None:
        return cached
    raw = _raw()
    problems = validate(raw, getattr(django_settings, "DATABASES", None))
    if problems:
        raise ImproperlyConfigured("; ".join(problems.values()))
    values: dict[str, Any] = {**DEFAULTS, **(dict(raw) if isinstance(raw, Mapping) else {})}
    cached = _cached = SagazSettings(
        database=values["DATABASE"],
        run_in_process=values["RUN_IN_PROCESS"],
        webhook_secrets=dict(values["WEBHOOK_SECRETS"]),
        max_body_bytes=values["MAX_BODY_BYTES"],
        expose_context=values["EXPOSE_CONTEXT"],
        saga_modules=tuple(values["SAGA_MODULES"]),
        outbox=values["OUTBOX"],
        lease_seconds=float(values["LEASE_SECONDS"]),
        max_recoveries=values["MAX_RECOVERIES"],
        signature_tolerance=float(values["SIGNATURE_TOLERANCE"]),
        legacy_signatures=values["LEGACY_SIGNATURES"],
        authorize=_hook(values["AUTHORIZE"])[0],
    )
    return cached


def reset_settings() -> None:
    """Forget the cached settings (and the service built from them)."""
    global _cached
    _cached = None
    from sagaz.integrations.django import runtime

    runtime.reset()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in {"SAGAZ", "DATABASES"}:
        reset_settings()
