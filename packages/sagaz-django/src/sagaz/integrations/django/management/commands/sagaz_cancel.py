"""``manage.py sagaz_cancel``: cancel unfinished sagas (by id, or by filters)."""

from __future__ import annotations

from sagaz.integrations.django.management._common import OperationCommand


class Command(OperationCommand):
    """Cancel unfinished sagas: their completed steps are compensated."""

    help = "Cancel unfinished sagas (compensating what completed): SAGA_ID, or by filters."
    operation = "cancel"
    done = "cancelled"
