"""Fixtures: the real app, with real plugins, against a fake upstream on loopback; the router on
a fake clock; real Redis servers. Every fixture of the suite is defined here."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import shutil
import time
from typing import Any, AsyncIterator, Callable, Iterator

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Config, key_hash
from gateway.config_load import parse_config
from gateway.model_lifecycle import TODAY_ENV
from gateway.router import RouterTiming
from tests.fake_upstream import FakeUpstream
from tests.redis_server import RedisServer, require_redis_server

#: The suite's "today" (gateway/model_lifecycle.py): a fixed day before any bundled model's
#: shutdown, so a test that uses gpt-image-1 only as *a* model means the same whatever day it runs.
#: The lifecycle tests hand in their own dates; gateway processes the tests start inherit this one.
SUITE_TODAY = "2026-09-01"
os.environ[TODAY_ENV] = SUITE_TODAY

# Unique markers: a test scans outputs for them to prove no key leaks.
GATEWAY_KEY = "og-test-gateway-key-7f3a9c1e5b"
UPSTREAM_KEY = "sk-test-upstream-secret-4d2e8b6a"
OTHER_KEY = "og-test-other-key-0b1c2d3e4f"
ADMIN_KEY = "og-admin-key-9d8c7b6a5f4e3d2c"
#: Config lines for a dashboard test: one admin key, no retries, no auto-refresh.
ADMIN = f"""
admin_keys:
  - name: ops
    hash: "{key_hash(ADMIN_KEY)}"
router: {{max_attempts_per_target: 1}}
dashboard: {{refresh_s: 3600}}
"""


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Any]) -> Any:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    fake.base = str(server.make_url(""))  # type: ignore[attr-defined]
    return fake


def base_config_yaml(upstream_url: str, extra: str = "") -> str:
    return f"""
keys:
  - name: test
    hash: "{key_hash(GATEWAY_KEY)}"
  - name: mini-only
    hash: "{key_hash(OTHER_KEY)}"
    models: ["openai/gpt-image-1-mini"]
providers:
  - id: openai-main
    plugin: openai
    region: global
    settings:
      api_key: {UPSTREAM_KEY}
      base_url: "{upstream_url}"
{extra}
"""


@pytest.fixture
def make_config(upstream: Any) -> Callable[..., Config]:
    def make(extra: str = "", yaml_text: str | None = None) -> Config:
        return parse_config(yaml_text if yaml_text is not None else base_config_yaml(upstream.url, extra), env={})
    return make


@pytest.fixture
def make_client(aiohttp_client: Callable[..., Any], make_config: Callable[..., Config]) -> Callable[..., Any]:
    async def make(extra: str = "", config: Config | None = None, timing: RouterTiming = RouterTiming()
                   ) -> TestClient:
        return await aiohttp_client(create_app(config or make_config(extra), timing=timing))
    return make


@pytest.fixture
def started_from_file(aiohttp_client: Callable[..., Any], upstream: FakeUpstream, tmp_path: Any) -> Callable[..., Any]:
    """A gateway started from a config file (the base config plus ``extra``), as ``serve --config``
    does, so that a reload re-reads it: the client, the file and the text written to it."""
    from gateway.config_load import load_config

    async def start(extra: str = "") -> tuple[TestClient, Any, str]:
        path = tmp_path / "gateway.yaml"
        text = base_config_yaml(upstream.url, extra)
        path.write_text(text)
        return await aiohttp_client(create_app(load_config(str(path)), config_path=str(path))), path, text
    return start


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient:
    return await make_client()


AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}


def in_flight() -> float:
    """The in-flight gauge's current value (process-global)."""
    from gateway import metrics
    return metrics.IN_FLIGHT.collect()[0].samples[0].value


async def eventually(condition: Callable[[], bool], bound_s: float = 15.0) -> bool:
    """Poll ``condition`` (bounded) while cancelled tasks and closed transports finish."""
    import asyncio
    loop = asyncio.get_running_loop()
    end = loop.time() + bound_s
    while not condition():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.fixture
def clock() -> Any:
    from tests.router_harness import FakeClock
    return FakeClock()


@pytest.fixture
def routed(make_client: Callable[..., Any], make_config: Callable[..., Any], upstream: FakeUpstream,
           clock: Any) -> Callable[..., Any]:
    """A client of the real app whose router runs on the fake clock and a seeded rng
    (tests/router_harness.py), handed in through create_app as any caller would."""
    from tests.router_harness import TWO_REGIONS, config_yaml

    async def make(models: str = TWO_REGIONS, router: str = "", seed: int = 7) -> TestClient:
        config = make_config(yaml_text=config_yaml(upstream.url, models, router))
        return await make_client(config=config, timing=RouterTiming(clock, clock.sleep, random.Random(seed)))
    return make


def _redis() -> Iterator[RedisServer]:
    server = RedisServer(require_redis_server())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One real redis-server for a test module; tests keep apart with their own ``limits.key_prefix``."""
    yield from _redis()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A real redis-server of the test's own, to stop or pause mid-run."""
    yield from _redis()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A real headless Chromium (tests/chromium.py); modules using it skip when it is missing locally."""
    from tests.chromium import launch
    async with launch() as devtools:
        yield devtools

#: The longest the event loop may go without running a ready callback while a fault test runs.
#: A request's own work is well under 10 ms here, and the faults this guards against held the
#: loop for 0.3-8 s. Over repeated runs of the fault suites on this shared 2-core machine the
#: longest stall the guard saw was ~40 ms, once it leaves out the two things that are not the
#: code under test: time the loop's thread waited for a CPU held by other processes (load
#: averages of 4-5 here; read from /proc/thread-self/schedstat), and the test process's own
#: garbage (see ``loop_stall_guard``). 100 ms sits between the two with room on both sides; a
#: load test that queues many requests in one loop turn by design raises it for itself
#: (``@pytest.mark.parametrize("loop_stall_bound_s", [...])``).
LOOP_STALL_BOUND_S = 0.1
#: How often the monitor asks for the loop; its own cost is one timer per tick.
LOOP_STALL_TICK_S = 0.005


class LoopStallMonitor:
    """The event loop's longest stall while armed: a task sleeps ``LOOP_STALL_TICK_S`` and
    records how late it wakes up, less the time its thread sat in the run queue (Linux's
    schedstat: runnable, but another process had the CPU). A blocking call, a long computation
    or a garbage collection counts; a busy neighbour does not. Armed only while the test
    function runs, because between fixtures the loop is not running at all, which is no stall."""

    def __init__(self) -> None:
        self.longest_s = 0.0
        self.longest_wall_s = 0.0  # the same, with run-queue waits included (for the message)
        self.ticks = 0
        self._armed = False
        self._epoch = 0  # bumped by arm(): a tick that spans it is not measured
        self._task: asyncio.Task[None] | None = None
        self._schedstat: int | None = None

    def _queued_s(self) -> float:
        """Seconds this thread has spent runnable but waiting for a CPU (0 where unknown)."""
        if self._schedstat is None:
            return 0.0
        return int(os.pread(self._schedstat, 100, 0).split()[1]) / 1e9

    async def _run(self) -> None:
        while True:
            epoch, asked, queued = self._epoch, time.perf_counter(), self._queued_s()
            await asyncio.sleep(LOOP_STALL_TICK_S)
            if self._armed and epoch == self._epoch:
                late_s = time.perf_counter() - asked - LOOP_STALL_TICK_S
                self.ticks += 1
                self.longest_wall_s = max(self.longest_wall_s, late_s)
                self.longest_s = max(self.longest_s, late_s - (self._queued_s() - queued))

    def start(self) -> None:
        try:  # opened from the loop's thread: "thread-self" is that thread
            self._schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._schedstat = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    def arm(self, armed: bool) -> None:
        self._armed = armed
        self._epoch += 1

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._schedstat is not None:
            os.close(self._schedstat)
            self._schedstat = None


@pytest.fixture
def loop_stall_bound_s() -> float:
    return LOOP_STALL_BOUND_S


@pytest.fixture
async def loop_stall_guard(loop_stall_bound_s: float) -> AsyncIterator[LoopStallMonitor]:
    """Fail the test when its event loop stalled longer than ``loop_stall_bound_s`` while the
    test function ran. Apply with ``pytestmark = pytest.mark.usefixtures("loop_stall_guard")``."""
    # The test process holds ~100,000 objects (pytest, hypothesis, the SDK) and a full collection
    # of them takes 90-180 ms here: a stall of the harness, not of the code under test. The
    # gateway freezes its start-up objects the same way (gateway/server.py).
    gc.freeze()
    monitor = LoopStallMonitor()
    monitor.start()
    try:
        yield monitor
    finally:
        await monitor.stop()
        gc.unfreeze()
    if monitor.longest_s > loop_stall_bound_s:
        pytest.fail(f"the event loop stalled for {monitor.longest_s * 1000:.0f} ms "
                    f"({monitor.longest_wall_s * 1000:.0f} ms with waits for the CPU; bound "
                    f"{loop_stall_bound_s * 1000:.0f} ms) while this test ran")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Arm the loop-stall monitor for exactly the test function's run (not its fixtures)."""
    monitor = getattr(item, "funcargs", {}).get("loop_stall_guard")
    if isinstance(monitor, LoopStallMonitor):
        monitor.arm(True)
    try:
        return (yield)
    finally:
        if isinstance(monitor, LoopStallMonitor):
            monitor.arm(False)


#: Short server timeouts so slow clients are cut off quickly (defaults: 75 s and 30 s).
CLIENT_LIMITS = """
server:
  keepalive_timeout_s: 1
  body_read_timeout_s: 1
router:
  deadline_s: 30
"""


@pytest.fixture
async def served_port(upstream: FakeUpstream) -> AsyncIterator[int]:
    """The real server (``gateway.server.serve``: signals, drain, handler cancellation as in
    production) on a free loopback port, with ``CLIENT_LIMITS``, in front of the fake upstream."""
    import asyncio
    import signal

    from gateway.server import bind_listeners, serve
    config = parse_config(base_config_yaml(upstream.url, CLIENT_LIMITS), env={})  # type: ignore[attr-defined]
    listeners = bind_listeners(config, "127.0.0.1", 0)
    ready = asyncio.Event()
    task = asyncio.create_task(serve(config, listeners, on_ready=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield listeners.port
    finally:
        task.cancel()  # serve() drains on the way out
        await asyncio.gather(task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        listeners.close()


def vendor_config_yaml(plugin: str, region: str, settings: Callable[[int], str], instances: int = 1,
                       models: str = "", router: str = "max_attempts_per_target: 1") -> str:
    """A gateway config with ``instances`` instances of one provider plugin (ids ``<plugin>-0``,
    ``-1``, ...), each with ``settings(i)`` as its settings lines (six spaces in), the test key
    and ``router`` settings: the provider tests' common setup."""
    providers = "".join(f"""
  - id: {plugin}-{i}
    plugin: {plugin}
    region: {region}
    settings:
{settings(i)}""" for i in range(instances))
    return f"""
keys:
  - name: test
    hash: "{key_hash(GATEWAY_KEY)}"
providers:{providers}
router: {{{router}}}
{models}
"""
