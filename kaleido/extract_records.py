"""What ``python -m kaleido extract`` reads and writes besides the images: the items it extracts from
(``SourceItem``), its failures, and the files it appends to: sidecars and error logs, each resumable and
written so that an interruption leaves whole lines (``docs/data.md``)."""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from torch import Tensor

from kaleido.data.folder_format import read_sidecar

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


# -- the sidecar and the error log -----------------------------------------------------------------
def prepare_sidecar(path: Path) -> set[ItemId]:
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


def error_records(path: Path) -> list[dict[str, Any]]:
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


def prepare_errors(path: Path, retried: set[ItemId]) -> None:
    """Keep the logged failures of images this run does not retry; the retried ones log afresh."""
    if path.exists():
        write_atomically(path, [record for record in error_records(path) if record["id"] not in retried])


def append_records(file: IO[str], records: Sequence[dict[str, Any]]) -> None:
    """One write per batch, then flush and fsync: a crash leaves whole lines, plus at most one partial."""
    if records:
        file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        file.flush()
        os.fsync(file.fileno())


def write_atomically(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write beside, then replace: a reader or a crash sees the old file or the new one, never half of one.
    The temporary name is this process's own, so two writers at once cannot interleave their lines."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        append_records(file, records)
    os.replace(temporary, path)




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
