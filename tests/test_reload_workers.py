"""Reload with ``serve --workers 2``: every reloadable setting reaches every worker, whichever way
the reload is asked for (SIGHUP to the supervisor, SIGHUP to a worker, ``POST /admin/reload`` on
any worker), and a config that one worker refuses is taken by none.

Which worker answers is the kernel's choice, so the test decides it: it stops (SIGSTOP) the other
worker while it checks one. Each configuration differs from the others in every reloadable setting,
and ``check`` reads each of them back from one worker.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from gateway.config import key_hash
from tests.fake_upstream import FakeUpstream, error
from tests.gateway_process import GatewayProcess

WORKER_STARTED = r"worker (\d+) started \(pid (\d+)\)"
LISTENING = r"OpenGateway listening on http://[0-9.:]+$"


class Generation(msgspec.Struct, frozen=True):
    """One configuration: every reloadable setting has a value of its own."""

    name: str
    key: str
    admin_key: str
    metrics_token: str
    secret: str  # the provider credential
    model: str
    attempts_per_target: int  # router
    refresh_s: int  # dashboard
    include_prompt: bool  # log

    def yaml(self, upstream_url: str) -> str:
        return f"""
keys: [{{name: "k-{self.name}", hash: "{key_hash(self.key)}"}}]
admin_keys: [{{name: "ops-{self.name}", hash: "{key_hash(self.admin_key)}"}}]
providers:
  - {{id: "up-{self.name}", plugin: openai, settings: {{api_key: "{self.secret}", base_url: "{upstream_url}"}}}}
models:
  "openai/{self.model}": {{targets: ["up-{self.name}"]}}
router: {{max_attempts_per_target: {self.attempts_per_target}, backoff_base_s: 0.01, backoff_cap_s: 0.02}}
metrics: {{bearer_token: "{self.metrics_token}"}}
dashboard: {{refresh_s: {self.refresh_s}}}
log: {{include_prompt: {str(self.include_prompt).lower()}}}
"""


GENERATIONS = [
    Generation(name=n, key=f"og-reload-{n}-key-0123456789", admin_key=f"og-reload-{n}-admin-0123456789",
               metrics_token=f"metrics-token-{n}-0123456789", secret=f"sk-reload-{n}-secret-0123456789",
               model=model, attempts_per_target=attempts, refresh_s=refresh, include_prompt=prompt)
    for n, model, attempts, refresh, prompt in (("a", "gpt-image-1.5", 1, 111, False),
                                                ("b", "gpt-image-2", 2, 222, True),
                                                ("c", "gpt-image-1-mini", 1, 333, False),
                                                ("d", "gpt-image-2", 2, 444, True))]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Workers:
    def __init__(self, process: GatewayProcess, url: str, pids: list[int]) -> None:
        self.process, self.url, self.pids = process, url, pids

    async def only(self, pid: int) -> None:
        for other in self.pids:
            if other != pid:
                os.kill(other, signal.SIGSTOP)

    def all(self) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)


async def check(workers: Workers, pid: int, gen: Generation, upstream: FakeUpstream) -> None:
    """Every reloadable setting of ``gen``, read back from the worker ``pid`` alone."""
    others = [g for g in GENERATIONS if g.name != gen.name]
    await workers.only(pid)
    try:
        # A new connection per request, so that the one running worker accepts each.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async def get(path: str, headers: dict[str, str]) -> tuple[int, str]:
                async with http.get(workers.url + path, headers=headers) as resp:
                    return resp.status, await resp.text()

            # keys and models
            status, text = await get("/v1/models", bearer(gen.key))
            assert status == 200 and [m["id"] for m in msgspec.json.decode(text)["data"]] == [f"openai/{gen.model}"]
            assert [(await get("/v1/models", bearer(g.key)))[0] for g in others] == [401] * len(others)
            # admin keys and the dashboard
            status, text = await get("/dashboard", bearer(gen.admin_key))
            assert status == 200 and f'content="{gen.refresh_s}"' in text
            assert [(await get("/dashboard/data.json", bearer(g.admin_key)))[0] for g in others] == [401] * len(others)
            # the metrics token
            assert (await get("/metrics", bearer(gen.metrics_token)))[0] == 200
            assert [(await get("/metrics", bearer(g.metrics_token)))[0] for g in others] == [401] * len(others)
            # providers, their secrets (the redactor) and the router: a 503 that quotes the key
            upstream.script(gen.model, *[error(503, None, f"overloaded for {gen.secret}") for _ in range(2)])
            seen = len(upstream.received)
            request_id = f"req-{gen.name}-{pid}"
            async with http.post(workers.url + "/v1/images/generations", headers={
                    **bearer(gen.key), "x-request-id": request_id},
                    json={"model": f"openai/{gen.model}", "prompt": f"prompt-{request_id}"}) as resp:
                assert resp.status == 502
                text = await resp.text()
            assert gen.secret not in text and gen.secret[3:] not in text
            calls = upstream.received[seen:]
            assert len(calls) == gen.attempts_per_target  # router.max_attempts_per_target
            assert {c.headers["Authorization"] for c in calls} == {f"Bearer {gen.secret}"}
            upstream.scripts.pop(gen.model, None)
    finally:
        workers.all()
    # the log settings: the access line of that request carries the prompt only when included
    [line] = await workers.process.wait_for_lines(rf'"request_id":"{request_id}".*')
    assert (f"prompt-{request_id}" in line.group(0)) is gen.include_prompt


@pytest.fixture
async def two_workers(tmp_path: Path, upstream: FakeUpstream) -> Any:
    path = tmp_path / "gateway.yaml"
    path.write_text(GENERATIONS[0].yaml(upstream.url))
    process = await GatewayProcess.start(path, "--workers", "2")
    try:
        url = await process.url()
        started = await process.wait_for_lines(WORKER_STARTED, count=2)
        await process.wait_for_lines(LISTENING, count=2)
        yield Workers(process, url, [int(m.group(2)) for m in started]), path
    finally:
        await process.close()


async def test_every_setting_reaches_every_worker_however_the_reload_is_asked(
        two_workers: Any, upstream: FakeUpstream) -> None:
    workers, path = two_workers
    a, b, c, d = GENERATIONS
    for pid in workers.pids:
        await check(workers, pid, a, upstream)

    # SIGHUP to the supervisor
    path.write_text(b.yaml(upstream.url))
    workers.process.signal(signal.SIGHUP)
    await workers.process.wait_for_lines(r"config reloaded on 2 of 2 worker\(s\) \(generation 2\)")
    for pid in workers.pids:
        await check(workers, pid, b, upstream)

    # POST /admin/reload on one worker (a kept-alive connection that worker accepted): it answers for both
    path.write_text(c.yaml(upstream.url))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        await workers.only(workers.pids[1])
        try:
            async with http.get(workers.url + "/healthz") as resp:
                assert resp.status == 200
        finally:
            workers.all()
        async with http.post(workers.url + "/admin/reload", headers=bearer(b.admin_key)) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
    assert (answer["status"], answer["workers"], answer["of"], answer["generation"]) == ("reloaded", 2, 2, 3)
    for pid in workers.pids:
        await check(workers, pid, c, upstream)

    # SIGHUP to one worker: the supervisor reloads both
    path.write_text(d.yaml(upstream.url))
    os.kill(workers.pids[0], signal.SIGHUP)
    await workers.process.wait_for_lines(r"config reloaded on 2 of 2 worker\(s\) \(generation 4\)")
    for pid in workers.pids:
        await check(workers, pid, d, upstream)


async def test_a_refused_config_changes_no_worker(two_workers: Any, upstream: FakeUpstream) -> None:
    workers, path = two_workers
    a = GENERATIONS[0]
    path.write_text(a.yaml(upstream.url) + "\nrouter: {nope: 1}\n")
    async with aiohttp.ClientSession() as http, http.post(workers.url + "/admin/reload",
                                                           headers=bearer(a.admin_key)) as resp:
        answer = await resp.json()
    assert resp.status == 400 and answer["error"]["code"] == "invalid_config"
    assert answer["extra"]["problems"][0]["path"].startswith("$.router")
    for pid in workers.pids:
        await check(workers, pid, a, upstream)


async def test_a_worker_that_starts_during_a_reload_runs_the_new_config(two_workers: Any,
                                                                         upstream: FakeUpstream) -> None:
    """A worker that dies and restarts is handed the committed config, whatever the file holds;
    a reload asked while it starts waits for its SIGHUP handler instead of killing it."""
    workers, path = two_workers
    a, b = GENERATIONS[:2]
    path.write_text(b.yaml(upstream.url))
    os.kill(workers.pids[0], signal.SIGKILL)
    await workers.process.wait_for_lines(r"worker 1 \(pid \d+\) died")
    started = await workers.process.wait_for_lines(WORKER_STARTED, count=3)
    replacement = int(started[2].group(2))
    os.kill(replacement, signal.SIGHUP)  # before its handler exists: blocked, then handled
    await workers.process.wait_for_lines(r"config reloaded on 2 of 2 worker\(s\) \(generation 2\)")
    await workers.process.wait_for_lines(LISTENING, count=3)
    workers.pids = [replacement, workers.pids[1]]
    os.kill(replacement, 0)  # alive: the early SIGHUP did not kill it
    for pid in workers.pids:
        await check(workers, pid, b, upstream)
