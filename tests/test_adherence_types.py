"""Adherence per latent type (the types' ``adherence`` hooks, kaleido/metrics/adherence.py): ground-truth
renders score near 1, moved or wrong latents score lower, the chance and ceiling references, combined
latents are measured part by part, types without a hook or a reader are skipped with a reason, and every
shipped Kaleido config on shapes has a measure for each of its latent types."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from kaleido.data.contract import build_datamodule
from kaleido.latents import (
    BlobLatent,
    BoxLatent,
    Extractor,
    GroundedBox,
    LatentType,
    TextLatent,
    VisualTokenLatent,
    implements,
)
from kaleido.latents.blob import ellipse_iou
from kaleido.latents.pairing import pair_objects
from kaleido.metrics.adherence import TypeAdherence, adherence_readers, latent_adherence, type_adherence
from kaleido.modules.vq import VQTokenizer
from kaleido.nn.vqvae import VQSettings
from kaleido.shapes import (
    Scene,
    ShapeObject,
    ShapesConfig,
    ShapesDataModule,
    ShapesDataset,
    ShapesTextExtractor,
    ShapesTextLatent,
    describe,
    render,
    shapes_extractor,
)
from kaleido.shapes.latents import ParsedObjectsExtractor, scene_blobs, scene_boxes
from kaleido.tokenizer import read_latent_segments

ROOT = Path(__file__).resolve().parents[1]
BOX, BLOB = BoxLatent(grid=100), BlobLatent(grid=1000)  # the box grid of configs/shapes/kaleido_box*.yaml
BOX_MEASURES = {"iou", "iou_exact", "phrases", "empty"}


def renders(count: int, resolution: int) -> tuple[torch.Tensor, list[Scene], list[str]]:
    data = ShapesDataset(count, ShapesConfig(resolution=resolution), seed=11)
    items = [data[i] for i in range(count)]
    return torch.stack([i["image"] for i in items]), [i["scene"] for i in items], [i["condition"] for i in items]


@pytest.fixture(scope="module")
def shapes32() -> tuple[torch.Tensor, list[Scene], list[str]]:
    return renders(100, 32)


def measure(
    latent_type: LatentType, images: torch.Tensor, texts: Sequence[str | None], conditions: Sequence[str]
) -> TypeAdherence:
    """One type's adherence, read back by the shapes data set's own analytic reader of the type."""
    reader = shapes_extractor(latent_type)
    assert reader is not None
    return type_adherence(latent_type, images, texts, reader, conditions)


# -- geometry -----------------------------------------------------------------------------------------
def test_ellipse_iou() -> None:
    assert ellipse_iou((0.5, 0.5, 0.2, 0.1, 30), (0.5, 0.5, 0.2, 0.1, 30)) == 1.0
    assert ellipse_iou((0.5, 0.5, 0.2, 0.1, 30), (0.5, 0.5, 0.1, 0.2, 120)) == 1.0  # the same ellipse, axes swapped
    assert ellipse_iou((0.5, 0.5, 0.2, 0.2, 0), (0.5, 0.5, 0.1, 0.1, 0)) == pytest.approx(0.25, abs=0.01)
    # Two concentric ellipses crossed at right angles overlap in 4ab·atan(b/a); each has area πab.
    overlap = 4 * math.atan(0.5)
    crossed = ellipse_iou((0.5, 0.5, 0.2, 0.1, 0), (0.5, 0.5, 0.2, 0.1, 90))
    assert crossed == pytest.approx(overlap / (2 * math.pi - overlap), abs=0.01)
    assert ellipse_iou((0.2, 0.2, 0.1, 0.1, 0), (0.8, 0.8, 0.1, 0.1, 0)) == 0.0
    assert ellipse_iou((0.5, 0.5, 0.1, 0.0, 0), (0.5, 0.5, 0.1, 0.1, 0)) == 0.0  # degenerate: no area


def test_pairing_maximises_total_iou_and_unpaired_objects_score_zero() -> None:
    table = {("a", "p"): 0.9, ("a", "q"): 0.8, ("b", "p"): 0.85, ("b", "q"): 0.0}
    iou = lambda g, h: table[(g, h)]  # noqa: E731 - geometry stands for itself here
    # Greedy on IoU would pair a-p (0.9) and leave b with q (0): total 0.9. The assignment gives 1.65.
    pairing = pair_objects([("x", "a"), ("y", "b")], [("x", "p"), ("y", "q")], iou)
    assert pairing.ious == [0.8, 0.85] and pairing.phrase_hits == 0 and pairing.found == 2
    lone = pair_objects([("x", "a"), ("y", "b"), ("z", "b")], [("x", "p")], iou)
    assert lone.ious == [0.9, 0.0, 0.0] and lone.phrase_hits == 1 and lone.found == 1
    assert lone.iou() == pytest.approx(0.3) and lone.phrases() == pytest.approx(1 / 3)
    extra = pair_objects([("x", "a")], [("x", "p"), ("y", "q")], iou)
    assert extra.iou() == 0.9 and extra.iou_exact() == pytest.approx(0.45)  # an extra found object counts as 0
    nothing, something = pair_objects([], [], iou), pair_objects([], [("x", "p")], iou)
    assert (nothing.iou(), nothing.iou_exact(), nothing.phrases()) == (1.0, 1.0, 1.0)
    assert (something.iou(), something.iou_exact(), something.phrases()) == (
        0.0,
        0.0,
        0.0,
    )  # empty latents earn nothing


def test_the_grounded_adherence_hook() -> None:
    """``GroundedLatent.adherence``: the pairing of one latent with what was found, by the type's overlap."""
    box = BoxLatent(grid=10)
    latent = [GroundedBox("red circle", (0, 0, 4, 4)), GroundedBox("blue square", (6, 6, 10, 10))]
    assert implements(box, "adherence") and implements(BlobLatent(), "adherence")
    assert box.adherence(latent, latent) == {"iou": 1.0, "iou_exact": 1.0, "phrases": 1.0, "empty": 0.0}
    # Half of one box found, under another phrase; the other box missing; one extra object.
    found = [GroundedBox("green circle", (0, 0, 2, 4)), GroundedBox("red circle", (9, 0, 10, 1))]
    assert box.adherence(latent, found) == pytest.approx({"iou": 0.25, "iou_exact": 0.25, "phrases": 0.0, "empty": 0.0})
    assert box.adherence(latent, found[:1]) == pytest.approx(
        {"iou": 0.25, "iou_exact": 0.25, "phrases": 0.0, "empty": 0.0}
    )
    assert box.adherence(latent[:1], found) == pytest.approx(
        {"iou": 0.5, "iou_exact": 0.25, "phrases": 0.0, "empty": 0.0}
    )
    assert box.adherence([], []) == {"iou": 1.0, "iou_exact": 1.0, "phrases": 1.0, "empty": 1.0}
    assert box.adherence([], found) == {"iou": 0.0, "iou_exact": 0.0, "phrases": 0.0, "empty": 1.0}
    blob = BlobLatent(grid=100)
    circles = blob.parse("red circle (30, 30, 20, 20, 0)")
    assert blob.adherence(circles, blob.parse("red circle (30, 30, 10, 10, 0)")) == pytest.approx(
        {"iou": 0.25, "iou_exact": 0.25, "phrases": 1.0, "empty": 0.0}, abs=0.01
    )


# -- ground-truth renders, moved and wrong latents ---------------------------------------------------
def test_ground_truth_boxes_score_near_one(shapes32: tuple) -> None:
    images, scenes, conditions = shapes32
    score = measure(BOX, images, [BOX.format(scene_boxes(s, BOX)) for s in scenes], conditions)
    # The reader's box is the tight box of whole pixels with >= 50% coverage, on the latent's grid; the
    # latent's, the exact shape's: at 32² a 1/2-pixel difference per edge of a 9-pixel object costs ~10%
    # IoU (measured before the reader was quantised: 0.874 at 32², 0.928 at 64²; a grid step of 100 is
    # 1/3 pixel at 32², and rounding both boxes alike moves the mean by about a percent).
    assert set(score.scores) == BOX_MEASURES and score.unparsed == 0.0 and score.count == 100, score
    assert score.scores["iou"] >= 0.85 and score.scores["phrases"] == 1.0 and score.scores["empty"] == 0.0, score
    assert score.scores["iou_exact"] == score.scores["iou"]  # clean renders: no spurious objects
    images64, scenes64, conditions64 = renders(40, 64)
    assert (
        measure(BOX, images64, [BOX.format(scene_boxes(s, BOX)) for s in scenes64], conditions64).scores["iou"] >= 0.9
    )


def test_ground_truth_blobs_score_near_one(shapes32: tuple) -> None:
    images, scenes, conditions = shapes32
    score = measure(BLOB, images, [BLOB.format(scene_blobs(s, BLOB)) for s in scenes], conditions)
    # Every shape's blob is a circle; the reader snaps near-circles to circles too (measured 0.968
    # before it did, with the raw second-moment ellipse).
    assert score.scores["iou"] >= 0.95 and score.scores["phrases"] == 1.0 and score.unparsed == 0.0, score


def shifted(box: GroundedBox, dx: int) -> GroundedBox:
    x1, y1, x2, y2 = box.box
    dx = min(dx, 100 - x2)  # stay on the grid
    return GroundedBox(box.phrase, (x1 + dx, y1, x2 + dx, y2))


def test_moved_and_wrong_latents_score_lower(shapes32: tuple) -> None:
    images, scenes, conditions = shapes32
    truth = [scene_boxes(s, BOX) for s in scenes]

    def iou(latents: list[list[GroundedBox]]) -> float:
        return measure(BOX, images, [BOX.format(t) for t in latents], conditions).scores["iou"]

    exact = iou(truth)
    by_pixels = [iou([[shifted(b, dx) for b in t] for t in truth]) for dx in (3, 6, 12)]
    assert exact > by_pixels[0] > by_pixels[1] > by_pixels[2] and by_pixels[1] < 0.7, (exact, by_pixels)  # 1, 2, 4 px
    recoloured = [[GroundedBox("purple circle", b.box) for b in t] for t in truth]
    wrong = measure(BOX, images, [BOX.format(t) for t in recoloured], conditions)
    assert wrong.scores["iou"] == pytest.approx(exact) and wrong.scores["phrases"] < 0.3  # geometry and labels apart
    extra = [t + [GroundedBox("red circle", (0, 0, 5, 5))] if len(t) < 8 else t for t in truth]
    assert iou(extra) < 0.8 * exact  # an absent object scores 0
    broken = [BOX.format(t) for t in truth[:50]] + ["red circle (1, 2"] * 50
    half = measure(BOX, images, broken, conditions)
    first = measure(BOX, images[:50], broken[:50], conditions[:50])
    assert half.unparsed == 0.5 and half.scores["iou"] == pytest.approx(first.scores["iou"] / 2)  # unparsed scores 0


def test_ground_truth_text_scores_one_and_chance_is_far_below(shapes32: tuple) -> None:
    """Well-drawn samples (renders of the scenes the descriptions describe) follow their text; each
    sample against the next sample's description, the chance reference, rarely holds its objects."""
    images, scenes, conditions = shapes32
    text = ShapesTextLatent()
    assert implements(text, "adherence") and not implements(text, "decode")
    score = type_adherence(text, images, [describe(s) for s in scenes], ShapesTextExtractor(), conditions)
    flat = score.flat()
    # no ceiling: no decode
    assert set(flat) == {"objects", "exact", "colours", "unparsed", "chance_objects", "chance_exact", "chance_colours"}
    assert flat["objects"] >= 0.98 and flat["exact"] >= 0.95 and flat["colours"] >= flat["objects"] and flat["unparsed"] == 0.0, flat
    # A described object (one of 3 shapes × 6 colours) is in an unrelated scene of 1-3 objects about 1
    # time in 9; all of a description's objects much more rarely.
    assert flat["chance_objects"] < 0.3 and flat["chance_objects"] < flat["objects"] - 0.6, flat
    assert flat["chance_exact"] <= flat["chance_objects"]


def test_chance_of_well_drawn_text_samples_is_below_the_score() -> None:
    """Samples rendered with kaleido.shapes.render, one object each, every object distinct: a sample
    shows its own description, never the next one's, so the chance reference is 0 against a score of 1."""
    colours, shapes = ["red", "green", "blue", "yellow", "purple", "orange"], ["circle", "square", "triangle"]
    scenes = [
        Scene((ShapeObject(shape, colour, "large", 0.5, 0.5, 0.24),), "white")
        for shape, colour in zip(shapes * 2, colours)
    ]
    images = torch.from_numpy(np.stack([render(s, 32) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    conditions = [f"a {s.objects[0].shape}" for s in scenes]
    flat = type_adherence(
        ShapesTextLatent(), images, [describe(s) for s in scenes], ShapesTextExtractor(), conditions
    ).flat()
    assert flat["objects"] == flat["exact"] == flat["colours"] == 1.0 and flat["chance_objects"] == flat["chance_exact"] == 0.0, flat
    assert flat["chance_colours"] == 0.0, flat  # six distinct colours: the next sample's never matches
    # Two objects per sample, the second one shared by all: chance finds the shared object but not the other.
    shared = ShapeObject("circle", "red", "small", 0.2, 0.2, 0.14)
    pairs = [
        Scene((ShapeObject(s.objects[0].shape, s.objects[0].color, "large", 0.65, 0.65, 0.24), shared), "gray")
        for s in scenes[1:]
    ]
    images = torch.from_numpy(np.stack([render(s, 32) for s in pairs])).permute(0, 3, 1, 2).float() / 127.5 - 1
    flat = type_adherence(
        ShapesTextLatent(), images, [describe(s) for s in pairs], ShapesTextExtractor(), conditions[1:]
    ).flat()
    assert flat["objects"] == 1.0 and flat["chance_objects"] == 0.0, flat


def test_text_adherence_reads_a_sample_that_shows_nothing() -> None:
    text = ShapesTextLatent()
    nothing = describe(Scene((), "black"))  # what the reader writes for an empty image
    assert text.adherence("a red circle", nothing) == {"objects": 0.0, "exact": 0.0, "colours": 0.0}
    assert text.adherence("a red circle", "a red circle, a blue square, on a gray background") == {
        "objects": 1.0,
        "exact": 0.0,
        "colours": 1.0,
    }
    assert text.adherence("a red circle and a blue square", "a blue square, a red circle") == {
        "objects": 1.0,
        "exact": 1.0,
        "colours": 1.0,
    }
    blank = torch.from_numpy(render(Scene((), "gray"), 32)).permute(2, 0, 1)[None].float() / 127.5 - 1
    score = type_adherence(text, blank, ["a red circle"], ShapesTextExtractor(), ["a circle"])
    assert score.scores == {"objects": 0.0, "exact": 0.0, "colours": 0.0} and score.count == 1
    assert set(score.chance) == {"objects", "exact", "colours"} and all(math.isnan(v) for v in score.chance.values())  # undefined


def test_text_adherence_colours_counts_the_colours_shape_aside() -> None:
    """``colours``: every described object's colour on its own parsed object, whatever its shape."""
    text = ShapesTextLatent()
    # the right colour on the wrong shape: the colour is followed, the object is not
    assert text.adherence("a red circle", "a red square") == {"objects": 0.0, "exact": 0.0, "colours": 1.0}
    # the right shape in the wrong colour
    assert text.adherence("a red circle", "a blue circle")["colours"] == 0.0
    # two described objects of one colour need two parsed objects of that colour
    assert text.adherence("a red circle and a red square", "a red triangle")["colours"] == 0.0
    assert text.adherence("a red circle and a red square", "a red triangle, a red circle")["colours"] == 1.0
    # an extra object is allowed, as for objects
    assert text.adherence("a green triangle", "a blue circle, a green square")["colours"] == 1.0


# -- visual tokens ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vq_latent(tmp_path_factory: pytest.TempPathFactory) -> VisualTokenLatent:
    """A random (untrained) VQ tokenizer for 32² images, saved as `fit` saves one: 16 codes of 32."""
    torch.manual_seed(0)
    model = VQTokenizer(
        image_size=32,
        vq=VQSettings(codebook_size=32, code_dim=8, downsample=8, channels=8, max_channels=16, num_res_blocks=1),
    )
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("vq") / "vq.ckpt"
    torch.save(checkpoint, path)
    return VisualTokenLatent(codebook_size=32, num_tokens=16, checkpoint=str(path))


def test_token_agreement_counts_equal_positions(shapes32: tuple, vq_latent: VisualTokenLatent) -> None:
    images = shapes32[0][:8]
    reader = vq_latent.build_extractor()
    codes = reader(images, [""] * 8)
    same = type_adherence(vq_latent, images, [vq_latent.format(c) for c in codes], reader, [""] * 8)
    assert (same.scores, same.unparsed, same.count) == ({"agreement": 1.0, "exact": 1.0}, 0.0, 8)
    assert set(same.flat()) == {
        "agreement",
        "exact",
        "unparsed",
        "chance_agreement",
        "chance_exact",
        "ceiling_agreement",
        "ceiling_exact",
    }
    assert all(0.0 <= v <= 1.0 for v in same.flat().values())
    moved = [tuple((x + 1) % 32 if i < 4 else x for i, x in enumerate(c)) for c in codes]  # 4 of 16 codes changed
    texts = [vq_latent.format(c) for c in moved[:6]] + ["<v1>#<v2>", "nonsense"]
    score = type_adherence(vq_latent, images, texts, reader, [""] * 8, batch_size=3)
    assert score.scores["agreement"] == pytest.approx(0.75 * 6 / 8) and score.scores["exact"] == 0.0
    assert score.unparsed == 0.25
    assert vq_latent.adherence((1, 2, 3), (1, 2)) == {"agreement": 0.0, "exact": 0.0}  # a wrong length agrees nowhere


class PixelCodes(Extractor):
    """A stand-in VQ with a known answer: the 16 codes of an image are the values of its 4 × 4 first channel."""

    def __call__(self, images: torch.Tensor, conditions: Sequence[str]) -> list[tuple[int, ...]]:  # noqa: ARG002
        return [tuple(int(v) for v in image[0].flatten().round().tolist()) for image in images]


class PixelTokens(VisualTokenLatent):
    """Visual tokens whose rendering keeps codes below 8 and writes 0 for the rest (so the ceiling is the
    share of a latent's codes below 8)."""

    def decode(self, latents: Sequence[Sequence[int]]) -> torch.Tensor:
        grid = torch.tensor([list(z) for z in latents], dtype=torch.float32)
        return torch.where(grid < 8, grid, 0.0).view(-1, 1, 4, 4).expand(-1, 3, 4, 4)


def test_token_agreement_references_chance_and_ceiling() -> None:
    latent_type = PixelTokens(codebook_size=32, num_tokens=16)
    rng = np.random.default_rng(0)
    latents = rng.integers(0, 32, size=(7, 16))
    drawn = latents.copy()
    drawn[:, :4] = (drawn[:, :4] + 1) % 32  # each sample follows 12 of its 16 codes
    images = torch.tensor(drawn, dtype=torch.float32).view(-1, 1, 4, 4).expand(-1, 3, 4, 4)
    texts = [latent_type.format(tuple(row)) for row in latents]
    score = type_adherence(latent_type, images, texts, PixelCodes(), [""] * 7, batch_size=3)
    assert score.scores["agreement"] == pytest.approx(0.75) and score.scores["exact"] == 0.0
    neighbours = np.roll(latents, -1, axis=0)  # sample i against latent i + 1
    assert score.chance["agreement"] == pytest.approx(np.mean(neighbours == drawn))
    assert score.ceiling["agreement"] == pytest.approx(np.mean(latents < 8))
    assert score.ceiling["exact"] == pytest.approx(np.mean((latents < 8).all(axis=1)))
    flat = score.flat()
    assert (
        flat["chance_agreement"] == score.chance["agreement"]
        and flat["ceiling_agreement"] == score.ceiling["agreement"]
    )
    lone = type_adherence(latent_type, images[:1], texts[:1], PixelCodes(), [""])
    assert math.isnan(lone.flat()["chance_agreement"])  # one sample has no unrelated z: undefined, not dropped
    assert lone.ceiling["agreement"] == pytest.approx(np.mean(latents[0] < 8))
    # Chance and ceiling are taken over the samples whose z parses.
    some = type_adherence(latent_type, images[:3], [texts[0], "nonsense", texts[2]], PixelCodes(), [""] * 3)
    assert some.unparsed == pytest.approx(1 / 3)
    pairs = [(latents[2], drawn[0]), (latents[0], drawn[2])]
    assert some.chance["agreement"] == pytest.approx(np.mean([np.mean(z == d) for z, d in pairs]))
    assert some.ceiling["agreement"] == pytest.approx(np.mean(latents[[0, 2]] < 8))


def test_type_adherence_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="2 images, 1 latent texts and 2 conditions"):
        type_adherence(BOX, torch.zeros(2, 3, 8, 8), ["a (1, 2, 3, 4)"], shapes_extractor(BOX), ["", ""])  # type: ignore[arg-type]

    class Short(Extractor):
        def __call__(self, images: torch.Tensor, conditions: Sequence[str]) -> list:  # noqa: ARG002
            return []

    with pytest.raises(ValueError, match="Short read 0 latents off 2 images"):
        type_adherence(BOX, torch.zeros(2, 3, 8, 8), ["", ""], Short(), ["", ""])


# -- combined latents ---------------------------------------------------------------------------------
def test_latent_segments() -> None:
    assert read_latent_segments("a red circle", ["text"]) == {"text": "a red circle"}
    joined = "text: a circle: big\nbox: red circle (1, 2, 3, 4)"
    assert read_latent_segments(joined, ["text", "box", "blob"]) == {
        "text": "a circle: big",
        "box": "red circle (1, 2, 3, 4)",
        "blob": None,
    }


class Unmeasured(TextLatent):
    """A plugin type with no adherence hook (not registered)."""

    name = "unmeasured"


def test_combined_latents_are_measured_part_by_part(shapes32: tuple, vq_latent: VisualTokenLatent) -> None:
    images, scenes, conditions = shapes32[0][:20], shapes32[1][:20], shapes32[2][:20]
    types = [ShapesTextLatent(), BOX, vq_latent]
    data = ShapesDataModule(latents=types, shapes=ShapesConfig(resolution=32))
    readers = adherence_readers([Unmeasured(), *types], data)
    assert list(readers.extractors) == ["text", "box", "visual_token"]  # the data set's readers, then the VQ
    assert isinstance(readers.extractors["text"], ShapesTextExtractor)
    assert (
        isinstance(readers.extractors["box"], ParsedObjectsExtractor) and readers.extractors["box"].latent_type == BOX
    )
    assert list(readers.skipped) == ["unmeasured"] and "no adherence hook" in readers.skipped["unmeasured"]
    codes = vq_latent.build_extractor()(images, [""] * 20)
    texts = [
        f"text: {describe(s)}\nbox: {BOX.format(scene_boxes(s, BOX))}\nvisual_token: {vq_latent.format(c)}"
        for s, c in zip(scenes, codes)
    ]
    texts[0] = texts[0].split("\nbox")[0]  # the prior may leave a segment out: that part is unparsed
    scores = latent_adherence(images, texts, [Unmeasured(), *types], readers.extractors, conditions)
    assert list(scores) == ["text", "box", "visual_token"]  # a type without a reader is left out
    assert scores["text"].scores["objects"] >= 0.9 and scores["text"].unparsed == 0.0
    assert scores["box"].unparsed == 0.05 and scores["box"].scores["iou"] >= 0.8
    assert scores["visual_token"].scores["agreement"] == 0.95 and scores["visual_token"].unparsed == 0.05
    assert all(score.count == 20 for score in scores.values())
    with pytest.raises(ValueError, match="20 images but 19 latent texts"):
        latent_adherence(images, texts[1:], types, readers.extractors, conditions)


# -- which types are measured ---------------------------------------------------------------------------
class Ones(Extractor):
    def __call__(self, images: torch.Tensor, conditions: Sequence[str]) -> list[int]:  # noqa: ARG002
        return [1] * len(images)


class Count(LatentType):
    """A tiny plugin type: a number of objects."""

    name = "count"

    def format(self, latent: int) -> str:
        return f"{latent} objects"

    def parse(self, text: str) -> int:
        try:
            return int(text.split()[0])
        except (IndexError, ValueError) as error:
            raise ValueError(f"not a count: {text!r}") from error


class ReadCount(Count):
    """A hook and an extractor of its own: measured."""

    name = "read_count"

    def build_extractor(self) -> Extractor:
        return Ones()

    def adherence(self, latent: int, found: int) -> dict[str, float]:
        return {"equal": float(latent == found)}


class UnreadCount(ReadCount):
    """A hook, but nothing reads it back off an image."""

    name = "unread_count"

    def build_extractor(self) -> Extractor:
        raise NotImplementedError("no counter for real images")


class UnmeasuredCount(Count):
    """An extractor but no adherence hook."""

    name = "unmeasured_count"

    def build_extractor(self) -> Extractor:
        return Ones()


def test_types_without_a_hook_or_a_reader_are_skipped_with_a_reason() -> None:
    assert implements(UnreadCount(), "adherence") and not implements(UnmeasuredCount(), "adherence")
    readers = adherence_readers([ReadCount(), UnreadCount(), UnmeasuredCount(), Count()])
    assert list(readers.extractors) == ["read_count"] and isinstance(readers.extractors["read_count"], Ones)
    assert set(readers.skipped) == {"unread_count", "unmeasured_count", "count"}
    assert "nothing reads it back off an image" in readers.skipped["unread_count"]
    assert "no counter for real images" in readers.skipped["unread_count"]  # the type's own words
    assert readers.skipped["unmeasured_count"] == "UnmeasuredCount declares no adherence hook"
    assert readers.skipped["count"] == "Count declares no adherence hook"
    assert readers.notes() == [
        f"adherence: skipping the {name!r} latent: {why}" for name, why in readers.skipped.items()
    ]
    # A data set's reader stands in for a type that ships none; a reader alone does not make a measure.
    data = type("Data", (), {"latent_extractor": lambda self, t: Ones()})()
    with_data = adherence_readers([UnreadCount(), UnmeasuredCount()], data)
    assert list(with_data.extractors) == ["unread_count"] and list(with_data.skipped) == ["unmeasured_count"]
    # The measured type is scored by its hook; the others do not appear.
    images = torch.zeros(3, 3, 4, 4)
    types = [ReadCount(), UnmeasuredCount()]
    texts = [
        "read_count: 1 objects\nunmeasured_count: 1 objects",
        "read_count: 2 objects",
        "unmeasured_count: 5 objects",
    ]
    scores = latent_adherence(images, texts, types, readers.extractors, [""] * 3)
    assert list(scores) == ["read_count"]
    assert scores["read_count"].flat() == pytest.approx(
        {"equal": 1 / 3, "unparsed": 1 / 3, "chance_equal": 0.5}  # chance: sample 0 against z 2 of sample 1, and back
    )


def test_visual_tokens_without_a_checkpoint_are_skipped_saying_how_to_make_one() -> None:
    readers = adherence_readers([VisualTokenLatent()], ShapesDataModule())
    assert not readers.extractors and "configs/shapes/vq.yaml" in readers.skipped["visual_token"]


def test_the_shapes_data_offers_readers_and_ground_truth(vq_latent: VisualTokenLatent) -> None:
    data = ShapesDataModule(latents=[BOX], shapes=ShapesConfig(resolution=32), num_val=5)
    val = data.shapes_split("val")
    assert data.ground_truth("val", BOX) == [scene_boxes(val.scene(i), BOX) for i in range(5)]
    assert data.ground_truth("val", ShapesTextLatent()) == [describe(val.scene(i)) for i in range(5)]
    assert data.ground_truth("val", vq_latent) is None and data.latent_extractor(vq_latent) is None
    reader = data.latent_extractor(BLOB)
    assert isinstance(reader, ParsedObjectsExtractor) and reader.latent_type == BLOB
    assert isinstance(data.latent_extractor(ShapesTextLatent()), ShapesTextExtractor)


# -- the shipped configs ------------------------------------------------------------------------------
KALEIDO_CONFIGS = sorted((ROOT / "configs" / "shapes").glob("kaleido_*.yaml"))


@pytest.mark.parametrize("config", KALEIDO_CONFIGS, ids=lambda p: p.name)
def test_every_shapes_config_has_a_measure_per_latent_type(config: Path) -> None:
    data = build_datamodule(config)
    latents = data.latent_types
    assert latents and all(implements(t, "adherence") for t in latents)
    readers = adherence_readers(latents, data)
    visual = [t for t in latents if t.name == "visual_token"]
    assert set(readers.extractors) == {t.name for t in latents} - {"visual_token"}
    if visual:  # the VQ checkpoint comes from the command line; without it, the reader says how to make one
        assert latents[-1] is visual[0] and visual[0].checkpoint is None
        assert list(readers.skipped) == ["visual_token"] and "configs/shapes/vq.yaml" in readers.skipped["visual_token"]
    else:
        assert not readers.skipped
