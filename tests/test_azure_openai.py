"""What only the ``azure_openai`` plugin does: URL forms, credentials, capabilities, error dialect."""

from __future__ import annotations

from typing import Any, Callable

import msgspec
import pytest

from gateway.app import create_app
from gateway.config import ConfigError
from gateway.config_load import parse_config
from gateway.http_client import HTTPClient
from gateway.upstream_http import UpstreamHTTP
from gateway.registry import Registry
from plugins.azure_openai import AzureOpenAISettings, azure_error
from gateway.config import key_hash
from tests.conftest import AUTH, GATEWAY_KEY
from tests.flavours import AZURE_KEY, FLAVOURS, PROMPT, azure_reply


def azure_yaml(base: str, settings: str = "", models: str = "") -> str:
    return f"""
keys:
  - name: test
    hash: "{key_hash(GATEWAY_KEY)}"
providers:
  - id: az-sweden
    plugin: azure_openai
    region: swedencentral
    settings:
      endpoint: "{base}"
      deployments:
        openai/gpt-image-1: my-gpt-image-1-deployment
{settings}
router: {{max_attempts_per_target: 1}}
{models}
"""


@pytest.fixture
def make_gw(aiohttp_client: Callable[..., Any], upstream: Any) -> Callable[..., Any]:
    async def make(settings: str = f'      api_key: "{AZURE_KEY}"', env: dict[str, str] | None = None,
                   models: str = "") -> Any:
        config = parse_config(azure_yaml(upstream.base, settings, models), env=env or {})
        return await aiohttp_client(create_app(config))
    return make


async def generate(gw: Any, **fields: Any) -> tuple[int, dict[str, Any]]:
    resp = await gw.post("/v1/images/generations", headers=AUTH,
                         json={"model": "openai/gpt-image-1", "prompt": PROMPT, **fields})
    return resp.status, await resp.json()


async def test_deployment_url_and_configured_api_version(make_gw: Callable[..., Any], upstream: Any) -> None:
    gw = await make_gw(f'      api_key: "{AZURE_KEY}"\n      api_version: "2024-10-21"')
    status, _ = await generate(gw)
    assert status == 200
    [sent] = upstream.received
    assert sent.path == "/openai/deployments/my-gpt-image-1-deployment/images/generations"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.body["model"] == "my-gpt-image-1-deployment"


async def test_bearer_token_from_the_environment(make_gw: Callable[..., Any], upstream: Any) -> None:
    gw = await make_gw('      bearer_token: "${AZURE_ENTRA_TOKEN}"', env={"AZURE_ENTRA_TOKEN": "eyJ0eXAi.entra.tok"})
    status, body = await generate(gw)
    assert status == 200, body
    headers = {k.lower(): v for k, v in upstream.received[0].headers.items()}
    assert headers["authorization"] == "Bearer eyJ0eXAi.entra.tok"
    assert "api-key" not in headers


async def test_model_without_deployment_is_not_served(make_gw: Callable[..., Any], upstream: Any) -> None:
    gw = await make_gw()
    status, body = await generate(gw, model="openai/gpt-image-2")
    assert (status, body["error"]["code"]) == (400, "invalid_value")  # "does not exist", as OpenAI says it
    models = await (await gw.get("/v1/models", headers=AUTH)).json()
    assert [m["id"] for m in models["data"]] == ["openai/gpt-image-1"]
    assert upstream.received == []


@pytest.mark.parametrize(("fields", "param", "message"), [
    ({"output_format": "webp"}, "output_format", "Invalid value: 'webp'. Supported values are: 'png' and 'jpeg'."),
    ({"output_format": "png", "output_compression": 50}, "output_compression", None),
    ({"background": "transparent", "output_format": "webp"}, "output_format", None),
])
async def test_azure_differences_refused_before_any_call(make_gw: Callable[..., Any], upstream: Any,
                                                         fields: dict[str, Any], param: str,
                                                         message: str | None) -> None:
    gw = await make_gw()
    status, body = await generate(gw, **fields)
    assert status == 400
    err = body["error"]
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", param, "invalid_value")
    if message:
        assert err["message"] == message
    assert upstream.received == []


async def test_jpeg_compression_and_png_transparency_pass(make_gw: Callable[..., Any], upstream: Any) -> None:
    gw = await make_gw()
    assert (await generate(gw, output_format="jpeg", output_compression=40))[0] == 200
    assert (await generate(gw, background="transparent", output_format="png"))[0] == 200
    assert upstream.received[0].body["output_compression"] == 40


async def test_operator_extra_field_reaches_azure(make_gw: Callable[..., Any], upstream: Any) -> None:
    models = """models:
  openai/gpt-image-1:
    targets: [az-sweden]
    extra_fields: [safety_identifier]
"""
    gw = await make_gw(models=models)
    status, _ = await generate(gw, safety_identifier="user-hash-1")
    assert status == 200
    assert upstream.received[0].body["safety_identifier"] == "user-hash-1"


async def test_content_filter_in_the_older_innererror_spelling(make_gw: Callable[..., Any], upstream: Any) -> None:
    upstream.script("my-gpt-image-1-deployment", azure_reply(400, {"error": {
        "code": "content_filter", "message": "The response was filtered due to the prompt triggering "
        "Azure OpenAI's content management policy.", "innererror": {"code": "ResponsibleAIPolicyViolation"}}}))
    gw = await make_gw()
    status, body = await generate(gw)
    assert status == 400
    assert (body["error"]["type"], body["error"]["code"]) == ("image_generation_user_error", "moderation_blocked")
    assert body["error"]["param"] is None


async def test_429_wait_stated_only_in_the_message(make_gw: Callable[..., Any], upstream: Any) -> None:
    azure = next(f for f in FLAVOURS if f.name == "azure_openai")
    upstream.script("my-gpt-image-1-deployment", azure.rate_limited(9, header=False))
    gw = await make_gw()
    resp = await gw.post("/v1/images/generations", headers=AUTH,
                         json={"model": "openai/gpt-image-1", "prompt": PROMPT})
    body = await resp.json()
    assert (resp.status, body["error"]["code"], resp.headers["retry-after"]) == (429, "rate_limit_exceeded", "9")


@pytest.mark.parametrize(("settings", "fragment"), [
    ({}, "exactly one of api_key and bearer_token"),
    ({"api_key": "k", "bearer_token": "t"}, "exactly one of api_key and bearer_token"),
    ({"api_key": "k", "endpoint": "my-resource.openai.azure.com"}, "endpoint must be an http(s) URL"),
    ({"api_key": "k", "deployments": {}}, "deployments must map"),
    ({"api_key": "k", "url_form": "v2"}, "Invalid enum value 'v2'"),
])
async def test_bad_settings_are_config_problems(settings: dict[str, Any], fragment: str) -> None:
    base = {"endpoint": "https://r.openai.azure.com", "deployments": {"openai/gpt-image-1": "d"}}
    config = parse_config(msgspec.json.encode({"providers": [
        {"id": "az", "plugin": "azure_openai", "settings": {**base, **settings}}]}).decode(), env={})
    with pytest.raises(ConfigError) as caught:
        Registry.build(config, UpstreamHTTP(HTTPClient()))
    [problem] = caught.value.problems
    assert problem.path.startswith("$.providers[0].settings")
    assert fragment in problem.message


def test_settings_accept_the_documented_example() -> None:
    settings = msgspec.convert({"endpoint": "https://my-resource.openai.azure.com/", "api_key": "k",
                                "deployments": {"openai/gpt-image-1": "my-gpt-image-1-deployment"}},
                               AzureOpenAISettings)
    assert (settings.url_form, settings.api_version) == ("deployments", None)


# The error dialect, case by case: (status, body, headers) -> (status, type, code, retry_after_s, retryable)
ERROR_CASES = [
    ("rate limit text only", 429, {"error": {"code": "429", "message": "Please retry after 12 seconds."}}, {},
     (429, "requests", "rate_limit_exceeded", 12.0, None)),
    ("APIM throttling, flat body", 429,
     {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 3 seconds."}, {}, (429, "requests", "rate_limit_exceeded", 3.0, None)),
    ("retry-after-ms wins over text", 429, {"error": {"code": "429", "message": "Please retry after 12 seconds."}},
     {"retry-after-ms": "1500"}, (429, "requests", "rate_limit_exceeded", 1.5, None)),
    ("quota", 429, {"error": {"code": "insufficient_quota", "message": "You exceeded your quota."}}, {},
     (429, "insufficient_quota", "insufficient_quota", None, None)),
    ("bad key", 401, {"error": {"code": "401", "message": "Access denied due to invalid subscription key."}}, {},
     (401, "invalid_request_error", "invalid_api_key", None, None)),
    ("APIM bad token", 401, {"statusCode": 401, "message": "Unauthorized. Access token is missing."}, {},
     (401, "invalid_request_error", "invalid_api_key", None, None)),
    ("deployment missing", 404, {"error": {"code": "DeploymentNotFound", "message": "The API deployment for this "
                                           "resource does not exist."}}, {},
     (404, "invalid_request_error", "deployment_not_found", None, None)),
    ("OpenAI-shaped 400 kept", 400, {"error": {"code": "invalid_value", "type": "invalid_request_error",
                                               "param": "size", "message": "Invalid value: '1x1'."}}, {},
     (400, "invalid_request_error", "invalid_value", None, None)),
    ("server error", 500, {"error": {"code": "InternalServerError", "message": "Backend failure."}}, {},
     (500, "server_error", None, None, None)),
    ("content filter", 400, {"error": {"code": "content_policy_violation", "message": "Blocked.",
                                       "inner_error": {"code": "ResponsibleAIPolicyViolation"}}}, {},
     (400, "image_generation_user_error", "moderation_blocked", None, False)),
]


@pytest.mark.parametrize(("case", "status", "payload", "headers", "expected"), ERROR_CASES,
                         ids=[c[0] for c in ERROR_CASES])
def test_azure_error_dialect(case: str, status: int, payload: dict[str, Any], headers: dict[str, str],
                             expected: tuple[Any, ...]) -> None:
    err = azure_error(status, msgspec.json.encode(payload), headers)
    assert (err.status, err.type, err.code, err.retry_after_s, err.retryable) == expected
    assert err.message


@pytest.mark.parametrize("body", [
    b'{"error":{"message":"x","inner_error":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}}",
    b'{"statusCode":429,"details":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
], ids=["nested error", "nested flat answer"])
def test_a_deeply_nested_error_body_is_an_upstream_error(body: bytes) -> None:
    """msgspec raises RecursionError past the recursion limit (tests/test_upstream_faults.py
    cites where): the dialect reader must still give a ProviderError for the router."""
    err = azure_error(503, body, {})
    assert (err.status, err.type) == (503, "server_error")
    assert err.message.startswith("Azure OpenAI answered HTTP 503")


def test_non_json_error_body() -> None:
    err = azure_error(502, b"<html>Bad Gateway</html>", {})
    assert (err.status, err.type, err.code) == (502, "server_error", None)
    assert "Bad Gateway" in err.message
