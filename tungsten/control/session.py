"""One agent's session with this control node: what it subscribed to, what it was sent, what it
published, and the recent deltas kept so that a reconnect can resume (pure state, no I/O).

A session outlives its stream: when the stream drops the session is *held* for the hold time,
keeping the agent's routes in the RIB and still accumulating deltas; a reconnect that names the
session picks up where it left off.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from tungsten.control.protocol import Route, View
from tungsten.control.views import CONFIG_COLLECTIONS

BUFFER_DELTAS = 256  # deltas kept per session for resume (acks trim it sooner)
BUFFER_BYTES = 16 * 1024 * 1024  # ... and their bodies' size (bodies are often shared)


class Link(Protocol):
    """The stream a session is attached to (a WebSocket in production, a fake in tests)."""

    def send(self, data: bytes) -> None: ...

    def send_delta(self, revision: int, body: bytes) -> None:
        """Send ``wire.delta(revision, body)``; a link may build it only when it writes."""

    def close(self) -> None: ...


@dataclass
class Session:
    id: str
    node: str
    underlay_ip: str = ""
    ports: set[str] = field(default_factory=set)  # subscribed VMI uuids
    config: View = field(default_factory=lambda: {c: {} for c in CONFIG_COLLECTIONS})
    deps: set[str] = field(default_factory=set)  # uuids the config was read from
    ris: set[str] = field(default_factory=set)  # RIs whose visible routes it has
    routes: dict[str, Route] = field(default_factory=dict)  # published by it, by key
    stale: set[str] = field(default_factory=set)  # inherited keys not re-announced yet
    revision: int = 0
    buffer: deque[tuple[int, bytes]] = field(default_factory=deque)  # (revision, body)
    buffered_bytes: int = 0
    link: Link | None = None
    timer: Any = None  # the pending hold-time expiry (an asyncio.TimerHandle)
    sweep: Any = None  # the pending withdrawal of stale routes not announced again

    def record(self, body: bytes) -> int:
        """Take the next revision for a delta with this body and keep it for resume."""
        self.revision += 1
        self.buffer.append((self.revision, body))
        self.buffered_bytes += len(body)
        while self.buffer and (len(self.buffer) > BUFFER_DELTAS
                               or self.buffered_bytes > BUFFER_BYTES):
            self.buffered_bytes -= len(self.buffer.popleft()[1])
        return self.revision

    def ack(self, revision: int) -> None:
        """The agent has everything up to ``revision``: those deltas are no longer needed."""
        while self.buffer and self.buffer[0][0] <= revision:
            self.buffered_bytes -= len(self.buffer.popleft()[1])

    def reset_buffer(self) -> None:
        self.buffer.clear()
        self.buffered_bytes = 0

    def missed(self, revision: Any) -> list[tuple[int, bytes]] | None:
        """The deltas after ``revision``, or None when they are no longer all here."""
        if not isinstance(revision, int) or isinstance(revision, bool):
            return None
        if revision < 0 or revision > self.revision:
            return None
        if revision == self.revision:
            return []
        if not self.buffer or self.buffer[0][0] > revision + 1:
            return None
        return [(r, b) for r, b in self.buffer if r > revision]
