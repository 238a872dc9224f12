"""Where a checkpoint's cross-attention goes (null token, condition c, latent z) on one validation batch
at a few noise levels: does the model read z? (kaleido/metrics/attention.py)

    python benchmarks/attention_probe.py --ckpt_path last.ckpt --output probe.json
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from jsonargparse import CLI

from kaleido.checkpoint import load
from kaleido.evaluate import checkpoint_datamodule
from kaleido.metrics.attention import cross_attention_shares
from kaleido.modules.base import ConditionalDiffusion


def main(
    ckpt_path: Path,
    timesteps: list[int] = [100, 250, 500, 750, 900],  # noqa: B006 (jsonargparse reads the default)
    num_samples: int = 256,
    data_config: Path | None = None,
    output: Path | None = None,
    device: str = "auto",
) -> dict:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = load(ckpt_path, map_location=device, expected=ConditionalDiffusion)
    data = checkpoint_datamodule(ckpt_path, model.image_size, data_config)
    batch = next(iter(data.val_dataloader()))  # type: ignore[attr-defined]
    batch = {k: v[:num_samples].to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    shares = cross_attention_shares(model, batch, timesteps)
    result = {
        "ckpt_path": str(ckpt_path),
        "num_samples": len(batch["image"]),
        "shares": {str(t): asdict(s) for t, s in shares.items()},
    }
    for t, s in shares.items():
        print(f"t={t:4d}  null {s.null:.3f}  condition {s.condition:.3f}  latent {s.latent:.3f}")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    CLI(main, as_positional=False)
