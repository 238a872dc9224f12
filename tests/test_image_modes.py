"""Every image mode PIL decodes reaches training as the 8-bit RGB a person would see (load_image / to_rgb)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kaleido.data.folder_format import UnreadableImageError, load_image


def _pixels(path: Path) -> np.ndarray:
    """load_image's [3, H, W] in [-1, 1] back to uint8 [H, W, 3]."""
    return ((load_image(path) + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1024).astype(np.uint16)  # 0 .. 64,512
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = _pixels(tmp_path / "deep.png")
    assert (pixels[..., 0] == pixels[..., 2]).all()
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert np.abs(pixels[..., 0].astype(int) - expected).max() <= 1  # PIL's own convert("RGB") gives ~all white
    assert pixels.mean() < 140


def test_transparency_palette_and_cmyk(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:4] = (200, 30, 30, 255)  # opaque red on top, fully transparent (stored black) below
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    pixels = _pixels(tmp_path / "alpha.png")
    assert (pixels[:4] == (200, 30, 30)).all() and (pixels[4:] == 255).all()  # transparency over white

    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[:, :4] = (10, 120, 240)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "palette.png")
    assert (_pixels(tmp_path / "palette.png") == rgb).all()

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    assert np.abs(_pixels(tmp_path / "cmyk.tif").astype(int) - rgb).max() <= 2


def test_float_images_are_refused_by_name(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F").save(tmp_path / "float.tif")
    with pytest.raises(UnreadableImageError, match=r"float\.tif: 32-bit float pixels"):
        load_image(tmp_path / "float.tif")
