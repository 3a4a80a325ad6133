"""RunTracker: per-saga listener state, cleaned up when a run's task ends early."""

from __future__ import annotations

import asyncio

from sagaz.core.observability._tracking import RunTracker


def tracker() -> tuple[RunTracker[str], list[tuple[str, str]]]:
    abandoned: list[tuple[str, str]] = []
    return RunTracker(lambda saga_id, state: abandoned.append((saga_id, state)), 2), abandoned


async def test_finish_returns_the_state_and_unregisters() -> None:
    runs, abandoned = tracker()
    runs.start("s1", "one")
    assert runs.get("s1") == "one"
    assert len(runs) == 1
    assert runs.finish("s1") == "one"
    assert runs.finish("s1") is None
    assert runs.get("s1") is None
    runs.abandon("unknown")
    assert abandoned == []


async def test_a_second_start_abandons_the_first_and_the_cap_evicts_the_oldest() -> None:
    runs, abandoned = tracker()
    runs.start("s1", "first")
    runs.start("s1", "again")
    assert abandoned == [("s1", "first")]
    runs.start("s2", "two")
    runs.start("s3", "three")  # over the cap of 2: s1 goes
    assert abandoned == [("s1", "first"), ("s1", "again")]
    assert runs.get("s2") == "two"
    assert runs.get("s3") == "three"


async def test_the_end_of_the_task_abandons_what_it_left() -> None:
    runs, abandoned = tracker()

    async def run(saga_id: str, finish: bool) -> None:
        runs.start(saga_id, saga_id)
        if finish:
            runs.finish(saga_id)

    await asyncio.create_task(run("done", True))
    await asyncio.create_task(run("left", False))
    await asyncio.sleep(0)
    assert abandoned == [("left", "left")]
    assert len(runs) == 0


async def test_a_task_ending_after_another_took_the_saga_over_abandons_nothing() -> None:
    runs, abandoned = tracker()
    release = asyncio.Event()

    async def first() -> None:
        runs.start("s", "first")
        await release.wait()

    task = asyncio.create_task(first())
    await asyncio.sleep(0)
    runs.finish("s")  # the callback of the first task is removed...
    runs.start("s", "second")  # ...and the saga is now this task's
    release.set()
    await task
    await asyncio.sleep(0)
    assert abandoned == []
    assert runs.get("s") == "second"


def test_outside_an_event_loop_nothing_is_watched() -> None:
    runs, abandoned = tracker()
    runs.start("s", "state")
    assert runs.finish("s") == "state"
    assert abandoned == []
