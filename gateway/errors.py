"""The gateway's error tree and its OpenAI-shaped JSON: the only place errors are shaped.

Every non-2xx answer is ``{"error": {"message", "type", "param", "code"}}`` with all four
keys present, as OpenAI sends it; routing failures add ``extra.routing.attempts``.
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec
from aiohttp import web


class ErrorObject(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct, omit_defaults=True):
    error: ErrorObject
    extra: dict[str, Any] | None = None


class GatewayError(Exception):
    """Base of every error the gateway answers with; subclasses fix status, type and code."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if type is not None:
            self.type = type
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.extra = extra

    def to_body(self) -> ErrorBody:
        return ErrorBody(ErrorObject(self.message, self.type, self.param, self.code), self.extra)

    def to_response(self) -> web.Response:
        return web.Response(
            status=self.status,
            body=msgspec.json.encode(self.to_body()),
            content_type="application/json",
            headers=self.headers,
        )


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_value"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    """The client did not send its request body within server.body_read_timeout_s."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """Every target failed; status is the most meaningful of the attempts (502 by default)."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"
    code = "deadline_exceeded"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


def quoted_or(values: Iterable[str]) -> str:
    """``'a' or 'b' or 'c'``: how the gateway's messages offer alternatives."""
    return " or ".join(f"'{v}'" for v in values)


def model_not_found(model: str) -> NotFound:
    return NotFound(
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def model_does_not_exist(model: str) -> InvalidRequest:
    """An id that names no model here (empty, unknown, another owner's): OpenAI's images
    endpoints answer 400 ``image_generation_user_error`` with this message, not a 404."""
    return InvalidRequest(f"The model '{model}' does not exist.", param="model", code="invalid_value",
                          type="image_generation_user_error")


def model_shut_down(model: str, shutdown: str, successors: tuple[str, ...]) -> NotFound:
    """A model every deployment of which is past its shutdown: OpenAI's 404 ``model_not_found``,
    naming the day and the replacements its providers recommend."""
    instead = f" Use {quoted_or(successors)} instead." if successors else ""
    return NotFound(f"The model '{model}' does not exist or you do not have access to it: it was shut "
                    f"down on {shutdown}.{instead}", param="model", code="model_not_found")


def internal_error(request_id: str) -> GatewayError:
    """An unexpected exception: the client learns the request id, never the internals."""
    return GatewayError(
        "The server had an error while processing your request. Sorry about that! "
        f"You can retry your request, or contact us if the error persists (request id {request_id}).",
        code="internal_error",
    )
