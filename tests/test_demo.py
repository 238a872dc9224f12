"""`python -m kaleido demo`: a condition → N images with their z; an edited z redraws only its image, from
the noise it was first drawn with; a z that does not parse is a message on the page. Through the app's
functions (`LatentEditor`), through `gradio_client` against a served page, and in headless Chromium
(each skipped, with the reason, where gradio, Playwright or a Chromium is missing)."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from kaleido import DiffusionModel, Kaleido
from kaleido.__main__ import main
from kaleido.datasets.folder_writer import MissingPackageError
from kaleido.demo import SAMPLERS, LatentEditor, Settings, build_app, image_seed, import_gradio, message
from kaleido.latents import LatentParseError
from kaleido.latents.box import BoxLatent
from kaleido.shapes import ShapesConfig, ShapesDataModule
from tests.conftest import tiny_model_kwargs

CONDITION = "a circle"
BAD = "a pink circle"  # ShapesTextLatent's grammar knows no pink


def _one_step(path: Path, model: Kaleido | DiffusionModel, data: ShapesDataModule) -> Path:
    """``model`` after one training step, saved to ``path``. Its zero-initialised layers start random
    instead: otherwise they cut every path from (c, z) to the pixels, and an edit could change nothing."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.05, generator=generator)
    trainer = Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(
    tmp_path_factory: pytest.TempPathFactory, text_data: ShapesDataModule, baseline_data: ShapesDataModule
) -> tuple[Path, Path]:
    """Kaleido and the baseline after one step each (the prior's z is garbage: it need not parse)."""
    folder = tmp_path_factory.mktemp("demo")
    kaleido = _one_step(folder / "kaleido.ckpt", Kaleido(tokenizer=text_data.tokenizer, **tiny_model_kwargs()), text_data)
    baseline = _one_step(folder / "baseline.ckpt", DiffusionModel(tokenizer=baseline_data.tokenizer, **tiny_model_kwargs()), baseline_data)
    return kaleido, baseline


@pytest.fixture(scope="module")
def editor(checkpoints: tuple[Path, Path], single_thread: None) -> LatentEditor:
    return LatentEditor.from_checkpoints(*checkpoints)


@pytest.fixture(scope="module")
def latents(text_data: ShapesDataModule) -> list[str]:
    """Two different z that parse: the exact latents of validation scenes."""
    tok, val = text_data.tokenizer, text_data.dataset("val")
    texts = [tok.join_latent_texts(tok.format_latents(val[i]["latents"])) for i in range(len(val))]
    return list(dict.fromkeys(texts))[:2]


def test_a_draw_has_n_images_each_with_its_z_its_seed_and_the_baseline_from_the_same_noise(editor: LatentEditor) -> None:
    settings = Settings(cfg_scale=2.0, num_steps=2, sampler="ddim", seed=3)
    draw = editor.draw(CONDITION, 3, settings)
    assert [s.seed for s in draw.samples] == [image_seed(3, i) for i in range(3)]
    assert len(set(s.seed for s in draw.samples)) == 3 and all(isinstance(s.latent, str) for s in draw.samples)
    # Each image is generate()'s for its seed alone: `sample --num_samples 1 --seed SEED` gives its pixels.
    for sample in draw.samples:
        again = editor.model.generate([CONDITION], seed=sample.seed, cfg_scale=2.0, sampler="ddim", num_steps=2)
        assert torch.equal(again.images[0], sample.image) and again.latent_texts == [sample.latent]
        assert editor.baseline is not None and sample.baseline is not None
        base = editor.baseline.generate([CONDITION], seed=sample.seed, cfg_scale=2.0, sampler="ddim", num_steps=2)
        assert torch.equal(base.images[0], sample.baseline)
    assert not torch.equal(draw.samples[0].image, draw.samples[1].image)
    shown = editor.picture(draw.samples[0].image, draw.samples[0].latent)
    assert shown.size == (editor.model.image_size * editor.upscale,) * 2 and shown.size[0] >= 256


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_an_edit_redraws_only_its_image_from_its_own_noise(editor: LatentEditor, latents: list[str], sampler: str) -> None:
    draw = editor.draw(CONDITION, 3, Settings(cfg_scale=3.0, num_steps=3, sampler=sampler))
    edited = editor.edit(draw, 1, latents[0])
    for index in (0, 2):  # the others: the same objects, the same pixels
        assert edited.samples[index] is draw.samples[index]
    new, old = edited.samples[1], draw.samples[1]
    assert new.seed == old.seed and new.latent == latents[0] and not torch.equal(new.image, old.image)
    assert new.baseline is old.baseline  # the baseline has no z to edit
    assert torch.equal(editor.edit(draw, 1, latents[0]).samples[1].image, new.image)  # the same edit, the same pixels
    # From the noise image 1 was drawn with (its seed), whichever sampler: the edit alone changed.
    expected = editor.model.generate([CONDITION], latents=[latents[0]], seed=old.seed, cfg_scale=3.0, sampler=sampler, num_steps=3)
    assert torch.equal(expected.images[0], new.image)
    # Another image's noise with the same z is another image; another z on the same noise, too.
    assert not torch.equal(editor.edit(draw, 0, latents[0]).samples[0].image, new.image)
    assert not torch.equal(editor.edit(edited, 1, latents[1]).samples[1].image, new.image)
    # At γ = 0 the denoiser sees neither c nor z: an edit leaves every pixel as it was only if the noise
    # (the initial noise and, for DDPM, each step's) is the same.
    unguided = editor.draw(CONDITION, 2, Settings(cfg_scale=0.0, num_steps=3, sampler=sampler))
    assert torch.equal(editor.edit(unguided, 1, latents[0]).samples[1].image, unguided.samples[1].image)


def test_the_guider_is_chosen_by_name_and_the_draw_keeps_it(editor: LatentEditor, latents: list[str]) -> None:
    assert editor.defaults().guider == "cfg"  # the checkpoint's sampling.guider (plain CFG here)
    plain = editor.draw(CONDITION, 1, Settings(cfg_scale=3.0, num_steps=3, sampler="ddim"))
    apg = editor.draw(CONDITION, 1, Settings(cfg_scale=3.0, num_steps=3, sampler="ddim", guider="apg"))
    expected = editor.model.generate([CONDITION], seed=plain.samples[0].seed, cfg_scale=3.0, sampler="ddim", num_steps=3, guider="apg")
    assert torch.equal(apg.samples[0].image, expected.images[0]) and not torch.equal(apg.samples[0].image, plain.samples[0].image)
    edited = editor.edit(apg, 0, latents[0])  # an edit redraws with the draw's guider
    again = editor.model.generate([CONDITION], latents=[latents[0]], seed=apg.samples[0].seed, cfg_scale=3.0, sampler="ddim",
                                  num_steps=3, guider="apg")
    assert torch.equal(edited.samples[0].image, again.images[0])
    with pytest.raises(ValueError, match="unknown guider"):
        editor.draw(CONDITION, 1, Settings(cfg_scale=3.0, num_steps=3, sampler="ddim", guider="nope"))


def test_a_latent_that_does_not_parse_is_its_types_message(editor: LatentEditor, latents: list[str]) -> None:
    draw = editor.draw(CONDITION, 2, Settings(cfg_scale=3.0, num_steps=2, sampler="ddim"))
    with pytest.raises(LatentParseError, match="at position 2") as error:
        editor.edit(draw, 0, BAD)
    assert editor.problem(BAD) == str(error.value) and editor.problem(latents[0]) is None
    shown = message(error.value)
    assert "at position 2" in shown and "\n  a pink circle\n    ^\n" in shown and "Traceback" not in shown
    with pytest.raises(ValueError, match="the condition is empty"):
        editor.draw("  ", 2, Settings(3.0, 2, "ddim"))
    with pytest.raises(ValueError, match=r"in 1\.\.8, got 9"):
        editor.draw(CONDITION, 9, Settings(3.0, 2, "ddim"))
    with pytest.raises(ValueError, match="there is no image 3"):
        editor.edit(draw, 2, latents[0])


def test_the_models_must_be_kaleido_and_a_baseline(checkpoints: tuple[Path, Path]) -> None:
    kaleido, baseline = checkpoints
    with pytest.raises(ValueError, match="must hold a Kaleido model"):
        LatentEditor.from_checkpoints(baseline)
    with pytest.raises(ValueError, match="must hold a baseline DiffusionModel"):
        LatentEditor.from_checkpoints(kaleido, kaleido)


def test_types_that_draw_are_drawn_over_the_image() -> None:
    data = ShapesDataModule(latents=[BoxLatent(grid=100)], shapes=ShapesConfig(resolution=16), num_train=8, num_val=8, num_test=8)
    editor = LatentEditor(Kaleido(tokenizer=data.tokenizer, **tiny_model_kwargs()))  # untrained: only pictures here
    image = torch.zeros(3, 16, 16)
    plain, boxed = editor.picture(image), editor.picture(image, "a red circle (10, 10, 60, 60)")
    assert plain.size == boxed.size and np.asarray(plain).tobytes() != np.asarray(boxed).tobytes()
    assert np.asarray(editor.picture(image, "no boxes here (")).tobytes() == np.asarray(plain).tobytes()


def test_a_missing_gradio_is_one_line_naming_the_extra(
    checkpoints: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now fails as if it were not installed
    with pytest.raises(MissingPackageError, match=r'pip install -e "\.\[demo\]"'):
        import_gradio()
    with pytest.raises(SystemExit, match=r'^error: the demo needs gradio: pip install -e "\.\[demo\]"'):
        main(["demo", "--ckpt_path", str(checkpoints[0])])


# -- a served page --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(editor: LatentEditor) -> Iterator[str]:
    if importlib.util.find_spec("gradio") is None:
        pytest.skip('gradio is not installed (pip install -e ".[demo]")')
    app = build_app(editor)
    _, url, _ = app.queue().launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield url
    app.close()


def _pixels(image: Any) -> bytes:
    """An image output of gradio_client (a path, or an update with its value) as raw pixels."""
    path = image["value"] if isinstance(image, dict) else image
    return np.asarray(Image.open(path).convert("RGB")).tobytes()


def test_the_page_through_gradio_client(served: str, latents: list[str]) -> None:
    from gradio_client import Client

    client = Client(served, verbose=False)
    outputs = client.predict(CONDITION, 2, 3.0, 2, 5, "ddim", api_name="/generate")
    note, slots = outputs[0], [outputs[1 + 4 * i : 5 + 4 * i] for i in range(2)]
    assert note == "" and all(slot[0]["label"] == f"Kaleido · seed {image_seed(5, i)}" for i, slot in enumerate(slots))
    first = client.predict(latents[0], api_name="/redraw_2")
    again = client.predict(latents[0], api_name="/redraw_2")
    assert first[1] == latents[0] and first[2] == ""  # the z as redrawn, and no complaint
    assert _pixels(first[0]) == _pixels(again[0]) != _pixels(slots[1][0])
    image, text, status = client.predict(BAD, api_name="/redraw_1")
    assert text == BAD and "at position 2" in status and "Traceback" not in status
    assert isinstance(image, dict) and "value" not in image  # the image stays as it was
    note = client.predict("", 2, 3.0, 2, 5, "ddim", api_name="/generate")[0]
    assert "the condition is empty" in note


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def test_the_page_in_headless_chromium(served: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("Playwright is not installed (pip install playwright; it drives the system's Chromium)")
    if (chromium := _chromium()) is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "page.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(served)
        page.get_by_label("condition c").fill(CONDITION)
        page.get_by_role("button", name="Generate").click()  # four images, the slider's default
        for name in ("kaleido", "baseline"):  # Gradio shows the outputs one by one: wait for each slot
            for n in range(1, 5):
                page.locator(f"#{name}-{n} img").wait_for(state="visible", timeout=60_000)
        shown = {name: sum(page.locator(f"#{name}-{n} img").is_visible() for n in range(1, 9)) for name in ("kaleido", "baseline")}
        page.locator("#z-2 textarea").fill(BAD)
        page.get_by_role("button", name="Redraw image 2 from the same noise").click()
        page.get_by_text("at position 2").wait_for(timeout=30_000)  # the message, on the page
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shown == {"kaleido": 4, "baseline": 4}
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[1] == 1400 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # a page with images, not a blank
