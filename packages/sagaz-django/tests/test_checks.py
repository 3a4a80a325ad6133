"""settings.SAGAZ is validated at start-up by system checks that name each bad key."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from sagaz.integrations.django import checks, conf
from sagaz.integrations.django.apps import SagazConfig

HOOKS = "SAGAZ['WEBHOOKS']"


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
                "SAGA_MODULES": ["json"],
                "OUTBOX": True,
                "LEASE_SECONDS": 1,
                "MAX_RECOVERIES": 2,
                "WEBHOOKS": {
                    "SECRETS": {"a": "b"},
                    "SIGNATURE_TOLERANCE": 30,
                    "LEGACY_SIGNATURES": True,
                    "AUTHORIZE": "sagaz_django_testproject.hooks.bearer_only",
                    "MAX_BODY_BYTES": 10,
                    "EXPOSE_CONTEXT": True,
                },
            }
        )
        == {}
    )
    assert _errors({"WEBHOOKS": {}}) == {}
    assert not [m for m in run_checks() if m.id.startswith("sagaz.")]


@pytest.mark.parametrize(
    ("value", "key", "text"),
    [
        ({"DATABSE": "default"}, "SAGAZ['DATABSE']", "did you mean 'DATABASE'"),
        ({"DATABASE": "nope"}, "SAGAZ['DATABASE']", "not a key of settings.DATABASES"),
        ({"DATABASE": 3}, "SAGAZ['DATABASE']", "database alias"),
        ({"RUN_IN_PROCESS": "yes"}, "SAGAZ['RUN_IN_PROCESS']", "True or False"),
        ({"OUTBOX": 1}, "SAGAZ['OUTBOX']", "True or False"),
        ({"WEBHOOKS": {"EXPOSE_CONTEXT": None}}, HOOKS + "['EXPOSE_CONTEXT']", "True or False"),
        ({"WEBHOOKS": {"SECRETS": ["x"]}}, HOOKS + "['SECRETS']", "dict of source"),
        ({"WEBHOOKS": {"SECRETS": {"src": ""}}}, HOOKS + "['SECRETS']", "src"),
        ({"WEBHOOKS": {"MAX_BODY_BYTES": 0}}, HOOKS + "['MAX_BODY_BYTES']", "integer > 0"),
        ({"WEBHOOKS": {"MAX_BODY_BYTES": True}}, HOOKS + "['MAX_BODY_BYTES']", "integer > 0"),
        ({"WEBHOOKS": ["SECRETS"]}, HOOKS, "dict of webhook options"),
        ({"WEBHOOKS": {"MAX_BODY": 5}}, HOOKS + "['MAX_BODY']", "did you mean 'MAX_BODY_BYTES'"),
        ({"WEBHOOKS": {"OUTBOX": True}}, HOOKS + "['OUTBOX']", "belongs at the top level"),
        ({"MAX_BODY_BYTES": 5}, "SAGAZ['MAX_BODY_BYTES']", "moved to " + HOOKS + "['MAX_BODY"),
        ({"WEBHOOK_SECRETS": {}}, "SAGAZ['WEBHOOK_SECRETS']", "moved to " + HOOKS + "['SECRETS']"),
        ({"AUTHORIZE": None}, "SAGAZ['AUTHORIZE']", "moved to " + HOOKS + "['AUTHORIZE']"),
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
    errors = _errors(
        {
            "OUTBOX": "on",
            "COLOUR": "red",
            "EXPOSE_CONTEXT": True,
            "WEBHOOKS": {"MAX_BODY_BYTES": -5, "COLOR": 1},
        }
    )
    assert set(errors) == {
        "SAGAZ['OUTBOX']",
        "SAGAZ['COLOUR']",
        "SAGAZ['EXPOSE_CONTEXT']",
        HOOKS + "['MAX_BODY_BYTES']",
        HOOKS + "['COLOR']",
    }
    assert errors["SAGAZ['OUTBOX']"].startswith("sagaz.E002")
    assert errors[HOOKS + "['MAX_BODY_BYTES']"].startswith("sagaz.E002")
    for unknown in ("SAGAZ['COLOUR']", "SAGAZ['EXPOSE_CONTEXT']", HOOKS + "['COLOR']"):
        assert errors[unknown].startswith("sagaz.E003")


def test_the_top_level_stays_under_ten_keys_and_every_key_is_documented() -> None:
    assert len(conf.DOCS) < 10
    assert set(conf.DOCS) == set(conf.DEFAULTS)
    assert set(conf.WEBHOOK_DOCS) == set(conf.WEBHOOK_DEFAULTS)
    with override_settings(SAGAZ={"WEBHOOKS": {"MAX_BODY_BYTES": 7}}):
        hints = {m.obj: m.hint for m in checks.check_settings()}
    assert hints == {}
    with override_settings(SAGAZ={"WEBHOOKS": {"MAX_BODY_BYTES": 0}, "EXPOSE_CONTEXT": True}):
        hints = {m.obj: m.hint for m in checks.check_settings()}
    assert "largest webhook body" in str(hints[HOOKS + "['MAX_BODY_BYTES']"])
    assert "personal data" in str(hints["SAGAZ['EXPOSE_CONTEXT']"])


def test_nested_values_reach_the_settings() -> None:
    nested = {
        "RUN_IN_PROCESS": False,
        "WEBHOOKS": {
            "SECRETS": {"src": "k"},
            "SIGNATURE_TOLERANCE": 45,
            "MAX_BODY_BYTES": 123,
            "EXPOSE_CONTEXT": True,
        },
    }
    try:
        with override_settings(SAGAZ=nested):
            values = conf.get_settings()
            hooks = values.webhook_settings()
        assert (values.max_body_bytes, values.signature_tolerance) == (123, 45.0)
        assert dict(hooks.secrets) == {"src": "k"}
        assert hooks.expose_context is True
        assert hooks.run_in_process is False
        assert hooks.legacy_signatures is False  # the defaults fill what WEBHOOKS leaves out
        assert hooks.authorize is None
        where = r"SAGAZ\['WEBHOOKS'\]\['MAX_BODY_BYTES'\]"
        with (
            override_settings(SAGAZ={"WEBHOOKS": {"MAX_BODY_BYTES": 0}}),
            pytest.raises(ImproperlyConfigured, match=where),
        ):
            conf.get_settings()
    finally:
        conf.reset_settings()


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
