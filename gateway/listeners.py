"""The listening sockets, bound before any app exists: in-process for one worker, or once by the
supervisor and inherited by every worker. Apart from the config, nothing of the gateway is imported:
the supervisor uses this module and must not load the app (nor prometheus_client, whose
single- or multi-process mode is fixed when it is first imported)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from gateway.config import Config

#: Connections the kernel queues before a worker accepts them (also covers a worker's restart).
BACKLOG = 4096


@dataclass
class Listeners:
    public: socket.socket
    #: Serves only the operator routes (/metrics, /dashboard) when server.admin_port is set.
    admin: socket.socket | None = None

    @property
    def port(self) -> int:
        return int(self.public.getsockname()[1])

    @property
    def admin_port(self) -> int | None:
        return int(self.admin.getsockname()[1]) if self.admin is not None else None

    def close(self) -> None:
        for sock in (self.public, self.admin):
            if sock is not None:
                sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket. SO_REUSEADDR only (not SO_REUSEPORT): a second gateway started on
    the same port must fail loudly rather than silently share the traffic."""
    family, type_, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class CannotListen(OSError):
    """A socket that could not be bound; the message names the address and what it was for."""


def _bind(what: str, host: str, port: int) -> socket.socket:
    try:
        return bind_socket(host, port)
    except OSError as exc:
        raise CannotListen(exc.errno, f"cannot listen on {host}:{port} ({what}): {exc.strerror or exc}") from exc


def bind_listeners(config: Config, host: str, port: int) -> Listeners:
    public = _bind("the API port", host, port)
    if config.server.admin_port is None:
        return Listeners(public)
    try:
        return Listeners(public, _bind("server.admin_port", config.server.admin_host, config.server.admin_port))
    except BaseException:
        public.close()
        raise
