"""A small VQ-VAE image tokenizer: conv encoder → vector quantiser (EMA codebook) → conv decoder.

It stands in for the paper's SEED tokenizer (32 tokens from a codebook of 8192 at 256²): here the
codes form a square grid, ``(image_size / downsample)²`` tokens per image (32² / 8 → 4×4 = 16),
read row by row. The codebook is learnt by exponential moving averages of the encoder outputs
assigned to each code (van den Oord et al., 2017, appendix A.1), not by gradients, and codes left
unused for ``dead_code_steps`` training steps are re-initialised from encoder outputs of the
current batch, which keeps most of the codebook in use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kaleido.checkpoint_io import CHECKPOINT_KEY, from_dict, read_checkpoint


@dataclass
class VQSettings:
    """Size and training of the VQ-VAE (the YAML section ``model.init_args.vq``).

    Args:
        codebook_size: number of codes.
        code_dim: width of a code vector (the encoder's output channels).
        downsample: image side / token-grid side; a power of two (one stride-2 stage per factor 2).
        channels: width of the first stage; each further stage doubles it, up to ``max_channels``.
        max_channels: cap on the stage width.
        num_res_blocks: residual blocks per stage.
        beta: weight of the commitment loss β·||z_e − sg(z_q)||².
        decay: EMA decay of the codebook statistics.
        eps: Laplace smoothing of the EMA cluster sizes (keeps empty clusters from dividing by zero).
        dead_code_steps: training steps a code may go unused before it is restarted from the batch.
        recon_loss: pixel loss of the reconstruction (``mse`` or ``l1``).
    """

    codebook_size: int = 512
    code_dim: int = 64
    downsample: int = 8
    channels: int = 64
    max_channels: int = 256
    num_res_blocks: int = 1
    beta: float = 0.25
    decay: float = 0.99
    eps: float = 1e-5
    dead_code_steps: int = 100
    recon_loss: Literal["mse", "l1"] = "mse"

    def __post_init__(self) -> None:
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of two, got {self.downsample}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {self.decay}")
        if self.codebook_size < 2 or self.dead_code_steps < 1:
            raise ValueError("codebook_size must be >= 2 and dead_code_steps >= 1")
        if self.recon_loss not in ("mse", "l1"):
            raise ValueError(f"recon_loss must be 'mse' or 'l1', got {self.recon_loss!r}")


def _all_reduce_sum(*tensors: Tensor) -> None:
    """Sum over data-parallel ranks, in place, so every rank keeps the same codebook."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def _broadcast(tensor: Tensor) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(tensor, src=0)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with an EMA codebook and dead-code restarts.

    All state lives in buffers (so it is saved, loaded and moved with the model, and never touched
    by the optimiser). Every code starts "dead", so the first training step seeds the codebook
    with encoder outputs: data-dependent initialisation without a special case.

    The update needs no host-device synchronisation: dead codes are replaced with ``torch.where``
    from a candidate drawn for every code. Under DDP the per-step counts and sums are all-reduced
    (two all-reduces of ``[K]`` and ``[K, D]``) and the restart candidates are broadcast from rank
    0, so all ranks keep identical codebooks.
    """

    codebook: Tensor
    cluster_size: Tensor
    embed_sum: Tensor
    unused_steps: Tensor

    def __init__(
        self, codebook_size: int, code_dim: int, beta: float = 0.25, decay: float = 0.99,
        eps: float = 1e-5, dead_code_steps: int = 100,
    ) -> None:
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.beta, self.decay, self.eps, self.dead_code_steps = beta, decay, eps, dead_code_steps
        self.register_buffer("codebook", torch.randn(codebook_size, code_dim))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_sum", torch.zeros(codebook_size, code_dim))
        self.register_buffer("unused_steps", torch.full((codebook_size,), dead_code_steps, dtype=torch.long))

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code (squared Euclidean) for each row of ``flat`` [N, D]."""
        # ||e||² − 2 z·e (||z||² is the same for every code); in float32 so bf16 cannot tie codes.
        codebook = self.codebook.float()
        distances = codebook.pow(2).sum(1)[None] - 2.0 * flat.float() @ codebook.t()
        return distances.argmin(dim=1)

    def lookup(self, codes: Tensor) -> Tensor:
        """Code vectors for ``codes`` [...] → [..., D]."""
        return F.embedding(codes, self.codebook)

    def forward(self, z_e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``z_e`` [B, D, h, w] → (straight-through z_q [B, D, h, w], codes [B, h, w], commitment loss)."""
        b, d, h, w = z_e.shape
        with torch.autocast(z_e.device.type, enabled=False):
            z = z_e.float()
            flat = z.permute(0, 2, 3, 1).reshape(-1, d)
            codes = self.nearest(flat)
            if self.training:
                self._update(flat.detach(), codes)
            z_q = self.lookup(codes).view(b, h, w, d).permute(0, 3, 1, 2)
            # The codebook learns by EMA, so only the encoder's side of the VQ objective is a loss.
            commitment = self.beta * F.mse_loss(z, z_q.detach())
            # Straight-through: the forward value is z_q, the gradient flows to z_e unchanged.
            z_q = z + (z_q - z).detach()
        return z_q.to(z_e.dtype), codes.view(b, h, w), commitment

    @torch.no_grad()
    def _update(self, flat: Tensor, codes: Tensor) -> None:
        # index_add rather than a one-hot matrix: O(N·D) memory, and no host sync (bincount has one).
        counts = flat.new_zeros(self.codebook_size).index_add_(0, codes, flat.new_ones(codes.shape[0]))
        sums = flat.new_zeros(self.codebook_size, self.code_dim).index_add_(0, codes, flat)
        _all_reduce_sum(counts, sums)

        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # Laplace smoothing: never divide by an empty cluster; the total mass n is unchanged.
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        self._restart_dead(flat)

    @torch.no_grad()
    def _restart_dead(self, flat: Tensor) -> None:
        """Codes unused for ``dead_code_steps`` steps take a random encoder output of this batch."""
        k, n = self.codebook_size, flat.shape[0]
        # Distinct rows when the batch has enough of them; shapes are known on the host (no sync).
        pick = torch.randperm(n, device=flat.device)[:k] if n >= k else torch.randint(n, (k,), device=flat.device)
        candidates = flat[pick]
        _broadcast(candidates)
        dead = (self.unused_steps >= self.dead_code_steps)[:, None]
        self.codebook.copy_(torch.where(dead, candidates, self.codebook))
        # A restarted code carries the mass of one vector, so the next EMA step moves it freely.
        self.embed_sum.copy_(torch.where(dead, candidates, self.embed_sum))
        self.cluster_size.copy_(torch.where(dead[:, 0], torch.ones_like(self.cluster_size), self.cluster_size))
        self.unused_steps.masked_fill_(dead[:, 0], 0)


class ResidualBlock(nn.Module):
    """SiLU → conv → SiLU → conv, plus a (1×1 if the width changes) skip.

    No normalisation layers (as in the original VQ-VAE): GroupNorm normalises each image on its own,
    which throws away the absolute colour of flat regions (the background of most ``shapes`` images)
    that the codes must carry; a tiny model then reconstructs four times worse after 50 steps.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


def _widths(settings: VQSettings) -> list[int]:
    """Channels of each resolution, from full size down to the token grid."""
    stages = int(math.log2(settings.downsample))
    return [min(settings.channels * 2**i, settings.max_channels) for i in range(stages + 1)]


class Encoder(nn.Module):
    def __init__(self, settings: VQSettings) -> None:
        super().__init__()
        widths = _widths(settings)
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            previous = widths[max(i - 1, 0)]
            if i > 0:
                layers.append(nn.Conv2d(previous, previous, 4, stride=2, padding=1))  # halve the side
            layers += [ResidualBlock(previous if j == 0 else width, width) for j in range(settings.num_res_blocks)]
            if settings.num_res_blocks == 0 and previous != width:
                layers.append(nn.Conv2d(previous, width, 1))
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], settings.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, settings: VQSettings) -> None:
        super().__init__()
        widths = _widths(settings)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(settings.code_dim, widths[0], 3, padding=1)]
        for i, width in enumerate(widths):
            previous = widths[max(i - 1, 0)]
            if i > 0:
                # Nearest upsampling + conv rather than a transposed conv: no checkerboard artefacts.
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(previous, previous, 3, padding=1)]
            layers += [ResidualBlock(previous if j == 0 else width, width) for j in range(settings.num_res_blocks)]
            if settings.num_res_blocks == 0 and previous != width:
                layers.append(nn.Conv2d(previous, width, 1))
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class VQVAE(nn.Module):
    """Images [B, 3, H, W] in [-1, 1] ⇄ codes [B, K] (K = (H / downsample)², read row by row).

    Args:
        image_size: side of the (square) training images; fixes the number of tokens per image.
        settings: see :class:`VQSettings`.
    """

    def __init__(self, image_size: int = 32, settings: VQSettings | None = None) -> None:
        super().__init__()
        settings = settings or VQSettings()
        if image_size % settings.downsample:
            raise ValueError(f"image_size {image_size} is not a multiple of downsample {settings.downsample}")
        self.image_size, self.settings = image_size, settings
        self.grid = image_size // settings.downsample
        self.encoder = Encoder(settings)
        self.quantizer = VectorQuantizer(
            settings.codebook_size, settings.code_dim, settings.beta, settings.decay, settings.eps, settings.dead_code_steps
        )
        self.decoder = Decoder(settings)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def codebook_size(self) -> int:
        return self.settings.codebook_size

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"this VQ-VAE takes images [B, 3, {self.image_size}, {self.image_size}] in [-1, 1], "
                f"got {tuple(images.shape)}"
            )

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """→ (reconstruction [B, 3, H, W], losses {"recon", "commitment"}, codes [B, K])."""
        self._check_images(images)
        z_q, codes, commitment = self.quantizer(self.encoder(images))
        reconstruction = self.decoder(z_q)
        pixel_loss = F.mse_loss if self.settings.recon_loss == "mse" else F.l1_loss
        recon = pixel_loss(reconstruction.float(), images.float())
        return reconstruction, {"recon": recon, "commitment": commitment}, codes.flatten(1)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images [B, 3, H, W] in [-1, 1] → codes [B, K] (long). Never updates the codebook."""
        self._check_images(images)
        z_e = self.encoder(images)
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        return self.quantizer.nearest(flat).view(images.shape[0], -1)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes [B, K] → images [B, 3, H, W], clamped to [-1, 1]."""
        if codes.ndim != 2 or codes.shape[1] != self.num_tokens:
            raise ValueError(f"expected codes [B, {self.num_tokens}], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        z_q = self.quantizer.lookup(codes.long()).view(codes.shape[0], self.grid, self.grid, -1).permute(0, 3, 1, 2)
        return self.decoder(z_q).clamp(-1, 1)


def load_vqvae(path: str | Path, map_location: str | torch.device = "cpu") -> VQVAE:
    """The bare VQ-VAE network of a :class:`VQTokenizer` checkpoint, in eval mode.

    Reads only plain data (``torch.load(weights_only=True)``) and needs no tokenizer, so it serves
    extractors in data-loader workers as well as notebooks.
    """
    checkpoint = read_checkpoint(path, map_location)
    hparams = checkpoint.get("hyper_parameters", {})
    if "vq" not in hparams or "image_size" not in hparams:
        raise ValueError(
            f"{path} holds a {checkpoint[CHECKPOINT_KEY].get('class_path', 'unknown')} checkpoint, not a VQTokenizer one "
            "(train one with `python -m kaleido fit --config configs/shapes/vq.yaml`)"
        )
    net = VQVAE(hparams["image_size"], from_dict(VQSettings, hparams["vq"]))
    weights = {k.removeprefix("vq."): v for k, v in checkpoint["state_dict"].items() if k.startswith("vq.")}
    net.load_state_dict(weights)
    return net.to(map_location).eval()


__all__ = ["VQSettings", "VQVAE", "VectorQuantizer", "load_vqvae"]
