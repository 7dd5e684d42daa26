"""Process-level state that no configuration owns: readiness and the admin socket."""

from __future__ import annotations


class Lifecycle:
    def __init__(self, separate_admin_port: bool) -> None:
        #: True once a drain has begun: /readyz answers 503.
        self.draining = False
        #: ``server.admin_port`` was set at start-up: operator routes are served only on that socket.
        self.separate_admin_port = separate_admin_port
        #: The bound admin port once the server has started it (server.admin_port may say 0).
        self.admin_port: int | None = None
