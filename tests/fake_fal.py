"""fal.ai's synchronous endpoint as the gateway's tests fake it, on gateway.testing's FakeUpstream.

Sources (research notes /work/notes/providers.md, section 5):
- ``POST https://fal.run/<endpoint>`` with ``Authorization: Key <key_id>:<key_secret>``, the input
  fields (``image_size`` preset or ``{width, height}``, ``num_images``, ``output_format`` jpeg|png,
  ``enable_safety_checker``) and the output ``{images: [{url, width, height, content_type}],
  has_nsfw_concepts, seed, prompt, timings}``: fal's JS client, github fal-ai/fal-js
  libs/client/src/request.ts and types/endpoints.ts (FluxDevInput, Image, unoOutput), and
  https://fal.ai/docs/model-api-reference/image-generation-api/flux-dev ;
- result URLs on ``v3.fal.media`` / ``v3b.fal.media``: https://fal.ai/docs/model-apis/data-retention ;
- the error envelope ``{"detail": [{loc, msg, type}]}`` and ``X-Fal-Retryable``:
  https://fal.ai/docs/documentation/model-apis/errors.md ; the content-policy 422 example as
  quoted by a third party (wavespeed.ai; structure verified on fal's page, the example is not);
- the 401 body ``{"detail": "No user found for Key ID and Secret"}``: github fal-ai/fal issue #1068.
"""

from __future__ import annotations

import io
import itertools
from typing import Any, Callable, Sequence

from aiohttp import web
from PIL import Image

from gateway.testing import Behaviour, FakeUpstream, Received, json_reply

API_KEY = "2f0c1d3e-9a8b-4c7d-b6e5-f4a3b2c1d0e9:5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d"
REQUEST_ID = "0193f2a4-7b6c-7d8e-9f0a-1b2c3d4e5f6a"

_PIL_NAMES = {"jpeg": "JPEG", "png": "PNG"}


def image(width: int, height: int, fmt: str = "jpeg") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 160)).save(out, _PIL_NAMES[fmt])
    return out.getvalue()


class FakeFal:
    """fal on ``upstream``: ``run()`` answers as many images as ``num_images`` asks, each a URL on
    the same server (or where ``url`` says) serving an image of the asked size and format."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self._ids = itertools.count(1)

    def files(self) -> list[Received]:
        return [r for r in self.upstream.received if r.path.startswith("/files/")]

    def run(self, nsfw: Sequence[bool] = (), url: Callable[[str], str] | None = None,
            images: int | None = None) -> Behaviour:
        """A successful answer; ``nsfw`` gives ``has_nsfw_concepts`` (default all false)."""
        async def reply(request: web.Request, received: Received) -> web.StreamResponse:
            fields = received.json()
            size = fields.get("image_size", {"width": 1024, "height": 768})  # fal's default: landscape_4_3
            fmt = fields.get("output_format", "jpeg")
            count = fields.get("num_images", 1) if images is None else images
            out = []
            for _ in range(count):
                path = f"/files/rabbit/{next(self._ids):04d}-YYbm6L.{fmt}"
                self.upstream.always("GET", path, _image_reply(size["width"], size["height"], fmt))
                out.append({"url": url(path) if url else self.upstream.url(path), "width": size["width"],
                            "height": size["height"], "content_type": f"image/{fmt}"})
            flags = list(nsfw) or [False] * count
            return web.json_response({"images": out, "timings": {"inference": 1.23}, "seed": 6252023,
                                      "has_nsfw_concepts": flags, "prompt": fields["prompt"]},
                                     headers={"x-fal-request-id": REQUEST_ID})
        return reply


def _image_reply(width: int, height: int, fmt: str) -> Behaviour:
    data = image(width, height, fmt)

    async def reply(request: web.Request, received: Received) -> web.StreamResponse:
        return web.Response(body=data, content_type=f"image/{fmt}")
    return reply


def error(status: int, payload: Any, headers: dict[str, str] | None = None) -> Behaviour:
    return json_reply(payload, status=status, headers=headers)


def unauthorized() -> Behaviour:
    return error(401, {"detail": "No user found for Key ID and Secret"})


def content_policy() -> Behaviour:
    return error(422, {"detail": [{"loc": ["body", "prompt"], "msg": "The content was flagged by a content checker.",
                                   "type": "content_policy_violation",
                                   "url": "https://docs.fal.ai/errors#content_policy_violation",
                                   "input": "…", "categories": ["sexual"]}]})


def validation_error() -> Behaviour:
    return error(422, {"detail": [{"loc": ["body", "image_size", "width"],
                                   "msg": "Input should be less than or equal to 14142", "type": "less_than_equal"}]})
