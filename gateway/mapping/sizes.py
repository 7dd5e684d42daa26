"""OpenAI's ``size`` in a provider's own terms, with every adjustment said in a note.

Two shapes of provider: those that take an aspect ratio and a size class (Gemini's
``aspectRatio`` + ``imageSize``, Imagen's ``aspectRatio`` + ``sampleImageSize``), and those
that take a width and a height on a grid within bounds (Flux, fal). ``nearest_aspect`` and
``snap_dimensions`` answer for each; the plugin sends what they return and passes the note to
``call.note()``, so the client sees in ``extra.routing.attempts[].notes`` what was asked and
what was sent.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

#: The nominal pixel counts of the usual "K" size classes (a square of that edge); a provider's
#: exact pixels per class and ratio are its own, which is why the result is read from the image.
K_CLASSES: Mapping[str, int] = {"1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 4096 * 4096}


def parse_size(size: str | None) -> tuple[int, int] | None:
    """``(width, height)`` of a ``WxH`` size; None for ``auto``, no size, or anything else."""
    if not size or size == "auto":
        return None
    width, sep, height = size.partition("x")
    if not (sep and width.isdigit() and height.isdigit()) or int(width) == 0 or int(height) == 0:
        return None
    return int(width), int(height)


def _ratio(text: str) -> float:
    w, _, h = text.partition(":")
    return float(w) / float(h)


class AspectChoice(NamedTuple):
    """What to send: ``aspect_ratio`` (``"3:2"``) and ``size_class`` (``"1K"``), each None when
    the provider's default should stand (``size`` was ``auto`` or absent, or the provider has no
    size classes); ``note`` says what was mapped, None when nothing was."""

    aspect_ratio: str | None
    size_class: str | None
    note: str | None


def nearest_aspect(size: str | None, ratios: Sequence[str],
                   size_classes: Mapping[str, int] | None = None) -> AspectChoice:
    """The provider's aspect ratio nearest to ``size`` (by the log of width/height, so 2:1 and
    1:2 are equally far from 1:1), and its size class nearest in pixel count (``size_classes``
    maps a class name to its nominal pixels, e.g. ``K_CLASSES``; ties go to the larger class,
    so a request is not served smaller than it asked when it could be served as large)."""
    if not ratios:
        raise ValueError("a provider needs at least one aspect ratio")
    wanted = parse_size(size)
    if wanted is None:
        return AspectChoice(None, None, None)
    width, height = wanted
    target = math.log(width / height)
    ratio = min(ratios, key=lambda r: abs(math.log(_ratio(r)) - target))
    size_class = None
    if size_classes:
        pixels = math.log(width * height)
        size_class = min(size_classes, key=lambda c: (abs(math.log(size_classes[c]) - pixels), -size_classes[c]))
    exact = math.isclose(_ratio(ratio), width / height, rel_tol=1e-3)
    note = f"size {width}x{height} sent as aspect ratio {ratio}"
    if size_class is not None:
        note += f", size class {size_class}"
    note += " (the provider chooses the exact pixels)" if exact else \
        f" (the nearest it offers to {width / height:.3g}:1; the provider chooses the exact pixels)"
    return AspectChoice(ratio, size_class, note)


class GridRule(NamedTuple):
    """A provider's width/height rule: both edges multiples of ``multiple_of`` within
    ``[min_edge, max_edge]``, the area at most ``max_pixels`` (None: no limit); ``default``
    is what ``auto`` becomes (None: leave it to the provider)."""

    multiple_of: int = 32
    min_edge: int = 256
    max_edge: int = 1440
    max_pixels: int | None = None
    default: tuple[int, int] | None = None


class Dimensions(NamedTuple):
    """What to send (both None: leave the size to the provider) and the note, None when the
    request's size was sent unchanged."""

    width: int | None
    height: int | None
    note: str | None


def snap_dimensions(size: str | None, rule: GridRule) -> Dimensions:
    """``size`` scaled into the rule's bounds (keeping its aspect ratio as far as the bounds
    allow), then each edge rounded to the nearest multiple and clamped."""
    wanted = parse_size(size)
    if wanted is None:
        if rule.default is None:
            return Dimensions(None, None, None)
        width, height = rule.default
        return Dimensions(width, height, f"size {size or 'auto'} sent as {width}x{height}, the default for this model")
    width, height = wanted
    m = rule.multiple_of
    low, high = math.ceil(rule.min_edge / m) * m, (rule.max_edge // m) * m
    scale = min(1.0, high / max(width, height))
    if rule.max_pixels is not None:
        scale = min(scale, math.sqrt(rule.max_pixels / (width * height)))
    scale = max(scale, low / min(width, height))  # a bound that cannot hold both ways yields below
    w = min(max(round(width * scale / m) * m, low), high)
    h = min(max(round(height * scale / m) * m, low), high)
    while rule.max_pixels is not None and w * h > rule.max_pixels and max(w, h) - m >= low:
        if w >= h:
            w -= m
        else:
            h -= m
    if (w, h) == (width, height):
        return Dimensions(w, h, None)
    bounds = f"edges multiples of {m} from {low} to {high}"
    if rule.max_pixels is not None:
        bounds += f", at most {rule.max_pixels:,} pixels"
    return Dimensions(w, h, f"size {width}x{height} sent as {w}x{h} ({bounds})")
