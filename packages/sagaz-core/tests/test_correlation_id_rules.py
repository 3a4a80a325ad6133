"""The X-Correlation-ID rule in code: check_correlation_id, fire_event's validation, and
CorrelationIdFilter (moved from the FastAPI plugin to the core)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from sagaz.core import (
    Saga,
    SagaConfig,
    SagaContextManager,
    action,
    check_correlation_id,
    fire_event,
    is_valid_correlation_id,
    trigger,
)
from sagaz.core.context import MAX_CORRELATION_ID_LENGTH, correlation_id_problem
from sagaz.core.observability import CorrelationIdFilter

pytestmark = pytest.mark.usefixtures("isolated_config")

SOURCE = f"cid-rule-{uuid.uuid4().hex[:8]}"
seen: list[str | None] = []


class CidSaga(Saga):
    saga_name = f"cid-rule-{uuid.uuid4().hex[:8]}"

    @trigger(source=SOURCE, idempotency_key="n")
    def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"n": event["n"]}

    @action("log")
    async def log(self, ctx: dict[str, Any]) -> None:
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "step", None, None)
        CorrelationIdFilter().filter(record)
        seen.append(record.correlation_id)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "it is empty"),
        ("x" * 129, "it is 129 characters long, more than 128"),
        ("a b", "it contains characters that are not allowed: ' '"),
        ("id\n", r"it contains characters that are not allowed: '\n'"),
        ("ü/<>&!", "it contains characters that are not allowed: '!' '&' '/' '<' '>' ..."),
        (42, "it is of type int, not str"),
    ],
)
def test_each_problem_is_named(value: object, problem: str) -> None:
    assert correlation_id_problem(value) == problem
    assert not is_valid_correlation_id(value)
    with pytest.raises(ValueError) as caught:
        check_correlation_id(value, "the id")
    message = str(caught.value)
    assert message.startswith("the id ")
    assert problem in message
    assert "at most 128 characters of A-Z a-z 0-9 . _ : -" in message


@pytest.mark.parametrize("value", ["a", "order-1.2:3_x", "x" * MAX_CORRELATION_ID_LENGTH])
def test_valid_ids_pass(value: str) -> None:
    assert correlation_id_problem(value) is None
    assert check_correlation_id(value) == value
    assert is_valid_correlation_id(value)


def test_a_long_bad_value_is_shortened_in_the_message() -> None:
    with pytest.raises(ValueError) as caught:
        check_correlation_id("!" * 5000)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("bad", ["has space", "", "x" * 200, "tab\there"])
async def test_fire_event_refuses_a_bad_correlation_id_and_records_nothing(
    config: SagaConfig, bad: str
) -> None:
    with pytest.raises(ValueError, match=r"fire_event\(correlation_id=\.\.\.\): .* is not a valid"):
        await fire_event(SOURCE, {"n": 1}, correlation_id=bad, config=config)
    assert await config.storage.list_sagas() == []


async def test_fire_event_keeps_a_valid_id_and_the_filter_sees_it(config: SagaConfig) -> None:
    seen.clear()
    fired = await fire_event(
        SOURCE, {"n": 2}, correlation_id="checkout-42", config=config, wait=True
    )
    assert fired.correlation_id == "checkout-42"
    (record,) = await config.storage.list_sagas()
    assert record.correlation_id == "checkout-42"
    assert seen == ["checkout-42"]  # inside the step, outside any request scope
    # Without one: the request scope's, else a new one.
    with SagaContextManager.scope(correlation_id="req-7"):
        scoped = await fire_event(SOURCE, {"n": 3}, config=config, run=False)
    assert scoped.correlation_id == "req-7"
    fresh = await fire_event(SOURCE, {"n": 4}, config=config, run=False)
    assert is_valid_correlation_id(fresh.correlation_id)


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "message", None, None)
    record.__dict__.update(extra)
    return record


def test_the_filter_outside_and_inside_a_scope() -> None:
    outside = _record()
    assert CorrelationIdFilter().filter(outside) is True
    assert outside.correlation_id == "-"
    assert CorrelationIdFilter(default="none").filter(blank := _record()) is True
    assert blank.correlation_id == "none"
    with SagaContextManager.scope(correlation_id="req-1"):
        inside = _record()
        kept = _record(correlation_id="given")
        CorrelationIdFilter().filter(inside)
        CorrelationIdFilter().filter(kept)
    assert inside.correlation_id == "req-1"
    assert kept.correlation_id == "given"


def test_the_filter_formats_every_record_of_a_handler(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(CorrelationIdFilter())
    caplog.handler.setFormatter(logging.Formatter("%(correlation_id)s %(message)s"))
    logger = logging.getLogger("sagaz.test.cid")
    with caplog.at_level(logging.INFO, logger="sagaz.test.cid"):
        logger.info("before")
        with SagaContextManager.scope(correlation_id="req-2"):
            logger.info("during")
    assert caplog.text.splitlines() == ["- before", "req-2 during"]
