"""Batches of (image, condition, latents) → tensors the models take; tokenisation happens here,
in the loader workers, so the training step only sees ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kaleido.data.sampler import ResumableLoader, ResumableSampler
from kaleido.tokenizer import KaleidoTokenizer


class Collate:
    """Items ``{"id", "image" [3,H,W] in [-1,1], "condition": str, "latents": {type: object}}`` → batch.

    ``pad_to_limits`` pads ids to the tokenizer's limits instead of the batch's longest: every batch
    then has one shape, which a compiled denoiser needs to avoid recompiling. When a latent type uses
    geometry features the batch also holds ``latent_geometry`` [B, L, G + 1], aligned with ``latent_ids``
    (``KaleidoTokenizer.latent_batch``).
    """

    def __init__(self, tokenizer: KaleidoTokenizer, pad_to_limits: bool = False) -> None:
        self.tokenizer = tokenizer
        self.pad_to_limits = pad_to_limits

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        tok = self.tokenizer
        conditions = [item["condition"] for item in items]
        static = self.pad_to_limits
        condition_ids, condition_mask = tok.encode_conditions(conditions, tok.max_condition_length if static else None)
        batch: dict[str, Any] = {
            "id": [item["id"] for item in items],
            "image": torch.stack([item["image"] for item in items]),
            "condition": conditions,
            "condition_ids": condition_ids,
            "condition_mask": condition_mask,
        }
        if tok.latent_names:
            texts = [tok.format_latents(item["latents"]) for item in items]
            batch.update(tok.latent_batch(texts, tok.max_latent_length if static else None))
            batch["latent_text"] = [tok.join_latent_texts(t) for t in texts]
        return batch


def make_loader(
    dataset: Dataset, tokenizer: KaleidoTokenizer, batch_size: int, num_workers: int, shuffle: bool, pad_to_limits: bool = False
) -> DataLoader:
    """The loader every kaleido data module uses: workers persist between epochs; tokenisation runs in
    ``Collate``. Training (``shuffle``) draws a seeded permutation per epoch, drops the last partial batch
    (steady batch shapes) and resumes mid-epoch from a checkpoint (:mod:`kaleido.data.sampler`)."""
    options: dict[str, Any] = {
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
        "collate_fn": Collate(tokenizer, pad_to_limits),
        "pin_memory": torch.cuda.is_available(),
    }
    if shuffle:
        return ResumableLoader(dataset, batch_size, ResumableSampler(dataset), **options)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **options)
