"""One process's share of ``python -m kaleido extract`` (``--num_parts N --part I``, or torchrun's
``WORLD_SIZE`` / ``RANK``) and the merge of the parts into the sidecar (``--merge true``; ``docs/scale.md``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kaleido.data.folder_format import PART_FILE, errors_path, part_path, read_sidecar, sidecar_path
from kaleido.extract_records import (
    FIRST_FAILURES,
    ExtractionError,
    Failure,
    SourceItem,
    error_records,
    failure_report,
    write_atomically,
)
from kaleido.latents import LatentType


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


def env_int(name: str) -> int | None:
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
        num_parts, part = env_int("WORLD_SIZE"), env_int("RANK")
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


def split_counts(directory: Path, latent_type: LatentType) -> set[int]:
    """The N of the type's part files ``<type>.part-I-of-N.jsonl`` in ``directory``."""
    found = (PART_FILE.fullmatch(path.name) for path in directory.glob("*.part-*-of-*.jsonl"))
    return {int(match["count"]) for match in found if match is not None and match["type"] == latent_type.name}


def refuse_another_split(directory: Path, latent_type: LatentType, part: Part) -> None:
    """Parts of another N hold other processes' shares of the same items: one split at a time."""
    others = sorted(split_counts(directory, latent_type) - {part.count})
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
    counts = split_counts(directory, latent_type)
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
    failed = {r["id"]: r for part in parts for r in error_records(errors_path(part)) if r["id"] not in texts}
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
    write_atomically(path, [{"id": item_id, "latent": texts[item_id]} for item_id in order])
    log = errors_path(path)
    kept = [r for r in error_records(log) if r["id"] not in positions and r["id"] not in texts]  # the parts retried the others
    logged = sorted(failed.values(), key=lambda record: positions.get(record["id"], len(positions))) + kept
    if logged:
        write_atomically(log, logged)
    else:
        log.unlink(missing_ok=True)
    for part in parts:  # only now: the merged files hold everything the parts held
        part.unlink(missing_ok=True)
        errors_path(part).unlink(missing_ok=True)

    failures = [Failure(items[positions[i]], str(r.get("kind")), str(r.get("error"))) for i, r in failed.items() if i in positions]
    counts_text, details = failure_report(sorted(failures, key=lambda f: positions[f.item.id]), log)
    print(f"{name}: merged {count} parts: {len(order)} latents, {len(failures)} failed{counts_text} -> {path}{details}")
    return path
