"""Bare model ids (no owner): one configured model of the name is that model, two are a 400 naming
both, ``bare_model_ids: refuse`` asks for ``owner/model``; and LiteLLM, which strips its provider
prefix (``openai/gpt-image-2`` goes out as ``gpt-image-2``), works as a client unchanged.

LiteLLM's behaviour: ``get_llm_provider`` splits ``openai/gpt-image-2`` into the provider ``openai``
and the model ``gpt-image-2``, and its OpenAI handler sends ``{"model": model, ...}``
(BerriAI/litellm, litellm/litellm_core_utils/get_llm_provider_logic.py and litellm/images/main.py:
https://github.com/BerriAI/litellm/blob/main/litellm/litellm_core_utils/get_llm_provider_logic.py).
The test below runs the real LiteLLM (the test extra installs it) in a process of its own.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import msgspec
import pytest

from tests.conftest import AUTH, GATEWAY_KEY

TWO_OWNERS = """
models:
  openai/gpt-image-2: {targets: [openai-main]}
  acme/gpt-image-2:
    targets: [openai-main]
    capabilities: {}   # the operator vouches for it
"""


async def generate(client: Any, model: str, **fields: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/v1/images/generations", headers=AUTH, json={"model": model, "prompt": "a cube", **fields})
    return resp.status, await resp.json()


async def test_a_bare_id_naming_one_model_is_that_model(make_client: Any, upstream: Any) -> None:
    client = await make_client()
    status, body = await generate(client, "gpt-image-2", extra={"fallbacks": ["gpt-image-2.5-flare"]})
    assert status == 200, body
    assert [a["model"] for a in body["extra"]["routing"]["attempts"]] == ["openai/gpt-image-2"]
    assert upstream.received[-1].body["model"] == "gpt-image-2"
    # The snapshot's bare id too; an id no configured model has is OpenAI's 400.
    assert (await generate(client, "gpt-image-2-2026-04-21"))[0] == 200
    status, body = await generate(client, "gpt-image-9")
    assert (status, body["error"]["type"], body["error"]["message"]) == (
        400, "image_generation_user_error", "The model 'gpt-image-9' does not exist.")


async def test_an_ambiguous_bare_id_is_a_400_naming_the_choices(make_client: Any, upstream: Any) -> None:
    client = await make_client(TWO_OWNERS)
    status, body = await generate(client, "gpt-image-2")
    assert status == 400
    assert body["error"] == {
        "message": "The model 'gpt-image-2' is ambiguous: it may be 'openai/gpt-image-2' or 'acme/gpt-image-2'. "
                   "Send the full owner/model id.",
        "type": "invalid_request_error", "param": "model", "code": "invalid_value"}
    assert (await generate(client, "acme/gpt-image-2"))[0] == 200
    # An alias decides before the bare-id rule does.
    client = await make_client(TWO_OWNERS + "aliases: {gpt-image-2: openai/gpt-image-2}\n")
    assert (await generate(client, "gpt-image-2"))[0] == 200


async def test_the_switch_requires_owner_and_model(make_client: Any, upstream: Any) -> None:
    client = await make_client("bare_model_ids: refuse\n")
    status, body = await generate(client, "gpt-image-2")
    assert status == 400
    assert body["error"]["message"] == ("Invalid model id 'gpt-image-2': model ids take the form owner/model. "
                                        "Use 'openai/gpt-image-2' instead.")
    assert (await generate(client, "openai/gpt-image-2"))[0] == 200
    assert len(upstream.received) == 1


def test_the_switch_takes_only_its_two_values() -> None:
    from gateway.config import ConfigError
    from gateway.config_load import parse_config
    with pytest.raises(ConfigError) as caught:
        parse_config("bare_model_ids: sometimes\n", env={})
    assert caught.value.problems[0].path == "$.bare_model_ids"


LITELLM_CLIENT = """
import asyncio, json, sys
import litellm

async def main():
    for model in sys.argv[3:]:
        answer = await litellm.aimage_generation(model=model, prompt="A small red cube.", api_base=sys.argv[1],
                                                 api_key=sys.argv[2], size="1024x1024", quality="low")
        print(json.dumps({"images": len(answer.data), "b64": bool(answer.data[0].b64_json)}))

asyncio.run(main())
"""


async def test_litellm_as_a_client(make_client: Any, upstream: Any, tmp_path: Any) -> None:
    pytest.importorskip("litellm")  # in the test extra; a missing install skips rather than fails here
    log = tmp_path / "access.log"
    client = await make_client(f"log: {{destination: '{log}'}}\n")
    # LiteLLM's own prefix ``litellm_proxy/`` is stripped the same way: the owner then reaches us.
    models = ["openai/gpt-image-2", "litellm_proxy/openai/gpt-image-2"]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no fetch of LiteLLM's price list
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LITELLM_CLIENT, str(client.make_url("/v1")), GATEWAY_KEY, *models,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert [msgspec.json.decode(line) for line in out.splitlines()[-2:]] == [{"images": 1, "b64": True}] * 2
    assert [(r.body["model"], r.body["quality"]) for r in upstream.received] == [("gpt-image-2", "low")] * 2
    lines = [msgspec.json.decode(line) for line in log.read_text().splitlines()]
    asked = [(line["model_asked"], line["model"], line["status"]) for line in lines
             if line["route"] == "/v1/images/generations"]
    assert asked == [("gpt-image-2", "openai/gpt-image-2", 200), ("openai/gpt-image-2", "openai/gpt-image-2", 200)]
