"""Saga definitions shared by the sagaz-core tests, importable by name.

The crash tests also run this file as a script in a child process::

    python sagaz_core_test_sagas.py KIND DB_PATH LOG_PATH BLOCK_PATH LEASE_SECONDS

which runs the saga ``KIND`` (``forward`` or ``compensation``) on the SQLite file
``DB_PATH``. Every step and compensation appends its name to ``LOG_PATH`` when it runs;
the step (or compensation) that blocks waits while ``BLOCK_PATH`` exists.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from sagaz.core import (
    InMemorySagaStorage,
    RetryPolicy,
    Saga,
    SagaConfig,
    SagaStorage,
    action,
    compensate,
    current_step,
)

#: Compensation retries without real waiting (the default waits ~0.1 s between tries).
FAST_COMPENSATION_RETRY = RetryPolicy(max_attempts=3, backoff_base=0.001, jitter=0)


def fast_config(storage: SagaStorage | None = None, **kwargs: Any) -> SagaConfig:
    """A config on ``storage`` (a fresh in-memory one by default) with tiny backoffs."""
    kwargs.setdefault("compensation_retry", FAST_COMPENSATION_RETRY)
    return SagaConfig(storage=storage if storage is not None else InMemorySagaStorage(), **kwargs)


class StepFailedError(Exception):
    """A step of a test saga failed on purpose."""


def log_line(ctx: dict[str, Any], line: str) -> None:
    """Append ``line`` to the run log named by the context (survives a SIGKILL)."""
    with open(ctx["log"], "a", encoding="utf-8") as log:
        log.write(line + "\n")


def read_log(path: str | os.PathLike[str], *, keys: bool = False) -> list[str]:
    """The lines of a run log (empty when nothing ran); ``key ...`` lines (step keys)
    only when ``keys`` is true."""
    try:
        with open(path, encoding="utf-8") as log:
            lines = log.read().splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if line.startswith("key ") == keys]


async def wait_while_blocked(ctx: dict[str, Any]) -> None:
    while os.path.exists(ctx["block"]):
        await asyncio.sleep(0.01)


class DiamondSaga(Saga):
    """a -> b, a -> c, (b, c) -> d; the step named by ``ctx["fail"]`` raises."""

    saga_name = "test-diamond"

    @action("a")
    async def a(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return self._run("a", ctx)

    @action("b", depends_on=["a"])
    async def b(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return self._run("b", ctx)

    @action("c", depends_on=["a"])
    async def c(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return self._run("c", ctx)

    @action("d", depends_on=["b", "c"])
    async def d(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return self._run("d", ctx)

    @compensate("a")
    async def undo_a(self, ctx: dict[str, Any]) -> None:
        return None

    @compensate("b")
    async def undo_b(self, ctx: dict[str, Any]) -> None:
        return None

    @compensate("c")
    async def undo_c(self, ctx: dict[str, Any]) -> None:
        return None

    @compensate("d")
    async def undo_d(self, ctx: dict[str, Any]) -> None:
        return None

    @staticmethod
    def _run(step: str, ctx: dict[str, Any]) -> dict[str, Any]:
        if ctx.get("fail") == step:
            raise StepFailedError(f"step {step} failed on purpose")
        return {f"done_{step}": True}


class CrashForwardSaga(Saga):
    """step1 -> step2 (blocks while the block file exists) -> step3 (a plain function)."""

    saga_name = "test-crash-forward"

    @action("step1")
    async def step1(self, ctx: dict[str, Any]) -> dict[str, Any]:
        log_line(ctx, "step1")
        return {"one": 1}

    @action("step2")
    async def step2(self, ctx: dict[str, Any]) -> dict[str, Any]:
        log_line(ctx, "step2")
        log_line(ctx, f"key {current_step().step_key}")
        await wait_while_blocked(ctx)
        return {"two": ctx["one"] + 1}

    @action("step3")
    def step3(self, ctx: dict[str, Any]) -> dict[str, Any]:
        log_line(ctx, "step3")
        return {"three": ctx["two"] + 1}


class CrashCompensationSaga(Saga):
    """s1 -> s2 -> s3 -> s4 (fails); undoing s2 blocks while the block file exists."""

    saga_name = "test-crash-compensation"

    @action("s1")
    async def s1(self, ctx: dict[str, Any]) -> dict[str, Any]:
        log_line(ctx, "s1")
        return {"s1": True}

    @action("s2")
    async def s2(self, ctx: dict[str, Any]) -> dict[str, Any]:
        log_line(ctx, "s2")
        return {"s2": True}

    @action("s3")
    async def s3(self, ctx: dict[str, Any]) -> dict[str, Any]:
        log_line(ctx, "s3")
        return {"s3": True}

    @action("s4")
    async def s4(self, ctx: dict[str, Any]) -> dict[str, Any]:
        log_line(ctx, "s4")
        raise StepFailedError("s4 fails on purpose")

    @compensate("s1")
    async def undo_s1(self, ctx: dict[str, Any]) -> None:
        log_line(ctx, "undo-s1")

    @compensate("s2")
    async def undo_s2(self, ctx: dict[str, Any]) -> None:
        log_line(ctx, "undo-s2")
        await wait_while_blocked(ctx)

    @compensate("s3")
    async def undo_s3(self, ctx: dict[str, Any]) -> None:
        log_line(ctx, "undo-s3")


class FragileUndoSaga(Saga):
    """reserve -> charge (always fails); undoing reserve fails while ``ctx["broken"]``
    names an existing file, so the saga ends FAILED until it is retried."""

    saga_name = "test-fragile-undo"

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        log_line(ctx, "reserve")
        return {"reserved": True}

    @compensate("reserve", retry=RetryPolicy(max_attempts=1))
    async def release(self, ctx: dict[str, Any]) -> None:
        log_line(ctx, "release")
        if os.path.exists(ctx["broken"]):
            raise ConnectionError("warehouse down")

    @action("charge")
    async def charge(self, ctx: dict[str, Any]) -> None:
        log_line(ctx, "charge")
        raise StepFailedError("declined")


async def _noop(ctx: dict[str, Any]) -> None:
    return None


#: An imperative saga at module level (``sagaz diagram sagaz_core_test_sagas:SHIPPING``).
SHIPPING = (
    Saga(name="test-shipping")
    .add_step("pack", _noop, _noop)
    .add_step("ship", _noop, depends_on=["pack"])
)


CRASH_SAGAS: dict[str, type[Saga]] = {
    "forward": CrashForwardSaga,
    "compensation": CrashCompensationSaga,
}


def crash_config(storage_url: str, lease_seconds: float) -> SagaConfig:
    return SagaConfig(
        storage_url=storage_url,
        lease_seconds=lease_seconds,
        compensation_retry=RetryPolicy(max_attempts=1),
    )


async def _run_child(kind: str, db: str, log: str, block: str, lease: float) -> None:
    config = crash_config(f"sqlite:///{db}", lease)
    try:
        await CRASH_SAGAS[kind](config=config).run({"log": log, "block": block})
    finally:
        await config.storage.close()


if __name__ == "__main__":
    kind, db_path, log_path, block_path, lease_seconds = sys.argv[1:6]
    asyncio.run(_run_child(kind, db_path, log_path, block_path, float(lease_seconds)))
