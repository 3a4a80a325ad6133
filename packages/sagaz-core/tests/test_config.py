"""SagaConfig: validation, the SAGAZ_* environment, the process-wide config and overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sagaz_core_test_sagas import fast_config

import sagaz.core.config as config_module
from sagaz.core import (
    ENVIRONMENT_VARIABLES,
    ConfigurationError,
    FailurePolicy,
    InMemorySagaStorage,
    RetryPolicy,
    Saga,
    SagaConfig,
    SagaStatus,
    configure,
    get_config,
    storage_from_url,
)

pytestmark = pytest.mark.usefixtures("isolated_config")


# -- SagaConfig ------------------------------------------------------------------------


def test_defaults() -> None:
    config = SagaConfig()
    assert isinstance(config.storage, InMemorySagaStorage)
    assert config.storage_url == "memory://"
    assert config.max_parallel == 10
    assert config.failure_policy is FailurePolicy.FAIL_FAST
    assert config.step_timeout is None
    assert config.saga_timeout is None
    assert config.retry.max_attempts == 1  # steps are not retried unless asked
    assert config.compensation_retry.max_attempts == 3
    assert config.listeners == []
    assert config.outbox is False
    assert "InMemorySagaStorage" in repr(config)
    assert "fail_fast" in repr(config)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_parallel": 0}, "max_parallel must be >= 1, got 0"),
        ({"step_timeout": 0}, "step_timeout must be > 0"),
        ({"step_timeout": -1.5}, "step_timeout must be > 0"),
        ({"saga_timeout": 0}, "saga_timeout must be > 0"),
        ({"failure_policy": "sometimes"}, "failure_policy 'sometimes' is not one of"),
        ({"lease_seconds": 0}, "lease_seconds must be > 0"),
        ({"max_recoveries": 0}, "max_recoveries must be >= 1"),
        ({"storage_url": "nowhere"}, "has no scheme"),
        ({"storage_url": "mysql://db/x"}, "unknown storage URL scheme 'mysql'"),
    ],
)
def test_invalid_values_raise_configuration_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SagaConfig(**kwargs)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_parallel"):
        SagaConfig(max_parallel=-1)


def test_failure_policy_accepts_its_string_value() -> None:
    assert SagaConfig(failure_policy="wait_all").failure_policy is FailurePolicy.WAIT_ALL


def test_storage_instance_wins_over_the_url() -> None:
    storage = InMemorySagaStorage()
    config = SagaConfig(storage=storage, storage_url="sqlite:///never-created.db")
    assert config.storage is storage
    assert not Path("never-created.db").exists()


def test_storage_is_chosen_by_url(tmp_path: Path) -> None:
    config = SagaConfig(storage_url=f"sqlite:///{tmp_path / 'a.db'}")
    assert type(config.storage).__name__ == "SQLiteSagaStorage"
    assert config.storage.durable
    assert not InMemorySagaStorage.durable
    assert isinstance(storage_from_url("MEMORY://"), InMemorySagaStorage)


def test_lease_seconds_is_applied_to_the_storage() -> None:
    storage = InMemorySagaStorage()
    SagaConfig(storage=storage, lease_seconds=2.5)
    assert storage.lease_seconds == 2.5


def test_lease_seconds_nan_is_rejected() -> None:
    # NaN compares false with everything: a lease that never "expires" in one
    # comparison and is always expired in another.
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        SagaConfig(lease_seconds=float("nan"))


# -- from_env ---------------------------------------------------------------------------


def test_from_env_reads_every_variable(tmp_path: Path) -> None:
    db = tmp_path / "env.db"
    env = {
        "SAGAZ_STORAGE_URL": f"sqlite:///{db}",
        "SAGAZ_MAX_PARALLEL": "3",
        "SAGAZ_STEP_TIMEOUT": "1.5",
        "SAGAZ_SAGA_TIMEOUT": "60",
        "SAGAZ_RETRY_ATTEMPTS": "4",
        "SAGAZ_FAILURE_POLICY": " WAIT_ALL ",
        "SAGAZ_OUTBOX": "yes",
        "SAGAZ_LEASE_SECONDS": "12",
        "SAGAZ_MAX_RECOVERIES": "7",
    }
    assert set(env) == set(ENVIRONMENT_VARIABLES)  # every documented variable
    config = SagaConfig.from_env(env)
    assert config.storage_url == f"sqlite:///{db}"
    assert type(config.storage).__name__ == "SQLiteSagaStorage"
    assert config.max_parallel == 3
    assert config.step_timeout == 1.5
    assert config.saga_timeout == 60.0
    assert config.retry == RetryPolicy(max_attempts=4)
    assert config.failure_policy is FailurePolicy.WAIT_ALL
    assert config.outbox is True
    assert config.storage.lease_seconds == 12.0
    assert config.max_recoveries == 7


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("On", True), ("0", False), ("off", False), ("", False)],
)
def test_from_env_outbox_flag(value: str, expected: bool) -> None:
    assert SagaConfig.from_env({"SAGAZ_OUTBOX": value}).outbox is expected


def test_from_env_reads_os_environ_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAZ_MAX_PARALLEL", "4")
    monkeypatch.setenv("SAGAZ_STEP_TIMEOUT", "2")
    config = SagaConfig.from_env(step_timeout=9.0)
    assert config.max_parallel == 4
    assert config.step_timeout == 9.0


def test_from_env_without_variables_gives_the_defaults() -> None:
    config = SagaConfig.from_env({"UNRELATED": "1"})
    assert isinstance(config.storage, InMemorySagaStorage)
    assert config.max_parallel == 10


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SAGAZ_MAX_PARALLEL", "many"),
        ("SAGAZ_MAX_PARALLEL", "2.5"),
        ("SAGAZ_STEP_TIMEOUT", "soon"),
        ("SAGAZ_SAGA_TIMEOUT", "1m"),
        ("SAGAZ_RETRY_ATTEMPTS", "three"),
        ("SAGAZ_RETRY_ATTEMPTS", "0"),
        ("SAGAZ_OUTBOX", "maybe"),
        ("SAGAZ_LEASE_SECONDS", "long"),
        ("SAGAZ_MAX_RECOVERIES", "x"),
    ],
)
def test_from_env_malformed_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        SagaConfig.from_env({name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SAGAZ_MAX_PARALLEL", "0"),
        ("SAGAZ_STEP_TIMEOUT", "-1"),
        ("SAGAZ_FAILURE_POLICY", "sometimes"),
        ("SAGAZ_STORAGE_URL", "nowhere"),
        ("SAGAZ_LEASE_SECONDS", "nan"),
    ],
)
def test_from_env_out_of_range_value_names_the_variable(name: str, value: str) -> None:
    # The operator set an environment variable: the error must say which one.
    with pytest.raises(ConfigurationError) as info:
        SagaConfig.from_env({name: value})
    assert name in str(info.value)


# -- configure() / get_config() ------------------------------------------------------------


def test_configure_sets_the_process_wide_config() -> None:
    config = configure(max_parallel=3, failure_policy="wait_all")
    assert get_config() is config
    assert config.max_parallel == 3
    assert config.failure_policy is FailurePolicy.WAIT_ALL
    mine = SagaConfig(max_parallel=2)
    assert configure(mine) is mine
    assert get_config() is mine


def test_configure_takes_a_config_or_keywords_not_both() -> None:
    with pytest.raises(TypeError, match="not both"):
        configure(SagaConfig(), max_parallel=2)


def test_get_config_is_built_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "_global_config", None)
    monkeypatch.setenv("SAGAZ_MAX_PARALLEL", "6")
    first = get_config()
    assert first.max_parallel == 6
    monkeypatch.setenv("SAGAZ_MAX_PARALLEL", "8")
    assert get_config() is first


async def test_a_sagas_own_config_overrides_the_global_one() -> None:
    global_config = configure(fast_config())
    own = fast_config()

    def step(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    saga = Saga(name="cfg-own", config=own).add_step("a", step)
    result = await saga.run()
    assert saga.config is own
    assert await own.storage.load(result.saga_id) is not None
    assert await global_config.storage.load(result.saga_id) is None

    # with_config makes a copy with another config; the original keeps its own.
    other = fast_config()
    clone = saga.with_config(other)
    cloned = await clone.run()
    assert await other.storage.load(cloned.saga_id) is not None
    assert await own.storage.load(cloned.saga_id) is None
    assert saga.config is own

    # A saga without a config follows the global config at run time.
    floating = Saga(name="cfg-floating").add_step("a", step)
    later = configure(fast_config())
    result = await floating.run()
    assert await later.storage.load(result.saga_id) is not None
    assert await global_config.storage.load(result.saga_id) is None


async def test_config_defaults_reach_the_engine() -> None:
    calls: list[int] = []

    async def flaky(ctx: dict[str, Any]) -> None:
        calls.append(1)
        raise ConnectionError("down")

    configure(fast_config(retry=RetryPolicy(max_attempts=3, backoff_base=0.001, jitter=0)))
    result = await Saga(name="cfg-defaults").add_step("flaky", flaky).run()
    assert result.status is SagaStatus.COMPENSATED
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/orders", "postgresql://app:***@db:5432/orders"),
        (
            "postgresql://app:p%40ss:w@db/orders?sslmode=require",
            "postgresql://app:***@db/orders?sslmode=require",
        ),
        ("postgresql://app@db/orders", "postgresql://app@db/orders"),
        ("sqlite:///var/sagas.db", "sqlite:///var/sagas.db"),
        ("memory://", "memory://"),
    ],
)
def test_storage_location_never_shows_the_password(url: str, shown: str) -> None:
    assert config_module.redact_url(url) == shown
    config = config_module.SagaConfig(storage_url=url, storage=SagaConfig().storage)
    assert config.storage_location == shown
    assert "s3cret" not in repr(config)
