"""DiT (Peebles & Xie 2023) in pixel space, from timm's layers, with Kaleido's conditioning.

    x [B, 3, H, W] ──PatchEmbed──► tokens [B, (H/p)(W/p), hidden] + 2-D position embedding
    t ──sin-cos──MLP──► t_emb;   (cond, mask, uncond) ──encode_condition──► context, pooled
    c = t_emb + pooled                       global conditioning, as the UNet adds it to its timestep embedding
    each block:  x += gate · SelfAttn(adaLN(x; c))      adaLN-Zero (DiT): gates start at 0
                 x += CrossAttn(LN(x), context, mask)   PixArt-α style; zero-initialised output projection
                 x += gate · MLP(adaLN(x; c))
    final: adaLN(x; c) → Linear (zero-init) → unpatchify → [B, 3, H, W]

The conditioning is the UNet's (``ConditionedDenoiser``): the learned null token is the only key a dropped
row keeps, so ``uncond`` rows ignore ``cond`` entirely, and padding never reaches an output. A fresh DiT
is the identity in every block and predicts 0, the mean of the v / ε target.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from einops import rearrange
from timm.layers import Attention, Mlp, PatchEmbed, build_sincos2d_pos_embed
from torch import Tensor, nn

from kaleido.nn.attention import MultiHeadAttention
from kaleido.nn.blocks import timestep_embedding, zero_init
from kaleido.nn.conditioning import ConditionedDenoiser
from kaleido.nn.norms import LayerNorm, RMSNorm

# (depth, hidden, heads) of DiT's Table 1; patch size is a separate argument (DiT-S/2 = size S, patch 2).
DIT_SIZES: dict[str, tuple[int, int, int]] = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16)}
FREQUENCY_DIM = 256  # sin-cos features of the timestep before its MLP (DiT's TimestepEmbedder)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x [B, N, D] shifted and scaled per row by [B, 1, D]; (1 + scale) is the identity at 0."""
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """Self-attention and MLP under adaLN-Zero, with cross-attention to the conditioning between them."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, qk_norm: bool) -> None:
        super().__init__()
        self.norm1 = LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads=heads, qkv_bias=True, qk_norm=qk_norm, norm_layer=RMSNorm)
        self.norm_cross = LayerNorm(hidden, eps=1e-6)
        self.cross_attn = MultiHeadAttention(hidden, heads, qk_norm=qk_norm)  # keys: encode_condition's context
        self.norm2 = LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), act_layer=partial(nn.GELU, approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: Tensor, c: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + self.cross_attn(self.norm_cross(x), context=context, mask=mask)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN, then one linear map from each token to its patch's pixels."""

    def __init__(self, hidden: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(ConditionedDenoiser):
    """Diffusion transformer over image patches: ``forward(x, t, cond, cond_mask, uncond) -> [B, C, H, W]``.

    Args:
        size: a DiT preset, ``S`` / ``B`` / ``L`` (depth, hidden width, heads of DiT's Table 1).
        patch_size: side of a patch in pixels (DiT-S/2: 2); the image side must be a multiple of it.
            Tokens per image: (image_size / patch_size)².
        depth, hidden, heads: override the preset's (e.g. a tiny DiT for tests); ``hidden`` must be
            divisible by ``heads`` and by 4 (the 2-D sin-cos embedding).
        mlp_ratio: MLP width over ``hidden``.
        cond_layers: transformer layers over the conditioning sequence (as the UNet's).
        qk_norm: RMS-normalise queries and keys in every attention layer (as the UNet's).
        pos_embed: ``sincos``, DiT's fixed 2-D sin-cos table; ``learned``, a parameter that starts from it.
        in_channels: image channels (the output has as many).
        cond_dim, image_size: given by the model (its conditioning width and ``data.image_size``).
    """

    def __init__(
        self,
        size: Literal["S", "B", "L"] = "S",
        patch_size: int = 2,
        depth: int | None = None,
        hidden: int | None = None,
        heads: int | None = None,
        mlp_ratio: float = 4.0,
        cond_layers: int = 2,
        qk_norm: bool = False,
        pos_embed: Literal["sincos", "learned"] = "sincos",
        in_channels: int = 3,
        *,
        cond_dim: int,
        image_size: int,
    ) -> None:
        super().__init__()
        if size not in DIT_SIZES:
            raise ValueError(f"DiT size {size!r} is not a preset; accepted: {', '.join(DIT_SIZES)} (or override depth/hidden/heads)")
        preset = DIT_SIZES[size]
        depth, hidden, heads = (preset[i] if v is None else v for i, v in enumerate((depth, hidden, heads)))
        if patch_size < 1 or image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}; use a patch size that divides {image_size} (e.g. 2 or 4)")
        if hidden % heads or hidden % 4:
            raise ValueError(f"hidden {hidden} must be divisible by heads ({heads}) and by 4 (the 2-D sin-cos position embedding)")
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        self.size, self.patch_size, self.depth, self.hidden, self.heads = size, patch_size, depth, hidden, heads
        self.mlp_ratio, self.cond_layers, self.qk_norm, self.pos_embed, self.in_channels = mlp_ratio, cond_layers, qk_norm, pos_embed, in_channels
        self.image_size = image_size
        self.grid = image_size // patch_size

        self.x_embedder = PatchEmbed(image_size, patch_size, in_channels, hidden, bias=True)
        table = build_sincos2d_pos_embed([self.grid, self.grid], hidden)[None]  # [1, grid², hidden], row-major like the patches
        if pos_embed == "learned":
            self.pos_table = nn.Parameter(table)
        else:  # fixed: no weights, so not in the checkpoint either
            self.register_buffer("pos_table", table, persistent=False)
        self.t_embedder = nn.Sequential(nn.Linear(FREQUENCY_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.add_condition_path(cond_dim, hidden, heads, cond_layers, qk_norm=qk_norm)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.final_layer = FinalLayer(hidden, patch_size, in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's: Xavier for the blocks' linear maps and the patch projection, N(0, 0.02) for the
        timestep MLP; then adaLN-Zero: every modulation, the final projection and every cross-attention
        output start at zero, so each block is the identity and the output is 0."""

        def xavier(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.blocks.apply(xavier)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for layer in (self.t_embedder[0], self.t_embedder[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            zero_init(block.adaLN_modulation[-1])
            zero_init(block.cross_attn.proj)
        zero_init(self.final_layer.adaLN_modulation[-1])
        zero_init(self.final_layer.linear)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor, uncond: Tensor | None = None) -> Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"this DiT was built for {self.image_size}×{self.image_size} images (its position table has "
                f"{self.grid}×{self.grid} patches), got {x.shape[-2]}×{x.shape[-1]}"
            )
        context, mask, pooled = self.encode_condition(cond, cond_mask, uncond)
        c = self.t_embedder(timestep_embedding(t, FREQUENCY_DIM)) + pooled
        h = self.x_embedder(x) + self.pos_table
        for block in self.blocks:
            h = block(h, c, context, mask)
        h = self.final_layer(h, c)
        p = self.patch_size
        return rearrange(h, "b (gh gw) (p q c) -> b c (gh p) (gw q)", gh=self.grid, p=p, q=p)


__all__ = ["DIT_SIZES", "DiT", "DiTBlock"]
