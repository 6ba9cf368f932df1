"""The local port registry: which ports this node has, persisted so that a restarted agent
re-adopts them (and never flushes the datapath in the meantime).

Writes are atomic (a temporary file, fsynced, renamed over the old one: after a crash or a
power cut the file is the old one or the new one, never half of either).  In the agent they
are group commits (``commit``): the snapshot is taken on the event loop, written in a worker
thread, and every change made while a write is on its way goes out in the next single write,
so twenty ADDs at once cost a few writes, not a hundred, and never stall the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

FILE_NAME = "ports.json"

log = logging.getLogger("tungsten.agent")


@dataclass
class PortRecord:
    uuid: str
    name: str = ""
    created: bool = False  # the agent created the VMI and instance-ip (and deletes them)


@dataclass
class Attachment:
    """A CNI attachment: (container, interface) -> the port the agent made for it.  Recorded
    before the port exists, so an agent that dies half-way through ADD finds and undoes it."""

    container_id: str
    ifname: str
    netns: str
    network: str  # domain:project:network
    config_name: str  # the network config's name (GC is scoped to it)
    port: str = ""  # the VMI uuid, once created
    host_ifname: str = ""  # the node-side device (veth end or the device's representor)
    device: str = ""  # host-device mode: the host netdev moved into the container
    device_peer: str = ""  # ... and the original name of its representor (veth peer)
    spool_dir: str = ""  # where the plugin leaves deletes while the agent is down
    labels: dict[str, str] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)  # the ADD result (1.1.0 shape)
    state: str = "adding"  # adding | ready

    @property
    def key(self) -> str:
        return attachment_key(self.container_id, self.ifname)


def attachment_key(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


@dataclass
class PortRegistry:
    """Ports by uuid, plus VMIs whose deletion through the config API is still owed, plus
    the CNI attachments by ``containerID/ifname``."""

    path: Path | None = None
    ports: dict[str, PortRecord] = field(default_factory=dict)
    pending_deletes: list[str] = field(default_factory=list)
    attachments: dict[str, Attachment] = field(default_factory=dict)
    # group commit: changes asked to be persisted (_asked) and persisted (_done), as counts
    _asked: int = field(default=0, repr=False, compare=False)
    _done: int = field(default=0, repr=False, compare=False)
    _writing: asyncio.Future[None] | None = field(default=None, repr=False, compare=False)
    _lazy: set[asyncio.Task[None]] = field(default_factory=set, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(cls, state_dir: Path | None) -> PortRegistry:
        if state_dir is None:
            return cls()
        path = state_dir / FILE_NAME
        reg = cls(path=path)
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return reg
        except (OSError, orjson.JSONDecodeError) as e:
            raise ValueError(f"cannot read the port registry {path}: {e}") from None
        for p in data.get("ports", []):
            rec = PortRecord(uuid=str(p["uuid"]), name=str(p.get("name", "")),
                             created=bool(p.get("created", False)))
            reg.ports[rec.uuid] = rec
        reg.pending_deletes = [str(u) for u in data.get("pending_deletes", [])]
        names = {f.name for f in fields(Attachment)}
        for a in data.get("attachments", []):
            try:
                att = Attachment(**{k: v for k, v in a.items() if k in names})
            except TypeError as e:
                raise ValueError(f"bad attachment in the port registry {path}: {e}") from None
            reg.attachments[att.key] = att
        return reg

    def _body(self) -> bytes:
        # orjson serializes the dataclasses itself, a hundred times faster than asdict():
        # the snapshot is taken on the event loop, once per commit, and grows with the node
        return orjson.dumps({"ports": list(self.ports.values()),
                             "pending_deletes": self.pending_deletes,
                             "attachments": list(self.attachments.values())})

    def _write(self, body: bytes) -> None:
        """Write atomically: a crash leaves the old file or the new one, never half.  The
        fsync before the rename is what makes that hold across a power cut too (one per
        write; the directory needs none: either name is a whole registry)."""
        assert self.path is not None
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(body)
                with contextlib.suppress(OSError):
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)

    def save(self) -> None:
        """Write now, from the calling thread (outside an event loop; the agent commits)."""
        if self.path is not None:
            self._write(self._body())

    async def commit(self) -> None:
        """Persist the registry as it is now; returns once it is on disk.  Concurrent
        commits share writes: one that arrives while a write is on its way waits for it,
        then for the next one, which carries every change made meanwhile."""
        if self.path is None:
            return
        self._asked += 1
        mine = self._asked
        while self._done < mine:
            if self._writing is None:
                self._writing = asyncio.ensure_future(self._write_next())
            await asyncio.shield(self._writing)

    async def _write_next(self) -> None:
        try:
            upto = self._asked
            body = self._body()  # the snapshot, taken on the loop: consistent
            await asyncio.get_running_loop().run_in_executor(None, self._write, body)
            self._done = max(self._done, upto)
        finally:
            self._writing = None

    def commit_soon(self) -> None:
        """Persist soon, without waiting (a change a crash may lose: ``flush`` before
        relying on it)."""
        if self.path is None:
            return
        task = asyncio.ensure_future(self.commit())
        self._lazy.add(task)
        task.add_done_callback(self._lazy_done)

    def _lazy_done(self, task: asyncio.Task[None]) -> None:
        self._lazy.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the next commit retries
            log.warning("the port registry %s could not be written: %s", self.path,
                        task.exception())

    async def flush(self) -> None:
        """Wait for the commits ``commit_soon`` started."""
        if self._lazy:
            await asyncio.gather(*self._lazy, return_exceptions=True)
        if self._asked > self._done:
            try:
                await self.commit()
            except OSError as e:
                log.warning("the port registry %s could not be written: %s", self.path, e)
