"""The read-only admin: list, filters, search, change pages with steps, history and the
diagram, and the retry / cancel actions."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.db import transaction
from django.test import Client, override_settings
from sagaz_django_helpers import saga_status, wait_finished
from sagaz_django_testproject.settings import SAGAZ
from sagaz_django_testproject.shop.sagas import OrderSaga

from sagaz.integrations.django import atomic_saga_start
from sagaz.integrations.django.models import SagaInstance

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/admin/sagaz/sagainstance/"


def _pks(*saga_ids: str) -> list[int]:
    return list(SagaInstance.objects.filter(saga_id__in=saga_ids).values_list("pk", flat=True))


@pytest.fixture
def sagas() -> dict[str, str]:
    with transaction.atomic():
        ids = {
            "completed": atomic_saga_start(
                OrderSaga, {"order_id": "c", "amount": 1}, correlation_id="corr-c"
            ),
            "compensated": atomic_saga_start(OrderSaga, {"order_id": "d", "amount": 800}),
            "failed": atomic_saga_start(
                OrderSaga, {"order_id": "f", "amount": 800, "break_refund": True}
            ),
        }
    statuses = wait_finished(*ids.values())
    assert [statuses[ids[k]] for k in ("completed", "compensated", "failed")] == [
        "COMPLETED",
        "COMPENSATED",
        "FAILED",
    ]
    return ids


def test_pages_render(admin_client: Client, sagas: dict[str, str]) -> None:
    listing = admin_client.get(URL)
    assert listing.status_code == 200
    for saga_id in sagas.values():
        assert saga_id in listing.content.decode()
    assert admin_client.get(URL, {"status__exact": "FAILED"}).status_code == 200
    assert admin_client.get(URL, {"saga_name": "order"}).status_code == 200
    found = admin_client.get(URL, {"q": sagas["completed"][:8]})
    assert sagas["completed"] in found.content.decode()
    by_correlation = admin_client.get(URL, {"q": "corr-c"}).content.decode()
    assert sagas["completed"] in by_correlation
    assert sagas["failed"] not in by_correlation
    for kind, saga_id in sagas.items():
        by_pk = admin_client.get(f"{URL}{_pks(saga_id)[0]}/change/")
        assert by_pk.status_code == 200
        page = admin_client.get(f"{URL}{saga_id}/change/")
        assert page.status_code == 200, kind
        html = page.content.decode()
        assert "flowchart TD" in html
        assert "classDef" in html
        assert "saga_started" in html
        assert "reserve" in html
    assert admin_client.get(f"{URL}add/").status_code == 403
    assert admin_client.get(f"{URL}{sagas['failed']}/delete/").status_code == 403


def test_diagram_of_an_unknown_saga_name(admin_client: Client) -> None:
    SagaInstance.objects.create(
        saga_id="odd",
        saga_name="gone",
        status="PENDING",
        context="{}",
        created_at=1.0,
        updated_at=1.0,
    )
    page = admin_client.get(f"{URL}odd/change/")
    assert page.status_code == 200
    assert "no saga named" in page.content.decode()


def test_retry_and_cancel_actions(admin_client: Client, sagas: dict[str, str]) -> None:
    response = admin_client.post(
        URL,
        {"action": "retry_sagas", "_selected_action": _pks(sagas["failed"], sagas["completed"])},
        follow=True,
    )
    assert response.status_code == 200
    text = " | ".join(str(m) for m in response.context["messages"])
    assert f"retry saga {sagas['failed']}: FAILED" in text  # the refund still fails
    assert "only FAILED sagas can be retried" in text
    # Left to a worker (none runs): with RUN_IN_PROCESS on, this process's recovery
    # sweep would claim and run the PENDING saga before the admin cancels it.
    with override_settings(SAGAZ={**SAGAZ, "RUN_IN_PROCESS": False}):
        with transaction.atomic():
            pending = atomic_saga_start(OrderSaga, {"order_id": "p", "amount": 1})
        response = admin_client.post(
            URL, {"action": "cancel_sagas", "_selected_action": _pks(pending)}, follow=True
        )
    assert f"cancel saga {pending}: COMPENSATED" in [str(m) for m in response.context["messages"]]
    assert saga_status(pending) == "COMPENSATED"


def test_view_only_staff_sees_no_actions(client: Client, sagas: dict[str, str]) -> None:
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_sagainstance"))
    client.force_login(user)
    listing = client.get(URL)
    assert listing.status_code == 200
    assert "retry_sagas" not in listing.content.decode()
    assert client.get(f"{URL}{sagas['completed']}/change/").status_code == 200
