"""Black Forest Labs' API as the gateway's tests fake it, on gateway.testing's FakeUpstream.

Sources (research notes /work/notes/providers.md, section 3):
- submit ``POST /v1/<model>`` with ``x-key``, its answer ``{id, polling_url, cost, input_mp,
  output_mp}`` (AsyncResponse), the poll answer ``{id, status, result, progress, details}``
  (ResultResponse) and the status enum: BFL's OpenAPI document, https://api.bfl.ai/openapi.json
  (copy: github tryAGI/BlackForestLabs src/libs/BlackForestLabs/openapi.json);
- ``result`` of a Ready task ``{"sample": url, "prompt", "seed"}`` and the submit answer example:
  BFL's agent skill, github black-forest-labs/skills skills/bfl-api/references/endpoints.md;
- what each status means, the HTTP errors (402, 403, 422, 429): https://docs.bfl.ai/api_integration/errors ;
- "you must use the polling_url returned": https://docs.bfl.ai/api_integration/integration_guidelines ;
- the 429 body ``{"error", "message", "retry_after"}``: the skill's references/error-handling.md
  (UNVERIFIED against the API reference; the plugin also reads ``Retry-After``).
"""

from __future__ import annotations

import io
import itertools
from typing import Any, Callable

from aiohttp import web
from PIL import Image

from gateway.testing import Behaviour, FakeUpstream, Received, json_reply

API_KEY = "bfl_test-key-0a1b2c3d4e5f6a7b"

_PIL_NAMES = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def image(width: int, height: int, fmt: str = "jpeg") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 30)).save(out, _PIL_NAMES[fmt])
    return out.getvalue()


class FakeBFL:
    """BFL on ``upstream``: each submit makes a task whose polls answer ``statuses`` in turn (the
    last one again and again); a Ready task's ``result.sample`` is a signed URL on the same server
    (or where ``sample_url`` says), serving an image of the submitted width/height and format."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.tasks: dict[str, list[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        upstream.always("GET", "/v1/get_result", self._poll)

    def polls(self) -> list[Received]:
        return self.upstream.sent_to("/v1/get_result")

    def submit(self, *statuses: str, cost: float | None = 3.07,
               polling_url: Callable[[str], str] | None = None,
               sample_url: Callable[[str], str] | None = None) -> Behaviour:
        """A submit answer; ``statuses`` (default Ready) are what the task's polls answer."""
        async def reply(request: web.Request, received: Received) -> web.StreamResponse:
            task = f"{next(self._ids):08d}-5c1e-4b7a-9d2f-3e8a6b0c4d1f"  # BFL ids are UUIDs
            fields = received.json()
            width, height = fields.get("width", 1024), fields.get("height", 768)
            fmt = fields.get("output_format", "jpeg")
            path = f"/results/{task}/sample.{fmt}"
            sample = sample_url(task) if sample_url else self.upstream.url(path) + "?se=2026-12-02T10%3A10Z&sig=SIGNED"
            self.upstream.always("GET", path, _image_reply(width, height, fmt))
            self.tasks[task] = [_poll_answer(task, s, sample) for s in (statuses or ("Ready",))]
            url = polling_url(task) if polling_url else self.upstream.url("/v1/get_result") + f"?id={task}"
            return web.json_response({"id": task, "polling_url": url, "cost": cost, "input_mp": 0,
                                      "output_mp": round(width * height / 1e6, 2)})
        return reply

    async def _poll(self, request: web.Request, received: Received) -> web.StreamResponse:
        if received.headers.get("x-key") != API_KEY:
            return web.json_response({"detail": "Not authenticated"}, status=403)
        answers = self.tasks.get(received.query.get("id", ""))
        if not answers:
            return web.json_response({"id": received.query.get("id", ""), "status": "Task not found"})
        return web.json_response(answers.pop(0) if len(answers) > 1 else answers[0])


def _poll_answer(task: str, status: str, sample: str) -> dict[str, Any]:
    if status == "Ready":
        return {"id": task, "status": "Ready", "result": {"sample": sample, "prompt": "…", "seed": 1234567890},
                "progress": None, "details": None, "preview": None}
    if status == "Pending":
        return {"id": task, "status": "Pending", "result": None, "progress": 0.4}
    if status == "Error":
        return {"id": task, "status": "Error", "result": None, "details": {"error": "Generation failed"}}
    return {"id": task, "status": status, "result": None}


def _image_reply(width: int, height: int, fmt: str) -> Behaviour:
    data = image(width, height, fmt)

    async def reply(request: web.Request, received: Received) -> web.StreamResponse:
        return web.Response(body=data, content_type=_MIME[fmt])
    return reply


def error(status: int, payload: Any, headers: dict[str, str] | None = None) -> Behaviour:
    return json_reply(payload, status=status, headers=headers)


def rate_limited(retry_after: str | None = "2") -> Behaviour:
    """429 as BFL's skill shows it; with a ``Retry-After`` header unless ``retry_after`` is None."""
    return error(429, {"error": "rate_limit_exceeded", "message": "Too many concurrent requests", "retry_after": 5},
                 headers={"Retry-After": retry_after} if retry_after is not None else None)


def validation_error() -> Behaviour:
    """FastAPI's HTTPValidationError, the 422 body BFL's OpenAPI document gives."""
    return error(422, {"detail": [{"loc": ["body", "width"], "msg": "Input should be a multiple of 32",
                                   "type": "multiple_of"}]})
