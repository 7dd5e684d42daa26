"""Cost of every answer: the price table's arithmetic, pinned against figures computed by hand.

Token counts per size and quality are OpenAI's published gpt-image-1 figures (docs/openai-images-
contract.md); the fake upstream reports them in ``usage`` the way OpenAI does. Every expected
cost below was worked out by hand from gateway/data/models.yaml (USD per 1M tokens):
  gpt-image-1       text in 5,  image out 40
  gpt-image-1-mini  text in 2,  image out 8
  gpt-image-1.5     text in 5,  image out 32, text out 10, cached text in 1.25, image in 8
  gpt-image-2       text in 5,  image out 30
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from aiohttp import web

from gateway.api import InputTokensDetails, OutputTokensDetails, Usage
from gateway.catalog import openai_image_models
from gateway.cost import Tokens, model_cost, tokens_of
from tests.conftest import AUTH

OUTPUT_TOKENS = {
    ("low", "1024x1024"): 272, ("low", "1024x1536"): 408, ("low", "1536x1024"): 400,
    ("medium", "1024x1024"): 1056, ("medium", "1024x1536"): 1584, ("medium", "1536x1024"): 1568,
    ("high", "1024x1024"): 4160, ("high", "1024x1536"): 6240, ("high", "1536x1024"): 6208,
    ("low", "2048x1152"): 720,  # a gpt-image-2 flexible size; the count is the fake's choice
}
PROMPT_TOKENS = 20


def priced_reply() -> Any:
    """An upstream answer whose usage depends on the requested size, quality and n."""
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        n = body.get("n", 1)
        out = OUTPUT_TOKENS[(body["quality"], body["size"])] * n
        payload = {"created": 1, "data": [{"b64_json": "AAAA"} for _ in range(n)],
                   "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": out, "total_tokens": PROMPT_TOKENS + out,
                             "input_tokens_details": {"text_tokens": PROMPT_TOKENS, "image_tokens": 0},
                             "output_tokens_details": {"image_tokens": out, "text_tokens": 0}}}
        return web.Response(body=msgspec.json.encode(payload), content_type="application/json")
    return reply


# (model, quality, size, n, hand-computed USD: 20 text tokens in + image tokens out)
CASES = [
    ("gpt-image-1", "low", "1024x1024", 1, 0.01098),        # 20*5 + 272*40 = 100 + 10880 per 1M
    ("gpt-image-1", "medium", "1024x1536", 1, 0.06346),     # 100 + 1584*40=63360
    ("gpt-image-1", "high", "1536x1024", 1, 0.24842),       # 100 + 6208*40=248320
    ("gpt-image-1", "medium", "1024x1024", 2, 0.08458),     # 100 + 2112*40=84480
    ("gpt-image-1-mini", "low", "1024x1024", 1, 0.002216),  # 20*2=40 + 272*8=2176
    ("gpt-image-1-mini", "medium", "1024x1024", 1, 0.008488),  # 40 + 8448
    ("gpt-image-1-mini", "high", "1024x1536", 1, 0.04996),  # 40 + 6240*8=49920
    ("gpt-image-1.5", "low", "1024x1024", 1, 0.008804),     # 100 + 272*32=8704
    ("gpt-image-1.5", "medium", "1536x1024", 1, 0.050276),  # 100 + 1568*32=50176
    ("gpt-image-1.5", "high", "1024x1024", 1, 0.13322),     # 100 + 4160*32=133120
    ("gpt-image-2", "medium", "1024x1024", 1, 0.03178),     # 100 + 1056*30=31680
    ("gpt-image-2", "high", "1536x1024", 1, 0.18634),       # 100 + 6208*30=186240
    ("gpt-image-2", "low", "2048x1152", 1, 0.0217),         # 100 + 720*30=21600
]


@pytest.mark.parametrize(("model", "quality", "size", "n", "expected_usd"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-n{c[3]}" for c in CASES])
async def test_cost_in_the_response(upstream: Any, make_client: Any, model: str, quality: str, size: str,
                                    n: int, expected_usd: float) -> None:
    upstream.script(model, priced_reply())
    client = await make_client()
    resp = await client.post("/v1/images/generations", headers=AUTH, json={
        "model": f"openai/{model}", "prompt": "A small red cube.", "size": size, "quality": quality, "n": n})
    assert resp.status == 200, await resp.text()
    usage = (await resp.json())["extra"]["usage"]
    assert usage["cost_usd"] == expected_usd
    assert usage["price_source"] == "bundled"
    assert sum(usage["cost_usd_details"].values()) == pytest.approx(expected_usd, abs=1e-12)
    assert set(usage["cost_usd_details"]) == {"text_input", "image_output"}
    assert "reason" not in usage


def test_every_token_kind_is_priced() -> None:
    # gpt-image-1.5: 100 text in of which 40 cached, 500 image in, 50 text out, 1056 image out.
    usage = Usage(input_tokens=600, output_tokens=1106, total_tokens=1706,
                  input_tokens_details=InputTokensDetails(text_tokens=100, image_tokens=500, cached_tokens=40),
                  output_tokens_details=OutputTokensDetails(image_tokens=1056, text_tokens=50))
    price = openai_image_models()["openai/gpt-image-1.5"].price
    tokens, cost = model_cost(usage, price, "bundled", "openai/gpt-image-1.5")
    assert tokens == Tokens(text_input=60, cached_text_input=40, image_input=500, cached_image_input=0,
                            text_output=50, image_output=1056)
    assert cost.cost_usd_details == {"text_input": 0.0003,        # 60*5
                                     "cached_text_input": 0.00005,  # 40*1.25
                                     "image_input": 0.004,          # 500*8
                                     "text_output": 0.0005,         # 50*10
                                     "image_output": 0.033792}      # 1056*32
    assert cost.cost_usd == 0.038642


def test_usage_without_details_is_text_in_and_image_out() -> None:
    assert tokens_of(Usage(input_tokens=20, output_tokens=1056)) == Tokens(text_input=20, image_output=1056)
    # Cached tokens beyond the text tokens are image tokens.
    details = InputTokensDetails(text_tokens=10, image_tokens=30, cached_tokens=25)
    assert tokens_of(Usage(input_tokens=40, input_tokens_details=details)) == Tokens(
        text_input=0, cached_text_input=10, image_input=15, cached_image_input=15)


def test_a_token_kind_without_a_rate_is_unknown_not_zero() -> None:
    price = openai_image_models()["openai/gpt-image-1"].price  # no text_output rate
    usage = Usage(input_tokens=20, output_tokens=1100,
                  output_tokens_details=OutputTokensDetails(image_tokens=1056, text_tokens=44))
    _, cost = model_cost(usage, price, "bundled", "openai/gpt-image-1")
    assert cost.cost_usd is None and cost.cost_usd_details is None
    assert cost.reason is not None and "text_output" in cost.reason


async def test_unpriced_model_and_missing_usage_are_unknown(upstream: Any, make_client: Any) -> None:
    async def no_usage(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"created": 1, "data": [{"b64_json": "AAAA"}]})

    client = await make_client("""
models:
  acme/painter:
    targets: [openai-main]
    capabilities: {}  # the openai plugin does not know this model: the operator vouches for it
  openai/gpt-image-1:
    targets: [openai-main]
""")
    resp = await client.post("/v1/images/generations", headers=AUTH,
                             json={"model": "acme/painter", "prompt": "A cube."})
    assert resp.status == 200, await resp.text()
    usage = (await resp.json())["extra"]["usage"]
    assert usage["cost_usd"] is None and usage["cost_usd_details"] is None
    assert "no price" in usage["reason"] and "acme/painter" in usage["reason"]

    upstream.script("gpt-image-1", no_usage)
    resp = await client.post("/v1/images/generations", headers=AUTH,
                             json={"model": "openai/gpt-image-1", "prompt": "A cube."})
    usage = (await resp.json())["extra"]["usage"]
    assert usage["cost_usd"] is None and usage["reason"] == "the upstream reported no usage"


async def test_operator_price_overrides_the_table(upstream: Any, make_client: Any) -> None:
    upstream.script("gpt-image-1", priced_reply())
    client = await make_client("""
models:
  openai/gpt-image-1:
    targets: [openai-main]
    price: {text_input: 1.0, image_output: 20.0}
""")
    resp = await client.post("/v1/images/generations", headers=AUTH, json={
        "model": "openai/gpt-image-1", "prompt": "A cube.", "size": "1024x1024", "quality": "medium"})
    usage = (await resp.json())["extra"]["usage"]
    assert usage["price_source"] == "config"
    assert usage["cost_usd"] == 0.02114  # 20*1 + 1056*20 = 20 + 21120 per 1M
