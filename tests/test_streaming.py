"""Streaming image generation (``stream: true``, ``partial_images``) through the real app, with the
official openai SDK (async and sync) as the client and the fake upstream speaking OpenAI's
Server-Sent Events on loopback: the event shapes, routing before the first event, failures after
it, a target that cannot stream, and the accounting that settles from the completed event.

The SDK's stream code (openai-python src/openai/_streaming.py) raises ``APIError`` with
``body=data["error"]`` on any event whose data holds an ``error`` member, and ends at the end of the
body (or a ``[DONE]`` data line): the gateway's error event is shaped for that.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import msgspec
import openai
import pytest
from PIL import Image

from gateway.router import NO_PARTIAL_IMAGES
from gateway.config import key_hash
from gateway.config_load import parse_config
from tests.conftest import AUTH, GATEWAY_KEY
from tests.fake_upstream import FakeUpstream, error, streamed
from tests.metrics_reading import scrape, total

PROMPT = "A small red cube on a white background."


def sdk(client: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=GATEWAY_KEY, max_retries=0)


async def collect(client: Any, **kwargs: Any) -> list[Any]:
    async with sdk(client) as api:
        stream = await api.images.generate(prompt=PROMPT, stream=True, **kwargs)
        return [event async for event in stream]


async def raw_events(client: Any, body: dict[str, Any]) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    """The stream as bytes on the wire, parsed as SSE (event name, JSON data)."""
    resp = await client.post("/v1/images/generations", json={"prompt": PROMPT, "stream": True, **body},
                             headers=AUTH)
    text = (await resp.read()).decode()
    events = []
    for block in text.split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((lines["event"], msgspec.json.decode(lines["data"])))
    return resp, events


async def test_the_sdk_streams_partial_images_then_the_completed_one(client: Any, upstream: FakeUpstream) -> None:
    events = await collect(client, model="openai/gpt-image-1", partial_images=2, size="1024x1024", quality="low")
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    done = events[-1]
    assert (done.size, done.quality, done.output_format) == ("1024x1024", "low", "png")
    assert done.usage.output_tokens == 1056 and done.usage.total_tokens == 1076
    extra = done.model_extra["extra"]
    assert [a["status"] for a in extra["routing"]["attempts"]] == ["succeeded"]
    assert extra["usage"]["cost_usd"] > 0
    # The upstream was asked to stream, with the partial images, and its base64 came back as it was.
    sent = upstream.received[-1].body
    assert (sent["stream"], sent["partial_images"], sent["model"]) == (True, 2, "gpt-image-1")
    assert "extra" not in sent and "fallbacks" not in sent
    assert base64.b64decode(done.b64_json).startswith(b"\x89PNG")


async def test_the_wire_format(client: Any) -> None:
    resp, events = await raw_events(client, {"model": "openai/gpt-image-1", "partial_images": 1})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["x-request-id"]
    assert [name for name, _ in events] == ["image_generation.partial_image", "image_generation.completed"]
    partial, completed = (data for _, data in events)
    assert set(partial) == {"type", "b64_json", "partial_image_index", "created_at", "size", "quality",
                            "background", "output_format"}
    assert set(completed) == {"type", "b64_json", "created_at", "size", "quality", "background",
                              "output_format", "usage", "extra"}


async def test_the_sync_sdk_streams_in_a_thread(client: Any) -> None:
    def run() -> list[str]:
        with openai.OpenAI(base_url=str(client.make_url("/v1")), api_key=GATEWAY_KEY, max_retries=0) as api:
            stream = api.images.generate(model="openai/gpt-image-1", prompt=PROMPT, stream=True, partial_images=1)
            return [event.type for event in stream]
    assert await asyncio.to_thread(run) == ["image_generation.partial_image", "image_generation.completed"]


async def test_the_offline_provider_streams_progressive_renders(make_client: Any) -> None:
    client = await make_client(config=parse_config(f"""
keys: [{{name: t, hash: "{key_hash(GATEWAY_KEY)}"}}]
providers: [{{id: local, plugin: local, region: local}}]
""", env={}))
    events = await collect(client, model="openai/gpt-image-2", partial_images=3, size="1024x1024", quality="low")
    assert [e.type for e in events] == ["image_generation.partial_image"] * 3 + ["image_generation.completed"]
    final = _image(events[-1].b64_json).convert("RGB")
    partials = [_image(e.b64_json).convert("RGB") for e in events[:3]]
    assert all(p.size == final.size == (1024, 1024) for p in partials)

    def distance(a: Image.Image, b: Image.Image) -> float:
        small_a, small_b = a.resize((64, 64)), b.resize((64, 64))
        return sum(abs(x - y) for pa, pb in zip(small_a.get_flattened_data(), small_b.get_flattened_data())
                   for x, y in zip(pa, pb)) / (64 * 64 * 3)
    distances = [distance(p, final) for p in partials]
    assert distances == sorted(distances, reverse=True) and distances[0] > distances[-1]  # sharper each time
    assert final.getpixel((5, 5)) == (255, 255, 255)  # the white background of the prompt
    usage = events[-1].usage
    assert usage.output_tokens == 196 + 3 * 100  # gpt-image-2 low at 1024x1024, plus 100 a partial image
    assert events[-1].model_extra["extra"]["routing"]["attempts"][0]["provider"] == "local"


async def test_a_failure_before_the_first_event_falls_back(make_client: Any, upstream: FakeUpstream) -> None:
    client = await make_client("""
router: {max_attempts_per_target: 1}
models:
  openai/gpt-image-1: {targets: [openai-main], fallbacks: [openai/gpt-image-1-mini]}
  openai/gpt-image-1-mini: {targets: [openai-main]}
""")
    upstream.script("gpt-image-1", error(503, message="The engine is currently overloaded."))
    events = await collect(client, model="openai/gpt-image-1", partial_images=1)
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    attempts = events[-1].model_extra["extra"]["routing"]["attempts"]
    assert [(a["model"], a["status"]) for a in attempts] == [("openai/gpt-image-1", "failed"),
                                                              ("openai/gpt-image-1-mini", "succeeded")]


async def test_an_invalid_first_event_falls_back_and_each_event_is_checked_once(
        make_client: Any, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first event whose b64_json is not base64 is a failed attempt (the router reads it before
    the stream is committed), and every event's base64 is scanned once on its way through, not
    once by the plugin's helper and again by the gateway."""
    import gateway.upstream

    scanned: list[int] = []
    scan = gateway.upstream._outside_base64

    def counting(body: bytes, start: int, end: int) -> bytes:
        scanned.append(end - start)
        return scan(body, start, end)
    monkeypatch.setattr(gateway.upstream, "_outside_base64", counting)
    client = await make_client("""
router: {max_attempts_per_target: 1}
models:
  openai/gpt-image-1: {targets: [openai-main], fallbacks: [openai/gpt-image-1-mini]}
  openai/gpt-image-1-mini: {targets: [openai-main]}
""")
    upstream.script("gpt-image-1", streamed(b64="iVBORw0K*not-base64*"))
    events = await collect(client, model="openai/gpt-image-1", partial_images=1)
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    attempts = events[-1].model_extra["extra"]["routing"]["attempts"]
    assert [(a["model"], a["status"], a.get("error_code")) for a in attempts] == [
        ("openai/gpt-image-1", "failed", "invalid_upstream_response"), ("openai/gpt-image-1-mini", "succeeded", None)]
    assert len(scanned) == 3  # the refused first event, then the two events relayed


@pytest.mark.parametrize("failure", ["reset", "error event"])
async def test_a_failure_after_the_first_event_ends_the_stream_with_an_error(
        make_client: Any, upstream: FakeUpstream, failure: str) -> None:
    client = await make_client("""
models:
  openai/gpt-image-1: {targets: [openai-main], fallbacks: [openai/gpt-image-1-mini]}
  openai/gpt-image-1-mini: {targets: [openai-main]}
""")
    error_event = {"type": "error", "error": {"message": "The image could not be finished.", "type": "server_error",
                                              "param": None, "code": "server_error"}}
    upstream.script("gpt-image-1", streamed(fail_after=1, error_event=error_event if failure == "error event" else None))
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        async with sdk(client) as api:
            stream = await api.images.generate(model="openai/gpt-image-1", prompt=PROMPT, stream=True,
                                               partial_images=2)
            async for event in stream:
                seen.append(event.type)
    assert seen == ["image_generation.partial_image"]  # no fallback once the stream had begun
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "server_error"
    attempts = body["extra"]["routing"]["attempts"]
    assert [(a["model"], a["status"]) for a in attempts] == [("openai/gpt-image-1", "failed")]
    assert len(upstream.received) == 1  # the fallback model was never called


async def test_an_upstream_that_stalls_mid_stream_times_out(make_client: Any, upstream: FakeUpstream) -> None:
    client = await make_client("router: {attempt_timeout_s: 0.5}\n")
    upstream.script("gpt-image-1", streamed(hang_after=1))
    resp, events = await raw_events(client, {"model": "openai/gpt-image-1", "partial_images": 2})
    assert [name for name, _ in events] == ["image_generation.partial_image", "error"]
    err = events[-1][1]["error"]
    assert err["code"] == "timeout" and err["extra"]["routing"]["attempts"][0]["status"] == "timeout"


async def test_a_target_that_cannot_stream_sends_the_completed_event_and_says_why(
        make_client: Any, upstream: FakeUpstream) -> None:
    client = await make_client("""
models:
  openai/gpt-image-1:
    targets: [openai-main]
    capabilities: {sizes: [auto, 1024x1024], streaming: false}
""")
    events = await collect(client, model="openai/gpt-image-1", partial_images=2, n=2)
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    assert upstream.received[-1].body.get("stream") is None  # asked for a whole answer
    attempt = events[-1].model_extra["extra"]["routing"]["attempts"][0]
    assert attempt["notes"] == [NO_PARTIAL_IMAGES]
    # The answer's usage is on the last event only, so the sum over events counts it once.
    assert events[0].usage is None and events[1].usage.output_tokens == 2 * 1056


async def test_partial_images_without_stream_is_refused(client: Any) -> None:
    resp = await client.post("/v1/images/generations", headers=AUTH,
                             json={"model": "openai/gpt-image-1", "prompt": PROMPT, "partial_images": 2})
    body = await resp.json()
    assert resp.status == 400 and (body["error"]["param"], body["error"]["code"]) == ("partial_images", "invalid_value")
    resp = await client.post("/v1/images/generations", headers=AUTH, json={
        "model": "openai/gpt-image-1", "prompt": PROMPT, "stream": True, "partial_images": 4})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "integer_above_max_value"


async def test_streams_are_counted(client: Any, upstream: FakeUpstream) -> None:
    before = await scrape(client)
    await collect(client, model="openai/gpt-image-1", partial_images=3)
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)
    assert delta("opengateway_stream_partial_images_total", gen_ai_response_model="openai/gpt-image-1") == 3
    assert delta("opengateway_stream_first_event_seconds_count") == 1
    assert delta("opengateway_stream_duration_seconds_count") == 1
    assert delta("opengateway_images_generated_total", gen_ai_response_model="openai/gpt-image-1") == 1
    assert delta("opengateway_cost_usd_total") > 0


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


async def test_a_client_that_leaves_mid_stream_cancels_the_upstream_call(client: Any,
                                                                          upstream: FakeUpstream) -> None:
    from tests.conftest import eventually

    before = await scrape(client)
    upstream.script("gpt-image-1", streamed(hang_after=1))
    resp = await client.post("/v1/images/generations", headers=AUTH, json={
        "model": "openai/gpt-image-1", "prompt": PROMPT, "stream": True, "partial_images": 2})
    first = await resp.content.readuntil(b"\n\n")
    assert first.startswith(b"event: image_generation.partial_image")
    resp.close()  # the client goes away mid-stream
    assert await eventually(lambda: upstream.cancelled == 1), "the upstream call was not cancelled"
    after = await scrape(client)
    cancelled = total(after, "opengateway_upstream_attempts_total", outcome="cancelled") - total(
        before, "opengateway_upstream_attempts_total", outcome="cancelled")
    assert cancelled == 1  # the attempt says so
