"""``Idempotency-Key`` shared through a real Redis: replicas and workers see one key, a replica that
dies holding a key leaves it to expire (and its repeat is told the outcome is unknown), and the
official SDK's own retries across two replicas of two workers, one restarted mid-way, generate
each image once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import openai
import pytest
import redis

from gateway.app import create_app
from gateway.config_load import parse_config
from tests.conftest import AUTH, GATEWAY_KEY, base_config_yaml, eventually
from tests.fake_upstream import FakeUpstream, block, hang
from tests.gateway_process import GatewayProcess
from tests.redis_server import RedisServer

BODY = {"model": "openai/gpt-image-1", "prompt": "A small red cube on a white background."}
URL = "/v1/images/generations"


def config_text(upstream: FakeUpstream, redis_server: RedisServer, extra: str = "") -> str:
    return base_config_yaml(upstream.url, f"limits: {{backend: '{redis_server.url}'}}\n{extra}")


async def replica(aiohttp_client: Any, upstream: FakeUpstream, redis_server: RedisServer, extra: str = "") -> Any:
    """A gateway replica in this process (its own app, its own memory), sharing the Redis."""
    return await aiohttp_client(create_app(parse_config(config_text(upstream, redis_server, extra), env={})))


async def post(client: Any, key: str, body: dict[str, Any] = BODY) -> tuple[Any, bytes]:
    resp = await client.post(URL, json=body, headers={**AUTH, "Idempotency-Key": key})
    return resp, await resp.read()


async def test_replicas_share_keys_answers_and_waits(aiohttp_client: Any, upstream: FakeUpstream,
                                                    own_redis: RedisServer) -> None:
    a = await replica(aiohttp_client, upstream, own_redis)
    b = await replica(aiohttp_client, upstream, own_redis)
    started, release = asyncio.Event(), asyncio.Event()
    upstream.script("gpt-image-1", block(started, release))
    first = asyncio.create_task(post(a, "k-shared"))
    await asyncio.wait_for(started.wait(), 10)
    repeat = asyncio.create_task(post(b, "k-shared"))  # on the other replica: waits for the first
    await asyncio.sleep(0.3)
    assert not repeat.done()
    release.set()
    (resp, body), (again, again_body) = await asyncio.gather(first, repeat)
    assert resp.status == 200 and again.status == 200
    assert again.headers["idempotent-replayed"] == "true" and again_body == body
    # The other replica keeps refusing the key with another request, and replays it later.
    other, other_body = await post(b, "k-shared", {**BODY, "prompt": "A blue sphere."})
    assert other.status == 422 and json.loads(other_body)["error"]["code"] == "idempotency_key_reused"
    assert (await post(a, "k-shared"))[0].headers["idempotent-replayed"] == "true"
    assert len(upstream.received) == 1


async def test_concurrent_repeats_on_two_replicas_make_one_call(aiohttp_client: Any, upstream: FakeUpstream,
                                                                own_redis: RedisServer) -> None:
    replicas = [await replica(aiohttp_client, upstream, own_redis) for _ in range(2)]
    upstream.script("gpt-image-1", hang(0.5))
    answers = await asyncio.gather(*(post(replicas[i % 2], "k-race") for i in range(8)))
    bodies = {body for _, body in answers}
    assert [resp.status for resp, _ in answers] == [200] * 8 and len(bodies) == 1
    assert sum(1 for resp, _ in answers if "idempotent-replayed" not in resp.headers) == 1
    assert len(upstream.received) == 1


async def test_expiry_and_the_byte_count_in_redis(aiohttp_client: Any, upstream: FakeUpstream,
                                                  own_redis: RedisServer) -> None:
    client = await replica(aiohttp_client, upstream, own_redis, "idempotency: {ttl_s: 0.5}\n")
    await post(client, "k-expires")
    store = redis.Redis(host="127.0.0.1", port=own_redis.port)
    try:
        counted = int(store.get("opengateway:{idempotency}:bytes") or 0)
        assert counted > 512  # the key's own 512 bytes and its answer
        await asyncio.sleep(0.7)
        resp, _ = await post(client, "k-expires")  # expired: runs afresh, and the old one is let go
        assert "idempotent-replayed" not in resp.headers and len(upstream.received) == 2
        assert abs(int(store.get("opengateway:{idempotency}:bytes") or 0) - counted) < 64
        assert store.zcard("opengateway:{idempotency}:index") == 1
    finally:
        store.close()


async def test_an_unreachable_store_refuses_keyed_requests_only(aiohttp_client: Any, upstream: FakeUpstream,
                                                                own_redis: RedisServer) -> None:
    client = await replica(aiohttp_client, upstream, own_redis)
    own_redis.stop()
    resp, body = await post(client, "k-down")
    assert resp.status == 503 and json.loads(body)["error"]["code"] == "idempotency_unavailable"
    assert resp.headers["retry-after"] == "1"
    assert len(upstream.received) == 0  # nothing generated: the retry is safe


async def test_a_replica_that_dies_holding_a_key(aiohttp_client: Any, upstream: FakeUpstream, own_redis: RedisServer,
                                                 tmp_path: Path) -> None:
    terms = "router: {deadline_s: 1}\nidempotency: {lock_margin_s: 0.5, wait_s: 10}\n"
    config = tmp_path / "dies.yaml"
    config.write_text(config_text(upstream, own_redis, terms))
    started, release = asyncio.Event(), asyncio.Event()
    upstream.script("gpt-image-1", block(started, release))
    dying = await GatewayProcess.start(config)
    try:
        url = await dying.url()
        async with aiohttp.ClientSession() as session:
            first = asyncio.create_task(session.post(f"{url}{URL}", json=BODY,
                                                     headers={**AUTH, "Idempotency-Key": "k-lost"}))
            await asyncio.wait_for(started.wait(), 30)
            dying.process.kill()  # SIGKILL, by its pid: no chance to settle the key
            await dying.wait()
            with pytest.raises(aiohttp.ClientError):
                await first
    finally:
        await dying.close()
    survivor = await replica(aiohttp_client, upstream, own_redis, terms)
    resp, body = await post(survivor, "k-lost")  # waits out the lock (1.5 s), then is told
    error_object = json.loads(body)["error"]
    assert resp.status == 409 and error_object["code"] == "idempotency_key_in_doubt"
    assert resp.headers["x-should-retry"] == "false"
    assert len(upstream.received) == 1
    # The operator may choose to run such repeats afresh (and may pay twice).
    brave = await replica(aiohttp_client, upstream, own_redis, terms.replace("wait_s: 10", "wait_s: 10, on_lost: retry"))
    resp, _ = await post(brave, "k-lost")
    assert resp.status == 200 and len(upstream.received) == 2
    release.set()


async def test_two_workers_share_keys(upstream: FakeUpstream, own_redis: RedisServer, tmp_path: Path) -> None:
    config = tmp_path / "workers.yaml"
    config.write_text(config_text(upstream, own_redis))
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    upstream.script("gpt-image-1", hang(0.5))
    gateway = await GatewayProcess.start(config, "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        url = await gateway.url()
        await gateway.wait_for_lines(r"OpenGateway listening on http://[0-9.:]+$", count=2)
        # Separate connections, so that both workers take some of them.
        async def one() -> tuple[int, bytes, str]:
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{url}{URL}", json=BODY,
                                        headers={**AUTH, "Idempotency-Key": "k-workers"}) as resp:
                    return resp.status, await resp.read(), resp.headers.get("idempotent-replayed", "")
        answers = await asyncio.gather(*(one() for _ in range(10)))
    finally:
        await gateway.close()
    assert {status for status, _, _ in answers} == {200} and len({body for _, body, _ in answers}) == 1
    assert [replayed for _, _, replayed in answers].count("") == 1
    assert len(upstream.received) == 1


class RoundRobin:
    """A TCP balancer on loopback in front of the replicas: each new connection goes to the next
    replica, skipping one that refuses (a replica restarting)."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.connections = 0
        self._next = itertools.count()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        for _ in range(len(self.backends) * 2):
            port = self.backends[next(self._next) % len(self.backends)]
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            client_writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
        await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def two_replicas(upstream: FakeUpstream, own_redis: RedisServer, tmp_path: Path
                       ) -> AsyncIterator[tuple[list[GatewayProcess], RoundRobin, str, Path]]:
    config = tmp_path / "replica.yaml"
    config.write_text(config_text(upstream, own_redis))
    replicas: list[GatewayProcess] = []
    ports = []
    for i in range(2):
        metrics_dir = tmp_path / f"metrics-{i}"
        metrics_dir.mkdir()
        process = await GatewayProcess.start(config, "--workers", "2",
                                             env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
        replicas.append(process)
        ports.append(int((await process.url()).rsplit(":", 1)[1]))
        await process.wait_for_lines(r"OpenGateway listening on http://[0-9.:]+$", count=2)
    balancer = RoundRobin(ports)
    url = await balancer.start()
    try:
        yield replicas, balancer, url, config
    finally:
        await balancer.close()
        for process in replicas:
            await process.close()


async def test_the_sdks_retries_across_replicas_and_a_restart_generate_once(
        two_replicas: tuple[list[GatewayProcess], RoundRobin, str, Path], upstream: FakeUpstream,
        tmp_path: Path) -> None:
    replicas, balancer, url, config = two_replicas
    # Each image takes 2 s upstream; the SDK gives up on a try after 0.7 s and retries twice (its
    # default), with the same Idempotency-Key on every try.
    for _ in range(3):
        upstream.script("gpt-image-1", hang(2.0))
    keys = ["order-1", "order-2", "order-3"]

    async def generate(key: str, timeout_s: float, retries: int) -> Any:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=GATEWAY_KEY, max_retries=retries,
                                      timeout=timeout_s) as sdk:
            return await sdk.images.generate(model=BODY["model"], prompt=f"A cube for {key}",
                                             extra_headers={"Idempotency-Key": key})

    calls = [asyncio.create_task(generate(key, 0.7, 2)) for key in keys]
    assert await eventually(lambda: len(upstream.received) == 3)
    # Replica 0 restarts while the first tries are being generated: it finishes what it holds
    # (its keyed requests outlive their clients), keeps the answers in Redis, and exits.
    replicas[0].signal(signal.SIGTERM)
    assert await replicas[0].wait() == 0
    metrics_dir = tmp_path / "metrics-restarted"
    metrics_dir.mkdir()
    restarted = await GatewayProcess.start(config, "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    replicas.append(restarted)
    balancer.backends[0] = int((await restarted.url()).rsplit(":", 1)[1])

    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:  # an answer, or the SDK gave up after its three tries
        assert not isinstance(outcome, BaseException) or isinstance(outcome, openai.APITimeoutError), outcome
    assert balancer.connections >= 3 * 2  # the SDK did retry
    # Every key's image, fetched once more with the same key: the one generation, replayed.
    images = [await generate(key, 30, 0) for key in keys]
    for key, image, outcome in zip(keys, images, outcomes):
        assert image.data and image.data[0].b64_json
        if not isinstance(outcome, BaseException):
            assert outcome.data[0].b64_json == image.data[0].b64_json and outcome.created == image.created
    prompts = sorted(r.body["prompt"] for r in upstream.received)
    assert prompts == [f"A cube for {key}" for key in keys]  # exactly one generation per key
