"""install_wheels: sagaz-django from its wheel in a project made by `django-admin startproject`.

Runs `manage.py check`, `manage.py migrate` and one webhook request through Django's test
client (`manage.py shell`), then `manage.py sagaz_list`, each in its own process, in a fresh
temporary directory.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from _wheel_check import check_installed

check_installed({"sagaz-core": "sagaz.core", "sagaz-django": "sagaz.integrations.django"})

SETTINGS = """
INSTALLED_APPS += ["sagaz.integrations.django", "shop"]
MIDDLEWARE = ["sagaz.integrations.django.middleware.SagaContextMiddleware", *MIDDLEWARE]
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
SAGAZ = {"RUN_IN_PROCESS": True, "OUTBOX": True}
"""

URLS = """
from django.urls import include
urlpatterns += [path("sagaz/", include("sagaz.integrations.django.urls"))]
"""

SAGAS = """
from sagaz.core import Saga, action, compensate, trigger


class OrderSaga(Saga):
    saga_name = "smoke_django_order"

    @trigger(source="order_created", idempotency_key="order_id")
    def on_event(self, event):
        return {"order_id": event["order_id"]}

    @action("reserve")
    async def reserve(self, ctx):
        return {"reservation": f"R-{ctx['order_id']}"}

    @compensate("reserve")
    async def release(self, ctx):
        return None
"""

REQUEST = """
import time
from django.test import Client

client = Client()
response = client.post(
    "/sagaz/order_created", {"order_id": "A1"}, content_type="application/json",
    HTTP_X_CORRELATION_ID="smoke-1",
)
assert response.status_code == 202, response.content
assert response["X-Correlation-ID"] == "smoke-1", dict(response.items())
saga_id = response.json()["saga_ids"][0]
deadline = time.monotonic() + 20
while True:
    status = client.get(f"/sagaz/status/{saga_id}")
    assert status.status_code == 200, status.content
    if status.json()["state"] == "COMPLETED":
        break
    assert time.monotonic() < deadline, f"saga {saga_id} did not complete: {status.json()}"
    time.sleep(0.05)
assert client.post("/sagaz/nope", {}, content_type="application/json").status_code == 404
print("request ok:", saga_id)
"""


def run(*args: str, cwd: Path) -> str:
    """Run `python ARGS` in `cwd`; fail with its output when it fails."""
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"`python {' '.join(args)}` failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


with tempfile.TemporaryDirectory(prefix="sagaz-django-smoke-") as tmp:
    project = Path(tmp)
    run("-m", "django", "startproject", "smokeproj", ".", cwd=project)
    run("manage.py", "startapp", "shop", cwd=project)
    with (project / "smokeproj" / "settings.py").open("a") as settings:
        settings.write(SETTINGS)
    with (project / "smokeproj" / "urls.py").open("a") as urls:
        urls.write(URLS)
    (project / "shop" / "sagas.py").write_text(SAGAS)
    run("manage.py", "check", "--fail-level", "WARNING", cwd=project)
    out = run("manage.py", "migrate", "--no-input", cwd=project)
    assert "sagaz" in out, f"migrate did not apply the sagaz migrations:\n{out}"
    print(run("manage.py", "shell", "-c", REQUEST, cwd=project).strip())
    out = run("manage.py", "sagaz_list", cwd=project)
    assert "smoke_django_order" in out, f"sagaz_list does not show the saga:\n{out}"

print("sagaz-django from its wheel: check, migrate, webhook 202, saga COMPLETED, sagaz_list")
