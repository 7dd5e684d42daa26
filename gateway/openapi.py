"""The OpenAPI 3.1 document of the gateway's own API, generated from its msgspec types.

Request and error schemas come straight from ``gateway.api`` and ``gateway.errors`` through
``msgspec.json.schema_components``, so the document cannot drift from what the code decodes
and renders. The few response pieces that the handlers assemble as plain JSON are described
by the Structs below. The document is built once, at start-up, and served as bytes.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from gateway import __version__
from gateway.api import Attempt, ImageRequest, Usage
from gateway.cost import Cost
from gateway.errors import ErrorBody
from gateway.model_routes import ModelList, ModelObject
from gateway.middleware import public

_REF = "#/components/schemas/{name}"


class ImageData(msgspec.Struct):
    """One generated image, as the upstream sent it (the gateway adds nothing inside ``data[]``)."""

    b64_json: str | None = None
    revised_prompt: str | None = None


class Routing(msgspec.Struct):
    #: Every upstream attempt, in order, including skipped fallbacks.
    attempts: list[Attempt]


class ResponseExtra(msgspec.Struct):
    """OpenGateway's additions to an answer."""

    routing: Routing
    #: The request's cost, from the upstream's token usage and the price table.
    usage: Cost | None = None


class ImagesResponse(msgspec.Struct):
    """``POST /v1/images/generations`` answer: the upstream's JSON with ``extra`` spliced in."""

    created: int
    data: list[ImageData]
    extra: ResponseExtra
    background: str | None = None
    output_format: str | None = None
    quality: str | None = None
    size: str | None = None
    usage: Usage | None = None


class Health(msgspec.Struct):
    status: str


_ERRORS = {
    "400": "Invalid request (OpenAI's codes: invalid_value, unknown_parameter, ...).",
    "401": "Missing or incorrect gateway key.",
    "403": "The key may not use this model.",
    "404": "Unknown model or URL.",
    "405": "Method not allowed.",
    "408": "The request body (an edit's uploads) was not received in time.",
    "413": "Request body too large.",
    "429": "Rate limited (by the gateway or every upstream).",
    "500": "Unexpected gateway error (the message carries the request id).",
    "502": "Every upstream target failed; extra.routing.attempts lists them.",
    "503": "Draining or no capacity.",
    "504": "The request deadline passed; extra.routing.attempts lists the attempts.",
}


def _json(ref: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref}}}


_EVENTS = ("`event: image_generation.partial_image` / `image_generation.completed` (`image_edit.` for edits) "
           "with a JSON object in `data:`; a failure after the first event ends the stream with "
           "`event: error` and `{\"type\": \"error\", \"error\": {...}}`.")

#: The multipart form of an edit, as OpenAI takes it (the JSON form is the request schema).
_EDIT_FORM = {
    "type": "object", "required": ["image", "prompt"],
    "properties": {
        "image": {"type": "string", "format": "binary", "description": "One image (png, webp or jpg)."},
        "image[]": {"type": "array", "maxItems": 16, "items": {"type": "string", "format": "binary"},
                    "description": "Several images."},
        "mask": {"type": "string", "format": "binary", "description": "A PNG with alpha, the first image's size."},
        "prompt": {"type": "string", "minLength": 1, "maxLength": 32000},
        "model": {"type": "string"}, "n": {"type": "integer", "minimum": 1, "maximum": 10},
        "size": {"type": "string"}, "quality": {"type": "string"}, "background": {"type": "string"},
        "output_format": {"type": "string"}, "output_compression": {"type": "integer", "minimum": 0, "maximum": 100},
        "input_fidelity": {"type": "string"}, "moderation": {"type": "string"}, "user": {"type": "string"},
        "stream": {"type": "boolean"}, "partial_images": {"type": "integer", "minimum": 0, "maximum": 3},
    },
}


def build_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document as a dict (JSON Schema 2020-12 is OpenAPI 3.1's dialect)."""
    types = [ImageRequest, ImagesResponse, ErrorBody, ModelList, Health, ModelObject]
    refs, components = msgspec.json.schema_components(types, ref_template=_REF)
    request_ref, images_ref, error_ref, models_ref, health_ref, model_ref = refs
    errors = {status: _json(error_ref, text) for status, text in _ERRORS.items()}

    def op(summary: str, ok: dict[str, Any], codes: tuple[str, ...], secure: bool = True,
           **more: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **{c: errors[c] for c in codes}}}
        if not secure:
            out["security"] = []
        return {**out, **more}

    answer = _json(images_ref, "The generated images; with `stream: true`, Server-Sent Events instead.")
    answer["content"]["text/event-stream"] = {"schema": {"type": "string", "description": _EVENTS}}
    images = op("Generate images", answer,
                ("400", "401", "403", "404", "413", "429", "500", "502", "503", "504"),
                operationId="createImage",
                requestBody={"required": True, "content": {"application/json": {
                    "schema": request_ref,
                    "example": {"model": "openai/gpt-image-2", "prompt": "A small red cube on a white background.",
                                "size": "1024x1024", "quality": "medium"}}}})
    edits = op("Edit images", answer, ("400", "401", "403", "404", "408", "413", "429", "500", "502", "503", "504"),
               operationId="createImageEdit",
               requestBody={"required": True, "content": {"multipart/form-data": {"schema": _EDIT_FORM},
                                                          "application/json": {"schema": request_ref}}})
    retrieve = op("One model this key may use", _json(model_ref, "The model."), ("401", "404", "500"),
                  operationId="retrieveModel",
                  parameters=[{"name": "model", "in": "path", "required": True, "schema": {"type": "string"},
                               "description": "owner/model (the slash is part of the path), an alias or a bare id"}])
    # Draining answers 503 with the health shape, not an error.
    readyz = op("Readiness", _json(health_ref, "Ready to serve."), ("500",), secure=False, operationId="readyz")
    readyz["responses"]["503"] = _json(health_ref, "Draining: stop sending new requests.")
    return {
        "openapi": "3.1.0",
        "info": {"title": "OpenGateway", "version": __version__,
                 "description": "An OpenAI-compatible gateway for image generation. Every non-2xx "
                                "answer has OpenAI's error shape: error.message, type, param, code."},
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/v1/images/generations": {"post": images},
            "/v1/images/edits": {"post": edits},
            "/v1/models/{model}": {"get": retrieve},
            "/v1/models": {"get": op("List the models this key may use",
                                     _json(models_ref, "The models."), ("401", "500"),
                                     operationId="listModels")},
            "/healthz": {"get": op("Liveness", _json(health_ref, "The process is up."), ("500",),
                                   secure=False, operationId="healthz")},
            "/readyz": {"get": readyz},
            "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                      "security": [],
                                      "responses": {"200": {"description": "The OpenAPI document.",
                                                            "content": {"application/json": {}}},
                                                    "500": errors["500"]}}},
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "A gateway key (not a provider key)."}},
        },
    }


#: Encoded once at import: the document depends only on the code, never on the config.
SPEC_BYTES = msgspec.json.encode(build_spec())


@public
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=SPEC_BYTES, content_type="application/json")
