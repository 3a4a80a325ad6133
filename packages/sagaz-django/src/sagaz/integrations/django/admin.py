"""A read-only Django admin for sagas, with retry and cancel actions.

The list filters by status and name and searches by saga id and correlation id (prefix);
the change page shows the steps and the history inline and the Mermaid diagram of the
execution. Nothing can be added, edited or deleted here; the actions need the ``change``
permission on sagas and run through the engine (:func:`sagaz.core.retry_saga`,
:func:`sagaz.core.cancel_saga`) on the process's portal loop.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from sagaz.core.diagrams import to_mermaid
from sagaz.core.errors import SagaError
from sagaz.core.operations import cancel_saga, retry_saga
from sagaz.core.portal import get_portal
from sagaz.core.records import SagaRecord
from sagaz.core.registry import registry
from sagaz.core.status import SagaStatus
from sagaz.integrations.django.models import SagaHistoryEntry, SagaInstance, SagaStep
from sagaz.integrations.django.runtime import get_config
from sagaz.integrations.django.storage import step_from_row

__all__ = ["SagaAdmin"]

#: How long an action waits for the sagas it re-drives before reporting "in progress".
ACTION_WAIT_SECONDS = 5.0


class _ReadOnlyInline(admin.TabularInline):  # type: ignore[type-arg]
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Nothing is added by hand."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Read-only."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Read-only."""
        return False


class StepInline(_ReadOnlyInline):
    """The saga's steps, in the order they first started."""

    model = SagaStep
    fields = (
        "name",
        "status",
        "attempts",
        "error",
        "compensation_attempts",
        "compensation_error",
        "result",
    )
    readonly_fields = fields


class HistoryInline(_ReadOnlyInline):
    """The saga's append-only history."""

    model = SagaHistoryEntry
    fields = ("seq", "when", "kind", "step", "attempt", "error")
    readonly_fields = fields


def _run_many(
    func: Callable[[str], Awaitable[Any]], saga_ids: list[str]
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Start ``func(saga_id)`` for each id on the portal loop; wait a little for them."""
    portal = get_portal()
    futures = {saga_id: portal.start_task_soon(func, saga_id) for saga_id in saga_ids}
    done, _ = concurrent.futures.wait(futures.values(), timeout=ACTION_WAIT_SECONDS)
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    running: list[str] = []
    for saga_id, future in futures.items():
        if future not in done:
            running.append(saga_id)
            continue
        exc = future.exception()
        if exc is None:
            results[saga_id] = future.result()
        else:
            errors[saga_id] = str(exc)
    return results, errors, running


@admin.register(SagaInstance)
class SagaAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Sagas, read-only, with the retry and cancel actions."""

    list_display = ("saga_id", "saga_name", "status", "created", "updated", "correlation_id")
    list_filter = ("status", "saga_name")
    search_fields = ("^saga_id", "^correlation_id")
    ordering = ("-created_at", "id")
    list_per_page = 50
    show_full_result_count = False
    inlines = (StepInline, HistoryInline)
    actions = ("retry_sagas", "cancel_sagas")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "saga_id",
                    "saga_name",
                    "status",
                    "correlation_id",
                    "idempotency_key",
                    "created",
                    "updated",
                    "failed_step",
                    "error",
                    "recoveries",
                )
            },
        ),
        ("Diagram", {"fields": ("diagram",)}),
        ("Context", {"fields": ("context_pretty",)}),
        ("Lease", {"fields": ("lease_owner", "lease_expires_at", "cancel_requested")}),
    )
    readonly_fields = (
        "saga_id",
        "saga_name",
        "status",
        "correlation_id",
        "idempotency_key",
        "created",
        "updated",
        "failed_step",
        "error",
        "recoveries",
        "diagram",
        "context_pretty",
        "lease_owner",
        "lease_expires_at",
        "cancel_requested",
    )

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> SagaInstance | None:
        """Find a saga by its row id or, in a URL like ``.../<saga_id>/change/``, its saga id."""
        if from_field is None and not object_id.isdigit():
            from_field = "saga_id"
        return super().get_object(request, object_id, from_field)

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Sagas are started by code, not by hand."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Read-only: records are written by the engine only."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        """Read-only: history is kept."""
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Retry and cancel need the ``change`` permission on sagas."""
        opts = self.opts
        user: Any = request.user
        return bool(user.has_perm(f"{opts.app_label}.change_{opts.model_name}"))

    @admin.display(description="Mermaid diagram")
    def diagram(self, obj: SagaInstance) -> str:
        """The execution's Mermaid diagram (paste it into any Mermaid renderer)."""
        try:
            saga = registry.create(obj.saga_name, get_config())
        except SagaError as exc:
            return str(exc)
        record: SagaRecord = SagaRecord(
            saga_id=obj.saga_id,
            saga_name=obj.saga_name,
            status=SagaStatus(obj.status),
            context={},
        )
        for step in SagaStep.objects.using(obj._state.db or "default").filter(saga_id=obj.saga_id):
            record.steps[step.name] = step_from_row(step)
        text = to_mermaid(saga, record)
        return format_html('<pre class="mermaid sagaz-diagram">{}</pre>', text)

    @admin.display(description="context")
    def context_pretty(self, obj: SagaInstance) -> str:
        """The context as indented JSON."""
        return format_html("<pre>{}</pre>", obj.context_pretty)

    @admin.display(description="created (UTC)", ordering="created_at")
    def created(self, obj: SagaInstance) -> Any:
        """When the saga was recorded."""
        return obj.created

    @admin.display(description="updated (UTC)", ordering="updated_at")
    def updated(self, obj: SagaInstance) -> Any:
        """The time of its last transition."""
        return obj.updated

    def _report(
        self,
        request: HttpRequest,
        verb: str,
        results: dict[str, Any],
        errors: dict[str, str],
        running: list[str],
    ) -> None:
        for saga_id, value in results.items():
            status = getattr(value, "status", value)
            self.message_user(request, f"{verb} saga {saga_id}: {getattr(status, 'value', status)}")
        for saga_id, error in errors.items():
            self.message_user(request, f"could not {verb} saga {saga_id}: {error}", messages.ERROR)
        for saga_id in running:
            self.message_user(
                request, f"{verb} saga {saga_id}: still running in the background", messages.INFO
            )

    @admin.action(description="Retry the selected FAILED sagas", permissions=("operate",))
    def retry_sagas(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> None:
        """Re-drive FAILED sagas (others are reported and skipped)."""
        ids = list(queryset.values_list("saga_id", flat=True))
        config = get_config()

        async def retry(saga_id: str) -> Any:
            return await retry_saga(saga_id, config)

        self._report(request, "retry", *_run_many(retry, ids))

    @admin.action(description="Cancel the selected unfinished sagas", permissions=("operate",))
    def cancel_sagas(self, request: HttpRequest, queryset: QuerySet[SagaInstance]) -> None:
        """Cancel unfinished sagas: their completed steps are compensated."""
        ids = list(queryset.values_list("saga_id", flat=True))
        config = get_config()

        async def cancel(saga_id: str) -> Any:
            return await cancel_saga(saga_id, config)

        self._report(request, "cancel", *_run_many(cancel, ids))
