"""What Stability AI's stable-image generate endpoints answer, read for the ``stability`` provider:
the JSON answer (``accept: application/json``) into an image or OpenAI's ``moderation_blocked``,
and the ``{id, name, errors}`` error envelope into OpenAI's error words.

Shapes: Stability's v2beta OpenAPI document (the research notes' STAB-OAS, section 4): the answer
``{"image": <base64>, "seed", "finish_reason": "SUCCESS" | "CONTENT_FILTERED"}``, where
CONTENT_FILTERED is an image blurred by its moderation; 403 ``content_moderation``; 422
``public_figure``; 429 after 150 requests in 10 s. The v2beta 401 body is undocumented, so the
v1 form (``message`` instead of ``errors``) is read too.
"""

from __future__ import annotations

import re
from typing import Mapping

import msgspec

from gateway.provider import Batch, GeneratedImage, ProviderError, image_format, scrub, status_error

UPSTREAM = "Stability AI"
#: Error names that are Stability's safety decisions, whatever their status.
REFUSALS = frozenset({"content_moderation", "public_figure"})
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class _Generation(msgspec.Struct):
    image: bytes  # base64 on the wire: msgspec decodes it
    finish_reason: str
    seed: int | None = None


class _ErrorBody(msgspec.Struct):
    id: str | None = None
    name: str | None = None
    errors: list[str] = []
    message: str | None = None  # the v1 API's form (and perhaps v2beta's 401: undocumented)


def blocked(message: str) -> ProviderError:
    """OpenAI's answer to a safety refusal: final, never routed around unless the operator says so."""
    return ProviderError(message, status=400, type="image_generation_user_error", code="moderation_blocked",
                         retryable=False)


def _malformed(detail: str) -> ProviderError:
    return ProviderError(f"{UPSTREAM} answered 200 with a body the gateway cannot use: {detail}", status=502,
                         code="invalid_upstream_response", retryable=True)


def read_generation(raw: bytes, headers: Mapping[str, str]) -> Batch:
    """A 200 answer as a Batch of one image; a blurred (filtered) image as a refusal, never a success."""
    # Documented for ``accept: image/*`` answers only, read in case an answer carries it anyway.
    if headers.get("finish-reason") == "CONTENT_FILTERED":
        raise _filtered()
    try:
        answer = msgspec.json.decode(raw, type=_Generation)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _malformed(str(exc)) from None
    if answer.finish_reason == "CONTENT_FILTERED":
        raise _filtered()
    if answer.finish_reason != "SUCCESS":
        raise _malformed(f"finish_reason {answer.finish_reason[:40]!r}")
    kind = image_format(answer.image)
    if kind is None:
        raise _malformed("the image is neither PNG, JPEG nor WebP")
    return Batch(images=[GeneratedImage(answer.image, f"image/{kind}")],
                 upstream_request_id=headers.get("x-request-id"))


def _filtered() -> ProviderError:
    return blocked(f"{UPSTREAM}'s content moderation flagged the image it made (finish_reason CONTENT_FILTERED) "
                   "and blurred it; it is not returned.")


def stability_error(status: int, raw: bytes, headers: Mapping[str, str], secret: str = "") -> ProviderError:
    """A non-200 answer in OpenAI's words. Refusals (403 ``content_moderation``, 422
    ``public_figure``) are 400 ``moderation_blocked``; a rejected key 401; 400, 413 and 422 are
    the request's fault (400, Stability's error name as the code); 429 waits for ``retry-after``
    when Stability sends one (its documentation names none); 5xx are retryable."""
    try:
        err = msgspec.json.decode(raw, type=_ErrorBody)
    except (msgspec.DecodeError, RecursionError):
        err = _ErrorBody()
    said = "; ".join(e for e in err.errors if e) or err.message or raw[:200].decode("utf-8", "replace").strip()
    name = err.name or ""
    message = f"{UPSTREAM} answered HTTP {status}" + (f" ({name})" if name else "") + (f": {said}" if said else ".")
    message = scrub(message, (secret,))
    if name in REFUSALS and status in (403, 422):
        return blocked(message)
    if status in (401, 403, 429) or status >= 500:
        return status_error(status, message, headers, retryable=True if status >= 500 else None)
    # 400, 413 and 422 are the request's; another 4xx keeps its status for the router to judge.
    return ProviderError(message, status=400 if status in (400, 413, 422) else status, type="invalid_request_error",
                         code=name if _CODE.match(name) else "invalid_value")
