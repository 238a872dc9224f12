"""The ``visual_token`` latent type: the discrete codes of a VQ image tokenizer, in raster order.

The paper uses SEED (32 tokens per image from a codebook of 8192) and joins the ids with ``#``. Here
the codes come from this project's own VQ-VAE (:mod:`kaleido.modules.vq`): ``num_tokens`` codes
from a square grid, read row by row.

**Codes are special tokens** (``<v0>`` … ``<v{codebook_size-1}>``), not digit text, because:

* one code is one token, so z is ``2·num_tokens`` tokens long (codes and ``#``) rather than the
  3–4 BPE pieces per number that digit text takes, and the prior predicts a code in one step;
* each code has its own embedding and output row: with digit text codes 12 and 125 would share
  pieces and the prior would have to learn that ``1`` ``2`` ``5`` means something unrelated to
  ``1`` ``2``;
* the paper enlarges the T5 vocabulary for visual tokens, which is what special tokens do.

The editable text is ``<v12>#<v7>#…``: what the shared tokenizer turns into exactly those special
tokens, and back into the same string. For hand edits, :meth:`VisualTokenLatent.parse` also accepts
bare numbers (``12#7#…``) and spaces around ``#``; :meth:`format` always writes the canonical form.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence

import torch
from torch import Tensor

from kaleido.latents.base import Extractor, LatentParseError, LatentType
from kaleido.latents.registry import register_latent_type
from kaleido.nn.vqvae import load_vqvae

SEPARATOR = "#"
_CODE = re.compile(r"\s*(?:<v([0-9]+)>|([0-9]+))\s*")  # one code: <v12> or 12, with optional spaces around it


@register_latent_type
class VisualTokenLatent(LatentType):
    """The codes of a VQ image tokenizer (the paper's "visual token" latent).

    Args:
        codebook_size: number of distinct codes; adds that many special tokens to the vocabulary.
        num_tokens: codes per image.
        checkpoint: local path of a :class:`kaleido.modules.vq.VQTokenizer` checkpoint, needed by the
            extractor and by :meth:`decode`; both sizes above are checked against it.
    """

    name = "visual_token"

    def __init__(self, codebook_size: int = 512, num_tokens: int = 16, checkpoint: str | None = None) -> None:
        if codebook_size < 1 or num_tokens < 1:
            raise ValueError(f"codebook_size and num_tokens must be positive, got {codebook_size} and {num_tokens}")
        self.codebook_size = codebook_size
        self.num_tokens = num_tokens
        self.checkpoint = checkpoint
        self._extractor: VisualTokenExtractor | None = None

    # -- tokenizer -------------------------------------------------------------------------------
    def special_tokens(self) -> list[str]:
        return [code_token(i) for i in range(self.codebook_size)]

    def format(self, latent: Sequence[int]) -> str:
        """Codes → ``<v12>#<v7>#…`` (checked: right count, every code in range)."""
        codes = tuple(int(c) for c in latent)
        if len(codes) != self.num_tokens:
            raise ValueError(f"a visual-token latent has {self.num_tokens} codes, got {len(codes)}")
        for i, code in enumerate(codes):
            if not 0 <= code < self.codebook_size:
                raise ValueError(f"code {i} is {code}, outside the codebook [0, {self.codebook_size})")
        return SEPARATOR.join(code_token(c) for c in codes)

    def parse(self, text: str) -> tuple[int, ...]:
        """``<v12>#<v7>#…`` (or ``12#7#…``) → codes; errors name the position in ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"a visual-token latent text is a str, got {type(text).__name__}")
        codes: list[int] = []
        position = 0
        while True:
            match = _CODE.match(text, position)
            if match is None:
                expected = f"code {len(codes)}: <vN> or N with 0 <= N < {self.codebook_size}"
                raise LatentParseError(self.name, text, _skip_spaces(text, position), expected)
            digits = match.group(1) or match.group(2)
            code = int(digits)
            if code >= self.codebook_size:
                start = match.start(1) if match.group(1) else match.start(2)
                raise LatentParseError(
                    self.name, text, start, f"a code below the codebook size {self.codebook_size}", repr(digits)
                )
            codes.append(code)
            position = match.end()
            if position == len(text):
                break
            if text[position] != SEPARATOR:
                raise LatentParseError(self.name, text, position, f"{SEPARATOR!r} between codes or the end")
            position += 1
        if len(codes) != self.num_tokens:
            raise LatentParseError(
                self.name, text, len(text), f"{self.num_tokens} codes", f"{len(codes)} codes and the end"
            )
        return tuple(codes)

    # -- extractor -------------------------------------------------------------------------------
    def build_extractor(self) -> VisualTokenExtractor:
        """Encodes images with the VQ checkpoint. Built once per instance: the data module asks for an
        extractor per item, and loading the checkpoint each time would dominate."""
        if self._extractor is None:
            if not self.checkpoint:
                raise ValueError(
                    "VisualTokenLatent needs checkpoint= (a local VQTokenizer checkpoint, trained with "
                    "`python -m kaleido fit --config configs/shapes/vq.yaml`) to extract or decode visual tokens"
                )
            self._extractor = VisualTokenExtractor(self.checkpoint, self.codebook_size, self.num_tokens)
        return self._extractor

    def adherence(self, latent: Sequence[int], found: Sequence[int]) -> dict[str, float]:
        """``agreement``: the share of positions where the codes read back off the image (re-encoded by
        the VQ) equal z's; ``exact``: 1 when every code does."""
        agreement = sum(a == b for a, b in zip(latent, found)) / len(latent) if len(latent) == len(found) else 0.0
        return {"agreement": agreement, "exact": float(agreement == 1.0)}

    def decode(self, latents: Sequence[int] | Sequence[Sequence[int]]) -> Tensor:
        """Codes of one image → [3, H, W], or of several → [N, 3, H, W], in [-1, 1] (for display)."""
        single = len(latents) > 0 and isinstance(latents[0], numbers.Integral)
        batch = [latents] if single else latents
        images = self.build_extractor().decode([self.parse(self.format(z)) for z in batch])  # type: ignore[arg-type]
        return images[0] if single else images

    def __getstate__(self) -> dict:
        # Data-loader workers receive the type, not the loaded network; each loads its own copy on first use.
        return {**self.__dict__, "_extractor": None}


class VisualTokenExtractor(Extractor):
    """Images → visual-token codes with a trained :class:`kaleido.modules.vq.VQTokenizer` checkpoint.

    Args:
        checkpoint: local path of the checkpoint (read with ``torch.load(weights_only=True)``).
        codebook_size / num_tokens: what the latent type expects; a checkpoint that disagrees is an error.
        device: where to run the network.
    """

    def __init__(self, checkpoint: str, codebook_size: int, num_tokens: int, device: str = "cpu") -> None:
        self.vq = load_vqvae(checkpoint, device)
        self.device = device
        found = (self.vq.codebook_size, self.vq.num_tokens)
        if found != (codebook_size, num_tokens):
            s = self.vq.settings
            raise ValueError(
                f"VQ checkpoint {checkpoint} has codebook_size={found[0]} and num_tokens={found[1]} "
                f"({self.vq.image_size}² images, downsample {s.downsample}); the visual_token latent is configured "
                f"with codebook_size={codebook_size}, num_tokens={num_tokens}. Set them to match the checkpoint"
            )

    def to(self, device: str) -> VisualTokenExtractor:
        self.vq.to(device)
        self.device = device
        return self

    @torch.no_grad()
    def __call__(self, images: Tensor, conditions: Sequence[str]) -> list[tuple[int, ...]]:  # noqa: ARG002
        codes = self.vq.encode(images.to(self.device, torch.float32))
        return [tuple(row) for row in codes.cpu().tolist()]

    @torch.no_grad()
    def decode(self, codes: Sequence[Sequence[int]]) -> Tensor:
        """Codes [N][K] → images [N, 3, H, W] in [-1, 1], on the CPU."""
        return self.vq.decode(torch.tensor([list(c) for c in codes], dtype=torch.long, device=self.device)).cpu()


def code_token(code: int) -> str:
    """The special token of one code."""
    return f"<v{code}>"


def _skip_spaces(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


__all__ = ["VisualTokenExtractor", "VisualTokenLatent", "code_token"]
