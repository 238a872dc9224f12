"""Guiders by name or class path: what YAML (`sampling.guider`) and the command lines (`--guider`,
`--guiders`) hold is plain data, built into a guider here."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Union

from kaleido.class_paths import import_class
from kaleido.diffusion.guiders.apg import APG
from kaleido.diffusion.guiders.base import Guider
from kaleido.diffusion.guiders.cads import CADS
from kaleido.diffusion.guiders.cfg import CFG
from kaleido.diffusion.guiders.interval import IntervalCFG

GUIDERS: dict[str, type[Guider]] = {cls.name: cls for cls in (CFG, IntervalCFG, APG, CADS)}

GuiderSpec = Union[str, dict[str, Any]]
"""A registered name (`"apg"`), a class path, or `{"class_path": name or path, "init_args": {...}}`."""


def _guider_class(class_path: str) -> type[Guider]:
    if class_path in GUIDERS:
        return GUIDERS[class_path]
    accepted = f"one of {', '.join(sorted(GUIDERS))} or the class path of a kaleido.diffusion.guiders.Guider subclass"
    try:
        return import_class(class_path, Guider, "guider")
    except (ValueError, TypeError):  # a name or path that is no guider: say what is accepted instead
        raise ValueError(f"unknown guider {class_path!r}; expected {accepted}") from None


def build_guider(spec: GuiderSpec | Guider | None) -> Guider:
    """A guider from a name, a class path, a `{"class_path", "init_args"}` dict or an instance
    (`None`: plain CFG)."""
    if spec is None:
        return CFG()
    if isinstance(spec, Guider):
        return spec
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or "class_path" not in spec or set(spec) - {"class_path", "init_args"}:
        raise ValueError(f'a guider is a name or {{"class_path": ..., "init_args": {{...}}}}, got {spec!r}')
    cls, init_args = _guider_class(spec["class_path"]), dict(spec.get("init_args") or {})
    accepted = [f.name for f in fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(init_args) - set(accepted))
    if unknown:
        raise ValueError(f"guider {spec['class_path']!r} takes no {unknown}; accepted: {accepted}")
    return cls(**init_args)
