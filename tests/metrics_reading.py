"""Reading /metrics in tests: the exposition parsed by prometheus-client's own text parser, and
sums and deltas of its samples. The registry is process-wide, so tests compare two scrapes."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ROUTE = "/v1/images/generations"
G1, MINI = "openai/gpt-image-1", "openai/gpt-image-1-mini"

ROUTER = """
router:
  max_attempts_per_target: 1
  breaker: {enabled: false}
models:
  openai/gpt-image-1:
    targets: [openai-main]
    fallbacks: [openai/gpt-image-1-mini]
  openai/gpt-image-1-mini:
    targets: [openai-main]
"""


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(client: Any, headers: dict[str, str] | None = None) -> Samples:
    resp = await client.get("/metrics", headers=headers or {})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    return parse(await resp.text())


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


class Delta:
    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return total(self.after, name, **labels) - total(self.before, name, **labels)
