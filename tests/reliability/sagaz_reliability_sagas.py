"""The saga of the reliability suite, run by ``sagaz worker`` subprocesses and web servers.

:class:`RelOrderSaga` (``rel-order``): reserve -> charge -> ship; reserve and charge have
compensations; ``ship`` fails on purpose when the context has ``fail_last``, so the saga
compensates. The webhook source ``rel_order`` starts it (idempotency field ``order_id``).

Every step and compensation appends one line to the file named by the environment variable
``SAGAZ_RELIABILITY_LOG`` when set (one ``write`` on an ``O_APPEND`` file each, so lines
of concurrent processes never mix)::

    <saga_id> <step> action|compensate <pid> start|end|fail
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sagaz.core import RetryPolicy, Saga, action, compensate, current_step, trigger

LOG_ENV = "SAGAZ_RELIABILITY_LOG"
SOURCE = "rel_order"
NO_RETRY = RetryPolicy(max_attempts=1)
#: Compensations retry briefly; a saga interrupted by a crash is finished by recovery.
UNDO_RETRY = RetryPolicy(max_attempts=3, backoff_base=0.05)


class ShipmentRefusedError(Exception):
    """The ship step fails on purpose (``fail_last``)."""


def _log(kind: str, phase: str) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    info = current_step()
    line = f"{info.saga_id} {info.step} {kind} {os.getpid()} {phase}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def _step(ctx: dict[str, Any], *, last: bool = False) -> dict[str, Any]:
    _log("action", "start")
    delay = float(ctx.get("sleep", 0.0))
    if delay:
        await asyncio.sleep(delay)
    if last and ctx.get("fail_last"):
        _log("action", "fail")
        raise ShipmentRefusedError(f"step {current_step().step} fails on purpose")
    _log("action", "end")
    return {f"{current_step().step}_done": True}


async def _undo(ctx: dict[str, Any]) -> None:
    _log("compensate", "start")
    delay = float(ctx.get("sleep", 0.0))
    if delay:
        await asyncio.sleep(delay)
    _log("compensate", "end")


class RelOrderSaga(Saga):
    """reserve -> charge -> ship (ship fails when ``ctx["fail_last"]``)."""

    saga_name = "rel-order"

    @trigger(source=SOURCE, idempotency_key="order_id")
    def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "order_id": str(event["order_id"]),
            "sleep": float(event.get("sleep", 0.0)),
            "fail_last": bool(event.get("fail_last", False)),
        }

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return await _step(ctx)

    @compensate("reserve", retry=UNDO_RETRY)
    async def release(self, ctx: dict[str, Any]) -> None:
        await _undo(ctx)

    @action("charge")
    async def charge(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return await _step(ctx)

    @compensate("charge", retry=UNDO_RETRY)
    async def refund(self, ctx: dict[str, Any]) -> None:
        await _undo(ctx)

    @action("ship", retry=NO_RETRY)
    async def ship(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return await _step(ctx, last=True)
