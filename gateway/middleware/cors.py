"""CORS for the API routes (gateway/cors.py; off unless ``cors.allow_origins`` is set).

A browser sends its preflight (``OPTIONS`` with ``Access-Control-Request-Method``) without the
page's ``Authorization`` header, so it is answered here, before auth. Every other answer of an
API route gets its CORS headers when it is prepared (gateway/app.py), errors included: a page
must be able to read its 401 or 429. Operator routes (/metrics, /dashboard, /admin) and the
health checks are not API routes and never get CORS headers.
"""

from __future__ import annotations

from aiohttp import web

from gateway.appkeys import CORS_HEADERS, RUNTIME
from gateway.cors import CorsPolicy, CorsRefused
from gateway.errors import PermissionDenied
from gateway.middleware import Handler, Next

#: The routes pages may call: the OpenAI-compatible API.
API_PREFIX = "/v1/"


@web.middleware
def cors_middleware(request: web.Request, handler: Handler) -> Next:
    policy = request[RUNTIME].cors
    if policy is None or not request.path.startswith(API_PREFIX):
        return handler(request)
    origin = request.headers.get("Origin")
    if request.method == "OPTIONS" and origin is not None and "Access-Control-Request-Method" in request.headers:
        return _preflight(request, policy, origin)
    headers = policy.actual(origin)
    if headers:
        request[CORS_HEADERS] = headers
    return handler(request)


async def _preflight(request: web.Request, policy: CorsPolicy, origin: str) -> web.StreamResponse:
    """204 with the allow headers, or a 403 that says why (a refused preflight carries no allow
    headers, so the browser refuses the call whatever the status; the 403's body is for whoever
    debugs it with curl or the browser's network panel)."""
    try:
        headers = policy.preflight(origin, request.headers["Access-Control-Request-Method"],
                                   request.headers.get("Access-Control-Request-Headers"))
    except CorsRefused as exc:
        raise PermissionDenied(str(exc), code="cors_not_allowed") from None
    return web.Response(status=204, headers=headers)
