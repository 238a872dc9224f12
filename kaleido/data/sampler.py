"""A training loader that resumes mid-epoch: a killed run, resumed from its last checkpoint, goes on with
the very items it had not reached, in the same order, neither repeating nor skipping any.

Lightning saves the ``state_dict`` of every training loader that has one in each checkpoint and hands
it back to ``load_state_dict`` on resume (before iterating), so the state lives on the loader: the epoch
and how many items of that epoch's permutation the training loop has taken. The permutation is a function
of (seed, epoch) alone, as torch's ``DistributedSampler`` draws it, so nothing random needs saving.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def default_seed() -> int:
    """The run's ``seed_everything`` value (Lightning exports it), so the config's seed fixes the order."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableSampler(DistributedSampler):
    """Each epoch, a permutation of the data seeded by ``seed + epoch``; each rank takes every
    ``num_replicas``-th item of it (the remainder that does not divide is dropped, as the loader drops its
    last partial batch). ``start`` items of this rank's share are skipped on the next pass only: the
    items a resumed epoch had already trained on.

    A ``DistributedSampler`` so that Lightning does not wrap it again under DDP; on one process it is
    simply a seeded shuffle.
    """

    def __init__(self, dataset: Dataset, seed: int | None = None, shuffle: bool = True) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=shuffle,
            seed=default_seed() if seed is None else seed,
            drop_last=True,
        )
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch starts at its beginning; the same one keeps a resumed start
            self.start = 0
        super().set_epoch(epoch)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` that counts the batches the training loop has
    taken this epoch, and saves and restores (epoch, items taken) as its ``state_dict``.

    Counted where batches leave the loader, in the main process: loader workers prefetch ahead, but what
    they prefetched and the loop never took is not counted, so a resumed run trains on it. The count is
    kept over all ranks (``items`` is global), so a run resumed on a different number of processes
    restarts at the same place in the epoch's permutation, give or take less than one global batch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, sampler: ResumableSampler, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, **kwargs)
        self._taken = 0  # items of this rank's share taken in the current epoch (skipped ones included)

    def __iter__(self) -> Iterator[Any]:
        self._taken = getattr(self.sampler, "start", 0)
        for batch in super().__iter__():
            self._taken += self.batch_size  # type: ignore[operator]
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):  # Lightning replaced it (e.g. overfit_batches)
            return {}
        return {"epoch": sampler.epoch, "items": self._taken * sampler.num_replicas, "seed": sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        if not state or not isinstance(sampler, ResumableSampler):
            return
        if state.get("seed", sampler.seed) != sampler.seed:  # e.g. seed_everything: true draws a new seed per run
            rank_zero_info(f"resuming the data order of seed {state['seed']} (this run's seed is {sampler.seed})")
            sampler.seed = state["seed"]  # the rest of the epoch, and later epochs, as the killed run would have
        start = state["items"] // sampler.num_replicas
        if start >= sampler.num_samples:  # the epoch had ended: the next one starts at its beginning
            sampler.set_epoch(state["epoch"] + 1)
            sampler.start = 0
        else:
            sampler.set_epoch(state["epoch"])
            sampler.start = start - start % self.batch_size  # type: ignore[operator]
        self._taken = sampler.start


__all__ = ["ResumableLoader", "ResumableSampler"]
