"""``manage.py sagaz_retry``: re-drive FAILED sagas (by id, or every one matching filters)."""

from __future__ import annotations

from sagaz.integrations.django.management._common import OperationCommand


class Command(OperationCommand):
    """Re-drive FAILED sagas and wait for them."""

    help = "Re-drive FAILED sagas: SAGA_ID, or every FAILED saga matching the filters."
    operation = "retry"
    done = "retried"
