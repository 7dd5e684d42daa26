"""What one configuration makes of the gateway: config, model table, router, key index.

A reload builds a new GatewayState and swaps it in; requests in flight keep the one they
started with.
"""

from __future__ import annotations

import aiohttp

from gateway.config import Config, KeyConfig
from gateway.http_client import HTTPClient
from gateway.registry import Registry
from gateway.router import Router


class GatewayState:
    def __init__(self, config: Config, registry: Registry, router: Router) -> None:
        self.config = config
        self.registry = registry
        self.router = router
        self.keys_by_digest: dict[bytes, tuple[bytes, KeyConfig]] = {}
        for key in config.keys:
            digest = bytes.fromhex(key.hash.removeprefix("sha256:"))
            self.keys_by_digest[digest] = (digest, key)

    @classmethod
    def build(cls, config: Config, session: aiohttp.ClientSession, http: HTTPClient) -> "GatewayState":
        return cls(config, Registry.build(config, session, http), Router(config.router))


class Lifecycle:
    """Process-level readiness: false once a drain has begun."""

    def __init__(self) -> None:
        self.draining = False
        #: The bound admin port once the server has started it (server.admin_port may say 0).
        self.admin_port: int | None = None
