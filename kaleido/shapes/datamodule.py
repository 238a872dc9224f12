"""The embedded ``shapes`` data set as a LightningDataModule that keeps the data contract
(:mod:`kaleido.data.contract`): exact latents where a scene has them, its own analytic reading of text,
boxes and blobs, and mode coverage of generated images."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from kaleido.data.collate import make_loader
from kaleido.data.contract import SPLITS, KaleidoData
from kaleido.latents import Extractor, LatentType, build_latent_type
from kaleido.shapes.dataset import ShapesDataset, collate
from kaleido.shapes.latents import ground_truth, has_ground_truth, shapes_extractor
from kaleido.shapes.modes import DEFAULT_MIN_SHARE, shapes_mode_coverage
from kaleido.shapes.reader import background_offset
from kaleido.shapes.scenes import Scene, ShapesConfig, condition_text
from kaleido.tokenizer import KaleidoTokenizer, build_tokenizer


def extract_latents(
    shapes: ShapesDataset,
    latent_types: Sequence[LatentType],
    batch_size: int = 256,
    num_workers: int = 0,
    device: str = "cpu",
) -> dict[str, list[Any]]:
    """Latents of the types without shapes ground truth (visual tokens, plugins), for every item of
    ``shapes``: rendered by a loader, extracted in batches on ``device``, once. Per item in the training
    loader, the shipped VQ encoder costs ~25 ms an image on one CPU core and starves a GPU."""
    extractors = {t.name: t.build_extractor().to(device) for t in latent_types if not has_ground_truth(t)}
    found: dict[str, list[Any]] = {name: [] for name in extractors}
    if not extractors or len(shapes) == 0:
        return found
    loader = DataLoader(shapes, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    for batch in tqdm(loader, desc=f"extracting {', '.join(extractors)} latents", unit="batch", leave=False):
        for name, extractor in extractors.items():
            latents = extractor(batch["image"], batch["condition"])
            if len(latents) != len(batch["image"]):  # the rest would then belong to the wrong items
                raise ValueError(f"the {name!r} extractor returned {len(latents)} latents for {len(batch['image'])} images")
            found[name] += latents
    return found


class ShapesLatents:
    """Item → latent object per type: exact ground truth where the data set knows it, otherwise the
    latents ``extract_latents`` computed beforehand (by item index)."""

    def __init__(self, latent_types: Sequence[LatentType], extracted: Mapping[str, Sequence[Any]]) -> None:
        self.latent_types = list(latent_types)
        self.extracted = extracted

    def __call__(self, index: int, scene: Scene) -> dict[str, Any]:
        return {t.name: self._one(t, index, scene) for t in self.latent_types}

    def _one(self, latent_type: LatentType, index: int, scene: Scene) -> Any:
        if has_ground_truth(latent_type):
            return ground_truth(scene, latent_type)
        return self.extracted[latent_type.name][index]


class ShapesWithLatents(Dataset):
    """Adds ``"latents": {type name: latent object}`` to every ``ShapesDataset`` item."""

    def __init__(self, shapes: ShapesDataset, latents: ShapesLatents) -> None:
        self.shapes = shapes
        self.latents = latents

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.shapes[index]
        item["latents"] = self.latents(item["id"], item["scene"])
        return item


class ShapesDataModule(LightningDataModule, KaleidoData):
    """Seeded synthetic scenes (see :mod:`kaleido.shapes.scenes`): a coarse condition ("a circle"),
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
        extract_device: where latents without shapes ground truth (visual tokens, plugins) are
            extracted, once per split before training; ``auto``: the GPU if there is one.
        mode_min_share: mode coverage (``sample_metrics``): a value is a mode when it holds at least this
            share of the data's votes, and covered when it holds as much of the samples' (see
            :mod:`kaleido.shapes.modes`).
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
        extract_device: str = "auto",
        mode_min_share: float = DEFAULT_MIN_SHARE,
    ) -> None:
        super().__init__()
        self.latent_types = [build_latent_type(spec) for spec in latents]
        self.shapes = shapes or ShapesConfig()
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.vocab_size, self.tokenizer_path = vocab_size, tokenizer_path
        self.max_condition_length, self.max_latent_length = max_condition_length, max_latent_length
        self.pad_to_limits = pad_to_limits
        self.extract_device = extract_device
        if not 0.0 < mode_min_share <= 1.0:
            raise ValueError(f"mode_min_share must be in (0, 1], got {mode_min_share}")
        self.mode_min_share = mode_min_share
        self._tokenizer: KaleidoTokenizer | None = None
        self._extracted: dict[str, dict[str, list[Any]]] = {}  # split → type name → latent per item
        self._train_scenes: tuple[list[Scene], list[str]] | None = None  # the training scenes and their conditions

    @property
    def image_size(self) -> int:
        return self.shapes.resolution

    def shapes_split(self, split: str) -> ShapesDataset:
        sizes = {"train": self.num_train, "val": self.num_val, "test": self.num_test}
        if split not in sizes:
            raise ValueError(f"split must be one of {sorted(sizes)}, got {split!r}")
        return ShapesDataset(sizes[split], self.shapes, seed=self.seed * 3 + SPLITS.index(split))

    # -- the data contract ---------------------------------------------------------------------
    def images(self, split: str) -> ShapesDataset:
        """The bare scenes of a split, rendered on access (no latents computed)."""
        return self.shapes_split(split)

    def conditions(self, split: str, count: int | None = None) -> list[str]:
        shapes = self.shapes_split(split)
        return [condition_text(shapes.scene(i)) for i in range(len(shapes) if count is None else min(count, len(shapes)))]

    def identity(self) -> str:
        """The scene generator's settings, the seed and the training-set size: what fixes its images."""
        settings = {"shapes": asdict(self.shapes), "seed": self.seed, "num_train": self.num_train}
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
        return f"shapes-{self.image_size}px-train{self.num_train}-{digest}"

    def ground_truth(self, split: str, latent_type: LatentType, count: int | None = None) -> list[Any] | None:
        if not has_ground_truth(latent_type):
            return None
        shapes = self.shapes_split(split)
        return [ground_truth(shapes.scene(i), latent_type) for i in range(len(shapes) if count is None else min(count, len(shapes)))]

    def latent_extractor(self, latent_type: LatentType) -> Extractor | None:
        return shapes_extractor(latent_type)

    def sample_metrics(self, images: Tensor, conditions: Sequence[str]) -> tuple[dict[str, float], dict[str, Any]]:
        """Mode coverage of the samples against the training scenes (:mod:`kaleido.shapes.modes`), and how far
        their backgrounds are off the data's flat ones (``background_offset_median`` / ``_p90``, in 0–255 levels:
        :func:`kaleido.shapes.reader.background_offset`). The scenes are drawn once per data module (50,000 take
        ~10 s on one core), not once per evaluated run."""
        if self._train_scenes is None:
            shapes = self.shapes_split("train")
            scenes = [shapes.scene(i) for i in range(len(shapes))]
            self._train_scenes = scenes, [condition_text(s) for s in scenes]
        scenes, scene_conditions = self._train_scenes
        coverage = shapes_mode_coverage(images, conditions, scenes, scene_conditions, self.mode_min_share)
        details = {c: {a: asdict(v) for a, v in per.items()} for c, per in coverage.conditions.items()}
        offsets = np.array([background_offset(image) for image in images])
        summary = coverage.summary()
        if len(offsets):
            summary |= {"background_offset_median": float(np.median(offsets)), "background_offset_p90": float(np.percentile(offsets, 90))}
        return summary, details

    def split_latents(self, split: str) -> ShapesLatents:
        """The split's latents; extractor-based ones are computed on first use and kept."""
        if split not in self._extracted:
            device = self.extract_device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._extracted[split] = extract_latents(
                self.shapes_split(split), self.latent_types, num_workers=self.num_workers, device=device
            )
        return ShapesLatents(self.latent_types, self._extracted[split])

    def dataset(self, split: str) -> ShapesWithLatents:
        return ShapesWithLatents(self.shapes_split(split), self.split_latents(split))

    def texts(self) -> Iterator[tuple[str, dict[str, str]]]:
        """(condition, editable latent texts) of every training item; scenes are not rendered here."""
        shapes, latents = self.shapes_split("train"), self.split_latents("train")
        for index in range(len(shapes)):
            scene = shapes.scene(index)
            objects = latents(index, scene)
            yield condition_text(scene), {t.name: t.format(objects[t.name]) for t in self.latent_types}

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
