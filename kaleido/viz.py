"""Turning samples into pictures (shared by the CLI, TensorBoard and the notebooks): uint8 conversion and
grids; latents drawn over images by their types' ``draw`` hooks; captions and labelled grids. PIL only,
no plotting library."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

from kaleido.latents import LatentType, implements
from kaleido.latents.drawing import Color
from kaleido.tokenizer import read_latent_segments

WHITE, BLACK = (255, 255, 255), (0, 0, 0)


# -- tensors → pixels -----------------------------------------------------------------------------
def to_uint8(images: Tensor) -> Tensor:
    """[..., 3, H, W] in [-1, 1] → uint8 in [0, 255]."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(image: Tensor, upscale: int = 1) -> Image.Image:
    """[3, H, W] in [-1, 1] → an RGB image, ``upscale`` times larger (nearest: pixels stay sharp)."""
    picture = Image.fromarray(to_uint8(image).permute(1, 2, 0).cpu().numpy())
    return (
        picture.resize((picture.width * upscale, picture.height * upscale), Image.NEAREST) if upscale > 1 else picture
    )


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 2, upscale: int = 1) -> Tensor:
    """[N, 3, H, W] in [-1, 1] → one uint8 grid [3, H', W'], nearly square unless ``nrow`` is given."""
    if upscale > 1:
        images = torch.nn.functional.interpolate(images.float(), scale_factor=upscale, mode="nearest")
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images))))
    return make_grid(to_uint8(images), nrow=nrow, padding=padding, pad_value=255)


def save_grid(images: Tensor, path: str, nrow: int | None = None, upscale: int = 1) -> None:
    Image.fromarray(image_grid(images, nrow, upscale=upscale).permute(1, 2, 0).numpy()).save(path)


# -- latents over images --------------------------------------------------------------------------
def draws(latent_type: LatentType) -> bool:
    """Whether the type draws its latents over images (its ``draw`` hook)."""
    return implements(latent_type, "draw")


def draw_latent(image: Image.Image, latent_type: LatentType, latent: str | object) -> Image.Image:
    """A copy of ``image`` with a latent (its text or its object) drawn over it by the type's ``draw``
    hook; a type without one, and text that does not parse, leave it unchanged."""
    image = image.copy()
    if not draws(latent_type):
        return image
    try:
        latent_type.draw(image, latent_type.parse(latent) if isinstance(latent, str) else latent)
    except (ValueError, TypeError):  # LatentParseError: a sampled z need not parse
        pass
    return image


def draw_latents(image: Image.Image, latent_text: str, latent_types: Sequence[LatentType]) -> Image.Image:
    """:func:`draw_latent` for every segment of a joined editable z."""
    segments = read_latent_segments(latent_text, [t.name for t in latent_types])
    for latent_type in latent_types:
        if segments[latent_type.name] is not None:
            image = draw_latent(image, latent_type, segments[latent_type.name])
    return image


# -- captions and grids ---------------------------------------------------------------------------
def text_band(text: str, width: int, background: Color = WHITE, color: Color = BLACK) -> Image.Image:
    """``text`` wrapped to ``width`` pixels (existing line breaks kept) on a band of its own height."""
    font = ImageFont.load_default()
    sample = "abcdefghijklmnopqrstuvwxyz0123456789"
    chars = max(1, int(width / (font.getlength(sample) / len(sample))) - 1)
    lines = [part for line in text.split("\n") for part in (textwrap.wrap(line, chars) or [""])]
    left, top, _, bottom = font.getbbox("Hg")
    line_height = bottom - top + 3
    band = Image.new("RGB", (width, line_height * len(lines) + 4), background)
    draw = ImageDraw.Draw(band)
    for row, line in enumerate(lines):
        draw.text((2 - left, 2 - top + row * line_height), line, fill=color, font=font)
    return band


def caption(image: Image.Image, text: str, width: int | None = None) -> Image.Image:
    """``image`` (centred, on white) with ``text`` wrapped under it, ``width`` pixels wide at least."""
    width = max(image.width, width or 0)
    band = text_band(text, width) if text else Image.new("RGB", (width, 0))
    out = Image.new("RGB", (width, image.height + band.height), WHITE)
    out.paste(image, ((width - image.width) // 2, 0))
    out.paste(band, (0, image.height))
    return out


def labelled_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    title: str | None = None,
    label_width: int | None = None,
    padding: int = 4,
) -> Image.Image:
    """Images in rows of ``ncols`` (nearly square by default), each captioned with its label (wrapped to
    ``label_width`` pixels or the image's width), under an optional title, on white."""
    if not images:
        raise ValueError("labelled_grid needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    cells = [caption(image, labels[i] if labels else "", label_width) for i, image in enumerate(images)]
    ncols = ncols or max(1, math.ceil(math.sqrt(len(cells))))
    nrows = math.ceil(len(cells) / ncols)
    cell_w, cell_h = max(c.width for c in cells), max(c.height for c in cells)
    width = ncols * cell_w + (ncols + 1) * padding
    head = text_band(title, width) if title else Image.new("RGB", (width, 0))
    grid = Image.new("RGB", (width, head.height + nrows * cell_h + (nrows + 1) * padding), WHITE)
    grid.paste(head, (0, 0))
    for i, cell in enumerate(cells):
        row, col = divmod(i, ncols)
        grid.paste(cell, (padding + col * (cell_w + padding), head.height + padding + row * (cell_h + padding)))
    return grid


def side_by_side(
    images: Sequence[Image.Image], labels: Sequence[str] | None = None, title: str | None = None
) -> Image.Image:
    """One row of labelled images (e.g. before / after an edit, or Kaleido beside the baseline)."""
    return labelled_grid(images, labels, ncols=len(images), title=title)


def samples_grid(
    images: Tensor,
    latent_texts: Sequence[str] | None = None,
    latent_types: Sequence[LatentType] = (),
    ncols: int | None = None,
    upscale: int = 4,
    captions: bool = True,
    title: str | None = None,
) -> Image.Image:
    """Generated images ([N, 3, H, W] in [-1, 1]) upscaled, each with its z drawn over it (types with a
    ``draw`` hook: boxes, blobs) and (if ``captions``) its editable z written under it."""
    pictures = [to_pil(image, upscale) for image in images]
    if latent_texts is not None:
        pictures = [draw_latents(p, z, latent_types) for p, z in zip(pictures, latent_texts)]
    labels = list(latent_texts) if captions and latent_texts is not None else None
    width = max(160, pictures[0].width) if labels else None  # a z needs room to be readable
    return labelled_grid(pictures, labels, ncols, title, label_width=width)
