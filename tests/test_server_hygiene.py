"""Server hygiene: the client address behind trusted proxies, header and body limits, the body read
timeout, and operator routes kept off the public port (server.admin_port)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.forwarded import resolve_client_ip, trusted_networks
from gateway.appkeys import RECORD
from tests.conftest import AUTH, base_config_yaml
from tests.gateway_process import GatewayProcess

PROXIES = trusted_networks(("10.0.0.0/8", "2001:db8::/32", "127.0.0.1"))


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    assert resolve_client_ip("10.0.0.5", ["198.51.100.1"], ()) == "10.0.0.5"


@pytest.mark.parametrize("peer, xff, client", [
    # An untrusted peer cannot choose its address through the header.
    ("203.0.113.9", ["10.1.1.1"], "203.0.113.9"),
    # Through one trusted proxy.
    ("10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
    # A client-sent (spoofed) left part is skipped: the right-most untrusted address wins.
    ("10.0.0.5", ["6.6.6.6, 198.51.100.1, 10.0.0.7"], "198.51.100.1"),
    # Several header lines count as one list, in order.
    ("10.0.0.5", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),
    # Every hop trusted: the left-most one is the client.
    ("10.0.0.5", ["10.9.9.9, 10.0.0.7"], "10.9.9.9"),
    # Garbage stops the walk at the last proxy we can vouch for.
    ("10.0.0.5", ["198.51.100.1, not-an-ip"], "10.0.0.5"),
    # Ports and IPv6, IPv4-mapped peers.
    ("2001:db8::1", ["[2001:db8:ffff::1]:443, 198.51.100.1:5000"], "198.51.100.1"),
    ("::ffff:10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
    ("10.0.0.5", [], "10.0.0.5"),
])
def test_client_ip_is_the_rightmost_untrusted_address(peer: str, xff: list[str], client: str) -> None:
    assert resolve_client_ip(peer, xff, PROXIES) == client


def capture_records(app: web.Application) -> list[Any]:
    records: list[Any] = []

    async def keep(request: web.Request, response: web.StreamResponse) -> None:
        records.append(request[RECORD])
    app.on_response_prepare.append(keep)
    return records


@pytest.mark.parametrize("trusted, client", [("[]", "127.0.0.1"), ('["127.0.0.0/8"]', "198.51.100.1")])
async def test_request_record_has_the_client_ip(aiohttp_client: Callable[..., Any], make_config: Any,
                                                trusted: str, client: str) -> None:
    app = create_app(make_config(f"server:\n  trusted_proxies: {trusted}\n"))
    records = capture_records(app)
    http = await aiohttp_client(app)
    response = await http.get("/v1/models", headers={**AUTH, "X-Forwarded-For": "6.6.6.6, 198.51.100.1"})
    assert response.status == 200
    assert records[0].client_ip == client


async def test_header_limits(make_client: Callable[..., Any]) -> None:
    http = await make_client("server:\n  max_header_bytes: 1024\n  max_headers: 16\n")
    assert (await http.get("/healthz", headers={"X-Pad": "a" * 900})).status == 200
    assert (await http.get("/healthz", headers={"X-Pad": "a" * 1100})).status == 400
    too_many = {f"X-H{i}": "1" for i in range(20)}
    assert (await http.get("/healthz", headers=too_many)).status == 400


async def test_body_limit(make_client: Callable[..., Any]) -> None:
    http = await make_client("server:\n  max_body_bytes: 2048\n")
    response = await http.post("/v1/images/generations", headers=AUTH,
                               json={"model": "openai/gpt-image-1", "prompt": "p" * 4096})
    assert response.status == 413


async def test_slow_body_times_out_with_408(make_client: Callable[..., Any]) -> None:
    http = await make_client("server:\n  body_read_timeout_s: 0.2\n")
    reader, writer = await asyncio.open_connection(http.host, http.port)
    writer.write(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: {AUTH['Authorization']}\r\nContent-Length: 100\r\n\r\n".encode()
                 + b'{"model": ')  # ... and the rest never comes
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    body = await asyncio.wait_for(reader.read(4096), 30)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in body


async def test_admin_routes_only_on_the_admin_port(tmp_path: Path, upstream: Any) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(base_config_yaml(upstream.url) + "server:\n  admin_port: 0\n")
    gateway = await GatewayProcess.start(config)
    try:
        url = await gateway.url()
        admin = (await gateway.wait_for_lines(r"admin routes .* on (http://[0-9.]+:\d+)"))[0].group(1)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/metrics") as response:
                assert response.status == 404
                assert (await response.json())["error"]["code"] == "unknown_url"
            async with session.get(f"{url}/dashboard") as response:
                assert response.status == 404
            async with session.get(f"{admin}/dashboard", allow_redirects=False) as response:
                assert response.status != 404
            async with session.get(f"{admin}/metrics") as response:
                assert response.status == 200
                assert "opengateway_requests_total" in await response.text()
            async with session.get(f"{url}/v1/models", headers=AUTH) as response:
                assert response.status == 200
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait() == 0
    finally:
        await gateway.close()
