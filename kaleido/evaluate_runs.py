"""One run of ``evaluate``'s sweep (a model, a guider, a CFG scale): its samples, and its measures (grid,
features, FID, precision, recall, Vendi, the data's own metrics, adherence) taken into the report; and
the γ = 1 runs that share another run's samples (:func:`shared_at_scale_one`)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from tqdm.auto import tqdm

from kaleido.data.contract import sample_metrics
from kaleido.diffusion.guiders import Guider
from kaleido.metrics import extract_features, mean_pairwise_similarity, precision_recall, vendi_score
from kaleido.metrics.adherence import adherence_readers, latent_adherence
from kaleido.metrics.report import guider_of, run_name, write_tables
from kaleido.modules.base import ConditionalDiffusion
from kaleido.modules.settings import Compile
from kaleido.viz import samples_grid, save_grid


def sample_sweep(
    model: ConditionalDiffusion,
    conditions: list[str],
    cfg_scale: float,
    sampler: str,
    steps: int,
    seed: int,
    batch_size: int,
    autocast: Any,
    progress: tqdm,
    compile: Compile = False,
    guider: Guider | None = None,
) -> tuple[Tensor, list[str] | None]:
    """All samples of one (model, guider, scale), batch by batch; batch ``start`` is seeded by (seed, start)
    only, so both models, every guider and every scale see the same noise (and Kaleido the same z draws)."""
    images, texts = [], []
    for start in range(0, len(conditions), batch_size):
        part = conditions[start : start + batch_size]
        with autocast:
            out = model.generate(
                part,
                cfg_scale=cfg_scale,
                sampler=sampler,
                num_steps=steps,
                seed=seed * 1_000_003 + start,
                batch_size=len(part),
                compile=compile,
                guider=guider,
            )
        images.append(out.images)
        texts += out.latent_texts or []
        progress.update(len(part))
    return torch.cat(images), (texts if model.uses_latents else None)


def shared_at_scale_one(
    runs: Sequence[tuple[str, str, float]], done: Sequence[dict[str, Any]], swept: dict[str, Guider]
) -> dict[tuple[str, str], str]:
    """(model, guider) → the guider whose γ = 1 run holds the same samples, for each γ = 1 run that need
    not be sampled: at γ = 1 a guider that does not act there (:meth:`Guider.acts_at_scale_one`) draws
    what plain CFG draws, from the same seed. The first such run of a model (or one an earlier, resumed
    sweep finished) is sampled; the others share its samples and metrics."""
    quiet = {label for label, guider in swept.items() if not guider.acts_at_scale_one()}
    sampled: dict[str, str] = {}
    for row in done:
        if row["cfg_scale"] == 1.0 and guider_of(row) in quiet and "same_samples_as" not in row:
            sampled.setdefault(row["model"], guider_of(row))
    shared = {}
    for model, label, scale in runs:
        if scale == 1.0 and label in quiet:
            if model in sampled:
                shared[(model, label)] = sampled[model]
            else:
                sampled[model] = label
    return shared


@dataclass
class RunMeasures:
    """What every run is measured against (the reference, the real images' features, the data), and the
    report its rows go into; :meth:`measure` and :meth:`share` each add one run's row and rewrite the
    tables, so that a sweep stopped half-way keeps every finished run."""

    models: dict[str, ConditionalDiffusion]
    guiders: dict[str, Guider]
    datamodule: LightningDataModule
    prompts: list[str]
    extractor: Any
    reference: Any
    real: Tensor
    report: dict[str, Any]
    output: Path
    batch_size: int
    device: str
    readers: dict[str, Any] = field(default_factory=dict)  # per model: who reads its latents back (adherence)

    def prepare(self, model_name: str) -> None:
        """The model's adherence readers, built (and their notes printed) before its first run samples."""
        if model_name not in self.readers:
            model = self.models[model_name]
            types = model.tokenizer.latent_types if model.uses_latents else []
            self.readers[model_name] = adherence_readers(types, self.datamodule, self.device)
            for note in self.readers[model_name].notes():
                print(f"{model_name}: {note}")

    @torch.no_grad()  # grad mode is per thread, and evaluate measures in a thread of its own
    def measure(self, model_name: str, label: str, scale: float, images: Tensor, texts: list[str] | None, seconds: float) -> None:
        """One sampled run's metrics and row."""
        from kaleido.metrics import compute_fid  # here, not at the top: it imports torchmetrics

        model, guider = self.models[model_name], self.guiders[label]
        name = run_name(model_name, label, scale)
        grid = self.output / "grids" / f"{name}.png"
        if texts is None:
            save_grid(images[:64], str(grid), nrow=8, upscale=2)
        else:  # with each z drawn over its sample by the types that draw
            samples_grid(images[:64], texts[:64], model.tokenizer.latent_types, ncols=8, upscale=2, captions=False).save(grid)
        fake = extract_features(self.extractor, images, self.batch_size)
        pr = precision_recall(self.real, fake, k=3)
        row: dict[str, Any] = {
            "model": model_name,
            "guider": label,
            "guider_settings": guider.settings(),
            "cfg_scale": float(scale),
            "num_samples": len(images),
            "fid": compute_fid(self.reference, fake),
            "precision": pr.precision,
            "recall": pr.recall,
            "vendi": vendi_score(fake),
            "mean_similarity": mean_pairwise_similarity(fake),
        }
        measured = sample_metrics(self.datamodule, images, self.prompts)  # e.g. mode coverage on shapes
        if measured is not None:
            row.update(measured[0])
            self.report["sample_metrics"][name] = measured[1]
        extractors = self.readers[model_name].extractors
        if texts is not None and extractors:
            scores = latent_adherence(images, texts, model.tokenizer.latent_types, extractors, self.prompts, self.batch_size)
            for kind, score in scores.items():  # e.g. adherence_text_objects, adherence_box_iou
                row.update({f"adherence_{kind}_{k}": v for k, v in score.flat().items()})
        self.report["results"].append({**row, "sampling_seconds": round(seconds, 2)})
        write_tables(self.output, self.report)

    def share(self, model_name: str, label: str, source_label: str) -> None:
        """A γ = 1 run that draws another guider's γ = 1 samples: that run's row, grid and details, marked."""
        rows, details = self.report["results"], self.report["sample_metrics"]
        source = next(r for r in rows if r["model"] == model_name and guider_of(r) == source_label and r["cfg_scale"] == 1.0)
        name, of = run_name(model_name, label, 1.0), run_name(model_name, source_label, 1.0)
        shutil.copyfile(self.output / "grids" / f"{of}.png", self.output / "grids" / f"{name}.png")
        if of in details:
            details[name] = details[of]
        rows.append({**source, "guider": label, "guider_settings": self.guiders[label].settings(), "same_samples_as": of, "sampling_seconds": 0.0})
        write_tables(self.output, self.report)


__all__ = ["RunMeasures", "sample_sweep", "shared_at_scale_one"]
