"""Latent types found by name: built-ins, entry points (group ``kaleido.latents``) and class paths."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, TypeVar

from kaleido.class_paths import import_class
from kaleido.latents.base import LatentType

ENTRY_POINT_GROUP = "kaleido.latents"

_REGISTRY: dict[str, type[LatentType]] = {}
_ORIGIN: dict[str, str] = {}
_entry_points_loaded = False

T = TypeVar("T", bound=type[LatentType])


def register_latent_type(cls: T, *, origin: str | None = None) -> T:
    """Class decorator: make ``cls`` findable by ``cls.name``. Re-registering the same class is a no-op."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"{cls.__qualname__} needs a class attribute `name` that is an identifier, got {name!r}")
    known = _REGISTRY.get(name)
    if known is not None and known is not cls:
        raise ValueError(
            f"latent type name {name!r} is taken by {known.__module__}.{known.__qualname__} "
            f"(from {_ORIGIN[name]}); choose another name for {cls.__module__}.{cls.__qualname__}"
        )
    _REGISTRY[name] = cls
    _ORIGIN[name] = origin or f"{cls.__module__}.{cls.__qualname__}"
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, LatentType)):
            raise TypeError(f"entry point {ep.name} = {ep.value} in group {ENTRY_POINT_GROUP!r} is not a LatentType")
        register_latent_type(cls, origin=f"entry point {ep.value} ({ep.dist.name if ep.dist else 'unknown dist'})")


def available_latent_types() -> dict[str, str]:
    """Registered names → where each comes from."""
    _load_entry_points()
    return dict(sorted(_ORIGIN.items()))


def latent_type_class(name: str) -> type[LatentType]:
    _load_entry_points()
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown latent type {name!r}; registered: {', '.join(sorted(_REGISTRY)) or 'none'}. "
            f"Third-party types register through the entry-point group {ENTRY_POINT_GROUP!r} or are named by class_path"
        )
    return _REGISTRY[name]


def build_latent_type(spec: str | LatentType | dict[str, Any]) -> LatentType:
    """A latent type from a registered name, an instance, or ``{"class_path": ..., "init_args": {...}}``."""
    if isinstance(spec, LatentType):
        return spec
    if isinstance(spec, str):
        return latent_type_class(spec)()
    if isinstance(spec, dict) and "class_path" in spec:
        cls, init_args = import_class(spec["class_path"], LatentType, "latent type"), spec.get("init_args", {})
        try:
            return cls(**init_args)
        except TypeError as error:  # arguments the class does not take (a spec from another version)
            raise TypeError(f"cannot build latent type {spec['class_path']} with init_args {init_args}: {error}") from None
    raise TypeError(f"a latent type is a registered name, a LatentType, or a class_path dict; got {spec!r}")
