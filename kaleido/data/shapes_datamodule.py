"""The embedded ``shapes`` data set as a LightningDataModule, with ground-truth latents per type."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from kaleido.data.collate import make_loader
from kaleido.data.shapes import Scene, ShapesConfig, ShapesDataset, condition_text
from kaleido.data.shapes_text import describe
from kaleido.latents import LatentType, build_latent_type
from kaleido.latents.blob import scene_blobs
from kaleido.latents.box import scene_boxes
from kaleido.tokenizer import KaleidoTokenizer, build_tokenizer

# Exact latents straight from the scene, by latent-type name (each gets the type, for its settings).
# Types not listed here (plugins) are extracted from the rendered image by their own extractor.
GROUND_TRUTH: dict[str, Callable[[Scene, LatentType], Any]] = {
    "text": lambda scene, _: describe(scene),
    "box": lambda scene, box: scene_boxes(scene, **box.init_args()),
    "blob": lambda scene, blob: scene_blobs(scene, **blob.init_args()),
}


class ShapesLatents:
    """Scene (+ image) → latent object per type: exact ground truth where the data set knows it,
    otherwise the type's own extractor on the rendered image (built once, not per item)."""

    def __init__(self, latent_types: Sequence[LatentType]) -> None:
        self.latent_types = list(latent_types)
        self.needs_image = any(t.name not in GROUND_TRUTH for t in self.latent_types)
        self._extractors: dict[str, Any] = {}

    def __call__(self, scene: Scene, image: torch.Tensor | None, condition: str) -> dict[str, Any]:
        return {t.name: self._one(t, scene, image, condition) for t in self.latent_types}

    def _one(self, latent_type: LatentType, scene: Scene, image: torch.Tensor | None, condition: str) -> Any:
        if latent_type.name in GROUND_TRUTH:
            return GROUND_TRUTH[latent_type.name](scene, latent_type)
        if image is None:
            raise ValueError(f"latent type {latent_type.name!r} has no shapes ground truth and needs the image")
        if latent_type.name not in self._extractors:
            self._extractors[latent_type.name] = latent_type.build_extractor()
        return self._extractors[latent_type.name](image[None], [condition])[0]


class ShapesWithLatents(Dataset):
    """Adds ``"latents": {type name: latent object}`` to every ``ShapesDataset`` item."""

    def __init__(self, shapes: ShapesDataset, latent_types: Sequence[LatentType]) -> None:
        self.shapes = shapes
        self.latents = ShapesLatents(latent_types)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.shapes[index]
        item["latents"] = self.latents(item["scene"], item["image"], item["condition"])
        return item


class ShapesDataModule(LightningDataModule):
    """Seeded synthetic scenes (see :mod:`kaleido.data.shapes`): a coarse condition ("a circle"),
    and exact latents of every requested type.

    Args:
        latents: the latent types z (registered names, or instances / class_path entries in YAML);
            empty for the baseline.
        shapes: the scene generator's settings (resolution, object counts, colours, ...).
        num_train / num_val / num_test: items per split (train, val and test use different seeds).
        batch_size / num_workers: the loaders'.
        seed: the data seed.
        vocab_size: BPE merges of the prior's tokenizer, trained on this data's texts.
        tokenizer_path: a ``tokenizer.json`` to load instead of training one.
        max_condition_length / max_latent_length: token limits; ``None`` derives them from the
            training data (longest + a margin). An explicit limit below the data's longest is an error.
        pad_to_limits: pad token ids to those limits rather than to each batch's longest: one batch
            shape throughout, for a compiled denoiser (``model.compile: true``).
    """

    def __init__(
        self,
        latents: Sequence[str | LatentType] = (),
        shapes: ShapesConfig | None = None,
        num_train: int = 20000,
        num_val: int = 256,
        num_test: int = 1000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        vocab_size: int = 1024,
        tokenizer_path: str | None = None,
        max_condition_length: int | None = None,
        max_latent_length: int | None = None,
        pad_to_limits: bool = False,
    ) -> None:
        super().__init__()
        self.latent_types = [build_latent_type(spec) for spec in latents]
        self.shapes = shapes or ShapesConfig()
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.vocab_size, self.tokenizer_path = vocab_size, tokenizer_path
        self.max_condition_length, self.max_latent_length = max_condition_length, max_latent_length
        self.pad_to_limits = pad_to_limits
        self._tokenizer: KaleidoTokenizer | None = None

    @property
    def image_size(self) -> int:
        return self.shapes.resolution

    def dataset(self, split: str) -> ShapesWithLatents:
        sizes = {"train": self.num_train, "val": self.num_val, "test": self.num_test}
        offsets = {"train": 0, "val": 1, "test": 2}
        if split not in sizes:
            raise ValueError(f"split must be one of {sorted(sizes)}, got {split!r}")
        shapes = ShapesDataset(sizes[split], self.shapes, seed=self.seed * 3 + offsets[split])
        return ShapesWithLatents(shapes, self.latent_types)

    def texts(self) -> Iterator[tuple[str, dict[str, str]]]:
        """(condition, editable latent texts) of every training item; images rendered only if needed."""
        shapes = ShapesDataset(self.num_train, self.shapes, seed=self.seed * 3)
        latents = ShapesLatents(self.latent_types)
        for index in range(len(shapes)):
            item = shapes[index] if latents.needs_image else {"scene": shapes.scene(index), "image": None}
            condition = condition_text(item["scene"])
            objects = latents(item["scene"], item["image"], condition)
            yield condition, {t.name: t.format(objects[t.name]) for t in self.latent_types}

    @property
    def tokenizer(self) -> KaleidoTokenizer:
        """The prior's tokenizer: trained on this data's texts (or loaded), limits checked against it."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(
                list(self.texts()), self.latent_types, self.vocab_size, self.tokenizer_path,
                self.max_condition_length, self.max_latent_length,
            )
        return self._tokenizer

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return make_loader(self.dataset(split), self.tokenizer, self.batch_size, self.num_workers, shuffle, self.pad_to_limits)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
