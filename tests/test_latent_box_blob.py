"""The ``box`` and ``blob`` latent types: text round trips, parse errors, tokenizer, geometry, and the
``shapes`` data set's analytic extractors and ground truth for them (kaleido.shapes.latents)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kaleido.latents import LatentEncoder, LatentParseError, build_latent_type, latent_type_class
from kaleido.latents.blob import BlobLatent, GroundedBlob
from kaleido.latents.box import BoxLatent, GroundedBox, box_iou
from kaleido.latents.geometry import clean_phrase, phrase_problem
from kaleido.latents.masks import ellipse_from_mask
from kaleido.shapes import ShapesConfig, ShapesDataset, ground_truth, shapes_extractor
from kaleido.shapes.latents import ParsedObjectsExtractor, blob_extractor, box_extractor, scene_blobs, scene_boxes
from kaleido.tokenizer import KaleidoTokenizer

GRIDS = st.sampled_from([1, 32, 100, 1000])
WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-'.,:!?é漢", min_size=1, max_size=8)
PHRASE = st.lists(WORD, min_size=1, max_size=3).map(" ".join)
# Anything printable is a phrase unless it holds a structural character or a reserved token.
ANY_PHRASE = st.text(min_size=1, max_size=12).filter(lambda p: phrase_problem(p) is None)


@st.composite
def boxes(draw: st.DrawFn, grid: int, phrases: st.SearchStrategy[str] = PHRASE) -> GroundedBox:
    xs = sorted(draw(st.lists(st.integers(0, grid), min_size=2, max_size=2)))
    ys = sorted(draw(st.lists(st.integers(0, grid), min_size=2, max_size=2)))
    return GroundedBox(draw(phrases), (xs[0], ys[0], xs[1], ys[1]))


@st.composite
def blobs(draw: st.DrawFn, grid: int, phrases: st.SearchStrategy[str] = PHRASE) -> GroundedBlob:
    a, b = sorted(draw(st.lists(st.integers(0, grid), min_size=2, max_size=2)), reverse=True)
    centre = draw(st.tuples(st.integers(0, grid), st.integers(0, grid)))
    return GroundedBlob(draw(phrases), (*centre, a, b, draw(st.integers(0, 179))))


@st.composite
def latents(draw: st.DrawFn, kind: str, phrases: st.SearchStrategy[str] = PHRASE) -> tuple[BoxLatent | BlobLatent, list]:
    grid, max_objects = draw(GRIDS), draw(st.integers(1, 6))
    order = draw(st.sampled_from(["given", "raster"]))
    latent = (BoxLatent if kind == "box" else BlobLatent)(grid=grid, max_objects=max_objects, order=order)
    make = boxes if kind == "box" else blobs
    return latent, draw(st.lists(make(grid, phrases), max_size=max_objects))


# -- round trips -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["box", "blob"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_parse_inverts_format(kind: str, data: st.DataObject) -> None:
    latent, objects = data.draw(latents(kind, st.one_of(PHRASE, ANY_PHRASE)))
    text = latent.format(objects)
    assert latent.parse(text) == latent.canonical(objects)
    assert latent.format(latent.parse(text)) == text
    if latent.order == "given":
        assert latent.canonical(objects) == objects
    else:
        assert sorted(objects, key=latent.sort_key) == latent.canonical(objects)


@pytest.mark.parametrize("kind", ["box", "blob"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_format_inverts_parse_on_canonical_text(kind: str, data: st.DataObject) -> None:
    latent, objects = data.draw(latents(kind))
    ordered = latent.canonical(objects)
    # Written by hand, not by `format`: the canonical layout is part of the contract.
    numbers = [o.box if kind == "box" else o.ellipse for o in ordered]
    text = "; ".join(f"{o.phrase} ({', '.join(map(str, n))})" for o, n in zip(ordered, numbers))
    assert latent.format(latent.parse(text)) == text
    assert latent.parse(text) == ordered


def test_examples_read_as_in_the_paper() -> None:
    box = BoxLatent()
    text = "red circle (120, 400, 300, 580); blue square (610, 90, 880, 360)"
    assert box.format(box.parse(text)) == "blue square (610, 90, 880, 360); red circle (120, 400, 300, 580)"
    assert BoxLatent(order="given").format(box.parse(text)) == text
    assert box.parse("  red circle(120 ,400,300,  580) ;blue square (1, 2, 3, 4)  ") == [
        GroundedBox("red circle", (120, 400, 300, 580)), GroundedBox("blue square", (1, 2, 3, 4))]
    assert box.parse("") == [] and box.parse("   ") == [] and box.format([]) == ""
    blob = BlobLatent()
    assert blob.parse("blue bar (745, 225, 180, 40, 135)") == [GroundedBlob("blue bar", (745, 225, 180, 40, 135))]


def test_format_quantises_reals_and_accepts_pairs() -> None:
    box = BoxLatent(grid=100)
    assert box.format([("a thing", [1.4, 2.5, 3.49, np.float32(4.6)])]) == "a thing (1, 3, 3, 5)"
    assert box.format([("a", (np.int64(1), 2, 3, 4))]) == "a (1, 2, 3, 4)"


@pytest.mark.parametrize(
    ("latent", "objects", "message"),
    [
        (BoxLatent(max_objects=1), [("a", (0, 0, 1, 1))] * 2, "at most 1 objects"),
        (BoxLatent(), [("", (0, 0, 1, 1))], "non-empty phrase"),
        (BoxLatent(), [("a (b)", (0, 0, 1, 1))], "without '\\('"),
        (BoxLatent(), [("a", (0, 0, 1001, 1))], "x2 in 0..1000"),
        (BoxLatent(), [("a", (5, 0, 1, 1))], "x2 >= x1"),
        (BoxLatent(), [("a", (0, 0, 1))], "4 numbers"),
        (BlobLatent(), [("a", (0, 0, 1, 2, 0))], "b <= a"),
        (BlobLatent(), [("a", (0, 0, 2, 1, 180))], "theta in 0..179"),
        (BlobLatent(), [("a", (0, 0, 2, 1, math.nan))], "finite"),
    ],
)
def test_format_rejects_invalid_objects(latent: BoxLatent | BlobLatent, objects: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        latent.format(objects)


# -- parse errors name the position --------------------------------------------------------------
BOX_ERRORS = [
    ("red circle (120, 400, 300, 580", 30, "')'"),  # unclosed
    ("red circle (120, 400, 300 580)", 26, "','"),  # missing comma
    ("(120, 400, 300, 580)", 0, "a phrase"),  # empty phrase
    ("red circle 120, 400, 300, 580", 29, "'('"),  # no parenthesis at all
    ("red circle (120, 400, 1200, 580)", 22, "x2 in 0..1000"),  # out of range
    ("red circle (300, 400, 120, 580)", 22, "x2 >= x1"),  # x2 < x1
    ("red circle (120, 580, 300, 400)", 27, "y2 >= y1"),  # y2 < y1
    ("a (1, 2, 3, 4); b (1, 2, 3, 4); c (1, 2, 3, 4)", 32, "at most 2 objects"),  # too many
    ("red circle (1.5, 400, 300, 580)", 12, "whole number"),  # not an integer
    ("red circle (-1, 400, 300, 580)", 12, "an integer x1"),  # negative
    ("red circle (1, 2, 3, 4, 5)", 22, "')'"),  # one number too many
    ("red circle (1, 2, 3, 4) blue (1, 2, 3, 4)", 24, "';'"),  # missing separator
    ("red circle (1, 2, 3, 4);", 24, "a phrase"),  # trailing separator
    ("red\tcircle (1, 2, 3, 4)", 3, "printable"),  # tab in the phrase
    ("red <pad> (1, 2, 3, 4)", 4, "special tokens are reserved"),
    ("red (1, 2, " + "9" * 5000 + ", 4)", 11, "at most 12 digits"),  # huge number: still a parse error
]
BLOB_ERRORS = [
    ("red circle (500, 500, 90, 90, 0", 31, "')'"),
    ("red circle (500, 500 90, 90, 0)", 21, "','"),
    ("  (500, 500, 90, 90, 0)", 2, "a phrase"),
    ("red circle (500, 500, 90, 120, 0)", 26, "b <= a"),
    ("red circle (500, 500, 90, 60, 180)", 30, "theta in 0..179"),
    ("red circle (500, 1001, 90, 60, 10)", 17, "cy in 0..1000"),
    ("red circle (500, 500, 90, 60)", 28, "','"),  # theta missing
    ("red circle (500, 500, 90, 60, 12.5)", 30, "whole number"),
    ("a (1, 1, 1, 1, 0) b", 18, "';'"),
    ("a (1, 1, 1, 1, 0); b (1, 1, 1, 1, 0); c (1, 1, 1, 1, 0)", 38, "at most 2 objects"),
]


@pytest.mark.parametrize(("latent", "text", "position", "expected"),
                         [(BoxLatent(max_objects=2), *case) for case in BOX_ERRORS]
                         + [(BlobLatent(max_objects=2), *case) for case in BLOB_ERRORS])
def test_bad_text_names_position_and_expectation(latent: BoxLatent | BlobLatent, text: str, position: int, expected: str) -> None:
    with pytest.raises(LatentParseError) as caught:
        latent.parse(text)
    error = caught.value
    assert error.position == position and error.latent_type == latent.name
    assert f"at position {position}" in str(error) and expected in error.expected


@pytest.mark.parametrize("kind", ["box", "blob"])
@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="ab (),;0123456789. ", max_size=40))
def test_parse_either_succeeds_canonically_or_raises_a_parse_error(kind: str, text: str) -> None:
    latent = BoxLatent() if kind == "box" else BlobLatent()
    try:
        objects = latent.parse(text)
    except LatentParseError as error:
        assert 0 <= error.position <= len(text)
        return
    assert latent.parse(latent.format(objects)) == latent.canonical(objects)


# -- the shared tokenizer ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes_texts() -> list[tuple[str, str, str]]:
    data = ShapesDataset(200, ShapesConfig(resolution=32))
    box, blob = BoxLatent(), BlobLatent()
    return [(f"a {s.objects[0].shape}", box.format(scene_boxes(s, box)), blob.format(scene_blobs(s, blob)))
            for s in (data.scene(i) for i in range(len(data)))]


@pytest.fixture(scope="module")
def tokenizer(shapes_texts: list[tuple[str, str, str]]) -> KaleidoTokenizer:
    corpus = [text for triple in shapes_texts for text in triple]
    return KaleidoTokenizer.train(corpus, [BoxLatent(), BlobLatent()], vocab_size=500, max_latent_length=512)


def test_types_add_no_special_tokens_and_have_tags(tokenizer: KaleidoTokenizer) -> None:
    assert BoxLatent().special_tokens() == [] and BlobLatent().special_tokens() == []
    assert set(tokenizer.tag_ids) == {"box", "blob"}


def test_shapes_latents_round_trip_through_the_tokenizer(tokenizer: KaleidoTokenizer, shapes_texts: list) -> None:
    for _, box_text, blob_text in shapes_texts[:50]:
        texts = {"box": box_text, "blob": blob_text}
        assert tokenizer.decode_latent_texts(tokenizer.encode_latent_texts(texts)) == texts


@settings(max_examples=80, deadline=None)
@given(box_case=latents("box", st.one_of(PHRASE, ANY_PHRASE)), blob_case=latents("blob", st.one_of(PHRASE, ANY_PHRASE)))
def test_any_latent_round_trips_through_the_tokenizer(tokenizer: KaleidoTokenizer, box_case: tuple, blob_case: tuple) -> None:
    texts = {"box": box_case[0].format(box_case[1]), "blob": blob_case[0].format(blob_case[1])}
    ids = tokenizer.encode_latent_texts(texts)
    assert tokenizer.decode_latent_texts(ids) == texts


def test_single_type_tokenizer(shapes_texts: list) -> None:
    tok = KaleidoTokenizer.train([t for c, t, _ in shapes_texts] + [c for c, _, _ in shapes_texts], [BoxLatent()], vocab_size=400)
    text = "red circle (120, 400, 300, 580); blue square (610, 90, 880, 360)"
    assert tok.decode_latent_texts(tok.encode_latent_texts({"box": text})) == {"box": text}
    assert tok.split_latent_text(text) == {"box": BoxLatent().format(BoxLatent().parse(text))}


# -- identity, registry, encoder -----------------------------------------------------------------------
@pytest.mark.parametrize("cls", [BoxLatent, BlobLatent])
def test_init_args_rebuild_the_type(cls: type) -> None:
    latent = cls(grid=64, max_objects=3, order="given")
    assert latent.init_args() == {"grid": 64, "max_objects": 3, "order": "given", "fourier_frequencies": 0}
    assert build_latent_type(latent.spec()) == latent and build_latent_type(cls.name) == cls()
    assert latent_type_class(cls.name) is cls


@pytest.mark.parametrize("bad", [{"grid": 0}, {"grid": 10.0}, {"max_objects": 0}, {"order": "size"}])
def test_constructor_validates(bad: dict) -> None:
    with pytest.raises(ValueError):
        BoxLatent(**bad)


def test_encoder_is_the_decoder_hidden_states() -> None:
    encoder = BoxLatent().build_encoder(8)
    hidden = torch.randn(2, 5, 8)
    assert isinstance(encoder, LatentEncoder)
    assert torch.equal(encoder(hidden, torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.bool)), hidden)


# -- geometry -------------------------------------------------------------------------------------------
def filled_ellipse(size: int, cx: float, cy: float, a: float, b: float, theta: float) -> np.ndarray:
    """Pixels (centres, supersampled 4x) inside an ellipse given in pixels; theta from +x towards +y (down)."""
    n = size * 4
    ys, xs = np.mgrid[0:n, 0:n] / 4.0 + 0.125
    t = math.radians(theta)
    u = (xs - cx) * math.cos(t) + (ys - cy) * math.sin(t)
    v = -(xs - cx) * math.sin(t) + (ys - cy) * math.cos(t)
    return ((u / a) ** 2 + (v / b) ** 2 <= 1.0).reshape(size, 4, size, 4).mean(axis=(1, 3))


@pytest.mark.parametrize("theta", [0, 20, 45, 90, 135, 170])
def test_ellipse_from_elongated_masks(theta: float) -> None:
    weights = filled_ellipse(128, 60.0, 70.0, 40.0, 12.0, theta)
    cx, cy, a, b, got = ellipse_from_mask(weights)
    assert abs(cx * 128 - 60) < 0.05 and abs(cy * 128 - 70) < 0.05
    assert abs(a * 128 - 40) < 0.4 and abs(b * 128 - 12) < 0.4
    assert min(abs(got - theta), 180 - abs(got - theta)) < 0.5 and 0 <= got < 180
    binary = ellipse_from_mask(weights >= 0.5)
    assert min(abs(binary[4] - theta), 180 - abs(binary[4] - theta)) < 1.0


def test_theta_is_clockwise_on_screen() -> None:
    down_right = np.eye(40, dtype=bool)  # from the top-left to the bottom-right: +x and +y (down) together
    assert ellipse_from_mask(down_right)[4] == pytest.approx(45.0)
    assert ellipse_from_mask(np.fliplr(down_right))[4] == pytest.approx(135.0)
    assert ellipse_from_mask(np.ones((4, 40), dtype=bool))[4] == pytest.approx(0.0)  # wide: along x


def test_isotropic_masks_are_circles_with_theta_zero() -> None:
    cx, cy, a, b, theta = ellipse_from_mask(filled_ellipse(64, 30, 30, 10, 10, 0) > 0.5)
    assert a == b and theta == 0.0
    *_, a, b, theta = ellipse_from_mask(filled_ellipse(64, 30, 30, 10, 9.8, 60), isotropy_tolerance=0.05)
    assert a == b and theta == 0.0
    with pytest.raises(ValueError, match="empty"):
        ellipse_from_mask(np.zeros((8, 8), dtype=bool))


def test_normalised_ellipses_quantise_to_canonical_blobs() -> None:
    blob = BlobLatent(grid=100)
    assert blob.from_normalised("a", (0.5, 0.5, 0.1, 0.3, 10)).ellipse == (50, 50, 30, 10, 100)  # axes swapped
    assert blob.from_normalised("a", (0.5, 0.5, 0.3, 0.1, 179.6)).ellipse[4] == 0  # wraps into [0, 180)
    assert blob.from_normalised("a", (0.5, 0.5, 0.301, 0.299, 77)).ellipse == (50, 50, 30, 30, 0)  # circle
    assert BoxLatent(grid=100).from_normalised("a", (0.9, -0.1, 0.2, 1.3)).box == (20, 0, 90, 100)


def test_clean_phrase_makes_model_labels_valid() -> None:
    assert clean_phrase("person (adult);\tstanding") == "person adult standing"
    assert clean_phrase("</s>") is None and clean_phrase(" ( ) ") is None


# -- analytic extractors on shapes renders --------------------------------------------------------------
@pytest.fixture(scope="module")
def renders() -> list[dict]:
    data = ShapesDataset(40, ShapesConfig(resolution=32), seed=7)
    return [data[i] for i in range(len(data))]


def test_box_extractor_matches_ground_truth(renders: list[dict]) -> None:
    latent = BoxLatent()
    extractor = shapes_extractor(latent)
    assert isinstance(extractor, ParsedObjectsExtractor) and extractor.latent_type == latent
    extracted = extractor(torch.stack([r["image"] for r in renders]), [r["condition"] for r in renders])
    ious = []
    for render, found in zip(renders, extracted):
        assert latent.parse(latent.format(found)) == found  # canonical: raster order, valid
        for obj in render["scene"].objects:
            same = [latent.to_normalised(f) for f in found if f.phrase == f"{obj.color} {obj.shape}"]
            ious.append(max((box_iou(obj.box, b) for b in same), default=0.0))
    assert np.mean(ious) >= 0.8, np.mean(ious)


def test_blob_extractor_matches_ground_truth(renders: list[dict]) -> None:
    latent = BlobLatent()
    extractor = shapes_extractor(latent)
    assert isinstance(extractor, ParsedObjectsExtractor) and extractor.latent_type == latent
    errors = []
    for render in renders:
        found = extractor(render["image"][None], [render["condition"]])[0]
        assert latent.parse(latent.format(found)) == found
        for obj in render["scene"].objects:
            centres = [latent.to_normalised(f)[:2] for f in found if f.phrase == f"{obj.color} {obj.shape}"]
            errors.append(min((math.hypot(x - obj.cx, y - obj.cy) * 32 for x, y in centres), default=math.inf))
            assert all(f.ellipse[2] == f.ellipse[3] and f.ellipse[4] == 0 for f in found)  # shapes are isotropic
    assert max(errors) < 1.5, max(errors)


def test_extractors_follow_the_latent_type(renders: list[dict]) -> None:
    """The readers write in the grid, order and object limit of the type they are built for, so what they
    read is a latent of that type (adherence compares like with like)."""
    from kaleido.shapes.parser import parse_image

    images, conditions = torch.stack([r["image"] for r in renders]), [r["condition"] for r in renders]
    given = BoxLatent(grid=100, order="given")
    for image, found in zip(images, box_extractor(given)(images, conditions)):
        parsed = parse_image(image)  # largest first
        assert found == [given.from_normalised(f"{p.color} {p.shape}", p.box) for p in parsed]
        assert all(0 <= v <= 100 for f in found for v in f.box)
    few = BlobLatent(grid=32, max_objects=2)
    for found in blob_extractor(few)(images, conditions):
        assert len(found) <= 2 and few.parse(few.format(found)) == found  # on its grid, in raster order
        assert all(0 <= v <= 32 for f in found for v in f.ellipse[:4])
    # An elongated blob keeps its axes and angle; isotropy_tolerance decides what counts as a circle.
    image = torch.full((3, 32, 32), -1.0)
    image[:, 14:18, 4:28] = torch.tensor([30.0, 70.0, 230.0]).view(3, 1, 1) / 127.5 - 1  # a blue bar along x
    bar = blob_extractor(BlobLatent(grid=100))(image[None], ["a bar"])[0]
    assert len(bar) == 1 and bar[0].phrase.startswith("blue ")
    cx, cy, a, b, theta = bar[0].ellipse
    assert (cx, cy) == (50, 50) and a > 3 * b and theta == 0
    snapped = blob_extractor(BlobLatent(grid=100), isotropy_tolerance=1.0)(image[None], ["a bar"])[0][0].ellipse
    assert snapped[2] == snapped[3] and snapped[4] == 0 and b < snapped[2] < a  # the circle of equal area
    # min_area drops small objects.
    assert box_extractor(BoxLatent(), min_area=0.5)(images[:4], conditions[:4]) == [[], [], [], []]


def test_box_and_blob_types_ship_no_extractor_of_their_own() -> None:
    """Real images need a detector or a segmenter (model-backed, local checkpoints); the analytic readers
    belong to the shapes data set, which offers them through the data contract."""
    with pytest.raises(NotImplementedError, match="DetectorBoxExtractor"):
        BoxLatent().build_extractor()
    with pytest.raises(NotImplementedError, match="SamBlobExtractor"):
        BlobLatent().build_extractor()


def test_ground_truth_latents_are_canonical(renders: list[dict]) -> None:
    scene = renders[0]["scene"]
    box, blob = BoxLatent(), BlobLatent()
    boxes, blobs_ = scene_boxes(scene, box), scene_blobs(scene, blob)
    assert len(boxes) == len(blobs_) == len(scene.objects)
    assert box.parse(box.format(boxes)) == boxes
    assert blob.parse(blob.format(blobs_)) == blobs_
    assert {b.phrase for b in boxes} == {f"{o.color} {o.shape}" for o in scene.objects}
    assert scene_boxes(scene, BoxLatent(grid=32, max_objects=len(scene.objects)))[0].phrase in {b.phrase for b in boxes}
    assert ground_truth(scene, box) == boxes and ground_truth(scene, blob) == blobs_  # dispatch on the type
    crowded = next(r["scene"] for r in renders if len(r["scene"].objects) >= 2)
    with pytest.raises(ValueError, match="at most 1 objects"):  # ground truth is never truncated
        scene_boxes(crowded, BoxLatent(max_objects=1))


def test_shapes_extractor_keeps_the_largest_objects(renders: list[dict]) -> None:
    crowded = next(r for r in renders if len(r["scene"].objects) >= 3)
    found = box_extractor(BoxLatent(max_objects=1))(crowded["image"][None], [crowded["condition"]])[0]
    largest = max(crowded["scene"].objects, key=lambda o: o.area)
    assert [f.phrase for f in found] == [f"{largest.color} {largest.shape}"]
