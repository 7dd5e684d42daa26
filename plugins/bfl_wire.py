"""What Black Forest Labs' API answers, read for the ``bfl`` provider: the submit answer (a task id,
its ``polling_url`` and what it costs), the poll answer (a status, the signed result URL when
``Ready``), and BFL's errors in OpenAI's words.

Wire names: BFL's OpenAPI document (``AsyncResponse``, ``ResultResponse``, ``StatusResponse``),
https://api.bfl.ai/openapi.json ; statuses and their meaning: https://docs.bfl.ai/api_integration/errors .
The 401 and 429 bodies (``{"error", "message", "retry_after"}``) appear only in BFL's own agent
skill (github black-forest-labs/skills, references/error-handling.md), so both shapes are read:
that one and FastAPI's ``{"detail": ...}``, which the OpenAPI document gives for 422.
"""

from __future__ import annotations

from typing import Any, Mapping

import msgspec

from gateway.provider import ProviderError, answered, retry_after_s, scrub, status_error

#: A task the model finished: ``result.sample`` is the signed URL of the image.
READY = "Ready"
#: The input was flagged before processing, or the output after it: a safety refusal.
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
#: The task failed, or does not exist (any more): no image will come.
FAILED = frozenset({"Error", "Task not found"})
# Any other status (``Pending``; ``Reasoning``/``Generating`` seen only in third-party clients) is
# read as "still running" until the attempt's time runs out.


class Submitted(msgspec.Struct):
    """``AsyncResponse``: ``cost`` is in credits (1 credit = USD 0.01), None when not reported."""

    id: str
    polling_url: str
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None


class Polled(msgspec.Struct):
    """``ResultResponse``; ``result`` is ``{"sample": url, "prompt", "seed"}`` once ``Ready``."""

    status: str
    id: str | None = None
    result: Any = None
    progress: float | None = None
    details: Any = None


def blocked(message: str) -> ProviderError:
    """OpenAI's answer to a safety refusal: final, not routed around unless the operator says so."""
    return ProviderError(message, status=400, type="image_generation_user_error", code="moderation_blocked",
                         retryable=False)


def malformed(what: str, detail: object) -> ProviderError:
    return ProviderError(f"BFL answered {what} with a body the gateway cannot read: {detail}", status=502,
                         code="invalid_upstream_response", retryable=True)


def read_submitted(raw: bytes) -> Submitted:
    try:
        return msgspec.json.decode(raw, type=Submitted)
    except msgspec.DecodeError as exc:
        raise malformed("the submission", exc) from None


def read_polled(raw: bytes) -> Polled:
    try:
        return msgspec.json.decode(raw, type=Polled)
    except msgspec.DecodeError as exc:
        raise malformed("a poll", exc) from None


def sample_url(polled: Polled) -> str:
    """The signed result URL of a ``Ready`` task."""
    sample = polled.result.get("sample") if isinstance(polled.result, dict) else None
    if not isinstance(sample, str) or not sample:
        raise malformed("a Ready poll", "no result.sample URL")
    return sample


def finished_without_image(task_id: str, polled: Polled) -> ProviderError:
    """The error for a task that ended with a status other than ``Ready``."""
    if polled.status in MODERATED:
        what = "the prompt or input image" if polled.status == "Request Moderated" else "the generated image"
        return blocked(f"BFL's moderation flagged {what} ({polled.status}, task {task_id}).")
    said = ""
    if polled.details:
        said = ": " + msgspec.json.encode(polled.details).decode()[:300]
    return ProviderError(f"BFL task {task_id} ended with status '{polled.status}'{said}", status=502,
                         code="upstream_task_failed")


class _DetailItem(msgspec.Struct):
    msg: str = ""
    type: str | None = None


class _ErrorBody(msgspec.Struct):
    detail: str | list[_DetailItem] | None = None
    error: str | None = None
    message: str | None = None
    retry_after: float | None = None


def bfl_error(status: int, raw: bytes, headers: Mapping[str, str], secrets: tuple[str, ...] = ()) -> ProviderError:
    """A non-2xx BFL answer in OpenAI's words. BFL's Errors page lists 403 for a key without
    permission and 402 for insufficient credits: both are the operator's account, not the client's
    request, so both move the router to the next target (402 as 403 ``insufficient_credits``)."""
    try:
        body = msgspec.json.decode(raw, type=_ErrorBody)
    except (msgspec.DecodeError, msgspec.ValidationError):
        body = _ErrorBody()
    if isinstance(body.detail, list):
        said = "; ".join(d.msg for d in body.detail if d.msg)
    else:
        said = body.message or body.detail or body.error or ""
    said = scrub(said or answered("BFL", status, raw), secrets)
    if status == 402:
        return ProviderError(f"BFL: insufficient credits (HTTP 402): {said}", status=403,
                             type="invalid_request_error", code="insufficient_credits")
    if status == 429 and retry_after_s(headers) is None and body.retry_after is not None \
            and 0 <= body.retry_after < 86_400:  # the body's own retry_after, when no header says
        return status_error(429, said, headers, retry_after=body.retry_after)
    # 400 and 422 (FastAPI's validation error): the request, as mapped, was refused.
    return status_error(status, said, headers)
