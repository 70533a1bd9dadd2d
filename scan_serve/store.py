"""The durable store behind fine-tuning: submitted images and job records.

```
<store>/objects/<sha256[:2]>/<sha256>   the image bytes (encoded; raw submissions stored as PNG)
<store>/store.sqlite3                   images (seq, sha256, bytes, source, added_at) and jobs
```
An image file is written atomically (temp file, fsync, rename, folder fsync) before its row is
committed (SQLite WAL, synchronous=FULL); a submission is acknowledged only after the commit, so
nothing acknowledged is lost to a crash or a kill -9. A file whose row never committed is an
orphan that a later submission of the same bytes reuses. Several processes (the gateway and its
fine-tuning jobs) share the database; every write is one short transaction.
"""

from __future__ import annotations

import errno
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from scan_serve.errors import OverLimit, ServeError
from trainer.atomic import atomic_write_bytes, file_digest

JOB_STATES = ("queued", "running", "succeeded", "rejected", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "rejected", "failed", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL,
    source TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    options TEXT NOT NULL,
    base_version INTEGER NOT NULL,
    new_version INTEGER,
    progress REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    gate_failures TEXT NOT NULL DEFAULT '[]',
    gate TEXT NOT NULL DEFAULT '{}',
    images INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
"""


class StoreFull(OverLimit):
    """The store is at its image or byte limit, or the disk is full."""


@dataclass(frozen=True)
class StoredImage:
    seq: int
    sha256: str
    bytes: int
    source: str
    added_at: float


@dataclass(frozen=True)
class AddResult:
    stored: int
    duplicates: int
    total: int


class ImageStore:
    def __init__(self, root: str | Path, max_images: int = 100_000, max_bytes: int = 2 << 30) -> None:
        self.root = Path(root)
        self.max_images = max_images
        self.max_bytes = max_bytes
        try:
            (self.root / "objects").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServeError(f"image store {self.root} cannot be created ({exc.strerror})") from exc
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / "store.sqlite3", timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    # ------------------------------------------------------------------ images

    def object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    def add(self, items: list[tuple[bytes, str]]) -> AddResult:
        """Store `(encoded bytes, source)` items; all or nothing against the limits. Returns the counts."""
        keyed: dict[str, tuple[bytes, str]] = {}
        for data, source in items:
            keyed.setdefault(hashlib.sha256(data).hexdigest(), (data, source))
        with self._lock, self._connect() as db:
            known = {row[0] for row in db.execute(
                f"SELECT sha256 FROM images WHERE sha256 IN ({','.join('?' * len(keyed))})", list(keyed))} if keyed else set()
            new = {k: v for k, v in keyed.items() if k not in known}
            count, used = db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM images").fetchone()
            if count + len(new) > self.max_images:
                raise StoreFull(f"the image store holds {count} of at most {self.max_images} images; "
                                f"{len(new)} more do not fit (raise --store-max-images or start a new store)")
            added_bytes = sum(len(data) for data, _ in new.values())
            if used + added_bytes > self.max_bytes:
                raise StoreFull(f"the image store holds {used} of at most {self.max_bytes} bytes; "
                                f"{added_bytes} more do not fit (raise --store-max-bytes)")
            for sha, (data, _) in new.items():
                path = self.object_path(sha)
                if path.exists() and file_digest(path) == sha:
                    continue  # an orphan of an earlier, interrupted submission: same bytes
                try:
                    atomic_write_bytes(path, data)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise StoreFull(f"the disk holding the image store {self.root} is full; nothing of this "
                                        "submission was stored") from exc
                    raise
            now = time.time()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany("INSERT OR IGNORE INTO images (sha256, bytes, source, added_at) VALUES (?, ?, ?, ?)",
                                   [(sha, len(data), source, now) for sha, (data, source) in new.items()])
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if "full" in str(exc):  # "database or disk is full": the files written above stay as orphans
                    raise StoreFull(f"the disk holding the image store {self.root} is full; nothing of this "
                                    "submission was stored") from exc
                raise
            total = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        return AddResult(stored=len(new), duplicates=len(items) - len(new), total=int(total))

    def count(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def images(self, limit: Optional[int] = None) -> list[StoredImage]:
        """Stored images, the most recent first (at most `limit`)."""
        query = "SELECT seq, sha256, bytes, source, added_at FROM images ORDER BY seq DESC"
        with self._connect() as db:
            rows = db.execute(query + (" LIMIT ?" if limit else ""), (limit,) if limit else ()).fetchall()
        return [StoredImage(*row) for row in rows]

    def read(self, image: StoredImage) -> bytes:
        return self.object_path(image.sha256).read_bytes()

    # ------------------------------------------------------------------ jobs

    def create_job(self, options: dict[str, Any], base_version: int) -> dict[str, Any]:
        job_id = uuid.uuid4().hex[:12]
        with self._connect() as db:
            db.execute("INSERT INTO jobs (id, state, options, base_version, created_at) VALUES (?, 'queued', ?, ?, ?)",
                       (job_id, json.dumps(options), base_version, time.time()))
        return self.job(job_id)

    def update_job(self, job_id: str, unless_final: bool = False, **fields: Any) -> dict[str, Any]:
        """Set `fields` of a job; with `unless_final`, only if the job is not in a final state yet."""
        for key in ("gate_failures", "gate"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        if "state" in fields and fields["state"] not in JOB_STATES:
            raise ValueError(f"unknown job state {fields['state']!r}")
        assignments = ", ".join(f"{key} = ?" for key in fields)
        condition = " AND state NOT IN ({})".format(",".join("?" * len(FINAL_STATES))) if unless_final else ""
        values = [*fields.values(), job_id, *(sorted(FINAL_STATES) if unless_final else [])]
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?{condition}", values)
        return self.job(job_id)

    def finish_job(self, job_id: str, state: str, message: str, **fields: Any) -> dict[str, Any]:
        """Move a job to a final state unless it already is in one (the first final word wins)."""
        return self.update_job(job_id, unless_final=True, state=state, message=message, finished_at=time.time(),
                               **fields)

    def job(self, job_id: str) -> dict[str, Any]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return _job_dict(row)

    def jobs(self, states: Optional[tuple[str, ...]] = None) -> list[dict[str, Any]]:
        """Jobs, newest first (only `states` when given)."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC").fetchall()
        found = [_job_dict(row) for row in rows]
        return [j for j in found if states is None or j["state"] in states]


def _job_dict(row: sqlite3.Row) -> dict[str, Any]:
    job = dict(row)
    job["options"] = json.loads(job["options"])
    job["gate_failures"] = json.loads(job["gate_failures"])
    job["gate"] = json.loads(job["gate"])
    return job
