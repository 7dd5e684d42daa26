"""``/openapi.json``: a valid OpenAPI 3.1 document, generated from the code's own types, that
real answers of the gateway conform to."""

from __future__ import annotations

from typing import Any

import msgspec
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from gateway.api import ImageRequest
from gateway.openapi import SPEC_BYTES
from tests import fake_upstream as fu
from tests.conftest import AUTH

SEED = {"model": "openai/gpt-image-2", "prompt": "A small red cube on a white background.",
        "size": "1024x1024", "quality": "medium"}


async def fetch_spec(client: Any) -> dict[str, Any]:
    resp = await client.get("/openapi.json")  # public: no key
    assert resp.status == 200 and resp.content_type == "application/json"
    raw = await resp.read()
    assert raw == SPEC_BYTES  # built once, served as bytes
    return msgspec.json.decode(raw)


def validator(spec: dict[str, Any], name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})


async def test_spec_is_valid_openapi_31(client: Any) -> None:
    spec = await fetch_spec(client)
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    assert {"/v1/images/generations", "/v1/models", "/healthz", "/readyz"} <= set(spec["paths"])


async def test_request_schema_is_the_decoders_own(client: Any) -> None:
    spec = await fetch_spec(client)
    _, expected = msgspec.json.schema_components([ImageRequest], ref_template="#/components/schemas/{name}")
    for name, schema in expected.items():
        assert spec["components"]["schemas"][name] == schema
    error = spec["components"]["schemas"]["ErrorObject"]
    assert set(error["required"]) == {"message", "type", "param", "code"}


async def test_success_answer_conforms(client: Any, upstream: Any) -> None:
    spec = await fetch_spec(client)
    resp = await client.post("/v1/images/generations", json=SEED, headers=AUTH)
    assert resp.status == 200
    validator(spec, "ImagesResponse").validate(await resp.json())


async def test_error_answers_conform(client: Any, upstream: Any) -> None:
    spec = await fetch_spec(client)
    errors = validator(spec, "ErrorBody")
    upstream.script("gpt-image-1", *(fu.error(503, None, "overloaded") for _ in range(10)))
    answers = [
        await client.post("/v1/images/generations", json={"model": "openai/gpt-image-1"}, headers=AUTH),
        await client.post("/v1/images/generations", json=SEED),
        await client.post("/v1/images/generations", json={**SEED, "model": "openai/nope"}, headers=AUTH),
        await client.post("/v1/images/generations", json={**SEED, "model": "openai/gpt-image-1"}, headers=AUTH),
        await client.get("/v1/nope", headers=AUTH),
    ]
    assert [a.status for a in answers] == [400, 401, 400, 502, 404]
    for answer in answers:
        body = await answer.json()
        errors.validate(body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
    routed = await answers[3].json()
    assert routed["extra"]["routing"]["attempts"][0]["status"] == "failed"


async def test_models_and_health_conform(client: Any) -> None:
    spec = await fetch_spec(client)
    resp = await client.get("/v1/models", headers=AUTH)
    validator(spec, "ModelList").validate(await resp.json())
    for path in ("/healthz", "/readyz"):
        resp = await client.get(path)
        validator(spec, "Health").validate(await resp.json())
