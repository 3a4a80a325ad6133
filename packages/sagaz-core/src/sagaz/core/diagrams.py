"""Mermaid diagrams of saga definitions, optionally coloured by a recorded execution."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sagaz.core.definition import SagaDefinition
from sagaz.core.records import SagaRecord
from sagaz.core.status import StepStatus

if TYPE_CHECKING:
    from sagaz.core.saga import Saga

__all__ = ["STATE_STYLES", "to_mermaid"]

#: Mermaid ``classDef`` styles by the state a step is drawn in.
STATE_STYLES: dict[str, str] = {
    "completed": "fill:#d4edda,stroke:#28a745,color:#155724",
    "running": "fill:#cce5ff,stroke:#007bff,color:#004085",
    "failed": "fill:#f8d7da,stroke:#dc3545,color:#721c24",
    "compensated": "fill:#fff3cd,stroke:#ffc107,color:#856404",
    "pending": "fill:#f8f9fa,stroke:#adb5bd,color:#495057",
}

_STATE_OF: dict[StepStatus, str] = {
    StepStatus.PENDING: "pending",
    StepStatus.RUNNING: "running",
    StepStatus.COMPLETED: "completed",
    StepStatus.FAILED: "failed",
    StepStatus.CANCELLED: "failed",
    StepStatus.COMPENSATING: "running",
    StepStatus.COMPENSATED: "compensated",
    StepStatus.COMPENSATION_FAILED: "failed",
}

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def _label(text: str) -> str:
    return text.replace('"', "#quot;")


def to_mermaid(
    saga: Saga | SagaDefinition,
    record: SagaRecord | None = None,
    *,
    direction: str = "TD",
    show_compensations: bool = True,
) -> str:
    """A Mermaid flowchart of the saga's steps, dependencies and compensations.

    With ``record`` (a recorded execution of this saga), each step is coloured by its
    state (completed, running, failed, compensated, pending) and its compensation
    node is drawn when the compensation ran.
    """
    definition = saga if isinstance(saga, SagaDefinition) else saga.definition
    if direction not in {"TD", "TB", "BT", "LR", "RL"}:
        raise ValueError(f"direction must be one of TD, TB, BT, LR, RL; got {direction!r}")
    ids = {name: f"s{i}_{_UNSAFE.sub('_', name)}" for i, name in enumerate(definition.order)}
    lines = [f"flowchart {direction}"]
    title = definition.name if record is None else f"{definition.name} ({record.status.value})"
    lines.append(f"    %% saga: {_label(title)}")
    for name in definition.order:
        lines.append(f'    {ids[name]}["{_label(name)}"]')
    for name in definition.order:
        for dep in definition.steps[name].depends_on:
            lines.append(f"    {ids[dep]} --> {ids[name]}")
    classes: dict[str, list[str]] = {}
    steps = record.steps if record is not None else {}
    for name in definition.order:
        step = definition.steps[name]
        recorded = steps.get(name)
        if show_compensations and step.compensation is not None:
            comp_id = f"{ids[name]}_undo"
            comp_name = getattr(step.compensation, "__name__", "compensate")
            lines.append(f'    {comp_id}(["undo: {_label(comp_name)}"])')
            lines.append(f"    {ids[name]} -. compensate .-> {comp_id}")
            if recorded is not None and recorded.status in {
                StepStatus.COMPENSATED,
                StepStatus.COMPENSATION_FAILED,
                StepStatus.COMPENSATING,
            }:
                state = _STATE_OF[recorded.status]
                classes.setdefault(state, []).append(comp_id)
        if record is not None:
            state = "pending" if recorded is None else _STATE_OF[recorded.status]
            classes.setdefault(state, []).append(ids[name])
    if record is not None:
        for state, style in STATE_STYLES.items():
            lines.append(f"    classDef {state} {style}")
        for state, members in classes.items():
            lines.append(f"    class {','.join(members)} {state}")
    return "\n".join(lines) + "\n"
