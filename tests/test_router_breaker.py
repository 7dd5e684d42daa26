"""The circuit breaker and the weighted target order, as units (the router's HTTP tests are in
test_router.py)."""

from __future__ import annotations

import random

import msgspec
import pytest

from gateway.breaker import Breaker
from gateway.config import BreakerConfig, ConfigError, RouterConfig
from gateway.config_load import parse_config
from gateway.registry import Target
from gateway.router import order_targets


def breaker(**settings: object) -> Breaker:
    return Breaker(msgspec.convert({"failure_ratio": None, **settings}, BreakerConfig))


def test_consecutive_failures_open_and_a_success_resets_the_count() -> None:
    b = breaker(consecutive_failures=3, cooldown_s=10)
    b.failed(0)
    b.failed(0)
    b.succeeded()
    b.failed(0)
    b.failed(0)
    assert b.state == "closed" and b.allow(0)
    b.failed(1)
    assert b.state == "open" and b.open_until == 11
    assert not b.allow(10.9)
    assert b.retry_in_s(5) == 6


def test_cooldown_grows_with_each_trip_up_to_the_cap() -> None:
    b = breaker(consecutive_failures=1, cooldown_s=10, cooldown_multiplier=3, max_cooldown_s=50)
    now = 0.0
    cooldowns = []
    for _ in range(4):
        b.failed(now)
        cooldowns.append(b.open_until - now)
        now = b.open_until
        assert b.allow(now) and b.state == "half_open"  # the probe, which fails again
    assert cooldowns == [10, 30, 50, 50]
    b.succeeded()
    assert b.state == "closed" and b.trips == 0
    b.failed(now)
    assert b.open_until - now == 10  # closing forgets the trips


def test_half_open_gives_out_one_probe_at_a_time() -> None:
    b = breaker(consecutive_failures=1, cooldown_s=5)
    b.failed(0)
    assert b.allow(5) and b.state == "half_open"
    assert not b.allow(5)  # the probe is in flight
    b.released(probe=False)  # someone else's neutral outcome does not free the probe
    assert not b.allow(6)
    b.released(probe=True)  # the probe was cancelled: the next request probes
    assert b.allow(6) and not b.allow(6)
    b.failed(6)
    assert b.state == "open" and b.open_until == 16


def test_a_failure_ratio_over_the_window_opens() -> None:
    b = breaker(consecutive_failures=100, failure_ratio=0.5, window_requests=4)
    for failed in (True, False, True):
        b.failed(0) if failed else b.succeeded()
    assert b.state == "closed"  # the window is not full yet
    b.succeeded()  # full now (F S F S), but only a failure can open the circuit
    b.failed(0)  # the last four are S F S F: half of them failed, never two in a row
    assert b.state == "open" and b.consecutive_failures == 1


def test_a_disabled_breaker_never_opens() -> None:
    b = breaker(enabled=False, consecutive_failures=1)
    for _ in range(10):
        b.failed(0)
    assert b.state == "closed" and b.allow(0)


def _targets(*weights: float | None) -> tuple[Target, ...]:
    return tuple(Target(f"p{i}:m", f"p{i}", "openai", "global", "m", None, w)  # type: ignore[arg-type]
                 for i, w in enumerate(weights))


def test_weights_set_the_chance_of_going_first() -> None:
    targets = _targets(3, 1)
    rng = random.Random(1)
    firsts = [order_targets(targets, rng)[0].instance for _ in range(4000)]
    assert 0.72 < firsts.count("p0") / 4000 < 0.78


def test_unweighted_targets_keep_their_places() -> None:
    targets = _targets(None, 1, None, 1)
    rng = random.Random(2)
    orders = {tuple(t.instance for t in order_targets(targets, rng)) for _ in range(50)}
    assert orders == {("p0", "p1", "p2", "p3"), ("p0", "p3", "p2", "p1")}
    assert order_targets(_targets(None, None), rng) == _targets(None, None)


def test_router_config_defaults_and_limits() -> None:
    config = RouterConfig()
    assert (config.max_attempts_per_target, config.backoff_base_s, config.backoff_cap_s) == (2, 0.5, 8.0)
    assert config.breaker.consecutive_failures == 5 and config.breaker.cooldown_s == 5.0
    with pytest.raises(ConfigError) as caught:
        parse_config("router:\n  retry_statuses: [200]\n", env={})
    assert "$.router.retry_statuses[0]" in str(caught.value)
