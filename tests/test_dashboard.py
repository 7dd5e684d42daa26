"""The dashboard over HTTP: admin-key sign-in, the session cookie, CSRF on sign-out, the figures."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import key_hash
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


# --- one key ring: an admin key's validity is checked on every dashboard request --------------------

EXPIRED_ADMIN = f"""
admin_keys:
  - name: ops
    hash: "{key_hash(ADMIN_KEY)}"
    expires_at: "2020-01-01T00:00:00Z"
"""


async def test_an_expired_admin_key_is_refused_everywhere(make_client: Any) -> None:
    """Refused by /admin/reload, and equally by the dashboard sign-in, its page and its JSON."""
    client = await make_client(EXPIRED_ADMIN)
    assert (await client.post("/admin/reload", headers=BEARER)).status == 401
    resp = await login(client)
    assert resp.status == 401 and "Set-Cookie" not in resp.headers
    assert (await client.get("/dashboard/data.json", headers=BEARER)).status == 401
    assert (await client.get("/dashboard", headers=BEARER)).status == 401


DEPLOY_KEY = "og-deploy-key-reloads-0a1b2c3d"


def two_admins(ops: str) -> str:
    """``ops`` (the admin under test, as given) and ``deploy``, whose key asks for the reloads."""
    return f"""
admin_keys:
  - {ops}
  - {{name: deploy, hash: "{key_hash(DEPLOY_KEY)}"}}
"""


async def test_a_session_ends_when_its_admin_key_expires_or_is_rotated(started_from_file: Any) -> None:
    client, path, text = await started_from_file(two_admins(f'{{name: ops, hash: "{key_hash(ADMIN_KEY)}"}}'))
    reload = {"Authorization": f"Bearer {DEPLOY_KEY}"}
    assert (await login(client)).status == 303
    assert (await client.get("/dashboard/data.json")).status == 200  # the session cookie
    # The same admin, its key now expired: the session dies at its next request.
    path.write_text(text.replace(f'hash: "{key_hash(ADMIN_KEY)}"}}',
                                 f'hash: "{key_hash(ADMIN_KEY)}", expires_at: "2020-01-01T00:00:00Z"}}'))
    assert (await client.post("/admin/reload", headers=reload)).status == 200
    assert (await client.get("/dashboard/data.json")).status == 401
    # Valid again, but rotated to another key of the same name: the old session stays dead.
    path.write_text(text.replace(key_hash(ADMIN_KEY), key_hash(ADMIN_KEY + "-rotated")))
    assert (await client.post("/admin/reload", headers=reload)).status == 200
    assert (await client.get("/dashboard/data.json")).status == 401
    # Disabled: the same.
    path.write_text(text)
    assert (await client.post("/admin/reload", headers=reload)).status == 200
    assert (await login(client)).status == 303
    assert (await client.get("/dashboard/data.json")).status == 200
    path.write_text(text.replace(f'hash: "{key_hash(ADMIN_KEY)}"}}', f'hash: "{key_hash(ADMIN_KEY)}", enabled: false}}'))
    assert (await client.post("/admin/reload", headers=reload)).status == 200
    assert (await client.get("/dashboard/data.json")).status == 401


async def test_sign_out_revokes_the_session_token(make_client: Any) -> None:
    client = await make_client(ADMIN)
    await login(client)
    token = next(c.value for c in client.session.cookie_jar if c.key == "opengateway_dashboard")
    html = await (await client.get("/dashboard")).text()
    csrf = html.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    assert (await client.post("/dashboard/logout", data={"csrf": csrf}, allow_redirects=False)).status == 303
    client.session.cookie_jar.clear()
    # The token itself, replayed after sign-out, no longer works.
    assert (await client.get("/dashboard/data.json", cookies={"opengateway_dashboard": token})).status == 401
    assert (await client.get("/dashboard", cookies={"opengateway_dashboard": token})).status == 401


@pytest.mark.parametrize(("trusted", "proto", "secure"), [
    ("[127.0.0.1]", "https", True),          # a trusted proxy terminated TLS
    ("[127.0.0.1]", "http", False),
    ("[127.0.0.1]", "http, https", True),    # the right-most value: the one our proxy set
    ("[]", "https", False),                   # no trusted proxy: the header is the client's word
    ("[10.0.0.0/8]", "https", False),         # the peer is not a trusted proxy
])
async def test_the_cookie_is_secure_behind_a_trusted_tls_proxy(make_client: Any, trusted: str, proto: str,
                                                               secure: bool) -> None:
    client = await make_client(ADMIN + f"server: {{trusted_proxies: {trusted}}}\n")
    resp = await client.post("/dashboard/login", data={"key": ADMIN_KEY}, allow_redirects=False,
                             headers={"X-Forwarded-Proto": proto})
    assert resp.status == 303
    assert ("Secure" in resp.headers["Set-Cookie"]) is secure


async def test_a_reload_can_turn_the_dashboard_and_metrics_off(started_from_file: Any) -> None:
    client, path, text = await started_from_file(ADMIN)
    assert (await client.get("/dashboard", headers=BEARER)).status == 200
    assert (await client.get("/metrics")).status == 200
    path.write_text(text.replace("dashboard: {refresh_s: 3600}", "dashboard: {enabled: false}")
                    + "metrics: {enabled: false}\n")
    assert (await client.post("/admin/reload", headers=BEARER)).status == 200
    for route in ("/dashboard", "/dashboard/data.json", "/metrics"):
        resp = await client.get(route, headers=BEARER)
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "unknown_url"
