"""``python -m kaleido demo``: a local web app to read Kaleido's latents, edit them and draw the image
again from the same noise (Gradio, the ``demo`` extra; docs/demo.md).

Each image of a draw has a seed of its own (:func:`image_seed`), and ``generate`` with one condition and
that seed fixes both its diffusion noise and its sampled z. So an edited z redraws that image, and only it,
from the noise it was first drawn with; the baseline draws from the same noise for its image beside it; and
``python -m kaleido sample --num_samples 1 --seed SEED [--latent Z]`` gives the same pixels.

The app's logic is :class:`LatentEditor` (plain functions on tensors and strings, tested without a
browser); :func:`build_app` only lays it out and turns a bad input into a message on the page.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from PIL import Image
from torch import Tensor

from kaleido.checkpoint import Weights, load
from kaleido.class_paths import MissingPackageError
from kaleido.devices import resolve_device
from kaleido.diffusion.guiders import GUIDERS, build_guider
from kaleido.modules.base import ConditionalDiffusion, Generation
from kaleido.modules.settings import SamplingSettings
from kaleido.viz import draw_latents, to_pil

INSTALL = 'pip install -e ".[demo]"  (gradio)'
MAX_IMAGES = 8  # image slots laid out on the page; also the stride between the seeds of two draws
DISPLAY_SIDE = 256  # images are shown upscaled (nearest: pixels stay sharp) to at least this many pixels
SAMPLERS: tuple[str, ...] = typing.get_args(typing.get_type_hints(SamplingSettings)["sampler"])  # one list: the settings'


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of the draw with ``seed``: draws with other seeds share no image."""
    return seed * MAX_IMAGES + index


@dataclass(frozen=True)
class Settings:
    """The sampling controls. They hold for a whole draw: redrawing one edited image keeps its draw's
    settings, so what changes is the edit alone."""

    cfg_scale: float
    num_steps: int
    sampler: str
    seed: int = 0
    guider: str = "cfg"  # a registered guider's name, at its default settings (or the checkpoint's own)


@dataclass(frozen=True)
class Sample:
    seed: int  # generate()'s seed for this image alone: its diffusion noise and its sampled z
    latent: str  # the editable z it was drawn from
    image: Tensor  # [3, H, W] in [-1, 1]
    baseline: Tensor | None = None  # the baseline's image for the same condition and noise


@dataclass(frozen=True)
class Draw:
    condition: str
    settings: Settings
    samples: tuple[Sample, ...]


class LatentEditor:
    """Kaleido (and optionally a baseline) behind the page: draw, edit, picture, explain."""

    def __init__(self, model: ConditionalDiffusion, baseline: ConditionalDiffusion | None = None) -> None:
        if not model.uses_latents:
            raise ValueError(
                "the demo edits latents: --ckpt_path must hold a Kaleido model, not a baseline "
                "(give that as --baseline_ckpt_path)"
            )
        if baseline is not None and baseline.uses_latents:
            raise ValueError("--baseline_ckpt_path must hold a baseline DiffusionModel, not a Kaleido model")
        if baseline is not None and baseline.image_size != model.image_size:
            raise ValueError(
                f"the baseline draws {baseline.image_size} px images and Kaleido {model.image_size} px: "
                "the same seed gives the same noise only at one size"
            )
        self.model, self.baseline = model, baseline
        self.upscale = max(1, math.ceil(DISPLAY_SIDE / model.image_size))

    @classmethod
    def from_checkpoints(
        cls, ckpt_path: Path, baseline_ckpt_path: Path | None = None, device: str = "cpu", weights: Weights = "averaged"
    ) -> LatentEditor:
        def read(path: Path) -> ConditionalDiffusion:
            return load(path, map_location=device, expected=ConditionalDiffusion, weights=weights)

        return cls(read(ckpt_path), None if baseline_ckpt_path is None else read(baseline_ckpt_path))

    def defaults(self) -> Settings:
        sampling = self.model.sampling
        return Settings(sampling.cfg_scale, sampling.num_steps, sampling.sampler, guider=build_guider(sampling.guider).name)

    def draw(self, condition: str, count: int, settings: Settings) -> Draw:
        """``count`` images for ``condition``, each with a z sampled from the prior (and the baseline's
        image from the same noise when there is a baseline)."""
        if not condition.strip():
            raise ValueError("the condition is empty: type the text to condition on, e.g. a circle")
        if not 1 <= count <= MAX_IMAGES:
            raise ValueError(f"the number of images must be in 1..{MAX_IMAGES}, got {count}")
        samples = []
        for seed in (image_seed(settings.seed, index) for index in range(count)):
            out = self._generate(self.model, condition, seed, None, settings)
            assert out.latent_texts is not None  # a Kaleido model (checked on construction) writes its z
            baseline = None if self.baseline is None else self._generate(self.baseline, condition, seed, None, settings)
            samples.append(Sample(seed, out.latent_texts[0], out.images[0], None if baseline is None else baseline.images[0]))
        return Draw(condition, settings, tuple(samples))

    def edit(self, draw: Draw, index: int, latent: str) -> Draw:
        """``draw`` with image ``index`` drawn again from ``latent`` and its own noise; the others as they
        were. A latent that does not parse raises its type's ``LatentParseError`` (a ValueError that names
        the position) before anything is drawn."""
        if not 0 <= index < len(draw.samples):
            raise ValueError(f"there is no image {index + 1}: the draw has {len(draw.samples)}")
        self.model.tokenizer.split_latent_text(latent)  # generate checks it too, after encoding c: fail first
        old = draw.samples[index]
        out = self._generate(self.model, draw.condition, old.seed, latent, draw.settings)
        assert out.latent_texts is not None
        new = replace(old, latent=out.latent_texts[0], image=out.images[0])  # the baseline has no z: it stays
        return replace(draw, samples=(*draw.samples[:index], new, *draw.samples[index + 1 :]))

    @staticmethod
    def _generate(
        model: ConditionalDiffusion, condition: str, seed: int, latent: str | None, settings: Settings
    ) -> Generation:
        own = model.sampling.guider  # the checkpoint's guider keeps its own settings when its name is chosen
        return model.generate(
            [condition], latents=None if latent is None else [latent], seed=seed,
            cfg_scale=settings.cfg_scale, sampler=settings.sampler, num_steps=settings.num_steps,
            guider=own if build_guider(own).name == settings.guider else settings.guider,
        )

    def picture(self, image: Tensor, latent: str | None = None) -> Image.Image:
        """An image as shown: upscaled, with ``latent`` drawn over it by the types that draw."""
        picture = to_pil(image, self.upscale)
        return picture if latent is None else draw_latents(picture, latent, self.model.tokenizer.latent_types)

    def problem(self, latent: str) -> str | None:
        """Why ``latent`` does not parse (its type's message, which names the position), or ``None``."""
        try:
            self.model.tokenizer.split_latent_text(latent)
        except ValueError as error:
            return str(error)
        return None


def message(error: str | BaseException, lead: str = "Error") -> str:
    """Markdown for the page: a ``LatentParseError`` points at the position under the text, so it keeps
    its lines and a fixed-width font."""
    return f"**{lead}:**\n```\n{error}\n```"


# -- the page: Gradio, kept thin --------------------------------------------------------------------
def import_gradio() -> ModuleType:
    try:
        import gradio
    except ModuleNotFoundError:
        raise MissingPackageError(f"the demo needs gradio: {INSTALL}") from None
    return gradio


@dataclass
class _Slot:
    """The components of one image on the page."""

    column: Any
    image: Any
    baseline: Any
    latent: Any
    redraw: Any
    status: Any


def build_app(editor: LatentEditor, title: str = "Kaleido: latent editor") -> Any:
    """The Gradio page over ``editor``: ``Generate`` (API name ``generate``) and each image's
    ``Redraw`` (``redraw_1`` .. ``redraw_8``). Bad input becomes a message on the page."""
    gr = import_gradio()
    defaults = editor.defaults()
    # One model serves every event: one at a time (generate switches it to eval and back).
    queue = {"concurrency_limit": 1, "concurrency_id": "model"}

    def slot_values(editor_draw: Draw, index: int) -> list[Any]:
        sample = editor_draw.samples[index]
        problem = editor.problem(sample.latent)
        baseline = None if sample.baseline is None else editor.picture(sample.baseline)
        return [
            gr.update(visible=True),
            gr.update(value=editor.picture(sample.image, sample.latent), label=f"Kaleido · seed {sample.seed}"),
            gr.update(value=baseline, label=f"baseline · seed {sample.seed}"),
            sample.latent,
            "" if problem is None else message(problem, "This z does not parse"),
        ]

    def generate(
        condition: str, count: float, cfg_scale: float, num_steps: float, seed: float, sampler: str, guider: str = "cfg"
    ) -> list[Any]:
        try:
            settings = Settings(float(cfg_scale), int(num_steps), sampler, int(seed), guider)
            result = editor.draw(condition, int(count), settings)
        except ValueError as error:  # bad input: said on the page, the images stay
            return [gr.update(), message(error), *[gr.update()] * (5 * MAX_IMAGES)]
        slots = [
            value
            for index in range(MAX_IMAGES)
            for value in (slot_values(result, index) if index < len(result.samples) else [gr.update(visible=False)] + [gr.update()] * 4)
        ]
        return [result, "", *slots]

    def redraw(index: int, current: Draw | None, latent: str) -> list[Any]:
        if current is None:
            return [current, gr.update(), gr.update(), "Press **Generate** first."]
        try:
            result = editor.edit(current, index, latent)
        except ValueError as error:  # LatentParseError: its message, with the position
            return [current, gr.update(), latent, message(error, "This z does not parse")]
        _, image, _, text, status = slot_values(result, index)
        return [result, image, text, status]

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(
            f"# {title}\nA condition → images, each with the latent z the prior wrote for it, drawn over it "
            "where its type draws. Edit a z and press **Redraw**: the image is drawn again from the same noise."
        )
        with gr.Row():
            condition = gr.Textbox(label="condition c", placeholder="a circle", scale=3)
            count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="images")
            run = gr.Button("Generate", variant="primary")
        with gr.Row():
            cfg_scale = gr.Slider(0, 15, value=defaults.cfg_scale, step=0.5, label="CFG scale γ")
            num_steps = gr.Slider(1, editor.model.schedule.num_timesteps, value=defaults.num_steps, step=1, label="sampler steps")
            seed = gr.Slider(0, 10_000, value=0, step=1, label="seed")
            sampler = gr.Dropdown(list(SAMPLERS), value=defaults.sampler, label="sampler")
            guider = gr.Dropdown(sorted(GUIDERS), value=defaults.guider, label="guider (docs/sampling.md)")
        note = gr.Markdown()
        state = gr.State(None)
        slots: list[_Slot] = []
        per_row = 2 if editor.baseline is not None else 4  # with the baseline, each slot holds two images
        for first in range(0, MAX_IMAGES, per_row):
            with gr.Row():
                for index in range(first, first + per_row):
                    with gr.Column(visible=False, min_width=300) as column:
                        with gr.Row():
                            image = gr.Image(
                                type="pil", format="png", label="Kaleido", interactive=False, elem_id=f"kaleido-{index + 1}"
                            )
                            baseline = gr.Image(
                                type="pil", format="png", label="baseline", interactive=False,
                                visible=editor.baseline is not None, elem_id=f"baseline-{index + 1}",
                            )
                        latent = gr.Textbox(label=f"z of image {index + 1} (editable)", lines=3, elem_id=f"z-{index + 1}")
                        button = gr.Button(f"Redraw image {index + 1} from the same noise")
                        status = gr.Markdown()
                    slots.append(_Slot(column, image, baseline, latent, button, status))
        outputs = [c for slot in slots for c in (slot.column, slot.image, slot.baseline, slot.latent, slot.status)]
        inputs = [condition, count, cfg_scale, num_steps, seed, sampler, guider]
        run.click(generate, inputs, [state, note, *outputs], api_name="generate", **queue)
        condition.submit(generate, inputs, [state, note, *outputs], api_name=False, **queue)
        for index, slot in enumerate(slots):
            slot.redraw.click(
                partial(redraw, index), [state, slot.latent], [state, slot.image, slot.latent, slot.status],
                api_name=f"redraw_{index + 1}", **queue,
            )
    return app


def demo(
    ckpt_path: Path,
    baseline_ckpt_path: Path | None = None,
    port: int = 7860,
    host: str = "127.0.0.1",
    device: str = "auto",
    weights: Weights = "averaged",
) -> None:
    """Serve the latent editor at http://HOST:PORT until interrupted (docs/demo.md).

    Args:
        ckpt_path: a Kaleido checkpoint.
        baseline_ckpt_path: a baseline DiffusionModel checkpoint at the same image size: its image for the
            same condition and noise is shown beside each of Kaleido's.
        port: the local port.
        host: the address to listen on; the default serves this machine only.
        device: "auto" (CUDA if available), "cpu" or "cuda[:N]".
        weights: "averaged" (the EMA average when trained with it) or "trained" (``kaleido.load``).
    """
    import_gradio()  # a missing extra fails at once, in one line, before any checkpoint is read
    editor = LatentEditor.from_checkpoints(ckpt_path, baseline_ckpt_path, resolve_device(device), weights)
    build_app(editor).queue().launch(server_name=host, server_port=port)


__all__ = ["Draw", "LatentEditor", "Sample", "Settings", "build_app", "demo", "image_seed", "message"]
