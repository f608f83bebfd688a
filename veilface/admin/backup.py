"""Backup and restore of the ciphertext store and, kept apart, of the key files.

A database backup is a folder: ``manifest.json`` plus one JSON-lines file per table (bytes as
base64, times as ISO 8601), read in one transaction so that it is a consistent snapshot
(InnoDB's repeatable read; SQLite's read transaction). It holds what the database holds:
ciphertexts, names, hashes, never a template or an image. It is portable between MariaDB and
SQLite. The ``workers`` table (heartbeats) and ``key_sets`` (the fingerprint the gateway announces
from its key files) are runtime state and are not saved.

The key files (``secret.ctx``, ``public.ctx``, ``queue.key``, ``task.key``) are written to a *separate*
folder: the database plus the secret key decrypts every template, so the two must never be
stored together (``docs/reliability.md``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, delete, func, insert, select

from veilface import errors
from veilface.crypto.keyfiles import KEY_FILES
from veilface.crypto.public import fingerprint_of
from veilface.store.db import create_schema
from veilface.store.models import Base

FORMAT = "veilface-backup/1"
KEYS_FORMAT = "veilface-keys/1"
MANIFEST = "manifest.json"
#: Runtime state that a restore must not bring back.
SKIPPED_TABLES = ("workers", "key_sets")
#: Rows per INSERT batch (a block diagonal is ~235 KB: keep a batch well under max_allowed_packet).
BATCH_BYTES = 8 * 1024 * 1024


class BackupError(errors.VeilfaceError):
    """The backup is incomplete, damaged or does not fit the target."""

    code, status = "backup_error", 400


def _tables() -> list[Table]:
    """Tables in foreign-key order (parents first), without the runtime ones."""
    return [t for t in Base.metadata.sorted_tables if t.name not in SKIPPED_TABLES]


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        return {"dt": value.isoformat()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "b64" in value:
            return base64.b64decode(value["b64"])
        if "dt" in value:
            return datetime.fromisoformat(value["dt"])
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _empty_folder(path: Path) -> None:
    if path.exists() and any(path.iterdir()):
        raise BackupError(f"{path} is not empty")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def backup_database(engine: Engine, out: Path, *, key_fingerprint: str | None = None) -> dict:
    """Write a consistent snapshot of every table to the empty folder ``out``; return the manifest."""
    _empty_folder(out)
    tables: dict[str, dict] = {}
    options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name in ("mysql", "mariadb") else {}
    with engine.connect().execution_options(**options) as conn, conn.begin():
        for table in _tables():
            path = out / f"{table.name}.jsonl"
            rows = 0
            columns = [c.name for c in table.columns]
            result = conn.execution_options(stream_results=True, yield_per=256).execute(select(table))
            with path.open("w", encoding="utf-8") as fh:
                for row in result:
                    fh.write(json.dumps([_encode(v) for v in row], separators=(",", ":")) + "\n")
                    rows += 1
            tables[table.name] = {"columns": columns, "rows": rows, "sha256": _sha256(path)}
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "dialect": engine.dialect.name,
        "key_fingerprint": key_fingerprint,
        "tables": tables,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(folder: Path, expected_format: str = FORMAT) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"no readable {MANIFEST} in {folder}") from exc
    if manifest.get("format") != expected_format:
        raise BackupError(f"{folder} is not a {expected_format} backup")
    return manifest


def _rows(path: Path) -> Iterator[list]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            yield [_decode(v) for v in json.loads(line)]


def _batches(rows: Iterator[list], columns: list[str]) -> Iterator[list[dict]]:
    batch: list[dict] = []
    size = 0
    for row in rows:
        batch.append(dict(zip(columns, row, strict=True)))
        size += sum(len(v) for v in row if isinstance(v, bytes)) + 256
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def verify_database_backup(folder: Path) -> dict:
    """The manifest, after checking every table file's checksum and row count."""
    manifest = read_manifest(folder)
    for name, entry in manifest["tables"].items():
        path = folder / f"{name}.jsonl"
        if not path.is_file() or _sha256(path) != entry["sha256"]:
            raise BackupError(f"table file {path.name} is missing or damaged")
        with path.open("rb") as fh:
            if sum(1 for _ in fh) != entry["rows"]:
                raise BackupError(f"table file {path.name} has a wrong row count")
    return manifest


def restore_database(engine: Engine, folder: Path, *, force: bool = False) -> dict[str, int]:
    """Load a backup into ``engine``'s database in one transaction; returns rows per table.

    The target must hold no gallery and no API key unless ``force``, which replaces its content.
    Row ids are kept, so API keys, audit entries and template ids survive unchanged.
    """
    manifest = verify_database_backup(folder)
    create_schema(engine)
    tables = {t.name: t for t in _tables()}
    unknown = set(manifest["tables"]) - set(tables)
    if unknown:
        raise BackupError(f"the backup has tables this version does not know: {sorted(unknown)}")
    restored: dict[str, int] = {}
    with engine.begin() as conn:
        occupied = [
            name
            for name in ("galleries", "api_keys")
            if name in tables and conn.scalar(select(func.count()).select_from(tables[name]))
        ]
        if occupied and not force:
            raise BackupError(
                f"the target database is not empty ({', '.join(occupied)}); --force replaces it"
            )
        for table in reversed(_tables()):
            conn.execute(delete(table))
        for table in _tables():
            entry = manifest["tables"].get(table.name)
            if entry is None:
                continue
            restored[table.name] = 0
            for batch in _batches(_rows(folder / f"{table.name}.jsonl"), entry["columns"]):
                conn.execute(insert(table), batch)
                restored[table.name] += len(batch)
    return restored


def backup_keys(key_dir: Path, out: Path) -> str:
    """Copy the key files into the empty folder ``out`` (mode 0700/0600); returns the fingerprint."""
    missing = [name for name in KEY_FILES if not (key_dir / name).is_file()]
    if missing:
        raise BackupError(f"key files missing in {key_dir}: {', '.join(missing)}")
    _empty_folder(out)
    os.chmod(out, 0o700)
    files = {}
    for name in KEY_FILES:
        _copy_private(key_dir / name, out / name)
        files[name] = _sha256(out / name)
    fingerprint = fingerprint_of((key_dir / "public.ctx").read_bytes())
    manifest = {"format": KEYS_FORMAT, "key_fingerprint": fingerprint, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return fingerprint


def restore_keys(folder: Path, key_dir: Path, *, force: bool = False) -> str:
    """Install backed-up key files into ``key_dir``; returns their fingerprint.

    Refuses to replace a different key set already in ``key_dir`` unless ``force``.
    """
    manifest = read_manifest(folder, KEYS_FORMAT)
    for name, digest in manifest["files"].items():
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            raise BackupError(f"key file {name} is missing or damaged")
    fingerprint = manifest["key_fingerprint"]
    current = key_dir / "public.ctx"
    if current.is_file() and fingerprint_of(current.read_bytes()) != fingerprint and not force:
        raise BackupError(f"{key_dir} holds another key set; --force replaces it")
    key_dir.mkdir(parents=True, exist_ok=True)
    # A backup made before task.key existed has none: 'veilface keys init' makes a new one.
    for name in (name for name in KEY_FILES if name in manifest["files"]):
        _copy_private(folder / name, key_dir / name)
    return fingerprint


def _copy_private(src: Path, dst: Path) -> None:
    """Copy ``src`` over ``dst`` atomically; the copy is readable by its owner only."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out)
        os.chmod(tmp, 0o600)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
