"""The embedded store: one SQLite file in WAL mode.

Tables: ``kv`` (the current value of every key), ``log`` (every change with its revision, for
``watch``; trimmed to the last ``log_keep`` revisions) and ``meta`` (the global revision).
A transaction is one SQLite ``BEGIN IMMEDIATE`` transaction, so a crash at any point leaves
either all of it or none of it.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tungsten.store.base import Change, Compacted, ConfigStore, Conflict, StoreError, Txn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, rev INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (rev INTEGER NOT NULL, key TEXT NOT NULL, value BLOB);
CREATE INDEX IF NOT EXISTS log_rev ON log (rev);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
"""



class _SqliteTxn(Txn):
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.writes: dict[str, bytes | None] = {}

    def get(self, key: str) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, key: str, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: str) -> None:
        self.writes[key] = None


class SqliteStore(ConfigStore):
    def __init__(self, path: str, log_keep: int = 200_000) -> None:
        self.url = f"sqlite:///{path}"
        self._path = path
        self._log_keep = log_keep
        self._lock = threading.RLock()
        if path != ":memory:":
            parent = Path(path).parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the store directory {parent}: {e}") from e
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); only power loss can
            # lose the last commits, and never half of one.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite store {path}: {e}") from e
        self._rev = self._meta("revision")
        self._commit_event: asyncio.Event | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def _meta(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    @property
    def revision(self) -> int:
        with self._lock:
            self._rev = self._meta("revision")
            return self._rev

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def list(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        # key >= prefix AND key < prefix + U+FFFF: a range scan on the primary key.
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, prefix + "\uffff"),
            ).fetchall()
        for key, value in rows:
            yield key, bytes(value)

    @contextmanager
    def transaction(self, expect_revision: int | None = None) -> Iterator[Txn]:
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"store busy: {e}") from e
            txn = _SqliteTxn(db)
            try:
                current = self._meta("revision")
                txn.revision = current
                if expect_revision is not None and current != expect_revision:
                    raise Conflict(f"store is at revision {current}, not {expect_revision}")
                yield txn
                if txn.writes:
                    rev = current + 1
                    txn.revision = rev
                    puts = [(k, v, rev) for k, v in txn.writes.items() if v is not None]
                    dels = [(k,) for k, v in txn.writes.items() if v is None]
                    if puts:
                        db.executemany(
                            "INSERT INTO kv (key, value, rev) VALUES (?, ?, ?) "
                            "ON CONFLICT(key) DO UPDATE SET "
                            "value = excluded.value, rev = excluded.rev",
                            puts,
                        )
                    if dels:
                        db.executemany("DELETE FROM kv WHERE key = ?", dels)
                    db.executemany(
                        "INSERT INTO log (rev, key, value) VALUES (?, ?, ?)",
                        [(rev, k, v) for k, v in txn.writes.items()],
                    )
                    db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
                    if rev % 1000 == 0:
                        self._trim_log(rev)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if txn.writes:
                self._rev += 1
                if self._commit_event is not None:
                    self._commit_event.set()

    def _trim_log(self, rev: int) -> None:
        floor = rev - self._log_keep
        if floor > 0:
            self._db.execute("DELETE FROM log WHERE rev <= ?", (floor,))
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (floor,))

    def changes_since(self, revision: int, limit: int = 10000) -> builtins.list[Change]:
        with self._lock:
            if revision < self._meta("compacted"):
                raise Compacted(f"revision {revision} is compacted; re-read the store")
            rows = self._db.execute(
                # bounded by revisions, so one transaction's changes are never split
                "SELECT rev, key, value FROM log WHERE rev > ? AND rev <= ? ORDER BY rev, rowid",
                (revision, revision + limit),
            ).fetchall()
        return [Change(r, k, None if v is None else bytes(v)) for r, k, v in rows]

    async def _wait_for_commit(self, timeout: float) -> None:
        # Commits from this process wake watchers at once; other processes are polled.
        loop = asyncio.get_running_loop()
        if self._commit_event is None or self._event_loop is not loop:
            self._commit_event = asyncio.Event()
            self._event_loop = loop
        self._commit_event.clear()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._commit_event.wait(), timeout)

    def close(self) -> None:
        with self._lock:
            self._db.close()
