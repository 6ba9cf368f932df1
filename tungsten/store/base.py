"""The ConfigStore interface: a revisioned key-value store with transactions and watch.

Keys are ``/``-separated strings, values are bytes (JSON documents).  Every committed
transaction gets the next global revision; ``watch(from_revision)`` yields the ordered changes
after a revision, so another process (or another controller on a shared backend) can follow.
The SQLite backend is the embedded default; an etcd backend implements the same interface.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass


class StoreError(RuntimeError):
    """The store cannot do what was asked (bad URL, unreachable, corrupt)."""


class Conflict(StoreError):
    """A transaction precondition failed (e.g. a key that must be absent exists)."""


class Compacted(StoreError):
    """``watch`` asked for revisions the store no longer keeps; re-read and watch again."""


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    key: str
    value: bytes | None  # None: the key was deleted


class Txn(abc.ABC):
    """A write transaction.  Reads see the transaction's own writes.  After a commit,
    ``revision`` is the revision it was committed as (unchanged when it wrote nothing)."""

    revision: int = 0

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    def put(self, key: str, value: bytes) -> None: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    def create(self, key: str, value: bytes) -> None:
        """Put a key that must not exist yet (a uniqueness claim)."""
        if self.get(key) is not None:
            raise Conflict(f"key {key} already exists")
        self.put(key, value)


class ConfigStore(abc.ABC):
    url: str

    @property
    @abc.abstractmethod
    def revision(self) -> int:
        """The revision of the last committed transaction (0 for an empty store)."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        """Every key under ``prefix`` with its value, in key order."""

    @abc.abstractmethod
    def transaction(self, expect_revision: int | None = None) -> AbstractContextManager[Txn]:
        """A transaction, committed atomically as one revision when the block exits
        normally and rolled back when it raises.  With ``expect_revision``, it raises
        ``Conflict`` on entry when another writer has committed since that revision (the
        caller's view is stale: catch up and retry)."""

    @abc.abstractmethod
    def changes_since(self, revision: int, limit: int = 10000) -> builtins.list[Change]:
        """The changes committed after ``revision``, in order; raises ``Compacted``."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def put(self, key: str, value: bytes) -> None:
        with self.transaction() as txn:
            txn.put(key, value)

    def delete(self, key: str) -> None:
        with self.transaction() as txn:
            txn.delete(key)

    async def watch(self, from_revision: int, poll_s: float = 0.05) -> AsyncIterator[Change]:
        """Yield every change after ``from_revision``, in order, as it is committed."""
        rev = from_revision
        while True:
            batch = self.changes_since(rev)
            for change in batch:
                rev = change.revision
                yield change
            if not batch:
                await self._wait_for_commit(poll_s)

    async def _wait_for_commit(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
