"""The images endpoint end to end: the product page's request through the real app and plugin."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from tests.conftest import AUTH, GATEWAY_KEY, OTHER_KEY, UPSTREAM_KEY

SEED = {"model": "openai/gpt-image-2", "prompt": "A small red cube on a white background.",
        "size": "1024x1024", "quality": "medium"}


async def test_seed_request_answers_openai_shape_plus_attempts(client: Any, upstream: Any) -> None:
    resp = await client.post("/v1/images/generations", json=SEED, headers=AUTH)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert isinstance(body["created"], int)
    assert Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))).size == (1, 1)
    assert body["usage"]["total_tokens"] == 1076
    assert body["quality"] == "medium" and body["size"] == "1024x1024"
    [attempt] = body["extra"]["routing"]["attempts"]
    assert attempt["provider"] == "openai" and attempt["region"] == "global"
    assert attempt["status"] == "succeeded" and attempt["model"] == "openai/gpt-image-2"
    assert resp.headers["x-upstream-request-id"] == "req_upstream_1"


async def test_upstream_receives_bare_model_and_provider_key_only(client: Any, upstream: Any) -> None:
    await client.post("/v1/images/generations", json={**SEED, "user": "end-user-1"}, headers=AUTH)
    [sent] = upstream.received
    assert sent.path == "/v1/images/generations"
    assert sent.body == {"model": "gpt-image-2", "prompt": SEED["prompt"], "size": "1024x1024",
                         "quality": "medium", "user": "end-user-1"}
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert GATEWAY_KEY not in str(sent.headers)


async def test_upstream_fields_are_kept(client: Any, upstream: Any) -> None:
    resp = await client.post("/v1/images/generations", json={**SEED, "n": 3, "background": "opaque"},
                             headers=AUTH)
    body = await resp.json()
    assert len(body["data"]) == 3
    assert set(body) >= {"created", "data", "background", "output_format", "quality", "size", "usage", "extra"}
    assert body["usage"]["input_tokens_details"] == {"text_tokens": 20, "image_tokens": 0}


async def test_large_payload_is_passed_through_intact(client: Any, upstream: Any) -> None:
    from tests.fake_upstream import ok

    big = base64.b64encode(bytes(range(256)) * 8192).decode()  # 2 MiB of image bytes
    upstream.script("gpt-image-1", ok(b64=big))
    resp = await client.post("/v1/images/generations", json={**SEED, "model": "openai/gpt-image-1"},
                             headers=AUTH)
    body = await resp.json()
    assert body["data"][0]["b64_json"] == big
    assert body["extra"]["routing"]["attempts"][0]["status"] == "succeeded"
    assert int(resp.headers["Content-Length"]) == len(await resp.read())


async def test_upstream_moderation_block_reaches_client_unchanged(client: Any, upstream: Any) -> None:
    from tests.fake_upstream import error

    upstream.script("gpt-image-1", error(400, "moderation_blocked", "Your request was rejected by the safety system.",
                                         type="image_generation_user_error"))
    resp = await client.post("/v1/images/generations", json={**SEED, "model": "openai/gpt-image-1"},
                             headers=AUTH)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == {"message": "Your request was rejected by the safety system.",
                             "type": "image_generation_user_error", "param": None, "code": "moderation_blocked"}
    assert body["extra"]["routing"]["attempts"][0]["status"] == "failed"


async def test_request_id_is_generated_or_echoed(client: Any) -> None:
    resp = await client.get("/healthz")
    assert resp.headers["x-request-id"].startswith("req_")
    resp = await client.post("/v1/images/generations", json=SEED, headers={**AUTH, "x-request-id": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    resp = await client.get("/healthz", headers={"x-request-id": "bad id with spaces"})
    assert resp.headers["x-request-id"].startswith("req_")


async def test_errors_carry_request_id_too(client: Any) -> None:
    resp = await client.post("/v1/images/generations", json={}, headers=AUTH)
    assert resp.status == 400 and resp.headers["x-request-id"].startswith("req_")


async def test_auth_failures_are_401_invalid_api_key(client: Any, upstream: Any) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {GATEWAY_KEY}"},
                    {"Authorization": "Bearer "}, {"Authorization": GATEWAY_KEY}):
        resp = await client.post("/v1/images/generations", json=SEED, headers=headers)
        assert resp.status == 401, headers
        error = (await resp.json())["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert GATEWAY_KEY not in error["message"]
    assert upstream.received == []


async def test_auth_comes_before_validation(client: Any) -> None:
    resp = await client.post("/v1/images/generations", data=b"not json", headers={"Authorization": "Bearer x"})
    assert resp.status == 401


async def test_key_limited_to_a_model_gets_403(client: Any, upstream: Any) -> None:
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    resp = await client.post("/v1/images/generations", json=SEED, headers=other)
    assert resp.status == 403
    assert (await resp.json())["error"]["param"] == "model"
    ok = await client.post("/v1/images/generations", json={**SEED, "model": "openai/gpt-image-1-mini"},
                           headers=other)
    assert ok.status == 200
    as_fallback = await client.post(
        "/v1/images/generations",
        json={**SEED, "model": "openai/gpt-image-1-mini", "extra": {"fallbacks": ["openai/gpt-image-2"]}},
        headers=other)
    assert as_fallback.status == 403
    assert (await as_fallback.json())["error"]["param"] == "extra.fallbacks"
    assert len(upstream.received) == 1


async def test_analytics_headers_are_bounded(client: Any) -> None:
    good = {**AUTH, "x-opengateway-user-id": "user-42", "x-opengateway-session-id": "s" * 256}
    assert (await client.post("/v1/images/generations", json=SEED, headers=good)).status == 200
    for name, value in (("x-opengateway-user-id", "u" * 257), ("x-opengateway-session-id", "a\tb"),
                        ("x-opengateway-user-id", "")):
        resp = await client.post("/v1/images/generations", json=SEED, headers={**AUTH, name: value})
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == name


async def test_models_list_is_openai_shaped_and_filtered_by_key(client: Any) -> None:
    resp = await client.get("/v1/models", headers=AUTH)
    body = await resp.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert {"openai/gpt-image-1", "openai/gpt-image-2", "openai/gpt-image-1-mini", "openai/gpt-image-1.5"} <= set(ids)
    assert all(m["object"] == "model" and m["owned_by"] == "openai" for m in body["data"])
    limited = await client.get("/v1/models", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert [m["id"] for m in (await limited.json())["data"]] == ["openai/gpt-image-1-mini"]
    assert (await client.get("/v1/models")).status == 401


async def test_health_and_readiness_are_public(client: Any) -> None:
    assert (await (await client.get("/healthz")).json()) == {"status": "ok"}
    assert (await client.get("/readyz")).status == 200


async def test_unknown_route_and_wrong_method_are_openai_shaped(client: Any) -> None:
    resp = await client.get("/v1/nothing", headers=AUTH)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "unknown_url"
    resp = await client.get("/v1/images/generations", headers=AUTH)
    assert resp.status == 405
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "POST" in resp.headers["Allow"]


async def test_alias_and_bare_name(make_client: Any) -> None:
    client = await make_client("aliases:\n  gpt-image-1: openai/gpt-image-1\n")
    resp = await client.post("/v1/images/generations", json={**SEED, "model": "gpt-image-1"}, headers=AUTH)
    assert resp.status == 200
    resp = await client.post("/v1/images/generations", json={**SEED, "model": "gpt-image-2"}, headers=AUTH)
    assert resp.status == 200  # a bare id naming one configured model is that model (tests/test_bare_ids.py)
    client = await make_client("bare_model_ids: refuse\n")
    resp = await client.post("/v1/images/generations", json={**SEED, "model": "gpt-image-2"}, headers=AUTH)
    assert resp.status == 400
    assert "openai/gpt-image-2" in (await resp.json())["error"]["message"]
