"""The offline provider draws what a simple prompt names: the reader's phrases, the pictures by
their pixels, partial renders for streaming and edits inside a mask."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
from typing import Any, Callable

import PIL
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from plugins import local
from plugins.local_paint import PAINTERS, apply_edit, paint, partial
from plugins.local_scene import COLOURS, SHAPES, Scene, SceneObject, named_colours, read_scene
from tests.conftest import AUTH, key_hash

PRODUCT_PROMPT = "A small red cube on a white background."  # the product page's example
RED, GREEN, BLUE, WHITE = COLOURS["red"], COLOURS["green"], COLOURS["blue"], COLOURS["white"]
YELLOW, ORANGE = COLOURS["yellow"], COLOURS["orange"]
LIGHT_BLUE = (157, 185, 246)  # blue, 55% of the way to white

Pixel = tuple[int, ...]


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


# --- Pixels ------------------------------------------------------------------------------------


def is_red(p: Pixel) -> bool:
    return p[0] > 120 and p[0] > 1.6 * p[1] and p[0] > 1.6 * p[2]


def is_blue(p: Pixel) -> bool:
    return p[2] > 150 and p[2] > 1.5 * p[0] and p[2] > 1.3 * p[1]


def is_green(p: Pixel) -> bool:
    return p[1] > 80 and p[1] > 1.3 * p[0] and p[1] > 1.3 * p[2]


def is_orange(p: Pixel) -> bool:
    return p[0] > 200 and 70 < p[1] < 170 and p[2] < 80


def where(image: Image.Image, test: Callable[[Pixel], bool]) -> Image.Image:
    """255 where a pixel passes ``test``, else 0 (tested once for each distinct colour)."""
    rgb = image.convert("RGB")
    colours = rgb.getcolors(rgb.width * rgb.height) or []
    passing = {colour for _, colour in colours if test(colour)}
    data = rgb.tobytes()
    pixels = zip(data[0::3], data[1::3], data[2::3])
    return Image.frombytes("L", rgb.size, bytes(255 if p in passing else 0 for p in pixels))


def blobs(mask: Image.Image, min_area: int = 500) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Connected regions of a 0/255 mask, largest first: (area, bounding box)."""
    mask, found = mask.copy(), []
    while (box := mask.point(lambda v: 255 if v == 255 else 0).getbbox()) is not None:
        seed = next((x, box[1]) for x in range(box[0], box[2]) if mask.getpixel((x, box[1])) == 255)
        ImageDraw.floodfill(mask, seed, 128)
        region = mask.point(lambda v: 255 if v == 128 else 0)
        area = region.histogram()[255]
        if area >= min_area:
            found.append((area, region.getbbox()))
        mask.paste(0, mask=region)
    return sorted(found, reverse=True)


def centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def assert_red_cube_on_white(image: Image.Image) -> None:
    width, height = image.size
    corners = [(0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1)]
    assert [image.getpixel(xy) for xy in corners] == [(255, 255, 255)] * 4
    [(area, box), *others] = blobs(where(image, is_red))
    assert not others  # one red thing
    assert 0.1 < area / (width * height) < 0.4  # plainly visible, not the whole picture
    cx, cy = centre(box)
    assert abs(cx - width / 2) < width * 0.05 and abs(cy - height / 2) < height * 0.05
    # Three faces: three colours cover the red region almost entirely, each a distinct red.
    cube = image.crop(box)
    counts = sorted((c for c in cube.getcolors(cube.width * cube.height) or [] if is_red(c[1])), reverse=True)
    faces = [colour for _, colour in counts[:3]]
    assert sum(n for n, _ in counts[:3]) > 0.95 * area
    assert all(n > 0.2 * area for n, _ in counts[:3])
    brightness = sorted(sum(colour) for colour in faces)
    assert brightness[1] - brightness[0] > 60 and brightness[2] - brightness[1] > 60


def test_the_product_prompt_is_a_red_cube_on_white() -> None:
    assert_red_cube_on_white(paint(read_scene(PRODUCT_PROMPT), 1024, 1024))


async def test_the_product_page_request_through_the_offline_gateway(aiohttp_client: Any) -> None:
    from gateway.app import create_app
    from gateway.config_load import parse_config

    config = parse_config(f"""
keys:
  - name: test
    hash: "{key_hash(AUTH['Authorization'].removeprefix('Bearer '))}"
providers:
  - id: local
    plugin: local
""", env={})
    client = await aiohttp_client(create_app(config))
    request = {"model": "openai/gpt-image-2", "prompt": PRODUCT_PROMPT, "size": "1024x1024", "quality": "medium"}
    resp = await client.post("/v1/images/generations", json=request, headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert (image.format, image.mode) == ("PNG", "RGB")
    assert_red_cube_on_white(image)


def test_three_blue_circles_on_yellow() -> None:
    image = paint(read_scene("three blue circles on a yellow background"), 1024, 768)
    assert image.getpixel((0, 0)) == YELLOW and image.getpixel((1023, 767)) == YELLOW
    found = blobs(where(image, is_blue))
    assert len(found) == 3
    areas = [area for area, _ in found]
    assert max(areas) < 1.05 * min(areas)  # three of the same circle


def test_places_and_sizes() -> None:
    image = paint(read_scene("a large green sphere on the left and a small orange star on the right"), 1536, 1024)
    [(sphere_area, sphere)] = blobs(where(image, is_green))
    [(star_area, star)] = blobs(where(image, is_orange))
    assert centre(sphere)[0] < 1536 / 2 < centre(star)[0]
    assert sphere_area > 4 * star_area
    stacked = paint(read_scene("a red ball on top of a blue cube"), 512, 512)
    [(_, ball)], [(_, cube)] = blobs(where(stacked, is_red)), blobs(where(stacked, is_blue))
    assert ball[3] <= cube[1] + 5  # the ball's bottom is above the cube's top
    assert image.getpixel((0, 0)) == (241, 241, 236)  # no background named: a light neutral


def test_unplaced_objects_take_the_free_places() -> None:
    image = paint(read_scene("a red cube on the left and a blue circle"), 1024, 512)
    [(_, cube)], [(_, circle)] = blobs(where(image, is_red)), blobs(where(image, is_blue))
    assert cube[2] < circle[0]  # side by side, no overlap


@pytest.mark.parametrize("shape", sorted(set(SHAPES.values())))
def test_every_shape_draws_a_centred_red_thing(shape: str) -> None:
    image = paint(Scene((SceneObject(shape, colour=RED),), WHITE), 400, 400)
    found = blobs(where(image, is_red), min_area=100)
    assert found, shape
    area, box = found[0]
    assert area > 0.08 * 400 * 400, shape
    assert abs(centre(box)[0] - 200) < 30 and abs(centre(box)[1] - 200) < 40, shape


def test_every_shape_has_a_painter() -> None:
    assert set(PAINTERS) == set(SHAPES.values())


def test_a_white_circle_on_white_is_still_visible() -> None:
    image = paint(read_scene("a white circle on a white background"), 256, 256)
    assert image.getpixel((128, 128)) != (255, 255, 255) and image.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 3), (64, 4000), (3840, 2160)])
def test_any_size_draws(width: int, height: int) -> None:
    image = paint(read_scene("two red cubes, a blue ring and a green cone"), width, height)
    assert image.size == (width, height) and image.mode == "RGB"


def test_transparent_background() -> None:
    image = paint(read_scene(PRODUCT_PROMPT), 512, 512, transparent=True)
    assert image.mode == "RGBA"
    alpha = image.getchannel("A")
    assert alpha.getpixel((0, 0)) == 0 and alpha.getpixel((256, 256)) == 255
    assert is_red(image.getpixel((256, 256)))
    assert alpha.point(lambda a: 255 if 0 < a < 255 else 0).histogram()[255] < 0.02 * 512 * 512  # edges only


def test_same_prompt_same_pixels_and_the_index_nudges() -> None:
    scene = read_scene("three blue circles and a red cube")
    first, again = paint(scene, 512, 512), paint(scene, 512, 512)
    assert first.tobytes() == again.tobytes()
    siblings = [paint(scene, 512, 512, index=i).tobytes() for i in range(10)]
    assert len(set(siblings)) == 10 and siblings[0] == first.tobytes()
    local._render.cache_clear()
    raw = local._render(PRODUCT_PROMPT, 256, 256, "png", False, 100, 1)
    local._render.cache_clear()
    assert local._render(PRODUCT_PROMPT, 256, 256, "png", False, 100, 1) == raw


# The abstract picture's pixels before this change (commit a1751be), decoded from the PNG. They
# depend on Pillow's font rasteriser: recorded with Pillow 13.0.0.
FALLBACK_PIXELS = [
    (("a cat on a mat", 1024, 1024, False, 0), "407e05eea2009094035a0e7f4409e5c8727a0ca10fdfa71de3f126abc97e4a45"),
    (("a cat on a mat", 1024, 1024, False, 2), "5bdfe4dc583e32a6a050cd83aba821e85fd06ea618de5ce343da146c5f52f0d4"),
    (("Ein Hund im Park, abends", 1536, 1024, True, 0),
     "780026f219cb504d1b37a86f5b37d58ac6028542bd8a9d3363bd85dfd00c4dc0"),
    (("[local:fail-200]", 256, 384, False, 1), "15e9433f5270dae68608d9425730e98121d32383319ace09413225b30bf75060"),
]


@pytest.mark.skipif(PIL.__version__.split(".")[0] != "13", reason="pixel digests recorded with Pillow 13")
@pytest.mark.parametrize(("args", "digest"), FALLBACK_PIXELS)
def test_a_prompt_with_no_shape_renders_as_before(args: tuple[str, int, int, bool, int], digest: str) -> None:
    prompt, width, height, transparent, index = args
    local._render.cache_clear()
    image = Image.open(io.BytesIO(local._render(prompt, width, height, "png", transparent, 100, index)))
    assert hashlib.sha256(image.tobytes()).hexdigest() == digest


def test_importing_the_provider_does_not_import_pillow() -> None:
    # Every plugin module is imported at start-up; only a render needs Pillow.
    code = "import sys, plugins.local; assert not any(m == 'PIL' or m.startswith('PIL.') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- Partial renders ---------------------------------------------------------------------------


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """As seen on white: a fully transparent pixel's colour does not count."""
    white = Image.new("RGBA", a.size, (255, 255, 255, 255))
    a, b = (Image.alpha_composite(white, i.convert("RGBA")).convert("RGB") for i in (a, b))
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean)


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("transparent", [False, True])
def test_partial_renders_sharpen(steps: int, transparent: bool) -> None:
    final = paint(read_scene("a large green sphere on the left and a small orange star on the right"),
                  768, 512, transparent=transparent)
    partials = [partial(final, step, steps) for step in range(steps)]
    assert all(p.size == final.size and p.mode == final.mode for p in partials)
    differences = [mean_difference(p, final) for p in partials]
    assert differences == sorted(differences, reverse=True) and len(set(differences)) == steps
    assert differences[-1] > 0  # even the last partial is not yet the picture
    assert [p.tobytes() for p in partials] == [partial(final, s, steps).tobytes() for s in range(steps)]


def test_partial_rejects_a_step_out_of_range() -> None:
    with pytest.raises(ValueError):
        partial(Image.new("RGB", (8, 8)), 3, 3)


# --- Edits -------------------------------------------------------------------------------------


def photo(size: tuple[int, int] = (512, 384), mode: str = "RGB") -> Image.Image:
    """A picture with no flat areas, so any change shows."""
    gradient = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT), gradient)).convert(mode)


def hole(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """An OpenAI edit mask: opaque everywhere, fully transparent (editable) inside box."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), box)
    return mask


def changed(a: Image.Image, b: Image.Image) -> Image.Image:
    """255 where any channel differs."""
    return ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v else 0)


@pytest.mark.parametrize("prompt", ["add a red cube", "make it golden", "something nice", "on a blue background"])
def test_an_edit_changes_only_the_masked_pixels(prompt: str) -> None:
    image, box = photo(), (200, 100, 440, 330)
    edited = apply_edit(image, hole(image.size, box), prompt)
    assert edited.size == image.size and edited.mode == "RGB"
    difference = changed(image, edited)
    inside = difference.crop(box).histogram()[255]
    assert difference.getbbox() is not None
    bbox = difference.getbbox()
    assert bbox is not None and box[0] <= bbox[0] and box[1] <= bbox[1] and bbox[2] <= box[2] and bbox[3] <= box[3]
    assert inside > 0.1 * (box[2] - box[0]) * (box[3] - box[1])
    assert apply_edit(image, hole(image.size, box), prompt).tobytes() == edited.tobytes()


def test_an_edit_draws_the_named_shape_in_the_hole() -> None:
    image, box = photo(), (256, 0, 512, 384)
    edited = apply_edit(image, hole(image.size, box), "a red cube on a white background")
    assert edited.crop((0, 0, 256, 384)).tobytes() == image.crop((0, 0, 256, 384)).tobytes()
    [(_, cube)] = blobs(where(edited, is_red))
    assert abs(centre(cube)[0] - 384) < 20 and edited.getpixel((260, 4)) == (255, 255, 255)


def test_an_edit_without_a_mask_edits_the_whole_image() -> None:
    image = photo()
    edited = apply_edit(image, None, "a blue star")
    assert blobs(where(edited, is_blue))
    assert changed(image, edited).histogram()[255] > 0.05 * image.width * image.height


def test_an_opaque_mask_leaves_the_image_as_it_was() -> None:
    image = photo()
    assert apply_edit(image, Image.new("RGBA", image.size, (0, 0, 0, 255)), "a red cube").tobytes() == image.tobytes()


def test_a_half_transparent_mask_pixel_is_not_editable() -> None:
    # Only fully transparent pixels mark the edit.
    image = photo()
    assert apply_edit(image, Image.new("RGBA", image.size, (0, 0, 0, 1)), "a red cube").tobytes() == image.tobytes()


def test_an_image_with_alpha_keeps_it_outside_the_mask() -> None:
    image = photo(mode="RGBA")
    image.putalpha(Image.new("L", image.size, 0))  # fully transparent picture
    box = (0, 0, 256, 384)
    edited = apply_edit(image, hole(image.size, box), "make it pink")
    assert edited.mode == "RGBA"
    assert edited.getchannel("A").getpixel((10, 10)) == 255 and edited.getchannel("A").getpixel((400, 10)) == 0
    assert edited.crop((256, 0, 512, 384)).tobytes() == image.crop((256, 0, 512, 384)).tobytes()


def test_a_palette_mask_with_transparency_works() -> None:
    image, box = photo(), (0, 0, 100, 100)
    # As a PNG with a palette and a tRNS chunk decodes: colour 0 is fully transparent.
    mask = Image.new("P", image.size, 1)
    mask.putpalette([0, 0, 0, 0, 0, 0])
    mask.paste(0, box)
    mask.info["transparency"] = 0
    difference = changed(image, apply_edit(image, mask, "make it pink"))
    assert difference.getbbox() == box


@pytest.mark.parametrize(
    ("mask", "message"),
    [(Image.new("RGBA", (10, 10)), "The mask is 10x10, the image 512x384."),
     (Image.new("RGB", (512, 384)), "The mask has no alpha channel.")],
)
def test_a_mask_the_caller_should_have_refused(mask: Image.Image, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_edit(photo(), mask, "a red cube")
