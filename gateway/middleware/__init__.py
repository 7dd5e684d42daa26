"""The middleware chain, one concern a module; the order is the list in ``gateway.app``."""

from typing import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def public(handler: Handler) -> Handler:
    """Mark a route handler as reachable without a gateway key (health checks)."""
    handler.public = True  # type: ignore[attr-defined]
    return handler
