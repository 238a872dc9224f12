"""The ``colour`` latent type (kaleido/latents/colour.py): text round trips, parse errors with positions,
the k-means extractor on known images, adherence on exact cases, the palette strip, and the type through
``kaleido extract``, a shapes data module's tokenizer and generic adherence."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from kaleido.extract import extract
from kaleido.latents import (
    ColourLatent,
    ColourShare,
    LatentParseError,
    build_latent_type,
    implements,
    latent_type_class,
)
from kaleido.latents.colour import (
    STEPS,
    ColourExtractor,
    colour_rgb,
    kmeans_palettes,
    lab_to_rgb,
    max_distance,
    named_colours,
    palette_distance,
    rgb_to_lab,
    round_shares,
)
from kaleido.latents.drawing import PALETTE
from kaleido.metrics.adherence import adherence_readers, latent_adherence
from kaleido.shapes import ShapesConfig, ShapesDataModule, ShapesDataset, ShapesTextLatent, export_shapes
from kaleido.viz import draw_latent

NAMES = tuple(named_colours())
RED, BLUE, WHITE, BLACK, GREEN = (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (1.0, 1.0, 1.0), (-1.0, -1.0, -1.0), (-1.0, 1.0, -1.0)


def image(columns: list[tuple[tuple[float, float, float], int]], height: int = 32) -> torch.Tensor:
    """One [3, H, W] image in [-1, 1] of vertical bands: (colour, width in pixels) from left to right."""
    return torch.cat([torch.tensor(colour)[:, None, None].expand(3, height, width) for colour, width in columns], dim=2)


# -- the text ------------------------------------------------------------------------------------------
@st.composite
def palettes(draw: st.DrawFn) -> tuple[ColourLatent, list[tuple[str, int]]]:
    step = draw(st.sampled_from(STEPS))
    latent = ColourLatent(clusters=draw(st.integers(1, 6)), step=step)
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=min(latent.clusters, 100 // step), unique=True))
    total = 100 // step
    cuts = sorted(draw(st.lists(st.integers(1, max(1, total - 1)), min_size=len(names) - 1, max_size=len(names) - 1, unique=True)))
    units = [b - a for a, b in zip([0, *cuts], [*cuts, total])]
    return latent, [(name, unit * step) for name, unit in zip(names, units)]


@settings(max_examples=150, deadline=None)
@given(case=palettes())
def test_text_round_trips_exactly(case: tuple[ColourLatent, list[tuple[str, int]]]) -> None:
    latent, entries = case
    text = latent.format(entries)
    assert latent.format(latent.parse(text)) == text
    assert latent.parse(text) == latent.canonical(entries)
    # written by hand, not by `format`: the canonical layout is part of the contract
    ordered = sorted(entries, key=lambda e: (-e[1], e[0]))
    assert text == ", ".join(f"{name} {percent}%" for name, percent in ordered)


def test_examples_and_lenient_spacing() -> None:
    colour = ColourLatent()
    assert colour.format([ColourShare("red", 25), ("white", 60), ("blue", 15)]) == "white 60%, red 25%, blue 15%"
    assert colour.format({"blue": 50, "red": 50}) == "blue 50%, red 50%"  # ties: by name
    assert colour.parse("  red 25 % ,white 60%,   blue 15%  ") == [ColourShare("red", 25), ColourShare("white", 60), ColourShare("blue", 15)]
    assert colour.format(colour.parse("red 25%, white 60%, blue 15%")) == "white 60%, red 25%, blue 15%"
    assert colour.parse("gray 100%") == [ColourShare("gray", 100)]


PARSE_ERRORS = [
    ("", 0, "a colour name (black, blue, brown,", "the end"),
    ("navy 100%", 0, "a colour name", "'navy'"),
    ("Red 100%", 0, "a colour name", "'Red'"),
    ("red 45%, navy 55%", 9, "a colour name", "'navy'"),
    ("red %", 4, "the share of red in whole percent", None),
    ("red 42%, blue 58%", 4, "a share in 5..100 percent, a multiple of 5", "'42'"),
    ("red 0%, blue 100%", 4, "a multiple of 5", "'0'"),
    ("red 105%", 4, "a share in 5..100", "'105'"),
    ("red 45.5%, blue 54.5%", 4, "a whole number of percent", None),
    ("red 50, blue 50%", 6, "'%' after the share 50", None),
    ("red 50% blue 50%", 8, "', ' between colours, or the end of the text", None),
    ("red 50%, red 50%", 9, "each colour once (red is already at position 0)", "'red'"),
    ("red 50%,", 8, "a colour name", "the end"),
    ("red 50%,, blue 50%", 8, "a colour name", None),
    ("red 45%, blue 50%", 17, "shares that add up to 100%", "95% in all"),
    ("red 20%, blue 20%, white 20%, black 20%, gray 20%", 41, "the end of the text (at most 4 colours)", None),
    ("red <pad> 100%", 4, "the share of red", None),
]


@pytest.mark.parametrize(("text", "position", "expected", "found"), PARSE_ERRORS)
def test_parse_errors_name_the_position_and_what_is_accepted(text: str, position: int, expected: str, found: str | None) -> None:
    with pytest.raises(LatentParseError) as info:
        ColourLatent().parse(text)
    error = info.value
    assert error.position == position and expected in error.expected, str(error)
    message = str(error).splitlines()
    assert message[0].startswith("colour latent does not parse") and message[2] == "  " + " " * position + "^"
    if found is not None:
        assert f"found {found}" in message[0]


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="redblugaywhitknp 0123456789%,.", max_size=30))
def test_parse_either_succeeds_canonically_or_raises_a_parse_error(text: str) -> None:
    colour = ColourLatent()
    try:
        entries = colour.parse(text)
    except LatentParseError as error:
        assert 0 <= error.position <= len(text)
        return
    assert sum(e.percent for e in entries) == 100 and colour.parse(colour.format(entries)) == colour.canonical(entries)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([("navy", 100)], "expected a colour name"),
        ([("red", 50), ("red", 50)], "named twice"),
        ([("red", 52), ("blue", 48)], "a multiple of 5"),
        ([("red", 50.0), ("blue", 50)], "a multiple of 5"),
        ([("red", True), ("blue", 99)], "a multiple of 5"),
        ([("red", 50), ("blue", 45)], "add up to 100%, got 95%"),
        ([], "1..4 colours"),
        ([("red", 20), ("blue", 20), ("white", 20), ("black", 20), ("gray", 20)], "1..4 colours"),
    ],
)
def test_format_rejects_invalid_palettes(entries: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ColourLatent().format(entries)


@pytest.mark.parametrize(
    "bad", [{"clusters": 0}, {"clusters": 17}, {"step": 3}, {"step": True}, {"iterations": -1}, {"max_pixels": 0}, {"seed": 1.5}]
)
def test_constructor_validates(bad: dict) -> None:
    with pytest.raises(ValueError, match="ColourLatent"):
        ColourLatent(**bad)


def test_registered_by_name_rebuilt_from_its_spec_with_hooks() -> None:
    colour = ColourLatent(clusters=3, step=10)
    assert latent_type_class("colour") is ColourLatent and build_latent_type("colour") == ColourLatent()
    assert build_latent_type(colour.spec()) == colour != ColourLatent()
    assert colour.special_tokens() == [] and colour.geometry_width() == 0
    assert implements(colour, "adherence") and implements(colour, "draw") and not implements(colour, "decode")


# -- colours -----------------------------------------------------------------------------------------
def test_cielab_known_values_and_inverse() -> None:
    lab = rgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(lab[:2], torch.tensor([[100.0, 0, 0], [0, 0, 0]], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(lab[2], torch.tensor([53.24, 80.09, 67.20], dtype=torch.float64), atol=0.01)  # sRGB red, D65
    rgb = torch.rand(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-9)


def test_named_colours_come_from_colour_name() -> None:
    # the twelve words of foreground.colour_name, each representative named by that word again
    from kaleido.latents.foreground import colour_name

    assert NAMES == ("black", "blue", "brown", "cyan", "gray", "green", "orange", "pink", "purple", "red", "white", "yellow")
    assert all(colour_name(colour_rgb(name)) == name for name in NAMES)


def test_round_shares_adds_up_by_largest_remainder() -> None:
    assert round_shares({"red": 0.5, "blue": 0.5}, 5) == {"red": 50, "blue": 50}
    assert round_shares({"red": 0.96, "blue": 0.04}, 5) == {"red": 95, "blue": 5}
    # 17.6 units and four of 0.6: equal remainders go to the larger share, then by name; two 3% drop out
    assert round_shares({"red": 0.88, "blue": 0.03, "gray": 0.03, "cyan": 0.03, "pink": 0.03}, 5) == {"red": 90, "blue": 5, "cyan": 5}
    assert round_shares({"red": 0.99, "blue": 0.01}, 5) == {"red": 100}
    assert round_shares({"red": 1 / 3, "blue": 1 / 3, "gray": 1 / 3}, 1) == {"blue": 34, "gray": 33, "red": 33}


def test_round_shares_ties_are_not_decided_by_float_noise() -> None:
    # 2.4, 17.4 and 0.2 units: blue and gray tie at .4 and the larger share, gray, takes the unit; in floats
    # 20 · 0.12 = 2.4000000000000004 and 20 · 0.87 = 17.4 - 4e-15, which gave it to blue before
    assert round_shares({"red": 0.01, "blue": 0.12, "gray": 0.87}, 5) == {"blue": 10, "gray": 90}
    # against exact rational arithmetic, on every three-colour palette in whole percent, for several steps
    for step in (1, 5, 10, 25):
        units = 100 // step
        for first in range(1, 99):
            for second in range(1, 100 - first):
                percents = {"red": first, "blue": second, "gray": 100 - first - second}
                exact = {n: Fraction(units * p, 100) for n, p in percents.items()}
                want = {n: math.floor(v) for n, v in exact.items()}
                for name in sorted(exact, key=lambda n: (-(exact[n] % 1), -exact[n], n))[: units - sum(want.values())]:
                    want[name] += 1
                got = round_shares({n: p / 100 for n, p in percents.items()}, step)
                assert got == {n: c * step for n, c in want.items() if c}, (step, percents)


@pytest.mark.parametrize("shares", [{"red": -0.1, "blue": 1.1}, {"red": float("nan"), "blue": 1.0}, {"red": 0.0}, {}])
def test_round_shares_rejects_negative_or_empty_weights(shares: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="palette"):
        round_shares(shares, 5)


# -- the extractor -----------------------------------------------------------------------------------
def test_half_red_half_blue_gives_two_clusters_of_half() -> None:
    colour = ColourLatent()
    images = torch.stack([image([(RED, 16), (BLUE, 16)]), image([(WHITE, 24), (RED, 8)]), image([(GREEN, 32)])])
    found = colour.build_extractor()(images, ["", "", ""])
    assert [colour.format(f) for f in found] == ["blue 50%, red 50%", "white 75%, red 25%", "green 100%"]


def test_kmeans_centres_are_the_colours_and_shares_exact() -> None:
    images = torch.stack([image([(RED, 8), (BLUE, 8), (WHITE, 16)])])
    centres, shares = kmeans_palettes(images, clusters=3, iterations=5, seed=0, max_pixels=4096)
    want = rgb_to_lab(torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]]))
    order = [int(((centres[0] - w) ** 2).sum(-1).argmin()) for w in want]
    assert sorted(order) == [0, 1, 2]
    assert torch.allclose(centres[0, order], want, atol=1e-3) and torch.allclose(shares[0, order], torch.tensor([0.25, 0.25, 0.5]))
    # fewer colours than clusters: the spare centres duplicate one and get share 0
    _, shares = kmeans_palettes(image([(RED, 32)])[None], clusters=4, iterations=3, seed=0, max_pixels=4096)
    assert sorted(shares[0].tolist()) == [0.0, 0.0, 0.0, 1.0]


def test_palettes_do_not_depend_on_the_batch_and_large_images_are_subsampled() -> None:
    renders = torch.stack([ShapesDataset(12, ShapesConfig(resolution=32, max_objects=3))[i]["image"] for i in range(12)])
    extractor = ColourExtractor().to("cpu")
    together = extractor(renders, [""] * 12)
    assert together == [extractor(renders[i : i + 1], [""])[0] for i in range(12)]
    assert extractor(renders.flip(0), [""] * 12) == together[::-1]
    big = image([(RED, 64), (BLUE, 64)], height=128)[None]  # 16,384 pixels read on every 4th row and column
    assert ColourLatent(max_pixels=1024).build_extractor()(big, [""])[0] == [ColourShare("blue", 50), ColourShare("red", 50)]


def test_the_extractor_ignores_a_bf16_autocast_around_it() -> None:
    # LogSamples and `adherence` may read samples inside an autocast region: the k-means stays float32
    renders = torch.stack([ShapesDataset(8, ShapesConfig(resolution=32, max_objects=3))[i]["image"] for i in range(8)])
    extractor = ColourExtractor()
    want = kmeans_palettes(renders, 4, 10, 0, 4096)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = kmeans_palettes(renders, 4, 10, 0, 4096)
        found = extractor(renders, [""] * 8)
        lab = rgb_to_lab(torch.ones(1, 3))
    assert all(g.dtype == torch.float32 and torch.equal(g, w) for g, w in zip(got, want))
    assert found == extractor(renders, [""] * 8) and lab.dtype == torch.float32


def test_shapes_renders_read_as_their_background_and_colours() -> None:
    shapes = ShapesDataset(24, ShapesConfig(resolution=32, max_objects=1))
    images = torch.stack([shapes[i]["image"] for i in range(24)])
    for index, found in enumerate(ColourLatent().build_extractor()(images, [""] * 24)):
        scene = shapes.scene(index)
        names = [e.name for e in found]
        assert names[0] == scene.background and scene.objects[0].color in names, (scene, found)  # background kept, largest


# -- adherence -----------------------------------------------------------------------------------------
def test_adherence_on_exact_cases() -> None:
    colour = ColourLatent()
    same = colour.parse("white 60%, red 25%, blue 15%")
    assert colour.adherence(same, list(reversed(same))) == {"palette": 1.0, "colours": 1.0, "exact": 1.0}
    opposite = colour.adherence(colour.parse("green 100%"), colour.parse("purple 100%"))  # the widest gap of the table
    assert opposite == {"palette": 0.0, "colours": 0.0, "exact": 0.0}
    far = colour.adherence(colour.parse("black 90%, yellow 10%"), colour.parse("white 85%, blue 15%"))
    assert far["palette"] < 0.6 and far["colours"] == 0.0 and far["exact"] == 0.0  # well under the bar of 0.9
    near = colour.adherence(colour.parse("white 90%, red 10%"), colour.parse("white 85%, red 15%"))
    assert near["colours"] == 0.95 and near["exact"] == 0.0 and near["palette"] > 0.9


def test_palette_distance_is_the_earth_movers() -> None:
    table = named_colours()

    def delta(a: str, b: str) -> float:
        return float(sum((x - y) ** 2 for x, y in zip(table[a], table[b])) ** 0.5)

    assert palette_distance({"red": 50, "blue": 50}, {"red": 50, "white": 50}) == pytest.approx(0.5 * delta("blue", "white"))
    # moving 30% from red to orange and 20% from blue to cyan: each unit takes its cheapest partner
    cost = palette_distance({"red": 50, "blue": 50}, {"red": 20, "orange": 30, "blue": 30, "cyan": 20})
    assert cost == pytest.approx(0.3 * delta("red", "orange") + 0.2 * delta("blue", "cyan"))
    assert palette_distance({"gray": 100}, {"black": 40, "white": 60}) == pytest.approx(0.4 * delta("gray", "black") + 0.6 * delta("gray", "white"))
    assert max_distance() == pytest.approx(delta("green", "purple"))
    with pytest.raises(ValueError, match="add up to 100%"):
        palette_distance({"red": 50}, {"red": 100})


def test_generic_adherence_reads_samples_with_the_types_extractor() -> None:
    colour = ColourLatent()
    readers = adherence_readers([colour], data=None)
    images = torch.stack([image([(RED, 16), (BLUE, 16)]), image([(WHITE, 32)])])
    scores = latent_adherence(images, ["blue 50%, red 50%", "black 100%"], [colour], readers.extractors, ["", ""])["colour"]
    assert scores.scores["exact"] == 0.5 and scores.scores["colours"] == 0.5 and scores.unparsed == 0.0


# -- drawing -------------------------------------------------------------------------------------------
def test_palette_strip_is_drawn_under_the_image() -> None:
    colour = ColourLatent()
    picture = Image.new("RGB", (64, 48), (10, 200, 10))
    drawn = draw_latent(picture, colour, "white 50%, red 25%, blue 25%")  # viz calls the hook on a copy
    assert drawn.size == (64, 48) and picture.getpixel((0, 47)) == (10, 200, 10)
    strip = 48 - round(48 / 8)
    assert [drawn.getpixel((x, 47)) for x in (0, 31, 32, 47, 48, 63)] == [colour_rgb(n) for n in ("white", "white", "blue", "blue", "red", "red")]  # canonical order
    assert drawn.getpixel((5, strip)) == colour_rgb("white") and drawn.getpixel((5, strip - 1)) == PALETTE[0]
    assert drawn.getpixel((5, strip - 2)) == (10, 200, 10)  # the image above the strip is untouched
    tiny = Image.new("RGB", (8, 8))
    colour.draw(tiny, [("gray", 100)])
    assert tiny.getpixel((0, 7)) == tiny.getpixel((7, 6)) == colour_rgb("gray") and tiny.getpixel((0, 5)) == PALETTE[0]


# -- end to end ----------------------------------------------------------------------------------------
def test_extract_writes_a_colour_sidecar(tmp_path: Path) -> None:
    shapes = ShapesConfig(resolution=32, max_objects=2)
    folder = export_shapes(tmp_path / "images", 6, shapes)
    path = extract("colour", folder=folder, batch_size=4, progress=False)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert path == folder / "latents/colour.jsonl" and len(records) == 6
    colour = ColourLatent()
    for index, record in enumerate(records):
        assert colour.format(colour.parse(record["latent"])) == record["latent"]
        assert colour.parse(record["latent"])[0].name == ShapesDataset(6, shapes).scene(index).background


def test_shapes_data_module_extracts_and_tokenises_colour_latents() -> None:
    data = ShapesDataModule(latents=[ShapesTextLatent(), "colour"], shapes=ShapesConfig(resolution=16, max_objects=1), num_train=16,
                            num_val=4, num_test=4, batch_size=4, extract_device="cpu")  # fmt: skip
    texts = [latents for _, latents in data.texts()]
    assert all(ColourLatent().parse(t["colour"]) for t in texts)
    tokenizer = data.tokenizer
    ids = tokenizer.latent_batch(texts[:2])["latent_ids"]
    assert [tokenizer.decode_latent_texts(row.tolist())["colour"] for row in ids] == [t["colour"] for t in texts[:2]]
