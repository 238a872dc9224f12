"""Drawing (kaleido/latents/drawing.py, the types' ``draw`` hooks, kaleido/viz.py): boxes and rotated
ellipses land on the right pixels, captions and grids have the right layout, and LogSamples logs the
drawn latents and each measurable type's adherence."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

import kaleido
from kaleido.callbacks import LogSamples
from kaleido.latents import BlobLatent, BoxLatent, GroundedBlob, TextLatent, VisualTokenLatent, implements
from kaleido.latents.drawing import PALETTE, draw_box, draw_ellipse, object_color
from kaleido.latents.masks import ellipse_from_mask
from kaleido.shapes import ShapesTextLatent
from kaleido.tokenizer import read_latent_segments
from kaleido.viz import (
    caption,
    draw_latent,
    draw_latents,
    draws,
    labelled_grid,
    samples_grid,
    side_by_side,
    to_pil,
)
from tests.conftest import tiny_datamodule, tiny_model_kwargs

WHITE = (255, 255, 255)


def changed(image: Image.Image) -> np.ndarray:
    """Pixels no longer black."""
    return np.asarray(image).any(axis=-1)


def border(rows: slice, cols: slice, size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[rows, cols] = True
    inner = np.zeros_like(mask)
    inner[rows.start + 1 : rows.stop - 1, cols.start + 1 : cols.stop - 1] = True
    return mask & ~inner


def test_a_box_changes_exactly_the_border_pixels_it_covers() -> None:
    image = Image.new("RGB", (16, 16))
    draw_box(image, (0.25, 0.25, 0.75, 0.5), WHITE)  # columns 4..11, rows 4..7
    assert np.array_equal(changed(image), border(slice(4, 8), slice(4, 12), 16))
    # Grid rounding puts edges a hair off the pixel edges (3/16 → 188/1000): the same pixels.
    latent = BoxLatent(grid=1000)
    rounded = Image.new("RGB", (16, 16))
    draw_box(rounded, latent.to_normalised(latent.parse("red circle (188, 250, 750, 500)")[0]), WHITE)
    expected = Image.new("RGB", (16, 16))
    draw_box(expected, (3 / 16, 0.25, 0.75, 0.5), WHITE)
    assert np.array_equal(changed(rounded), changed(expected))
    # The whole image: its outermost ring.
    whole = Image.new("RGB", (8, 8))
    draw_box(whole, (0, 0, 1, 1), WHITE)
    assert np.array_equal(changed(whole), border(slice(0, 8), slice(0, 8), 8))


@pytest.mark.parametrize("theta", [0, 30, 90, 135])
def test_a_filled_ellipse_fits_back_to_its_parameters(theta: int) -> None:
    image = Image.new("RGB", (64, 64))
    draw_ellipse(image, (0.5, 0.45, 0.35, 0.15, theta), WHITE, fill=WHITE)
    cx, cy, a, b, fitted = ellipse_from_mask(changed(image))
    assert (cx, cy) == pytest.approx((0.5, 0.45), abs=1 / 64)
    assert (a, b) == pytest.approx((0.35, 0.15), abs=1.5 / 64)
    assert min(abs(fitted - theta), 180 - abs(fitted - theta)) < 2


def test_ellipse_rotation_is_clockwise_on_screen() -> None:
    def outline(theta: float) -> np.ndarray:
        image = Image.new("RGB", (32, 32))
        draw_ellipse(image, (0.5, 0.5, 0.4, 0.1, theta), WHITE)
        return changed(image)

    assert np.array_equal(outline(90), outline(0).T), "a quarter turn of a centred ellipse is the transpose"
    steep = outline(45)  # y down: the major axis runs from top-left to bottom-right
    assert steep[24:28, 24:28].any() and steep[4:8, 4:8].any()
    assert not steep[4:8, 24:28].any() and not steep[24:28, 4:8].any()


def test_latents_are_drawn_when_they_parse() -> None:
    image = Image.new("RGB", (32, 32))
    box, blob = BoxLatent(grid=100), BlobLatent(grid=100)
    drawn = draw_latent(image, box, "red circle (0, 0, 50, 50); blue square (50, 50, 100, 100)")
    colours = {tuple(int(v) for v in p) for p in np.asarray(drawn).reshape(-1, 3)} - {(0, 0, 0)}
    assert colours == {PALETTE[0], PALETTE[1]}, "one palette colour per object"
    assert not changed(image).any(), "the input image is left alone"
    assert changed(draw_latent(image, blob, [GroundedBlob("bar", (50, 50, 40, 10, 45))])).any()  # a latent object
    for latent_type, text in [(box, "red circle (0, 0"), (TextLatent(), "a red circle")]:
        assert not changed(draw_latent(image, latent_type, text)).any()

    joined = "text: garbled (\nbox: red circle (0, 0, 50, 50)\nblob: also garbled"
    names = ["text", "box", "blob"]
    assert read_latent_segments(joined, names) == {
        "text": "garbled (",
        "box": "red circle (0, 0, 50, 50)",
        "blob": "also garbled",
    }
    both = draw_latents(image, joined, [TextLatent(), box, blob])
    assert np.array_equal(changed(both), changed(draw_latent(image, box, "red circle (0, 0, 50, 50)")))
    # A missing segment is None and draws nothing.
    assert read_latent_segments("box: red circle (0, 0, 50, 50)", names) == {
        "text": None, "box": "red circle (0, 0, 50, 50)", "blob": None
    }
    assert np.array_equal(changed(draw_latents(image, "text: a red circle", [TextLatent(), box])), changed(image))


def test_which_types_draw() -> None:
    for latent_type in (BoxLatent(), BlobLatent()):
        assert draws(latent_type) and implements(latent_type, "draw")
    for latent_type in (TextLatent(), ShapesTextLatent(), VisualTokenLatent()):
        assert not draws(latent_type)  # their text says it all
        with pytest.raises(NotImplementedError, match="declares no drawing"):
            latent_type.draw(Image.new("RGB", (4, 4)), "anything")
    with pytest.raises(ValueError, match="not an optional hook"):
        implements(BoxLatent(), "format")


def test_the_draw_hook_draws_in_place_one_colour_per_object() -> None:
    image = Image.new("RGB", (20, 20))
    box = BoxLatent(grid=20)
    objects = box.parse("a (0, 0, 5, 5); b (10, 10, 20, 20); c (0, 10, 5, 20); d (10, 0, 15, 5); e (6, 6, 9, 9)")
    assert box.draw(image, objects) is None and changed(image).any()  # in place
    pixels = np.asarray(image)
    assert [object_color(i) for i in range(5)] == [*PALETTE, PALETTE[0]]  # the palette repeats
    for index, (row, col) in enumerate([(0, 0), (10, 10), (10, 0), (0, 10), (6, 6)]):
        assert tuple(int(v) for v in pixels[row, col]) == object_color(index)
    # The type's draw is its outline of each object: a box is draw_box of its normalised box.
    alone = Image.new("RGB", (20, 20))
    draw_box(alone, box.to_normalised(objects[1]), object_color(1))
    assert np.array_equal(np.asarray(alone)[10:, 10:], pixels[10:, 10:])
    blob = BlobLatent(grid=20)
    ellipse = Image.new("RGB", (20, 20))
    blob.draw(ellipse, blob.parse("a (10, 10, 8, 4, 30)"))
    reference = Image.new("RGB", (20, 20))
    draw_ellipse(reference, blob.to_normalised(blob.parse("a (10, 10, 8, 4, 30)")[0]), PALETTE[0])
    assert np.array_equal(np.asarray(ellipse), np.asarray(reference))


def test_captions_and_grids() -> None:
    red = Image.new("RGB", (20, 10), (200, 0, 0))
    captioned = caption(red, "a long caption that wraps onto several lines", width=60)
    assert captioned.width == 60 and captioned.height > 10 + 20, "wrapped to more than one line"
    assert np.array_equal(np.asarray(captioned)[:10, 20:40], np.asarray(red)), "the image centred on top"
    assert (np.asarray(captioned)[10:] < 100).all(axis=-1).any(), "dark text under it"
    assert caption(red, "").size == red.size

    grid = labelled_grid([red] * 5, ncols=2, padding=2)
    assert grid.size == (2 * 20 + 3 * 2, 3 * 10 + 4 * 2)
    assert side_by_side([red] * 3, ["a", "b", "c"], title="t").width == 3 * 20 + 4 * 4
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        labelled_grid([red] * 3, ["a", "b"])

    images = torch.zeros(4, 3, 8, 8)
    assert to_pil(images[0], upscale=3).size == (24, 24)
    assert samples_grid(images, ncols=4, upscale=2).size == (4 * 16 + 5 * 4, 16 + 2 * 4)
    labelled = samples_grid(images, ["red circle (0, 0, 50, 50)"] * 4, [BoxLatent(grid=100)], ncols=4)
    assert labelled.width == 4 * 160 + 5 * 4, "captions at least 160 px wide"


def test_log_samples_draws_the_latents_and_measures_each_type(tmp_path: Path) -> None:
    data = tiny_datamodule(num_train=16)
    data.latent_types.append(BoxLatent(grid=16))  # before its tokenizer is built
    model = kaleido.Kaleido(tokenizer=data.tokenizer, **tiny_model_kwargs())
    logger = TensorBoardLogger(tmp_path)
    callback = LogSamples(["a circle"], samples_per_condition=2, num_steps=2, adherence=True)
    trainer = SimpleNamespace(
        sanity_checking=False, current_epoch=0, is_global_zero=True, loggers=[logger], global_step=7, callbacks=[callback],
        datamodule=data,
    )
    callback.setup(trainer, model, "fit")  # type: ignore[arg-type]  # the readers: the data set's own
    assert callback.readers is not None and set(callback.readers.extractors) == {"text", "box"} and not callback.readers.skipped
    logged: dict[str, float] = {}
    model.log_dict = lambda values, **_: logged.update(values)  # type: ignore[method-assign]
    callback.on_validation_epoch_end(trainer, model)  # type: ignore[arg-type]
    logger.experiment.flush()
    # every latent type's measures, each a share or a mean IoU in [0, 1], also when an untrained prior's
    # z never parses (each measure then scores 0, beside an unparsed share of 1)
    for name, measures in (("text", ("objects", "exact", "colours")), ("box", ("iou", "iou_exact", "phrases", "empty"))):
        assert {f"val/adherence/{name}/{m}" for m in (*measures, "unparsed")} <= set(logged), logged
    assert "val/adherence/box/iou" in logged
    for key, value in logged.items():  # a chance_ reference is NaN when fewer than two z parse
        assert 0.0 <= value <= 1.0 or ("/chance_" in key and math.isnan(value)), (key, value)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir).Reload()
    assert {"samples", "samples/drawn_latents"} <= set(events.Tags()["images"])


@pytest.mark.parametrize("ema_first", [True, False])
def test_log_samples_samples_with_the_averaged_weights_in_either_order(tmp_path: Path, ema_first: bool) -> None:
    """EMA swaps its average in for validation and out again; the grid must come from the average whatever
    the order of the callbacks. Validation runs after the last step here, so the average it uses is the
    one EMA copies into the model when training ends."""
    from lightning.pytorch import Trainer

    from kaleido.callbacks import EMA

    torch.manual_seed(0)
    data = tiny_datamodule(num_train=8)
    model = kaleido.Kaleido(tokenizer=data.tokenizer, **tiny_model_kwargs())
    sampled: list[dict[str, torch.Tensor]] = []
    generate = model.generate

    def recording_generate(*args, **kwargs):  # type: ignore[no-untyped-def]
        sampled.append({name: p.detach().clone() for name, p in model.named_parameters()})
        return generate(*args, **kwargs)

    model.generate = recording_generate  # type: ignore[method-assign]
    ema, samples = EMA(decay=0.5), LogSamples(["a circle"], samples_per_condition=1, num_steps=1, adherence=True)
    trainer = Trainer(
        max_epochs=1, limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu",
        callbacks=[ema, samples] if ema_first else [samples, ema], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)
    assert len(sampled) == 1 and {"val/adherence/text/unparsed", "val/adherence/text/objects"} <= set(trainer.callback_metrics)
    averaged = dict(model.named_parameters())  # EMA's average, copied in at the end of fit
    assert all(torch.equal(sampled[0][name], p) for name, p in averaged.items())


def test_log_samples_skips_unmeasured_latent_types_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """A type without an adherence hook, or with one but nothing to read it back, is skipped with one
    line each when training starts; the measurable types are still measured."""
    from kaleido.latents import LatentType
    from kaleido.latents.base import Extractor

    class One(Extractor):
        def __call__(self, images: torch.Tensor, conditions: object) -> list[int]:
            return [1] * len(images)

    class Count(LatentType):  # no adherence hook
        name = "count"

        def format(self, latent: int) -> str:
            return f"{latent} objects"

        def parse(self, text: str) -> int:
            return int(text.split()[0])

        def build_extractor(self) -> Extractor:
            return One()

    class Tally(Count):  # an adherence hook, but no extractor
        name = "tally"

        def build_extractor(self) -> Extractor:
            raise NotImplementedError("nothing counts tallies")

        def adherence(self, latent: int, found: int) -> dict[str, float]:
            return {"equal": float(latent == found)}

    from kaleido.tokenizer import KaleidoTokenizer

    data = tiny_datamodule(num_train=16)  # reads the text latent (ShapesTextLatent) off its images
    corpus = [condition for condition, _ in data.texts()] + ["1 objects", "2 objects"]
    tokenizer = KaleidoTokenizer.train(corpus, [ShapesTextLatent(), Count(), Tally()], vocab_size=300)
    model = kaleido.Kaleido(tokenizer=tokenizer, **tiny_model_kwargs())
    trainer = SimpleNamespace(datamodule=data)
    callback = LogSamples(["a circle"], adherence=True)
    logged: list[str] = []
    monkeypatch.setattr(kaleido.callbacks, "rank_zero_info", logged.append)
    callback.setup(trainer, model, "fit")  # type: ignore[arg-type]
    assert callback.readers is not None and set(callback.readers.extractors) == {"text"}
    assert set(callback.readers.skipped) == {"count", "tally"}
    assert "declares no adherence hook" in callback.readers.skipped["count"]
    assert "nothing counts tallies" in callback.readers.skipped["tally"]
    notes = callback.readers.notes()
    assert len(notes) == 2 and all(f"skipping the {name!r} latent" in "".join(notes) for name in ("count", "tally"))
    assert logged == [f"LogSamples: {note}" for note in notes]  # one line each, when training starts
    off = LogSamples(["a circle"], adherence=False)
    off.setup(trainer, model, "fit")  # type: ignore[arg-type]
    assert off.readers is None
