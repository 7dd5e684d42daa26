"""The offline provider draws what a simple prompt names: the reader's phrases, the pictures by
their pixels, partial renders for streaming and edits inside a mask."""

from __future__ import annotations

from typing import Any

import pytest

from plugins.local_scene import COLOURS, SHAPES, Scene, SceneObject, named_colours, read_scene

PRODUCT_PROMPT = "A small red cube on a white background."  # the product page's example
RED, GREEN, BLUE, WHITE = COLOURS["red"], COLOURS["green"], COLOURS["blue"], COLOURS["white"]
YELLOW, ORANGE = COLOURS["yellow"], COLOURS["orange"]
LIGHT_BLUE = (157, 185, 246)  # blue, 55% of the way to white



# --- The reader ------------------------------------------------------------------------------


def thing(shape: str, **fields: Any) -> SceneObject:
    return SceneObject(shape, **fields)


@pytest.mark.parametrize(
    ("prompt", "scene"),
    [
        (PRODUCT_PROMPT, Scene((thing("cube", colour=RED, size=0.7),), WHITE)),
        ("three blue circles on a yellow background", Scene((thing("circle", count=3, colour=BLUE),), YELLOW)),
        ("a large green sphere on the left and a small orange star on the right",
         Scene((thing("sphere", colour=GREEN, size=1.3, column=0), thing("star", colour=ORANGE, size=0.7, column=2)))),
        ("On the left, a green sphere; on the right, an orange star.",
         Scene((thing("sphere", colour=GREEN, column=0), thing("star", colour=ORANGE, column=2)))),
        ("a red ball on top of a blue cube",
         Scene((thing("sphere", colour=RED, row=0), thing("cube", colour=BLUE, row=2)))),
        ("a blue cube below a red pyramid",
         Scene((thing("cube", colour=BLUE, row=2), thing("pyramid", colour=RED, row=0)))),
        ("a red cylinder next to a green cone",
         Scene((thing("cylinder", colour=RED, column=0), thing("cone", colour=GREEN, column=2)))),
        ("a red cube to the right of a blue ball",
         Scene((thing("cube", colour=RED, column=2), thing("sphere", colour=BLUE, column=0)))),
        ("5 tiny pink hearts in the top left corner",
         Scene((thing("heart", count=5, colour=COLOURS["pink"], size=0.5, column=0, row=0),))),
        ("a gold star at the top centre", Scene((thing("star", colour=COLOURS["gold"], column=1, row=0),))),
        ("a purple ring in the middle", Scene((thing("ring", colour=COLOURS["purple"], column=1, row=1),))),
        ("two red cubes and a blue ball", Scene((thing("cube", count=2, colour=RED), thing("sphere", colour=BLUE)))),
        ("a pair of huge grey boxes", Scene((thing("cube", count=2, colour=COLOURS["grey"], size=1.55),))),
        ("Triangles.", Scene((thing("triangle", count=3),))),  # a plural with no count: a few
        ("12 dots", Scene((thing("circle", count=10),))),  # at most ten of one thing
        ("a light blue square", Scene((thing("square", colour=LIGHT_BLUE),))),
        ("a dark green cylinder", Scene((thing("cylinder", colour=(20, 96, 36)),))),
        ("a sky blue doughnut", Scene((thing("ring", colour=COLOURS["sky blue"]),))),
        ("a star-shaped badge, star shape", Scene((thing("star"), thing("star")))),
        ("a square box", Scene((thing("cube"),))),  # two nouns in a row name one thing
        ("a cube that is purple", Scene((thing("cube", colour=COLOURS["purple"]),))),
        ("A cube. The cube is teal.", Scene((thing("cube", colour=COLOURS["teal"]),))),
        ("a 3d cube", Scene((thing("cube"),))),  # "3d" is not a count
        ("The background is light blue. A white heart.", Scene((thing("heart", colour=WHITE),), LIGHT_BLUE)),
        ("a black hexagon against a white backdrop", Scene((thing("hexagon", colour=COLOURS["black"]),), WHITE)),
        ("background: navy; an orange crescent", Scene((thing("crescent", colour=ORANGE),), COLOURS["navy"])),
        ("a red cube on a transparent background", Scene((thing("cube", colour=RED),))),
        ("a white background and a red cube", Scene((thing("cube", colour=RED),), WHITE)),
    ],
)
def test_reader(prompt: str, scene: Scene) -> None:
    assert read_scene(prompt) == scene


@pytest.mark.parametrize(
    "prompt",
    ["a cat on a mat", "[local:fail-200]", "A portrait of a woman, oil painting", "", "red and blue",
     "on a white background"],
)
def test_a_prompt_with_no_shape_names_no_objects(prompt: str) -> None:
    assert read_scene(prompt).objects == ()


def test_every_colour_and_shape_in_the_tables_reads() -> None:
    for name, rgb in COLOURS.items():
        assert read_scene(f"a {name} cube").objects[0].colour == rgb, name
    for word, shape in SHAPES.items():
        assert read_scene(f"one {word}").objects[0].shape == shape, word
    for word in ("boxes", "spheres", "crosses", "ellipses", "donuts"):
        assert read_scene(f"two {word}").objects[0].count == 2, word


def test_named_colours_in_order() -> None:
    assert named_colours("make it golden, then light blue") == [COLOURS["golden"], LIGHT_BLUE]
    assert named_colours("a cat") == []


def test_a_long_prompt_is_read_in_bounded_work() -> None:
    scene = read_scene("a red cube and " * 3000)
    assert len(scene.objects) == 8 and all(o.shape == "cube" for o in scene.objects)
