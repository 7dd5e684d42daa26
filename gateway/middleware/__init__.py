"""The middleware chain, one concern a module; the order is the list in ``gateway.app``.

A link that only acts before the handler (auth, identity, admin port, validation of a body that
has fully arrived, limits of a key without any) is a plain function returning ``handler(request)``
unawaited: aiohttp awaits what a middleware returns, so the link costs no coroutine of its own
and holds no frame while the request waits on its upstream (S1 CPU and S4 memory in bench/).
Links that act after the handler, or must await, are coroutines.
"""

from typing import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: What a middleware link returns: the response, or the next link's awaitable (see above).
Next = Awaitable[web.StreamResponse]


def public(handler: Handler) -> Handler:
    """Mark a route handler as reachable without a gateway key (health checks)."""
    handler.public = True  # type: ignore[attr-defined]
    return handler
