"""``Idempotency-Key`` in one process (the memory store): every rule of "Retries and
billing" (docs/retries-and-billing.md), through the real app and the real openai plugin against the fake upstream.

The rules follow the IETF draft (draft-ietf-httpapi-idempotency-key-header: a repeat gets the first
answer, a key reused with another payload is a 422, a request still being processed is a 409) and
Stripe's practice (keys kept 24 hours, a repeat gets the same status and body, 4xx answers too).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import AUTH, OTHER_KEY, eventually
from tests.fake_upstream import FakeUpstream, block, error, ok, streamed

BODY = {"model": "openai/gpt-image-1", "prompt": "A small red cube on a white background."}
URL = "/v1/images/generations"


def keyed(key: str, auth: dict[str, str] = AUTH) -> dict[str, str]:
    return {**auth, "Idempotency-Key": key}


async def post(client: Any, key: str, body: dict[str, Any] = BODY, auth: dict[str, str] = AUTH) -> Any:
    resp = await client.post(URL, json=body, headers=keyed(key, auth))
    return resp, await resp.read()


def generations(upstream: FakeUpstream) -> int:
    return len(upstream.received)


async def test_a_repeat_gets_the_first_answer_without_an_upstream_call(client: Any, upstream: FakeUpstream) -> None:
    key = str(uuid.uuid4())
    first, first_body = await post(client, key)
    assert first.status == 200 and "idempotent-replayed" not in first.headers
    again, again_body = await post(client, key)
    assert again.status == 200 and again.headers["idempotent-replayed"] == "true"
    assert again_body == first_body  # the same image, the same extra (attempts, cost)
    assert again.headers["x-upstream-request-id"] == first.headers["x-upstream-request-id"]
    assert again.headers["x-request-id"] != first.headers["x-request-id"]  # a request of its own
    assert again.headers["Content-Type"].startswith("application/json")
    assert generations(upstream) == 1
    # A request without a key is never a repeat.
    plain = await client.post(URL, json=BODY, headers=AUTH)
    assert plain.status == 200 and generations(upstream) == 2


async def test_the_sdk_sends_its_key_through_extra_headers(client: Any, upstream: FakeUpstream) -> None:
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=AUTH["Authorization"][7:],
                                  max_retries=0) as sdk:
        headers = {"Idempotency-Key": "order-1234"}
        first = await sdk.images.generate(model=BODY["model"], prompt=BODY["prompt"], extra_headers=headers)
        raw = await sdk.images.with_raw_response.generate(model=BODY["model"], prompt=BODY["prompt"],
                                                          extra_headers=headers)
        again = raw.parse()
    assert raw.headers["idempotent-replayed"] == "true"
    assert again.data[0].b64_json == first.data[0].b64_json and again.created == first.created
    assert generations(upstream) == 1


async def test_a_repeat_in_flight_waits_and_gets_the_same_answer(client: Any, upstream: FakeUpstream) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    upstream.script("gpt-image-1", block(started, release))
    first = asyncio.create_task(post(client, "k-wait"))
    await asyncio.wait_for(started.wait(), 10)
    repeats = [asyncio.create_task(post(client, "k-wait")) for _ in range(3)]
    await asyncio.sleep(0.2)
    assert not any(r.done() for r in repeats)  # waiting, not refused, not generating
    release.set()
    (resp, body), *answers = await asyncio.gather(first, *repeats)
    assert resp.status == 200
    for again, again_body in answers:
        assert again.status == 200 and again.headers["idempotent-replayed"] == "true" and again_body == body
    assert generations(upstream) == 1


async def test_a_repeat_that_waits_past_wait_s_is_a_409(make_client: Any, upstream: FakeUpstream) -> None:
    client = await make_client("idempotency: {wait_s: 0.2}\n")
    started, release = asyncio.Event(), asyncio.Event()
    upstream.script("gpt-image-1", block(started, release))
    first = asyncio.create_task(post(client, "k-slow"))
    await asyncio.wait_for(started.wait(), 10)
    resp, body = await post(client, "k-slow")
    assert resp.status == 409 and resp.headers["retry-after"] == "5"
    assert json.loads(body)["error"]["code"] == "idempotency_key_in_flight"
    release.set()
    assert (await first)[0].status == 200
    again, _ = await post(client, "k-slow")  # after the first answered: its answer
    assert again.headers["idempotent-replayed"] == "true" and generations(upstream) == 1


async def test_the_same_key_with_another_request_is_a_422(client: Any, upstream: FakeUpstream) -> None:
    await post(client, "k-reused")
    resp, body = await post(client, "k-reused", {**BODY, "prompt": "A blue sphere."})
    error_object = json.loads(body)["error"]
    assert resp.status == 422
    assert error_object["code"] == "idempotency_key_reused" and error_object["param"] == "Idempotency-Key"
    assert error_object["type"] == "invalid_request_error"
    assert generations(upstream) == 1
    # The same bytes are the same request; a reordered object is another (the fingerprint is the body's).
    resp, _ = await post(client, "k-reused", {"prompt": BODY["prompt"], "model": BODY["model"]})
    assert resp.status == 422


async def test_keys_are_scoped_per_gateway_key_and_route(client: Any, upstream: FakeUpstream) -> None:
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    mini = {**BODY, "model": "openai/gpt-image-1-mini"}
    assert (await post(client, "shared", mini))[0].status == 200
    resp, _ = await post(client, "shared", mini, auth=other)  # another key's "shared": its own
    assert resp.status == 200 and "idempotent-replayed" not in resp.headers
    edit = await client.post("/v1/images/edits", headers=keyed("shared"), json={
        **mini, "images": [{"image_url": "data:image/png;base64," + base64.b64encode(_png()).decode()}]})
    assert edit.status == 200 and "idempotent-replayed" not in edit.headers  # another route
    assert generations(upstream) == 3


@pytest.mark.parametrize("value", ["", "a" * 256, "two words", "caf\u00e9", "k;v", '"unterminated'])
async def test_a_malformed_or_over_long_key_is_a_400(client: Any, upstream: FakeUpstream, value: str) -> None:
    resp = await client.post(URL, json=BODY, headers={**AUTH, "Idempotency-Key": value.encode().decode("latin-1")})
    error_object = (await resp.json())["error"]
    assert resp.status == 400 and error_object["code"] == "invalid_idempotency_key"
    assert error_object["param"] == "Idempotency-Key" and generations(upstream) == 0


async def test_a_quoted_key_is_the_same_key(client: Any, upstream: FakeUpstream) -> None:
    await post(client, "abc-123")
    resp, _ = await post(client, '"abc-123"')  # the draft's sf-string form
    assert resp.headers["idempotent-replayed"] == "true" and generations(upstream) == 1
    long_key = "x" * 255
    assert (await post(client, long_key))[0].status == 200


async def test_a_client_error_is_kept_and_repeated(client: Any, upstream: FakeUpstream) -> None:
    bad = {**BODY, "n": 0}
    first, first_body = await post(client, "k-bad", bad)
    assert first.status == 400 and json.loads(first_body)["error"]["param"] == "n"
    again, again_body = await post(client, "k-bad", bad)
    assert again.status == 400 and again.headers["idempotent-replayed"] == "true" and again_body == first_body
    # An upstream's refusal of the request (its content policy) is kept too.
    upstream.script("gpt-image-1", error(400, "moderation_blocked", "Your request was rejected by the safety system."))
    first, first_body = await post(client, "k-refused")
    again, again_body = await post(client, "k-refused")
    assert (first.status, again.status) == (400, 400) and again_body == first_body
    assert generations(upstream) == 1


async def test_a_failure_after_which_nothing_was_billed_is_not_kept(make_client: Any, upstream: FakeUpstream) -> None:
    client = await make_client("router: {max_attempts_per_target: 1}\n")
    # The upstream refused at once (an overloaded engine answers 503 before generating anything).
    upstream.script("gpt-image-1", error(503, message="The engine is currently overloaded."))
    first, _ = await post(client, "k-retry")
    assert first.status == 502
    again, _ = await post(client, "k-retry")  # the key was let go: the retry runs, and succeeds
    assert again.status == 200 and "idempotent-replayed" not in again.headers
    assert generations(upstream) == 2
    replay, _ = await post(client, "k-retry")
    assert replay.headers["idempotent-replayed"] == "true"


async def test_the_gateways_own_refusal_before_any_call_is_not_kept(aiohttp_client: Any, upstream: FakeUpstream
                                                                     ) -> None:
    from gateway.app import create_app
    from gateway.config_load import parse_config
    from tests.limits_config import AUTH as LIMITED, limits_yaml
    config = parse_config(limits_yaml(upstream.url, "{concurrent_requests: 1}"), env={})
    client = await aiohttp_client(create_app(config))
    started, release = asyncio.Event(), asyncio.Event()
    upstream.script("gpt-image-1", block(started, release))
    first = asyncio.create_task(post(client, "k-holds-the-slot", auth=LIMITED))
    await asyncio.wait_for(started.wait(), 10)
    refused, body = await post(client, "k-limited", auth=LIMITED)
    assert refused.status == 429 and json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    release.set()
    assert (await first)[0].status == 200
    again, _ = await post(client, "k-limited", auth=LIMITED)  # the key was let go: it runs now
    assert again.status == 200 and "idempotent-replayed" not in again.headers
    assert generations(upstream) == 2


def test_what_is_kept() -> None:
    from gateway.idempotency import keeps
    assert keeps(200, 0) and keeps(400, 0) and keeps(404, 0) and keeps(422, 0)
    assert not keeps(429, 0) and not keeps(408, 0) and not keeps(503, 0) and not keeps(500, 0)
    assert keeps(502, 1) and keeps(504, 1) and keeps(429, 1)  # after a possibly billed attempt: always


async def test_answers_expire_after_ttl_s(make_client: Any, upstream: FakeUpstream) -> None:
    client = await make_client("idempotency: {ttl_s: 0.3}\n")
    await post(client, "k-ttl")
    assert (await post(client, "k-ttl"))[0].headers["idempotent-replayed"] == "true"
    await asyncio.sleep(0.4)
    resp, _ = await post(client, "k-ttl")
    assert "idempotent-replayed" not in resp.headers and generations(upstream) == 2


async def test_an_answer_over_max_answer_bytes_is_never_generated_twice(make_client: Any, upstream: FakeUpstream) -> None:
    client = await make_client("idempotency: {max_answer_bytes: 4096}\n")
    big = base64.b64encode(b"\x89PNG" + b"\0" * 6000).decode()
    upstream.script("gpt-image-1", ok(big))
    first, first_body = await post(client, "k-big")
    assert first.status == 200 and json.loads(first_body)["data"][0]["b64_json"] == big
    again, body = await post(client, "k-big")
    error_object = json.loads(body)["error"]
    assert again.status == 409 and error_object["code"] == "idempotency_answer_not_kept"
    assert again.headers["x-should-retry"] == "false"
    assert generations(upstream) == 1


async def test_the_total_bound_keeps_notes_then_refuses_new_keys(make_client: Any, upstream: FakeUpstream) -> None:
    client = await make_client("idempotency: {max_total_bytes: 1048576}\n")
    big = base64.b64encode(b"\x89PNG" + b"\0" * 450_000).decode()  # 600 KB of base64
    upstream.script("gpt-image-1", ok(big), ok(big))
    assert (await post(client, "k-one"))[0].status == 200
    assert (await post(client, "k-two"))[0].status == 200  # answered, but no room left to keep it
    assert (await post(client, "k-one"))[0].headers["idempotent-replayed"] == "true"
    resp, body = await post(client, "k-two")
    assert resp.status == 409 and json.loads(body)["error"]["code"] == "idempotency_answer_not_kept"
    assert generations(upstream) == 2
    # Small answers fill the rest; then a new key is refused (503) rather than run unguarded.
    codes = []
    for i in range(1000):
        resp, body = await post(client, f"k-small-{i}", {**BODY, "n": 0})
        if resp.status != 400:
            codes.append((resp.status, json.loads(body)["error"]["code"]))
            break
    assert codes == [(503, "idempotency_store_full")]


async def test_a_client_that_leaves_does_not_cancel_its_keyed_request(make_client: Any, upstream: FakeUpstream,
                                                                      tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    client = await make_client(f"log: {{destination: '{log}'}}\n")
    started, release = asyncio.Event(), asyncio.Event()
    upstream.script("gpt-image-1", block(started, release))
    first = asyncio.create_task(client.session.post(client.make_url(URL), json=BODY, headers=keyed("k-left")))
    await asyncio.wait_for(started.wait(), 10)
    first.cancel()  # the client times out and hangs up
    await asyncio.sleep(0.2)
    assert upstream.cancelled == 0 and upstream.in_progress == 1  # still generating
    repeat = asyncio.create_task(post(client, "k-left"))  # its retry waits for it
    await asyncio.sleep(0.1)
    release.set()
    resp, body = await repeat
    assert resp.status == 200 and resp.headers["idempotent-replayed"] == "true"
    assert json.loads(body)["data"][0]["b64_json"]
    assert generations(upstream) == 1
    # The request that lost its client is logged once it ends: 499, with its attempt and cost.
    assert await eventually(lambda: log.exists() and len(log.read_text().splitlines()) == 2)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    left = next(line for line in lines if line["status"] == 499)
    assert left["idempotency"] == "new" and left["attempts"] == 1 and left["cost_usd"] > 0
    assert next(line for line in lines if line["status"] == 200)["idempotency"] == "replayed"


async def test_a_streamed_answer_is_replayed_as_its_completed_events(client: Any, upstream: FakeUpstream) -> None:
    body = {**BODY, "stream": True, "partial_images": 2}
    first = await client.post(URL, json=body, headers=keyed("k-stream"))
    first_text = (await first.read()).decode()
    assert first_text.count("event: image_generation.partial_image") == 2
    again = await client.post(URL, json=body, headers=keyed("k-stream"))
    text = (await again.read()).decode()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["Content-Type"].startswith("text/event-stream")
    assert "partial_image" not in text and text.count("event: image_generation.completed") == 1
    completed = first_text[first_text.index("event: image_generation.completed"):]
    assert text == completed  # the completed event as it was sent, extra included
    assert generations(upstream) == 1


async def test_the_sdk_reads_a_replayed_stream(client: Any, upstream: FakeUpstream) -> None:
    async with openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=AUTH["Authorization"][7:],
                                  max_retries=0) as sdk:
        headers = {"Idempotency-Key": "k-sdk-stream"}
        for _ in range(2):
            stream = await sdk.images.generate(model=BODY["model"], prompt=BODY["prompt"], stream=True,
                                               partial_images=1, extra_headers=headers)
            events = [event async for event in stream]
            assert events[-1].type == "image_generation.completed" and events[-1].b64_json
    assert generations(upstream) == 1


async def test_a_stream_whose_client_left_is_read_to_its_end_for_the_repeat(client: Any, upstream: FakeUpstream) -> None:
    upstream.script("gpt-image-1", streamed(pause_s=0.3))
    body = {**BODY, "stream": True, "partial_images": 2}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url(URL), json=body, headers=keyed("k-stream-left"))
        await resp.content.readuntil(b"\n\n")  # the first partial image, then the client leaves
        resp.close()
    assert await eventually(lambda: upstream.in_progress == 0)
    assert upstream.cancelled == 0  # read to its end
    again = await client.post(URL, json=body, headers=keyed("k-stream-left"))
    text = (await again.read()).decode()
    assert again.headers["idempotent-replayed"] == "true" and "event: image_generation.completed" in text
    assert generations(upstream) == 1


async def test_an_edits_fingerprint_covers_its_files(client: Any, upstream: FakeUpstream) -> None:
    def form(image: bytes) -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("model", "openai/gpt-image-1")
        data.add_field("prompt", "Add a hat.")
        data.add_field("image[]", image, filename="a.png", content_type="image/png")
        return data
    first = await client.post("/v1/images/edits", data=form(_png()), headers=keyed("k-edit"))
    first_body = await first.read()
    again = await client.post("/v1/images/edits", data=form(_png()), headers=keyed("k-edit"))
    assert again.status == 200 and again.headers["idempotent-replayed"] == "true"
    assert await again.read() == first_body
    other = await client.post("/v1/images/edits", data=form(_png(colour=(200, 0, 0))), headers=keyed("k-edit"))
    assert other.status == 422 and (await other.json())["error"]["code"] == "idempotency_key_reused"
    assert generations(upstream) == 1


async def test_the_feature_can_be_turned_off(make_client: Any, upstream: FakeUpstream) -> None:
    client = await make_client("idempotency: {enabled: false}\n")
    await post(client, "k-off")
    resp, _ = await post(client, "k-off")
    assert "idempotent-replayed" not in resp.headers and generations(upstream) == 2


def _png(colour: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    import io

    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, format="PNG")
    return out.getvalue()
