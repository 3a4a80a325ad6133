"""settings.SAGAZ is validated at start-up by system checks that name each bad key."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from sagaz.integrations.django import checks, conf
from sagaz.integrations.django.apps import SagazConfig


def _errors(value: Any) -> dict[str, str]:
    with override_settings(SAGAZ=value):
        return {
            m.obj: f"{m.id} {m.msg}" for m in checks.check_settings() if m.id.startswith("sagaz.")
        }


def test_valid_and_absent_settings() -> None:
    assert _errors({}) == {}
    assert _errors(None) == {}
    assert (
        _errors(
            {
                "DATABASE": "default",
                "RUN_IN_PROCESS": False,
                "WEBHOOK_SECRETS": {"a": "b"},
                "MAX_BODY_BYTES": 10,
                "EXPOSE_CONTEXT": True,
                "SAGA_MODULES": ["json"],
                "OUTBOX": True,
                "LEASE_SECONDS": 1,
                "MAX_RECOVERIES": 2,
            }
        )
        == {}
    )
    assert not [m for m in run_checks() if m.id.startswith("sagaz.")]


@pytest.mark.parametrize(
    ("value", "key", "text"),
    [
        ({"DATABSE": "default"}, "SAGAZ['DATABSE']", "did you mean 'DATABASE'"),
        ({"DATABASE": "nope"}, "SAGAZ['DATABASE']", "not a key of settings.DATABASES"),
        ({"DATABASE": 3}, "SAGAZ['DATABASE']", "database alias"),
        ({"RUN_IN_PROCESS": "yes"}, "SAGAZ['RUN_IN_PROCESS']", "True or False"),
        ({"OUTBOX": 1}, "SAGAZ['OUTBOX']", "True or False"),
        ({"EXPOSE_CONTEXT": None}, "SAGAZ['EXPOSE_CONTEXT']", "True or False"),
        ({"WEBHOOK_SECRETS": ["x"]}, "SAGAZ['WEBHOOK_SECRETS']", "dict of source"),
        ({"WEBHOOK_SECRETS": {"src": ""}}, "SAGAZ['WEBHOOK_SECRETS']", "src"),
        ({"MAX_BODY_BYTES": 0}, "SAGAZ['MAX_BODY_BYTES']", "integer > 0"),
        ({"MAX_BODY_BYTES": True}, "SAGAZ['MAX_BODY_BYTES']", "integer > 0"),
        ({"SAGA_MODULES": "shop.sagas"}, "SAGAZ['SAGA_MODULES']", "list of dotted"),
        ({"LEASE_SECONDS": -1}, "SAGAZ['LEASE_SECONDS']", "> 0"),
        ({"MAX_RECOVERIES": 0}, "SAGAZ['MAX_RECOVERIES']", ">= 1"),
        ("nope", "settings.SAGAZ", "must be a dict"),
    ],
)
def test_each_bad_key_is_named(value: Any, key: str, text: str) -> None:
    errors = _errors(value)
    assert key in errors, errors
    assert text in errors[key]
    with override_settings(SAGAZ=value), pytest.raises(ImproperlyConfigured):
        conf.get_settings()


def test_several_bad_keys_each_reported() -> None:
    errors = _errors({"MAX_BODY_BYTES": -5, "OUTBOX": "on", "COLOUR": "red"})
    assert set(errors) == {"SAGAZ['MAX_BODY_BYTES']", "SAGAZ['OUTBOX']", "SAGAZ['COLOUR']"}
    assert errors["SAGAZ['COLOUR']"].startswith("sagaz.E003")


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_untested_engine_warns() -> None:
    databases = {"default": {"ENGINE": "django.db.backends.oracle", "NAME": "x"}}
    with override_settings(DATABASES=databases):
        found = {m.id for m in checks.check_settings()}
    assert "sagaz.W001" in found


def test_missing_saga_module_is_reported_and_broken_ones_raise() -> None:
    app = SagazConfig.create("sagaz.integrations.django")
    try:
        with override_settings(SAGAZ={"SAGA_MODULES": ["no_such_sagaz_module"]}):
            app.ready()
            errors = [m for m in checks.check_settings() if m.id == "sagaz.E004"]
            assert errors
            assert "no_such_sagaz_module" in errors[0].msg
        broken = {"SAGA_MODULES": ["sagaz_django_testproject.broken"]}
        with (
            override_settings(SAGAZ=broken),
            pytest.raises(ModuleNotFoundError, match="not_installed_anywhere"),
        ):
            app.ready()
        with override_settings(SAGAZ={"OUTBOX": "x"}):
            app.ready()  # bad settings: ready() leaves them to the checks
    finally:
        checks.import_errors.clear()
        conf.reset_settings()
