"""Operator routes (/metrics, /dashboard) kept off the public port when ``server.admin_port`` is set.

The server binds a second socket for them; a request for an admin route that arrived on any
other socket answers 404, before auth runs, so the public port does not reveal that they exist.
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import NotFound
from gateway.appkeys import LIFECYCLE
from gateway.middleware import Handler, Next


def admin(handler: Handler) -> Handler:
    """Mark a route handler as an operator route (served on the admin port when there is one)."""
    handler.admin = True  # type: ignore[attr-defined]
    return handler


def on_admin_socket(request: web.Request) -> bool:
    """True when there is no separate admin port, or the request came in on it."""
    lifecycle = request.app[LIFECYCLE]
    if not lifecycle.separate_admin_port:
        return True
    admin_port = lifecycle.admin_port  # the bound port (the config may say 0)
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return admin_port is not None and isinstance(sockname, tuple) and sockname[1] == admin_port


@web.middleware
def admin_port_middleware(request: web.Request, handler: Handler) -> Next:
    if getattr(request.match_info.handler, "admin", False) and not on_admin_socket(request):
        # Word for word what an unknown path gets (middleware/errors.py).
        raise NotFound(f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    return handler(request)
