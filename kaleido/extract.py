"""``python -m kaleido extract``: run a latent type's extractor over a data set, offline, and write its
sidecar ``latents/<type>.jsonl`` (one ``{"id", "latent"}`` line per image) for training.

The images come from an image folder (``metadata.jsonl``) or from any data module that keeps the data
contract (``images(split)``, :mod:`kaleido.data.contract`); the extractor is the one given, else the data
set's own reading of the type (``latent_extractor``), else the type's.

Resumable: images already in the sidecar are skipped, and each batch is appended and flushed, so an
interrupted run loses at most the batch in flight. See ``docs/data.md``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from tqdm import tqdm

from kaleido.data.contract import build_datamodule, data_extractor, require_data
from kaleido.data.folder_format import (
    LATENTS_DIR,
    UnreadableImageError,
    load_image,
    read_metadata,
    read_sidecar,
    sidecar_path,
)
from kaleido.devices import resolve_device
from kaleido.latents import Extractor, LatentType, build_latent_type

ItemId = str | int


class ExtractionError(ValueError):
    """Extraction cannot go on: names the image and what went wrong."""


@dataclass(frozen=True)
class SourceItem:
    """One image to extract from: its sidecar id, how messages name it, and how to load it."""

    id: ItemId
    name: str
    load: Callable[[], tuple[Tensor, str]]  # → (image [3, H, W] in [-1, 1], condition)
    metadata: Mapping[str, Any] = field(default_factory=dict)  # a folder's metadata.jsonl fields


@dataclass(frozen=True)
class Failure:
    item: SourceItem
    kind: str  # "unreadable image" | "extractor error" | "invalid latent"
    reason: str


# -- data sources ----------------------------------------------------------------------------------
def _folder_image(path: Path, size: int | None, condition: str) -> tuple[Tensor, str]:
    return load_image(path, size), condition


def folder_source(folder: Path, image_size: int | None, condition_template: str) -> list[SourceItem]:
    """The images of an image folder (``metadata.jsonl``), with the conditions training will see."""
    return [
        SourceItem(r.file_name, repr(r.file_name), partial(_folder_image, folder / r.file_name, image_size, r.condition), r.fields)
        for r in read_metadata(folder, condition_template)
    ]


def _data_image(dataset: Any, index: int) -> tuple[Tensor, str]:
    item = dataset[index]
    return item["image"], item["condition"]


def data_source(datamodule: object, split: str) -> list[SourceItem]:
    """The items of a data module's split (``images(split)``, the data contract), under their own ids."""
    dataset = require_data(datamodule, "extract").images(split)  # type: ignore[attr-defined]
    items = []
    for index in range(len(dataset)):
        item_id = _item_id(dataset, index)
        items.append(SourceItem(item_id, f"{split} item {item_id!r}", partial(_data_image, dataset, index)))
    return items


def _item_id(dataset: Any, index: int) -> ItemId:
    """The id of item ``index`` without decoding its image where the data set can say it (``item_id``)."""
    item_id = dataset.item_id(index) if hasattr(dataset, "item_id") else dataset[index]["id"]
    return item_id if isinstance(item_id, str) else int(item_id)


# -- the sidecar and the error log -----------------------------------------------------------------
def _prepare_sidecar(path: Path) -> set[ItemId]:
    """The ids already extracted; drops a last line cut short by an interruption (so it is redone)."""
    sidecar = read_sidecar(path)
    if sidecar.partial is not None:
        warnings.warn(
            f"{path}: dropping an unterminated last line, a write cut short by an interruption "
            f"({sidecar.partial[:80]!r}); that image is extracted again",
            stacklevel=3,
        )
        with open(path, "r+b") as file:
            file.truncate(sidecar.good_bytes)
    elif sidecar.needs_newline:  # complete but hand-edited without the final newline: appending must not glue lines
        with open(path, "a", encoding="utf-8") as file:
            file.write("\n")
    return set(sidecar.latents)


def _prepare_errors(path: Path, retried: set[ItemId]) -> None:
    """Keep the logged failures of images this run does not retry; the retried ones log afresh."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a log, not data: an unreadable line is simply dropped
        item_id = record.get("id") if isinstance(record, dict) else None
        if isinstance(item_id, (str, int)) and item_id not in retried:
            kept.append(line + "\n")
    path.write_text("".join(kept), encoding="utf-8")


def _append(file: IO[str], records: Sequence[dict[str, Any]]) -> None:
    """One write per batch, then flush and fsync: a crash leaves whole lines, plus at most one partial."""
    if records:
        file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        file.flush()
        os.fsync(file.fileno())


# -- one batch -------------------------------------------------------------------------------------
def validated_text(latent_type: LatentType, latent: Any) -> str:
    """The editable text of ``latent``, checked to read back: a sidecar never holds text its type cannot parse."""
    text = latent_type.format(latent)
    if not isinstance(text, str):
        raise TypeError(f"{type(latent_type).__name__}.format returned {type(text).__name__}, not str")
    again = latent_type.format(latent_type.parse(text))
    if again != text:
        raise ValueError(f"the text does not read back: format(parse({text!r})) gives {again!r}")
    return text


def _run_extractor(extractor: Extractor, group: list[tuple[SourceItem, Tensor, str]]) -> list[tuple[SourceItem, Any]]:
    """(item, latent object or the exception it raised) for same-size images; if the batch call fails,
    the images are retried one by one, so only the image(s) at fault fail."""
    metadata = {"metadata": [item.metadata for item, _, _ in group]} if getattr(extractor, "uses_metadata", False) else {}
    try:
        with torch.inference_mode():
            latents = extractor(torch.stack([image for _, image, _ in group]), [condition for _, _, condition in group], **metadata)
    except Exception as error:  # noqa: BLE001 - an extractor may raise anything; it is reported per image
        if len(group) == 1:
            return [(group[0][0], error)]
        return [pair for entry in group for pair in _run_extractor(extractor, [entry])]
    if len(latents) != len(group):  # a broken extractor, not a bad image: always stop
        raise ExtractionError(f"{type(extractor).__name__} returned {len(latents)} latents for {len(group)} images")
    return [(item, latent) for (item, _, _), latent in zip(group, latents)]


def extract_batch(
    batch: Sequence[SourceItem], latent_type: LatentType, extractor: Extractor, on_error: Literal["raise", "skip"]
) -> tuple[list[tuple[SourceItem, str]], list[Failure]]:
    """The validated latent texts of a batch (in batch order) and its failures; with ``on_error="raise"``
    the first failure raises :class:`ExtractionError` instead."""
    failures: list[Failure] = []

    def fail(item: SourceItem, kind: str, error: BaseException) -> None:
        # load_image's own message already names the file and the cause
        reason = str(error) if isinstance(error, UnreadableImageError) else f"{type(error).__name__}: {error}"
        if on_error == "raise":
            raise ExtractionError(
                f"{kind} for {item.name}: {reason}\n(pass --on_error skip to log such images in the errors file and go on)"
            ) from error
        failures.append(Failure(item, kind, reason))

    loaded: dict[tuple[int, ...], list[tuple[SourceItem, Tensor, str]]] = defaultdict(list)
    for item in batch:
        try:
            image, condition = item.load()
        except Exception as error:  # noqa: BLE001 - reported with the image's name
            fail(item, "unreadable image", error)
            continue
        loaded[tuple(image.shape)].append((item, image, condition))  # folder images may differ in size
    texts: dict[ItemId, str] = {}
    for group in loaded.values():
        for item, latent in _run_extractor(extractor, group):
            if isinstance(latent, BaseException):
                fail(item, "extractor error", latent)
                continue
            try:
                texts[item.id] = validated_text(latent_type, latent)
            except Exception as error:  # noqa: BLE001 - format/parse problems of one latent
                fail(item, "invalid latent", error)
    return [(item, texts[item.id]) for item in batch if item.id in texts], failures


def _builtin_extractor(latent_type: LatentType) -> Extractor:
    try:
        return latent_type.build_extractor()
    except NotImplementedError as error:
        raise ExtractionError(
            f"{error}. Pass a model-backed extractor with --extractor (a class path and its init args, e.g. "
            "kaleido.latents.extractors.DetectorBoxExtractor --extractor.model_path DIR), or write the sidecar "
            "yourself (format: docs/data.md)"
        ) from None


# -- the command -----------------------------------------------------------------------------------
def extract(
    latent: str | dict[str, Any] | LatentType,
    folder: Path | None = None,
    data_config: Path | None = None,
    data: LightningDataModule | None = None,
    split: str = "train",
    output: Path | None = None,
    extractor: Extractor | None = None,
    image_size: int | None = None,
    condition_template: str = "{label}",
    batch_size: int = 64,
    limit: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Extract one latent type for every image of a data set into the sidecar ``<output>/<type>.jsonl``.

    One line ``{"id": ..., "latent": "<editable text>"}`` per image; a rerun skips the images done.

    Args:
        latent: the latent type: a registered name ("text", "box", ...) or a class_path spec
            ('{"class_path": "kaleido.latents.BoxLatent", "init_args": {"grid": 100}}').
        folder: an image folder (``metadata.jsonl`` + images; see docs/data.md). Ids are file names.
        data_config: instead of a folder, a data module's YAML (a training config, or its ``data:``
            section): the items of its ``split`` (``images(split)`` of the data contract), under their ids.
        data: the same, a data module built in Python.
        split: the data module's split.
        output: the folder of sidecars (default ``FOLDER/latents``; required with a data module).
        extractor: an extractor to use instead of the data set's own reading of the type or the type's
            built-in one, e.g. ``kaleido.latents.extractors.DetectorBoxExtractor --extractor.model_path DIR``.
        image_size: folder only: resize the centre-cropped square to this side before extracting
            (default: keep its resolution). The crop is always the one training uses.
        condition_template: folder only: the condition of ``label`` metadata (as ImageFolderDataModule's).
        batch_size: images per extractor call; each batch is appended to the sidecar when done.
        limit: only the first ``limit`` images of the data set (those done are still skipped).
        on_error: an unreadable image, an extractor error or a latent that does not read back:
            "raise" stops naming the image; "skip" logs it to ``<type>.errors.jsonl`` and goes on
            (skipped images are retried on the next run).
        device: where the extractor runs: "auto" (CUDA when a GPU is visible), "cpu" or "cuda". It
            matters for extractors with a network or batched tensor maths (visual tokens, colour); the
            others run on the host whatever is given.
        progress: show a progress bar.

    Returns:
        The sidecar's path.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    device = resolve_device(device)
    if sum(source is not None for source in (folder, data_config, data)) != 1:
        raise ValueError(
            "name the images with exactly one of --folder DIR (an image folder with metadata.jsonl) "
            "or --data_config CONFIG.yaml (a data module, e.g. configs/shapes/kaleido_text.yaml) with --split"
        )
    if isinstance(latent, str) and latent.lstrip().startswith("{"):  # a class_path spec passed as JSON text
        latent = json.loads(latent)
    latent_type = build_latent_type(latent)
    if folder is not None:
        items = folder_source(Path(folder), image_size, condition_template)
        directory = Path(output) if output is not None else Path(folder) / LATENTS_DIR
    else:
        if output is None:
            raise ValueError("a data module's latents need --output, the folder to write the sidecar to")
        if image_size is not None:
            raise ValueError("--image_size is for --folder; a data module's images have its own size")
        data = data if data is not None else build_datamodule(Path(data_config))  # type: ignore[arg-type]
        items = data_source(data, split)
        directory = Path(output)
    if extractor is None:
        extractor = data_extractor(data, latent_type) or _builtin_extractor(latent_type)
    extractor = extractor.to(device)

    directory.mkdir(parents=True, exist_ok=True)
    path = sidecar_path(directory, latent_type)
    errors_path = path.with_name(f"{latent_type.name}.errors.jsonl")
    done = _prepare_sidecar(path)
    considered = items if limit is None else items[:limit]
    todo = [item for item in considered if item.id not in done]
    _prepare_errors(errors_path, done | {item.id for item in todo})

    extracted, skipped = 0, Counter[str]()
    with open(path, "a", encoding="utf-8") as sink, tqdm(
        total=len(todo), desc=f"extract {latent_type.name}", unit="image", disable=not progress
    ) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            texts, failures = extract_batch(batch, latent_type, extractor, on_error)
            _append(sink, [{"id": item.id, "latent": text} for item, text in texts])
            if failures:
                with open(errors_path, "a", encoding="utf-8") as log:
                    _append(log, [{"id": f.item.id, "kind": f.kind, "error": f.reason} for f in failures])
                skipped.update(f.kind for f in failures)
            extracted += len(texts)
            bar.update(len(batch))
    if errors_path.exists() and errors_path.stat().st_size == 0:
        errors_path.unlink()

    reasons = f" ({', '.join(f'{kind}: {n}' for kind, n in sorted(skipped.items()))}; see {errors_path})" if skipped else ""
    print(
        f"{latent_type.name}: extracted {extracted}, skipped {sum(skipped.values())}{reasons}, "
        f"already done {len(considered) - len(todo)} -> {path}"
    )
    return path


__all__ = ["ExtractionError", "SourceItem", "data_source", "extract", "extract_batch", "folder_source", "validated_text"]
