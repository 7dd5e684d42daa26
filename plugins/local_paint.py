"""Draws a read scene (plugins/local_scene.py) plainly, and the two things streaming and edits need.

``paint`` lays the scene's objects out on a flat background: solids shaded (an isometric cube's
three faces in shades of its colour, a sphere lit from the upper left), flat shapes flat.
``partial`` gives the coarser renders a stream sends before the final image; ``apply_edit``
draws a prompt into the editable area of an image, as OpenAI's edits mask marks it.
Deterministic: no randomness; ``index`` (the n-th image of one request) only nudges the layout.
"""

from __future__ import annotations

import math
from typing import Callable

from PIL import Image, ImageDraw, ImageOps

from plugins.local_scene import Scene, SceneObject, named_colours, read_scene

__all__ = ["apply_edit", "paint", "partial"]

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]

#: When the prompt names no background: light and neutral, so any colour stands out on it.
DEFAULT_BACKGROUND: RGB = (241, 241, 236)
#: Colours for objects the prompt gives none, in the order the objects are named.
PALETTE: tuple[RGB, ...] = ((37, 99, 235), (234, 88, 12), (22, 163, 74), (219, 39, 119), (202, 138, 4))
DEFAULT_FILL = 0.62  # an object of size 1.0 spans this share of its cell
MAX_FILL = 0.88  # a huge one still leaves room for its shadow
# Drawn at twice the size and reduced, for smooth edges, up to this many output pixels; beyond
# it the 4x memory and time are not worth it for a demo picture.
SUPERSAMPLE_MAX_PIXELS = 2_400_000
#: Solids cast a shadow on the ground, light from the upper left: an ellipse, as shares of the
#: object's extent around its centre (left, top, right, bottom). Flat shapes cast none.
SHADOWS: dict[str, Box] = {
    "cube": (-0.4, 0.22, 0.62, 0.56), "pyramid": (-0.45, 0.2, 0.62, 0.56),
    "sphere": (-0.36, 0.38, 0.52, 0.56), "cylinder": (-0.3, 0.36, 0.5, 0.56),
    "cone": (-0.36, 0.36, 0.52, 0.56),
}


def _mix(colour: RGB, target: RGB, amount: float) -> RGB:
    r, g, b = (round(c + (t - c) * amount) for c, t in zip(colour, target))
    return r, g, b


def _lighter(colour: RGB, amount: float) -> RGB:
    return _mix(colour, (255, 255, 255), amount)


def _darker(colour: RGB, amount: float) -> RGB:
    return _mix(colour, (0, 0, 0), amount)


class _Canvas:
    """An RGB picture and, for a transparent background, its alpha, drawn on together."""

    def __init__(self, width: int, height: int, scale: int, background: RGB, transparent: bool) -> None:
        self.scale = scale  # drawn at scale x the output size, reduced at the end
        self.rgb = Image.new("RGB", (width * scale, height * scale), background)
        self.draw = ImageDraw.Draw(self.rgb)
        self.alpha = Image.new("L", self.rgb.size, 0) if transparent else None
        self.alpha_draw = ImageDraw.Draw(self.alpha) if self.alpha is not None else None

    def polygon(self, points: list[tuple[float, float]], colour: RGB) -> None:
        self.draw.polygon(points, fill=colour)
        if self.alpha_draw is not None:
            self.alpha_draw.polygon(points, fill=255)

    def ellipse(self, box: Box, colour: RGB) -> None:
        self.draw.ellipse(box, fill=colour)
        if self.alpha_draw is not None:
            self.alpha_draw.ellipse(box, fill=255)

    def paste(self, fill: Image.Image | RGB, xy: tuple[int, int], mask: Image.Image) -> None:
        self.rgb.paste(fill, (*xy, xy[0] + mask.width, xy[1] + mask.height), mask)
        if self.alpha is not None:
            self.alpha.paste(255, (*xy, xy[0] + mask.width, xy[1] + mask.height), mask)

    def shading(self, light: Image.Image, size: tuple[int, int], colours: tuple[RGB, RGB, RGB], midpoint: int,
                whitepoint: int = 255) -> Image.Image:
        """``light`` (0 lit .. 255 dark) coloured and enlarged to ``size``.

        Coloured at the output's resolution and enlarged by repeating pixels: reducing them
        again gives the same pixels, and it is ~4x faster than colouring at the drawn size.
        """
        small = (max(1, size[0] // self.scale), max(1, size[1] // self.scale))
        light = light.resize(small, Image.Resampling.BILINEAR)
        lit, dark, mid = colours
        shaded = ImageOps.colorize(light, lit, dark, mid, midpoint=midpoint, whitepoint=whitepoint)
        return shaded.resize(size, Image.Resampling.NEAREST) if shaded.size != size else shaded

    def image(self) -> Image.Image:
        rgb = self.rgb.reduce(self.scale) if self.scale > 1 else self.rgb
        if self.alpha is None:
            return rgb
        rgb.putalpha(self.alpha.reduce(self.scale) if self.scale > 1 else self.alpha)
        return rgb


# --- Shapes. Each draws one object centred on (cx, cy) within a d x d square. -----------------

Painter = Callable[[_Canvas, float, float, float, RGB], None]


def _cube(canvas: _Canvas, cx: float, cy: float, d: float, colour: RGB) -> None:
    half, across = d / 2, d / 2 * math.cos(math.pi / 6)  # isometric: edges at +-30 degrees
    top, bottom = (cx, cy - half), (cx, cy + half)
    upper_left, upper_right = (cx - across, cy - half / 2), (cx + across, cy - half / 2)
    lower_left, lower_right = (cx - across, cy + half / 2), (cx + across, cy + half / 2)
    # Lit from above and the left: the top palest, the right face darkest.
    canvas.polygon([top, upper_right, (cx, cy), upper_left], _lighter(colour, 0.3))
    canvas.polygon([upper_left, (cx, cy), bottom, lower_left], _darker(colour, 0.12))
    canvas.polygon([(cx, cy), upper_right, lower_right, bottom], _darker(colour, 0.35))


def _sphere(canvas: _Canvas, cx: float, cy: float, d: float, colour: RGB) -> None:
    size = max(1, round(d))
    # radial_gradient is 256x256, 0 at its centre, rising ~1.41 a pixel. The crop puts the
    # light (the gradient's centre) up and to the left of the sphere's centre.
    radius = 85
    centre_x, centre_y = 128 + 0.3 * radius, 128 + 0.35 * radius
    crop = (centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius)
    left, top, right, bottom = (round(c) for c in crop)
    light = Image.radial_gradient("L").crop((left, top, right, bottom))
    shades = (_lighter(colour, 0.55), _darker(colour, 0.55), colour)
    shaded = canvas.shading(light, (size, size), shades, midpoint=70, whitepoint=175)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((0, 0, size - 1, size - 1), fill=255)
    canvas.paste(shaded, (round(cx - size / 2), round(cy - size / 2)), mask)


def _side_lit(canvas: _Canvas, width: int, height: int, colour: RGB) -> Image.Image:
    """A round body's shading across its width: brightest a third of the way from the left."""
    # Squared, so the highlight is a soft band rather than a crease.
    ramp = bytes(min(255, round(((x / 255 - 0.32) / 0.68) ** 2 * 255)) for x in range(256))
    light = Image.frombytes("L", (256, 1), ramp)
    return canvas.shading(light, (width, height), (_lighter(colour, 0.4), _darker(colour, 0.5), colour), midpoint=50)


def _cylinder(canvas: _Canvas, cx: float, cy: float, d: float, colour: RGB) -> None:
    width, height = max(2, round(d * 0.68)), max(2, round(d))
    cap = max(1, round(width * 0.3))  # the ellipses' height: seen a little from above
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    draw.rectangle((0, cap // 2, width - 1, height - cap // 2), fill=255)
    draw.ellipse((0, height - cap, width - 1, height - 1), fill=255)
    x, y = round(cx - width / 2), round(cy - height / 2)
    canvas.paste(_side_lit(canvas, width, height, colour), (x, y), mask)
    canvas.ellipse((x, y, x + width - 1, y + cap), _lighter(colour, 0.25))


def _cone(canvas: _Canvas, cx: float, cy: float, d: float, colour: RGB) -> None:
    width, height = max(2, round(d * 0.8)), max(2, round(d))
    base = max(1, round(width * 0.28))
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    # The sides meet the base ellipse a little inside its ends, so no corner pokes out.
    draw.polygon([(width / 2, 0), (width * 0.02, height - base / 2), (width * 0.98, height - base / 2)], fill=255)
    draw.ellipse((0, height - base, width - 1, height - 1), fill=255)
    canvas.paste(_side_lit(canvas, width, height, colour), (round(cx - width / 2), round(cy - height / 2)), mask)


def _pyramid(canvas: _Canvas, cx: float, cy: float, d: float, colour: RGB) -> None:
    apex, front = (cx, cy - d / 2), (cx - d * 0.08, cy + d / 2)
    left, right = (cx - d / 2, cy + d * 0.32), (cx + d / 2, cy + d * 0.32)
    canvas.polygon([apex, left, front], _lighter(colour, 0.15))
    canvas.polygon([apex, front, right], _darker(colour, 0.3))


def _circle(canvas: _Canvas, cx: float, cy: float, d: float, colour: RGB) -> None:
    canvas.ellipse((cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2), colour)


def _oval(canvas: _Canvas, cx: float, cy: float, d: float, colour: RGB) -> None:
    canvas.ellipse((cx - d / 2, cy - d * 0.32, cx + d / 2, cy + d * 0.32), colour)


def _rectangle(canvas: _Canvas, cx: float, cy: float, d: float, colour: RGB) -> None:
    canvas.polygon([(cx - d / 2, cy - d * 0.31), (cx + d / 2, cy - d * 0.31),
                    (cx + d / 2, cy + d * 0.31), (cx - d / 2, cy + d * 0.31)], colour)


def _regular(sides: int, rotation_deg: float, inner: float = 1.0) -> Painter:
    """A regular polygon, or with ``inner`` < 1 a star of ``sides`` points, pointing up."""

    def draw(canvas: _Canvas, cx: float, cy: float, d: float, colour: RGB) -> None:
        corners = sides * (2 if inner < 1 else 1)
        points = []
        for k in range(corners):
            angle = math.radians(rotation_deg) - math.pi / 2 + 2 * math.pi * k / corners
            r = d / 2 * (inner if k % 2 and inner < 1 else 1)
            points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
        # Centre the drawn extent, not the circumcircle (a triangle or star sits high in it).
        shift = cy - (min(y for _, y in points) + max(y for _, y in points)) / 2
        canvas.polygon([(x, y + shift) for x, y in points], colour)

    return draw


def _heart(canvas: _Canvas, cx: float, cy: float, d: float, colour: RGB) -> None:
    # The classic parametric heart: x in [-16, 16], y in about [-17, 12] (pointing down once flipped).
    scale = d / 34
    points = []
    for k in range(72):
        t = 2 * math.pi * k / 72
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((cx + x * scale, cy - (y + 2.5) * scale))
    canvas.polygon(points, colour)


def _masked(draw_mask: Callable[[ImageDraw.ImageDraw, int], None]) -> Painter:
    """A flat shape with a hole or a bite, drawn into its own mask so nothing beneath is erased."""

    def draw(canvas: _Canvas, cx: float, cy: float, d: float, colour: RGB) -> None:
        size = max(2, round(d))
        mask = Image.new("L", (size, size), 0)
        draw_mask(ImageDraw.Draw(mask), size)
        canvas.paste(colour, (round(cx - size / 2), round(cy - size / 2)), mask)

    return draw


def _ring_mask(draw: ImageDraw.ImageDraw, size: int) -> None:
    draw.ellipse((0, 0, size - 1, size - 1), fill=255)
    draw.ellipse((size * 0.24, size * 0.24, size * 0.76, size * 0.76), fill=0)


def _crescent_mask(draw: ImageDraw.ImageDraw, size: int) -> None:
    draw.ellipse((0, 0, size - 1, size - 1), fill=255)
    draw.ellipse((size * 0.3, -size * 0.1, size * 1.2, size * 0.8), fill=0)


def _cross_mask(draw: ImageDraw.ImageDraw, size: int) -> None:
    draw.rectangle((size * 0.35, 0, size * 0.65, size - 1), fill=255)
    draw.rectangle((0, size * 0.35, size - 1, size * 0.65), fill=255)


#: Shape (a value of local_scene.SHAPES) → how it is drawn.
PAINTERS: dict[str, Painter] = {
    "cube": _cube, "sphere": _sphere, "cylinder": _cylinder, "cone": _cone, "pyramid": _pyramid,
    "circle": _circle, "oval": _oval, "square": _regular(4, 45), "rectangle": _rectangle,
    "triangle": _regular(3, 0), "diamond": _regular(4, 0), "pentagon": _regular(5, 0),
    "hexagon": _regular(6, 30), "octagon": _regular(8, 22.5), "star": _regular(5, 0, inner=0.4),
    "heart": _heart, "ring": _masked(_ring_mask), "crescent": _masked(_crescent_mask),
    "cross": _masked(_cross_mask),
}


# --- Layout -----------------------------------------------------------------------------------


def _span(slot: int | None, used: set[int]) -> tuple[float, float]:
    """The share of one axis a slot covers: halves for left/right, thirds once a centre joins them."""
    if slot is None or used == {1}:
        return 0.0, 1.0
    if 1 in used:
        return slot / 3, (slot + 1) / 3
    return (0.0, 0.5) if slot == 0 else (0.5, 1.0)


def _groups(objects: tuple[SceneObject, ...]) -> list[tuple[Box, list[int]]]:
    """Regions of the canvas (as shares of it), each with the objects (by index) laid out in it."""
    slots: list[tuple[int | None, int | None]] = [(o.column, o.row) for o in objects]
    if all(slot == (None, None) for slot in slots):
        return [((0.0, 0.0, 1.0, 1.0), list(range(len(objects))))]
    columns = {c for c, _ in slots if c is not None}
    rows = {r for _, r in slots if r is not None}
    # Objects placed nowhere take the places nobody named: "a sphere on the left and a star".
    free: list[tuple[int | None, int | None]] = [(c, None) for c in (2, 0, 1) if columns and c not in columns]
    free += [(None, r) for r in (2, 0, 1) if rows and r not in rows]
    for k, slot in enumerate(slots):  # beyond the free places, they share the whole canvas
        if slot == (None, None) and free:
            slots[k] = free.pop(0)
    columns = {c for c, _ in slots if c is not None}
    rows = {r for _, r in slots if r is not None}
    members: dict[tuple[int | None, int | None], list[int]] = {}
    for k, slot in enumerate(slots):
        members.setdefault(slot, []).append(k)
    regions = []
    for (column, row), indexes in members.items():
        (x0, x1), (y0, y1) = _span(column, columns), _span(row, rows)
        regions.append(((x0, y0, x1, y1), indexes))
    return regions


def _grid(n: int, width: float, height: float) -> tuple[int, int]:
    """Columns and rows for n equal square cells in a region, as large as they can be."""
    best = (1, n)
    best_side = 0.0
    for columns in range(1, n + 1):
        rows = math.ceil(n / columns)
        side = min(width / columns, height / rows)
        if side > best_side + 1e-9:
            best, best_side = (columns, rows), side
    return best


Placement = tuple[SceneObject, RGB, float, float, float]  # object, colour, centre x, centre y, extent


def _placements(scene: Scene, width: int, height: int, index: int) -> list[Placement]:
    """Every drawn copy of every object, in pixels."""
    placed = []
    for (x0, y0, x1, y1), indexes in _groups(scene.objects):
        copies = [(k, scene.objects[k]) for k in indexes for _ in range(scene.objects[k].count)]
        left, top, region_w, region_h = x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height
        columns, rows = _grid(len(copies), region_w, region_h)
        cell_w, cell_h = region_w / columns, region_h / rows
        side = min(cell_w, cell_h)
        for n, (k, thing) in enumerate(copies):
            row, column = divmod(n, columns)
            in_row = min(columns, len(copies) - row * columns)  # a short last row is centred
            cx = left + region_w / 2 + (column - (in_row - 1) / 2) * cell_w
            cy = top + region_h / 2 + (row - (rows - 1) / 2) * cell_h
            if index:  # the n-th image of a request: each copy moved a little, a different way
                angle = index * 2.399963 + n * 1.1  # the golden angle keeps the n images apart
                cx, cy = cx + 0.06 * side * math.cos(angle), cy + 0.06 * side * math.sin(angle)
            colour = thing.colour or PALETTE[k % len(PALETTE)]
            placed.append((thing, colour, cx, cy, side * min(MAX_FILL, DEFAULT_FILL * thing.size)))
    return placed


def paint(scene: Scene, width: int, height: int, *, transparent: bool = False, index: int = 0) -> Image.Image:
    """The scene drawn at width x height: RGB, or RGBA with a transparent background."""
    background = scene.background or DEFAULT_BACKGROUND
    scale = 2 if width * height <= SUPERSAMPLE_MAX_PIXELS else 1
    canvas = _Canvas(width, height, scale, background, transparent)
    placed = _placements(scene, width * scale, height * scale, index)
    if not transparent:  # shadows first, so no shadow falls across a neighbour
        shadow = _darker(background, 0.1)
        for thing, _, cx, cy, d in placed:
            if (box := SHADOWS.get(thing.shape)) is not None:
                canvas.ellipse((cx + box[0] * d, cy + box[1] * d, cx + box[2] * d, cy + box[3] * d), shadow)
    for thing, colour, cx, cy, d in placed:
        if thing.shape not in SHADOWS and math.dist(colour, background) < 40:
            # A flat white circle on white would vanish: shade it off the background instead.
            colour = _darker(colour, 0.15) if sum(colour) > 380 else _lighter(colour, 0.25)
        PAINTERS[thing.shape](canvas, cx, cy, d, colour)
    return canvas.image()


def partial(image: Image.Image, step: int, steps: int) -> Image.Image:
    """The image as a stream's ``step``-th of ``steps`` partial renders shows it: coarser earlier.

    Steps 0..steps-1 are rendered at 1/32, then halving down to 1/8 of the size and scaled back
    up smoothly, so a client sees the picture sharpen; the final image follows them.
    """
    if not 0 <= step < steps:
        raise ValueError(f"step {step} is not in 0..{steps - 1}")
    factor = 2 ** (2 + math.ceil(3 * (steps - step) / steps))
    small = (max(1, image.width // factor), max(1, image.height // factor))
    coarse = image.resize(small, Image.Resampling.BOX)
    return coarse.resize(image.size, Image.Resampling.BILINEAR)


def _editable(mask: Image.Image | None, size: tuple[int, int]) -> Image.Image:
    """255 where the image may change: OpenAI's mask marks it with fully transparent pixels."""
    if mask is None:
        return Image.new("L", size, 255)
    if mask.size != size:
        raise ValueError(f"The mask is {mask.width}x{mask.height}, the image {size[0]}x{size[1]}.")
    if "A" not in mask.getbands() and "transparency" not in mask.info:
        raise ValueError("The mask has no alpha channel.")
    alpha = mask.convert("RGBA").getchannel("A")
    return alpha.point(lambda a: 255 if a == 0 else 0)


def apply_edit(image: Image.Image, mask: Image.Image | None, prompt: str, *, index: int = 0) -> Image.Image:
    """The image with the prompt drawn into its editable area; every other pixel as it was.

    The prompt's scene is painted over the area's bounding box (on its background, when it
    names one). A prompt with no shape tints the area with its first colour (or a violet) and
    stripes it, so an edit is always visible. An image with alpha keeps it, except where the
    edit drew: drawn pixels are opaque.
    """
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    base = image.convert("RGBA" if has_alpha else "RGB")
    editable = _editable(mask, base.size)
    box = editable.getbbox()
    if box is None:
        return base
    area = base.crop(box).convert("RGBA")
    scene = read_scene(prompt)
    if scene.objects:
        layer = paint(scene, area.width, area.height, transparent=scene.background is None, index=index)
        area.alpha_composite(layer.convert("RGBA"))
    else:
        colour = (named_colours(prompt) or [(139, 92, 246)])[0]
        area = Image.blend(area, Image.new("RGBA", area.size, (*colour, 255)), 0.45)
        stripes = Image.new("L", area.size, 0)
        draw = ImageDraw.Draw(stripes)
        period = max(8, min(area.size) // 12)
        for x in range(-area.height, area.width, period):
            draw.line((x, area.height, x + area.height, 0), fill=255, width=max(2, period // 3))
        area.paste(_darker(colour, 0.35), (0, 0), stripes)
        area.putalpha(255)
    edited = base.copy()
    edited.paste(area.convert(base.mode), box[:2], editable.crop(box))
    return edited
