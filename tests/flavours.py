"""The OpenAI-speaking upstreams the plugin tests run against, one ``Flavour`` each: ``openai``
and ``azure_openai`` (both URL forms), each failing in its own upstream's dialect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

from gateway.config import key_hash
from tests.conftest import GATEWAY_KEY, UPSTREAM_KEY
from tests.fake_upstream import Behaviour, error, ok

# An Azure resource key looks like 32 hex digits: nothing like ``sk-``, so the generic redaction
# cannot spot it and the plugin must keep it out of what the client sees.
AZURE_KEY = "5f0c2a9e7b3d41c8a6e2f9b0d7c31e4a"
PROMPT = "A small red cube on a white background."


@dataclass(frozen=True)
class Flavour:
    name: str
    plugin: str
    settings: str  # the instance's ``settings:`` YAML, ``{base}`` = the fake's root URL
    secret: str
    #: The fake upstream's script key and the body ``model`` it receives, per gateway model id.
    upstream_model: Callable[[str], str]
    path: Callable[[str], str]
    query: dict[str, str]
    auth_headers: dict[str, str]
    request_id_header: str

    def config(self, base: str, router: str = "max_attempts_per_target: 1") -> str:
        return f"""
keys:
  - name: test
    hash: "{key_hash(GATEWAY_KEY)}"
providers:
  - id: up
    plugin: {self.plugin}
    region: test-region
    settings:
{self.settings.format(base=base.rstrip("/"))}
router: {{{router}}}
"""

    # Errors in the upstream's own dialect.
    def error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None,
              param: str | None = None, type: str | None = None) -> Behaviour:
        if self.plugin == "openai":
            return error(status, code, message, type=type, param=param, headers=headers)
        return azure_reply(status, {"error": {"code": code or str(status), "message": message, "param": param}},
                           headers)

    def moderation(self) -> Behaviour:
        if self.plugin == "openai":
            return error(400, "moderation_blocked", "Your request was rejected by the safety system.",
                         type="image_generation_user_error")
        return azure_reply(400, {"error": {
            "code": "content_policy_violation", "param": "prompt", "type": None,
            "message": "Your request was rejected as a result of our safety system.",
            "inner_error": {"code": "ResponsibleAIPolicyViolation",
                            "content_filter_results": {"violence": {"filtered": True, "severity": "high"}}}}})

    def rate_limited(self, wait_s: int, header: bool) -> Behaviour:
        headers = {"retry-after": str(wait_s)} if header else None
        if self.plugin == "openai":
            return error(429, "rate_limit_exceeded", "Rate limit reached for requests.", type="requests",
                         headers=headers)
        return azure_reply(429, {"error": {"code": "429", "message": (
            "Requests to the Images_Generations Operation under Azure OpenAI API version 2025-04-01-preview "
            f"have exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after {wait_s} "
            "seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase "
            "the default rate limit.")}}, headers)

    def ok(self) -> Behaviour:
        return ok(headers={"apim-request-id": "apim-1234"} if self.plugin == "azure_openai" else None)


def azure_reply(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Behaviour:
    async def reply(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response(payload, status=status,
                                 headers={"apim-request-id": "apim-err-1", **(headers or {})})
    return reply


def _deployment(model: str) -> str:
    return "dep-" + model.partition("/")[2]


AZURE_SETTINGS = f"""      endpoint: "{{base}}"
      api_key: "{AZURE_KEY}"
      deployments:
        openai/gpt-image-1: dep-gpt-image-1
        openai/gpt-image-2: dep-gpt-image-2"""

FLAVOURS = [
    Flavour("openai", "openai", f'      api_key: "{UPSTREAM_KEY}"\n      base_url: "{{base}}/v1"', UPSTREAM_KEY,
            lambda m: m.partition("/")[2], lambda m: "/v1/images/generations", {},
            {"Authorization": f"Bearer {UPSTREAM_KEY}"}, "x-request-id"),
    Flavour("azure_openai", "azure_openai", AZURE_SETTINGS, AZURE_KEY, _deployment,
            lambda m: f"/openai/deployments/{_deployment(m)}/images/generations",
            {"api-version": "2025-04-01-preview"}, {"api-key": AZURE_KEY}, "apim-request-id"),
    Flavour("azure_openai_v1", "azure_openai", AZURE_SETTINGS + "\n      url_form: v1", AZURE_KEY, _deployment,
            lambda m: "/openai/v1/images/generations", {"api-version": "preview"}, {"api-key": AZURE_KEY},
            "apim-request-id"),
]
