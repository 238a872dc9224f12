"""The on-disk format of an image folder: ``metadata.jsonl``, the images, and the latent sidecars
``latents/<type>.jsonl`` (see ``docs/data.md``). Shared by :mod:`kaleido.data.folder` (training) and
:mod:`kaleido.extract` (writing sidecars), so both see the same conditions and pixels.
"""

from __future__ import annotations

import json
import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps

from kaleido.latents import LatentType, latent_type_class

METADATA = "metadata.jsonl"
LATENTS_DIR = "latents"


class FolderDataError(ValueError):
    """Bad or incomplete folder data (metadata, sidecars, images); the message names the file and line."""


class UnreadableImageError(FolderDataError):
    """An image file that is missing or that PIL cannot decode."""


# -- images ----------------------------------------------------------------------------------------
def to_rgb(image: Image.Image, path: str | Path = "image") -> Image.Image:
    """8-bit RGB of any mode PIL decodes: 16-bit greyscale scaled (not clipped: PIL's own conversion
    turns it almost white), transparency composited over white (what lies under a transparent pixel is
    arbitrary), palette and CMYK through PIL. Float images are refused by name."""
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit greyscale (PNG), 0..65535
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "F":
        raise UnreadableImageError(f"cannot read image {path}: 32-bit float pixels (mode F) have no fixed range; save it as 8- or 16-bit")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path | IO[bytes], size: int | None = None, name: str | None = None) -> torch.Tensor:
    """An image file (or its encoded bytes as a file object, as shards hold them) → float ``[3, S, S]``
    in ``[-1, 1]``: EXIF orientation applied, converted to RGB (:func:`to_rgb`: 16-bit scaled,
    transparency over white), centre-cropped to the largest square, then resized to ``size`` (bicubic,
    antialiased when shrinking) unless ``size`` is ``None``. ``name`` is what errors call the image
    (default: ``path``).

    Extraction and training (from a folder or from shards) all go through this function, so geometric
    latents (boxes, blobs) are measured on exactly the square crop the model is trained on.
    """
    name = str(path) if name is None else name
    try:
        with Image.open(path) as opened:
            image = to_rgb(ImageOps.exif_transpose(opened), name)  # decodes: a corrupt body fails here
    except UnreadableImageError:
        raise
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise UnreadableImageError(f"cannot read image {name}: {type(error).__name__}: {error}") from error
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if size is not None and side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    return pixels.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable image, from its header only (cheap); ``None`` if it looks fine."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path):
            pass
    except Exception as error:  # noqa: BLE001 - any failure means the same thing here: unreadable
        return f"unreadable ({type(error).__name__}: {error})"
    return None


# -- metadata --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FolderRecord:
    """One line of ``metadata.jsonl``: the image's path relative to the root, its condition text, and
    all the line's fields (what metadata-reading extractors see)."""

    file_name: str
    condition: str
    line: int
    fields: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; malformed lines are errors."""
    records = []
    with open(path, "rb") as lines:  # decoded line by line, so a bad byte is reported with its line
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise FolderDataError(f"{path}, line {number}: not UTF-8 text (byte {error.start + 1}: {raw[error.start:error.start + 1]!r})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise FolderDataError(f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise FolderDataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
            records.append((number, record))
    return records


def condition_of(record: dict[str, Any], template: str, where: str) -> str:
    """The condition text of a metadata record: its ``caption`` as is, else ``template`` filled in with
    the record's fields (``"{label}"``, ``"a photo of a {label}"``, ``"{class_name}"``...)."""
    if "caption" in record:
        caption = record["caption"]
        if not isinstance(caption, str) or not caption.strip():
            raise FolderDataError(f"{where}: 'caption' must be a non-empty string, got {caption!r}")
        return caption
    if "label" not in record:
        raise FolderDataError(f"{where}: needs a 'caption' or a 'label' field, got fields {sorted(record)}")
    try:
        condition = template.format(**record)
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as error:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        raise FolderDataError(
            f"{where}: condition_template {template!r} (fields {fields}) cannot be filled from {sorted(record)}: {error!r}"
        ) from None
    if not condition.strip():
        raise FolderDataError(f"{where}: the condition from template {template!r} is empty")
    return condition


def read_metadata(root: str | Path, condition_template: str = "{label}") -> list[FolderRecord]:
    """The records of ``ROOT/metadata.jsonl``, in file order; every problem names the line."""
    path = Path(root) / METADATA
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: an image folder needs a metadata.jsonl with one line per image, "
            '{"file_name": "<path relative to the folder>", "caption": "..."} (or "label" instead of "caption")'
        )
    records: list[FolderRecord] = []
    seen: dict[str, int] = {}
    for number, record in _json_lines(path):
        where = f"{path}, line {number}"
        file_name = record.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise FolderDataError(f"{where}: needs a 'file_name' string (the image path relative to {path.parent}), got {record}")
        if file_name in seen:
            raise FolderDataError(f"{where}: file_name {file_name!r} is already listed on line {seen[file_name]}")
        seen[file_name] = number
        records.append(FolderRecord(file_name, condition_of(record, condition_template, where), number, record))
    if not records:
        raise FolderDataError(f"{path} lists no images")
    return records


# -- sidecars --------------------------------------------------------------------------------------
def sidecar_path(latents_dir: str | Path, latent_type: LatentType | str) -> Path:
    name = latent_type if isinstance(latent_type, str) else latent_type.name
    return Path(latents_dir) / f"{name}.jsonl"


# one process's share of a sidecar (``extract --num_parts N --part I``), joined into it by ``extract --merge``
PART_FILE = re.compile(r"(?P<type>.+)\.part-(?P<index>\d+)-of-(?P<count>\d+)\.jsonl")


def part_path(latents_dir: str | Path, latent_type: LatentType | str, index: int, count: int) -> Path:
    return sidecar_path(latents_dir, latent_type).with_suffix(f".part-{index}-of-{count}.jsonl")


def errors_path(sidecar: Path) -> Path:
    """The failures logged beside a sidecar or a part of one: ``<type>[.part-I-of-N].errors.jsonl``."""
    return sidecar.with_suffix(".errors.jsonl")


def is_sidecar(path: Path) -> bool:
    """A ``<type>.jsonl`` sidecar, not an errors log or an unmerged part."""
    return path.suffix == ".jsonl" and not path.name.endswith(".errors.jsonl") and PART_FILE.fullmatch(path.name) is None


@dataclass
class Sidecar:
    """What a sidecar file holds.

    Attributes:
        latents: id → (line number, editable text); the last line of an id wins (a hand-corrected
            line may be appended).
        good_bytes: length of the file up to the end of its last complete line.
        partial: the unterminated, unreadable tail of an interrupted write (dropped), or ``None``.
        needs_newline: the last line is complete JSON but lacks its newline (e.g. a hand edit).
    """

    latents: dict[Any, tuple[int, str]] = field(default_factory=dict)
    good_bytes: int = 0
    partial: str | None = None
    needs_newline: bool = False


def read_sidecar(path: str | Path) -> Sidecar:
    """Read a ``latents/<type>.jsonl`` sidecar. Each write ends with a newline, so an unterminated last
    line that does not parse is a write cut short: it is reported in ``partial``, not an error. Any
    other malformed line is an error naming the line."""
    sidecar = Sidecar()
    path = Path(path)
    if not path.exists():
        return sidecar
    data = path.read_bytes()
    offset = 0
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        complete = raw.endswith(b"\n")
        try:
            record = json.loads(raw.decode("utf-8")) if raw.strip() else None
            if record is not None and not (
                isinstance(record, dict) and isinstance(record.get("id"), (str, int)) and not isinstance(record["id"], bool)
                and isinstance(record.get("latent"), str)
            ):
                raise ValueError(f'expected {{"id": <file name or index>, "latent": "<text>"}}, got {raw.decode("utf-8").strip()[:200]}')
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if not complete:
                sidecar.partial = raw.decode("utf-8", errors="replace")
                break
            raise FolderDataError(f"{path}, line {number}: {error}") from None
        offset += len(raw)
        sidecar.needs_newline = not complete
        if record is not None:
            sidecar.latents[record["id"]] = (number, record["latent"])
    sidecar.good_bytes = offset
    return sidecar


def extract_command(root: str | Path, latent_type: LatentType, latents_dir: Path | None = None) -> str:
    """The shell command that fills the sidecar of ``latent_type`` for the folder ``root``."""
    try:
        by_name = latent_type_class(latent_type.name)() == latent_type
    except (KeyError, TypeError):  # a class_path-only plugin, or one without defaults
        by_name = False
    latent = latent_type.name if by_name else json.dumps(latent_type.spec())
    command = f"python -m kaleido extract --folder {shlex.quote(str(root))} --latent {shlex.quote(latent)}"
    if latents_dir is not None and latents_dir != Path(root) / LATENTS_DIR:
        command += f" --output {shlex.quote(str(latents_dir))}"
    return command
