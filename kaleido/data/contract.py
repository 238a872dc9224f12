"""The data contract: what kaleido's commands (``evaluate``, ``adherence``, ``extract``) and callbacks ask
of a data set, beyond a ``LightningDataModule``'s loaders. See ``docs/data.md``.

Any ``LightningDataModule`` that has the required members works; :class:`KaleidoData` declares them (and
the optional ones, with their defaults) for modules that inherit it, and :func:`require_data` names what
a module without them lacks. Generic code reaches the optional members through the functions below, so
a module that only duck-types the contract gets the same defaults.

Required:

* ``image_size`` (int) and ``tokenizer`` (:class:`~kaleido.tokenizer.KaleidoTokenizer`), linked into
  every model by the CLI; ``latent_types`` (list of :class:`~kaleido.latents.LatentType`).
* ``images(split)``: a ``Dataset`` of items ``{"id", "image" [3, H, W] in [-1, 1], "condition"}`` (more
  keys are allowed); it need not compute latents.
* ``conditions(split, count=None)``: the condition texts of the split's first ``count`` items, in order,
  without decoding images.
* ``identity()``: a short string that changes whenever the training images do (not the latents): the
  key of the cached reference statistics of FID.

Optional:

* ``ground_truth(split, latent_type, count=None)``: the exact latents of the split's first ``count``
  items where the data set has them (annotations, sidecars); ``None`` otherwise. ``adherence`` reads the
  same items with the type's reader against them: the score of the data itself, a sample's ceiling.
* ``latent_extractor(latent_type)``: the data set's own way to read a latent of that type off an image
  (e.g. an analytic parser); ``None``: the type's own extractor is used.
* ``sample_metrics(images, conditions)``: measures of generated images that only this data set can make
  (e.g. mode coverage against its annotations): ``(summary, details)``, ``summary`` a flat dict of
  floats for the metrics table, ``details`` JSON-ready.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset

from kaleido.latents import Extractor, LatentType

REQUIRED = ("image_size", "tokenizer", "latent_types", "images", "conditions", "identity")
SPLITS = ("train", "val", "test")


class DataContractError(TypeError):
    """A data module lacks what a command needs from it."""


class KaleidoData:
    """A mixin for ``LightningDataModule`` subclasses: the contract's members, the optional ones with
    their defaults (see the module docstring)."""

    latent_types: list[LatentType]

    def images(self, split: str) -> Dataset:
        raise NotImplementedError

    def conditions(self, split: str, count: int | None = None) -> list[str]:
        raise NotImplementedError

    def identity(self) -> str:
        raise NotImplementedError

    def ground_truth(self, split: str, latent_type: LatentType, count: int | None = None) -> Sequence[Any] | None:  # noqa: ARG002
        return None

    def latent_extractor(self, latent_type: LatentType) -> Extractor | None:  # noqa: ARG002
        return None

    def sample_metrics(self, images: Tensor, conditions: Sequence[str]) -> tuple[dict[str, float], dict[str, Any]] | None:  # noqa: ARG002
        return None


def require_data(datamodule: object, command: str) -> LightningDataModule:
    """``datamodule`` if it has every required member, else one clear error naming the missing ones."""
    missing = [name for name in REQUIRED if not hasattr(datamodule, name)]
    for name in ("images", "conditions", "identity"):
        if name not in missing and _is_stub(datamodule, name):
            missing.append(name)
    if missing:
        raise DataContractError(
            f"{command} needs a data module with {', '.join(REQUIRED)} (docs/data.md, 'The data contract'); "
            f"{type(datamodule).__name__} lacks {', '.join(missing)}"
        )
    return datamodule  # type: ignore[return-value]


def _is_stub(datamodule: object, name: str) -> bool:
    """A ``KaleidoData`` subclass that did not override a required method."""
    return isinstance(datamodule, KaleidoData) and getattr(type(datamodule), name) is getattr(KaleidoData, name)


def ground_truth(datamodule: object, split: str, latent_type: LatentType, count: int | None = None) -> Sequence[Any] | None:
    method = getattr(datamodule, "ground_truth", None)
    return None if method is None else method(split, latent_type, count)


def data_extractor(datamodule: object | None, latent_type: LatentType) -> Extractor | None:
    method = getattr(datamodule, "latent_extractor", None)
    return None if method is None else method(latent_type)


def sample_metrics(datamodule: object, images: Tensor, conditions: Sequence[str]) -> tuple[dict[str, float], dict[str, Any]] | None:
    method = getattr(datamodule, "sample_metrics", None)
    return None if method is None else method(images, conditions)


def build_datamodule(config: Path | dict[str, Any]) -> LightningDataModule:
    """The data module of a LightningCLI ``config.yaml`` (its ``data:`` section) or of a YAML that is just
    that section (``class_path`` + ``init_args``); or of either, already read into a dict."""
    from jsonargparse import ArgumentParser

    section = data_section(config)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--data", type=LightningDataModule)
    return parser.instantiate(parser.parse_object({"data": section})).data


def data_section(config: Path | dict[str, Any]) -> dict[str, Any]:
    """The ``data:`` section (``class_path`` + ``init_args``) of a training config, a file or a dict."""
    if isinstance(config, dict):
        loaded, source = config, "the data config"
    else:
        if not config.is_file():
            raise FileNotFoundError(f"no data config at {config}")
        loaded, source = yaml.safe_load(config.read_text()) or {}, str(config)
    section = loaded.get("data", loaded) if isinstance(loaded, dict) else None
    if not isinstance(section, dict) or "class_path" not in section:
        raise ValueError(f"{source} has no data module (a 'data:' section with class_path / init_args)")
    return section


def run_config(ckpt_path: Path) -> Path | None:
    """The ``config.yaml`` LightningCLI wrote beside a checkpoint (``version_N/config.yaml`` for
    ``version_N/checkpoints/*.ckpt``), if there is one."""
    for candidate in (ckpt_path.parent / "config.yaml", ckpt_path.parent.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    return None


def checkpoint_datamodule(
    ckpt_path: Path, data_config: Path | None = None, recorded: Callable[[], dict[str, Any] | None] | None = None
) -> LightningDataModule | None:
    """``data_config`` if given, else the ``config.yaml`` LightningCLI wrote beside the checkpoint, else the
    data section ``recorded()`` reads from the checkpoint itself (an export keeps its run's); ``None`` when
    there is none of them (a checkpoint written by ``fit`` stores no data settings)."""
    if data_config is not None:
        return build_datamodule(data_config)
    beside = run_config(ckpt_path)
    if beside is not None:
        return build_datamodule(beside)
    section = None if recorded is None else recorded()
    return None if section is None else build_datamodule(section)


__all__ = [
    "REQUIRED",
    "SPLITS",
    "DataContractError",
    "KaleidoData",
    "build_datamodule",
    "checkpoint_datamodule",
    "data_section",
    "data_extractor",
    "ground_truth",
    "require_data",
    "run_config",
    "sample_metrics",
]
