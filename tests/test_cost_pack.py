"""The cost pack: real ``usage`` bodies reported for each bundled model, priced through the app.

Each body is sent by the fake upstream exactly as it was published (an answer's ``usage``), and
the gateway's ``extra.usage.cost_usd`` must be the figure worked out by hand beside it, at the
bundled rates (USD per 1M tokens; gateway/data/models.yaml):
  gpt-image-1     text in 5, image in 10, image out 40
  gpt-image-1-mini text in 2, image in 2.5, image out 8
  gpt-image-1.5   text in 5, image in 8, text out 10, image out 32
  gpt-image-2     text in 5, image in 8, text out 10, image out 30
  gpt-image-2.5   text in 5, image in 8, image out 30 (text out unpublished)
A dated snapshot is priced like its alias. A model without a price, and a usage that does not
add up, is ``null`` with a reason: never 0, never negative.

Where the notes/catalogue.md research found a body only through a code index (no public URL), the
comment says so and names the notes' entry; those sources are REPORTED, not first-party.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import pytest
from aiohttp import web

from gateway.catalog import openai_image_models
from tests.conftest import AUTH


class Priced(NamedTuple):
    case: str
    model: str
    usage: dict[str, Any]
    #: The hand-worked cost; None: unknown, with ``reason`` contained in the answer's reason.
    cost_usd: float | None
    reason: str | None = None
    images: int = 1


U1 = {"input_tokens": 219, "input_tokens_details": {"image_tokens": 194, "text_tokens": 25}, "output_tokens": 272,
      "total_tokens": 491}
U3 = {"input_tokens": 48, "input_tokens_details": {"image_tokens": 0, "text_tokens": 48}, "output_tokens": 481,
      "total_tokens": 529, "output_tokens_details": {"image_tokens": 272, "text_tokens": 209}}
U5 = {"input_tokens": 81, "input_tokens_details": {"image_tokens": 0, "text_tokens": 81}, "output_tokens": 1756,
      "output_tokens_details": {"image_tokens": 1756, "text_tokens": 0}, "total_tokens": 1837}
U10 = {"total_tokens": 216, "input_tokens": 20, "output_tokens": 196,
       "input_tokens_details": {"text_tokens": 20, "image_tokens": 0, "cached_tokens": 0},
       "output_tokens_details": {"text_tokens": 0, "image_tokens": 196}}

PACK: list[Priced] = [
    # U1, a gpt-image-1 edit (1024x1025 input: 194 image tokens, one tile; 272 out: low 1024x1024),
    # printed by the SDK without output_tokens_details: all output is image.
    # https://community.openai.com/t/vision-pricing-calculator-inaccurate-resizing-rounding-vs-api-costs/1281361
    Priced("U1 gpt-image-1 edit", "gpt-image-1", U1, 0.012945),  # 25*5 + 194*10 + 272*40 = 12945 per 1M
    # U2, a generation at high 1024x1024 (4160 out); the page does not name the model, and 4160 is
    # gpt-image-1's (and -1.5's) count: priced as gpt-image-1. A Chinese API doc's "OpenAI example",
    # found through a code index only (notes/catalogue.md section 7, U2).
    Priced("U2 gpt-image-1 high", "gpt-image-1",
           {"input_tokens": 52, "input_tokens_details": {"image_tokens": 0, "text_tokens": 52}, "output_tokens": 4160,
            "total_tokens": 4212}, 0.16666),  # 52*5 + 4160*40 = 166660
    # U3: gpt-image-1.5 bills text output tokens (209 on a low image).
    # https://community.openai.com/t/gpt-image-1-5-images-api-returns-text-output-tokens-can-we-disable-this/1369511
    Priced("U3 gpt-image-1.5 text out", "gpt-image-1.5", U3, 0.011034),  # 48*5 + 209*10 + 272*32 = 11034
    Priced("U3 as the 1.5 snapshot", "gpt-image-1.5-2025-12-16", U3, 0.011034),
    # U4: gpt-image-1-mini, quality auto, 1:1, as log lines ("Input text token count: 12 Input image
    # token count: 0 Output token count: 4160"), put in OpenAI's shape here.
    # https://cloudernative.com/ai-models/model/openai/gpt-image-1-mini
    Priced("U4 gpt-image-1-mini auto", "gpt-image-1-mini",
           {"input_tokens": 12, "input_tokens_details": {"text_tokens": 12, "image_tokens": 0}, "output_tokens": 4160,
            "total_tokens": 4172}, 0.033304),  # 12*2 + 4160*8 = 33304
    # U5: gpt-image-2, 1024x1024 medium (1756, the calculator's figure). A relay's docs example,
    # through a code index only (notes/catalogue.md section 7, U5).
    Priced("U5 gpt-image-2 medium", "gpt-image-2", U5, 0.053085),  # 81*5 + 1756*30 = 53085
    Priced("U5 as the gpt-image-2 snapshot", "gpt-image-2-2026-04-21", U5, 0.053085),
    # U6: gpt-image-2 high 1024x1024 (7024), "a measured response" (notes/catalogue.md section 7, U6).
    Priced("U6 gpt-image-2 high", "gpt-image-2",
           {"input_tokens": 187, "output_tokens": 7024, "total_tokens": 7211,
            "input_tokens_details": {"text_tokens": 187, "image_tokens": 0},
            "output_tokens_details": {"text_tokens": 0, "image_tokens": 7024}}, 0.211655),  # 935 + 210720
    # U7: no details at all (a project README's "Response (image data elided)", notes section 7, U7):
    # input read as text, output as image.
    Priced("U7 gpt-image-2 without details", "gpt-image-2",
           {"input_tokens": 22, "output_tokens": 7024, "total_tokens": 7046}, 0.21083),  # 110 + 210720
    # U8: through a relay's predictions API (notes section 7, U8).
    Priced("U8 gpt-image-2 high via a relay", "gpt-image-2",
           {"input_tokens": 37, "input_tokens_details": {"image_tokens": 0, "text_tokens": 37}, "output_tokens": 7024,
            "output_tokens_details": {"image_tokens": 7024, "text_tokens": 0}, "total_tokens": 7061}, 0.210905),
    # U9: Azure's shape, details present but with keys missing (a test that "locks the measured
    # Azure Images usage shape", notes section 7, U9); the parts still add up. At OpenAI's rates
    # (bundled for Azure unless configured).
    Priced("U9 gpt-image-2 Azure shape", "gpt-image-2",
           {"input_tokens": 19, "output_tokens": 196, "total_tokens": 215, "input_tokens_details": {"text_tokens": 19},
            "output_tokens_details": {"image_tokens": 196}}, 0.005975),  # 19*5 + 196*30 = 5975
    # U11: a gpt-image-2 edit (1508 input image tokens); a test plan's fixture, not confirmed as a
    # real answer (notes section 7, U11): the only gpt-image-2 edit body found.
    Priced("U11 gpt-image-2 edit", "gpt-image-2",
           {"input_tokens": 1518, "input_tokens_details": {"image_tokens": 1508, "text_tokens": 10},
            "output_tokens": 196, "output_tokens_details": {"image_tokens": 196, "text_tokens": 0},
            "total_tokens": 1714}, 0.017994),  # 10*5 + 1508*8 + 196*30 = 17994
    # U10: gpt-image-2.5 low 1024x1024 (196), "a measured response" through a relay, with
    # cached_tokens inside input_tokens_details (notes section 7, U10).
    Priced("U10 gpt-image-2.5-sunburst", "gpt-image-2.5-sunburst", U10, 0.00598),  # 100 + 5880
    Priced("U10 as gpt-image-2.5-flare", "gpt-image-2.5-flare", U10, 0.00598),
    Priced("U10 as the sunburst snapshot", "gpt-image-2.5-sunburst-2026-09-08", U10, 0.00598),
    Priced("U10 as the flare snapshot", "gpt-image-2.5-flare-2026-09-08", U10, 0.00598),
    # gpt-image-2.5's text output rate is unpublished: such tokens make the cost unknown, not free.
    Priced("gpt-image-2.5 text out has no rate", "gpt-image-2.5-flare", U3, None, "no text_output rate"),
    # chatgpt-image-latest: no published price (served like gpt-image-1.5, reportedly).
    Priced("chatgpt-image-latest unpriced", "chatgpt-image-latest", U3, None,
           "no price is configured for the model 'openai/chatgpt-image-latest'"),
    # Bodies that do not add up (derived from U7 and U9): unknown with the reason, never 0 or less.
    Priced("input details present but empty", "gpt-image-2",
           {"input_tokens": 19, "output_tokens": 196, "total_tokens": 215, "input_tokens_details": {}}, None,
           "input_tokens_details (text_tokens + image_tokens = 0) do not add up to its input_tokens (19)"),
    Priced("output details present but empty", "gpt-image-2",
           {"input_tokens": 19, "output_tokens": 196, "total_tokens": 215, "output_tokens_details": {}}, None,
           "output_tokens_details (text_tokens + image_tokens = 0) do not add up to its output_tokens (196)"),
    Priced("input details smaller than the total", "gpt-image-1",
           {"input_tokens": 219, "input_tokens_details": {"image_tokens": 100, "text_tokens": 25}, "output_tokens": 272,
            "total_tokens": 491}, None, "= 125) do not add up to its input_tokens (219)"),
    Priced("output details larger than the total", "gpt-image-1.5",
           {**U3, "output_tokens_details": {"image_tokens": 481, "text_tokens": 209}}, None,
           "= 690) do not add up to its output_tokens (481)"),
    Priced("a negative output count", "gpt-image-2", {"input_tokens": 22, "output_tokens": -7024, "total_tokens": 0},
           None, "negative count (output_tokens: -7024)"),
    Priced("a negative detail", "gpt-image-2",
           {**U5, "input_tokens_details": {"image_tokens": -10, "text_tokens": 91}}, None,
           "negative count (input_tokens_details.image_tokens: -10)"),
    Priced("more cached than input tokens", "gpt-image-2.5-flare",
           {**U10, "input_tokens_details": {"text_tokens": 20, "image_tokens": 0, "cached_tokens": 40}}, None,
           "more cached_tokens (40) than input_tokens (20)"),
    Priced("an image with no output tokens", "gpt-image-2",
           {"input_tokens": 22, "output_tokens": 0, "total_tokens": 22}, None, "no output tokens for 1 image(s)"),
]


def answering(usage: dict[str, Any], images: int) -> Any:
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        payload = {"created": 1, "data": [{"b64_json": "AAAA"} for _ in range(images)], "usage": usage}
        return web.Response(body=msgspec.json.encode(payload), content_type="application/json")
    return reply


@pytest.mark.parametrize("row", PACK, ids=[p.case for p in PACK])
async def test_usage_is_priced_exactly_or_unknown_with_a_reason(upstream: Any, client: Any, row: Priced) -> None:
    upstream.script(row.model, answering(row.usage, row.images))
    resp = await client.post("/v1/images/generations", headers=AUTH,
                             json={"model": f"openai/{row.model}", "prompt": "A small red cube."})
    assert resp.status == 200, await resp.text()
    assert upstream.received[-1].body["model"] == row.model
    usage = (await resp.json())["extra"]["usage"]
    if row.cost_usd is None:
        assert usage["cost_usd"] is None and usage["cost_usd_details"] is None
        assert row.reason is not None and row.reason in usage["reason"]
    else:
        assert usage["cost_usd"] == row.cost_usd
        assert sum(usage["cost_usd_details"].values()) == pytest.approx(row.cost_usd, abs=1e-12)
        assert all(part > 0 for part in usage["cost_usd_details"].values())
        assert "reason" not in usage


def test_the_pack_covers_every_bundled_model() -> None:
    priced = {row.model for row in PACK if row.cost_usd is not None}
    unpriced = {row.model for row in PACK if row.cost_usd is None and "no price" in (row.reason or "")}
    assert {f"openai/{m}" for m in priced | unpriced} == set(openai_image_models())
    assert all(openai_image_models()[f"openai/{m}"].price is None for m in unpriced)
