"""Mermaid diagrams of saga definitions and of recorded executions."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sagaz_core_test_sagas import DiamondSaga

from sagaz.core import Saga, SagaConfig, SagaStatus, to_mermaid

pytestmark = pytest.mark.usefixtures("isolated_config")


def node_ids(diagram: str) -> dict[str, str]:
    """Step label -> node id, from lines like ``s0_a["a"]``."""
    return {label: node for node, label in re.findall(r'^\s+(\w+)\["(.*)"\]$', diagram, re.M)}


def edges(diagram: str) -> set[tuple[str, str]]:
    return set(re.findall(r"^\s+(\w+) --> (\w+)$", diagram, re.M))


def undo_nodes(diagram: str) -> dict[str, str]:
    """Compensated step node id -> its undo node id (``a -. compensate .-> a_undo``)."""
    return dict(re.findall(r"^\s+(\w+) -\. compensate \.-> (\w+)$", diagram, re.M))


def classes(diagram: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for members, state in re.findall(r"^\s+class ([\w,]+) (\w+)$", diagram, re.M):
        found.setdefault(state, set()).update(members.split(","))
    return found


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def undo_payment(ctx: dict[str, Any]) -> None:
    return None


def test_every_step_edge_and_compensation_is_drawn() -> None:
    diagram = to_mermaid(DiamondSaga())
    assert diagram.startswith("flowchart TD\n")
    assert "%% saga: test-diamond" in diagram
    ids = node_ids(diagram)
    assert set(ids) == {"a", "b", "c", "d"}
    assert len(set(ids.values())) == 4
    assert edges(diagram) == {
        (ids["a"], ids["b"]),
        (ids["a"], ids["c"]),
        (ids["b"], ids["d"]),
        (ids["c"], ids["d"]),
    }
    undo = undo_nodes(diagram)
    assert set(undo) == set(ids.values())
    for step in "abcd":
        assert f'{undo[ids[step]]}(["undo: undo_{step}"])' in diagram
    assert "classDef" not in diagram
    assert "\n    class " not in diagram


def test_steps_without_compensation_have_no_undo_node() -> None:
    saga = Saga(name="dia-partial").add_step("reserve", noop).add_step("pay", noop, undo_payment)
    diagram = to_mermaid(saga)
    ids = node_ids(diagram)
    assert list(undo_nodes(diagram)) == [ids["pay"]]
    assert "undo: undo_payment" in diagram
    hidden = to_mermaid(saga, show_compensations=False)
    assert undo_nodes(hidden) == {}
    assert "undo:" not in hidden
    assert edges(hidden) == {(ids["reserve"], ids["pay"])}


def test_direction_and_odd_step_names() -> None:
    saga = Saga(name='dia-"quoted"').add_step('charge "card" now', noop)
    saga.add_step("ship/parcel", noop)
    diagram = to_mermaid(saga.definition, direction="LR")
    assert diagram.startswith("flowchart LR\n")
    assert "#quot;" in diagram
    assert "saga: dia-#quot;quoted#quot;" in diagram
    ids = node_ids(diagram)
    assert set(ids) == {"charge #quot;card#quot; now", "ship/parcel"}
    assert all(re.fullmatch(r"\w+", node) for node in ids.values())
    with pytest.raises(ValueError, match="direction must be one of"):
        to_mermaid(saga, direction="sideways")


async def test_a_failed_and_compensated_execution_is_coloured(config: SagaConfig) -> None:
    saga = DiamondSaga(config=config)
    result = await saga.run({"fail": "d"})
    assert result.status is SagaStatus.COMPENSATED
    record = await config.storage.load(result.saga_id)
    assert record is not None

    diagram = to_mermaid(saga, record)
    ids = node_ids(diagram)
    undo = undo_nodes(diagram)
    states = classes(diagram)
    assert "%% saga: test-diamond (COMPENSATED)" in diagram
    for state in ("completed", "running", "failed", "compensated", "pending"):
        assert f"classDef {state} " in diagram
    assert states["failed"] == {ids["d"]}
    assert states["compensated"] == {ids[s] for s in "abc"} | {undo[ids[s]] for s in "abc"}
    assert "completed" not in states
    assert "pending" not in states
    assert undo[ids["d"]] not in set().union(*states.values())  # d was never undone


async def test_completed_and_pending_steps_are_coloured(config: SagaConfig) -> None:
    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("stop")

    saga = Saga(name="dia-pending", config=config)
    saga.add_step("first", noop).add_step("second", fail).add_step("third", noop)
    record = await config.storage.load((await saga.run()).saga_id)
    assert record is not None
    ids = node_ids(to_mermaid(saga, record))
    states = classes(to_mermaid(saga, record))
    assert states == {
        "completed": {ids["first"]},  # no compensation: it stays completed
        "failed": {ids["second"]},
        "pending": {ids["third"]},
    }

    done = await DiamondSaga(config=config).run({})
    record = await config.storage.load(done.saga_id)
    assert record is not None
    diagram = to_mermaid(DiamondSaga(), record)
    assert classes(diagram) == {"completed": set(node_ids(diagram).values())}


async def test_a_step_whose_compensation_failed_is_not_drawn_as_compensated(
    config: SagaConfig,
) -> None:
    # The saga is FAILED because undoing "reserve" failed: the diagram must not show
    # "reserve" as rolled back.
    async def broken_undo(ctx: dict[str, Any]) -> None:
        raise ConnectionError("warehouse down")

    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("declined")

    saga = Saga(name="dia-undo-failed", config=config)
    saga.add_step("reserve", noop, broken_undo).add_step("pay", noop, undo_payment)
    saga.add_step("ship", fail)
    result = await saga.run()
    assert result.status is SagaStatus.FAILED
    record = await config.storage.load(result.saga_id)
    assert record is not None

    diagram = to_mermaid(saga, record)
    ids, undo, states = node_ids(diagram), undo_nodes(diagram), classes(diagram)
    assert undo[ids["reserve"]] in states["failed"]  # the undo failed
    assert ids["pay"] in states["compensated"]  # this one really was undone
    assert ids["ship"] in states["failed"]
    assert ids["reserve"] not in states.get("compensated", set())
