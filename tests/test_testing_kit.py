"""The plugin authors' test kit (gateway.testing) on the built-in ``openai`` plugin: the fake
upstream speaks OpenAI's images API, and the contract suite runs as a third party's would."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.testing import FakeUpstream, ProviderContract, bytes_reply, hang, json_reply, png_bytes

KEY = "sk-kit-test-secret-0a1b2c3d4e5f"


def openai_images(n: int) -> dict[str, Any]:
    image = base64.b64encode(png_bytes(2, 2)).decode()
    return {"created": 1, "data": [{"b64_json": image} for _ in range(n)],
            "usage": {"input_tokens": 5, "output_tokens": 272 * n, "total_tokens": 5 + 272 * n}}


class TestOpenAIContract(ProviderContract):
    plugin = "openai"

    def settings(self, upstream: FakeUpstream) -> dict[str, Any]:
        return {"api_key": KEY, "base_url": upstream.url("/v1"), "models": ["openai/gpt-image-1"]}

    def script(self, upstream: FakeUpstream, model: str, kind: str, n: int) -> bool:
        path = "/v1/images/generations"
        # OpenAI's error bodies, as the API reference shows them; the 401 quotes part of the key,
        # as OpenAI's does ("Incorrect API key provided: sk-kit-t**********4e5f").
        answers = {
            "success": json_reply(openai_images(n)),
            "auth": json_reply({"error": {"message": f"Incorrect API key provided: {KEY[:8]}****{KEY[-4:]}.",
                                          "type": "invalid_request_error", "param": None,
                                          "code": "invalid_api_key"}}, status=401),
            "rate_limit": json_reply({"error": {"message": "Rate limit reached.", "type": "requests",
                                                "param": None, "code": "rate_limit_exceeded"}}, status=429,
                                     headers={"retry-after-ms": "1500"}),
            "server_error": json_reply({"error": {"message": "The server had an error.", "type": "server_error",
                                                  "param": None, "code": None}}, status=500),
            "refusal": json_reply({"error": {"message": "Your request was rejected by the safety system.",
                                             "type": "image_generation_user_error", "param": None,
                                             "code": "moderation_blocked"}}, status=400),
            "malformed": bytes_reply(b'{"created": 1, "data": "nope"}', content_type="application/json"),
            "hang": hang(),
        }
        upstream.script("POST", path, answers[kind])
        return True


async def test_fake_upstream_records_requests_and_refuses_unscripted_ones() -> None:
    from gateway.http_client import HTTPClient
    from gateway.provider import UpstreamHTTP

    client = HTTPClient()
    try:
        async with FakeUpstream() as upstream:
            upstream.script("POST", "/a", json_reply({"first": 1}), json_reply({"second": 2}, status=201))
            upstream.always("GET", "/b", bytes_reply(b"plain", content_type="text/plain"))
            http = UpstreamHTTP(client)
            first = await http.post_json(upstream.url("/a"), b'{"x":1}', {"X-Key": "k"}, upstream="T", timeout_s=5)
            second = await http.post_json(upstream.url("/a?q=1"), b"{}", {}, upstream="T", timeout_s=5)
            third = await http.post_json(upstream.url("/a"), b"{}", {}, upstream="T", timeout_s=5)
            fetched = await http.request("GET", upstream.url("/b"), upstream="T", timeout_s=5)
    finally:
        await client.close()
    assert (first.status, first.body, second.status, fetched.body) == (200, b'{"first":1}', 201, b"plain")
    assert third.status == 404 and b"no behaviour scripted for POST /a" in third.body
    sent = upstream.sent_to("/a")
    assert [r.query for r in sent] == [{}, {"q": "1"}, {}]
    assert sent[0].headers["x-key"] == "k" and sent[0].json() == {"x": 1}


def test_a_contract_failure_is_reported() -> None:
    """The suite can fail: a plugin whose refusal comes back as a plain 400 breaks it."""
    class Broken(TestOpenAIContract):
        def script(self, upstream: FakeUpstream, model: str, kind: str, n: int) -> bool:
            if kind == "refusal":
                upstream.script("POST", "/v1/images/generations", json_reply(
                    {"error": {"message": "Blocked.", "type": "invalid_request_error", "code": "bad_prompt"}},
                    status=400))
                return True
            return super().script(upstream, model, kind, n)

    with pytest.raises(AssertionError):
        Broken().test_contract_failures_map_to_what_the_router_needs("refusal")
