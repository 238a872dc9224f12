"""Adherence of grounded latents (boxes, blobs): the objects of a latent paired with those read back off an
image so that their total overlap is largest, and the scores of one pairing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

Shape = Sequence[float]  # one object's normalised geometry (a box, an ellipse)


@dataclass(frozen=True)
class Pairing:
    """One sample's pairing: the IoU of each latent object with its partner (0: none), how many of the
    paired objects have the found object's phrase, and how many objects were found. A latent without
    objects scores 1 only when the image shows none either (an empty latent must not score by default)."""

    ious: list[float]
    phrase_hits: int
    found: int

    def _empty(self) -> float:
        return 1.0 if self.found == 0 else 0.0

    def iou(self) -> float:
        return sum(self.ious) / len(self.ious) if self.ious else self._empty()

    def iou_exact(self) -> float:
        return sum(self.ious) / max(len(self.ious), self.found) if self.ious else self._empty()

    def phrases(self) -> float:
        return self.phrase_hits / len(self.ious) if self.ious else self._empty()


def pair_objects(
    latent: Sequence[tuple[str, Shape]], found: Sequence[tuple[str, Shape]], overlap: Callable[[Shape, Shape], float]
) -> Pairing:
    """Pair ``(phrase, shape)`` objects of a latent with found ones so that the total overlap is largest
    (Hungarian; phrases play no part, so geometry and labels are measured apart)."""
    ious = [0.0] * len(latent)
    hits = 0
    if latent and found:
        table = np.array([[overlap(g, h) for _, h in found] for _, g in latent])
        for i, j in zip(*linear_sum_assignment(table, maximize=True)):
            ious[i] = float(table[i, j])
            hits += bool(table[i, j] > 0 and latent[i][0] == found[j][0])
    return Pairing(ious, hits, len(found))


__all__ = ["Pairing", "Shape", "pair_objects"]
