"""``python -m kaleido shard``: an image folder (metadata, images, latent sidecars) → litdata shards that
:class:`~kaleido.data.shards.ShardDataModule` streams (``docs/scale.md``).

The folder is read and checked by :class:`~kaleido.data.folder.ImageFolderDataModule` itself (missing or
unreadable images, images without a latent, lines without a condition: its own errors), and split by
it, so the shards hold exactly the items, conditions and split it would train on. Each item keeps its
image file's bytes as stored (never re-encoded: the pixels, and any later change of ``image_size``, stay
the folder's). litdata's ``optimize`` writes the chunks with ``num_workers`` processes.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path
from typing import Any, Literal

from kaleido.data.folder import ImageFolderDataModule
from kaleido.data.folder_format import LATENTS_DIR, is_sidecar, read_metadata
from kaleido.data.shards import FORMAT, MANIFEST, SPLITS, ShardText, require_litdata, texts_path
from kaleido.latents import LatentType

# fork, as torch's loaders do on Linux: spawned workers would import kaleido again (seconds each, every split)
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
ShardInput = tuple[str, str, str, str, str]  # image path, id, condition, metadata JSON, latents JSON


def _shard_item(entry: ShardInput) -> dict[str, Any]:
    """One stored item; runs in litdata's worker processes (a module-level function: they import it)."""
    path, item_id, condition, metadata, latents = entry
    return {"id": item_id, "image": Path(path).read_bytes(), "condition": condition, "metadata": metadata, "latents": latents}


def _sidecar_types(latents_dir: Path) -> list[str]:
    """The registered names of the sidecars in ``latents_dir`` (what ``extract`` wrote there)."""
    return sorted(p.name[: -len(".jsonl")] for p in latents_dir.glob("*.jsonl") if is_sidecar(p))


def shard(
    folder: Path,
    output: Path,
    latents: list[str | dict[str, Any]] | None = None,
    val_fraction: float = 0.01,
    condition_template: str = "{label}",
    chunk_bytes: str = "64MB",
    num_workers: int = 4,
    on_missing: Literal["raise", "skip"] = "raise",
    latents_dir: Path | None = None,
    check_images: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the shards of an image folder.

    Args:
        folder: the image folder (``metadata.jsonl``, images, ``latents/<type>.jsonl``).
        output: the shard folder to write (``kaleido_shards.json``, ``train/``, ``val/``, texts).
        latents: the latent types to store (names, or class_path specs as JSON); default every sidecar
            in the folder's latents directory, by its registered name. ``[]`` stores none (a baseline).
        val_fraction / condition_template / on_missing / latents_dir / check_images: as for
            ``ImageFolderDataModule``, which reads and splits the folder.
        chunk_bytes: the size of one chunk file (litdata's ``chunk_bytes``: "64MB", "256MB").
        num_workers: processes writing chunks in parallel.
        overwrite: write over existing shards (refused otherwise).
    """
    litdata = require_litdata()
    folder, output = Path(folder), Path(output)
    if (output / MANIFEST).exists() and not overwrite:
        raise ValueError(f"{output / MANIFEST} exists; pass --overwrite true to write the shards again")
    sidecars = Path(latents_dir) if latents_dir else folder / LATENTS_DIR
    data = ImageFolderDataModule(
        str(folder), latents=_sidecar_types(sidecars) if latents is None else latents, val_fraction=val_fraction,
        condition_template=condition_template, on_missing=on_missing, latents_dir=str(sidecars), check_images=check_images,
    )
    splits = data.load()
    fields = {record.file_name: record.fields for record in read_metadata(folder, condition_template)}
    types: list[LatentType] = data.latent_types
    counts: dict[str, int] = {}
    start_method = multiprocessing.get_start_method(allow_none=True)
    for split in SPLITS:
        target = output / split
        if target.exists():
            shutil.rmtree(target)  # a stale chunk of an earlier, larger run would be read as data
        texts = [ShardText(i.file_name, i.condition, {t.name: t.format(i.latents[t.name]) for t in types}) for i in splits[split]]
        inputs: list[ShardInput] = [
            (str(folder / t.id), t.id, t.condition, json.dumps(fields[t.id], ensure_ascii=False), json.dumps(t.latents, ensure_ascii=False))
            for t in texts
        ]
        if inputs:
            try:  # keep_data_ordered: shard order = the folder's order, which the texts file follows
                litdata.optimize(
                    fn=_shard_item, inputs=inputs, output_dir=str(target), chunk_bytes=chunk_bytes,
                    num_workers=max(1, min(num_workers, len(inputs))), keep_data_ordered=True, reorder_files=False,
                    mode="overwrite", verbose=False, start_method=START_METHOD,
                )
            finally:  # optimize forces "spawn" on the whole process; later loaders keep the platform's default
                multiprocessing.set_start_method(start_method, force=True)
        with open(texts_path(output, split), "w", encoding="utf-8") as lines:
            lines.writelines(json.dumps(t.__dict__, ensure_ascii=False) + "\n" for t in texts)
        counts[split] = len(texts)
    manifest = {
        "format": FORMAT,
        "source": str(folder.resolve()),
        "val_fraction": val_fraction,
        "condition_template": condition_template,
        "latents": {t.name: t.spec() for t in types},
        "splits": counts,
        "skipped": {reason: len(names) for reason, names in data.skipped.items()},
        "ignored_sidecar_lines": {name: n for name, n in data.unknown_ids.items() if n},
    }
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in output.rglob("*.bin"))
    ignored = "".join(f"; ignored {n} line(s) of {name}.jsonl for images not in metadata.jsonl" for name, n in manifest["ignored_sidecar_lines"].items())
    print(
        f"shard: train {counts['train']}, val {counts['val']} items, latents {[t.name for t in types]} "
        f"-> {output} ({size / 2**20:.1f} MiB){ignored}"
    )
    return output


__all__ = ["shard"]
