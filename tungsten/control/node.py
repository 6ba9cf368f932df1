"""The control node service: agent streams over WebSocket, fed by the config index and the RIB.

Everything that changes the agents' views -- routes from agents, config changes seen through
``ObjectDB.listeners`` (ours, and other writers' through a periodic ``catch_up``) -- only
marks what is affected; a flush after a short coalescing window turns the accumulated changes
into at most one delta per session.  Route changes are computed per routing instance
(``Rib.take_changes``) and encoded once per instance; agents whose views changed the same way
share the same body bytes.  Config collections are recomputed only for the sessions whose
objects changed.

Agents connect to every control node they know; each node serves them on its own (no
node-to-node peering yet), so an agent with two sessions receives every route twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from tungsten.api.core import ConfigApi
from tungsten.api.objdb import Obj
from tungsten.control import protocol as p
from tungsten.control import wire
from tungsten.control.protocol import Route, diff_views, route_key
from tungsten.control.rib import Rib
from tungsten.control.session import Link, Session
from tungsten.control.views import config_view, ri_targets

log = logging.getLogger("tungsten.control")

STATUS_PATH = "/control/v1/status"
WINDOW = 0.02  # coalescing window, seconds
CATCH_UP_INTERVAL = 0.2  # how often other writers' commits are looked for, seconds
MAX_QUEUED = 256 * 1024 * 1024  # bytes queued to one slow stream before it is dropped
MAX_MSG = 64 * 1024 * 1024
WRITE_BUDGET = 16 * 1024 * 1024  # bytes in flight to all streams together
ROUTE_FIELDS: dict[str, type] = {"ri": str, "prefix": str, "nexthop": str, "port": str}


@dataclass
class _Personal:
    """One session's own part of a flush: config changes and RIs it gained or lost."""

    upsert: wire.Fragments = field(default_factory=dict)
    remove: wire.Fragments = field(default_factory=dict)
    gained: set[str] = field(default_factory=set)


class WriteBudget:
    """Bytes being written to all streams at once.  A write of a large frame keeps its bytes
    in the transport until the socket takes them; bounding these writes together bounds the
    node's memory when many agents read slowly (one frame may always go alone)."""

    def __init__(self, limit: int = WRITE_BUDGET) -> None:
        self.limit = limit
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


class WsLink:
    """A session's WebSocket: an ordered outbox drained by one writer task, so the flush
    never waits on a socket and a slow agent never holds up the others."""

    def __init__(self, ws: web.WebSocketResponse, budget: WriteBudget) -> None:
        self.ws = ws
        self.budget = budget
        # a delta waits as (revision, shared body): its frame is built only when written
        self.out: deque[bytes | tuple[int, bytes]] = deque()
        self.queued = 0
        self.wake = asyncio.Event()
        self.closing = False

    def send(self, data: bytes) -> None:
        self._queue(data, len(data))

    def send_delta(self, revision: int, body: bytes) -> None:
        self._queue((revision, body), len(body))

    def _queue(self, item: bytes | tuple[int, bytes], size: int) -> None:
        if self.closing:
            return
        self.out.append(item)
        self.queued += size
        self.wake.set()
        if self.queued > MAX_QUEUED:
            log.warning("control: dropping a stream that does not keep up")
            self.close()

    def close(self) -> None:
        self.closing = True
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.out:
                item = self.out.popleft()
                if isinstance(item, tuple):
                    self.queued -= len(item[1])
                    item = wire.delta(*item)
                else:
                    self.queued -= len(item)
                await self.budget.acquire(len(item))
                try:
                    await self.ws.send_frame(item, WSMsgType.TEXT)
                finally:
                    await self.budget.release(len(item))
            if self.closing:
                await self.ws.close()
                return


class ControlNode:
    def __init__(self, api: ConfigApi, hold_time: float = 5.0, name: str = "control",
                 window: float = WINDOW, heartbeat: float | None = 15.0,
                 agent_stale_time: float = 0.0) -> None:
        self.api = api
        self.db = api.db
        self.hold_time = hold_time
        # how long the routes of an agent whose stream broke without a goodbye are kept (its
        # kernel datapath most likely still forwards); never shorter than the hold time
        self.agent_stale_time = max(hold_time, agent_stale_time)
        self.name = name
        self.window = window
        self.heartbeat = heartbeat
        self.rib = Rib()
        self.sessions: dict[str, Session] = {}
        self._by_node: dict[str, str] = {}  # agent node name -> its session id
        self._interest: dict[str, set[str]] = {}  # object uuid -> sessions that read it
        self._by_ri: dict[str, set[str]] = {}  # watched RI -> sessions that have it
        self._dirty: set[str] = set()  # sessions whose config must be recomputed
        self._rib_dirty = True
        self._prompt = False  # a subscription waits: flush it without waiting for the window
        self._wake = asyncio.Event()
        self._budget = WriteBudget()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self.flushes = 0

    # -- wiring ------------------------------------------------------------------------------
    def mount(self, app: web.Application) -> None:
        """Serve the agent stream and the status page on ``app``; start and stop with it."""
        app.router.add_get(p.STREAM_PATH, self._stream)
        app.router.add_get(STATUS_PATH, self._status)

        async def on_startup(_: web.Application) -> None:
            await self.start()

        async def on_shutdown(_: web.Application) -> None:
            await self.stop()

        app.on_startup.append(on_startup)
        app.on_shutdown.append(on_shutdown)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.db.listeners.append(self._on_change)
        self._rib_dirty = True
        self._tasks = [asyncio.create_task(self._flusher()),
                       asyncio.create_task(self._follower())]
        self._kick()

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(ValueError):
            self.db.listeners.remove(self._on_change)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        for s in list(self.sessions.values()):
            for timer in (s.timer, s.sweep):
                if timer is not None:
                    timer.cancel()
            s.timer = s.sweep = None
            if s.link is not None:
                s.link.close()

    def stats(self) -> dict[str, Any]:
        sessions = {
            s.id: {"node": s.node, "underlay_ip": s.underlay_ip, "connected": s.link is not None,
                   "revision": s.revision, "ports": len(s.ports), "routes": len(s.routes),
                   "networks": len(s.config["networks"]), "buffered": len(s.buffer)}
            for s in self.sessions.values()
        }
        counts = self.rib.counts()
        return {
            "name": self.name,
            "agents": sum(1 for s in self.sessions.values() if s.link is not None),
            "held": sum(1 for s in self.sessions.values() if s.link is None),
            "routes": sum(counts.values()),
            "routes_per_ri": counts,
            "watched_ris": len(self.rib.watched()),
            "flushes": self.flushes,
            "sessions": sessions,
        }

    # -- change intake -----------------------------------------------------------------------
    def _kick(self) -> None:
        self._wake.set()

    def _touch(self, uuid: str | None) -> None:
        sids = self._interest.get(uuid) if uuid else None
        if sids:
            self._dirty |= sids
            self._kick()

    def _on_change(self, old: Obj | None, new: Obj | None) -> None:
        obj = new or old
        if obj is None:
            return
        if obj.type in ("routing-instance", "route-target"):
            self._rib_dirty = True
            self._kick()
        elif obj.type == "instance-ip":
            for o in (old, new):
                for ref in (o.refs.get("virtual_machine_interface_refs", []) if o else []):
                    self._touch(ref["uuid"])
        elif obj.type == "access-control-list":
            self._touch(obj.parent_uuid)
        elif obj.type == "application-policy-set":
            # a new set is read by no session yet: it reaches the ports through the
            # application tag it names, or (a default set) through its project
            self._touch(obj.uuid)
            self._touch(obj.parent_uuid)
            for o in (old, new):
                for ref in (o.refs.get("tag_refs", []) if o else []):
                    self._touch(ref["uuid"])
        else:
            self._touch(obj.uuid)

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        last = last_prompt = -self.window
        while True:
            await self._wake.wait()
            # leading edge: a change after a quiet spell goes out at once; within a burst,
            # at most one flush per window (what arrives meanwhile is coalesced).  A
            # subscription (a new port: an agent's CNI ADD waits for its config) goes out at
            # once too, at most once per window of its own, so an ADD right after another is
            # not held by the flush of the previous one's route
            now = loop.time()
            wait = last + self.window - now
            if self._prompt and now - last_prompt >= self.window:
                wait = 0.0
            if wait > 0:
                await asyncio.sleep(wait)
            self._wake.clear()
            last = loop.time()
            if self._prompt:
                self._prompt, last_prompt = False, last
            try:
                self.flush()
            except Exception:  # a bug: keep serving, the next change retries
                log.exception("control: flush failed")

    async def _follower(self) -> None:
        while True:
            await asyncio.sleep(CATCH_UP_INTERVAL)
            try:
                if self.db.catch_up() < 0:  # the index was reloaded: everything may differ
                    self._rib_dirty = True
                    self._dirty |= set(self.sessions)
                    self._kick()
            except Exception:
                log.exception("control: catching up with the store failed")

    # -- the flush ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Turn everything accumulated since the last flush into deltas."""
        self.flushes += 1
        if self._rib_dirty:
            self._rib_dirty = False
            self.rib.set_config(ri_targets(self.db))
        memo: dict[str, Any] = {}
        personal: dict[str, _Personal] = {}
        dirty, self._dirty = self._dirty, set()
        for sid in dirty:
            s = self.sessions.get(sid)
            if s is not None:
                personal[sid] = self._refresh(s, memo)
        changes = self.rib.take_changes()
        shared: dict[str, tuple[bytes, bytes]] = {
            ri: (wire.members({k: r for k, r in ch.items() if r is not None}),
                 wire.items([k for k, r in ch.items() if r is None]))
            for ri, ch in changes.items()
        }
        affected = set(personal)
        for ri in changes:
            affected |= self._by_ri.get(ri, set())
        bodies: dict[tuple[str, ...], bytes] = {}
        for sid in affected:
            s = self.sessions[sid]
            mine = personal.get(sid)
            ris = tuple(sorted(ri for ri in s.ris if ri in shared
                               and (mine is None or ri not in mine.gained)))
            if mine is None or not (mine.upsert or mine.remove):
                if not ris:
                    continue
                body = bodies.get(ris)
                if body is None:
                    body = bodies[ris] = self._body(ris, shared, _Personal())
            else:
                body = self._body(ris, shared, mine)
            self._emit(s, body)

    @staticmethod
    def _body(ris: Iterable[str], shared: dict[str, tuple[bytes, bytes]],
              mine: _Personal) -> bytes:
        upsert = {c: list(f) for c, f in mine.upsert.items()}
        remove = {c: list(f) for c, f in mine.remove.items()}
        for ri in ris:
            up, rm = shared[ri]
            wire.add(upsert, "routes", up)
            wire.add(remove, "routes", rm)
        return wire.delta_body(upsert, remove)

    def _emit(self, s: Session, body: bytes) -> None:
        rev = s.record(body)
        if s.link is not None:
            s.link.send_delta(rev, body)

    def _refresh(self, s: Session, memo: dict[str, Any] | None = None) -> _Personal:
        """Recompute a session's config collections and RIs; its own part of the delta."""
        config, deps = config_view(self.db, s.ports, memo)
        out = _Personal()
        upsert, remove = diff_views(s.config, config)
        for coll, entries in upsert.items():
            wire.add(out.upsert, coll, wire.members(entries))
        for coll, ids in remove.items():
            wire.add(out.remove, coll, wire.items(ids))
        s.config = config
        self._reindex(s.id, self._interest, s.deps, deps)
        s.deps = deps
        ris = {n["ri"] for n in config["networks"].values()}
        out.gained = ris - s.ris
        for ri in sorted(s.ris - ris):
            # what the agent has of this RI: what is visible now plus what was withdrawn
            # since the last flush (still pending, so never sent as a removal)
            keys = list(self.rib.routes_visible_in(ri))
            keys += [k for k, r in self.rib.pending(ri).items() if r is None]
            wire.add(out.remove, "routes", wire.items(keys))
            self.rib.unwatch(ri)
        for ri in sorted(out.gained):
            self.rib.watch(ri)
            wire.add(out.upsert, "routes", self.rib.encoded_members(ri))
        self._reindex(s.id, self._by_ri, s.ris, ris)
        s.ris = ris
        return out

    @staticmethod
    def _reindex(sid: str, index: dict[str, set[str]], before: set[str],
                 after: set[str]) -> None:
        for k in before - after:
            members = index.get(k)
            if members is not None:
                members.discard(sid)
                if not members:
                    del index[k]
        for k in after - before:
            index.setdefault(k, set()).add(sid)

    # -- sessions ----------------------------------------------------------------------------
    def attach(self, hello: dict[str, Any], link: Link) -> Session:
        """Bind a stream that said hello to its session (resumed, taken over or new) and send
        what it needs first: ``resumed`` plus the missed deltas, or a snapshot."""
        node = hello.get("node")
        if not isinstance(node, str) or not node:
            raise ValueError("hello needs a 'node' name")
        ports = _strings(hello.get("ports") or [], "ports")
        underlay = hello.get("underlay_ip") or ""
        s = self.sessions.get(hello.get("session") or "")
        if s is not None and s.node == node:
            if s.timer is not None:
                s.timer.cancel()
                s.timer = None
            if s.link is not None and s.link is not link:
                s.link.close()
            s.link, s.underlay_ip = link, str(underlay)
            if set(ports) != s.ports:
                s.ports = set(ports)
                self._dirty.add(s.id)
                self._kick()
            missed = s.missed(hello.get("revision"))
            if missed is not None:
                link.send(p.encode({"type": p.RESUMED, "session": s.id,
                                    "revision": hello["revision"]}).encode())
                for rev, body in missed:
                    link.send_delta(rev, body)
                return s
            self._refresh(s)
            self._snapshot(s)
            return s
        s = Session(id=secrets.token_hex(8), node=node, underlay_ip=str(underlay),
                    ports=set(ports), link=link)
        prev = self.sessions.get(self._by_node.get(node, ""))
        if prev is not None:
            # the agent restarted: its routes stay (stale) until it announces them again or
            # the hold time passes, so a quick restart withdraws nothing it still has
            s.routes, prev.routes = prev.routes, {}
            s.stale = set(s.routes)
            self._drop(prev)
            s.sweep = asyncio.get_running_loop().call_later(
                self.hold_time, self._sweep_stale, s.id)
        self.sessions[s.id] = s
        self._by_node[node] = s.id
        self._refresh(s)
        self._snapshot(s)
        return s

    def _snapshot(self, s: Session) -> None:
        s.revision += 1
        s.reset_buffer()
        if s.link is not None:
            routes = [self.rib.encoded_members(ri) for ri in sorted(s.ris)]
            s.link.send(wire.snapshot(s.id, s.revision, s.config, routes))

    def detach(self, s: Session, link: Link, goodbye: bool = False) -> None:
        """The stream went away: hold the session (and its routes) for the hold time if the
        agent closed it (``goodbye``), else for the agent stale time."""
        if s.link is not link or self.sessions.get(s.id) is not s:
            return
        s.link = None
        if s.timer is not None:
            s.timer.cancel()
        hold = self.hold_time if goodbye else self.agent_stale_time
        s.timer = asyncio.get_running_loop().call_later(hold, self._expire, s.id)

    def _expire(self, sid: str) -> None:
        s = self.sessions.get(sid)
        if s is None or s.link is not None:
            return
        self._drop(s, withdraw=True)
        self._kick()

    def _sweep_stale(self, sid: str) -> None:
        s = self.sessions.get(sid)
        if s is None:
            return
        s.sweep = None
        for key in s.stale:
            if s.routes.pop(key, None) is not None:
                self.rib.remove(key)
        s.stale.clear()
        self._kick()

    def _drop(self, s: Session, withdraw: bool = False) -> None:
        for timer in (s.timer, s.sweep):
            if timer is not None:
                timer.cancel()
        s.timer = s.sweep = None
        if withdraw:
            for key in s.routes:
                self.rib.remove(key)
        s.routes = {}
        for ri in s.ris:
            self.rib.unwatch(ri)
        self._reindex(s.id, self._by_ri, s.ris, set())
        self._reindex(s.id, self._interest, s.deps, set())
        self._dirty.discard(s.id)
        self.sessions.pop(s.id, None)
        if self._by_node.get(s.node) == s.id:
            del self._by_node[s.node]
        if s.link is not None:
            s.link.close()
            s.link = None

    # -- agent messages ----------------------------------------------------------------------
    def handle(self, s: Session, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == p.ROUTES:
            for raw in msg.get("del") or []:
                key = str(raw)
                if s.routes.pop(key, None) is not None:
                    self.rib.remove(key)
                    s.stale.discard(key)
            for raw in msg.get("add") or []:
                route = _route(raw)
                key = route_key(route)
                s.routes[key] = route
                s.stale.discard(key)
                self.rib.add(route)
        elif kind == p.SUBSCRIBE:
            s.ports |= set(_strings(msg.get("ports") or [], "ports"))
            self._dirty.add(s.id)
            self._prompt = True
        elif kind == p.UNSUBSCRIBE:
            s.ports -= set(_strings(msg.get("ports") or [], "ports"))
            self._dirty.add(s.id)
        elif kind == p.ACK:
            rev = msg.get("revision")
            if isinstance(rev, int):
                s.ack(rev)
            return
        else:
            raise ValueError(f"unexpected message type {kind!r}")
        self._kick()

    # -- HTTP --------------------------------------------------------------------------------
    async def _status(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, heartbeat=self.heartbeat,
                                   max_msg_size=MAX_MSG)
        await ws.prepare(request)
        link = WsLink(ws, self._budget)
        writer = asyncio.create_task(link.run())
        session: Session | None = None
        goodbye = False  # the agent closed the stream (a stop), not a crash or a lost link
        try:
            while True:
                frame = await ws.receive()
                if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    goodbye = frame.type == WSMsgType.CLOSE
                    break
                msg = p.decode(frame.data)
                if session is None:
                    if msg["type"] != p.HELLO:
                        raise ValueError("the first message must be hello")
                    session = self.attach(msg, link)
                else:
                    self.handle(session, msg)
                if link.closing:
                    break
        except (ValueError, KeyError, TypeError) as e:
            link.send(p.encode({"type": p.ERROR, "message": str(e)}).encode())
        finally:
            if session is not None:
                self.detach(session, link, goodbye)
            link.close()
            try:
                await asyncio.wait_for(writer, 5.0)
            except (TimeoutError, ConnectionError, asyncio.CancelledError):
                writer.cancel()
            except Exception:  # the peer vanished mid-write
                writer.cancel()
        return ws


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'{what}' must be a list of strings")
    return value


def _route(raw: Any) -> Route:
    if not isinstance(raw, dict):
        raise ValueError("a route is an object")
    for name, kind in ROUTE_FIELDS.items():
        if not isinstance(raw.get(name), kind):
            raise ValueError(f"a route needs a string '{name}'")
    route: Route = {
        "ri": raw["ri"], "prefix": raw["prefix"], "mac": str(raw.get("mac") or ""),
        "nexthop": raw["nexthop"], "vni": int(raw.get("vni") or 0),
        "encap": str(raw.get("encap") or "vxlan"), "port": raw["port"],
        "node": str(raw.get("node") or ""), "sgs": list(raw.get("sgs") or []),
        "tags": list(raw.get("tags") or []),
    }
    if isinstance(raw.get("network"), str):
        route["network"] = raw["network"]  # the source network's name, kept through imports
    return route
