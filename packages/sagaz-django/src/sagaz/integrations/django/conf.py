"""``settings.SAGAZ``: the plugin's settings, their defaults and their validation.

Seven keys, every one optional (the webhook routes' options are grouped under
``WEBHOOKS``, whose keys are optional too)::

    SAGAZ = {
        "DATABASE": "default",       # the Django database alias sagas are stored in
        "RUN_IN_PROCESS": True,      # run started sagas in the web process (else: sagaz_worker)
        "OUTBOX": False,             # write saga events to the transactional outbox
        "SAGA_MODULES": [],          # modules to import besides every installed app's sagas.py
        "LEASE_SECONDS": 30.0,       # a crashed process's sagas are taken over after this
        "MAX_RECOVERIES": 5,         # a saga recovered this often is parked as FAILED
        "WEBHOOKS": {                # the webhook, status and diagram views
            "SECRETS": {},               # source -> HMAC-SHA256 shared secret (signature required)
            "SIGNATURE_TOLERANCE": 300,  # replay window of signed webhooks, in seconds
            "LEGACY_SIGNATURES": False,  # also accept body-only signatures without a timestamp
            "AUTHORIZE": None,           # "pkg.module.func" (or a function): request -> bool
            "MAX_BODY_BYTES": 1048576,   # largest webhook body accepted (413 above)
            "EXPOSE_CONTEXT": False,     # show a saga's context in the status routes
        },
    }

:func:`validate` checks a mapping and returns one :class:`Problem` per bad key, each naming
the key's full path (``SAGAZ['WEBHOOKS']['MAX_BODY_BYTES']``); the system checks report them
at start-up. A webhook option written at the top level (``SAGAZ["MAX_BODY_BYTES"]``, the
layout before 0.1 was released) is reported with the place it moved to.
:func:`get_settings` returns the validated settings and raises
:class:`~django.core.exceptions.ImproperlyConfigured` naming the bad key.
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

__all__ = [
    "DEFAULTS",
    "DOCS",
    "WEBHOOK_DEFAULTS",
    "WEBHOOK_DOCS",
    "Problem",
    "SagazSettings",
    "get_settings",
    "reset_settings",
    "validate",
]

#: Each key of ``settings.SAGAZ`` with what it does (also shown by the system checks).
DOCS: Final[Mapping[str, str]] = {
    "DATABASE": "alias of the Django database that stores sagas (a key of DATABASES)",
    "RUN_IN_PROCESS": "run started sagas in this process (False: leave them to sagaz_worker)",
    "OUTBOX": "write saga events to the transactional outbox table (bool)",
    "SAGA_MODULES": "list of dotted module names defining sagas, imported at start-up",
    "LEASE_SECONDS": "seconds before a crashed process's sagas are taken over (number > 0)",
    "MAX_RECOVERIES": "recoveries after which a saga is parked as FAILED (integer >= 1)",
    "WEBHOOKS": "dict of options of the webhook, status and diagram views, every one optional: "
    "SECRETS, SIGNATURE_TOLERANCE, LEGACY_SIGNATURES, AUTHORIZE, MAX_BODY_BYTES, EXPOSE_CONTEXT",
}

#: Each key of ``settings.SAGAZ["WEBHOOKS"]`` with what it does.
WEBHOOK_DOCS: Final[Mapping[str, str]] = {
    "SECRETS": "dict of webhook source -> HMAC-SHA256 shared secret (non-empty str); "
    "a source not named here takes SAGAZ_WEBHOOK_SECRET_<SOURCE> from the environment",
    "SIGNATURE_TOLERANCE": "replay window of signed webhooks: an X-Sagaz-Timestamp further "
    "than this many seconds from the server's clock gets 401 (number > 0)",
    "LEGACY_SIGNATURES": "also accept the older body-only X-Sagaz-Signature without a "
    "timestamp (bool; no replay protection)",
    "AUTHORIZE": "dotted path of (or) a function taking the request and returning True "
    "(allow) or False (403); guards the webhook, status and diagram views",
    "MAX_BODY_BYTES": "largest webhook body accepted, in bytes (integer > 0)",
    "EXPOSE_CONTEXT": "show a saga's context in the status routes (bool; may hold personal data)",
}

#: The value of each key when ``settings.SAGAZ`` does not set it.
DEFAULTS: Final[Mapping[str, Any]] = {
    "DATABASE": "default",
    "RUN_IN_PROCESS": True,
    "OUTBOX": False,
    "SAGA_MODULES": [],
    "LEASE_SECONDS": 30.0,
    "MAX_RECOVERIES": 5,
    "WEBHOOKS": {},
}

#: The value of each key when ``settings.SAGAZ["WEBHOOKS"]`` does not set it.
WEBHOOK_DEFAULTS: Final[Mapping[str, Any]] = {
    "SECRETS": {},
    "SIGNATURE_TOLERANCE": DEFAULT_SIGNATURE_TOLERANCE,
    "LEGACY_SIGNATURES": False,
    "AUTHORIZE": None,
    "MAX_BODY_BYTES": DEFAULT_MAX_BODY_BYTES,
    "EXPOSE_CONTEXT": False,
}

#: Top-level names of the pre-release layout -> their key under ``SAGAZ["WEBHOOKS"]``.
_MOVED: Final[Mapping[str, str]] = {
    "WEBHOOK_SECRETS": "SECRETS",
    **{name: name for name in WEBHOOK_DOCS if name != "SECRETS"},
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One bad entry of ``settings.SAGAZ``.

    ``setting`` names it by its full path (``SAGAZ['WEBHOOKS']['MAX_BODY_BYTES']``, or
    ``settings.SAGAZ`` for the value as a whole); ``message`` says what is wrong and how to
    fix it; ``kind`` is ``"type"`` (not a dict), ``"value"`` (a bad value) or ``"key"`` (an
    unknown or moved key); ``hint`` documents the key, when it is a known one.
    """

    setting: str
    message: str
    kind: str
    hint: str = ""


@dataclass(frozen=True, slots=True)
class SagazSettings:
    """The validated ``settings.SAGAZ``, defaults filled in.

    ``settings.SAGAZ`` has seven keys, all optional: ``DATABASE``, ``RUN_IN_PROCESS``,
    ``OUTBOX``, ``SAGA_MODULES``, ``LEASE_SECONDS``, ``MAX_RECOVERIES`` and ``WEBHOOKS``, a
    dict of the webhook views' options (all optional too): ``SECRETS``,
    ``SIGNATURE_TOLERANCE``, ``LEGACY_SIGNATURES``, ``AUTHORIZE``, ``MAX_BODY_BYTES`` and
    ``EXPOSE_CONTEXT``. Each field is its key in lower case (``SECRETS`` is
    ``webhook_secrets``); the module ``sagaz.integrations.django.conf`` documents each key
    and its default.
    """

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


def _hook_key(name: str) -> str:
    return f"SAGAZ['WEBHOOKS'][{name!r}]"


def _hook(value: object) -> tuple[Callable[..., Any] | None, str | None]:
    """The AUTHORIZE hook (imported if given as a dotted path), or the problem with it."""
    where = _hook_key("AUTHORIZE")
    if value is None:
        return None, None
    if isinstance(value, str):
        try:
            value = import_string(value.strip())
        except ImportError as exc:
            return None, f"{where} is {value!r}, which cannot be imported: {exc}"
    if not callable(value):
        return None, (
            f"{where} must be a function taking the request (or its dotted path), "
            f"not {type(value).__name__}"
        )
    hook: Callable[..., Any] = value
    return hook, None


class _Collector:
    """Gathers the problems of one mapping (the top level or ``WEBHOOKS``)."""

    def __init__(self, raw: Mapping[str, Any], docs: Mapping[str, str], path: Callable[[str], str]):
        self.raw, self.docs, self.path = raw, docs, path
        self.found: list[Problem] = []

    def bad(self, name: str, message: str) -> None:
        self.found.append(
            Problem(self.path(name), message, "value", f"{self.path(name)}: {self.docs[name]}")
        )

    def boolean(self, name: str) -> None:
        if name in self.raw and not isinstance(self.raw[name], bool):
            self.bad(
                name,
                f"{self.path(name)} must be True or False, not {self.raw[name]!r}: "
                f"{self.docs[name]}",
            )

    def seconds(self, name: str) -> None:
        if name not in self.raw:
            return
        value = self.raw[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            self.bad(name, f"{self.path(name)} must be a number of seconds > 0, not {value!r}")


def _unknown(name: object, raw_path: str, known: Mapping[str, str]) -> str:
    close = difflib.get_close_matches(str(name).upper(), list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{raw_path} has an unknown key {name!r}{hint} (known keys: {', '.join(known)})"


def _check_top(raw: Mapping[Any, Any], databases: Mapping[str, Any] | None) -> list[Problem]:
    top = _Collector(raw, DOCS, _key)
    for name in raw:
        if name in DOCS:
            continue
        if name in _MOVED:
            new = _hook_key(_MOVED[name])
            top.found.append(
                Problem(
                    _key(str(name)),
                    f"{_key(str(name))} has moved to {new}: the webhook options are grouped "
                    f'under one key, e.g. SAGAZ = {{"WEBHOOKS": {{"{_MOVED[name]}": ...}}}}',
                    "key",
                    f"{new}: {WEBHOOK_DOCS[_MOVED[name]]}",
                )
            )
        else:
            top.found.append(
                Problem(_key(str(name)), _unknown(name, "settings.SAGAZ", DOCS), "key")
            )
    if "DATABASE" in raw:
        alias = raw["DATABASE"]
        if not isinstance(alias, str) or not alias:
            top.bad("DATABASE", f"{_key('DATABASE')} must be a database alias (str), not {alias!r}")
        elif databases is not None and alias not in databases:
            top.bad(
                "DATABASE",
                f"{_key('DATABASE')} is {alias!r}, which is not a key of settings.DATABASES "
                f"({', '.join(databases) or 'none'})",
            )
    for name in ("RUN_IN_PROCESS", "OUTBOX"):
        top.boolean(name)
    if "SAGA_MODULES" in raw:
        modules = raw["SAGA_MODULES"]
        if (
            isinstance(modules, str)
            or not isinstance(modules, list | tuple)
            or not all(isinstance(m, str) and m for m in modules)
        ):
            top.bad(
                "SAGA_MODULES",
                f"{_key('SAGA_MODULES')} must be a list of dotted module names, not "
                f"{modules!r} (e.g. ['shop.workflows'])",
            )
    top.seconds("LEASE_SECONDS")
    if "MAX_RECOVERIES" in raw:
        value = raw["MAX_RECOVERIES"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            top.bad(
                "MAX_RECOVERIES", f"{_key('MAX_RECOVERIES')} must be an integer >= 1, not {value!r}"
            )
    if "WEBHOOKS" in raw:
        webhooks = raw["WEBHOOKS"]
        if not isinstance(webhooks, Mapping):
            top.bad(
                "WEBHOOKS",
                f"{_key('WEBHOOKS')} must be a dict of webhook options, not "
                f'{type(webhooks).__name__}; e.g. "WEBHOOKS": {{"MAX_BODY_BYTES": 65536}}',
            )
        else:
            top.found.extend(_check_webhooks(webhooks))
    return top.found


def _check_webhooks(raw: Mapping[Any, Any]) -> list[Problem]:
    hooks = _Collector(raw, WEBHOOK_DOCS, _hook_key)
    for name in raw:
        if name in WEBHOOK_DOCS:
            continue
        message = _unknown(name, _key("WEBHOOKS"), WEBHOOK_DOCS)
        if name in DOCS:
            message += f"; {name!r} belongs at the top level: {_key(str(name))}"
        hooks.found.append(Problem(_hook_key(str(name)), message, "key"))
    for name in ("LEGACY_SIGNATURES", "EXPOSE_CONTEXT"):
        hooks.boolean(name)
    if "SECRETS" in raw:
        secrets = raw["SECRETS"]
        where = _hook_key("SECRETS")
        if not isinstance(secrets, Mapping):
            hooks.bad(
                "SECRETS",
                f"{where} must be a dict of source -> secret, not {type(secrets).__name__}",
            )
        else:
            bad = [
                str(source)
                for source, secret in secrets.items()
                if not isinstance(source, str) or not isinstance(secret, str) or not secret
            ]
            if bad:
                hooks.bad(
                    "SECRETS",
                    f"{where} maps each source name (str) to a non-empty secret (str); "
                    f"check the entries for: {', '.join(bad)}",
                )
    if "MAX_BODY_BYTES" in raw:
        value = raw["MAX_BODY_BYTES"]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            hooks.bad(
                "MAX_BODY_BYTES",
                f"{_hook_key('MAX_BODY_BYTES')} must be an integer > 0 (bytes), not {value!r}",
            )
    hooks.seconds("SIGNATURE_TOLERANCE")
    if "AUTHORIZE" in raw:
        problem = _hook(raw["AUTHORIZE"])[1]
        if problem is not None:
            hooks.bad("AUTHORIZE", problem)
    return hooks.found


def validate(raw: object, databases: Mapping[str, Any] | None = None) -> list[Problem]:
    """Check a ``settings.SAGAZ`` value; return its problems (empty when valid).

    ``databases`` (``settings.DATABASES``), when given, is what ``DATABASE`` must name.
    """
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        return [
            Problem(
                "settings.SAGAZ",
                f"settings.SAGAZ must be a dict, not a {type(raw).__name__}; e.g. "
                'SAGAZ = {"DATABASE": "default"}',
                "type",
            )
        ]
    return _check_top(raw, databases)


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
        raise ImproperlyConfigured("; ".join(problem.message for problem in problems))
    values: dict[str, Any] = {**DEFAULTS, **(dict(raw) if isinstance(raw, Mapping) else {})}
    hooks: dict[str, Any] = {**WEBHOOK_DEFAULTS, **dict(values["WEBHOOKS"])}
    cached = _cached = SagazSettings(
        database=values["DATABASE"],
        run_in_process=values["RUN_IN_PROCESS"],
        webhook_secrets=dict(hooks["SECRETS"]),
        max_body_bytes=hooks["MAX_BODY_BYTES"],
        expose_context=hooks["EXPOSE_CONTEXT"],
        saga_modules=tuple(values["SAGA_MODULES"]),
        outbox=values["OUTBOX"],
        lease_seconds=float(values["LEASE_SECONDS"]),
        max_recoveries=values["MAX_RECOVERIES"],
        signature_tolerance=float(hooks["SIGNATURE_TOLERANCE"]),
        legacy_signatures=hooks["LEGACY_SIGNATURES"],
        authorize=_hook(hooks["AUTHORIZE"])[0],
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
