"""The embedded ``shapes`` data set as a torch ``Dataset``: seeded scenes, rendered on access."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from kaleido.shapes.scenes import Scene, ShapesConfig, condition_text, render, sample_scene
from kaleido.shapes.text import describe


class ShapesDataset(Dataset):
    """``num_samples`` seeded scenes; item ``i`` comes from ``np.random.default_rng([seed, i])``.

    Items are dicts ``{"id", "image" (float [3, H, W] in [-1, 1]), "condition", "scene",
    "text"}``; nothing is cached, every item is regenerated on access.
    """

    def __init__(self, num_samples: int, config: ShapesConfig | None = None, seed: int = 0) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = num_samples
        self.config = config if config is not None else ShapesConfig()
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def item_id(self, index: int) -> int:
        """Item ``index``'s id (its index), without rendering it."""
        return index

    def scene(self, index: int) -> Scene:
        """The scene of item ``index``, without rendering it."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return sample_scene(np.random.default_rng([self.seed, index]), self.config)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        scene = self.scene(index)
        pixels = render(scene, self.config.resolution)
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return {"id": index, "image": image, "condition": condition_text(scene), "scene": scene, "text": describe(scene)}

    def corpus(self, limit: int | None = None) -> Iterator[str]:
        """Condition and description texts of the first ``limit`` items (all by default), unrendered."""
        count = self.num_samples if limit is None else min(limit, self.num_samples)
        for index in range(count):
            scene = self.scene(index)
            yield condition_text(scene)
            yield describe(scene)


def collate(batch: list[dict]) -> dict:
    """Batch ``ShapesDataset`` items for a ``DataLoader`` (torch's default cannot batch ``Scene``).

    Images are stacked to ``[B, 3, H, W]``, ids to a long tensor; the other fields become lists.
    """
    return {
        "id": torch.tensor([item["id"] for item in batch], dtype=torch.long),
        "image": torch.stack([item["image"] for item in batch]),
        "condition": [item["condition"] for item in batch],
        "scene": [item["scene"] for item in batch],
        "text": [item["text"] for item in batch],
    }
