"""Google's image APIs as the gateway's tests fake them: answers built from the documented shapes,
served by gateway.testing's FakeUpstream on loopback.

Sources (research notes /work/notes/providers.md, section 2):
- Gemini ``generateContent`` answer: field names from python-genai's types (GenerateContentResponse,
  Candidate, Blob, UsageMetadata), https://github.com/googleapis/python-genai/blob/main/google/genai/types.py ;
  token counts per image as Google staff gave them (1K image = 1120 tokens),
  https://discuss.ai.google.dev/t/i-am-confused-on-pricing-for-nano-banana-pro-i-am-getting-2000-output-tokens-instead-of-1120-for-a-1k-image/121299
- Imagen ``:predict`` request and answer: the Imagen REST cookbook,
  https://github.com/google-gemini/cookbook/blob/main/quickstarts/Get_started_imagen_rest.ipynb
- error envelope and codes: https://ai.google.dev/gemini-api/docs/troubleshooting ; the bad-key body
  from https://github.com/continuedev/continue/issues/8516 ; the 429 with RetryInfo from
  https://github.com/google/langextract/issues/50
- the service-account JWT grant: https://developers.google.com/identity/protocols/oauth2/service-account
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from gateway.testing import Behaviour, Received, json_reply, png_bytes

PNG = png_bytes(4, 3, (10, 120, 200))
B64 = base64.b64encode(PNG).decode()
GEMINI_USAGE = {"promptTokenCount": 10, "candidatesTokenCount": 1130, "totalTokenCount": 1140,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}],
                "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 10},
                                            {"modality": "IMAGE", "tokenCount": 1120}]}


def gemini_path(model: str) -> str:
    return f"/v1beta/models/{model}:generateContent"


def vertex_path(project: str, location: str, model: str, method: str = "generateContent") -> str:
    return f"/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}"


def gemini_answer(b64: str = B64, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A successful generateContent answer: a text part, then the image as inlineData."""
    return {"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Here is the image you asked for."},
                {"inlineData": {"mimeType": "image/png", "data": b64}}]},
            "finishReason": "STOP", "index": 0}],
            "usageMetadata": GEMINI_USAGE if usage is None else usage,
            "modelVersion": "gemini-3-pro-image-preview", "responseId": "resp-gemini-1"}


def gemini_ok(**kwargs: Any) -> Behaviour:
    return json_reply(gemini_answer(**kwargs))


def imagen_ok(filtered: int = 0) -> Behaviour:
    """As many images as the request's sampleCount asks, the last ``filtered`` of them replaced
    by a raiFilteredReason entry, as Imagen does."""
    async def reply(request: web.Request, received: Received) -> web.StreamResponse:
        count = received.json()["parameters"]["sampleCount"]
        made = [{"bytesBase64Encoded": B64, "mimeType": "image/png"} for _ in range(count - filtered)]
        made += [{"raiFilteredReason": "Your current safety filter threshold filtered out the generated image."}
                  for _ in range(min(filtered, count))]
        return web.json_response({"predictions": made})
    return reply


def google_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> Behaviour:
    return json_reply({"error": {"code": code, "message": message, "status": status, "details": details or []}},
                      status=code)


def api_key_invalid() -> Behaviour:
    """Google's answer to a bad API key: 400, not 401 (continuedev/continue#8516)."""
    return google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
        {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
         "message": "API key not valid. Please pass a valid API key."}])


def rate_limited(delay: str = "15s") -> Behaviour:
    """429 RESOURCE_EXHAUSTED with QuotaFailure, Help and RetryInfo details (google/langextract#50)."""
    return google_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and "
                        "billing details. Please retry in 14.6s.", [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
             "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "quotaValue": "10"}]},
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [
            {"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}])


# Every refusal shape, as Google sends it (research notes, section 1).
REFUSALS: dict[str, dict[str, Any]] = {
    # Prompt blocked: no candidates at all (LiteLLM PR #20105, https://github.com/BerriAI/litellm/pull/20105).
    "prompt blocked": {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT",
                                          "blockReasonMessage": "The prompt is blocked due to prohibited contents"},
                       "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}},
    # A contentless candidate with IMAGE_PROHIBITED_CONTENT (https://github.com/BerriAI/litellm/issues/20357).
    "image prohibited": {"candidates": [{"content": {"role": "model"}, "finishReason": "IMAGE_PROHIBITED_CONTENT",
                                         "finishMessage": "The model output could not be generated. This output "
                                         "contains sensitive words that violate Google's Responsible AI practices."}],
                         "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}},
    "image safety": {"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}]},
    "safety": {"candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "SAFETY"}]},
    "prohibited content": {"candidates": [{"finishReason": "PROHIBITED_CONTENT"}]},
    "empty candidates": {"candidates": []},
    "no candidates": {},
}

# Imagen's refusal shapes: every image filtered (https://github.com/vercel/ai/issues/10796), and
# no prediction at all when the reasons are not asked for (LiteLLM #8221).
IMAGEN_REFUSALS: dict[str, dict[str, Any]] = {
    "all filtered": {"predictions": [{"raiFilteredReason": "Your current safety filter threshold filtered out "
                                                           "the generated image. Support codes: 56562880"}]},
    "no predictions": {},
}


def token_server(public_key: Any, client_email: str, access_token: str, expires_in: int = 3600,
                 audience: str = "https://oauth2.googleapis.com/token") -> Behaviour:
    """Google's token endpoint for the JWT bearer grant: the assertion's RS256 signature is checked
    with the service account's public key, and its claims as Google's page lists them."""
    import jwt

    async def reply(request: web.Request, received: Received) -> web.StreamResponse:
        assert received.headers["content-type"] == "application/x-www-form-urlencoded"
        form = {k: v[0] for k, v in parse_qs(received.body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            claims = jwt.decode(form["assertion"], public_key, algorithms=["RS256"], audience=audience,
                                options={"require": ["iss", "aud", "iat", "exp", "scope"]})
        except jwt.PyJWTError as exc:
            return web.json_response({"error": "invalid_grant", "error_description": f"Invalid JWT: {exc}"},
                                     status=400)
        if claims["iss"] != client_email or claims["scope"] != "https://www.googleapis.com/auth/cloud-platform" \
                or claims["exp"] - claims["iat"] != 3600 or abs(claims["iat"] - time.time()) > 60:
            return web.json_response({"error": "invalid_grant", "error_description": json.dumps(claims)}, status=400)
        return web.json_response({"access_token": access_token, "expires_in": expires_in, "token_type": "Bearer"})
    return reply
