"""The dashboard over HTTP: admin-key sign-in, the session cookie, CSRF on sign-out, the figures."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ADMIN, ADMIN_KEY, AUTH, GATEWAY_KEY
from tests.fake_upstream import error

BEARER = {"Authorization": f"Bearer {ADMIN_KEY}"}
ROUTE = "/v1/images/generations"


async def login(client: Any, key: str = ADMIN_KEY) -> Any:
    return await client.post("/dashboard/login", data={"key": key}, allow_redirects=False)


async def test_without_an_admin_key_only_the_login_form(make_client: Any) -> None:
    client = await make_client(ADMIN)
    resp = await client.get("/dashboard")
    assert resp.status == 401
    html = await resp.text()
    assert '<form method="post" action="/dashboard/login"' in html and 'type="password"' in html
    assert "Requests" not in html
    assert (await client.get("/dashboard/data.json")).status == 401
    # A gateway (non-admin) key is not an admin key.
    assert (await client.get("/dashboard/data.json", headers=AUTH)).status == 401
    assert (await client.get("/dashboard", headers=AUTH)).status == 401


async def test_login_sets_a_signed_httponly_strict_cookie(make_client: Any) -> None:
    client = await make_client(ADMIN)
    assert (await login(client, "og-wrong-key")).status == 401
    assert (await login(client, GATEWAY_KEY)).status == 401
    resp = await login(client)
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert ADMIN_KEY not in cookie and ADMIN_KEY[-12:] not in cookie
    page = await client.get("/dashboard")  # the client's cookie jar sends it back
    assert page.status == 200
    html = await page.text()
    assert 'id="admin">ops<' in html
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none': no script
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"


async def test_a_tampered_or_foreign_cookie_is_refused(make_client: Any) -> None:
    client = await make_client(ADMIN)
    await login(client)
    token = next(c.value for c in client.session.cookie_jar if c.key == "opengateway_dashboard")
    payload, _, signature = token.partition(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature
    client.session.cookie_jar.clear()
    assert (await client.get("/dashboard", cookies={"opengateway_dashboard": forged})).status == 401
    # Another process with its own secret does not accept this one's sessions.
    other = await make_client(ADMIN)
    assert (await other.get("/dashboard", cookies={"opengateway_dashboard": token})).status == 401
    assert (await client.get("/dashboard", cookies={"opengateway_dashboard": token})).status == 200


async def test_logout_needs_the_csrf_token(make_client: Any) -> None:
    client = await make_client(ADMIN)
    await login(client)
    html = await (await client.get("/dashboard")).text()
    csrf = html.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert (await client.post("/dashboard/logout", data={}, allow_redirects=False)).status == 403
    assert (await client.post("/dashboard/logout", data={"csrf": csrf[:-1] + "x"},
                              allow_redirects=False)).status == 403
    resp = await client.post("/dashboard/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert (await client.get("/dashboard")).status == 401


async def test_figures_of_the_requests_made(upstream: Any, make_client: Any) -> None:
    client = await make_client(ADMIN)
    user = {**AUTH, "x-opengateway-user-id": "alice", "x-opengateway-session-id": "sess-1"}
    for _ in range(2):
        assert (await client.post(ROUTE, headers=user, json={"model": "openai/gpt-image-1", "prompt": "x"})).status == 200
    upstream.script("gpt-image-1", error(500))
    assert (await client.post(ROUTE, headers=AUTH, json={"model": "openai/gpt-image-1", "prompt": "x"})).status == 502
    assert (await client.get("/healthz")).status == 200  # not API traffic: not counted
    data = await (await client.get("/dashboard/data.json", headers=BEARER)).json()
    o = data["overview"]
    assert (o["requests"], o["server_errors"], o["images"]) == (3, 1, 2)
    assert o["cost_usd"] == pytest.approx(2 * 0.04234)
    assert o["error_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert o["latency_ms"]["p50"] is not None
    assert data["models"]["openai/gpt-image-1"]["requests"] == 3
    assert data["providers"]["openai / global"] == {"attempts": 3, "succeeded": 2, "failed": 1, "timeouts": 0,
                                                    "latency_ms": pytest.approx(data["providers"]["openai / global"]["latency_ms"])}
    assert data["top_users"][0][0] == "alice" and data["top_users"][0][1]["images"] == 2
    assert data["top_sessions"][0][0] == "sess-1"
    assert [r["status"] for r in data["recent"]] == [502, 200, 200]
    assert {b["target"] for b in data["breakers"]} >= {"openai-main:openai/gpt-image-1"}
    page = await (await client.get("/dashboard", headers=BEARER)).text()
    assert 'id="requests">3<' in page and "alice" in page


async def test_tracked_ids_are_bounded(upstream: Any, make_client: Any) -> None:
    config = ADMIN.replace("dashboard: {refresh_s: 3600}", "dashboard: {max_tracked_ids: 2, recent_requests: 3}")
    client = await make_client(config)
    for i in range(4):
        await client.post(ROUTE, headers={**AUTH, "x-opengateway-user-id": f"u{i}"},
                          json={"model": "openai/gpt-image-1", "prompt": "x"})
    data = await (await client.get("/dashboard/data.json", headers=BEARER)).json()
    assert sorted(name for name, _ in data["top_users"]) == ["(other)", "u0", "u1"]
    assert len(data["recent"]) == 3
