"""Adherence per latent type (kaleido/metrics/adherence.py): ground-truth renders score near 1, moved or
wrong latents score lower, combined latents are measured part by part, and every shipped Kaleido config
on shapes has a measure for each of its latent types."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kaleido.data.shapes import ShapesConfig, ShapesDataset
from kaleido.data.shapes_text import describe
from kaleido.latents import BlobLatent, BoxLatent, GroundedBox, TextLatent, VisualTokenLatent, build_latent_type
from kaleido.latents.blob import scene_blobs
from kaleido.latents.box import scene_boxes
from kaleido.metrics.adherence import (
    MEASURED,
    blob_adherence,
    box_adherence,
    ellipse_iou,
    latent_adherence,
    latent_parts,
    pair_objects,
    token_agreement,
)
from kaleido.modules.vq import VQTokenizer
from kaleido.nn.vqvae import VQSettings

ROOT = Path(__file__).resolve().parents[1]
BOX, BLOB = BoxLatent(grid=100), BlobLatent(grid=1000)  # the grids of configs/shapes/kaleido_{box,blob}*.yaml


def renders(count: int, resolution: int) -> tuple[torch.Tensor, list]:
    data = ShapesDataset(count, ShapesConfig(resolution=resolution), seed=11)
    items = [data[i] for i in range(count)]
    return torch.stack([i["image"] for i in items]), [i["scene"] for i in items]


@pytest.fixture(scope="module")
def shapes32() -> tuple[torch.Tensor, list]:
    return renders(100, 32)


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
    assert pairing.ious == [0.8, 0.85] and pairing.phrase_hits == 0
    lone = pair_objects([("x", "a"), ("y", "b"), ("z", "b")], [("x", "p")], iou)
    assert lone.ious == [0.9, 0.0, 0.0] and lone.phrase_hits == 1
    assert lone.iou() == pytest.approx(0.3) and lone.phrases() == pytest.approx(1 / 3)
    extra = pair_objects([("x", "a")], [("x", "p"), ("y", "q")], iou)
    assert extra.iou() == 0.9 and extra.iou_exact() == pytest.approx(0.45)  # an extra parsed object counts as 0
    nothing, something = pair_objects([], [], iou), pair_objects([], [("x", "p")], iou)
    assert (nothing.iou(), nothing.iou_exact(), nothing.phrases()) == (1.0, 1.0, 1.0)
    assert (something.iou(), something.iou_exact(), something.phrases()) == (
        0.0,
        0.0,
        0.0,
    )  # empty latents earn nothing


# -- ground-truth renders, moved and wrong latents ---------------------------------------------------
def test_ground_truth_boxes_score_near_one(shapes32: tuple) -> None:
    images, scenes = shapes32
    score = box_adherence(images, [BOX.format(scene_boxes(s, grid=100)) for s in scenes], BOX)
    # Measured on these 100 renders: 0.874 at 32², 0.928 at 64² (200 renders). The parser's box is the
    # tight box of whole pixels with >= 50% coverage, the latent's the exact shape's: at 32² a 1/2-pixel
    # difference per edge of a 9-pixel object costs ~10% IoU.
    assert score.iou >= 0.85 and score.phrases == 1.0 and score.unparsed == 0.0 and score.count == 100, score
    assert score.iou_exact == score.iou  # clean renders: no spurious objects
    images64, scenes64 = renders(40, 64)
    assert box_adherence(images64, [BOX.format(scene_boxes(s, grid=100)) for s in scenes64], BOX).iou >= 0.9


def test_ground_truth_blobs_score_near_one(shapes32: tuple) -> None:
    images, scenes = shapes32
    score = blob_adherence(images, [BLOB.format(scene_blobs(s)) for s in scenes], BLOB)
    # Measured: 0.968 (grid 1000); with grid 100 the semi-axes move in steps of 1/3 pixel: 0.949.
    assert score.iou >= 0.95 and score.phrases == 1.0, score


def shifted(box: GroundedBox, dx: int) -> GroundedBox:
    x1, y1, x2, y2 = box.box
    dx = min(dx, 100 - x2)  # stay on the grid
    return GroundedBox(box.phrase, (x1 + dx, y1, x2 + dx, y2))


def test_moved_and_wrong_latents_score_lower(shapes32: tuple) -> None:
    images, scenes = shapes32
    truth = [scene_boxes(s, grid=100) for s in scenes]
    exact = box_adherence(images, [BOX.format(t) for t in truth], BOX).iou
    by_pixels = [
        box_adherence(images, [BOX.format([shifted(b, dx) for b in t]) for t in truth], BOX).iou for dx in (3, 6, 12)
    ]
    assert exact > by_pixels[0] > by_pixels[1] > by_pixels[2] and by_pixels[1] < 0.7, (exact, by_pixels)  # 1, 2, 4 px
    recoloured = [[GroundedBox("purple circle", b.box) for b in t] for t in truth]
    wrong = box_adherence(images, [BOX.format(t) for t in recoloured], BOX)
    assert wrong.iou == pytest.approx(exact) and wrong.phrases < 0.3  # geometry and labels are measured apart
    extra = [t + [GroundedBox("red circle", (0, 0, 5, 5))] if len(t) < 8 else t for t in truth]
    assert box_adherence(images, [BOX.format(t) for t in extra], BOX).iou < 0.8 * exact  # an absent object scores 0
    broken = [BOX.format(t) for t in truth[:50]] + ["red circle (1, 2"] * 50
    half = box_adherence(images, broken, BOX)
    assert half.unparsed == 0.5 and half.iou == pytest.approx(box_adherence(images[:50], broken[:50], BOX).iou / 2)


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
    codes = vq_latent.build_extractor()(images, [""] * 8)
    same = token_agreement(images, [vq_latent.format(c) for c in codes], vq_latent, vq_latent.build_extractor())
    assert (same.agreement, same.exact, same.unparsed, same.count) == (1.0, 1.0, 0.0, 8)
    assert 0.0 <= same.chance <= 1.0 and 0.0 <= same.ceiling <= 1.0
    moved = [tuple((x + 1) % 32 if i < 4 else x for i, x in enumerate(c)) for c in codes]  # 4 of 16 codes changed
    texts = [vq_latent.format(c) for c in moved[:6]] + ["<v1>#<v2>", "nonsense"]
    score = token_agreement(images, texts, vq_latent, vq_latent.build_extractor(), batch_size=3)
    assert score.agreement == pytest.approx(0.75 * 6 / 8) and score.exact == 0.0 and score.unparsed == 0.25


class PixelCodes:
    """A stand-in VQ with a known answer: the 16 codes of an image are the values of its 4 × 4 first
    channel, and decoding keeps codes below 8 and writes 0 for the rest (so the ceiling is the share
    of a latent's codes below 8)."""

    def __call__(self, images: torch.Tensor, conditions: list[str]) -> list[tuple[int, ...]]:  # noqa: ARG002
        return [tuple(int(v) for v in image[0].flatten().round().tolist()) for image in images]

    def decode(self, codes: list[tuple[int, ...]]) -> torch.Tensor:
        grid = torch.tensor(codes, dtype=torch.float32)
        return torch.where(grid < 8, grid, 0.0).view(-1, 1, 4, 4).expand(-1, 3, 4, 4)


def test_token_agreement_references_chance_and_ceiling(vq_latent: VisualTokenLatent) -> None:
    rng = np.random.default_rng(0)
    latents = rng.integers(0, 32, size=(7, 16))
    drawn = latents.copy()
    drawn[:, :4] = (drawn[:, :4] + 1) % 32  # each sample follows 12 of its 16 codes
    images = torch.tensor(drawn, dtype=torch.float32).view(-1, 1, 4, 4).expand(-1, 3, 4, 4)
    texts = [vq_latent.format(tuple(row)) for row in latents]
    score = token_agreement(images, texts, vq_latent, PixelCodes(), batch_size=3)  # type: ignore[arg-type]
    assert score.agreement == pytest.approx(0.75)
    neighbours = np.roll(latents, -1, axis=0)  # sample i against latent i + 1
    assert score.chance == pytest.approx(np.mean(neighbours == drawn))
    assert score.ceiling == pytest.approx(np.mean(latents < 8))
    lone = token_agreement(images[:1], texts[:1], vq_latent, PixelCodes())  # type: ignore[arg-type]
    assert math.isnan(lone.chance) and lone.ceiling == pytest.approx(np.mean(latents[0] < 8))


# -- combined latents ---------------------------------------------------------------------------------
def test_latent_parts() -> None:
    assert latent_parts("a red circle", ["text"]) == {"text": "a red circle"}
    joined = "text: a circle: big\nbox: red circle (1, 2, 3, 4)"
    assert latent_parts(joined, ["text", "box", "blob"]) == {
        "text": "a circle: big",
        "box": "red circle (1, 2, 3, 4)",
        "blob": None,
    }


def test_combined_latents_are_measured_part_by_part(shapes32: tuple, vq_latent: VisualTokenLatent) -> None:
    images, scenes = shapes32[0][:20], shapes32[1][:20]
    types = [TextLatent(grammar="shapes"), BOX, vq_latent]
    codes = vq_latent.build_extractor()(images, [""] * 20)
    texts = [
        f"text: {describe(s)}\nbox: {BOX.format(scene_boxes(s, grid=100))}\nvisual_token: {vq_latent.format(c)}"
        for s, c in zip(scenes, codes)
    ]
    texts[0] = texts[0].split("\nbox")[0]  # the prior may leave a segment out: that part is unparsed
    scores = latent_adherence(images, texts, types)
    assert list(scores) == ["text", "box", "visual_token"]
    assert scores["text"].objects >= 0.9 and scores["text"].unparsed == 0.0
    assert scores["box"].unparsed == 0.05 and scores["box"].iou >= 0.8
    assert scores["visual_token"].agreement == 0.95 and scores["visual_token"].unparsed == 0.05
    assert dataclasses.asdict(scores["box"])["count"] == 20
    with pytest.raises(ValueError, match="no adherence measure"):
        latent_adherence(images, texts, [Unmeasured()])


class Unmeasured(TextLatent):
    """A plugin type the shapes measures know nothing about (not registered)."""

    name = "unmeasured"


# -- the shipped configs ------------------------------------------------------------------------------
KALEIDO_CONFIGS = sorted((ROOT / "configs" / "shapes").glob("kaleido_*.yaml"))


@pytest.mark.parametrize("config", KALEIDO_CONFIGS, ids=lambda p: p.name)
def test_every_shapes_config_has_a_measure_per_latent_type(config: Path) -> None:
    latents = [build_latent_type(spec) for spec in yaml.safe_load(config.read_text())["data"]["init_args"]["latents"]]
    assert latents and all(t.name in MEASURED for t in latents)
    visual = [t for t in latents if t.name == "visual_token"]
    if visual:  # the VQ checkpoint comes from the command line; without it, extraction says how to make one
        assert latents[-1] is visual[0] and visual[0].checkpoint is None
        with pytest.raises(ValueError, match="configs/shapes/vq.yaml"):
            visual[0].build_extractor()
