"""example/fastapi_app.py through ``httpx.ASGITransport``, its lifespan run by
``asgi_lifespan.LifespanManager`` (so startup and shutdown happen as under a server)."""

import asyncio
import os
import platform
import sys

import pytest

if platform.python_implementation() != "CPython":
    # FastAPI needs pydantic 2: the pydantic-core it resolves to has no PyPy 3.9 wheel and builds only
    # with a Rust toolchain (the test extra installs fastapi on CPython only).
    pytest.importorskip("fastapi", reason="FastAPI (pydantic 2) does not install on this interpreter")

import httpx  # noqa: E402
from asgi_lifespan import LifespanManager  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fastapi_app import create_app  # noqa: E402

USER = {"X-User": "ann"}


def serve(database, test):
    """Run ``test(client, app)`` against the app, its lifespan around it; returns the app."""

    async def main():
        app = create_app(str(database))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bank") as client:
                await test(client, app)
        return app

    return asyncio.run(main())


def test_commands_queries_and_events_through_http(tmp_path):
    async def test(client, app):
        opened = await client.post("/accounts", json={"owner": "Ann"}, headers=USER)
        assert opened.status_code == 201
        account = opened.json()
        assert account["version"] == 1
        deposited = await client.post(f"/accounts/{account['id']}/deposits", json={"amount": 30}, headers=USER)
        assert deposited.status_code == 200
        assert deposited.json()["balance"] == 30
        read = await client.get(f"/accounts/{account['id']}", headers=USER)
        assert read.json() == {"id": account["id"], "owner": "Ann", "balance": 30, "version": 2}
        await app.state.services.events.drain()
        assert app.state.services.reactions.receipts == ["welcome Ann", "deposited 30"]

    serve(tmp_path / "bank.db", test)


def test_request_scoped_values_reach_the_handlers_and_the_stored_events(tmp_path):
    from mediator.eventsourcing import open_store

    opened = []

    async def test(client, app):
        headers = {"X-User": "bob", "X-Request-Id": "req-42"}
        opened.append((await client.post("/accounts", json={"owner": "Bob"}, headers=headers)).json())

    serve(tmp_path / "bank.db", test)

    async def stored():
        async with open_store(f"sqlite:///{tmp_path / 'bank.db'}") as store:
            return [recorded.metadata async for recorded in store.read(opened[0]["id"])]

    assert asyncio.run(stored()) == [{"user": "bob", "request_id": "req-42"}]


def test_errors_become_http_responses(tmp_path):
    async def test(client, app):
        missing = await client.get("/accounts/nobody", headers=USER)
        assert missing.status_code == 404
        assert "nobody" in missing.json()["detail"]

        account = (await client.post("/accounts", json={"owner": "Ann"}, headers=USER)).json()
        stale = await client.post(
            f"/accounts/{account['id']}/deposits", json={"amount": 5}, headers={**USER, "If-Match": "7"}
        )
        assert stale.status_code == 409
        assert stale.json()["version"] == 1

        negative = await client.post(f"/accounts/{account['id']}/deposits", json={"amount": -5}, headers=USER)
        assert negative.status_code == 422
        assert "positive" in negative.json()["detail"]

        malformed = await client.post(f"/accounts/{account['id']}/deposits", json={"amount": "many"}, headers=USER)
        assert malformed.status_code == 422  # FastAPI's own validation

        anonymous = await client.get(f"/accounts/{account['id']}")
        assert anonymous.status_code == 422  # the X-User header is required

        unwired = await client.delete(f"/accounts/{account['id']}", headers=USER)
        assert unwired.status_code == 500

    serve(tmp_path / "bank.db", test)


def test_concurrent_deposits_one_wins_and_the_other_conflicts(tmp_path):
    """Two deposits that read the same version: the second save raises ConcurrencyError."""

    async def test(client, app):
        account = (await client.post("/accounts", json={"owner": "Ann"}, headers=USER)).json()
        url = f"/accounts/{account['id']}/deposits"
        responses = await asyncio.gather(*(client.post(url, json={"amount": 1}, headers=USER) for _ in range(8)))
        codes = sorted(response.status_code for response in responses)
        assert set(codes) <= {200, 409} and 200 in codes
        final = (await client.get(f"/accounts/{account['id']}", headers=USER)).json()
        assert final["balance"] == codes.count(200)  # each accepted deposit counted once

    serve(tmp_path / "bank.db", test)


def test_shutdown_finishes_the_background_events_still_running(tmp_path):
    """The receipts are held until the server has begun to shut down: the lifespan's
    exit drains the event bus, so they are sent, not dropped."""
    seen = {}

    async def test(client, app):
        services = app.state.services
        services.reactions.mail_server_up = gate = asyncio.Event()
        account = (await client.post("/accounts", json={"owner": "Ann"}, headers=USER)).json()
        for amount in (1, 2, 3):
            response = await client.post(f"/accounts/{account['id']}/deposits", json={"amount": amount}, headers=USER)
            assert response.status_code == 200
        seen["pending"] = services.events.pending
        seen["receipts"] = list(services.reactions.receipts)

        async def open_gate_once_shutting_down():
            while not services.events.closed:  # aclose() has begun: the lifespan is exiting
                await asyncio.sleep(0.001)
            seen["receipts_at_close"] = list(services.reactions.receipts)
            gate.set()

        asyncio.ensure_future(open_gate_once_shutting_down())

    app = serve(tmp_path / "bank.db", test)
    assert seen["pending"] == 3  # three receipts in flight when the requests had returned
    assert seen["receipts"] == seen["receipts_at_close"] == ["welcome Ann"]
    receipts = app.state.services.reactions.receipts
    assert sorted(receipts) == ["deposited 1", "deposited 2", "deposited 3", "welcome Ann"]
    assert app.state.services.events.closed
