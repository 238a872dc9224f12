"""Latent-type plugins and their registry. Importing this package registers the built-ins."""

from kaleido.latents.base import Extractor, LatentEncoder, LatentParseError, LatentType, segment_tag
from kaleido.latents.registry import (
    ENTRY_POINT_GROUP,
    available_latent_types,
    build_latent_type,
    latent_type_class,
    register_latent_type,
)
from kaleido.latents.text import TextLatent

__all__ = [
    "ENTRY_POINT_GROUP",
    "Extractor",
    "LatentEncoder",
    "LatentParseError",
    "LatentType",
    "TextLatent",
    "available_latent_types",
    "build_latent_type",
    "latent_type_class",
    "register_latent_type",
    "segment_tag",
]
