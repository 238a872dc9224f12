"""Loader throughput of a folder and of its shards, side by side in one run (``docs/scale.md``):

    python benchmarks/loader_throughput.py --folder data/shapes_png --shards data/shapes_shards \\
        --image_size 64 --batch_size 64 --num_workers 2 --batches 40

The training loaders of both data modules, same batch size and workers, no model: images/s that the data
side alone can deliver (tokenisation in the workers included). The first ``warmup`` batches (worker start,
first reads) are not timed.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from typing import Any

from kaleido.data.folder import ImageFolderDataModule
from kaleido.data.shards import ShardDataModule


def images_per_second(loader: Iterable[Any], batches: int, warmup: int = 3) -> float:
    """Images/s over ``batches`` batches after ``warmup`` untimed ones (fewer if the epoch ends first)."""
    count, start = 0, None
    for index, batch in enumerate(loader):
        if index == warmup:
            start = time.perf_counter()
        if index >= warmup:
            count += len(batch["id"])
        if index + 1 >= warmup + batches:
            break
    if start is None or count == 0:
        raise ValueError(f"the epoch has fewer than {warmup + 1} batches; lower --warmup or --batch_size")
    return count / (time.perf_counter() - start)


def latent_spec(text: str) -> str | dict[str, Any]:
    """A registered name as it is; a JSON object (``{"class_path": ...}``) as the spec it writes."""
    return json.loads(text) if text.lstrip().startswith("{") else text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--latents", nargs="*", default=[], type=latent_spec,
                        help="latent types, each a registered name or a class_path spec as JSON (default none)")
    parser.add_argument("--val_fraction", type=float, default=0.01, help="the one the shards were written with")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    common = dict(latents=args.latents, image_size=args.image_size, batch_size=args.batch_size, num_workers=args.num_workers)
    modules = {
        "folder": ImageFolderDataModule(args.folder, val_fraction=args.val_fraction, check_images=False, **common),  # type: ignore[arg-type]
        "shards": ShardDataModule(args.shards, **common),  # type: ignore[arg-type]
    }
    for name, data in modules.items():
        rate = images_per_second(data.train_dataloader(), args.batches, args.warmup)
        print(f"{name:<7} {rate:8.0f} images/s  (batch {args.batch_size}, {args.num_workers} workers, {args.image_size}px)")


if __name__ == "__main__":
    main()
