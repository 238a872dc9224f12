"""``python -m kaleido extract``: run a latent type's extractor over a data set, offline, and write its
sidecar ``latents/<type>.jsonl`` (one ``{"id", "latent"}`` line per image) for training.

The images come from an image folder (``metadata.jsonl``) or from any data module that keeps the data
contract (``images(split)``, :mod:`kaleido.data.contract`); the extractor is the one given, else the data
set's own reading of the type (``latent_extractor``), else the type's.

Resumable: images already in the sidecar are skipped, and each batch is appended and flushed, so an
interrupted run loses at most the batch in flight. See ``docs/data.md``.

Spread over processes (GPUs, nodes): ``--num_parts N --part I`` (by default torchrun's ``WORLD_SIZE`` and
``RANK``) takes the items at positions ≡ I (mod N) and appends to its own ``<type>.part-I-of-N.jsonl``,
as resumable as the sidecar; no process group, no shared file written. ``--merge true``, run once
after, joins the parts into the sidecar in the source order. See ``docs/scale.md``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from kaleido.data.contract import build_datamodule, data_extractor, require_data
from kaleido.data.folder_format import (
    LATENTS_DIR,
    UnreadableImageError,
    errors_path,
    load_image,
    read_metadata,
    read_sidecar,
    sidecar_path,
)
from kaleido.devices import resolve_device
from kaleido.extract_parts import Part, env_int, merge_parts, refuse_another_split, resolve_part
from kaleido.extract_records import (
    ExtractionError,
    Failure,
    ItemId,
    SourceItem,
    append_records,
    failure_report,
    prepare_errors,
    prepare_sidecar,
)
from kaleido.latents import Extractor, LatentType, build_latent_type


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


def _reason(error: BaseException) -> str:
    # load_image's own message already names the file and the cause
    return str(error) if isinstance(error, UnreadableImageError) else f"{type(error).__name__}: {error}"


# -- decoding, in loader workers -------------------------------------------------------------------
Decoded = tuple[int, Tensor | None, str, str | None]  # position in the run's items, image, condition, why unreadable
DecodedItem = tuple[SourceItem, Tensor | None, str, str | None]  # the same, with the item itself


class _Decode(Dataset[Decoded]):
    """The run's images, decoded by a DataLoader's workers (``--num_workers``) while the extractor works on
    an earlier batch. A failure comes back as its reason, not raised: an exception need not pickle, and
    one bad file must not stop the loader."""

    def __init__(self, items: Sequence[SourceItem]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Decoded:
        try:
            image, condition = self.items[index].load()
        except Exception as error:  # noqa: BLE001 - reported with the image's name
            return index, None, "", _reason(error)
        return index, image, condition, None


def _decoded_batches(items: Sequence[SourceItem], batch_size: int, num_workers: int) -> Iterator[list[DecodedItem]]:
    """``items`` in order and in batches, decoded; a batch is a list, as folder images may differ in size."""
    workers = min(num_workers, len(items))  # none started for a run with nothing left to do
    loader = DataLoader(_Decode(items), batch_size=batch_size, num_workers=workers, collate_fn=list)
    for batch in loader:
        yield [(items[index], image, condition, unreadable) for index, image, condition, unreadable in batch]


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
    batch: Sequence[DecodedItem],
    latent_type: LatentType,
    extractor: Extractor,
    on_error: Literal["raise", "skip"],
) -> tuple[list[tuple[SourceItem, str]], list[Failure]]:
    """The validated latent texts of a decoded batch ((item, image or ``None``, condition, why unreadable)
    each, as the loader gives them), in batch order, and its failures; with ``on_error="raise"`` the
    first failure raises :class:`ExtractionError` instead."""
    failures: list[Failure] = []

    def fail(item: SourceItem, kind: str, reason: str, cause: BaseException | None = None) -> None:
        if on_error == "raise":
            raise ExtractionError(
                f"{kind} for {item.name}: {reason}\n(pass --on_error skip to log such images in the errors file and go on)"
            ) from cause
        failures.append(Failure(item, kind, reason))

    loaded: dict[tuple[int, ...], list[tuple[SourceItem, Tensor, str]]] = defaultdict(list)
    for item, image, condition, unreadable in batch:
        if image is None:
            fail(item, "unreadable image", str(unreadable))
            continue
        loaded[tuple(image.shape)].append((item, image, condition))  # folder images may differ in size
    texts: dict[ItemId, str] = {}
    for group in loaded.values():
        for item, latent in _run_extractor(extractor, group):
            if isinstance(latent, BaseException):
                fail(item, "extractor error", _reason(latent), latent)
                continue
            try:
                texts[item.id] = validated_text(latent_type, latent)
            except Exception as error:  # noqa: BLE001 - format/parse problems of one latent
                fail(item, "invalid latent", _reason(error), error)
    return [(item, texts[item.id]) for item, _, _, _ in batch if item.id in texts], failures


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
    num_workers: int = 0,
    limit: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    device: str = "auto",
    num_parts: int | None = None,
    part: int | None = None,
    merge: bool = False,
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
        num_workers: loader processes decoding the images while the extractor runs (0: in this process).
        limit: only the first ``limit`` images of the data set (those done are still skipped).
        on_error: an unreadable image, an extractor error or a latent that does not read back:
            "raise" stops naming the image; "skip" logs it to ``<type>.errors.jsonl`` and goes on
            (skipped images are retried on the next run).
        device: where the extractor runs: "auto" (CUDA when a GPU is visible; with several, GPU
            ``LOCAL_RANK`` under torchrun), "cpu", "cuda" or "cuda:N". It matters for extractors with a
            network or batched tensor maths (visual tokens, colour); the others run on the host.
        num_parts: split the run over this many processes (default: ``WORLD_SIZE`` under torchrun, else 1).
        part: this process's part, 0..num_parts-1 (default: ``RANK``): the images at positions ≡ part
            (mod num_parts), written to ``<type>.part-<part>-of-<num_parts>.jsonl``.
        merge: instead of extracting, join the finished parts into ``<type>.jsonl`` in the source order
            (the same source arguments; one process, once every part is done).
        progress: show a progress bar.

    Returns:
        The sidecar's path (a part's file for a part).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if merge and (num_parts is not None or part is not None):
        raise ValueError("--merge true joins every part file found: drop --num_parts and --part")
    if merge and (env_int("WORLD_SIZE") or 1) > 1:
        raise ValueError("--merge true runs in one process once every part is done, not under torchrun or srun (WORLD_SIZE > 1)")
    share = Part() if merge else resolve_part(num_parts, part)
    device = resolve_device(device, env_int("LOCAL_RANK"))
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
    considered = items if limit is None else items[:limit]
    if merge:  # no extractor: a model-backed one would load for nothing
        return merge_parts(latent_type, considered, directory)
    refuse_another_split(directory, latent_type, share)  # before a model loads
    if extractor is None:
        extractor = data_extractor(data, latent_type) or _builtin_extractor(latent_type)
    extractor = extractor.to(device)
    directory.mkdir(parents=True, exist_ok=True)
    return _extract_share(latent_type, extractor, considered, directory, share, batch_size, num_workers, on_error, progress)


def _extract_share(
    latent_type: LatentType,
    extractor: Extractor,
    items: Sequence[SourceItem],
    directory: Path,
    share: Part,
    batch_size: int,
    num_workers: int,
    on_error: Literal["raise", "skip"],
    progress: bool,
) -> Path:
    """Extract ``share`` of ``items`` into its file (the sidecar, or its part file), skipping what is done."""
    path = share.path(directory, latent_type)
    log = errors_path(path)
    done = prepare_sidecar(path)
    if share.count > 1:  # the sidecar is only read here: every part may be running, and only the merge writes it
        done |= set(read_sidecar(sidecar_path(directory, latent_type)).latents)
    mine = share.of(items)
    todo = [item for item in mine if item.id not in done]
    prepare_errors(log, done | {item.id for item in todo})

    label = latent_type.name if share.count == 1 else f"{latent_type.name} part {share.index} of {share.count}"
    extracted, failures = 0, list[Failure]()
    bar = tqdm(total=len(todo), desc=f"extract {label}", unit="image", disable=not progress)
    with open(path, "a", encoding="utf-8") as sink, bar:
        for batch in _decoded_batches(todo, batch_size, num_workers):
            texts, failed = extract_batch(batch, latent_type, extractor, on_error)
            append_records(sink, [{"id": item.id, "latent": text} for item, text in texts])
            if failed:
                with open(log, "a", encoding="utf-8") as file:
                    append_records(file, [{"id": f.item.id, "kind": f.kind, "error": f.reason} for f in failed])
                failures += failed
            extracted += len(texts)
            bar.update(len(batch))
    if log.exists() and log.stat().st_size == 0:
        log.unlink()

    counts, details = failure_report(failures, log)
    print(f"{label}: extracted {extracted}, skipped {len(failures)}{counts}, already done {len(mine) - len(todo)} -> {path}{details}")
    if share.count > 1:
        merged = sidecar_path(directory, latent_type)
        print(f"(once all {share.count} parts are done, the same arguments with --merge true, in one process, join them into {merged})")
    return path


__all__ = [
    "ExtractionError",
    "Failure",
    "Part",
    "SourceItem",
    "data_source",
    "extract",
    "extract_batch",
    "failure_report",
    "folder_source",
    "merge_parts",
    "resolve_part",
    "validated_text",
]
