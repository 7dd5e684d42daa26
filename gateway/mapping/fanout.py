"""``n`` for providers that make one image (or a few) per call: the images are asked for in
several concurrent calls, at most ``max_concurrent`` at once, and each call's images and usage are
kept, so the answer is priced as the provider bills it (per call).

A partial failure is never hidden. By default the attempt fails: the error keeps the failed
call's status and code (a refusal stays ``moderation_blocked``, a 429 stays retryable) and says
how many images had been made, which the provider has billed. An operator who would rather have
the images that were made (a plugin setting, e.g. ``return_partial: true``) gets the partial set
with a note saying how many of ``n`` it holds. Once the attempt is bound to fail, the calls still
running are cancelled.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Awaitable, Callable

from gateway.mapping.result import Batch
from gateway.provider_error import ProviderError

if TYPE_CHECKING:
    from gateway.provider import Call

#: Concurrent upstream calls for one request's images unless the plugin says otherwise.
DEFAULT_MAX_CONCURRENT = 4


def split_counts(n: int, per_call: int) -> list[int]:
    """How many images to ask of each call: ``[4, 4, 2]`` for n=10 at 4 per call."""
    if n < 1 or per_call < 1:
        raise ValueError("n and per_call must be at least 1")
    return [per_call] * (n // per_call) + ([n % per_call] if n % per_call else [])


async def fan_out(n: int, per_call: int, make: Callable[[int], Awaitable[Batch]], call: Call, *,
                  max_concurrent: int = DEFAULT_MAX_CONCURRENT, return_partial: bool = False) -> list[Batch]:
    """The batches of ``ceil(n / per_call)`` calls of ``make(count)``; ``make`` makes one upstream
    call for ``count`` images and returns its Batch or raises ProviderError. One call needs no
    split and no note; more are noted (``n=3 asked in 3 calls of at most 1 image``), and are
    bounded together by ``call.timeout_s`` (a timeout ProviderError past it).

    Raises a ProviderError when fewer than ``n`` images were made, unless ``return_partial`` and
    at least one image was made, in which case the note says what is missing and why."""
    counts = split_counts(n, per_call)
    if len(counts) == 1:
        batches = [await make(n)]
    else:
        call.note(f"n={n} asked in {len(counts)} calls of at most {per_call} image{'s' if per_call > 1 else ''} "
                  f"(at most {max_concurrent} at once); each call is billed by the provider")
        try:  # the calls of later waves must not outlive the attempt's time
            async with asyncio.timeout(call.timeout_s):
                batches = await _run(counts, make, max(1, max_concurrent), return_partial)
        except TimeoutError:
            raise ProviderError(f"The {len(counts)} calls for n={n} did not finish within {call.timeout_s:.3g} s.",
                                code="timeout", timeout=True, retryable=True) from None
    made = sum(len(b.images) for b in batches)
    if made >= n:
        return batches
    failures = [b.shortfall for b in batches if b.shortfall is not None]
    reason = failures[0] if failures else ProviderError(
        "The upstream made fewer images than asked.", status=502, code="invalid_upstream_response")
    if return_partial and made:
        call.note(f"only {made} of {n} images were made (returned as the operator allows): {reason.message}")
        return [b for b in batches if b.images]
    raise _partial(reason, made, n)


class _Failed(Exception):
    def __init__(self, error: ProviderError) -> None:
        self.error = error


async def _run(counts: list[int], make: Callable[[int], Awaitable[Batch]], max_concurrent: int,
               return_partial: bool) -> list[Batch]:
    gate = asyncio.Semaphore(max_concurrent)

    async def one(count: int) -> Batch:
        async with gate:
            try:
                return await make(count)
            except ProviderError as exc:  # kept as a batch without images, so the others go on
                if not return_partial:
                    raise _Failed(exc) from None
                return Batch(images=[], shortfall=exc)

    tasks = [asyncio.create_task(one(count)) for count in counts]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:  # the attempt fails anyway, or the client left: stop paying for more
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failed = next((t.exception() for t in tasks if not t.cancelled() and t.exception() is not None), None)
    if failed is None:
        return [t.result() for t in tasks]
    if not isinstance(failed, _Failed):
        raise failed  # a plugin's bug: not ours to translate
    done = [t.result() for t in tasks if not t.cancelled() and t.exception() is None]
    raise _partial(failed.error, sum(len(b.images) for b in done), sum(counts))


def _partial(error: ProviderError, made: int, n: int) -> ProviderError:
    """``error`` with how many of ``n`` images were made before it (billed, not returned)."""
    if n == 1:
        return error
    prefix = f"{made} of {n} images were made before a call failed"
    prefix += " (billed by the provider, not returned): " if made else ": "
    return ProviderError(prefix + error.message, status=error.status, type=error.type, code=error.code,
                         param=error.param, retryable=error.retryable, retry_after_s=error.retry_after_s,
                         timeout=error.timeout)
