"""The hostile-input corpus, written once and replayed against the three plugins.

Each :class:`Case` is one HTTP request (method, path, raw body, headers whose values may
hold control characters). :func:`check_response` holds the rules every plugin must keep:
no 5xx, a JSON body naming the error (``error`` + ``detail``) for every rejection, an
``X-Correlation-ID`` that is always valid. The replays also count the sagas in storage
before and after each rejected request: nothing may be stored for it.

The sagas the corpus posts to are defined here (registered on import): ``hostile_orders``
(idempotency field ``order_id``) and ``hostile_signed`` (needs a signature with
:data:`SECRET`). Every app under test serves them under ``/webhooks``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sagaz.core import Saga, action, trigger
from sagaz.core.web import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_body

SOURCE = "hostile_orders"
SIGNED = "hostile_signed"
SECRET = "hostile-secret-" + "s" * 16
LIMIT = 64 * 1024  # max_body_bytes of every app under test
PREFIX = "/webhooks"
TIMEOUT = 10.0  # seconds one request may take before it counts as a hang
JSON = "application/json"

_VALID_CID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class HostileOrderSaga(Saga):
    """Started by ``hostile_orders`` events; the workers never run it (run_in_process off)."""

    saga_name = "hostile-order"

    @trigger(source=SOURCE, idempotency_key="order_id")
    def on_order(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": payload["order_id"], "extra": payload.get("extra")}

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> None:
        return None


class HostileSignedSaga(Saga):
    """Started by signed ``hostile_signed`` events."""

    saga_name = "hostile-signed"

    @trigger(source=SIGNED, idempotency_key="order_id")
    def on_order(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": payload["order_id"]}

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> None:
        return None


@dataclass(frozen=True)
class Case:
    """One hostile request and what it may get back."""

    name: str
    method: str
    path: str
    body: bytes = b""
    content_type: str | None = JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Statuses this request may get (any non-5xx when empty).
    expect: frozenset[int] = frozenset()


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def _signed(body: bytes, ts: int | str, secret: str = SECRET) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign_body(body, secret, ts)}


def order(**extra: Any) -> bytes:
    return json.dumps({"order_id": f"h-{uuid.uuid4().hex}", **extra}).encode()


def corpus() -> list[Case]:
    """The corpus (fresh order ids each call, so accepted cases do not collide)."""
    post = f"{PREFIX}/{SOURCE}"
    signed = f"{PREFIX}/{SIGNED}"
    now = int(time.time())
    cases = [
        # -- malformed JSON (an empty body: Django's test client drops its Content-Type)
        Case("malformed-empty", "POST", post, b"", expect=frozenset({400, 415})),
        *(
            Case(f"malformed-{i}", "POST", post, raw, expect=frozenset({400}))
            for i, raw in enumerate(
                [
                    b"{",
                    b"{'order_id': 1}",
                    b'{"order_id": "a",}',
                    b"\xff\xfe\x00{",
                    b'{"order_id": "\\ud800"',
                    b"null",
                    b"[]",
                    b"123",
                    b'"order"',
                    b'{"order_id": "a"} trailing',
                ]
            )
        ),
        # -- deeply nested JSON
        Case("nested-array-100k", "POST", post, nested(30_000).encode(), expect=frozenset({400})),
        Case(
            "nested-in-field",
            "POST",
            post,
            b'{"order_id": "n1", "extra": ' + nested(25_000).encode() + b"}",
            expect=frozenset({400}),
        ),
        Case(
            "nested-objects",
            "POST",
            post,
            ('{"a":' * 10_000 + "1" + "}" * 10_000).encode(),
            expect=frozenset({400}),
        ),
        Case(
            "nested-modest",
            "POST",
            post,
            b'{"order_id": "'
            + uuid.uuid4().hex.encode()
            + b'", "extra": '
            + nested(200).encode()
            + b"}",
            expect=frozenset({202, 400}),
        ),
        # -- huge bodies
        Case("huge-2MiB", "POST", post, order(extra="x" * 2_000_000), expect=frozenset({413})),
        Case("just-over-limit", "POST", post, b" " * (LIMIT + 1), expect=frozenset({413})),
        Case(
            "many-keys",
            "POST",
            post,
            order(**{f"k{i}": i for i in range(4000)}),
            expect=frozenset({202, 413}),
        ),
        # -- content types
        Case(
            "text-plain", "POST", post, order(), content_type="text/plain", expect=frozenset({415})
        ),
        Case("no-content-type", "POST", post, order(), content_type=None, expect=frozenset({415})),
        Case(
            "form",
            "POST",
            post,
            b"order_id=1",
            content_type="application/x-www-form-urlencoded",
            expect=frozenset({415}),
        ),
        # -- wrong types for the idempotency field
        *(
            Case(
                f"idempotency-{label}",
                "POST",
                post,
                json.dumps({"order_id": value}).encode(),
                expect=frozenset({202, 400}),
            )
            for label, value in [
                ("null", None),
                ("list", [1, 2]),
                ("object", {"$ne": None}),
                ("float", 1.5),
                ("bool", True),
                ("empty", ""),
                ("huge-int", 10**40),
                ("long", "k" * 10_000),
                ("sql", "1' OR '1'='1"),
                ("nul", "a\x00b"),
            ]
        ),
        Case("missing-field", "POST", post, b'{"other": 1}', expect=frozenset({400})),
        Case("nan", "POST", post, b'{"order_id": NaN}', expect=frozenset({202, 400})),
        # -- X-Correlation-ID: control characters and header injection
        *(
            Case(
                f"cid-{label}",
                "POST",
                post,
                b"{bad json",
                headers={"X-Correlation-ID": value},
                expect=frozenset({400}),
            )
            for label, value in [
                ("crlf", "abc\r\nSet-Cookie: sagaz=1"),
                ("lf", "abc\nX-Injected: 1"),
                ("nul", "abc\x00def"),
                ("tab", "abc\tdef"),
                ("del", "abc\x7f"),
                ("long", "c" * 129),
                ("unicode", "caf\u00e9"),
                ("html", "<script>alert(1)</script>"),
                ("traversal", "../../etc/passwd"),
                ("sql", "'; DROP TABLE sagaz_saga; --"),
                ("empty", ""),
            ]
        ),
        # -- path traversal and SQL metacharacters in source names and ids
        *(
            Case(
                f"source-{label}",
                "POST",
                f"{PREFIX}/{segment}",
                order(),
                expect=frozenset({404, 405}),
            )
            for label, segment in [
                ("traversal", "..%2F..%2Fetc%2Fpasswd"),
                ("dotdot", "%2E%2E"),
                ("sql", "hostile_orders'%3B%20DROP%20TABLE%20sagaz_saga%3B--"),
                ("nul", "hostile_orders%00"),
                ("crlf", "x%0D%0ASet-Cookie%3A%20a%3D1"),
                ("long", "s" * 300),
                ("unicode", "%E2%80%AEcod"),
                ("percent", "%25%32%65"),
            ]
        ),
        *(
            Case(
                f"status-{label}",
                "GET",
                f"{PREFIX}/status/{segment}",
                content_type=None,
                expect=frozenset({404}),
            )
            for label, segment in [
                ("unknown", str(uuid.uuid4())),
                ("sql", "'%20OR%20'1'%3D'1"),
                ("traversal", "..%2F..%2Fsecret"),
                ("crlf", "x%0D%0AX-Evil%3A%201"),
                ("long", "i" * 500),
                ("nul", "a%00b"),
            ]
        ),
        Case(
            "diagram-unknown",
            "GET",
            f"{PREFIX}/status/{uuid.uuid4()}/diagram",
            content_type=None,
            expect=frozenset({404}),
        ),
        Case(
            "diagram-sql",
            "GET",
            f"{PREFIX}/status/1%20OR%201%3D1/diagram",
            content_type=None,
            expect=frozenset({404}),
        ),
        *(
            Case(
                f"event-status-{label}",
                "GET",
                f"{PREFIX}/{SOURCE}/status/{segment}",
                content_type=None,
                expect=frozenset({404}),
            )
            for label, segment in [
                ("unknown", str(uuid.uuid4())),
                ("sql", "x'%20OR%201%3D1--"),
                ("crlf", "x%0D%0AX-Evil%3A%201"),
            ]
        ),
        Case(
            "event-status-bad-source",
            "GET",
            f"{PREFIX}/no%20such/status/abc",
            content_type=None,
            expect=frozenset({404}),
        ),
        # -- signatures
        Case("signed-missing", "POST", signed, order(), expect=frozenset({401})),
        Case(
            "signed-garbage",
            "POST",
            signed,
            order(),
            headers={SIGNATURE_HEADER: "garbage", TIMESTAMP_HEADER: str(now)},
            expect=frozenset({401}),
        ),
        Case(
            "signed-non-ascii",
            "POST",
            signed,
            order(),
            headers={SIGNATURE_HEADER: "sha256=\u00e9\u00e9", TIMESTAMP_HEADER: str(now)},
            expect=frozenset({401}),
        ),
        Case(
            "signed-huge-ts",
            "POST",
            signed,
            order(),
            headers={SIGNATURE_HEADER: "sha256=00", TIMESTAMP_HEADER: "9" * 60},
            expect=frozenset({401}),
        ),
        Case(
            "signed-negative-ts",
            "POST",
            signed,
            order(),
            headers={SIGNATURE_HEADER: "sha256=00", TIMESTAMP_HEADER: "-1"},
            expect=frozenset({401}),
        ),
        Case(
            "signed-stale",
            "POST",
            signed,
            (b := order()),
            headers=_signed(b, now - 3600),
            expect=frozenset({401}),
        ),
        Case(
            "signed-wrong-secret",
            "POST",
            signed,
            (b := order()),
            headers=_signed(b, now, "guess"),
            expect=frozenset({401}),
        ),
        # -- methods
        Case("put-webhook", "PUT", post, order(), expect=frozenset({405})),
        Case(
            "delete-status",
            "DELETE",
            f"{PREFIX}/status/x",
            content_type=None,
            expect=frozenset({405}),
        ),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def valid_case() -> Case:
    """A request that must be accepted (the replays check the apps do work)."""
    return Case("valid", "POST", f"{PREFIX}/{SOURCE}", order(), expect=frozenset({202}))


def valid_signed_case() -> Case:
    body = order()
    return Case(
        "valid-signed",
        "POST",
        f"{PREFIX}/{SIGNED}",
        body,
        headers=_signed(body, int(time.time())),
        expect=frozenset({202}),
    )


@dataclass
class Tally:
    """What one replay did, for the figures table."""

    requests: int = 0
    rejections: int = 0
    accepted: int = 0
    stored_on_rejection: int = 0
    problems: list[str] = field(default_factory=list)


def check_response(
    case: Case,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    stored_before: int,
    stored_after: int,
    tally: Tally,
) -> None:
    """Apply the rules to one response; collect problems (all cases run, then one assert)."""
    tally.requests += 1
    problems = tally.problems

    def fail(why: str) -> None:
        problems.append(f"{case.name}: {why} (status {status}, body {body[:300]!r})")

    if status >= 500:
        fail("a server error")
    if case.expect and status not in case.expect:
        fail(f"expected one of {sorted(case.expect)}")
    cid = headers.get("X-Correlation-ID") or headers.get("x-correlation-id")
    if cid is None or not _VALID_CID.fullmatch(cid):
        fail(f"X-Correlation-ID {cid!r} is missing or not valid")
    sent_cid = case.headers.get("X-Correlation-ID")
    if sent_cid is not None and not _VALID_CID.fullmatch(sent_cid) and sent_cid:
        if cid == sent_cid:
            fail("an invalid correlation id was echoed")
        try:
            echoed_in_body = json.loads(body).get("correlation_id") == sent_cid
        except (ValueError, AttributeError):
            echoed_in_body = False
        # A long, distinctive value must not appear anywhere (short ones may by chance).
        distinctive = len(sent_cid) >= 12 and sent_cid not in case.path
        if echoed_in_body or (distinctive and sent_cid in body.decode("utf-8", "replace")):
            fail("an invalid correlation id was reflected in the body")
    if status >= 400:
        tally.rejections += 1
        try:
            data = json.loads(body)
        except ValueError:
            fail("the rejection is not JSON")
        else:
            if not (
                isinstance(data, dict)
                and isinstance(data.get("error"), str)
                and isinstance(data.get("detail"), str)
                and data["detail"]
            ):
                fail("the rejection has no error/detail")
        if stored_after != stored_before:
            tally.stored_on_rejection += stored_after - stored_before
            fail(f"{stored_after - stored_before} saga(s) stored for a rejected request")
    elif status == 202:
        tally.accepted += 1
