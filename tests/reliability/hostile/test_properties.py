"""Property-based hostile input: schemathesis against the FastAPI plugin's OpenAPI schema,
and hypothesis-generated bodies, sources and correlation ids against FastAPI and Flask.

Bounded: each property runs a fixed number of examples (no deadline), so the folder stays
well under a minute.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sagaz_hostile_corpus as corpus
from conftest import Target, fastapi_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402

APP, CONFIG = fastapi_app()
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP)

BOUNDED = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _stored() -> int:
    return len(asyncio.run(CONFIG.storage.list_sagas()))


@SCHEMA.parametrize()
@BOUNDED
def test_the_openapi_schema_holds_under_schemathesis(case: Any) -> None:
    """No 5xx on any documented route; every 4xx is the JSON error body; nothing stored
    for a rejected request."""
    before = _stored()
    response = case.call(timeout=corpus.TIMEOUT)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("error"), str), body
        assert isinstance(body.get("detail"), str), body
        assert _stored() == before
    case.validate_response(response, checks=[not_a_server_error])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
header_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=140)
raw_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["order_id", "extra", "x"]), json_values, max_size=3).map(
        lambda v: json.dumps(v).encode()
    ),
)
sources = st.one_of(
    st.sampled_from([corpus.SOURCE, corpus.SIGNED, "nope", "%2E%2E", "a%2Fb"]),
    st.text(alphabet="abc_.:-'\";%/ ", min_size=1, max_size=20),
)


@pytest.mark.parametrize("plugin", ["fastapi", "flask"])
def test_random_requests_keep_the_rules(plugin: str, request: pytest.FixtureRequest) -> None:
    """Random bodies, content types, sources and correlation ids: the corpus rules hold."""
    target: Target = request.getfixturevalue(f"{plugin}_target")
    tally = corpus.Tally()

    @BOUNDED
    @given(
        body=raw_bodies,
        source=sources,
        cid=header_text,
        content_type=st.sampled_from([corpus.JSON, "text/plain", None, "application/x+json"]),
    )
    def run(body: bytes, source: str, cid: str, content_type: str | None) -> None:
        case = corpus.Case(
            "generated",
            "POST",
            f"{corpus.PREFIX}/{source}",
            body,
            content_type=content_type,
            headers={"X-Correlation-ID": cid},
        )
        before = target.count()
        status, headers, raw = target.send(case)
        corpus.check_response(case, status, headers, raw, before, target.count(), tally)
        assert tally.problems == [], tally.problems

    run()
