"""Model lifecycles as data and what they do on a given day: a shut-down model's 404 naming its
successor, a shut-down deployment skipped, pinning, the models list, the warnings and the gauge.

Dates are OpenAI's deprecations page (https://developers.openai.com/api/docs/deprecations: gpt-image-1
shut down 2026-10-23; gpt-image-1-mini, gpt-image-1.5 and its snapshot gpt-image-1.5-2025-12-16,
chatgpt-image-latest 2026-12-01; its newest version recommends gpt-image-2.5-sunburst / -flare for
gpt-image-1 and gpt-image-2.6-sunburst / -flare for the others) and Azure's retirement schedule of
2026-09-02 (https://learn.microsoft.com/en-us/azure/foundry/openai/concepts/model-retirement-schedule:
gpt-image-1 2026-10-23, gpt-image-1-mini 2027-04-07, gpt-image-1.5 2027-06-16 (2026-12-16 on versions of
the page before 2026-09-02), gpt-image-2 2027-10-21). Each test hands the app its own "today".
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any, Callable

import pytest

from gateway.app import create_app
from gateway.catalog import openai_image_models
from gateway.config_load import parse_config
from tests.conftest import AUTH, base_config_yaml
from tests.metrics_reading import parse

TODAY = date(2026, 12, 2)
OPENAI_PAGE = "https://developers.openai.com/api/docs/deprecations"
AZURE_PAGE = "https://learn.microsoft.com/en-us/azure/foundry/openai/concepts/model-retirement-schedule"


@pytest.fixture
def on_day(aiohttp_client: Callable[..., Any], upstream: Any) -> Callable[..., Any]:
    """A client of the real app on ``day``, with the base config plus ``extra``."""
    async def make(day: date = TODAY, extra: str = "") -> Any:
        config = parse_config(base_config_yaml(upstream.url, extra), env={})
        return await aiohttp_client(create_app(config, today=lambda: day))
    return make


def azure(upstream: Any, deployments: str) -> str:
    return f"""
  - id: azure-sweden
    plugin: azure_openai
    region: swedencentral
    settings: {{endpoint: "{upstream.base}", api_key: "az-key", deployments: {{{deployments}}}}}
"""


async def generate(client: Any, model: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/images/generations", headers=AUTH, json={"model": model, "prompt": "a cube", **fields})
    return resp.status, await resp.json()


def test_the_bundled_lifecycles_are_the_providers_published_dates() -> None:
    catalog = openai_image_models()
    openai = {m: (e.lifecycle["openai"].shutdown, e.lifecycle["openai"].successors)
              for m, e in catalog.items() if "openai" in e.lifecycle}
    assert openai["openai/gpt-image-1"] == (date(2026, 10, 23), ("openai/gpt-image-2.5-sunburst",
                                                                  "openai/gpt-image-2.5-flare"))
    for model in ("gpt-image-1-mini", "gpt-image-1.5", "gpt-image-1.5-2025-12-16", "chatgpt-image-latest"):
        assert openai[f"openai/{model}"] == (date(2026, 12, 1), ("openai/gpt-image-2.6-sunburst",
                                                                 "openai/gpt-image-2.6-flare")), model
    for model in ("gpt-image-2", "gpt-image-2-2026-04-21", "gpt-image-2.5-sunburst", "gpt-image-2.5-flare"):
        assert openai[f"openai/{model}"] == (None, ()), model
    assert {e.lifecycle["openai"].source for e in catalog.values()} == {OPENAI_PAGE}
    azure = {m: e.lifecycle["azure_openai"].shutdown for m, e in catalog.items() if "azure_openai" in e.lifecycle}
    assert azure == {"openai/gpt-image-1": date(2026, 10, 23), "openai/gpt-image-1-mini": date(2027, 4, 7),
                     "openai/gpt-image-1.5": date(2027, 6, 16), "openai/gpt-image-1.5-2025-12-16": date(2027, 6, 16),
                     "openai/gpt-image-2": date(2027, 10, 21), "openai/gpt-image-2-2026-04-21": date(2027, 10, 21)}
    assert {e.lifecycle["azure_openai"].source for e in catalog.values() if "azure_openai" in e.lifecycle} == {
        AZURE_PAGE}
    # Snapshots and the alias that follows the newest: gpt-image-2-2026-04-21 is in OpenAI's own
    # spec enum (openai/openai-openapi openapi.yaml, CreateImageRequest.model, 2026-08-21).
    assert catalog["openai/gpt-image-2"].snapshots == ("openai/gpt-image-2-2026-04-21",)
    assert catalog["openai/gpt-image-2-2026-04-21"].snapshot_of == "openai/gpt-image-2"
    assert catalog["openai/gpt-image-1.5"].snapshots == ("openai/gpt-image-1.5-2025-12-16",)
    assert catalog["openai/gpt-image-2-2026-04-21"].capabilities == catalog["openai/gpt-image-2"].capabilities


async def test_a_shut_down_model_is_404_naming_its_successor(on_day: Any, upstream: Any) -> None:
    client = await on_day(TODAY)
    status, body = await generate(client, "openai/gpt-image-1")
    assert status == 404
    assert body["error"] == {
        "message": "The model 'openai/gpt-image-1' does not exist or you do not have access to it: it was shut "
                   "down on 2026-10-23. Use 'openai/gpt-image-2.5-sunburst' or 'openai/gpt-image-2.5-flare' instead.",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    for model in ("gpt-image-1-mini", "gpt-image-1.5", "gpt-image-1.5-2025-12-16", "chatgpt-image-latest"):
        status, body = await generate(client, f"openai/{model}")
        assert (status, body["error"]["code"]) == (404, "model_not_found"), model
        assert "shut down on 2026-12-01" in body["error"]["message"] and "gpt-image-2.6-flare" in body["error"]["message"]
    status, body = await generate(client, "gpt-image-1.5")  # a bare id names the same model
    assert status == 404 and "'gpt-image-1.5'" in body["error"]["message"]
    assert upstream.received == []
    # The day before its shutdown a model is still served.
    client = await on_day(date(2026, 11, 30))
    assert (await generate(client, "openai/gpt-image-1.5"))[0] == 200


async def test_the_snapshot_and_the_newer_models_are_served(on_day: Any, upstream: Any) -> None:
    client = await on_day(TODAY)
    for model in ("gpt-image-2-2026-04-21", "gpt-image-2.5-flare", "gpt-image-2.5-sunburst-2026-09-08"):
        status, body = await generate(client, f"openai/{model}", quality="low")
        assert status == 200, body
        assert upstream.received[-1].body["model"] == model
    # gpt-image-2.5's extra qualities; gpt-image-2 stops at high.
    assert (await generate(client, "openai/gpt-image-2.5-sunburst", quality="max"))[0] == 200
    status, body = await generate(client, "openai/gpt-image-2", quality="max")
    assert status == 400 and body["error"]["param"] == "quality"


async def test_pinning_serves_a_model_past_its_shutdown(on_day: Any, upstream: Any) -> None:
    client = await on_day(TODAY, """
models:
  openai/gpt-image-1:
    targets: [openai-main]
    pinned: true
""")
    status, body = await generate(client, "openai/gpt-image-1")
    assert status == 200, body
    assert upstream.received[-1].body["model"] == "gpt-image-1"
    listed = await (await client.get("/v1/models", headers=AUTH)).json()
    assert listed["data"] == [{**listed["data"][0], "id": "openai/gpt-image-1", "shutdown_date": "2026-10-23"}]


async def test_a_shut_down_deployment_is_skipped_for_one_that_serves(on_day: Any, upstream: Any) -> None:
    # gpt-image-1.5: OpenAI shut it down on 2026-12-01, Azure retires it on 2027-06-16.
    client = await on_day(TODAY, azure(upstream, "openai/gpt-image-1.5: my-15") + """
models:
  openai/gpt-image-1.5:
    targets: [openai-main, azure-sweden]
""")
    status, body = await generate(client, "openai/gpt-image-1.5")
    assert status == 200, body
    skipped, served = body["extra"]["routing"]["attempts"]
    assert (skipped["provider"], skipped["status"], skipped["error_code"]) == ("openai", "skipped", "unsupported_request")
    assert skipped["error_message"] == "openai/gpt-image-1.5 was shut down by openai on 2026-12-01"
    assert (served["provider"], served["status"]) == ("azure_openai", "succeeded")
    assert [r.path for r in upstream.received] == ["/openai/deployments/my-15/images/generations"]
    listed = await (await client.get("/v1/models", headers=AUTH)).json()
    assert {m["id"]: m["shutdown_date"] for m in listed["data"]} == {"openai/gpt-image-1.5": "2027-06-16"}
    # After Azure's date too: 404, and the model leaves the list.
    client = await on_day(date(2027, 6, 16), azure(upstream, "openai/gpt-image-1.5: my-15") + """
models:
  openai/gpt-image-1.5:
    targets: [openai-main, azure-sweden]
""")
    status, body = await generate(client, "openai/gpt-image-1.5")
    assert (status, body["error"]["code"]) == (404, "model_not_found")
    assert "shut down on 2027-06-16" in body["error"]["message"]
    assert (await (await client.get("/v1/models", headers=AUTH)).json())["data"] == []
    assert (await client.get("/v1/models/openai/gpt-image-1.5", headers=AUTH)).status == 404


async def test_a_shut_down_fallback_is_skipped_not_refused(on_day: Any, upstream: Any) -> None:
    from tests.fake_upstream import error
    client = await on_day(TODAY, """
models:
  openai/gpt-image-2:
    targets: [openai-main]
    fallbacks: [openai/gpt-image-1-mini, openai/gpt-image-2.5-flare]
  openai/gpt-image-1-mini: {targets: [openai-main]}
  openai/gpt-image-2.5-flare: {targets: [openai-main]}
router: {max_attempts_per_target: 1}
""")
    upstream.script("gpt-image-2", error(503, None, "overloaded"))
    status, body = await generate(client, "openai/gpt-image-2")
    assert status == 200, body
    attempts = [(a["model"], a["status"]) for a in body["extra"]["routing"]["attempts"]]
    assert attempts == [("openai/gpt-image-2", "failed"), ("openai/gpt-image-1-mini", "skipped"),
                        ("openai/gpt-image-2.5-flare", "succeeded")]


async def test_the_local_provider_follows_openai(aiohttp_client: Callable[..., Any]) -> None:
    # The quick start's gateway (no config file, no key): the local provider behaves as OpenAI would.
    from gateway.config_load import config_from_env
    env = config_from_env({"OPENGATEWAY_API_KEY": "og-local"})
    client = await aiohttp_client(create_app(env.config, today=lambda: TODAY))
    auth = {"Authorization": "Bearer og-local"}
    resp = await client.post("/v1/images/generations", headers=auth, json={"model": "openai/gpt-image-2",
                                                                           "prompt": "a red cube", "size": "1024x1024"})
    assert resp.status == 200
    resp = await client.post("/v1/images/generations", headers=auth, json={"model": "openai/gpt-image-1",
                                                                           "prompt": "a red cube"})
    assert resp.status == 404 and "gpt-image-2.5-flare" in (await resp.json())["error"]["message"]
    listed = {m["id"] for m in (await (await client.get("/v1/models", headers=auth)).json())["data"]}
    assert listed == {m for m, e in openai_image_models().items()
                      if not (e.lifecycle["openai"].shutdown and e.lifecycle["openai"].shutdown <= TODAY)}
    assert "openai/gpt-image-2" in listed and "openai/gpt-image-1" not in listed


async def test_start_up_warns_about_configured_models_near_or_past_shutdown(
        on_day: Any, upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="opengateway")
    models = azure(upstream, "openai/gpt-image-1.5: my-15") + """
models:
  openai/gpt-image-1.5: {targets: [openai-main, azure-sweden]}
  openai/gpt-image-2: {targets: [openai-main]}
"""
    await on_day(date(2026, 11, 15), models)
    warned = [r.getMessage() for r in caplog.records if "gpt-image" in r.getMessage()]
    assert warned == ["model openai/gpt-image-1.5 on openai-main (openai) shuts down on 2026-12-01, in 16 days; "
                      "the provider recommends 'openai/gpt-image-2.6-sunburst' or 'openai/gpt-image-2.6-flare'"]
    caplog.clear()
    await on_day(TODAY, models)
    [warning] = [r.getMessage() for r in caplog.records if "gpt-image" in r.getMessage()]
    assert warning.startswith("model openai/gpt-image-1.5 on openai-main (openai) was shut down on 2026-12-01")
    caplog.clear()
    await on_day(TODAY)  # no models: section: the bundled defaults are not warned about
    assert not [r for r in caplog.records if "gpt-image" in r.getMessage()]


async def test_the_shutdown_gauge_carries_each_configured_models_day(on_day: Any, upstream: Any) -> None:
    client = await on_day(TODAY, azure(upstream, "openai/gpt-image-1.5: my-15") + """
models:
  openai/gpt-image-1.5: {targets: [openai-main, azure-sweden]}
  openai/gpt-image-1: {targets: [openai-main], pinned: true}
  openai/gpt-image-2: {targets: [openai-main]}
metrics: {breaker_refresh_s: 3600}
""")
    samples = parse(await (await client.get("/metrics")).text())
    shutdowns = {(labels["gen_ai_request_model"], labels["gen_ai_provider_name"], labels["pinned"]): value
                 for (name, label_set), value in samples.items()
                 if name == "opengateway_model_shutdown_timestamp_seconds" and (labels := dict(label_set))}
    assert shutdowns == {("openai/gpt-image-1.5", "openai", "false"): 1_796_083_200.0,   # 2026-12-01T00:00Z
                         ("openai/gpt-image-1.5", "azure_openai", "false"): 1_813_104_000.0,  # 2027-06-16T00:00Z
                         ("openai/gpt-image-1", "openai", "true"): 1_792_713_600.0}  # 2026-10-23T00:00Z
