"""Shards of an image folder, streamed with ``litdata`` (``docs/scale.md``): the same items as
:class:`~kaleido.data.folder.ImageFolderDataModule`, read from a few large files instead of one file per
image, split across ranks and loader workers, resumable mid-epoch from a Lightning checkpoint.

``python -m kaleido shard`` (:mod:`kaleido.shard`) writes them::

    SHARDS/
      kaleido_shards.json     the manifest: source folder, split, latent types (specs), item counts
      train/ val/             litdata datasets (index.json + chunk-*.bin): per item the image file's
                              bytes as stored, its condition, its metadata line and each type's latent text
      train.texts.jsonl       per split, in shard order: id, condition, latent texts, so that the
      val.texts.jsonl         tokenizer, ``conditions`` and ``ground_truth`` never read an image

Why litdata rather than webdataset: ``docs/choices.md``, "Shards (issue 20)".
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from kaleido.class_paths import MissingPackageError
from kaleido.data.collate import Collate, make_loader
from kaleido.data.contract import KaleidoData
from kaleido.data.folder import folder_identity
from kaleido.data.folder_format import FolderDataError, load_image
from kaleido.data.sampler import default_seed
from kaleido.latents import Extractor, LatentType, build_latent_type
from kaleido.tokenizer import KaleidoTokenizer, build_tokenizer

MANIFEST = "kaleido_shards.json"
FORMAT = 1
SPLITS = ("train", "val")
INSTALL = 'pip install -e ".[scale]"  (litdata)'


def require_litdata() -> Any:
    """The ``litdata`` module, or one line naming the install command."""
    try:
        import litdata
    except ImportError:
        raise MissingPackageError(f"shards need litdata: {INSTALL}") from None
    return litdata


def texts_path(root: Path, split: str) -> Path:
    return root / f"{split}.texts.jsonl"


@dataclass(frozen=True)
class ShardText:
    """What the tokenizer and the contract's ``conditions`` / ``ground_truth`` read of an item."""

    id: str
    condition: str
    latents: dict[str, str]  # type name → editable text, as in the folder's sidecar


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} is not a kaleido shard folder; write one with: python -m kaleido shard --folder DIR --output {root}")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise FolderDataError(f"{path}: shard format {manifest.get('format')!r}, this kaleido reads format {FORMAT}; shard the folder again")
    return manifest


class DecodeItem:
    """A stored item → the folder data module's item: the image through the same transform
    (:func:`~kaleido.data.folder_format.load_image`), each latent text parsed by its type. Runs in the
    loader workers (litdata's ``transform``), so it is a plain picklable object."""

    def __init__(self, image_size: int, latent_types: Sequence[LatentType]) -> None:
        self.image_size, self.latent_types = image_size, list(latent_types)

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        texts = json.loads(raw["latents"])
        latents = {}
        for latent_type in self.latent_types:
            try:
                latents[latent_type.name] = latent_type.parse(texts[latent_type.name])
            except ValueError as error:  # LatentParseError: shards written with another version of the type
                raise FolderDataError(f"shard item {raw['id']!r}, {latent_type.name!r} latent: {error}") from None
        image = load_image(io.BytesIO(raw["image"]), self.image_size, name=f"{raw['id']} (from shards)")
        return {"id": raw["id"], "image": image, "condition": raw["condition"], "latents": latents}


class ShardDataModule(LightningDataModule, KaleidoData):
    """An image folder's shards (``python -m kaleido shard``) as a LightningDataModule: the items, the
    tokenizer, the split and the identity of :class:`~kaleido.data.folder.ImageFolderDataModule` on the
    same folder, streamed by litdata. The training loader shuffles (chunks, then items within a window),
    splits the items over DDP ranks and loader workers, drops what does not fill a last batch on every
    rank, and saves its position in each checkpoint (``state_dict``), so a resumed run goes on mid-epoch.

    Args:
        root: the shard folder (it holds ``kaleido_shards.json``).
        latents: the latent types z, as for the folder module; each must be one the shards were written
            with, at the same settings (the manifest holds their specs).
        image_size, batch_size, num_workers, vocab_size, tokenizer_path, max_condition_length,
        max_latent_length, pad_to_limits, readers: as for the folder module. The split (``val_fraction``)
            and ``condition_template`` were fixed by ``shard``; the manifest records them.
        seed: the shuffle's seed; default the run's ``seed_everything`` value.
    """

    def __init__(
        self,
        root: str,
        latents: Sequence[str | LatentType] = (),
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        vocab_size: int = 1024,
        tokenizer_path: str | None = None,
        max_condition_length: int | None = None,
        max_latent_length: int | None = None,
        pad_to_limits: bool = False,
        readers: dict[str, Extractor] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.root = Path(root)
        self.latent_types = [build_latent_type(spec) for spec in latents]
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.vocab_size, self.tokenizer_path = vocab_size, tokenizer_path
        self.max_condition_length, self.max_latent_length = max_condition_length, max_latent_length
        self.pad_to_limits, self.seed = pad_to_limits, seed
        self.readers = dict(readers or {})
        unknown = sorted(set(self.readers) - {t.name for t in self.latent_types})
        if unknown:
            raise ValueError(f"readers name latent types this data does not serve: {unknown}; its types are {[t.name for t in self.latent_types]}")
        self._manifest: dict[str, Any] | None = None
        self._texts: dict[str, list[ShardText]] = {}
        self._tokenizer: KaleidoTokenizer | None = None

    # -- reading the manifest, once ------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest, with this module's latent types checked against the types the shards hold."""
        if self._manifest is None:
            manifest = read_manifest(self.root)
            stored = manifest["latents"]
            for latent_type in self.latent_types:
                spec = stored.get(latent_type.name)
                if spec is None:
                    raise FolderDataError(
                        f"{self.root} holds no {latent_type.name!r} latents (it holds {sorted(stored)}); "
                        f"extract them into {manifest['source']}/latents and shard again"
                    )
                if build_latent_type(spec) != latent_type:
                    raise FolderDataError(
                        f"{self.root}: the {latent_type.name!r} latents were written as {spec}, the config asks for "
                        f"{latent_type.spec()}; use the shards' settings or shard a folder extracted with these"
                    )
            self._manifest = manifest
        return self._manifest

    def texts(self, split: Literal["train", "val"]) -> list[ShardText]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if split not in self._texts:
            self.manifest  # noqa: B018 - checks the latent types before anything is read
            lines = texts_path(self.root, split).read_text(encoding="utf-8").splitlines()
            self._texts[split] = [ShardText(**json.loads(line)) for line in lines if line]
        return self._texts[split]

    def setup(self, stage: str | None = None) -> None:  # noqa: ARG002 - same data for every stage
        self.texts("train")

    def _streaming(self, split: str, shuffle: bool) -> Any:
        """litdata's dataset of a split's shards, decoding into the folder module's items."""
        litdata = require_litdata()
        if not self.manifest["splits"][split]:
            return None
        seed = default_seed() if self.seed is None else self.seed
        # drop_last in training: every rank gets as many batches (DDP would hang otherwise)
        return litdata.StreamingDataset(
            str(self.root / split), shuffle=shuffle, drop_last=shuffle, seed=seed,
            transform=DecodeItem(self.image_size, self.latent_types),
        )

    def dataset(self, split: Literal["train", "val"]) -> Dataset:
        """A split's items in shard order (``dataset[i]`` decodes item ``i``); empty for an empty split."""
        self.texts(split)
        return self._streaming(split, shuffle=False) or []  # type: ignore[return-value]

    # -- the data contract ---------------------------------------------------------------------
    def images(self, split: Literal["train", "val"]) -> Dataset:
        return self.dataset(split)

    def conditions(self, split: Literal["train", "val"], count: int | None = None) -> list[str]:
        return [item.condition for item in self.texts(split)[:count]]

    def identity(self) -> str:
        """The identity of the folder the shards were written from, at this image size."""
        source = self.manifest
        return folder_identity(Path(source["source"]), self.image_size, source["val_fraction"], len(self.texts("train")))

    def ground_truth(self, split: Literal["train", "val"], latent_type: LatentType, count: int | None = None) -> list[Any] | None:
        if latent_type not in self.latent_types:
            return None
        return [latent_type.parse(item.latents[latent_type.name]) for item in self.texts(split)[:count]]

    def latent_extractor(self, latent_type: LatentType) -> Extractor | None:
        return self.readers.get(latent_type.name)

    @property
    def tokenizer(self) -> KaleidoTokenizer:
        """Trained on the training split's texts, as the folder module's: the same tokenizer."""
        if self._tokenizer is None:
            texts = [
                (item.condition, {t.name: t.format(t.parse(item.latents[t.name])) for t in self.latent_types})
                for item in self.texts("train")
            ]
            self._tokenizer = build_tokenizer(
                texts, self.latent_types, self.vocab_size, self.tokenizer_path,
                self.max_condition_length, self.max_latent_length,
            )
        return self._tokenizer

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self._streaming(split, shuffle)
        if dataset is None:
            return make_loader([], self.tokenizer, self.batch_size, 0, False)  # type: ignore[arg-type]
        # litdata's loader counts the batches handed out and saves that in `state_dict`, which Lightning
        # stores in every checkpoint and gives back before a resumed run iterates: mid-epoch resume.
        # Workers are not kept between epochs: litdata's persistent workers take 10 s to shut down
        # (measured, litdata 0.2.76), and restarting them once an epoch costs a fraction of a second.
        return require_litdata().StreamingDataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers,
            collate_fn=Collate(self.tokenizer, self.pad_to_limits), pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)


__all__ = ["MANIFEST", "DecodeItem", "ShardDataModule", "ShardText", "read_manifest", "require_litdata", "texts_path"]
