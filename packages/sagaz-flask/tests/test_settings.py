"""Settings: app.config, keyword arguments, environment, and their precedence."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from sagaz.core import ConfigurationError, FailurePolicy, InMemorySagaStorage, SagaConfig
from sagaz.integrations.flask import SETTINGS, SagaFlask, SagaFlaskSettings
from sagaz.integrations.flask.settings import resolve_settings


def resolve(
    app_config: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Any:
    return resolve_settings("t", app_config or {}, defaults or {}, overrides or {}, environ or {})


def test_defaults() -> None:
    r = resolve()
    assert isinstance(r.config.storage, InMemorySagaStorage)
    assert r.storage_url == "memory://"
    assert r.owns_config
    assert r.settings == SagaFlaskSettings()
    assert r.settings.max_body_bytes == 1_048_576
    assert r.settings.expose_context is False
    assert r.settings.run_in_process is True


def test_every_setting_is_documented() -> None:
    for key, (keyword, meaning) in SETTINGS.items():
        assert key.startswith("SAGAZ_")
        assert keyword
        assert len(meaning) > 10


def test_precedence_init_app_over_app_config_over_constructor_over_environment() -> None:
    env = {"SAGAZ_MAX_PARALLEL": "2", "SAGAZ_STEP_TIMEOUT": "9"}
    assert resolve(environ=env).config.max_parallel == 2
    assert resolve(defaults={"max_parallel": 3}, environ=env).config.max_parallel == 3
    r = resolve({"SAGAZ_MAX_PARALLEL": 4}, {"max_parallel": 3}, environ=env)
    assert r.config.max_parallel == 4
    assert r.config.step_timeout == 9.0
    r = resolve({"SAGAZ_MAX_PARALLEL": 4}, {"max_parallel": 3}, {"max_parallel": 5}, env)
    assert r.config.max_parallel == 5
    s = resolve(
        {"SAGAZ_EXPOSE_CONTEXT": "yes"}, {"expose_context": False, "max_body_bytes": 10}
    ).settings
    assert s.expose_context is True
    assert s.max_body_bytes == 10
    assert resolve({"SAGAZ_EXPOSE_CONTEXT": True}, overrides={"expose_context": 0}).settings
    assert not resolve(
        {"SAGAZ_EXPOSE_CONTEXT": True}, overrides={"expose_context": 0}
    ).settings.expose_context


def test_typed_app_config_values() -> None:
    r = resolve(
        {
            "SAGAZ_STEP_TIMEOUT": 1.5,
            "SAGAZ_SAGA_TIMEOUT": "30",
            "SAGAZ_RETRY_ATTEMPTS": 3,
            "SAGAZ_FAILURE_POLICY": "wait_all",
            "SAGAZ_OUTBOX": True,
            "SAGAZ_LEASE_SECONDS": 12,
            "SAGAZ_MAX_RECOVERIES": 2,
            "SAGAZ_RUN_IN_PROCESS": "off",
            "SAGAZ_SHUTDOWN_TIMEOUT": "2.5",
            "SAGAZ_WEBHOOK_SECRETS": {"a": "s"},
            "SAGAZ_SAGA_MODULES": "json, os ,",
        }
    )
    c = r.config
    assert c.step_timeout == 1.5
    assert c.saga_timeout == 30.0
    assert c.retry.max_attempts == 3
    assert c.failure_policy is FailurePolicy.WAIT_ALL
    assert c.outbox is True
    assert c.storage.lease_seconds == 12.0
    assert c.max_recoveries == 2
    s = r.settings
    assert s.run_in_process is False
    assert s.shutdown_timeout == 2.5
    assert s.webhook_secrets == {"a": "s"}
    assert s.saga_modules == ("json", "os")
    assert resolve({"SAGAZ_SAGA_MODULES": ["json"]}).settings.saga_modules == ("json",)
    assert resolve({"SAGAZ_OUTBOX": False}).config.outbox is False
    assert resolve({"SAGAZ_MAX_PARALLEL": None}).config.max_parallel == 10


@pytest.mark.parametrize(
    ("app_config", "match"),
    [
        ({"SAGAZ_MAX_PARALLEL": "many"}, "SAGAZ_MAX_PARALLEL"),
        ({"SAGAZ_MAX_PARALLEL": 0}, "max_parallel"),
        ({"SAGAZ_STORAGE_URL": ["x"]}, "SAGAZ_STORAGE_URL"),
        ({"SAGAZ_STORAGE_URL": "nope"}, "no scheme"),
        ({"SAGAZ_EXPOSE_CONTEXT": "maybe"}, "SAGAZ_EXPOSE_CONTEXT"),
        ({"SAGAZ_EXPOSE_CONTEXT": 2}, "SAGAZ_EXPOSE_CONTEXT"),
        ({"SAGAZ_MAX_BODY_BYTES": "big"}, "SAGAZ_MAX_BODY_BYTES"),
        ({"SAGAZ_MAX_BODY_BYTES": -1}, "SAGAZ_MAX_BODY_BYTES"),
        ({"SAGAZ_MAX_BODY_BYTES": True}, "SAGAZ_MAX_BODY_BYTES"),
        ({"SAGAZ_SHUTDOWN_TIMEOUT": None, "SAGAZ_WEBHOOK_SECRETS": {"a": ""}}, "secret"),
        ({"SAGAZ_WEBHOOK_SECRETS": "a=b"}, "SAGAZ_WEBHOOK_SECRETS"),
        ({"SAGAZ_SAGA_MODULES": 3}, "SAGAZ_SAGA_MODULES"),
        ({"SAGAZ_CONFIG": "memory://"}, "SagaConfig"),
    ],
)
def test_invalid_settings_name_the_setting(app_config: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        resolve(app_config)


def test_ready_config_wins() -> None:
    ready = SagaConfig(max_parallel=7)
    r = resolve({"SAGAZ_CONFIG": ready, "SAGAZ_MAX_PARALLEL": 2})
    assert r.config is ready
    assert not r.owns_config
    assert resolve(defaults={"config": ready}).config is ready
    other = SagaConfig()
    assert resolve({"SAGAZ_CONFIG": ready}, overrides={"config": other}).config is other


def test_storage_instance_has_no_url() -> None:
    storage = InMemorySagaStorage()
    r = resolve(defaults={"storage": storage})
    assert r.config.storage is storage
    assert r.storage_url is None


def test_unknown_app_config_key_is_a_warning(caplog: Any) -> None:
    resolve({"SAGAZ_STORAGE_ULR": "x", "OTHER": 1})
    assert "SAGAZ_STORAGE_ULR" in caplog.text
    assert "OTHER" not in caplog.text


def test_saga_modules_are_imported_at_init_app(tmp_path: Path) -> None:
    module = tmp_path / "sagaz_flask_settings_mod.py"
    module.write_text(
        "from sagaz.core import Saga, action, trigger\n"
        "class ModSaga(Saga):\n"
        "    saga_name = 'flask-test-mod'\n"
        "    @trigger(source='flask_mod_source')\n"
        "    def on(self, event):\n"
        "        return {}\n"
        "    @action('a')\n"
        "    async def a(self, ctx):\n"
        "        return None\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        app = Flask("mods")
        app.config["SAGAZ_SAGA_MODULES"] = "sagaz_flask_settings_mod"
        sagaz = SagaFlask(app)
        sagaz.register_webhook_blueprint()
        assert "sagaz_flask_settings_mod" in sys.modules
        response = app.test_client().post("/webhooks/flask_mod_source", json={})
        assert response.status_code == 202
        sagaz.close()
    finally:
        sys.path.remove(str(tmp_path))
