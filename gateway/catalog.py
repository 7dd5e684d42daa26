"""What is known about image models, as data: capabilities, prices and lifecycles.

``gateway/data/models.yaml`` describes OpenAI's GPT Image models. Plugins that speak
OpenAI's API (openai, azure_openai, local) build their ``models()`` from it; operators
override any of it per model in config. A model's lifecycle (deprecation and shutdown dates,
the recommended successor) is per provider: OpenAI and Azure retire the same model on different
dates. What a date means today is decided in gateway/model_lifecycle.py.
"""

from __future__ import annotations

import functools
import importlib.resources
from datetime import date

import msgspec

from gateway.tokens import TokenRule


class SizeRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A flexible ``WxH`` rule (gpt-image-2): every size that satisfies it is accepted."""

    multiple_of: int = 16
    max_edge: int = 3840
    max_aspect: float = 3.0
    min_pixels: int = 655_360
    max_pixels: int = 8_294_400

    def broken(self, width: int, height: int) -> str | None:
        """The first rule ``width`` x ``height`` breaks (the name of its field), or None."""
        if width % self.multiple_of or height % self.multiple_of:
            return "multiple_of"
        if max(width, height) > self.max_edge:
            return "max_edge"
        if max(width, height) > self.max_aspect * min(width, height):
            return "max_aspect"
        pixels = width * height
        if pixels < self.min_pixels:
            return "min_pixels"
        if pixels > self.max_pixels:
            return "max_pixels"
        return None


class Capabilities(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a model accepts; the gateway checks every request against it before any call."""

    sizes: tuple[str, ...] = ("auto", "1024x1024", "1536x1024", "1024x1536")
    flexible_sizes: SizeRule | None = None
    qualities: tuple[str, ...] = ("auto", "low", "medium", "high")
    output_formats: tuple[str, ...] = ("png", "jpeg", "webp")
    #: Formats for which ``output_compression`` may be sent.
    compression_formats: tuple[str, ...] = ("jpeg", "webp")
    #: Formats that can carry ``background: transparent``; empty means no transparency.
    transparent_formats: tuple[str, ...] = ("png", "webp")
    moderation: tuple[str, ...] = ("auto", "low")
    max_n: int = 10
    #: Request fields beyond the contract that this model accepts and that are forwarded as is.
    extra_fields: tuple[str, ...] = ()
    #: Streams partial images (``stream: true``); the plugin implements ``Provider.stream``. A
    #: model without it still serves streaming requests, with the completed event only.
    streaming: bool = False
    #: Serves ``POST /v1/images/edits``; the plugin implements ``Provider.edit``.
    edits: bool = False
    #: The most input images one edit may carry.
    max_input_images: int = 16
    #: The ``input_fidelity`` values an edit may ask for; empty: the model does not take the field.
    input_fidelities: tuple[str, ...] = ()


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a model is billed. Token rates are USD per 1M tokens, read from the answer's ``usage``.
    ``per_image`` (USD per image made) and ``per_megapixel`` (USD per megapixel of the images
    made) are for providers that bill their output instead; when either is set the answer is
    priced from its images and the token rates are not used (gateway/cost.py). A missing rate
    means unknown, never free."""

    text_input: float | None = None
    cached_text_input: float | None = None
    image_input: float | None = None
    cached_image_input: float | None = None
    text_output: float | None = None
    image_output: float | None = None
    per_image: float | None = None
    per_megapixel: float | None = None


class Lifecycle(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One provider's lifecycle of one model, as the provider publishes it. Dates are UTC days;
    the model is served up to the day before ``shutdown``. ``successors`` are the provider's
    recommended replacements (``owner/model`` ids), ``source`` the page that says so."""

    #: When the shutdown was announced (the provider's notice date).
    deprecated: date | None = None
    shutdown: date | None = None
    successors: tuple[str, ...] = ()
    source: str | None = None


class Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One ``owner/model`` id a provider can serve; ``price`` is the provider's published price,
    used unless the operator's config or the bundled table has one for the id. ``lifecycle``:
    when this provider retires the model; None leaves it to the bundled catalogue (by plugin name)."""

    id: str
    capabilities: Capabilities = Capabilities()
    price: Price | None = None
    lifecycle: Lifecycle | None = None


class CatalogEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    capabilities: Capabilities = Capabilities()
    price: Price | None = None
    #: Output tokens per image (gateway/tokens.py): for estimates before a call.
    tokens: TokenRule | None = None
    #: The dated snapshots of an alias id, oldest first; the alias follows the newest. A snapshot
    #: without an entry of its own is the alias's twin (same capabilities, price and lifecycle).
    snapshots: tuple[str, ...] = ()
    #: For a dated snapshot: the alias id that follows the newest snapshot.
    snapshot_of: str | None = None
    #: Per provider plugin name (``openai``, ``azure_openai``): when it retires the model.
    lifecycle: dict[str, Lifecycle] = {}


@functools.cache
def openai_image_models() -> dict[str, CatalogEntry]:
    """The GPT Image models from the bundled ``models.yaml``, keyed by ``owner/model`` id,
    each alias followed by its dated snapshots."""
    raw = importlib.resources.files("gateway").joinpath("data/models.yaml").read_bytes()
    listed = msgspec.yaml.decode(raw, type=dict[str, CatalogEntry])
    catalog: dict[str, CatalogEntry] = {}
    for model_id, entry in listed.items():
        catalog.setdefault(model_id, entry)
        for snapshot in entry.snapshots:
            catalog[snapshot] = listed.get(snapshot) or msgspec.structs.replace(
                entry, snapshots=(), snapshot_of=model_id)
    return catalog
