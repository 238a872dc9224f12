"""Latent-type plugins and their registry. Importing this package registers the built-ins."""

from kaleido.latents.base import (
    HOOKS,
    Extractor,
    FourierGeometryEncoder,
    LatentEncoder,
    LatentParseError,
    LatentType,
    implements,
    segment_tag,
)
from kaleido.latents.blob import BlobLatent, GroundedBlob
from kaleido.latents.box import BoxLatent, GroundedBox
from kaleido.latents.colour import ColourLatent, ColourShare
from kaleido.latents.registry import (
    ENTRY_POINT_GROUP,
    available_latent_types,
    build_latent_type,
    latent_type_class,
    register_latent_type,
)
from kaleido.latents.text import TextLatent
from kaleido.latents.visual_token import VisualTokenExtractor, VisualTokenLatent

__all__ = [
    "HOOKS",
    "BlobLatent",
    "BoxLatent",
    "ColourLatent",
    "ColourShare",
    "GroundedBlob",
    "GroundedBox",
    "ENTRY_POINT_GROUP",
    "Extractor",
    "FourierGeometryEncoder",
    "LatentEncoder",
    "LatentParseError",
    "LatentType",
    "TextLatent",
    "VisualTokenExtractor",
    "VisualTokenLatent",
    "available_latent_types",
    "build_latent_type",
    "implements",
    "latent_type_class",
    "register_latent_type",
    "segment_tag",
]
