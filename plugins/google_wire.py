"""What Google's image APIs answer, read for the ``google`` provider: Gemini ``generateContent``
and Imagen ``:predict`` answers into images (or OpenAI's ``moderation_blocked``), ``usageMetadata``
into OpenAI's usage, and Google's RPC error envelope into OpenAI's error words.

Wire names and enums: python-genai ``types.py`` (FinishReason, BlockedReason, UsageMetadata),
the Imagen REST cookbook, Google's troubleshooting page; real bodies from the issue threads the
research notes cite (LiteLLM #20357, #20105; vercel/ai #10796; continuedev/continue #8516;
google/langextract #50).
"""

from __future__ import annotations

import re
from typing import Mapping

import msgspec

from gateway.provider import (Batch, GeneratedImage, InputTokensDetails, OutputTokensDetails, ProviderError, Usage,
                              answered, scrub, status_error)

#: Finish reasons that mean the model would not make the image: a safety (or policy) refusal.
REFUSAL_FINISH_REASONS = frozenset({"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY",
                                    "IMAGE_PROHIBITED_CONTENT", "RECITATION", "IMAGE_RECITATION"})
_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


class _Blob(msgspec.Struct, rename="camel"):
    data: bytes  # base64 on the wire: msgspec decodes it
    mime_type: str | None = None


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    inline_data: _Blob | None = None
    thought: bool | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = []


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None
    finish_message: str | None = None


class _PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None
    block_reason_message: str | None = None


class _ModalityCount(msgspec.Struct, rename="camel"):
    modality: str = ""
    token_count: int = 0


class UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    total_token_count: int | None = None
    thoughts_token_count: int = 0
    cached_content_token_count: int = 0
    prompt_tokens_details: list[_ModalityCount] | None = None
    candidates_tokens_details: list[_ModalityCount] | None = None


class _GenerateContentAnswer(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] = []
    prompt_feedback: _PromptFeedback | None = None
    usage_metadata: UsageMetadata | None = None
    response_id: str | None = None


class _Prediction(msgspec.Struct, rename="camel"):
    bytes_base64_encoded: bytes | None = None
    mime_type: str | None = None
    rai_filtered_reason: str | None = None


class _PredictAnswer(msgspec.Struct):
    predictions: list[_Prediction] = []


def blocked(message: str) -> ProviderError:
    """OpenAI's answer to a safety refusal: final, never routed around unless the operator says so."""
    return ProviderError(message, status=400, type="image_generation_user_error", code="moderation_blocked",
                         retryable=False)


def _malformed(what: str, exc: Exception) -> ProviderError:
    return ProviderError(f"Google answered {what} with a body the gateway cannot read: {exc}", status=502,
                         code="invalid_upstream_response", retryable=True)


def usage_of(meta: UsageMetadata | None) -> Usage | None:
    """``usageMetadata`` in OpenAI's usage shape: thinking tokens are text output (Google bills
    them so); per-modality details when Google gives them, else output taken as image tokens."""
    if meta is None:
        return None
    def modality(details: list[_ModalityCount], name: str) -> int:
        return sum(d.token_count for d in details if d.modality == name)
    output = meta.candidates_token_count + meta.thoughts_token_count
    if meta.candidates_tokens_details is not None:
        image_out = modality(meta.candidates_tokens_details, "IMAGE")
    else:
        image_out = meta.candidates_token_count
    inputs = meta.prompt_tokens_details
    image_in = modality(inputs, "IMAGE") if inputs is not None else 0
    total = meta.total_token_count if meta.total_token_count is not None else meta.prompt_token_count + output
    return Usage(input_tokens=meta.prompt_token_count, output_tokens=output, total_tokens=total,
                 input_tokens_details=InputTokensDetails(text_tokens=meta.prompt_token_count - image_in,
                                                         image_tokens=image_in,
                                                         cached_tokens=meta.cached_content_token_count),
                 output_tokens_details=OutputTokensDetails(image_tokens=image_out, text_tokens=output - image_out))


def read_generate_content(raw: bytes, count: int) -> Batch:
    """A Gemini answer as a Batch of up to ``count`` images; a refusal or an answer without an
    image as a ProviderError (never an empty success)."""
    try:
        answer = msgspec.json.decode(raw, type=_GenerateContentAnswer)
    except msgspec.DecodeError as exc:
        raise _malformed("generateContent", exc) from None
    images = [GeneratedImage(part.inline_data.data, part.inline_data.mime_type)
              for candidate in answer.candidates if candidate.content is not None
              for part in candidate.content.parts if part.inline_data is not None and not part.thought]
    if images:
        return Batch(images=images[:count], usage=usage_of(answer.usage_metadata),
                     upstream_request_id=answer.response_id)
    feedback = answer.prompt_feedback
    if feedback is not None and feedback.block_reason:
        raise blocked(f"Gemini blocked the prompt ({feedback.block_reason})"
                      + (f": {feedback.block_reason_message}" if feedback.block_reason_message else "."))
    reasons = [c.finish_reason for c in answer.candidates if c.finish_reason]
    refusal = next((c for c in answer.candidates if c.finish_reason in REFUSAL_FINISH_REASONS), None)
    if refusal is not None:
        raise blocked(f"Gemini did not make the image ({refusal.finish_reason})"
                      + (f": {refusal.finish_message}" if refusal.finish_message else "."))
    if not answer.candidates:
        raise blocked("Gemini answered without any candidate: the request was blocked.")
    said = " ".join(p.text for c in answer.candidates if c.content for p in c.content.parts if p.text)[:300]
    raise ProviderError(f"Gemini answered without an image (finishReason {', '.join(reasons) or 'none'})"
                        + (f": {said}" if said else "."), status=502, code="no_image_generated")


def read_predict(raw: bytes, count: int) -> Batch:
    """An Imagen answer as a Batch; filtered images (``raiFilteredReason``) are a refusal when no
    image is left, and the batch's ``shortfall`` when some are."""
    try:
        answer = msgspec.json.decode(raw, type=_PredictAnswer)
    except msgspec.DecodeError as exc:
        raise _malformed(":predict", exc) from None
    # Only entries with bytes are images (with safety attributes on, the last entry is the prompt's).
    images = [GeneratedImage(p.bytes_base64_encoded, p.mime_type) for p in answer.predictions
              if p.bytes_base64_encoded]
    reasons = [p.rai_filtered_reason for p in answer.predictions if p.rai_filtered_reason]
    why = f": {reasons[0]}" if reasons else "."
    if not images:
        raise blocked(f"Imagen filtered every image{why}")
    shortfall = None
    if len(images) < count:
        shortfall = blocked(f"Imagen filtered {count - len(images)} of {count} images{why}")
    return Batch(images=images[:count], shortfall=shortfall)


class _ErrorDetail(msgspec.Struct, rename="camel"):
    type: str | None = msgspec.field(default=None, name="@type")
    reason: str | None = None
    retry_delay: str | None = None


class _ErrorObject(msgspec.Struct):
    code: int | None = None
    message: str = ""
    status: str | None = None
    details: list[_ErrorDetail] = []


class _ErrorBody(msgspec.Struct):
    error: _ErrorObject | None = None


def google_error(status: int, raw: bytes, headers: Mapping[str, str], secrets: tuple[str, ...] = ()) -> ProviderError:
    """A non-2xx Google answer (``{"error": {code, message, status, details}}``) in OpenAI's words.
    A bad API key is 400 ``API_KEY_INVALID`` at Google: 401 here, so the router moves on. A
    precondition (billing, region) is the operator's account, not the client's request: 403."""
    try:
        err = msgspec.json.decode(raw, type=_ErrorBody).error
    except msgspec.DecodeError:
        err = None
    if err is None:
        err = _ErrorObject(message=answered("Google", status, raw))
    message = err.message or f"Google answered HTTP {status} ({err.status or 'no status'})."
    message = scrub(message, secrets)
    reasons = {d.reason for d in err.details if d.reason}
    if "API_KEY_INVALID" in reasons or err.status == "UNAUTHENTICATED":
        status = 401
    elif err.status in ("PERMISSION_DENIED", "FAILED_PRECONDITION"):
        status = 403
    delay = next((float(m[1]) for d in err.details if d.retry_delay and (m := _DELAY.match(d.retry_delay))), None)
    return status_error(status, message, headers, retry_after=delay)
