"""The example plugin against the gateway's contract suite (``gateway.testing``), as any plugin
should test itself. Run from this folder after ``pip install -e .`` (with pytest installed):

    python -m pytest tests

The example draws its images itself, so it scripts no upstream: the suite checks its
declarations, its answers (through the gateway too) and skips the upstream failure kinds. A
plugin with an upstream scripts each kind on the ``FakeUpstream`` (see ``ProviderContract``).
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import msgspec
from PIL import Image

from gateway.provider import Call, ImageRequest
from gateway.testing import FakeUpstream, ProviderContract
from opengateway_example import MODEL_ID, ExampleProvider, ExampleSettings


class TestExampleContract(ProviderContract):
    plugin = "example"

    def settings(self, upstream: FakeUpstream) -> dict[str, Any]:
        return {"color": "#ff8800"}


def test_the_prompts_colour_wins_over_the_configured_one() -> None:
    async def draw() -> bytes:
        provider = ExampleProvider(ExampleSettings(color="#ff8800"), http=None)  # type: ignore[arg-type]
        result = await provider.generate(ImageRequest(model=MODEL_ID, prompt="a teal square", size="256x256"),
                                         Call(MODEL_ID, 10.0))
        return base64.b64decode(msgspec.json.decode(result.body)["data"][0]["b64_json"])

    with Image.open(io.BytesIO(asyncio.run(draw()))) as image:
        assert image.size == (256, 256) and image.convert("RGB").getpixel((5, 5)) == (0, 128, 128)
