"""Webhook ingest of sagaz-django behind gunicorn, on PostgreSQL, on loopback.

Writes a small Django project (one 3-step order saga triggered by ``order_created``; the
plugin's URLs; a floor view, a bare Django view doing the same five commits by hand with
``connection.cursor()`` inside ``transaction.atomic()``, see ``_webhooks.py``) to a
temporary folder, creates a scratch PostgreSQL database (dropped at the end), runs
``migrate``, starts ``gunicorn -w WORKERS --threads THREADS`` (WSGI; sagas run in process
on each worker's portal loop), sends ``--requests`` POSTs over ``--concurrency``
keep-alive connections to each route, waits until every saga is terminal, stops it.

    python bench/bench_django_webhooks.py [--quick] [--requests 2000] [--concurrency 16]
        [--workers 2] [--threads 8] [--conn-max-age 60]

Needs gunicorn, psycopg, Django, ``sagaz-core`` and ``sagaz-django``; PostgreSQL from
``SAGAZ_BENCH_PG_URL`` (default postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _services import free_port, pg_reachable, scratch_pg_database, wait_http
from _table import Row, print_table
from _webhooks import FLOOR_CODE, SAGA_CODE, create_floor_schema, measure
from psycopg.conninfo import conninfo_to_dict

SETTINGS = """
DATABASES = {{"default": {{
    "ENGINE": "django.db.backends.postgresql", "NAME": {db!r}, "USER": {user!r},
    "PASSWORD": {password!r}, "HOST": {host!r}, "PORT": {port!r}, "CONN_MAX_AGE": {max_age},
}}}}
SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "benchproject.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "sagaz.integrations.django", "benchapp"]
MIDDLEWARE = ["sagaz.integrations.django.middleware.SagaContextMiddleware"]
SAGAZ = {{"RUN_IN_PROCESS": True}}
"""

URLS = """
from django.urls import include, path
from benchapp.views import floor
urlpatterns = [
    path("floor/order_created", floor),
    path("sagaz/", include("sagaz.integrations.django.urls")),
]
"""

VIEWS = (
    FLOOR_CODE
    + """
from django.db import connection, transaction
from django.http import JsonResponse


def floor(request):
    try:
        made = transactions(json.loads(request.body))
    except ValueError:
        made = None
    if request.method != "POST" or made is None:
        return JsonResponse({"error": "bad payload"}, status=400)
    sid, txs = made
    for tx in txs:
        with transaction.atomic(), connection.cursor() as cur:
            for sql, params in tx:
                cur.execute(sql, params)
    return JsonResponse({"status": "accepted", "saga_ids": [sid]}, status=202)
"""
)


def _write_project(root: Path, url: str, args: argparse.Namespace) -> None:
    params = conninfo_to_dict(url)
    (root / "benchproject").mkdir()
    (root / "benchproject" / "__init__.py").write_text("")
    (root / "benchproject" / "settings.py").write_text(
        SETTINGS.format(
            db=params["dbname"],
            user=params.get("user", ""),
            password=params.get("password", ""),
            host=params.get("host", "127.0.0.1"),
            port=str(params.get("port", "5432")),
            max_age=args.conn_max_age,
        )
    )
    (root / "benchproject" / "urls.py").write_text(URLS)
    (root / "benchproject" / "wsgi.py").write_text(
        "from django.core.wsgi import get_wsgi_application\napplication = get_wsgi_application()\n"
    )
    (root / "benchapp").mkdir()
    (root / "benchapp" / "__init__.py").write_text("")
    (root / "benchapp" / "sagas.py").write_text(SAGA_CODE)
    (root / "benchapp" / "views.py").write_text(VIEWS)


def one(args: argparse.Namespace) -> Row:
    """Start gunicorn on a scratch database, load both routes, stop it."""
    with (
        tempfile.TemporaryDirectory(prefix="sagaz-bench-django-") as tmp,
        scratch_pg_database(prefix="sagaz_bench_django") as url,
    ):
        root = Path(tmp)
        _write_project(root, url, args)
        create_floor_schema(url)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([tmp, os.environ.get("PYTHONPATH", "")]),
            "DJANGO_SETTINGS_MODULE": "benchproject.settings",
        }
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "-v", "0"], env=env, check=True, cwd=tmp
        )
        port = free_port()
        log = root / "gunicorn.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "gunicorn", "benchproject.wsgi:application",
                    "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers),
                    "--threads", str(args.threads), "--log-level", "warning",
                    "--graceful-timeout", "30",
                ],
                env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_http(proc, f"http://127.0.0.1:{port}/sagaz/health", log)
        return measure(
            group="webhooks",
            case=f"Django/gunicorn -w {args.workers} --threads {args.threads}, PostgreSQL",
            proc=proc,
            port=port,
            library_path="/sagaz/order_created",
            library_db=url,
            library_table="sagaz_saga",
            floor_path="/floor/order_created",
            floor_db=url,
            requests=args.requests,
            concurrency=args.concurrency,
            deadline=args.deadline,
            log=log,
        )


def parser() -> argparse.ArgumentParser:
    """The script's options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="500 requests instead of 2,000")
    p.add_argument("--requests", type=int, default=None, help="POSTs per route (2000)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--conn-max-age", type=int, default=60)
    p.add_argument("--deadline", type=float, default=300.0, help="seconds per phase")
    return p


def rows(args: argparse.Namespace) -> list[Row]:
    """One row: Django on PostgreSQL."""
    if args.requests is None:
        args.requests = 500 if args.quick else 2000
    if why := pg_reachable():
        return [Row("webhooks", "Django/gunicorn, PostgreSQL", None, notes=[why])]
    return [one(args)]


if __name__ == "__main__":
    print_table(rows(parser().parse_args()), "sagaz-django webhook ingest")
