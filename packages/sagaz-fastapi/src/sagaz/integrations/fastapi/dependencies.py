"""Dependencies for endpoints: saga instances bound to the app's config, background runs.

::

    @app.post("/orders", status_code=202)
    async def create_order(
        order: Order,
        background_tasks: BackgroundTasks,
        saga: OrderSaga = Depends(saga_factory(OrderSaga)),
    ) -> dict[str, str]:
        saga_id = await run_saga_background(background_tasks, saga, order.model_dump())
        return {"saga_id": saga_id}
"""

# No `from __future__ import annotations`: FastAPI reads these functions' annotations.

import asyncio
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar, overload

from fastapi import BackgroundTasks, Depends

from sagaz.core import Saga, SagaConfig, get_runner, start_saga
from sagaz.integrations.fastapi.lifespan import get_config

__all__ = ["SagaFactory", "run_saga_background", "saga_factory"]

_S = TypeVar("_S", bound=Saga)


class SagaFactory:
    """Builds FastAPI dependencies that provide saga instances bound to the app's config.

    ``Depends(saga_factory(OrderSaga))`` gives each request a new ``OrderSaga`` whose
    config is the application's (see :func:`~sagaz.integrations.fastapi.get_config`);
    ``Depends(saga_factory(order_saga))`` with an imperative saga (built with
    ``Saga(name=...).add_step(...)``) gives a copy of it bound to that config.
    """

    @overload
    def __call__(self, saga: type[_S]) -> Callable[..., _S]: ...

    @overload
    def __call__(self, saga: _S) -> Callable[..., _S]: ...

    def __call__(self, saga: type[_S] | _S) -> Callable[..., _S]:
        """A dependency that returns a saga of ``saga`` (a class or an instance)."""
        if isinstance(saga, type):
            if not issubclass(saga, Saga):
                raise TypeError(
                    f"saga_factory() needs a Saga subclass or a Saga instance, "
                    f"got the class {saga.__qualname__}"
                )
            saga_class = saga

            def provide_saga(config: Annotated[SagaConfig, Depends(get_config)]) -> _S:
                return saga_class(config=config)

            name = saga_class.__qualname__
        elif isinstance(saga, Saga):
            template = saga

            def provide_saga(config: Annotated[SagaConfig, Depends(get_config)]) -> _S:
                return template.with_config(config)

            name = template.name
        else:
            raise TypeError(
                "saga_factory() needs a Saga subclass or a Saga instance, "
                f"got {type(saga).__name__}"
            )
        provide_saga.__doc__ = f"Provide a {name} saga bound to the application's config."
        return provide_saga


#: The default :class:`SagaFactory`: ``Depends(saga_factory(OrderSaga))``.
saga_factory = SagaFactory()


async def _run_recorded(saga: Saga, saga_id: str) -> None:
    """Hand the recorded saga to this loop's runner and wait for it to finish."""
    task = get_runner().submit(saga, saga_id)
    # asyncio.wait neither raises the saga's error (the runner logs it) nor cancels the
    # saga if this background task is cancelled: the runner owns it (bounded shutdown).
    await asyncio.wait([task])


async def run_saga_background(
    background_tasks: BackgroundTasks,
    saga: Saga,
    context: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
) -> str:
    """Record ``saga`` now and run it after the response is sent; return its id at once.

    The saga is stored as PENDING (with ``context``, ``idempotency_key`` and the request's
    correlation id) before this returns, so a crash after the response loses nothing: the
    next start-up (:func:`~sagaz.integrations.fastapi.create_lifespan` with
    ``recover=True``) or a worker resumes it. The background task hands it to the event
    loop's runner, so the lifespan's shutdown grace period covers it. A known
    ``idempotency_key`` returns the existing saga's id and schedules nothing.
    """
    saga_id, created = await start_saga(
        saga,
        context,
        idempotency_key=idempotency_key,
        correlation_id=correlation_id,
        run=False,
    )
    if created:
        background_tasks.add_task(_run_recorded, saga, saga_id)
    return saga_id
