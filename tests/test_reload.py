"""Config reload: POST /admin/reload (admin key) and SIGHUP re-read the file the gateway started
with; a bad file is refused and the running config stays; requests in flight keep their state."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from gateway.app import create_app
from gateway.config import key_hash
from gateway.config_load import load_config
from tests.conftest import UPSTREAM_KEY
from tests.fake_upstream import FakeUpstream, error
from tests.gate import Gate
from tests.gateway_process import wait_listening

KEY, NEW_KEY, ADMIN_KEY = "og-reload-key-1a2b", "og-reload-key-new-3c4d", "og-reload-admin-5e6f"
BODY = {"model": "openai/gpt-image-1", "prompt": "a cube"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def config_text(upstream_url: str, keys: tuple[str, ...] = (KEY,), limits: str = "", extra: str = "") -> str:
    entries = "".join(f'  - {{name: k{i}, hash: "{key_hash(k)}"{limits}}}\n' for i, k in enumerate(keys))
    return f"""keys:
{entries}admin_keys:
  - {{name: ops, hash: "{key_hash(ADMIN_KEY)}"}}
providers:
  - id: openai-main
    plugin: openai
    settings: {{api_key: {UPSTREAM_KEY}, base_url: "{upstream_url}"}}
{extra}"""


@pytest.fixture
def started(aiohttp_client: Callable[..., Any], upstream: Any, tmp_path: Path) -> Callable[..., Any]:
    """A gateway started from a config file, and that file."""
    async def start(text: str) -> tuple[Any, Path]:
        path = tmp_path / "gateway.yaml"
        path.write_text(text)
        return await aiohttp_client(create_app(load_config(str(path)), config_path=str(path))), path
    return start


async def test_admin_reload_swaps_keys(started: Any, upstream: Any) -> None:
    client, path = await started(config_text(upstream.url))
    assert (await client.post("/v1/images/generations", json=BODY, headers=auth(NEW_KEY))).status == 401
    path.write_text(config_text(upstream.url, keys=(NEW_KEY,)))
    resp = await client.post("/admin/reload", headers=auth(ADMIN_KEY))
    assert resp.status == 200 and (await resp.json())["status"] == "reloaded"
    assert (await client.post("/v1/images/generations", json=BODY, headers=auth(NEW_KEY))).status == 200
    assert (await client.post("/v1/images/generations", json=BODY, headers=auth(KEY))).status == 401


async def test_invalid_config_is_refused_and_the_old_one_stays(started: Any, upstream: Any,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    client, path = await started(config_text(upstream.url))
    path.write_text(config_text(upstream.url, extra="models:\n  openai/gpt-image-1: {targets: [nowhere]}\n"))
    resp = await client.post("/admin/reload", headers=auth(ADMIN_KEY))
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["code"] == "invalid_config"
    [problem] = body["extra"]["problems"]
    assert problem["path"] == "$.models.openai/gpt-image-1.targets[0]" and "nowhere" in problem["message"]
    assert any("reload refused" in r.getMessage() for r in caplog.records)
    assert (await client.post("/v1/images/generations", json=BODY, headers=auth(KEY))).status == 200


async def test_reload_needs_an_admin_key(started: Any, upstream: Any) -> None:
    client, _ = await started(config_text(upstream.url))
    assert (await client.post("/admin/reload")).status == 401
    assert (await client.post("/admin/reload", headers=auth("og-nobody"))).status == 401
    resp = await client.post("/admin/reload", headers=auth(KEY))  # a gateway key is not an admin key
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "admin_key_required"


async def test_without_a_config_file_reload_says_so(aiohttp_client: Any, upstream: Any, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(config_text(upstream.url))
    client = await aiohttp_client(create_app(load_config(str(path))))
    resp = await client.post("/admin/reload", headers=auth(ADMIN_KEY))
    assert resp.status == 400 and "without a config file" in (await resp.json())["extra"]["problems"][0]["message"]


async def test_in_flight_request_keeps_its_state(started: Any, upstream: Any, aiohttp_server: Any) -> None:
    second = FakeUpstream()
    second_url = str((await aiohttp_server(second.app())).make_url("/v1"))
    client, path = await started(config_text(upstream.url))
    gate = Gate(1)
    upstream.script("gpt-image-1", gate)
    in_flight = asyncio.create_task(client.post("/v1/images/generations", json=BODY, headers=auth(KEY)))
    await gate.all_arrived.wait()
    path.write_text(config_text(second_url))
    assert (await client.post("/admin/reload", headers=auth(ADMIN_KEY))).status == 200
    assert (await client.post("/v1/images/generations", json=BODY, headers=auth(KEY))).status == 200
    gate.release.set()
    assert (await in_flight).status == 200  # finished on the old provider after the swap
    assert len(upstream.received) == 1 and len(second.received) == 1


async def test_limit_counters_survive_a_reload(started: Any, upstream: Any) -> None:
    client, path = await started(config_text(upstream.url, limits=", limits: {requests_per_minute: 2}"))
    for _ in range(2):
        assert (await client.post("/v1/images/generations", json=BODY, headers=auth(KEY))).status == 200
    path.write_text(config_text(upstream.url, keys=(KEY, NEW_KEY), limits=", limits: {requests_per_minute: 2}"))
    assert (await client.post("/admin/reload", headers=auth(ADMIN_KEY))).status == 200
    assert (await client.post("/v1/images/generations", json=BODY, headers=auth(KEY))).status == 429


def _post(url: str, key: str) -> int:
    request = urllib.request.Request(url, data=b'{"model": "openai/gpt-image-1", "prompt": "a cube"}',
                                     headers={**auth(key), "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_sighup_reloads_a_real_server(upstream: Any, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(upstream.url, extra=f"server: {{port: {port}, access_log: false}}\n"))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1/images/generations"
    try:
        await wait_listening(proc, port)
        assert await asyncio.to_thread(_post, url, NEW_KEY) == 401
        path.write_text(config_text(upstream.url, keys=(NEW_KEY,),
                                    extra=f"server: {{port: {port}, access_log: false}}\n"))
        os.kill(proc.pid, signal.SIGHUP)
        statuses = []
        for _ in range(100):  # bounded: the reload runs as a task in the server's loop
            statuses.append(await asyncio.to_thread(_post, url, NEW_KEY))
            if statuses[-1] == 200:
                break
            await asyncio.sleep(0.05)
        assert statuses[-1] == 200 and set(statuses) <= {401, 200}
        assert await asyncio.to_thread(_post, url, KEY) == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert "config reloaded" in err


async def test_a_reload_rotates_the_metrics_token_and_says_so(started: Any, upstream: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="opengateway.reload")
    old, new = "metrics-token-old-0123456789", "metrics-token-new-0123456789"
    client, path = await started(config_text(upstream.url, extra=f"metrics: {{bearer_token: {old}}}\n"))
    assert (await client.get("/metrics", headers=auth(old))).status == 200
    assert (await client.get("/metrics", headers=auth(new))).status == 401
    path.write_text(config_text(upstream.url, extra=f"metrics: {{bearer_token: {new}}}\n"))
    assert (await client.post("/admin/reload", headers=auth(ADMIN_KEY))).status == 200
    assert (await client.get("/metrics", headers=auth(new))).status == 200
    assert (await client.get("/metrics", headers=auth(old))).status == 401
    assert any("changed: metrics" in r.getMessage() for r in caplog.records)  # the operator is told


async def test_a_provider_credential_added_by_a_reload_is_redacted(started: Any, upstream: Any) -> None:
    """The redactor is rebuilt from each configuration: a credential that arrived with a reload is
    scrubbed, in whole and in the masked forms upstreams quote, like one configured at start."""
    added = "azure-style-credential-9f8e7d6c5b4a"  # not sk-shaped: only the configured value tells
    client, path = await started(config_text(upstream.url))
    path.write_text(config_text(upstream.url, extra=f"""  - id: second
    plugin: openai
    region: second
    settings: {{api_key: {added}, base_url: "{upstream.url}"}}
models:
  openai/gpt-image-1: {{targets: [second]}}
"""))
    assert (await client.post("/admin/reload", headers=auth(ADMIN_KEY))).status == 200
    upstream.script("gpt-image-1", error(400, "invalid_value",
                                         f"Bad value near {added}; key {added[:8]}\u2026{added[-4:]}"))
    resp = await client.post("/v1/images/generations", json=BODY, headers=auth(KEY))
    text = await resp.text()
    assert resp.status == 400 and "Bad value near" in text
    assert upstream.received[-1].headers["Authorization"] == f"Bearer {added}"  # it did go to the new one
    for piece in (added, added[:8], added[-6:]):
        assert piece not in text
