"""One agent's WebSocket session to one control node (the client side of protocol.py).

The session keeps its own copy of the view and revision, reconnects with backoff, asks to
resume (session + revision) after a drop and falls back to a fresh snapshot on a gap or an
error.  It never touches the datapath: it tells the agent that something changed and the
agent recomputes from all its sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import aiohttp

from tungsten.control import protocol as proto
from tungsten.control.protocol import Route, View

log = logging.getLogger("tungsten.agent.session")

BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
HEARTBEAT = 10.0  # seconds between WebSocket pings; a missed pong closes the session


class ControlSession:
    """Connects to ``<url>/control/v1/stream`` and keeps at it until ``close()``."""

    def __init__(self, url: str, http: aiohttp.ClientSession,
                 hello: Callable[[], dict[str, Any]],
                 on_event: Callable[[ControlSession, str], None]) -> None:
        self.url = url.rstrip("/")
        self._http = http
        self._hello = hello  # node, underlay_ip, ports: filled in by the agent
        self._on_event = on_event  # (self, "snapshot" | "delta" | "resumed" | "lost")
        self.view: View | None = None
        self.session_id: str | None = None
        self.revision: int | None = None
        self.established = False
        self.acked: int | None = None
        # What the control node has from us; reset (resync) on every (re)establishment.
        self.advertised: dict[str, Route] = {}
        self.subscribed: set[str] = set()
        self.resync = False
        self.last_error: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"control-session {self.url}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        self.established = False

    async def send(self, msg: dict[str, Any]) -> bool:
        """Send if established; a failure is handled by the reader (reconnect + resync)."""
        ws = self._ws
        if not self.established or ws is None or ws.closed:
            return False
        try:
            await ws.send_str(proto.encode(msg))
            return True
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as e:
            log.info("send to %s failed: %s", self.url, e)
            return False

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        while True:
            try:
                if await self._connect_once():
                    delay = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
                self.last_error = str(e) or type(e).__name__
                log.debug("control session %s: %s", self.url, self.last_error)
            if self.established:
                self.established = False
            self._on_event(self, "lost")
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _connect_once(self) -> bool:
        """One connection; True if it got established (so the backoff restarts)."""
        got_up = False
        async with self._http.ws_connect(self.url + proto.STREAM_PATH, heartbeat=HEARTBEAT,
                                         max_msg_size=0, autoping=True) as ws:
            self._ws = ws
            try:
                resume = self.view is not None and self.session_id is not None
                hello = dict(self._hello())
                hello.update(type=proto.HELLO,
                             session=self.session_id if resume else None,
                             revision=self.revision if resume else None)
                await ws.send_str(proto.encode(hello))
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    if not self._handle(proto.decode(msg.data)):
                        break
                    got_up = got_up or self.established
            finally:
                self._ws = None
                self.established = False
        return got_up

    def _handle(self, msg: dict[str, Any]) -> bool:
        """Apply one message; False to drop the connection (and ask for a snapshot)."""
        kind = msg["type"]
        if kind == proto.SNAPSHOT:
            view: View = {c: {} for c in proto.COLLECTIONS}
            view.update(msg.get("view") or {})
            self.view, self.session_id = view, msg.get("session")
            self.revision, self.acked = int(msg["revision"]), None
            self._established()
            self._on_event(self, kind)
        elif kind == proto.DELTA:
            rev = int(msg["revision"])
            if not self.established or self.view is None or self.revision is None \
                    or rev != self.revision + 1:
                log.info("control session %s: revision gap (%s after %s); asking for a "
                         "snapshot", self.url, rev, self.revision)
                self.session_id = None
                return False
            proto.apply_delta(self.view, msg)
            self.revision = rev
            self._on_event(self, kind)
        elif kind == proto.RESUMED:
            if msg.get("session") != self.session_id or self.view is None:
                self.session_id = None
                return False
            self._established()
            self._on_event(self, kind)
        elif kind == proto.ERROR:
            self.last_error = str(msg.get("message"))
            log.warning("control node %s: %s", self.url, self.last_error)
            self.session_id = None
            return False
        return True

    def _established(self) -> None:
        self.established = True
        self.resync = True
        self.last_error = None
