"""The embedded SQLite store: CRUD, atomic transactions, revisions, change log, watch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tungsten.store import Change, Compacted, ConfigStore, Conflict, StoreError, open_store
from tungsten.store.sqlite import SqliteStore


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConfigStore]:
    path = str(tmp_path / "s.db") if request.param == "file" else ":memory:"
    s = SqliteStore(path)
    yield s
    s.close()


class Boom(Exception):
    pass


def test_put_get_delete(store: ConfigStore) -> None:
    assert store.revision == 0
    assert store.get("obj/a") is None
    store.put("obj/a", b"1")
    assert store.get("obj/a") == b"1"
    store.put("obj/a", b"2")
    assert store.get("obj/a") == b"2"
    store.delete("obj/a")
    assert store.get("obj/a") is None
    assert store.revision == 3


def test_list_by_prefix_in_key_order(store: ConfigStore) -> None:
    with store.transaction() as t:
        for k in ("obj/b", "obj/a", "obj/c/x", "objx", "claim/fqn/a", "ob"):
            t.put(k, k.encode())
    assert [k for k, _ in store.list("obj/")] == ["obj/a", "obj/b", "obj/c/x"]
    assert dict(store.list("claim/")) == {"claim/fqn/a": b"claim/fqn/a"}
    assert [k for k, _ in store.list("")] == sorted(
        ["obj/b", "obj/a", "obj/c/x", "objx", "claim/fqn/a", "ob"])
    assert list(store.list("nothing/")) == []


def test_transaction_reads_its_own_writes(store: ConfigStore) -> None:
    store.put("k", b"old")
    with store.transaction() as t:
        assert t.get("k") == b"old"
        t.put("k", b"new")
        assert t.get("k") == b"new"
        t.delete("k")
        assert t.get("k") is None
    assert store.get("k") is None


def test_exception_rolls_back_everything(store: ConfigStore) -> None:
    store.put("keep", b"v1")
    rev = store.revision
    with pytest.raises(Boom), store.transaction() as t:
        t.put("keep", b"v2")
        t.put("new", b"x")
        t.delete("keep")
        raise Boom
    assert store.get("keep") == b"v1"
    assert store.get("new") is None
    assert store.revision == rev
    assert store.changes_since(rev) == []
    # the store is usable afterwards
    store.put("after", b"y")
    assert store.revision == rev + 1


def test_create_conflict_rolls_back(store: ConfigStore) -> None:
    store.put("claim/x", b"owner1")
    with pytest.raises(Conflict), store.transaction() as t:
        t.put("obj/1", b"doc")
        t.create("claim/x", b"owner2")
    assert store.get("obj/1") is None
    assert store.get("claim/x") == b"owner1"


def test_each_commit_bumps_revision_by_one(store: ConfigStore) -> None:
    revs = [store.revision]
    for i in range(5):
        with store.transaction() as t:
            for j in range(i + 1):  # many keys, still one revision
                t.put(f"k/{i}/{j}", b"v")
        revs.append(store.revision)
    assert revs == list(range(6))
    with store.transaction():
        pass  # nothing written: no revision
    assert store.revision == 5


def test_changes_since_is_ordered(store: ConfigStore) -> None:
    store.put("a", b"1")
    with store.transaction() as t:
        t.put("b", b"2")
        t.put("c", b"3")
    store.delete("a")
    changes = store.changes_since(0)
    assert [c.revision for c in changes] == [1, 2, 2, 3]
    assert changes[0] == Change(1, "a", b"1")
    assert {(c.key, c.value) for c in changes[1:3]} == {("b", b"2"), ("c", b"3")}
    assert changes[3] == Change(3, "a", None)
    assert store.changes_since(2) == [Change(3, "a", None)]
    assert store.changes_since(3) == []


def test_revision_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    s = SqliteStore(path)
    for i in range(3):
        s.put(f"k{i}", b"v")
    s.close()
    s = SqliteStore(path)
    try:
        assert s.revision == 3
        assert s.get("k2") == b"v"
        s.put("k3", b"v")
        assert s.revision == 4
        assert [c.revision for c in s.changes_since(0)] == [1, 2, 3, 4]
    finally:
        s.close()


def test_watch_yields_later_commits_in_order(store: ConfigStore) -> None:
    store.put("before", b"0")
    start = store.revision

    async def scenario() -> list[Change]:
        got: list[Change] = []

        async def consume() -> None:
            async for change in store.watch(start, poll_s=0.01):
                got.append(change)
                if len(got) == 4:
                    return

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.02)  # the watcher is waiting before these commits
        for i in range(3):
            with store.transaction() as t:
                t.put(f"w/{i}", str(i).encode())
                if i == 1:
                    t.delete("before")
            await asyncio.sleep(0)
        await asyncio.wait_for(task, 5)
        return got

    got = asyncio.run(scenario())
    assert [c.revision for c in got] == [start + 1, start + 2, start + 2, start + 3]
    assert got[0] == Change(start + 1, "w/0", b"0")
    assert {(c.key, c.value) for c in got[1:3]} == {("w/1", b"1"), ("before", None)}
    assert got[3] == Change(start + 3, "w/2", b"2")


def test_watch_from_an_old_revision_replays(store: ConfigStore) -> None:
    for i in range(5):
        store.put(f"k{i}", b"v")

    async def first_three() -> list[int]:
        out = []
        async for c in store.watch(2):
            out.append(c.revision)
            if len(out) == 3:
                break
        return out

    assert asyncio.run(first_three()) == [3, 4, 5]


def test_compacted_after_trimming(tmp_path: Path) -> None:
    # The log is trimmed every 1000 revisions down to the last log_keep.
    s = SqliteStore(str(tmp_path / "c.db"), log_keep=10)
    try:
        for i in range(1000):
            s.put("k", str(i).encode())
        assert s.revision == 1000
        with pytest.raises(Compacted):
            s.changes_since(0)
        with pytest.raises(Compacted):
            s.changes_since(989)
        tail = s.changes_since(990)
        assert [c.revision for c in tail] == list(range(991, 1001))
        assert tail[-1].value == b"999"

        async def watch_old() -> None:
            async for _ in s.watch(5):
                pass

        with pytest.raises(Compacted):
            asyncio.run(watch_old())
    finally:
        s.close()


def test_open_store_urls(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path / 'sub' / 'u.db'}")
    try:
        s.put("a", b"b")
        assert (tmp_path / "sub" / "u.db").exists()
    finally:
        s.close()
    m = open_store("sqlite:///:memory:")
    try:
        assert m.revision == 0
    finally:
        m.close()


@pytest.mark.parametrize("url, words", [
    ("sqlite:///relative/path.db", "absolute"),
    ("sqlite:///", "absolute"),
    ("etcd://127.0.0.1:2379", "unsupported"),
    ("/abs/path/without/scheme.db", "unsupported"),
    ("", "unsupported"),
])
def test_open_store_bad_urls(url: str, words: str) -> None:
    with pytest.raises(StoreError, match=words):
        open_store(url)


def test_open_store_unopenable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database, just some bytes " * 10)
    with pytest.raises(StoreError, match="cannot open"):
        open_store(f"sqlite:///{bad}")
