"""The agent's port registry commits: concurrent commits share writes, each returns once
what it saw is on disk, and ``commit_soon`` + ``flush`` write what was left to write."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tungsten.agent.ports import PortRecord, PortRegistry


def _on_disk(path: Path) -> set[str]:
    return {p["uuid"] for p in orjson.loads(path.read_bytes())["ports"]}


def test_concurrent_commits_share_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) \
        -> None:
    reg = PortRegistry.load(tmp_path)
    writes: list[bytes] = []
    real = reg._write

    def counted(body: bytes) -> None:
        writes.append(body)
        real(body)

    monkeypatch.setattr(reg, "_write", counted)

    async def one(i: int) -> None:
        reg.ports[f"u{i}"] = PortRecord(f"u{i}")
        await reg.commit()
        assert f"u{i}" in _on_disk(reg.path or tmp_path)  # durable when commit returns

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(20)))

    asyncio.run(main())
    assert _on_disk(tmp_path / "ports.json") == {f"u{i}" for i in range(20)}
    assert 1 <= len(writes) <= 3, len(writes)  # the first write, then one for the rest


def test_commit_soon_then_flush(tmp_path: Path) -> None:
    reg = PortRegistry.load(tmp_path)

    async def main() -> None:
        reg.ports["a"] = PortRecord("a")
        reg.commit_soon()
        reg.ports["b"] = PortRecord("b")
        reg.commit_soon()
        await reg.flush()

    asyncio.run(main())
    assert _on_disk(tmp_path / "ports.json") == {"a", "b"}
    assert PortRegistry.load(tmp_path).ports.keys() == {"a", "b"}


def test_a_registry_without_a_file_commits_nothing() -> None:
    reg = PortRegistry()

    async def main() -> None:
        await reg.commit()
        reg.commit_soon()
        await reg.flush()

    asyncio.run(main())
