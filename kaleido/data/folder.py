"""A folder of real images as a LightningDataModule, with latents precomputed by ``kaleido extract``.

The layout (the common "image folder" one, see ``docs/data.md``)::

    ROOT/
      metadata.jsonl          {"file_name": "cats/001.jpg", "caption": "a cat asleep on a sofa"}
                              or {"file_name": "cats/001.jpg", "label": "tabby cat"}
      cats/001.jpg ...        the images (any format PIL reads), paths relative to ROOT
      latents/text.jsonl      sidecars, one per latent type, written by `python -m kaleido extract`:
      latents/box.jsonl       {"id": "cats/001.jpg", "latent": "<the type's editable text>"}

The file format itself (metadata, image transform, sidecars) lives in :mod:`kaleido.data.folder_format`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from kaleido.data.collate import make_loader
from kaleido.data.contract import KaleidoData
from kaleido.data.folder_format import (
    LATENTS_DIR,
    FolderDataError,
    FolderRecord,
    extract_command,
    image_problem,
    load_image,
    read_metadata,
    read_sidecar,
    sidecar_path,
)
from kaleido.latents import Extractor, LatentType, build_latent_type
from kaleido.tokenizer import KaleidoTokenizer, build_tokenizer


# -- the split -------------------------------------------------------------------------------------
def hash_fraction(file_name: str) -> float:
    """A number in [0, 1) fixed by the file name alone: the split never depends on order or on the
    other files, so adding images never moves an existing one between train and val."""
    digest = hashlib.sha1(file_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def folder_identity(root: Path, image_size: int, val_fraction: float, num_train: int) -> str:
    """The identity (data contract) of a folder's training images: the folder, the image size, the split
    and the training-set size. Shards of the folder keep it, so both share cached FID statistics."""
    settings = {"root": str(root.resolve()), "image_size": image_size, "val_fraction": val_fraction, "num_train": num_train}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"folder-{root.name}-{image_size}px-{digest}"


# -- the data set and module -----------------------------------------------------------------------
@dataclass(frozen=True)
class FolderItem:
    file_name: str
    condition: str
    latents: dict[str, Any]


class ImageFolderDataset(Dataset):
    """Items ``{"id", "image" [3, S, S] in [-1, 1], "condition", "latents": {type name: object}}``."""

    def __init__(self, root: str | Path, items: Sequence[FolderItem], image_size: int) -> None:
        self.root, self.items, self.image_size = Path(root), list(items), image_size

    def __len__(self) -> int:
        return len(self.items)

    def item_id(self, index: int) -> str:
        """Item ``index``'s id (its file name), without reading the image."""
        return self.items[index].file_name

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        image = load_image(self.root / item.file_name, self.image_size)
        return {"id": item.file_name, "image": image, "condition": item.condition, "latents": dict(item.latents)}


class ImageFolderDataModule(LightningDataModule, KaleidoData):
    """Real images from a folder (``metadata.jsonl`` + image files), with latents read from the
    sidecars ``latents/<type>.jsonl`` that ``python -m kaleido extract`` writes. See ``docs/data.md``.

    Args:
        root: the folder that holds ``metadata.jsonl``.
        latents: the latent types z (registered names, or instances / class_path entries in YAML);
            empty for the baseline. Each needs its sidecar.
        image_size: side of the square training images: every image is centre-cropped to its largest
            square, then resized (bicubic) to ``image_size``.
        val_fraction: share of the images held out for validation, chosen by a hash of the file name
            (deterministic, independent of order). With a positive fraction, at least one image.
        batch_size / num_workers: the loaders'.
        condition_template: for ``label`` metadata, the condition text, filled in with the record's
            fields (e.g. ``"a photo of a {label}"``); a ``caption`` is used as is.
        vocab_size: BPE merges of the prior's tokenizer, trained on the training split's texts.
        tokenizer_path: a ``tokenizer.json`` to load instead of training one.
        max_condition_length / max_latent_length: token limits; ``None`` derives them from the
            training data (longest + a margin).
        on_missing: an image without a latent in a sidecar, or a missing / unreadable image file:
            ``"raise"`` stops with the file name (and, for latents, the command that fills the sidecar);
            ``"skip"`` leaves it out and reports the count once.
        latents_dir: where the sidecars are (default ``ROOT/latents``), e.g. when the images are read-only.
        check_images: open every image's header while loading, so a missing or unreadable file is found
            before training starts (about a millisecond an image); when off, a bad file fails when a
            loader reaches it.
        pad_to_limits: pad token ids to the tokenizer's limits (one batch shape, for ``model.compile``).
        readers: per latent type name, the extractor that reads that type off an image of this data
            (usually the one that filled its sidecar, e.g. ``ForegroundBlobExtractor`` on digits): what
            adherence reads generated samples with (``latent_extractor``). A type without one is read by
            its own extractor, if it has one.
    """

    def __init__(
        self,
        root: str,
        latents: Sequence[str | LatentType] = (),
        image_size: int = 64,
        val_fraction: float = 0.01,
        batch_size: int = 64,
        num_workers: int = 0,
        condition_template: str = "{label}",
        vocab_size: int = 1024,
        tokenizer_path: str | None = None,
        max_condition_length: int | None = None,
        max_latent_length: int | None = None,
        on_missing: Literal["raise", "skip"] = "raise",
        latents_dir: str | None = None,
        check_images: bool = True,
        pad_to_limits: bool = False,
        readers: dict[str, Extractor] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if on_missing not in ("raise", "skip"):
            raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.root = Path(root)
        self.latent_types = [build_latent_type(spec) for spec in latents]
        self.image_size, self.val_fraction = image_size, val_fraction
        self.batch_size, self.num_workers = batch_size, num_workers
        self.condition_template = condition_template
        self.vocab_size, self.tokenizer_path = vocab_size, tokenizer_path
        self.max_condition_length, self.max_latent_length = max_condition_length, max_latent_length
        self.on_missing = on_missing
        self.latents_dir = Path(latents_dir) if latents_dir else self.root / LATENTS_DIR
        self.check_images = check_images
        self.pad_to_limits = pad_to_limits
        self.readers = dict(readers or {})
        unknown = sorted(set(self.readers) - {t.name for t in self.latent_types})
        if unknown:
            raise ValueError(f"readers name latent types this data does not serve: {unknown}; its types are {[t.name for t in self.latent_types]}")
        self.skipped: dict[str, list[str]] = {}  # reason → file names left out (on_missing="skip")
        self.unknown_ids: dict[str, int] = {}  # type name → sidecar ids not in metadata.jsonl (ignored, counted)
        self._splits: dict[str, list[FolderItem]] | None = None
        self._tokenizer: KaleidoTokenizer | None = None

    # -- reading the folder, once --------------------------------------------------------------
    def _problem(self, reason: str, file_names: list[str], advice: str) -> None:
        if not file_names:
            return
        if self.on_missing == "raise":
            shown = ", ".join(file_names[:5]) + (f" and {len(file_names) - 5} more" if len(file_names) > 5 else "")
            raise FolderDataError(f"{len(file_names)} image(s) of {self.root}: {reason}: {shown}. {advice}")
        self.skipped[reason] = file_names

    def _read_latents(self, records: list[FolderRecord]) -> dict[str, dict[str, Any]]:
        """file name → {type name: latent object}, for the records that have every type."""
        found: dict[str, dict[str, Any]] = {r.file_name: {} for r in records}
        for latent_type in self.latent_types:
            path = sidecar_path(self.latents_dir, latent_type)
            command = extract_command(self.root, latent_type, self.latents_dir)
            if not path.is_file():
                raise FolderDataError(f"no {latent_type.name!r} latents for {self.root}: {path} does not exist. Fill it with: {command}")
            sidecar = read_sidecar(path)
            if sidecar.partial is not None:
                rank_zero_warn(f"{path}: ignoring an unterminated last line (an interrupted extract); rerun: {command}")
            self.unknown_ids[latent_type.name] = len(set(sidecar.latents) - set(found))
            missing = []
            for record in records:
                entry = sidecar.latents.get(record.file_name)
                if entry is None:
                    missing.append(record.file_name)
                    continue
                number, text = entry
                try:
                    found[record.file_name][latent_type.name] = latent_type.parse(text)
                except ValueError as error:  # LatentParseError: the sidecar was edited or made by another version
                    raise FolderDataError(f"{path}, line {number} (image {record.file_name!r}): {error}") from None
            self._problem(
                f"no latent in {path}", missing,
                f"Fill the sidecar with: {command} (it skips the images already done), or pass on_missing='skip'",
            )
        return {name: z for name, z in found.items() if len(z) == len(self.latent_types)}

    def load(self) -> dict[str, list[FolderItem]]:
        """Read metadata, sidecars (and image headers): the items of the ``train`` and ``val`` splits."""
        if self._splits is not None:
            return self._splits
        self.skipped, self.unknown_ids = {}, {}
        records = read_metadata(self.root, self.condition_template)
        latents = self._read_latents(records)
        records = [r for r in records if r.file_name in latents]
        if self.check_images:
            problems = {r.file_name: image_problem(self.root / r.file_name) for r in records}
            bad = [name for name, problem in problems.items() if problem]
            self._problem(
                "missing or unreadable image files", [f"{name} ({problems[name]})" for name in bad],
                "Fix or remove them from metadata.jsonl, or pass on_missing='skip'",
            )
            records = [r for r in records if not problems[r.file_name]]
        items = [FolderItem(r.file_name, r.condition, latents[r.file_name]) for r in records]
        fractions = [hash_fraction(item.file_name) for item in items]
        val = [item for item, u in zip(items, fractions) if u < self.val_fraction]
        if not val and self.val_fraction > 0 and len(items) > 1:  # a tiny folder: hold out the lowest hash
            val = [items[int(np.argmin(fractions))]]
        val_names = {item.file_name for item in val}
        train = [item for item in items if item.file_name not in val_names]
        if not train:
            raise FolderDataError(f"{self.root}: no training images left (of {len(records)} usable, {len(val)} went to val)")
        if self.skipped:
            counts = ", ".join(f"{len(names)} with {reason}" for reason, names in self.skipped.items())
            rank_zero_warn(f"ImageFolderDataModule({self.root}): skipped {sum(map(len, self.skipped.values()))} image(s): {counts}")
        self._splits = {"train": train, "val": val}
        return self._splits

    def setup(self, stage: str | None = None) -> None:  # noqa: ARG002 - same data for every stage
        self.load()

    def dataset(self, split: Literal["train", "val"]) -> ImageFolderDataset:
        splits = self.load()
        if split not in splits:
            raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
        return ImageFolderDataset(self.root, splits[split], self.image_size)

    # -- the data contract ---------------------------------------------------------------------
    def images(self, split: Literal["train", "val"]) -> ImageFolderDataset:
        return self.dataset(split)

    def conditions(self, split: Literal["train", "val"], count: int | None = None) -> list[str]:
        return [item.condition for item in self.load()[split][:count]]

    def identity(self) -> str:
        """The folder, the image size, the split and the training-set size: what fixes its images."""
        return folder_identity(self.root, self.image_size, self.val_fraction, len(self.load()["train"]))

    def ground_truth(self, split: Literal["train", "val"], latent_type: LatentType, count: int | None = None) -> list[Any] | None:
        """The sidecar latents of the split's items (what training reads)."""
        if latent_type not in self.latent_types:
            return None
        return [item.latents[latent_type.name] for item in self.load()[split][:count]]

    def latent_extractor(self, latent_type: LatentType) -> Extractor | None:
        """The ``readers`` entry of the type, if one was given."""
        return self.readers.get(latent_type.name)

    @property
    def tokenizer(self) -> KaleidoTokenizer:
        """The prior's tokenizer: trained on the training split's texts (or loaded), limits checked."""
        if self._tokenizer is None:
            texts = [(item.condition, {t.name: t.format(item.latents[t.name]) for t in self.latent_types}) for item in self.load()["train"]]
            self._tokenizer = build_tokenizer(
                texts, self.latent_types, self.vocab_size, self.tokenizer_path,
                self.max_condition_length, self.max_latent_length,
            )
        return self._tokenizer

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.dataset("train"), self.tokenizer, self.batch_size, self.num_workers, True, self.pad_to_limits)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.dataset("val"), self.tokenizer, self.batch_size, self.num_workers, False, self.pad_to_limits)


__all__ = ["ImageFolderDataModule", "ImageFolderDataset", "folder_identity"]
