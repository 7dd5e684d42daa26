"""The contract a limits backend fulfils, and choosing one from ``limits.backend`` at start-up.

The backend lives as long as the process, not a configuration: a reload keeps its counters.
"""

from __future__ import annotations

from typing import Protocol

from gateway.config import ConfigError, LimitsConfig, Problem
from gateway.limits.policy import Decision, Plan


class BackendUnavailable(Exception):
    """The counters could not be reached in time; the caller applies ``limits.on_backend_error``."""


class LimitsBackend(Protocol):
    async def acquire(self, plan: Plan, token: str) -> Decision:
        """Check every limit of ``plan`` and, only if all pass, count the request in all of them
        (take a concurrency slot named ``token``, add ``plan.reserve_micro`` to the day and month
        spend) - atomically."""

    async def release(self, key: str, token: str) -> None:
        """Free the concurrency slot ``token`` took."""

    async def charge(self, plan: Plan, micro_usd: int) -> None:
        """Add ``micro_usd`` to the key's day and month spend of ``plan``'s periods; negative
        settles a reservation that was more than the request cost (the spend stays >= 0)."""

    async def close(self) -> None: ...


def make_backend(config: LimitsConfig) -> LimitsBackend:
    if config.backend == "memory":
        from gateway.limits.memory import MemoryBackend
        return MemoryBackend()
    try:
        from gateway.limits.redis_backend import RedisBackend
    except ImportError:
        raise ConfigError([Problem("$.limits.backend", "a redis:// backend needs redis-py: "
                                   "pip install 'opengateway[redis]'")]) from None
    return RedisBackend(config)
