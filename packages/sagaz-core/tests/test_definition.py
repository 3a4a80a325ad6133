"""Saga definitions: both styles, the DAG they build, and errors raised when defined."""

from __future__ import annotations

from typing import Any

import pytest

from sagaz.core import (
    RetryPolicy,
    Saga,
    SagaDefinition,
    SagaDefinitionError,
    StepDefinition,
    action,
    compensate,
    registry,
    trigger,
)

pytestmark = pytest.mark.usefixtures("isolated_config")


async def noop(ctx: dict[str, Any]) -> None:
    return None


def sync_noop(ctx: dict[str, Any]) -> None:
    return None


# -- declarative -------------------------------------------------------------------


def test_declarative_steps_follow_the_previous_one_by_default() -> None:
    class SequentialSaga(Saga):
        saga_name = "def-sequential"

        @action("a")
        async def a(self, ctx: dict[str, Any]) -> None: ...

        @action("b")
        def b(self, ctx: dict[str, Any]) -> None: ...

        @action("c", depends_on=[])
        async def c(self, ctx: dict[str, Any]) -> None: ...

        @action("d", depends_on=["a", "c"])
        async def d(self, ctx: dict[str, Any]) -> None: ...

        @compensate("a")
        async def undo_a(self, ctx: dict[str, Any]) -> None: ...

    saga = SequentialSaga()
    steps = saga.definition.steps
    assert saga.name == "def-sequential"
    assert list(steps) == ["a", "b", "c", "d"]
    assert steps["a"].depends_on == ()
    assert steps["b"].depends_on == ("a",)
    assert steps["c"].depends_on == ()  # depends_on=[] makes a root
    assert steps["d"].depends_on == ("a", "c")
    assert set(saga.definition.roots) == {"a", "c"}
    assert not saga.definition.is_linear
    # Compensations are bound to the instance and attached to their step only.
    assert steps["a"].compensation is not None
    assert steps["a"].compensation.__func__ is SequentialSaga.undo_a  # type: ignore[attr-defined]
    assert all(steps[n].compensation is None for n in "bcd")
    # Plain functions are recognised as such (they run in a worker thread).
    assert steps["a"].action_is_async
    assert not steps["b"].action_is_async
    assert steps["a"].compensation_is_async


def test_declarative_name_defaults_to_class_and_step_to_method() -> None:
    class DefaultNamesSaga(Saga):
        @action()
        async def reserve(self, ctx: dict[str, Any]) -> None: ...

        @action(retry=RetryPolicy(max_attempts=4), timeout=2.5)
        async def charge(self, ctx: dict[str, Any]) -> None: ...

        @compensate("reserve", retry=RetryPolicy(max_attempts=7), timeout=1.5)
        async def release(self, ctx: dict[str, Any]) -> None: ...

    saga = DefaultNamesSaga()
    assert saga.name == "DefaultNamesSaga"
    assert saga.definition.order == ("reserve", "charge")
    assert saga.definition.is_linear
    charge = saga.definition.steps["charge"]
    assert charge.retry == RetryPolicy(max_attempts=4)
    assert charge.timeout == 2.5
    reserve = saga.definition.steps["reserve"]
    assert reserve.compensation_retry == RetryPolicy(max_attempts=7)
    assert reserve.compensation_timeout == 1.5
    assert registry.saga_class("DefaultNamesSaga") is DefaultNamesSaga


def test_declarative_subclass_appends_steps_after_the_inherited_ones() -> None:
    class BaseOrderSaga(Saga):
        saga_name = "def-base-order"

        @action("reserve")
        async def reserve(self, ctx: dict[str, Any]) -> None: ...

    class ExtendedOrderSaga(BaseOrderSaga):
        saga_name = "def-extended-order"

        @action("ship")
        async def ship(self, ctx: dict[str, Any]) -> None: ...

    assert ExtendedOrderSaga().definition.order == ("reserve", "ship")
    assert ExtendedOrderSaga().definition.steps["ship"].depends_on == ("reserve",)
    assert BaseOrderSaga().definition.order == ("reserve",)


def test_declarative_unknown_dependency_names_the_step() -> None:
    with pytest.raises(SagaDefinitionError, match=r"step 'ship' depends on unknown step 'pay'"):

        class UnknownDepSaga(Saga):
            @action("reserve")
            async def reserve(self, ctx: dict[str, Any]) -> None: ...

            @action("ship", depends_on=["pay"])
            async def ship(self, ctx: dict[str, Any]) -> None: ...


def test_declarative_cycle_names_the_steps() -> None:
    with pytest.raises(SagaDefinitionError, match="cycle") as info:

        class CycleSaga(Saga):
            @action("start", depends_on=[])
            async def start(self, ctx: dict[str, Any]) -> None: ...

            @action("ping", depends_on=["pong"])
            async def ping(self, ctx: dict[str, Any]) -> None: ...

            @action("pong", depends_on=["ping"])
            async def pong(self, ctx: dict[str, Any]) -> None: ...

    assert "'ping'" in str(info.value)
    assert "'pong'" in str(info.value)
    assert "'start'" not in str(info.value)


def test_declarative_duplicate_step_name() -> None:
    with pytest.raises(SagaDefinitionError, match=r"step 'pay' twice"):

        class DuplicateSaga(Saga):
            @action("pay")
            async def pay(self, ctx: dict[str, Any]) -> None: ...

            @action("pay")
            async def pay_again(self, ctx: dict[str, Any]) -> None: ...


def test_compensation_for_a_missing_step() -> None:
    with pytest.raises(SagaDefinitionError, match=r"refund compensates step 'charge'"):

        class MissingStepSaga(Saga):
            @action("reserve")
            async def reserve(self, ctx: dict[str, Any]) -> None: ...

            @compensate("charge")
            async def refund(self, ctx: dict[str, Any]) -> None: ...


def test_two_compensations_for_one_step() -> None:
    with pytest.raises(SagaDefinitionError, match=r"step 'reserve' has two compensations"):

        class TwoUndoSaga(Saga):
            @action("reserve")
            async def reserve(self, ctx: dict[str, Any]) -> None: ...

            @compensate("reserve")
            async def release(self, ctx: dict[str, Any]) -> None: ...

            @compensate("reserve")
            async def release_again(self, ctx: dict[str, Any]) -> None: ...


def test_a_method_cannot_be_both_action_and_compensation() -> None:
    with pytest.raises(SagaDefinitionError, match="both @action and @compensate"):

        class BothSaga(Saga):
            @action("reserve")
            @compensate("reserve")
            async def reserve(self, ctx: dict[str, Any]) -> None: ...


def test_self_dependency_names_the_step() -> None:
    with pytest.raises(SagaDefinitionError, match=r"step 'loop' depends on itself"):

        class SelfSaga(Saga):
            @action("loop", depends_on=["loop"])
            async def loop(self, ctx: dict[str, Any]) -> None: ...


def test_action_without_parentheses_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match="parentheses"):

        class BareActionSaga(Saga):
            @action  # type: ignore[arg-type]
            async def reserve(self, ctx: dict[str, Any]) -> None: ...


def test_compensate_without_a_step_name_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match="needs the name of the step"):

        class BareCompensateSaga(Saga):
            @action("reserve")
            async def reserve(self, ctx: dict[str, Any]) -> None: ...

            @compensate  # type: ignore[arg-type]
            async def release(self, ctx: dict[str, Any]) -> None: ...


def test_depends_on_as_a_string_is_rejected_in_both_styles() -> None:
    with pytest.raises(SagaDefinitionError, match=r"depends_on=\['reserve'\]"):
        action("ship", depends_on="reserve")
    saga = Saga(name="def-string-deps").add_step("reserve", noop)
    with pytest.raises(SagaDefinitionError, match=r"step 'ship'.*depends_on=\['reserve'\]"):
        saga.add_step("ship", noop, depends_on="reserve")


def test_bad_timeouts_and_retry_name_the_step() -> None:
    saga = Saga(name="def-bad-options")
    with pytest.raises(SagaDefinitionError, match=r"step 'a': timeout must be > 0"):
        saga.add_step("a", noop, timeout=0)
    with pytest.raises(SagaDefinitionError, match=r"step 'a': compensation_timeout must be > 0"):
        saga.add_step("a", noop, compensation=noop, compensation_timeout=-1)
    with pytest.raises(SagaDefinitionError, match=r"step 'a': retry must be a RetryPolicy"):
        saga.add_step("a", noop, retry=3)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=r"step 'a': action must be callable"):
        saga.add_step("a", "not a function")  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match=r"step 'a': compensation must be callable"):
        saga.add_step("a", noop, compensation=42)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="non-empty string"):
        saga.add_step("", noop)
    with pytest.raises(SagaDefinitionError, match="lists a dependency twice"):
        saga.add_step("x", noop).add_step("a", noop, depends_on=["x", "x"])
    # Nothing half-added: the failed calls left only "x".
    assert saga.definition.order == ("x",)


# -- imperative --------------------------------------------------------------------


def test_imperative_steps_chain_and_default_to_the_previous_step() -> None:
    saga = (
        Saga(name="def-imperative")
        .add_step("a", noop, compensation=sync_noop)
        .add_step("b", sync_noop)
        .add_step("c", noop, depends_on=[])
        .add_step("d", noop, depends_on=["b", "c"])
    )
    steps = saga.definition.steps
    assert saga.name == "def-imperative"
    assert steps["a"].depends_on == ()
    assert steps["b"].depends_on == ("a",)
    assert steps["c"].depends_on == ()
    assert steps["d"].depends_on == ("b", "c")
    assert steps["a"].compensation is sync_noop
    assert not steps["a"].compensation_is_async
    assert not steps["b"].action_is_async
    assert len(saga.definition) == 4
    assert "def-imperative" in registry.names


def test_imperative_unknown_dependency_names_the_step() -> None:
    saga = Saga(name="def-imperative-unknown").add_step("a", noop)
    with pytest.raises(SagaDefinitionError, match=r"step 'b' depends on unknown step 'zz'"):
        saga.add_step("b", noop, depends_on=["a", "zz"])
    assert saga.definition.order == ("a",)


def test_imperative_duplicate_step_name() -> None:
    saga = Saga(name="def-imperative-dup").add_step("a", noop)
    with pytest.raises(SagaDefinitionError, match=r"defines step 'a' twice"):
        saga.add_step("a", noop)


def test_imperative_saga_needs_a_name() -> None:
    with pytest.raises(SagaDefinitionError, match="needs a name"):
        Saga()


def test_definition_cycle_is_rejected_when_built_directly() -> None:
    steps = [
        StepDefinition.create("a", noop, depends_on=["b"]),
        StepDefinition.create("b", noop, depends_on=["a"]),
    ]
    with pytest.raises(SagaDefinitionError, match=r"saga 'direct' has a dependency cycle"):
        SagaDefinition("direct", steps)


def test_definition_reverse_order_puts_dependents_first() -> None:
    saga = (
        Saga(name="def-reverse")
        .add_step("a", noop)
        .add_step("b", noop, depends_on=["a"])
        .add_step("c", noop, depends_on=["a"])
        .add_step("d", noop, depends_on=["b", "c"])
    )
    undo = saga.definition.reverse_order(["a", "b", "c", "d"])
    assert undo[0] == "d"
    assert undo[-1] == "a"
    assert set(undo[1:3]) == {"b", "c"}
    assert saga.definition.dependents["a"] == ("b", "c")


# -- mixing the styles -------------------------------------------------------------


class MixedStyleSaga(Saga):
    saga_name = "def-mixed"

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> None: ...


def test_add_step_on_a_declarative_saga_is_rejected() -> None:
    saga = MixedStyleSaga()
    with pytest.raises(SagaDefinitionError, match="Do not mix the two styles"):
        saga.add_step("ship", noop)
    assert saga.definition.order == ("reserve",)


def test_declarative_saga_rejects_another_name() -> None:
    with pytest.raises(SagaDefinitionError, match="is declarative: its name is 'def-mixed'"):
        MixedStyleSaga(name="other")
    assert MixedStyleSaga(name="def-mixed").name == "def-mixed"


def test_trigger_on_a_class_without_steps_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match="no @action steps"):

        class OnlyTriggerSaga(Saga):
            @trigger(source="def-only-trigger")
            def on_event(self, payload: dict[str, Any]) -> dict[str, Any]:
                return dict(payload)


async def test_running_a_saga_without_steps_fails_clearly() -> None:
    with pytest.raises(SagaDefinitionError, match="has no steps"):
        await Saga(name="def-empty").run({})
