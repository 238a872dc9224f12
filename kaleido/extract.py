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
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from kaleido.data.contract import build_datamodule, data_extractor, require_data
from kaleido.data.folder_format import (
    LATENTS_DIR,
    PART_FILE,
    UnreadableImageError,
    errors_path,
    load_image,
    part_path,
    read_metadata,
    read_sidecar,
    sidecar_path,
)
from kaleido.devices import resolve_device
from kaleido.latents import Extractor, LatentType, build_latent_type

ItemId = str | int
FIRST_FAILURES = 3  # failures named, with their reasons, under a summary line


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


def _error_records(path: Path) -> list[dict[str, Any]]:
    """The failures logged in an errors file, ``{"id", "kind", "error"}`` each (none if there is no file)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a log, not data: an unreadable line is simply dropped
        if isinstance(record, dict) and isinstance(record.get("id"), (str, int)):
            records.append(record)
    return records


def _prepare_errors(path: Path, retried: set[ItemId]) -> None:
    """Keep the logged failures of images this run does not retry; the retried ones log afresh."""
    if path.exists():
        _write_atomically(path, [record for record in _error_records(path) if record["id"] not in retried])


def _append(file: IO[str], records: Sequence[dict[str, Any]]) -> None:
    """One write per batch, then flush and fsync: a crash leaves whole lines, plus at most one partial."""
    if records:
        file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        file.flush()
        os.fsync(file.fileno())


def _write_atomically(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write beside, then replace: a reader or a crash sees the old file or the new one, never half of one.
    The temporary name is this process's own, so two writers at once cannot interleave their lines."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        _append(file, records)
    os.replace(temporary, path)


def _reason(error: BaseException) -> str:
    # load_image's own message already names the file and the cause
    return str(error) if isinstance(error, UnreadableImageError) else f"{type(error).__name__}: {error}"


def failure_report(failures: Sequence[Failure], log: Path) -> tuple[str, str]:
    """For a summary line: `` (kind: n, ...; see LOG)``, and the first few failures with their reasons
    (one indented line each) to print under it; empty strings when nothing failed."""
    if not failures:
        return "", ""
    kinds = Counter(failure.kind for failure in failures)
    counts = f" ({', '.join(f'{kind}: {n}' for kind, n in sorted(kinds.items()))}; see {log})"
    first = "".join(f"\n  {f.item.name}: {f.kind}: {f.reason[:200]}" for f in failures[:FIRST_FAILURES])
    more = f"\n  ... and {len(failures) - FIRST_FAILURES} more" if len(failures) > FIRST_FAILURES else ""
    return counts, first + more


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


# -- parts: one process's share --------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """The items at positions ≡ ``index`` (mod ``count``) of the source order. Strided, not contiguous
    ranges: a part keeps its items when images are appended to the data set (ranges would shift, and a
    resumed part would redo another's), and a source sorted by class or size costs every part alike."""

    index: int = 0
    count: int = 1

    def of(self, items: Sequence[SourceItem]) -> Sequence[SourceItem]:
        return items[self.index :: self.count]

    def path(self, directory: Path, latent_type: LatentType) -> Path:
        """The whole run writes the sidecar itself; a part, its own part file."""
        if self.count == 1:
            return sidecar_path(directory, latent_type)
        return part_path(directory, latent_type, self.index, self.count)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number") from None


def resolve_part(num_parts: int | None, part: int | None) -> Part:
    """``--num_parts`` and ``--part``, else the launcher's ``WORLD_SIZE`` and ``RANK`` (torchrun, Lightning),
    else the whole data set; a value out of range is refused in one line naming where it came from."""
    if (num_parts is None) != (part is None):
        raise ValueError("give --num_parts N and --part I together, or neither (under torchrun they come from WORLD_SIZE and RANK)")
    names = "--num_parts", "--part"
    if num_parts is None:
        names = "WORLD_SIZE", "RANK"
        num_parts, part = _env_int("WORLD_SIZE"), _env_int("RANK")
        if num_parts is None:
            return Part()
        if part is None:
            raise ValueError("WORLD_SIZE is set but RANK is not: set both, or pass --num_parts N --part I")
    assert part is not None
    if num_parts < 1:
        raise ValueError(f"{names[0]} must be >= 1, got {num_parts}")
    if not 0 <= part < num_parts:
        raise ValueError(f"{names[1]} must be in 0..{num_parts - 1} with {names[0]} {num_parts}, got {part}")
    return Part(part, num_parts)


def _split_counts(directory: Path, latent_type: LatentType) -> set[int]:
    """The N of the type's part files ``<type>.part-I-of-N.jsonl`` in ``directory``."""
    found = (PART_FILE.fullmatch(path.name) for path in directory.glob("*.part-*-of-*.jsonl"))
    return {int(match["count"]) for match in found if match is not None and match["type"] == latent_type.name}


def _refuse_another_split(directory: Path, latent_type: LatentType, part: Part) -> None:
    """Parts of another N hold other processes' shares of the same items: one split at a time."""
    others = sorted(_split_counts(directory, latent_type) - {part.count})
    if others:
        this = "is not split" if part.count == 1 else f"is split in {part.count}"
        raise ValueError(
            f"{directory} holds {latent_type.name}.part-I-of-{others[0]}.jsonl files of a run split in {others[0]}, and this "
            f"run {this}: finish that run and merge it (--merge true), or delete its part files"
        )


# -- merging the parts -----------------------------------------------------------------------------
def _first(names: Sequence[str]) -> str:
    return ", ".join(names[:FIRST_FAILURES]) + (", ..." if len(names) > FIRST_FAILURES else "")


def merge_parts(latent_type: LatentType, items: Sequence[SourceItem], directory: Path) -> Path:
    """Join the part files of ``latent_type`` in ``directory`` into its sidecar, in the order of ``items``.

    The sidecar's own lines (a run before the split) are kept. Refused, with nothing changed, unless every
    item is extracted or logged as failed, and only once (a part still running or interrupted leaves items
    missing). The sidecar and its errors log are replaced atomically, and only then are the parts removed;
    a merge interrupted between the two is simply run again (a part's line that the sidecar already holds
    with the same text is that line, not a duplicate)."""
    name, path = latent_type.name, sidecar_path(directory, latent_type)
    counts = _split_counts(directory, latent_type)
    if len(counts) > 1:
        splits = " and ".join(map(str, sorted(counts)))
        raise ValueError(f"{directory} holds {name} parts of runs split in {splits}: keep one run's part files")
    if not counts:
        if not path.exists():
            raise ValueError(f"nothing to merge: no {name}.part-I-of-N.jsonl in {directory} (extract with --num_parts N --part I first)")
        print(f"{name}: no parts to merge; {path} is as it was")
        return path
    count = counts.pop()
    parts = [part_path(directory, latent_type, index, count) for index in range(count)]

    texts = {item_id: text for item_id, (_, text) in read_sidecar(path).latents.items()}
    where = dict.fromkeys(texts, path)
    twice: list[str] = []
    for part in parts:  # a part that never ran reads as empty: its items are missing
        for item_id, (_, text) in read_sidecar(part).latents.items():
            if item_id in where and not (where[item_id] == path and texts[item_id] == text):
                twice.append(f"{item_id!r} in {where[item_id].name} and {part.name}")
                continue
            texts[item_id], where[item_id] = text, part
    failed = {r["id"]: r for part in parts for r in _error_records(errors_path(part)) if r["id"] not in texts}
    missing = [(position, item) for position, item in enumerate(items) if item.id not in texts and item.id not in failed]
    if missing or twice:
        problems = []
        if missing:
            unfinished = ", ".join(str(index) for index in sorted({position % count for position, _ in missing}))
            names = _first([item.name for _, item in missing])
            problems.append(f"{len(missing)} images missing ({names}), of parts {unfinished}: run them (again)")
        if twice:
            problems.append(f"{len(twice)} images extracted twice ({_first(twice)})")
        raise ExtractionError(f"cannot merge the {count} parts of {name} in {directory}: {'; '.join(problems)}")

    positions = {item.id: position for position, item in enumerate(items)}
    order = [item.id for item in items if item.id in texts] + [i for i in texts if i not in positions]  # ids past --limit: kept
    _write_atomically(path, [{"id": item_id, "latent": texts[item_id]} for item_id in order])
    log = errors_path(path)
    kept = [r for r in _error_records(log) if r["id"] not in positions and r["id"] not in texts]  # the parts retried the others
    logged = sorted(failed.values(), key=lambda record: positions.get(record["id"], len(positions))) + kept
    if logged:
        _write_atomically(log, logged)
    else:
        log.unlink(missing_ok=True)
    for part in parts:  # only now: the merged files hold everything the parts held
        part.unlink(missing_ok=True)
        errors_path(part).unlink(missing_ok=True)

    failures = [Failure(items[positions[i]], str(r.get("kind")), str(r.get("error"))) for i, r in failed.items() if i in positions]
    counts_text, details = failure_report(sorted(failures, key=lambda f: positions[f.item.id]), log)
    print(f"{name}: merged {count} parts: {len(order)} latents, {len(failures)} failed{counts_text} -> {path}{details}")
    return path


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
    if merge and (_env_int("WORLD_SIZE") or 1) > 1:
        raise ValueError("--merge true runs in one process once every part is done, not under torchrun or srun (WORLD_SIZE > 1)")
    share = Part() if merge else resolve_part(num_parts, part)
    device = resolve_device(device, _env_int("LOCAL_RANK"))
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
    _refuse_another_split(directory, latent_type, share)  # before a model loads
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
    done = _prepare_sidecar(path)
    if share.count > 1:  # the sidecar is only read here: every part may be running, and only the merge writes it
        done |= set(read_sidecar(sidecar_path(directory, latent_type)).latents)
    mine = share.of(items)
    todo = [item for item in mine if item.id not in done]
    _prepare_errors(log, done | {item.id for item in todo})

    label = latent_type.name if share.count == 1 else f"{latent_type.name} part {share.index} of {share.count}"
    extracted, failures = 0, list[Failure]()
    bar = tqdm(total=len(todo), desc=f"extract {label}", unit="image", disable=not progress)
    with open(path, "a", encoding="utf-8") as sink, bar:
        for batch in _decoded_batches(todo, batch_size, num_workers):
            texts, failed = extract_batch(batch, latent_type, extractor, on_error)
            _append(sink, [{"id": item.id, "latent": text} for item, text in texts])
            if failed:
                with open(log, "a", encoding="utf-8") as file:
                    _append(file, [{"id": f.item.id, "kind": f.kind, "error": f.reason} for f in failed])
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
