"""Indexes of format 3 (one ``manifest.json`` rewritten at every publish) become format 4 (``store.py``) in place.

Run once, under the writer lock, the first time such an index is opened: every shard the manifest names is hashed
(its recorded SHA-256 checked, the checksums of its parts computed), the entries that agree with their
shards become rows of a new database written under a temporary name and renamed into place, and the manifest is
removed. A kill at any point leaves either the old index (the manifest) or the new one. Entries that do not agree
are left out (the next ``index`` encodes their videos again), and the approximate first stage is rebuilt by it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open

from xclip_lightning.index.records import IndexEntry
from xclip_lightning.index.shards import SHARDS, ShardRecord, file_sha256, shard_digests
from xclip_lightning.index.store import (
    ANN,
    DATABASE,
    MANIFEST,
    IndexStore,
    VideoIndexError,
    read_thumbnail,
    writer_lock,
)

PREVIOUS_VERSION = 3


def _thumb_digest(folder: Path, name: str) -> str:
    data = read_thumbnail(folder, name)
    return hashlib.sha256(data).hexdigest() if data is not None else ""


def _model_reference(model_dir: str | None) -> str | None:
    """A relative model folder of format 3 made absolute when it exists from here (it was relative to where
    ``index`` ran)."""
    if model_dir and not os.path.isabs(model_dir) and Path(model_dir).exists():
        return str(Path(model_dir).resolve())
    return model_dir


def migrate_manifest(folder: Path) -> None:
    """Turn the format-3 index in ``folder`` into a format-4 one (call under the writer lock)."""
    path = folder / MANIFEST
    rebuild = f"delete {folder} and build it again with `xclip-lightning index`"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise VideoIndexError(f"{path} cannot be read ({err}): {rebuild}") from err
    if not isinstance(manifest, dict) or manifest.get("format_version") != PREVIOUS_VERSION:
        raise VideoIndexError(f"{path} is not an index this version can read or migrate: {rebuild}")
    shards: dict[str, ShardRecord] = {}
    ids: dict[str, list[str]] = {}
    for name, record in manifest.get("shards", {}).items():
        shard = folder / SHARDS / name
        if not shard.is_file():
            continue
        if file_sha256(shard) == record.get("sha256"):
            shards[name] = ShardRecord(name, record["rows"], shard.stat().st_size, shard_digests(shard))
            with safe_open(str(shard), framework="pt") as f:
                ids[name] = json.loads((f.metadata() or {}).get("ids", "[]"))
    entries: list[IndexEntry] = []
    for e in manifest.get("entries", []):
        try:
            entry = IndexEntry(
                e["path"], e["size"], e["mtime_ns"], e["duration"], e["timestamps"], e["id"], e["window"],
                e["moments"], e["start"], e["end"], e["shard"], e["row"], _thumb_digest(folder, e["thumbnail"]),
            )  # fmt: skip
        except (KeyError, TypeError):
            continue
        rows = ids.get(entry.shard, [])
        if entry.agrees() and 0 <= entry.row < len(rows) and rows[entry.row] == entry.id and entry.thumb_sha256:
            entries.append(entry)
    meta = {
        "model_fingerprint": manifest.get("model_fingerprint"),
        "model": _model_reference(manifest.get("model_dir")),
        "videos": manifest.get("videos"),
        "sampler": manifest.get("sampler"),
        "window": manifest.get("window"),
        "feature_dtype": manifest.get("feature_dtype", "float32"),
    }
    live = {e.shard for e in entries}
    old_ann = (manifest.get("ann") or {}).get("files", [])

    def fill(store: IndexStore) -> None:
        store.record_files([f"{ANN}/{n}" for n in old_ann])  # never published here: the next writer deletes them
        store.publish(
            added=entries, shards=[s for n, s in shards.items() if n in live], failures=manifest.get("failures", {})
        )

    IndexStore.create(folder, meta, fill).close()
    path.unlink()


def open_index(folder: str | os.PathLike, locked: bool = False) -> IndexStore:
    """Open the index in ``folder``, migrating a format-3 one first (under the writer lock, taken here unless the
    caller holds it: ``locked``)."""
    folder = Path(folder)
    if not (folder / DATABASE).is_file() and (folder / MANIFEST).is_file():
        if locked:
            migrate_manifest(folder)
        else:
            with writer_lock(folder):
                if not (folder / DATABASE).is_file():
                    migrate_manifest(folder)
    return IndexStore.open(folder)
