"""What a simple prompt names, for the offline provider: shapes, colours, counts, sizes, places.

``read_scene("A small red cube on a white background.")`` gives one small red cube on white.
A table-driven reader, not language understanding: the tables below say which words count, and
tests/test_local_scene.py shows which phrases work. A prompt that names no shape gives a scene
with no objects, and the provider draws its abstract picture instead. No Pillow here: every
plugin module is imported at start-up, and only drawing needs it (plugins/local_paint.py).
"""

from __future__ import annotations

import dataclasses
import re

import msgspec

__all__ = ["COLOURS", "SHAPES", "Scene", "SceneObject", "named_colours", "read_scene"]

RGB = tuple[int, int, int]

#: Named colours, one or two words, as sRGB. Picked to read as their name at a glance.
COLOURS: dict[str, RGB] = {
    "red": (220, 38, 38), "green": (34, 160, 60), "blue": (37, 99, 235), "yellow": (250, 204, 21),
    "orange": (249, 115, 22), "purple": (126, 34, 206), "violet": (139, 92, 246),
    "pink": (244, 114, 182), "black": (20, 20, 20), "white": (255, 255, 255),
    "grey": (128, 128, 128), "gray": (128, 128, 128), "brown": (133, 77, 14),
    "cyan": (6, 182, 212), "magenta": (217, 40, 217), "gold": (212, 175, 55),
    "golden": (212, 175, 55), "silver": (192, 192, 200), "navy": (30, 41, 110),
    "teal": (13, 148, 136), "maroon": (128, 0, 0), "beige": (225, 205, 170), "tan": (210, 180, 140),
    "olive": (128, 128, 0), "lime": (132, 204, 22), "indigo": (75, 0, 130),
    "turquoise": (64, 224, 208), "lavender": (196, 181, 253), "crimson": (220, 20, 60),
    "scarlet": (255, 36, 0), "coral": (255, 127, 80), "salmon": (250, 128, 114),
    "cream": (255, 250, 220), "ivory": (255, 255, 240), "khaki": (195, 176, 145),
    "mint": (152, 230, 170), "peach": (255, 200, 160), "bronze": (176, 120, 60),
    "copper": (184, 115, 51), "amber": (255, 191, 0), "charcoal": (54, 69, 79),
    "aqua": (0, 220, 230), "sky blue": (135, 206, 235), "navy blue": (30, 41, 110),
    "royal blue": (65, 105, 225), "baby blue": (137, 207, 240), "lime green": (132, 204, 22),
    "forest green": (34, 110, 34), "olive green": (107, 142, 35), "hot pink": (255, 105, 180),
    "off white": (248, 246, 240),
}

#: Words that lighten (toward white) or darken (toward black) the colour that follows.
SHADES: dict[str, tuple[RGB, float]] = {
    "light": ((255, 255, 255), 0.55), "pale": ((255, 255, 255), 0.6),
    "pastel": ((255, 255, 255), 0.55), "dark": ((0, 0, 0), 0.4), "deep": ((0, 0, 0), 0.25),
}

#: Shape nouns → the shape drawn. Plurals are derived (``_plural``); "tori" is listed.
SHAPES: dict[str, str] = {
    "cube": "cube", "box": "cube", "block": "cube", "sphere": "sphere", "ball": "sphere",
    "orb": "sphere", "globe": "sphere", "circle": "circle", "disc": "circle", "disk": "circle",
    "dot": "circle", "square": "square", "rectangle": "rectangle", "triangle": "triangle",
    "pyramid": "pyramid", "star": "star", "heart": "heart", "cylinder": "cylinder",
    "cone": "cone", "ring": "ring", "donut": "ring", "doughnut": "ring", "torus": "ring",
    "tori": "ring", "diamond": "diamond", "rhombus": "diamond", "pentagon": "pentagon",
    "hexagon": "hexagon", "octagon": "octagon", "oval": "oval", "ellipse": "oval",
    "crescent": "crescent", "cross": "cross",
}

#: Count words; the last one before a noun wins ("a pair of" → 2). Digits count too.
COUNTS: dict[str, int] = {
    "a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "pair": 2, "couple": 2, "three": 3,
    "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "few": 3,
    "some": 3, "several": 4, "many": 6,
}

#: Size words → a scale of the default size.
SIZES: dict[str, float] = {
    "tiny": 0.5, "little": 0.7, "small": 0.7, "medium": 1.0, "large": 1.3, "big": 1.3,
    "huge": 1.55, "giant": 1.55, "enormous": 1.55, "massive": 1.55,
}

#: Place words → (column, row) on a 3x3 grid: 0 left/top, 1 centre, 2 right/bottom.
PLACES: dict[str, tuple[int | None, int | None]] = {
    "left": (0, None), "right": (2, None), "top": (None, 0), "upper": (None, 0),
    "bottom": (None, 2), "lower": (None, 2), "centre": (1, 1), "center": (1, 1),
    "middle": (1, 1), "centered": (1, 1), "centred": (1, 1),
}

#: "A above B": where A goes; B takes the opposite. "next to"/"beside" put A left of B.
RELATIONS: dict[str, tuple[int | None, int | None]] = {
    "above": (None, 0), "below": (None, 2), "under": (None, 2), "beneath": (None, 2),
    "underneath": (None, 2), "beside": (0, None), "next": (0, None),
}

_SEPARATORS = frozenset({".", ",", ";", ":", "!", "?", "and", "with", "plus", "while", "then", "or"})
_DEFINITE = frozenset({"the", "this", "that", "its"})
_BACKGROUND = frozenset({"background", "backdrop", "backgrounds"})
# Words that may stand between a background's colour and the word "background", either side.
_BACKGROUND_FILLERS = frozenset({
    "plain", "solid", "simple", "flat", "clean", "pure", "bright", "colored", "coloured", "is",
    "of", "in", "colour", "color", "should", "be", "entirely", "all", ":", "transparent", "clear",
})
# Words before "on a white background" that belong to it.
_BACKGROUND_LEAD = frozenset({"a", "an", "the", "on", "against", "over", "in", "with", "front", "of", "set"})
_TOKEN = re.compile(r"[a-z0-9]+|[.,;:!?]")
_COLOUR_WORDS = frozenset(word for name in [*COLOURS, *SHADES] for word in name.split())
MAX_OBJECTS = 8
MAX_COUNT = 10  # per object: "100 dots" draws ten


class SceneObject(msgspec.Struct, frozen=True):
    """One named thing, drawn ``count`` times."""

    shape: str  # a value of SHAPES
    count: int = 1
    colour: RGB | None = None  # None: the painter picks one
    size: float = 1.0  # a scale of the default size
    column: int | None = None  # 0 left, 1 centre, 2 right; None: the painter places it
    row: int | None = None  # 0 top, 1 middle, 2 bottom


class Scene(msgspec.Struct, frozen=True):
    objects: tuple[SceneObject, ...] = ()
    background: RGB | None = None  # None: not named (or named transparent)


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("x", "s", "sh", "ch")) else "s")


# Noun form → (shape, is plural).
_NOUNS: dict[str, tuple[str, bool]] = {
    **{_plural(word): (shape, True) for word, shape in SHAPES.items()},
    **{word: (shape, word == "tori") for word, shape in SHAPES.items()},
}


def _shade(colour: RGB, shade: tuple[RGB, float]) -> RGB:
    target, amount = shade
    r, g, b = (round(c + (t - c) * amount) for c, t in zip(colour, target))
    return r, g, b


def _colour_at(tokens: list[str], i: int) -> tuple[RGB, int] | None:
    """The colour named at tokens[i] ("red", "sky blue", "light blue") and how many tokens it takes."""
    shade = SHADES.get(tokens[i])
    start = i + 1 if shade else i
    for width in (2, 1):
        name = " ".join(tokens[start : start + width])
        if len(tokens) >= start + width and name in COLOURS:
            colour = COLOURS[name]
            return (_shade(colour, shade) if shade else colour), start + width - i
    return None


def named_colours(prompt: str) -> list[RGB]:
    """Every colour the prompt names, in order (an edit without a shape tints with the first)."""
    return _colours_in(_TOKEN.findall(prompt.lower()))


def _colours_in(tokens: list[str]) -> list[RGB]:
    found, i = [], 0
    while i < len(tokens):
        match = _colour_at(tokens, i)
        if match is not None:
            found.append(match[0])
        i += match[1] if match is not None else 1
    return found


def _take_background(tokens: list[str]) -> tuple[list[str], RGB | None]:
    """Removes "on a white background" / "background is blue" and says which colour it named."""
    background: RGB | None = None
    while found := [i for i, token in enumerate(tokens) if token in _BACKGROUND]:
        i = found[0]
        start = i
        while start > 0 and (tokens[start - 1] in _BACKGROUND_FILLERS or tokens[start - 1] in _COLOUR_WORDS):
            start -= 1
        named = _colours_in(tokens[start:i])
        end = i + 1
        if not named:  # "background is light blue", "background: red"
            while end < len(tokens) and (tokens[end] in _BACKGROUND_FILLERS or tokens[end] in _COLOUR_WORDS
                                         or tokens[end] in ("a", "an", "the")):
                end += 1
            named = _colours_in(tokens[i + 1 : end])
        while start > 0 and tokens[start - 1] in _BACKGROUND_LEAD:
            start -= 1
        background = background or (named[-1] if named else None)
        tokens = tokens[:start] + ["."] + tokens[end:]  # what stood either side is no longer one phrase
    return tokens, background


@dataclasses.dataclass
class _Draft:
    shape: str
    count: int
    colour: RGB | None = None
    size: float = 1.0
    column: int | None = None
    row: int | None = None

    def place(self, place: tuple[int | None, int | None], *, centre: bool = False) -> None:
        column, row = place
        # "top centre": the centre word fills only the axis the other word left open.
        if column is not None and not (centre and self.column is not None):
            self.column = column
        if row is not None and not (centre and self.row is not None):
            self.row = row


@dataclasses.dataclass
class _Pending:
    """What was said since the last noun, waiting for the noun it describes."""

    count: int | None = None
    colour: RGB | None = None
    size: float | None = None
    places: list[tuple[int | None, int | None]] = dataclasses.field(default_factory=list)
    definite: bool = False

    def says_nothing(self) -> bool:
        # Counts and articles do not count: "a cube on the left" places the cube.
        return self.colour is None and self.size is None and not self.places

    def describes(self, draft: _Draft, *, leftover: bool = False) -> None:
        # A leftover ("a cube that is red") only fills what the noun's own words left open.
        if self.colour is not None and not (leftover and draft.colour is not None):
            draft.colour = self.colour
        if self.size is not None and not (leftover and draft.size != 1.0):
            draft.size = self.size
        for place in self.places:
            draft.place(place, centre=place == (1, 1))


class _Reader:
    def __init__(self) -> None:
        self.objects: list[_Draft] = []
        self.segment: list[_Draft] = []  # objects named since the last separator
        self.pending = _Pending()
        self.opposite: tuple[int | None, int | None] | None = None  # from "A above B", for B
        self.last_was_noun = False

    def read(self, tokens: list[str]) -> None:
        i = 0
        while i < len(tokens):
            token, following = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
            noun, colour = _NOUNS.get(token), _colour_at(tokens, i)
            if token in _SEPARATORS:
                self.end_segment()
            elif colour is not None:
                self.pending.colour = colour[0]
                i += colour[1] - 1
            elif token.isdigit() or token in COUNTS:
                count = (MAX_COUNT if len(token) > 2 else int(token)) if token.isdigit() else COUNTS[token]
                self.pending.count = min(count, MAX_COUNT)
            elif token in SIZES:
                self.pending.size = SIZES[token]
            elif noun is not None:
                self.noun(*noun)
            elif token in RELATIONS or (token in PLACES and following == "of"):
                self.relation(RELATIONS.get(token) or PLACES[token])
            elif token in PLACES:
                # After its noun ("a cube on the left") it places that noun, before one the next.
                if self.segment and self.pending.says_nothing():
                    self.segment[-1].place(PLACES[token], centre=PLACES[token] == (1, 1))
                else:
                    self.pending.places.append(PLACES[token])
            elif token in _DEFINITE:
                self.pending.definite = True
            self.last_was_noun = noun is not None
            i += 1
        self.end_segment()

    def noun(self, shape: str, plural: bool) -> None:
        if self.last_was_noun and self.segment:  # "a square box", "a star shape" is one thing: the last noun names it
            self.segment[-1].shape = shape
            return
        pending = self.pending
        known = [o for o in self.objects if o.shape == shape]
        if pending.definite and pending.count is None and known:  # "The cube is red."
            draft = known[-1]
        elif len(self.objects) < MAX_OBJECTS:
            draft = _Draft(shape, pending.count or (3 if plural else 1))
            self.objects.append(draft)
        else:
            self.pending = _Pending()
            return
        pending.describes(draft)
        if self.opposite is not None:
            draft.place(self.opposite)
            self.opposite = None
        self.segment.append(draft)
        self.pending = _Pending()

    def relation(self, place: tuple[int | None, int | None]) -> None:
        if not self.segment:
            return
        self.segment[-1].place(place)
        column, row = place
        self.opposite = (None if column is None else 2 - column, None if row is None else 2 - row)

    def end_segment(self) -> None:
        if self.segment:
            self.pending.describes(self.segment[-1], leftover=True)
            self.pending = _Pending()
        # With no noun in it ("On the left, a sphere") the segment's words wait for the next one.
        self.segment, self.opposite, self.last_was_noun = [], None, False


def read_scene(prompt: str) -> Scene:
    """The scene a prompt names; ``objects`` is empty when it names no shape."""
    tokens = _TOKEN.findall(prompt.lower()[:4000])  # bounds the work for 32k-character prompts
    tokens, background = _take_background(tokens)
    reader = _Reader()
    reader.read(tokens)
    objects = tuple(SceneObject(**dataclasses.asdict(draft)) for draft in reader.objects)
    return Scene(objects, background)
