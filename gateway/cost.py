"""Usage and cost: an upstream's ``usage`` split into token kinds, priced per model.

Token rates are USD per 1M tokens (gateway/data/models.yaml, a plugin's declared price, or the
model's price in config). A model priced by what it makes (``per_image``, ``per_megapixel``:
providers that report no tokens) is priced from the answer's image count and the megapixels the
plugin measured (``ImageResult.output_megapixels``) instead. A model with no price, or an answer
lacking what its price needs, is reported as unknown with a reason, never as 0.

How ``usage`` is read: without ``input_tokens_details`` every input token is text; without
``output_tokens_details`` every output token is image (GPT Image answers images). ``cached_tokens``
are a part of the input tokens; OpenAI does not say which modality they were, so they are taken
from the text tokens first (a cached prompt prefix is text), the rest from the image tokens.
A usage that cannot be read that way is priced as unknown, with the reason, never as 0 or less:
a negative count, a details object whose parts do not add up to its total (present but empty,
say: ``{"input_tokens": 19, "input_tokens_details": {}}``), more cached tokens than input tokens,
or images answered with no output tokens at all.
"""

from __future__ import annotations

import msgspec

from typing import Callable, Iterable

from gateway.api import Attempt, ImageRequest, Usage
from gateway.catalog import Price
from gateway.tokens import TokenRule, output_tokens

#: Token kinds; each is also the name of its rate in ``Price`` and of its part in the details.
KINDS = ("text_input", "cached_text_input", "image_input", "cached_image_input", "text_output", "image_output")


class Tokens(msgspec.Struct, frozen=True):
    """One answer's tokens by kind; cached kinds are not counted again in their plain kind."""

    text_input: int = 0
    cached_text_input: int = 0
    image_input: int = 0
    cached_image_input: int = 0
    text_output: int = 0
    image_output: int = 0

    @property
    def input_text(self) -> int:
        return self.text_input + self.cached_text_input

    @property
    def input_image(self) -> int:
        return self.image_input + self.cached_image_input


class Cost(msgspec.Struct, frozen=True, omit_defaults=True):
    """``extra.usage`` in the response: the total, its parts, and where the rates came from."""

    cost_usd: float | None
    cost_usd_details: dict[str, float] | None
    price_source: str | None
    #: Why ``cost_usd`` is null; absent when it is known.
    reason: str | None = None
    #: Attempts that failed after their request reached the upstream (it may have generated and
    #: billed them anyway), and an upper bound of what they may have cost (null: unknown).
    possibly_billed_attempts: int = 0
    possibly_billed_usd: float | None = None


class UnreadableUsage(ValueError):
    """A ``usage`` that cannot be split into token kinds; its message is the reason."""


def _check_counts(usage: Usage) -> None:
    for name, count in (("input_tokens", usage.input_tokens), ("output_tokens", usage.output_tokens),
                        ("total_tokens", usage.total_tokens)):
        if count < 0:
            raise UnreadableUsage(f"the usage has a negative count ({name}: {count})")
    for total, whole, details in (("input_tokens", usage.input_tokens, usage.input_tokens_details),
                                  ("output_tokens", usage.output_tokens, usage.output_tokens_details)):
        if details is None:
            continue
        for field in details.__struct_fields__:
            count = getattr(details, field)
            if count < 0:
                raise UnreadableUsage(f"the usage has a negative count ({total}_details.{field}: {count})")
        parts = details.text_tokens + details.image_tokens
        if parts != whole:
            raise UnreadableUsage(
                f"the usage's {total}_details (text_tokens + image_tokens = {parts}) do not add up to its "
                f"{total} ({whole})")
    cached = usage.input_tokens_details.cached_tokens if usage.input_tokens_details else 0
    if cached > usage.input_tokens:
        raise UnreadableUsage(f"the usage has more cached_tokens ({cached}) than input_tokens ({usage.input_tokens})")


def tokens_of(usage: Usage) -> Tokens:
    """``usage`` split into token kinds; UnreadableUsage (with the reason) when it cannot be."""
    _check_counts(usage)
    details_in, details_out = usage.input_tokens_details, usage.output_tokens_details
    if details_in is None:
        text_in, image_in, cached = usage.input_tokens, 0, 0
    else:
        text_in, image_in, cached = details_in.text_tokens, details_in.image_tokens, details_in.cached_tokens
    cached_text = min(cached, text_in)
    cached_image = cached - cached_text
    if details_out is None:
        text_out, image_out = 0, usage.output_tokens
    else:
        text_out, image_out = details_out.text_tokens, details_out.image_tokens
    return Tokens(text_in - cached_text, cached_text, image_in - cached_image, cached_image, text_out, image_out)


def price_cost(tokens: Tokens, price: Price | None, price_source: str | None, model: str) -> Cost:
    if price is None:
        return Cost(None, None, None, f"no price is configured for the model '{model}'")
    parts: dict[str, float] = {}
    for kind in KINDS:
        count = getattr(tokens, kind)
        if not count:
            continue
        rate = getattr(price, kind)
        if rate is None:
            return Cost(None, None, price_source,
                        f"the usage has {kind} tokens but the model '{model}' has no {kind} rate")
        parts[kind] = round(count * rate / 1_000_000, 10)
    return Cost(round(sum(parts.values()), 10), parts, price_source)


def output_cost(images: int, megapixels: float | None, price: Price, price_source: str | None, model: str) -> Cost:
    """The cost of ``images`` images of ``megapixels`` in all, at ``price``'s output rates."""
    parts: dict[str, float] = {}
    if price.per_image is not None:
        parts["images"] = round(images * price.per_image, 10)
    if price.per_megapixel is not None:
        if megapixels is None:
            return Cost(None, None, price_source, f"the model '{model}' is priced per megapixel but the size of "
                                                   "its images is unknown")
        parts["megapixels"] = round(megapixels * price.per_megapixel, 10)
    return Cost(round(sum(parts.values()), 10), parts, price_source)


def unknown_usage() -> Cost:
    return Cost(None, None, None, "the upstream reported no usage")


def model_cost(usage: Usage | None, price: Price | None, source: str | None, model: str, images: int = 0,
               megapixels: float | None = None) -> tuple[Tokens | None, Cost]:
    """The tokens and cost of one answer of ``model`` that made ``images`` images of
    ``megapixels`` in all; ``source`` says where its price came from (``config``, ``bundled``
    or ``plugin``; ModelRoute.price_source)."""
    unreadable = None
    try:
        tokens = None if usage is None else tokens_of(usage)
    except UnreadableUsage as exc:
        tokens, unreadable = None, str(exc)
    if price is not None and (price.per_image is not None or price.per_megapixel is not None):
        return tokens, output_cost(images, megapixels, price, source, model)
    if unreadable is not None and price is not None:
        return None, Cost(None, None, source, unreadable)
    if tokens is None and price is not None:
        return None, unknown_usage()
    if tokens is not None and price is not None and images and not (tokens.image_output or tokens.text_output):
        return tokens, Cost(None, None, source, f"the usage reports no output tokens for {images} image(s)")
    # Without a price that is the reason, usage or not (providers billed per image report none).
    return tokens, price_cost(tokens or Tokens(), price, source, model)


def estimate_usd(request: ImageRequest, price: Price | None, tokens: TokenRule | None) -> float | None:
    """An upper bound of what one call for ``request`` may cost at ``price`` (before the call, or
    for a call whose answer was lost): its images at the dearest quality and size the request
    allows (gateway/tokens.py), its prompt at about four characters a token. None when the price
    or the token counts are unknown. An edit's input images are not counted (no published rule)."""
    if price is None:
        return None
    images = request.image_count
    if price.per_image is not None or price.per_megapixel is not None:
        total = images * (price.per_image or 0.0)
        if price.per_megapixel is not None:
            width, _, height = (request.size or "").partition("x")
            if not (width.isdigit() and height.isdigit()):
                return None
            total += images * int(width) * int(height) / 1_000_000 * price.per_megapixel
        return round(total, 10)
    out = output_tokens(tokens, request.size, request.quality, images, request.partial_images or 0)
    if out is None or price.image_output is None:
        return None
    prompt_tokens = -(-len(request.prompt) // 4)
    return round((out * price.image_output + prompt_tokens * (price.text_input or 0.0)) / 1_000_000, 10)


def worst_case_usd(request: ImageRequest, models: Iterable[tuple[Price | None, TokenRule | None]]) -> float | None:
    """What a spend limit reserves for ``request`` before its call: the largest ``estimate_usd``
    among the models that may serve it (the one asked for and its fallbacks), each ``(price,
    tokens)``; None when none of them can be estimated (nothing is reserved)."""
    estimates = [usd for price, tokens in models if (usd := estimate_usd(request, price, tokens)) is not None]
    return max(estimates) if estimates else None


def spent_usd(cost: Cost | None, possibly_billed_attempts: int, possibly_billed_usd: float | None) -> float | None:
    """What a finished request is charged to its key's spend: the answer's cost plus the upper
    bound of the attempts that may have been billed without an answer; 0 for a request that
    failed before anything could be billed. None when unknown (the reservation then stands)."""
    doubt = 0.0
    if possibly_billed_attempts:
        if possibly_billed_usd is None:
            return None
        doubt = possibly_billed_usd
    if cost is None:  # no answer: only what may have been billed
        return doubt
    if cost.cost_usd is None:
        return None
    return round(cost.cost_usd + doubt, 10)


def possibly_billed(attempts: Iterable[Attempt], estimate: Callable[[str], float | None]) -> tuple[int, float | None]:
    """How many attempts may have been billed without an answer, and an upper bound of their cost
    (``estimate(model)`` for each; None as soon as one is unknown)."""
    count, total = 0, 0.0
    known = True
    for attempt in attempts:
        if attempt.possibly_billed:
            count += 1
            usd = estimate(attempt.model)
            if usd is None:
                known = False
            else:
                total += usd
    return count, (round(total, 10) if known and count else None)
