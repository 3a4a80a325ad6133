"""Webhook signatures: HMAC-SHA256 over a timestamp and the raw body, with a replay window.

A sender that shares ``secret`` with the receiver sends two headers::

    X-Sagaz-Timestamp: 1767225600                       (Unix time, whole seconds)
    X-Sagaz-Signature: sha256=<hex HMAC-SHA256(secret, b"1767225600." + raw_body)>

:func:`signature_headers` computes both. The receiver accepts the request only when the
timestamp is within ``tolerance`` seconds of its clock (either way: a captured request
cannot be replayed later, a forged future one is refused too) and the signature matches,
compared in constant time (:func:`hmac.compare_digest`).

The older scheme, ``X-Sagaz-Signature: sha256=<hex HMAC-SHA256(secret, raw_body)>``
without a timestamp, has no replay protection: it is accepted only where
``legacy=True`` is configured (e.g. ``WebhookSettings(legacy_signatures=True)``).

Secrets come from the plugin's settings (source -> secret) or, for a source the settings
do not name, from the environment variable :func:`secret_env_var` names:
``SAGAZ_WEBHOOK_SECRET_<SOURCE>`` with the source upper-cased and every character other
than ``A-Z`` and ``0-9`` replaced by ``_`` (``stripe.events`` ->
``SAGAZ_WEBHOOK_SECRET_STRIPE_EVENTS``). An empty value counts as unset. Secrets and
signatures are never logged nor put in a response.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_SIGNATURE_TOLERANCE",
    "SECRET_ENV_PREFIX",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SignatureProblem",
    "lookup_secret",
    "secret_env_var",
    "sign_body",
    "signature_headers",
    "verify_signature",
]

#: Header carrying ``sha256=<hex HMAC-SHA256>`` for sources with a secret.
SIGNATURE_HEADER = "X-Sagaz-Signature"
#: Header carrying the Unix time (whole seconds) the sender signed the request at.
TIMESTAMP_HEADER = "X-Sagaz-Timestamp"
#: Default replay window: a timestamp more than this many seconds away from the
#: receiver's clock (past or future) is refused.
DEFAULT_SIGNATURE_TOLERANCE = 300.0
#: Prefix of the environment variables holding per-source secrets.
SECRET_ENV_PREFIX = "SAGAZ_WEBHOOK_SECRET_"  # noqa: S105 - a variable name prefix  # nosec B105

_NOT_ENV = re.compile(r"[^A-Z0-9]")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HOW = (
    f"send {TIMESTAMP_HEADER}: <Unix time in seconds> and {SIGNATURE_HEADER}: "
    'sha256=<hex HMAC-SHA256 of "<timestamp>." + the raw body, keyed with the shared secret>'
)


def secret_env_var(source: str) -> str:
    """The environment variable that may hold ``source``'s secret.

    ``SAGAZ_WEBHOOK_SECRET_`` + the source upper-cased, each character other than
    ``A-Z``/``0-9`` replaced by ``_``.
    """
    return SECRET_ENV_PREFIX + _NOT_ENV.sub("_", source.upper())


def lookup_secret(
    source: str,
    secrets: Mapping[str, str],
    environ: Mapping[str, str] | None = None,
    *,
    from_env: bool = True,
) -> str | None:
    """``source``'s secret: from ``secrets``, else (``from_env``) from the environment.

    None when neither has a non-empty one (the source then needs no signature).
    """
    secret = secrets.get(source)
    if secret:
        return secret
    if not from_env:
        return None
    env = os.environ if environ is None else environ
    return env.get(secret_env_var(source)) or None


def _signed_message(body: bytes, timestamp: int | str | None) -> bytes:
    if timestamp is None:
        return body
    return f"{timestamp}.".encode("ascii") + body


def sign_body(body: bytes, secret: str, timestamp: int | str | None = None) -> str:
    """The :data:`SIGNATURE_HEADER` value: ``sha256=<hex HMAC-SHA256>``.

    With ``timestamp`` (the :data:`TIMESTAMP_HEADER` value) the HMAC covers
    ``b"<timestamp>." + body``; without it, the body alone (the legacy scheme).
    """
    message = _signed_message(body, timestamp)
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signature_headers(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """Both headers a sender adds: the timestamp (now by default) and the signature."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign_body(body, secret, ts)}


@dataclass(frozen=True, slots=True)
class SignatureProblem:
    """Why a signed request was refused: an error ``code`` and a ``detail`` to fix it."""

    code: str
    detail: str


def _same(expected: str, given: str) -> bool:
    # Bytes on both sides: compare_digest refuses non-ASCII str, and a header may hold any.
    return hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "replace"))


def verify_signature(
    body: bytes,
    secret: str,
    *,
    signature: str | None,
    timestamp: str | None,
    tolerance: float = DEFAULT_SIGNATURE_TOLERANCE,
    legacy: bool = False,
    now: float | None = None,
) -> SignatureProblem | None:
    """None when the request is signed correctly, else what is wrong with it.

    ``signature`` and ``timestamp`` are the raw header values (None when absent).
    Codes: ``missing_signature``, ``missing_timestamp``, ``invalid_timestamp``,
    ``stale_timestamp``, ``future_timestamp``, ``invalid_signature``.
    """
    given = (signature or "").strip()
    if not given:
        return SignatureProblem(
            "missing_signature", f"this source requires a signed request: {_HOW}"
        )
    stamp = (timestamp or "").strip()
    if not stamp:
        if legacy:
            if _same(sign_body(body, secret), given):
                return None
            return SignatureProblem(
                "invalid_signature",
                f"{SIGNATURE_HEADER} does not match the body (legacy scheme, no timestamp); "
                f"better: {_HOW}",
            )
        return SignatureProblem(
            "missing_timestamp",
            f"the request has no {TIMESTAMP_HEADER} header: {_HOW}",
        )
    if not _TIMESTAMP.fullmatch(stamp):
        return SignatureProblem(
            "invalid_timestamp",
            f"{TIMESTAMP_HEADER} must be the Unix time in whole seconds (digits only): {_HOW}",
        )
    clock = time.time() if now is None else now
    age = clock - int(stamp)
    if age > tolerance:
        return SignatureProblem(
            "stale_timestamp",
            f"{TIMESTAMP_HEADER} is {int(age)} s old; the limit is {tolerance:g} s: sign "
            "each request when you send it (and check the sender's clock)",
        )
    if -age > tolerance:
        return SignatureProblem(
            "future_timestamp",
            f"{TIMESTAMP_HEADER} is {int(-age)} s in the future; the limit is {tolerance:g} s: "
            "check the sender's clock",
        )
    if not _same(sign_body(body, secret, stamp), given):
        return SignatureProblem(
            "invalid_signature",
            f"{SIGNATURE_HEADER} does not match the body and timestamp: {_HOW}",
        )
    return None
