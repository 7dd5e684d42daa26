"""What fal.ai's synchronous endpoint answers, read for the ``fal`` provider: the output (image URLs
and ``has_nsfw_concepts``) and fal's errors in OpenAI's words.

Wire names: fal's JS client (github fal-ai/fal-js, ``Image`` and ``unoOutput`` in
libs/client/src/types/endpoints.ts; ``ValidationError`` in response.ts); the error envelope
``{"detail": [{loc, msg, type}]}`` and ``X-Fal-Retryable``: https://fal.ai/docs/documentation/model-apis/errors.md ;
the content-policy type ``content_policy_violation``: the same page's structure, its example as
quoted by a third party (research notes, section 5).
"""

from __future__ import annotations

from typing import Mapping

import msgspec

from gateway.provider import ProviderError, answered, scrub, status_error


class FalImage(msgspec.Struct):
    url: str
    width: int | None = None
    height: int | None = None
    content_type: str | None = None


class FalOutput(msgspec.Struct):
    images: list[FalImage]
    has_nsfw_concepts: list[bool] = []
    seed: int | None = None


def blocked(message: str) -> ProviderError:
    """OpenAI's answer to a safety refusal: final, not routed around unless the operator says so."""
    return ProviderError(message, status=400, type="image_generation_user_error", code="moderation_blocked",
                         retryable=False)


def read_output(raw: bytes) -> FalOutput:
    try:
        return msgspec.json.decode(raw, type=FalOutput)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"fal answered with a body the gateway cannot read: {exc}", status=502,
                            code="invalid_upstream_response", retryable=True) from None


class _DetailItem(msgspec.Struct):
    msg: str = ""
    type: str | None = None


class _ErrorBody(msgspec.Struct):
    detail: str | list[_DetailItem] | None = None
    error_type: str | None = None


def fal_error(status: int, raw: bytes, headers: Mapping[str, str], secrets: tuple[str, ...] = ()) -> ProviderError:
    """A non-2xx fal answer in OpenAI's words: a content-policy violation (422) is
    ``moderation_blocked``; a refused key (401, or 403 for a key without the scope) is 401; 429
    keeps its ``retry-after``; another 422 is the request's (400)."""
    try:
        body = msgspec.json.decode(raw, type=_ErrorBody)
    except (msgspec.DecodeError, msgspec.ValidationError):
        body = _ErrorBody()
    items = body.detail if isinstance(body.detail, list) else []
    said = "; ".join(d.msg for d in items if d.msg) if items else (body.detail if isinstance(body.detail, str) else "")
    said = scrub(said or answered("fal", status, raw), secrets)
    if any(d.type == "content_policy_violation" for d in items):
        return blocked(f"fal's content checker flagged the request: {said}")
    if status == 403:  # a key without the scope: refused like a wrong key
        status = 401
    if status >= 500:
        # fal's X-Fal-Retryable says whether the same call may succeed; "false" is not made final
        # here (that would stop the router trying another target too).
        retryable = True if headers.get("x-fal-retryable", "").lower() == "true" else None
        kind = f" ({body.error_type})" if body.error_type else ""
        return status_error(status, said + kind, headers, retryable=retryable)
    return status_error(status, said, headers)
