"""CORS over plain HTTP: the preflight (answered before auth), its refusals, the headers of actual
answers (errors and streams included), operator routes left out, reload, and the config checks.
A real browser calling across origins is tests/test_cors_browser.py."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import pytest

from gateway.config import ConfigError, key_hash
from gateway.config_load import parse_config
from gateway.cors import ALWAYS_ALLOWED_HEADERS, ALWAYS_EXPOSED_HEADERS
from tests.conftest import ADMIN, ADMIN_KEY, AUTH, base_config_yaml
from tests.fake_upstream import FakeUpstream, streamed

PAGE = "http://127.0.0.1:5173"
OTHER_PAGE = "https://evil.example"
ROUTE = "/v1/images/generations"
BODY = {"model": "openai/gpt-image-1", "prompt": "a cube"}
CORS = f"cors: {{allow_origins: ['{PAGE}']}}\n"

#: What the official openai-node SDK sends from a browser page (``dangerouslyAllowBrowser: true``)
#: besides Authorization and Content-Type, so what its preflight asks for: the platform headers of
#: getPlatformHeaders() and the retry / timeout headers of buildHeaders().
#: https://github.com/openai/openai-node/blob/7b7d6ca71130d37ec09792c50056b47861f2eccf/src/client.ts#L1360-L1390
#: https://github.com/openai/openai-node/blob/7b7d6ca71130d37ec09792c50056b47861f2eccf/src/internal/detect-platform.ts#L94-L103
NODE_SDK_BROWSER_HEADERS = (
    "x-stainless-lang", "x-stainless-package-version", "x-stainless-os", "x-stainless-arch",
    "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-retry-count", "x-stainless-timeout",
)


def preflight_headers(origin: str = PAGE, method: str = "POST", headers: str = "authorization, content-type"
                      ) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


def listed(value: str | None) -> list[str]:
    return [v.strip().lower() for v in (value or "").split(",") if v.strip()]


async def test_off_by_default_nothing_changes(client: Any) -> None:
    resp = await client.options(ROUTE, headers=preflight_headers())
    assert resp.status == 405  # no OPTIONS route, as before: the browser's preflight fails
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.post(ROUTE, json=BODY, headers={**AUTH, "Origin": PAGE})
    assert resp.status == 200
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
    assert "Vary" not in resp.headers


async def test_preflight_is_answered_before_auth_with_what_the_sdks_send(make_client: Callable[..., Any]) -> None:
    client = await make_client(CORS)
    asked = ", ".join(("authorization", "content-type", "x-opengateway-user-id", "x-opengateway-session-id",
                       "idempotency-key") + NODE_SDK_BROWSER_HEADERS)
    resp = await client.options(ROUTE, headers=preflight_headers(headers=asked))  # no key at all
    assert resp.status == 204, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE
    assert listed(resp.headers["Access-Control-Allow-Methods"]) == ["get", "post"]
    allowed = listed(resp.headers["Access-Control-Allow-Headers"])
    assert set(listed(asked)) <= set(allowed)
    assert allowed == list(ALWAYS_ALLOWED_HEADERS)
    assert resp.headers["Access-Control-Max-Age"] == "600"
    assert "Origin" in listed(resp.headers["Vary"]) or "origin" in listed(resp.headers["Vary"])
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert await resp.read() == b""
    # The models routes too (a page lists what its key may use).
    resp = await client.options("/v1/models", headers=preflight_headers(method="GET", headers="authorization"))
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == PAGE


@pytest.mark.parametrize("origin, method, headers, reason", [
    (OTHER_PAGE, "POST", "authorization", f"origin '{OTHER_PAGE}' is not allowed"),
    (PAGE + "/", "POST", "authorization", "is not allowed"),  # origins match exactly
    ("null", "POST", "authorization", "origin 'null' is not allowed"),
    (PAGE, "DELETE", "authorization", "method 'DELETE' is not allowed"),
    (PAGE, "POST", "authorization, x-custom-tracker", "header(s) x-custom-tracker are not allowed"),
])
async def test_refused_preflight_is_a_403_without_allow_headers(make_client: Callable[..., Any], origin: str,
                                                                 method: str, headers: str, reason: str) -> None:
    """403 rather than a bare 204: either way the browser refuses the call (there is no allow
    header to pass its check), but the 403's OpenAI-shaped body says which rule refused it, for
    whoever reads the preflight in the network panel or with curl."""
    client = await make_client(CORS)
    resp = await client.options(ROUTE, headers=preflight_headers(origin, method, headers))
    assert resp.status == 403
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
    error = (await resp.json())["error"]
    assert error["code"] == "cors_not_allowed" and reason in error["message"], error


async def test_actual_answers_carry_cors_headers_errors_included(make_client: Callable[..., Any]) -> None:
    client = await make_client(CORS)
    resp = await client.post(ROUTE, json=BODY, headers={**AUTH, "Origin": PAGE})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE
    assert listed(resp.headers["Vary"]) == ["origin"]
    exposed = listed(resp.headers["Access-Control-Expose-Headers"])
    assert exposed == list(ALWAYS_EXPOSED_HEADERS)
    for name in ("x-request-id", "x-ratelimit-remaining-requests", "x-ratelimit-reset-images", "retry-after"):
        assert name in exposed
    assert "Access-Control-Allow-Methods" not in resp.headers  # preflight-only headers stay there
    # A 401 (no key), a 400 (unknown model) and a 405: the page can read each.
    for resp in (await client.post(ROUTE, json=BODY, headers={"Origin": PAGE}),
                 await client.post(ROUTE, json={**BODY, "model": "nobody/none"}, headers={**AUTH, "Origin": PAGE}),
                 await client.delete(ROUTE, headers={**AUTH, "Origin": PAGE})):
        assert resp.status in (400, 401, 405)
        assert resp.headers["Access-Control-Allow-Origin"] == PAGE, resp.status
        assert "x-request-id" in listed(resp.headers["Access-Control-Expose-Headers"])
        assert (await resp.json())["error"]["code"]
    # Another origin's answer is served (the key decides that) but readable by no page.
    resp = await client.post(ROUTE, json=BODY, headers={**AUTH, "Origin": OTHER_PAGE})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    assert listed(resp.headers["Vary"]) == ["origin"]


async def test_a_429_exposes_its_limits_and_retry_after(make_client: Callable[..., Any], make_config: Any,
                                                        upstream: FakeUpstream) -> None:
    limited = base_config_yaml(upstream.url, CORS).replace(
        "  - name: test\n", "  - name: test\n    limits: {requests_per_minute: 1}\n")
    client = await make_client(config=make_config(yaml_text=limited))
    first = await client.post(ROUTE, json=BODY, headers={**AUTH, "Origin": PAGE})
    assert first.status == 200 and first.headers["x-ratelimit-remaining-requests"] == "0"
    resp = await client.post(ROUTE, json=BODY, headers={**AUTH, "Origin": PAGE})
    assert resp.status == 429
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE
    exposed = listed(resp.headers["Access-Control-Expose-Headers"])
    assert {"retry-after", "x-ratelimit-remaining-requests"} <= set(exposed) and "retry-after" in resp.headers


async def test_a_stream_carries_cors_headers(make_client: Callable[..., Any], upstream: FakeUpstream) -> None:
    client = await make_client(CORS)
    upstream.script("gpt-image-1", streamed())
    resp = await client.post(ROUTE, json={**BODY, "stream": True, "partial_images": 1},
                             headers={**AUTH, "Origin": PAGE})
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE
    assert b"image_generation.completed" in await resp.read()


async def test_operator_routes_never_get_cors_headers(make_client: Callable[..., Any]) -> None:
    client = await make_client(CORS + ADMIN)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}", "Origin": PAGE}
    for method, path in (("GET", "/metrics"), ("GET", "/dashboard"), ("POST", "/admin/reload"),
                         ("GET", "/healthz"), ("GET", "/openapi.json")):
        resp = await client.request(method, path, headers=admin)
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")], path
        assert "Vary" not in resp.headers or "origin" not in listed(resp.headers["Vary"]), path
        preflight = await client.options(path, headers=preflight_headers(method=method))
        assert preflight.status == 405, path  # no preflight answer: a page cannot reach them
        assert "Access-Control-Allow-Origin" not in preflight.headers, path


async def test_any_origin_and_credentials(make_client: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "opengateway"):
        client = await make_client("cors: {allow_origins: ['*'], max_age_s: 60}\n")
    assert any("allow_origins has '*'" in r.getMessage() for r in caplog.records)
    resp = await client.options(ROUTE, headers=preflight_headers(OTHER_PAGE))
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Access-Control-Max-Age"] == "60"
    resp = await client.post(ROUTE, json=BODY, headers={**AUTH, "Origin": OTHER_PAGE})
    assert resp.headers["Access-Control-Allow-Origin"] == "*" and "Vary" not in resp.headers

    # '*' beside listed origins: each page gets its own origin back, so the answer varies by Origin.
    client = await make_client(f"cors: {{allow_origins: ['*', '{PAGE}']}}\n")
    for origin in (PAGE, OTHER_PAGE):
        resp = await client.post(ROUTE, json=BODY, headers={**AUTH, "Origin": origin})
        assert resp.headers["Access-Control-Allow-Origin"] == origin and listed(resp.headers["Vary"]) == ["origin"]

    client = await make_client(f"cors: {{allow_origins: ['{PAGE}'], allow_credentials: true, "
                               "allow_methods: [POST], allow_headers: [X-Trace], expose_headers: [X-Cost]}\n")
    resp = await client.options(ROUTE, headers=preflight_headers(headers="authorization, x-trace"))
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert listed(resp.headers["Access-Control-Allow-Methods"]) == ["post"]
    assert listed(resp.headers["Access-Control-Allow-Headers"])[-1] == "x-trace"
    resp = await client.post(ROUTE, json=BODY, headers={**AUTH, "Origin": PAGE})
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert listed(resp.headers["Access-Control-Expose-Headers"])[-1] == "x-cost"


async def test_reload_turns_cors_on_and_off(aiohttp_client: Callable[..., Any], upstream: FakeUpstream,
                                            tmp_path: Path) -> None:
    from gateway.app import create_app
    from gateway.config_load import load_config

    path = tmp_path / "gateway.yaml"
    path.write_text(base_config_yaml(upstream.url, ADMIN))
    client = await aiohttp_client(create_app(load_config(str(path)), config_path=str(path)))
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert (await client.options(ROUTE, headers=preflight_headers())).status == 405
    path.write_text(base_config_yaml(upstream.url, ADMIN + CORS))
    assert (await client.post("/admin/reload", headers=admin)).status == 200
    resp = await client.options(ROUTE, headers=preflight_headers())
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == PAGE
    path.write_text(base_config_yaml(upstream.url, ADMIN))
    assert (await client.post("/admin/reload", headers=admin)).status == 200
    assert (await client.options(ROUTE, headers=preflight_headers())).status == 405


@pytest.mark.parametrize("origins, credentials, problem", [
    (["https://app.example.com/"], False, "write it as browsers send it: 'https://app.example.com'"),
    (["https://App.Example.com"], False, "write it as browsers send it: 'https://app.example.com'"),
    (["https://app.example.com:443"], False, "write it as browsers send it: 'https://app.example.com'"),
    (["app.example.com"], False, "is not an origin"),
    (["null"], False, "'null' is the origin of every sandboxed frame"),
    (["*"], True, "'*' cannot go with allow_credentials: true"),
])
def test_config_checks_origins(origins: list[str], credentials: bool, problem: str) -> None:
    text = (f'keys: [{{name: a, hash: "{key_hash("k")}"}}]\n'
            f"cors:\n  allow_origins: {origins!r}\n  allow_credentials: {str(credentials).lower()}\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={})
    [found] = caught.value.problems
    assert found.path == "$.cors.allow_origins[0]" and problem in found.message and found.line == 3, found


def test_config_accepts_origins_as_browsers_send_them() -> None:
    config = parse_config("cors:\n  allow_origins: ['https://app.example.com', 'http://127.0.0.1:5173', "
                          "'http://[::1]:8000', 'chrome-extension://abcdefghijklmnop']\n", env={})
    assert len(config.cors.allow_origins) == 4
    with pytest.raises(ConfigError) as caught:
        parse_config("cors: {allow_headers: ['x bad'], allow_methods: [post], max_age_s: -1}\n", env={})
    assert caught.value.problems[0].path.startswith("$.cors.")
