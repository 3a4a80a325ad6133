"""The extension: init_app, per-app state, the sync bridge and the request hooks."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from flask import Flask, g
from sagaz_flask_example import OrderSaga
from sagaz_flask_helpers import sagaz_of, wait_for, wait_terminal

from sagaz.core import (
    CORRELATION_ID_HEADER,
    ConfigurationError,
    InMemorySagaStorage,
    Saga,
    SagaConfig,
    SagaContextManager,
    SagaStatus,
    action,
    current_correlation_id,
)
from sagaz.integrations.flask import (
    EXTENSION_KEY,
    SagaFlask,
    SagaFlaskState,
    SagazExtension,
    __version__,
)
from sagaz.integrations.flask import extension as ext_module


class SeenSaga(Saga):
    """Records the correlation id and scope values its step sees."""

    saga_name = "flask-test-seen"

    @action("look")
    async def look(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {
            "seen_correlation_id": current_correlation_id(),
            "seen_tenant": SagaContextManager.get("tenant"),
        }


def test_alias_and_version() -> None:
    assert SagazExtension is SagaFlask
    assert __version__ == "0.1.0"


def test_application_factory_and_several_apps_in_one_process(tmp_path: Any) -> None:
    sagaz = SagaFlask(expose_context=True)
    apps = []
    for name in ("one", "two"):
        app = Flask(name)
        app.config["SAGAZ_STORAGE_URL"] = "memory://"
        state = sagaz.init_app(app)
        assert app.extensions[EXTENSION_KEY] is state
        sagaz.register_webhook_blueprint("/webhooks", app=app)
        apps.append(app)
    one, two = apps
    s1, s2 = sagaz.state(one), sagaz.state(two)
    assert s1 is not s2
    assert s1.config is not s2.config
    assert s1.config.storage is not s2.config.storage
    try:
        c1, c2 = one.test_client(), two.test_client()
        body = c1.post("/webhooks/order_created", json={"order_id": "A", "amount": 1}).get_json()
        saga_id = body["saga_ids"][0]
        assert wait_terminal(c1, saga_id)["state"] == "COMPLETED"
        # The other app has its own storage: it has never heard of that saga.
        assert c2.get(f"/webhooks/status/{saga_id}").status_code == 404
        with one.app_context():
            assert sagaz.config is s1.config
        with two.app_context():
            assert sagaz.config is s2.config
    finally:
        sagaz.close(one)
        sagaz.close(two)


def test_init_twice_and_uninitialised_errors() -> None:
    app = Flask("twice")
    sagaz = SagaFlask(app)
    try:
        with pytest.raises(RuntimeError, match="already initialised"):
            sagaz.init_app(app)
        with pytest.raises(RuntimeError, match="already initialised"):
            SagaFlask(app)
        other = Flask("other")
        with pytest.raises(RuntimeError, match="not initialised"):
            sagaz.state(other)
        with other.app_context(), pytest.raises(RuntimeError, match="not initialised"):
            _ = sagaz.config
        # Outside any app context, the app given to the constructor is used.
        assert sagaz.state().app_name == "twice"
    finally:
        sagaz.close(app)
    lone = SagaFlask()
    with pytest.raises(RuntimeError, match="no Flask app"):
        lone.state()
    with pytest.raises(RuntimeError, match="needs the app"):
        lone.register_webhook_blueprint()


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="storage_ulr"):
        SagaFlask(storage_ulr="memory://")
    with pytest.raises(TypeError, match="bogus"):
        SagaFlask().init_app(Flask("kw"), bogus=1)


def test_register_blueprint_inside_an_app_context() -> None:
    sagaz = SagaFlask()
    app = Flask("ctx")
    sagaz.init_app(app)
    with app.app_context():
        blueprint = sagaz.register_webhook_blueprint("/in-context")
    assert blueprint.name in app.blueprints
    assert app.test_client().get("/in-context/health").status_code == 200
    sagaz.close(app)


def test_create_saga_is_bound_to_the_app_config(app: Flask) -> None:
    sagaz = sagaz_of(app)
    with app.app_context():
        saga = sagaz.create_saga(OrderSaga)
        assert isinstance(saga, OrderSaga)
        assert saga.config is sagaz.config


def test_run_sync_blocks_until_the_end_and_carries_the_request_id(app: Flask) -> None:
    sagaz = sagaz_of(app)
    with app.test_request_context("/", headers={CORRELATION_ID_HEADER: "req-1"}):
        app.preprocess_request()
        assert g.correlation_id == "req-1"
        assert g.sagaz_context == {"correlation_id": "req-1"}
        assert current_correlation_id() == "req-1"
        g.sagaz_context["tenant"] = "acme"
        completed = sagaz.run_sync(OrderSaga, {"order_id": "X1", "amount": 10})
        declined = sagaz.run_sync(OrderSaga(), {"order_id": "X2", "amount": 10_000})
        seen = sagaz.run_sync(SeenSaga, {})
        explicit = sagaz.run_sync(SeenSaga, {}, correlation_id="explicit-1")
    assert completed.status is SagaStatus.COMPLETED
    assert completed.correlation_id == "req-1"
    assert completed.context["tracking_id"] == "TRK-X1"
    assert declined.status is SagaStatus.COMPENSATED
    assert declined.failed_step == "charge_payment"
    assert seen.context["seen_correlation_id"] == "req-1"
    assert seen.context["seen_tenant"] == "acme"
    assert explicit.correlation_id == "explicit-1"
    assert explicit.context["seen_correlation_id"] == "explicit-1"
    # The scope ended with the request.
    assert current_correlation_id() is None


def test_run_sync_keeps_a_saga_own_config(app: Flask) -> None:
    sagaz = sagaz_of(app)
    own = SagaConfig(storage=InMemorySagaStorage())
    with app.app_context():
        result = sagaz.run_sync(OrderSaga(config=own), {"order_id": "own", "amount": 1})
        assert sagaz.call(own.storage.load, result.saga_id) is not None
        assert sagaz.call(sagaz.config.storage.load, result.saga_id) is None


def test_run_sync_with_idempotency_key(app: Flask) -> None:
    sagaz = sagaz_of(app)
    with app.app_context():
        first = sagaz.run_sync(OrderSaga, {"order_id": "K", "amount": 1}, idempotency_key="k-1")
        again = sagaz.run_sync(OrderSaga, {"order_id": "K", "amount": 1}, idempotency_key="k-1")
    assert again.saga_id == first.saga_id
    assert again.created is False


def test_start_saga_is_fire_and_forget_and_completes(app: Flask) -> None:
    sagaz = sagaz_of(app)
    with app.test_request_context("/", headers={CORRELATION_ID_HEADER: "ff-1"}):
        app.preprocess_request()
        saga_id = sagaz.start_saga(OrderSaga, {"order_id": "F1", "amount": 3})
        same = sagaz.start_saga(OrderSaga, {"order_id": "F1", "amount": 3}, idempotency_key="f")
        again = sagaz.start_saga(OrderSaga, {"order_id": "F1", "amount": 3}, idempotency_key="f")
    assert same == again
    client = app.test_client()
    final = wait_terminal(client, saga_id)
    assert final["state"] == "COMPLETED"
    assert final["correlation_id"] == "ff-1"


def test_fire_event_from_a_view(app: Flask) -> None:
    sagaz = sagaz_of(app)

    @app.post("/checkout")
    def checkout() -> Any:
        fired = sagaz.fire_event("order_created", {"order_id": "V1", "amount": 2}, wait=True)
        return {"saga_ids": fired.saga_ids, "correlation_id": fired.correlation_id}

    response = app.test_client().post("/checkout", headers={CORRELATION_ID_HEADER: "view-1"})
    body = response.get_json()
    assert body["correlation_id"] == "view-1"
    status = app.test_client().get(f"/webhooks/status/{body['saga_ids'][0]}").get_json()
    assert status["state"] == "COMPLETED"  # wait=True: already finished


def test_orders_route_runs_a_saga_in_the_request(client: Any) -> None:
    response = client.post("/orders", json={"order_id": "R1", "amount": 5})
    assert response.status_code == 201
    assert response.get_json()["state"] == "COMPLETED"


def test_run_in_process_false_leaves_sagas_pending(make_app: Any) -> None:
    app = make_app(run_in_process=False)
    client = app.test_client()
    body = client.post("/webhooks/order_created", json={"order_id": "P", "amount": 1}).get_json()
    sagaz = sagaz_of(app)
    with app.app_context():
        saga_id = sagaz.start_saga(OrderSaga, {"order_id": "P2", "amount": 1})
    for sid in (body["saga_ids"][0], saga_id):
        assert client.get(f"/webhooks/status/{sid}").get_json()["state"] == "PENDING"


def test_request_hooks_handle_an_early_before_request(app: Flask) -> None:
    # A before_request registered ahead of the extension's answers first: the
    # correlation id is still echoed.
    app.before_request_funcs.setdefault(None, []).insert(0, lambda: ("early", 200))
    response = app.test_client().get("/health", headers={CORRELATION_ID_HEADER: "early-1"})
    assert response.get_data(as_text=True) == "early"
    assert response.headers[CORRELATION_ID_HEADER] == "early-1"


def test_fire_and_forget_sagas_finish_before_close(make_app: Any) -> None:
    app = make_app()
    sagaz = sagaz_of(app)
    client = app.test_client()
    ids = [
        client.post("/webhooks/order_created", json={"order_id": f"C{i}", "amount": 1}).get_json()[
            "saga_ids"
        ][0]
        for i in range(20)
    ]
    storage = sagaz.state(app).config.storage
    sagaz.close(app)  # drains: every saga finished, none cancelled
    assert not storage.is_open
    # Using the app again reopens what it needs; memory storage kept the records.
    for saga_id in ids:
        assert client.get(f"/webhooks/status/{saga_id}").get_json()["state"] == "COMPLETED"


def test_close_times_out_and_leaves_slow_sagas_recorded(app: Flask) -> None:
    import asyncio

    class SlowSaga(Saga):
        saga_name = "flask-test-slow"

        @action("slow")
        async def slow(self, ctx: dict[str, Any]) -> None:
            await asyncio.sleep(30)

    sagaz = sagaz_of(app)
    with app.app_context():
        saga_id = sagaz.start_saga(SlowSaga, {})
        storage = sagaz.config.storage
        wait_for(lambda: sagaz.call(storage.load, saga_id).status is SagaStatus.RUNNING)
    sagaz.close(app, timeout=0.2)  # the last app: the slow saga is cancelled, not cut off
    assert sagaz.state(app).closed
    assert not storage.is_open
    assert not [t for t in threading.enumerate() if t.name == "sagaz-portal"]
    with app.app_context():  # recorded as it was: a worker or recovery resumes it
        assert sagaz.call(storage.load, saga_id).status is SagaStatus.RUNNING


def test_close_shuts_the_loop_down_only_when_no_other_app_uses_it(make_app: Any) -> None:
    first, second = make_app(), make_app()
    for app in (first, second):
        assert app.test_client().get("/webhooks/health").status_code == 200
    portal_threads = [t for t in threading.enumerate() if t.name == "sagaz-portal"]
    assert len(portal_threads) == 1
    sagaz_of(first).close(first)
    assert portal_threads[0].is_alive()  # the second app still uses the loop
    sagaz_of(second).close(second)
    portal_threads[0].join(5)
    assert not portal_threads[0].is_alive()


def test_reset_after_fork_rebuilds_url_storage(app: Flask, caplog: Any) -> None:
    sagaz = sagaz_of(app)
    state = sagaz.state(app)
    old = state.config.storage
    assert app.test_client().get("/webhooks/health").status_code == 200
    assert old.is_open
    state.reset_after_fork()
    assert state.config.storage is not old
    assert not state.config.storage.is_open
    assert state.service.config.storage is state.config.storage
    # A storage given as an instance cannot be rebuilt: a warning says what to do.
    given = SagaFlask(Flask("given"), storage=InMemorySagaStorage())
    given_state = given.state()
    given.call(given_state.config.storage.ensure_open)
    given_state.reset_after_fork()
    assert "before this process forked" in caplog.text
    given.close()
    # Nothing to do for a storage never opened.
    state.reset_after_fork()


def test_fork_hook_and_exit_hook(app: Flask) -> None:
    ext_module._reset_all_after_fork()  # runs on every live state without error
    client = app.test_client()
    saga_id = client.post(
        "/webhooks/order_created", json={"order_id": "EXIT", "amount": 1}
    ).get_json()["saga_ids"][0]
    storage = sagaz_of(app).state(app).config.storage
    ext_module._close_all_at_exit()
    assert not storage.is_open
    assert not [t for t in threading.enumerate() if t.name == "sagaz-portal"]
    assert client.get(f"/webhooks/status/{saga_id}").get_json()["state"] == "COMPLETED"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_its_own_loop(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/webhooks/health").status_code == 200  # loop started here
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            body = client.post(
                "/webhooks/order_created", json={"order_id": "CHILD", "amount": 1}
            ).get_json()
            final = wait_terminal(client, body["saga_ids"][0], prefix="/webhooks")
            os.write(write, final["state"].encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child_said = os.read(read, 100).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_said == "COMPLETED"
    # The parent's loop still works.
    assert client.get("/webhooks/health").status_code == 200


def test_state_repr_and_type(app: Flask) -> None:
    state = app.extensions[EXTENSION_KEY]
    assert isinstance(state, SagaFlaskState)
    assert "example" in repr(state) or app.name in repr(state)


def test_invalid_setting_fails_at_init_app() -> None:
    app = Flask("bad")
    app.config["SAGAZ_MAX_PARALLEL"] = 0
    with pytest.raises(ConfigurationError, match="bad"):
        SagaFlask(app)


def test_exit_hook_cancels_when_no_thread_can_start(
    app: Flask, monkeypatch: Any, caplog: Any
) -> None:
    import asyncio

    class NapSaga(Saga):
        saga_name = "flask-test-nap"

        @action("nap")
        async def nap(self, ctx: dict[str, Any]) -> None:
            await asyncio.sleep(30)

    sagaz = sagaz_of(app)
    with app.app_context():
        saga_id = sagaz.start_saga(NapSaga, {})
        storage = sagaz.config.storage
        wait_for(lambda: sagaz.call(storage.load, saga_id).status is SagaStatus.RUNNING)
    monkeypatch.setattr(ext_module, "_threads_can_start", lambda: False)
    ext_module._close_all_at_exit()  # no wait: cancelled at once, recorded as RUNNING
    assert "can start no thread" in caplog.text
    assert not storage.is_open
    with app.app_context():
        assert sagaz.call(storage.load, saga_id).status is SagaStatus.RUNNING


def test_gunicorn_worker_exit_hook_closes_everything(app: Flask) -> None:
    from sagaz.integrations.flask import gunicorn_worker_exit

    assert app.test_client().get("/webhooks/health").status_code == 200
    storage = sagaz_of(app).state(app).config.storage
    gunicorn_worker_exit(object(), object())
    assert not storage.is_open
    assert not [t for t in threading.enumerate() if t.name == "sagaz-portal"]
    assert ext_module._threads_can_start()
