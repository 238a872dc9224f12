"""The host work of one ``evaluate`` run besides sampling and Inception: the data set's own metrics (mode
coverage on shapes), latent adherence, precision / recall and Vendi, timed on ``--num`` training images
of a config's data (their own latents, so adherence reads real scenes) and random 2,048-d features.
``evaluate`` takes this work in a second thread while the next run samples (docs/evaluation.md).

    python benchmarks/evaluate_host_work.py --config configs/shapes/kaleido_text_gpu.yaml --num 5000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from kaleido.data.contract import build_datamodule, sample_metrics
from kaleido.metrics import mean_pairwise_similarity, precision_recall, vendi_score
from kaleido.metrics.adherence import adherence_readers, latent_adherence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="a training config whose data has latents")
    parser.add_argument("--num", type=int, default=5000, help="images, as an evaluate run's --num_samples")
    parser.add_argument("--batch_size", type=int, default=500)
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    config["data"]["init_args"].update(num_workers=0, num_train=args.num)
    data = build_datamodule(config)
    data.setup("fit")
    dataset = data.dataset("train")
    items = [dataset[i] for i in range(args.num)]
    images = torch.stack([item["image"] for item in items])
    conditions = [item["condition"] for item in items]
    tokenizer = data.tokenizer
    texts = [tokenizer.join_latent_texts(tokenizer.format_latents(item["latents"])) for item in items]
    readers = adherence_readers(tokenizer.latent_types, data, "cpu")
    features = torch.randn(args.num, 2048)

    def timed(name: str, fn: object) -> None:
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        print(f"{name:<26} {time.perf_counter() - start:6.1f} s")

    print(f"{args.num} images of {args.config}, {torch.get_num_threads()} threads")
    timed("data's metrics", lambda: sample_metrics(data, images, conditions))
    timed("latent adherence", lambda: latent_adherence(images, texts, tokenizer.latent_types, readers.extractors, conditions, args.batch_size))
    timed("precision / recall (CPU)", lambda: precision_recall(features, features[torch.randperm(args.num)], k=3))
    timed("Vendi + mean similarity", lambda: (vendi_score(features), mean_pairwise_similarity(features)))


if __name__ == "__main__":
    main()
