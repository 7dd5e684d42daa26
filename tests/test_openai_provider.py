"""The OpenAI-speaking plugins, black box: the same tests for ``openai`` and ``azure_openai``.

Each flavour is a real plugin, configured through YAML, behind the real app, against the fake
upstream on loopback, failing in its own upstream's dialect; the client sees one behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any, AsyncIterator, Callable

import msgspec
import openai
import pytest
from aiohttp import web
from PIL import Image

from gateway.app import create_app
from gateway.config_load import parse_config
from tests.conftest import AUTH, GATEWAY_KEY
from tests.fake_upstream import block
from tests.flavours import FLAVOURS, PROMPT, Flavour

@pytest.fixture(params=FLAVOURS, ids=[f.name for f in FLAVOURS])
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return request.param


@pytest.fixture
async def gw(aiohttp_client: Callable[..., Any], upstream: Any, flavour: Flavour) -> Any:
    return await aiohttp_client(create_app(parse_config(flavour.config(upstream.base), env={})))


@pytest.fixture
async def sdk(gw: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=str(gw.make_url("/v1")), api_key=GATEWAY_KEY, max_retries=0) as client:
        yield client


async def post(client: Any, **fields: Any) -> tuple[int, dict[str, Any], Any]:
    resp = await client.post("/v1/images/generations", headers=AUTH,
                             json={"model": "openai/gpt-image-1", "prompt": PROMPT, **fields})
    return resp.status, await resp.json(), resp


async def test_success_through_the_openai_sdk(gw: Any, sdk: openai.AsyncOpenAI, upstream: Any,
                                              flavour: Flavour) -> None:
    model = "openai/gpt-image-1"
    upstream.script(flavour.upstream_model(model), flavour.ok())
    raw = await sdk.images.with_raw_response.generate(model=model, prompt=PROMPT, size="1536x1024",
                                                          quality="low", output_format="jpeg",
                                                          output_compression=70, user="u-1")
    result = raw.parse()
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.format == "PNG"  # the fake's 1x1 PNG, unchanged
    assert result.usage is not None and result.usage.output_tokens == 1056
    expected_id = "apim-1234" if flavour.plugin == "azure_openai" else "req_upstream_1"
    assert raw.headers["x-upstream-request-id"] == expected_id
    [sent] = upstream.received
    assert (sent.path, sent.query) == (flavour.path(model), flavour.query)
    assert sent.body == {"model": flavour.upstream_model(model), "prompt": PROMPT, "size": "1536x1024",
                         "quality": "low", "output_format": "jpeg", "output_compression": 70, "user": "u-1"}
    attempts = (await raw.http_response.aread()).decode()
    assert msgspec.json.decode(attempts)["extra"]["routing"]["attempts"][0]["provider"] == flavour.plugin


async def test_streaming_through_the_openai_sdk(gw: Any, sdk: openai.AsyncOpenAI, upstream: Any,
                                                flavour: Flavour) -> None:
    """Both plugins stream as their upstream does: ``stream`` and ``partial_images`` in the body,
    Server-Sent Events back, relayed event by event (Azure accepts both top-level fields: LiteLLM
    #16059 is Azure refusing them when nested in ``extra_body``)."""
    model = "openai/gpt-image-1"
    stream = await sdk.images.generate(model=model, prompt=PROMPT, stream=True, partial_images=1, quality="low")
    events = [event async for event in stream]
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    assert events[-1].model_extra["extra"]["routing"]["attempts"][0]["provider"] == flavour.plugin
    [sent] = upstream.received
    assert (sent.path, sent.query) == (flavour.path(model), flavour.query)
    assert sent.body == {"model": flavour.upstream_model(model), "prompt": PROMPT, "quality": "low",
                         "stream": True, "partial_images": 1}


async def test_edits_through_the_openai_sdk(gw: Any, sdk: openai.AsyncOpenAI, upstream: Any,
                                           flavour: Flavour) -> None:
    """Both plugins send an edit as their upstream takes it: multipart on the edits endpoint of
    the same base (Azure: the deployment's, same api-version), the images streamed from where the
    gateway holds them."""
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(out, "PNG")
    source = out.getvalue()
    model = "openai/gpt-image-1"
    result = await sdk.images.edit(model=model, prompt=PROMPT, image=("a.png", source, "image/png"), quality="low")
    assert result.data and result.data[0].b64_json
    [sent] = upstream.received
    assert sent.path == flavour.path(model).replace("/generations", "/edits") and sent.query == flavour.query
    assert sent.body == {"model": flavour.upstream_model(model), "prompt": PROMPT, "quality": "low"}
    assert sent.files == [("image", "a.png", "image/png", source)]
    assert all(sent.headers.get(k) == v for k, v in flavour.auth_headers.items())


async def test_a_refused_stream_is_translated_before_the_first_event(gw: Any, sdk: openai.AsyncOpenAI,
                                                                     upstream: Any, flavour: Flavour) -> None:
    upstream.script(flavour.upstream_model("openai/gpt-image-1"), flavour.moderation())
    with pytest.raises(openai.BadRequestError) as caught:
        stream = await sdk.images.generate(model="openai/gpt-image-1", prompt=PROMPT, stream=True)
        [event async for event in stream]
    assert caught.value.code == "moderation_blocked"


async def test_auth_header_sent_and_nothing_else(gw: Any, upstream: Any, flavour: Flavour) -> None:
    status, _, _ = await post(gw)
    assert status == 200
    headers = {k.lower(): v for k, v in upstream.received[0].headers.items()}
    for name, value in flavour.auth_headers.items():
        assert headers[name.lower()] == value
    other = {"authorization", "api-key"} - {n.lower() for n in flavour.auth_headers}
    assert not other & set(headers), "exactly one credential header"
    assert GATEWAY_KEY not in str(headers), "the client's gateway key is never forwarded"


async def test_upstream_400_passes_through(gw: Any, sdk: openai.AsyncOpenAI, upstream: Any,
                                           flavour: Flavour) -> None:
    message = "Invalid value: 'ultra'. Supported values are: 'low', 'medium', 'high', and 'auto'."
    upstream.script(flavour.upstream_model("openai/gpt-image-1"),
                    flavour.error(400, "invalid_value", message, param="quality"))
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.images.generate(model="openai/gpt-image-1", prompt=PROMPT)
    err = caught.value.body
    assert (err["message"], err["type"], err["param"], err["code"]) == (
        message, "invalid_request_error", "quality", "invalid_value")
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(upstream.received) == 1


async def test_safety_block_is_final_and_openai_shaped(gw: Any, upstream: Any, flavour: Flavour) -> None:
    upstream.script(flavour.upstream_model("openai/gpt-image-1"), flavour.moderation())
    status, body, resp = await post(gw)
    assert status == 400
    assert (body["error"]["type"], body["error"]["code"]) == ("image_generation_user_error", "moderation_blocked")
    assert "safety system" in body["error"]["message"]
    assert resp.headers["x-should-retry"] == "false"
    assert len(upstream.received) == 1, "a safety block is never retried"


async def test_429_maps_to_rate_limit_with_retry_after(gw: Any, sdk: openai.AsyncOpenAI, upstream: Any,
                                                       flavour: Flavour) -> None:
    upstream.script(flavour.upstream_model("openai/gpt-image-1"), flavour.rate_limited(7, header=True))
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.images.generate(model="openai/gpt-image-1", prompt=PROMPT)
    err = caught.value.body
    assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded")
    assert caught.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors(gw: Any, sdk: openai.AsyncOpenAI, upstream: Any, flavour: Flavour,
                             status: int) -> None:
    upstream.script(flavour.upstream_model("openai/gpt-image-1"),
                    flavour.error(status, None, "The server had an error while processing your request."))
    with pytest.raises(openai.InternalServerError) as caught:
        await sdk.images.generate(model="openai/gpt-image-1", prompt=PROMPT)
    assert caught.value.status_code == 502
    assert caught.value.body["type"] == "server_error"
    [attempt] = caught.value.response.json()["extra"]["routing"]["attempts"]
    assert (attempt["status"], attempt["http_status"], attempt["provider"]) == ("failed", status, flavour.plugin)


async def test_timeout(aiohttp_client: Callable[..., Any], upstream: Any, flavour: Flavour) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    upstream.script(flavour.upstream_model("openai/gpt-image-1"), block(started, release))
    config = parse_config(flavour.config(upstream.base, "max_attempts_per_target: 1, attempt_timeout_s: 0.3"),
                          env={})
    gw = await aiohttp_client(create_app(config))
    try:
        status, body, _ = await post(gw)
    finally:
        release.set()
    assert started.is_set()
    assert status in (502, 504), body
    [attempt] = body["extra"]["routing"]["attempts"]
    assert (attempt["status"], attempt["error_code"]) == ("timeout", "timeout")


async def test_upstream_key_never_reaches_the_client(gw: Any, upstream: Any, flavour: Flavour) -> None:
    async def echo_credential(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        received = request.headers.get("api-key") or request.headers.get("Authorization", "")
        message = f"Incorrect API key provided: {received}. Access denied due to invalid subscription key."
        return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                            "code": "invalid_api_key", "param": None}}, status=401)

    upstream.script(flavour.upstream_model("openai/gpt-image-1"), echo_credential)
    resp = await gw.post("/v1/images/generations", headers=AUTH,
                         json={"model": "openai/gpt-image-1", "prompt": PROMPT})
    text = await resp.text()
    assert resp.status == 502, text
    assert flavour.secret in str(upstream.received[0].headers), "the fake did receive the key"
    assert flavour.secret not in text and flavour.secret not in str(dict(resp.headers))
    ok_resp = await gw.post("/v1/images/generations", headers=AUTH,
                            json={"model": "openai/gpt-image-1", "prompt": PROMPT})
    assert ok_resp.status == 200
    assert flavour.secret not in await ok_resp.text() and flavour.secret not in str(dict(ok_resp.headers))
