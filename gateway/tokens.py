"""How many output tokens an image costs, as data per model (gateway/data/models.yaml ``tokens``).

Two kinds of rule, both OpenAI's own:

- a table by quality and size (gpt-image-1 and gpt-image-1.5; OpenAI's image generation guide,
  "Cost and latency", for "GPT Image models prior to gpt-image-2"); a size not in the table is
  scaled from 1024x1024 by its pixels;
- gpt-image-2's formula, from OpenAI's token calculator on the same guide page
  (developers.openai.com ``GptImageTokenCalculator``): with ``base`` by quality,
  ``u = round(base * short / long)`` (half to even) and
  ``tokens = ceil(base * u * (2_000_000 + W * H) / 4_000_000)``; it gives 196 / 1756 / 7024 at
  1024x1024 low / medium / high and 13,342 at 3840x2160 high.

Each partial image of a stream costs 100 output tokens more (same guide). ``quality: auto`` has no
published count: an estimate takes the model's dearest quality, and ``size: auto`` its dearest
size, so an estimate is an upper bound (the spend reservation and "possibly billed" use it).
"""

from __future__ import annotations

import math

import msgspec

#: Output tokens a streamed partial image adds.
PARTIAL_IMAGE_TOKENS = 100


class TokenRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A model's output tokens per image: a ``table`` (quality -> "WxH" -> tokens), or ``base``
    (quality -> base) for gpt-image-2's formula, with ``max_size`` its dearest size for ``auto``."""

    table: dict[str, dict[str, int]] | None = None
    base: dict[str, int] | None = None
    #: The size whose count stands for ``size: auto`` under the formula (its most expensive).
    auto_size: str = "1024x1024"


def _size(size: str | None) -> tuple[int, int] | None:
    if not size or size == "auto":
        return None
    width, sep, height = size.partition("x")
    if sep and width.isdigit() and height.isdigit():
        return int(width), int(height)
    return None


def _formula(base: int, width: int, height: int) -> int:
    long, short = max(width, height), min(width, height)
    u = round(base * short / long)  # Python's round is half to even, as the calculator's
    return math.ceil(base * u * (2_000_000 + width * height) / 4_000_000)


def image_tokens(rule: TokenRule, size: str | None, quality: str | None) -> int | None:
    """Output tokens of one image at ``size`` and ``quality`` (None, ``auto``: the dearest);
    None when the rule cannot say."""
    if rule.base is not None:
        bases = rule.base
        base = bases.get(quality or "") if quality not in (None, "auto") else max(bases.values())
        dims = _size(size) or _size(rule.auto_size)
        return None if base is None or dims is None else _formula(base, *dims)
    if rule.table is None:
        return None
    tables = [rule.table[quality]] if quality in rule.table else list(rule.table.values())
    counts = []
    for table in tables:
        dims = _size(size)
        if dims is None:
            counts.append(max(table.values()))
        elif size in table:
            counts.append(table[size])
        elif "1024x1024" in table:
            counts.append(round(table["1024x1024"] * dims[0] * dims[1] / 1_048_576))
    return max(counts) if counts else None


def output_tokens(rule: TokenRule | None, size: str | None, quality: str | None, images: int,
                  partial_images: int = 0) -> int | None:
    """The output tokens of ``images`` images, each with its ``partial_images``."""
    if rule is None:
        return None
    each = image_tokens(rule, size, quality)
    return None if each is None else images * (each + PARTIAL_IMAGE_TOKENS * partial_images)
