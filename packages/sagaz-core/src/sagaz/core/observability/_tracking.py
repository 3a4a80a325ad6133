"""Per-saga state of a listener, cleaned up when a run ends without a terminal event.

A saga run can stop without ``on_saga_completed/compensated/failed``: its worker lost
the lease, was stopped, or its task was cancelled. The tracker ties each saga's state
to the asyncio task that started it (the task running ``SagaExecution.run``, which
also delivers the terminal event) and hands the state to ``on_abandoned`` when that
task finishes first, so spans get ended and gauges decremented.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["RunTracker"]

_S = TypeVar("_S")


class _Entry(Generic[_S]):
    __slots__ = ("callback", "state", "task")

    def __init__(
        self,
        state: _S,
        task: asyncio.Task[object] | None,
        callback: Callable[[asyncio.Task[object]], None] | None,
    ) -> None:
        self.state = state
        self.task = task
        self.callback = callback


class RunTracker(Generic[_S]):
    """Maps saga ids to a listener's state for the runs going on in this process.

    At most ``max_sagas`` runs are tracked; beyond that the oldest is abandoned (a
    bound on memory if runs keep vanishing without their task ending).
    """

    def __init__(self, on_abandoned: Callable[[str, _S], None], max_sagas: int = 100_000) -> None:
        self._on_abandoned = on_abandoned
        self._max = max_sagas
        self._entries: dict[str, _Entry[_S]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def start(self, saga_id: str, state: _S) -> None:
        """Track ``state`` for ``saga_id`` (abandoning a previous run of it still tracked)."""
        if saga_id in self._entries:
            self.abandon(saga_id)
        elif len(self._entries) >= self._max:
            self.abandon(next(iter(self._entries)))
        try:
            task: asyncio.Task[object] | None = asyncio.current_task()
        except RuntimeError:  # no running loop: nothing to watch
            task = None
        callback = None
        if task is not None:

            def callback(done: asyncio.Task[object], saga_id: str = saga_id) -> None:
                entry = self._entries.get(saga_id)
                if entry is not None and entry.task is done:
                    self.abandon(saga_id)

            task.add_done_callback(callback)
        self._entries[saga_id] = _Entry(state, task, callback)

    def get(self, saga_id: str) -> _S | None:
        """The state of ``saga_id``'s run, if tracked."""
        entry = self._entries.get(saga_id)
        return None if entry is None else entry.state

    def finish(self, saga_id: str) -> _S | None:
        """Stop tracking ``saga_id`` (its run ended normally) and return its state."""
        entry = self._entries.pop(saga_id, None)
        if entry is None:
            return None
        if entry.task is not None and entry.callback is not None:
            entry.task.remove_done_callback(entry.callback)
        return entry.state

    def abandon(self, saga_id: str) -> None:
        """Stop tracking ``saga_id`` and hand its state to ``on_abandoned``."""
        state = self.finish(saga_id)
        if state is not None:
            self._on_abandoned(saga_id, state)
