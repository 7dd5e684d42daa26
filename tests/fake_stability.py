"""Stability AI's stable-image generate endpoints as the gateway's tests fake them: answers built
from the documented shapes, served by gateway.testing's FakeUpstream on loopback.

Source: Stability's v2beta OpenAPI document ("from https://api.stability.ai/v2alpha/openapi", as
copied into https://github.com/tryAGI/StabilityAI/blob/016c91ba97c1d174b3e2a01966f6223379aab94f/src/libs/StabilityAI/openapi.yaml ;
the research notes' STAB-OAS, /work/notes/providers.md section 4; the same reference is published
at https://platform.stability.ai/docs/api-reference): the multipart form fields and their enums,
``accept: application/json`` answered as ``{"image", "seed", "finish_reason"}`` with
``content-type: application/json; type=image/<format>`` and ``x-request-id``, every error as
``{"id", "name", "errors"}`` (the examples below are the spec's own). The rate limit (150
requests in 10 s, then a 60 s timeout) is also on Stability's knowledge base,
https://stabilityplatform.freshdesk.com/support/solutions/articles/150000186026-api-key-rate-limit-information .
The v2beta 401 body is not documented (UNVERIFIED): the fake answers it in the v2beta envelope.
"""

from __future__ import annotations

import base64
import io
from typing import Mapping

import msgspec
from aiohttp import web
from PIL import Image

from gateway.testing import Behaviour, Received, json_reply

API_KEY = "sk-stabilityTEST0a1b2c3d4e5f6a7b8c9d"
ASPECT_RATIOS = ("21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21")
FORMATS = ("jpeg", "png", "webp")
SD3_MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium")
STYLE_PRESETS = ("enhance", "anime", "photographic", "digital-art", "comic-book", "fantasy-art", "line-art",
                 "analog-film", "neon-punk", "isometric", "low-poly", "origami", "modeling-compound", "cinematic",
                 "3d-model", "pixel-art", "tile-texture")
_PIL = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def path(endpoint: str) -> str:
    return f"/v2beta/stable-image/generate/{endpoint}"


def image(fmt: str, ratio: str = "1:1", scale: int = 2, color: tuple[int, int, int] = (40, 90, 160)) -> bytes:
    """A real image of ``ratio`` (``scale`` pixels per unit) in ``fmt``."""
    w, _, h = ratio.partition(":")
    out = io.BytesIO()
    Image.new("RGB", (int(w) * scale, int(h) * scale), color).save(out, _PIL[fmt])
    return out.getvalue()


def error(status: int, name: str, errors: list[str], error_id: str = "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4",
          headers: Mapping[str, str] | None = None) -> Behaviour:
    return json_reply({"id": error_id, "name": name, "errors": errors}, status=status, headers=headers)


def _invalid(form: dict[str, str | bytes], endpoint: str) -> list[str]:
    """What Stability's validation would say about the form (the spec's enums and bounds)."""
    problems = []
    prompt = form.get("prompt")
    if not isinstance(prompt, str) or not 1 <= len(prompt) <= 10000:
        problems.append("prompt: is required")
    enums: dict[str, tuple[str, ...]] = {"aspect_ratio": ASPECT_RATIOS, "output_format": FORMATS,
                                         "style_preset": STYLE_PRESETS}
    if endpoint == "sd3":
        enums["model"] = SD3_MODELS
    for name, allowed in enums.items():
        if name in form and form[name] not in allowed:
            problems.append(f"{name}: must be one of {', '.join(allowed)}")
    if "seed" in form and not (isinstance(form["seed"], str) and form["seed"].isdigit()
                               and int(form["seed"]) <= 4294967294):
        problems.append("seed: must be a number between 0 and 4294967294")
    return problems


def ok(endpoint: str = "ultra", finish_reason: str = "SUCCESS", key: str = API_KEY) -> Behaviour:
    """A generate endpoint: checks the key, the multipart form and ``accept``, then answers one
    image in the asked format and aspect ratio (tiny: ``scale`` 2 pixels per ratio unit)."""
    async def reply(request: web.Request, received: Received) -> web.StreamResponse:
        if received.headers.get("authorization") != f"Bearer {key}":
            return await unauthorized()(request, received)
        if not received.headers.get("content-type", "").startswith("multipart/form-data; boundary="):
            return await error(400, "bad_request", ["content-type: must be multipart/form-data"])(request, received)
        form = received.form()
        problems = _invalid(form, endpoint)
        if problems:
            return await error(400, "bad_request", problems)(request, received)
        fmt = str(form.get("output_format", "png"))
        data = image(fmt, str(form.get("aspect_ratio", "1:1")))
        seed = int(form.get("seed", "0") or 0) or 343940597
        headers = {"x-request-id": f"stab-req-{len(data)}-{seed}"}
        if received.headers.get("accept") != "application/json":  # image/* (the default): raw bytes
            return web.Response(body=data, headers={**headers, "content-type": f"image/{fmt}", "seed": str(seed),
                                                    "finish-reason": finish_reason})
        body = msgspec.json.encode({"image": base64.b64encode(data).decode(), "seed": seed,
                                    "finish_reason": finish_reason})
        return web.Response(body=body, headers={**headers, "content-type": f"application/json; type=image/{fmt}"})
    return reply


def filtered(endpoint: str = "ultra") -> Behaviour:
    """200 with ``finish_reason: CONTENT_FILTERED``: "successful generation, however the output
    violated our content moderation policy and has been blurred as a result"."""
    return ok(endpoint, finish_reason="CONTENT_FILTERED")


def moderated() -> Behaviour:
    """403 ContentModerationResponse, the spec's example."""
    return error(403, "content_moderation", [
        "Your request was flagged by our content moderation system, as a result your request was denied and "
        "you were not charged."])


def public_figure() -> Behaviour:
    return error(422, "public_figure", [
        "Our system detected the likeness of a public figure in your image. To comply with our guidelines, this "
        "request cannot be processed. Please upload a different image."])


def invalid_language() -> Behaviour:
    return error(422, "invalid_language", ["English is the only supported language for this service."])


def rate_limited(headers: Mapping[str, str] | None = None) -> Behaviour:
    """429, the spec's example (no ``retry-after`` is documented; ``headers`` adds one)."""
    return json_reply({"id": "rate_limit_exceeded", "name": "rate_limit_exceeded", "errors": [
        "You have exceeded the rate limit of 150 requests within a 10 second period, and have been timed out "
        "for 60 seconds."]}, status=429, headers=headers)


def unauthorized() -> Behaviour:
    # UNVERIFIED shape (v2beta documents no 401): the v2beta envelope, as the notes advise.
    return error(401, "unauthorized", ["authorization: invalid or missing API key"])


def server_error() -> Behaviour:
    return error(500, "internal_error", ["An unexpected server error has occurred, please try again later."],
                 error_id="2a1b2d4eafe2bc6ab4cd4d5c6133f513")

