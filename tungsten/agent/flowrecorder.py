"""The flow log of a linux node: what its logged rules decided, recorded as it happens.

A logged rule (``tungsten.datapath.linux.flowlog``) sends the packets it decides to nflog
group 7 with the prefix ``tgflow <rule uuid> <pass|deny>``, and marks the conntrack entry of
a flow it admits with the rule's mark.  A ``FlowRecorder`` thread, in the node's namespace,
listens to both:

- **decisions** (nflog): time, rule, action, protocol, addresses, ports, in/out devices (and
  the conntrack zone when the kernel sends the packet's entry) — denied attempts included;
- **flow starts and ends** (conntrack NEW/DESTROY events of entries carrying a rule mark):
  an admitted flow's zone, and at its end its packets and bytes (``nf_conntrack_acct`` is
  turned on in the namespace) and duration.

A flood of logged packets cannot eat the agent: the kernel copies 96 bytes per packet and
batches them; what the socket cannot hold is dropped by the kernel (counted as ``lost``);
the recorder folds repeats of one decision (same rule and 5-tuple) within a second into one
record with a count, and records at most ``rate`` records a second (the rest are counted in
a ``suppressed`` record).  Records are kept in a ring (``capacity``) served by the agent's
local API (``GET /flows``) and appended to ``flows.jsonl`` in the agent's state directory,
rotated to ``flows.jsonl.1`` at ``max_bytes``; a restarted agent reloads the ring from them.

``Aggregator``, ``decision``, ``ct_record`` and ``select`` are pure; the thread is the thin
adapter around them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select as selectmod
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tungsten.datapath.base import DatapathState
from tungsten.datapath.linux import flowlog
from tungsten.datapath.linux.nflog import CtEvent, LoggedPacket

log = logging.getLogger("tungsten.agent")

Record = dict[str, Any]
FILE_NAME = "flows.jsonl"
CAPACITY = 10_000  # records in memory
MAX_BYTES = 4 << 20  # the file is rotated past this (two files at most: ~8 MiB)
RATE = 200  # records a second at most (beyond: counted in a "suppressed" record)
# messages decoded a second at most per source (~45 us each): past it the socket is left
# unread until the second ends, and the kernel drops what overflows it (counted as lost)
BUDGET = 2000
WINDOW = 1.0  # seconds: repeats of one decision within it make one record
PENDING_STARTS = 65_536  # admitted flows whose start is remembered (for their duration)
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


# -- pure core -------------------------------------------------------------------------------
def decision(p: LoggedPacket, names: Callable[[int], str | None]) -> tuple[tuple[Any, ...],
                                                                            Record] | None:
    """(aggregation key, record) of one logged packet (None: not one of our prefixes)."""
    parsed = flowlog.parse_prefix(p.prefix)
    if parsed is None:
        return None
    rule, action = parsed
    h = p.headers
    rec: Record = {"event": "decision", "action": action, "rule": rule,
                   "proto": h.proto if h else None, "src": h.src if h else None,
                   "dst": h.dst if h else None, "sport": h.sport if h else 0,
                   "dport": h.dport if h else 0, "zone": p.zone,
                   "in": names(p.indev) if p.indev else None,
                   "out": names(p.outdev) if p.outdev else None}
    key = (rule, action, rec["proto"], rec["src"], rec["dst"], rec["sport"], rec["dport"])
    return key, rec


@dataclass
class Aggregator:
    """Folds decisions into at most ``rate`` records per ``window``: repeats of one key in a
    window become one record with a ``count``; keys beyond the rate are counted only."""

    rate: int = RATE
    window: float = WINDOW
    start: float | None = None
    pending: dict[tuple[Any, ...], Record] = field(default_factory=dict)
    suppressed: int = 0

    def add(self, now: float, key: tuple[Any, ...], rec: Record) -> list[Record]:
        """Take one decision at ``now``; the records of a window that ended before it."""
        out = self.flush(now)
        if self.start is None:
            self.start = now
        have = self.pending.get(key)
        if have is not None:
            have["count"] += 1
        elif len(self.pending) < self.rate:
            self.pending[key] = {"time": now, **rec, "count": 1}
        else:
            self.suppressed += 1
        return out

    def flush(self, now: float, force: bool = False) -> list[Record]:
        """The records of the current window if it is over (or ``force``)."""
        if self.start is None or (not force and now - self.start < self.window):
            return []
        out = list(self.pending.values())
        if self.suppressed:
            out.append({"time": self.start, "event": "suppressed", "count": self.suppressed})
        self.pending, self.suppressed, self.start = {}, 0, None
        return out


def ct_record(e: CtEvent, now: float, rule_of: Callable[[int], str | None],
              starts: dict[int, float]) -> Record | None:
    """The record of a conntrack event of a flow a logged rule admitted (None: an entry
    without a rule mark).  ``starts`` (entry id -> start time) is updated."""
    if not e.mark & flowlog.MARK_BIT:
        return None
    rec: Record = {"time": now, "event": "start" if e.kind == "new" else "end",
                   "action": "pass", "rule": rule_of(e.mark), "mark": e.mark,
                   "proto": e.proto, "src": e.src, "dst": e.dst, "sport": e.sport,
                   "dport": e.dport, "zone": e.zone}
    if e.kind == "new":
        if len(starts) >= PENDING_STARTS:
            starts.pop(next(iter(starts)))  # the oldest: its end will lack a duration
        starts[e.id] = now
    else:
        began = starts.pop(e.id, None)
        if began is not None:
            rec["duration"] = round(now - began, 3)
        if e.packets is not None:
            rec["packets"], rec["bytes"] = e.packets, e.bytes
    return rec


def select(records: Iterable[Record], *, since: float | None = None, last: int | None = None,
           action: str | None = None, rule: str | None = None,
           event: str | None = None) -> list[Record]:
    """The records that pass the filters, oldest first; ``last``: only the newest n."""
    out = [r for r in sorted(records, key=lambda r: float(r.get("time") or 0))
           if (since is None or r.get("time", 0) >= since)
           and (action is None or r.get("action") == action)
           and (rule is None or r.get("rule") == rule)
           and (event is None or r.get("event") == event)]
    return out[max(0, len(out) - last):] if last is not None else out


# -- the thread ------------------------------------------------------------------------------
class FlowRecorder:
    """Records a node's logged flows (see the module doc).  ``state`` gives the datapath
    state now (the rules' names and marks come from it); ``path``: the JSON lines file
    (None: memory only)."""

    def __init__(self, netns: str | None, path: Path | None = None, *,
                 state: Callable[[], DatapathState | None] = lambda: None,
                 group: int = flowlog.LOG_GROUP, capacity: int = CAPACITY,
                 max_bytes: int = MAX_BYTES, rate: int = RATE,
                 budget: int = BUDGET) -> None:
        self.netns = netns
        self.path = path
        self.group = group
        self.max_bytes = max_bytes
        self.budget = budget
        self._spent: dict[int, int] = {}  # socket fd -> messages decoded this period
        self._period = 0.0
        self._state = state
        self._ring: deque[Record] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._agg = Aggregator(rate)
        self._starts: dict[int, float] = {}
        self._held: list[Record] = []  # conntrack records waiting for their rule's name
        self._marks: dict[int, str] = {}
        self._catalog: dict[str, Any] = {}
        self._catalog_of: object = None
        self._names: dict[int, str] = {}
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._file: Any = None
        self.lost = {"nflog": 0, "conntrack": 0}
        self.errors: dict[str, str] = {}  # what could not be listened to, and why
        self.listening: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Open the sockets (in the namespace) and start the thread; a part that cannot be
        opened is reported in ``status`` and the rest still runs."""
        from tungsten.datapath.linux.nflog import CtEventSocket, NflogSocket

        self._load()
        socks: list[Any] = []
        try:
            socks.append(NflogSocket(self.netns, self.group))
            self.listening.append("nflog")
        except OSError as e:
            self.errors["nflog"] = f"nflog group {self.group}: {e.strerror or e}"
            log.warning("flow log: cannot listen to %s", self.errors["nflog"])
        try:
            socks.append(CtEventSocket(self.netns))
            self.listening.append("conntrack")
        except OSError as e:
            self.errors["conntrack"] = f"conntrack events: {e.strerror or e}"
            log.warning("flow log: cannot listen to %s", self.errors["conntrack"])
        self._accounting()
        self._thread = threading.Thread(target=self._run, args=(socks,), daemon=True,
                                        name=f"flow recorder {self.netns or '-'}")
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None and self._stop_w >= 0:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=10)
            self._thread = None
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1  # a second stop closes nothing (fds get reused)
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _accounting(self) -> None:
        """Turn on conntrack accounting in the namespace (flow ends carry packets/bytes)."""
        from tungsten.datapath.linux.netlink import in_netns

        try:
            with in_netns(self.netns), \
                    open("/proc/sys/net/netfilter/nf_conntrack_acct", "w") as f:
                f.write("1")
        except OSError as e:
            log.info("flow log: no conntrack accounting: %s", e)

    # -- queries -----------------------------------------------------------------------------
    def records(self, **filters: Any) -> list[Record]:
        with self._lock:
            snapshot = list(self._ring)
        return select(snapshot, **filters)

    def status(self) -> dict[str, Any]:
        return {"netns": self.netns, "group": self.group, "listening": list(self.listening),
                "errors": dict(self.errors), "lost": dict(self.lost),
                "file": str(self.path) if self.path else None,
                "kept": len(self._ring), "capacity": self._ring.maxlen}

    # -- the thread --------------------------------------------------------------------------
    def _run(self, socks: list[Any]) -> None:
        from tungsten.datapath.linux.netlink import in_netns

        try:
            with in_netns(self.netns):  # this thread's own: device names resolve there
                self._loop(socks)
        except Exception:
            log.exception("flow log: the recorder stopped")
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()

    def _loop(self, socks: list[Any]) -> None:
        from tungsten.datapath.linux.nflog import (
            NflogSocket,
            decode_ct_events,
            decode_packets,
            read_all,
        )

        while True:
            now = time.monotonic()
            if now - self._period >= 1.0:
                self._period, self._spent = now, {}
            live = [s for s in socks if self._spent.get(s.fileno(), 0) < self.budget]
            busy = self._agg.start is not None or self._held or len(live) < len(socks)
            timeout = WINDOW / 2 if busy else None
            ready, _, _ = selectmod.select([self._stop_r, *live], [], [], timeout)
            now = time.time()
            out: list[Record] = []
            if self._stop_r in ready:
                self._keep(self._agg.flush(now, force=True) + self._release(now + WINDOW))
                return
            for s in socks:
                if s not in ready:
                    continue
                chunks, lost = read_all(s.sock)
                nflog = isinstance(s, NflogSocket)
                if lost:
                    kind = "nflog" if nflog else "conntrack"
                    self.lost[kind] += 1
                    out.append({"time": now, "event": "lost", "source": kind})
                n = 0
                for data in chunks:
                    if nflog:
                        for p in decode_packets(data):
                            n += 1
                            d = decision(p, self._ifname)
                            if d is not None:
                                self._marks.setdefault(flowlog.rule_mark(d[0][0]), d[0][0])
                                out += self._agg.add(now, *d)
                    else:
                        for e in decode_ct_events(data, flowlog.MARK_BIT):
                            n += 1
                            r = ct_record(e, now, self._rule_of, self._starts)
                            if r is not None:
                                self._held.append(r)
                self._spent[s.fileno()] = self._spent.get(s.fileno(), 0) + n
            out += self._agg.flush(now)
            out += self._release(now)
            self._keep(out)

    def _release(self, now: float) -> list[Record]:
        """Conntrack records whose rule is known by now: a flow's start usually comes
        before its decision (nflog batches), whose prefix names the rule of a mark the
        state did not (yet) know.  Held for at most a window."""
        out: list[Record] = []
        keep: list[Record] = []
        for r in self._held:
            if r["rule"] is None:
                r["rule"] = self._rule_of(r["mark"])
            (out if r["rule"] is not None or now - r["time"] >= WINDOW else keep).append(r)
        self._held = keep
        return out

    def _ifname(self, index: int) -> str | None:
        name = self._names.get(index)
        if name is None:
            try:
                name = socket.if_indextoname(index)
            except OSError:
                return str(index)  # gone already
            if len(self._names) > 4096:
                self._names.clear()
            self._names[index] = name
        return name

    def _refresh(self) -> None:
        state = self._state()
        if state is not self._catalog_of:
            self._catalog_of = state
            self._catalog = flowlog.catalog(state)
            self._marks.update({flowlog.rule_mark(u): u for u in self._catalog})

    def _rule_of(self, mark: int) -> str | None:
        if mark not in self._marks:
            self._refresh()
        return self._marks.get(mark)

    def _keep(self, records: list[Record]) -> None:
        if not records:
            return
        self._refresh()
        for r in records:
            info = self._catalog.get(r.get("rule") or "")
            if info is not None:
                r["rule_info"] = info
        with self._lock:
            self._ring.extend(records)
            self._write(records)

    # -- the file ----------------------------------------------------------------------------
    def _write(self, records: list[Record]) -> None:
        if self.path is None:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a")  # noqa: SIM115 - kept open between batches
            for r in records:
                self._file.write(json.dumps(r, separators=(",", ":")) + "\n")
            self._file.flush()
            if self._file.tell() >= self.max_bytes:
                self._file.close()
                self._file = None
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except OSError as e:
            if "file" not in self.errors:
                log.warning("flow log: cannot write %s: %s", self.path, e)
            self.errors["file"] = f"{self.path}: {e.strerror or e}"

    def _load(self) -> None:
        """The ring as the files left it (an agent restart keeps the recent log)."""
        if self.path is None:
            return
        self._ring.extend(load(self.path))


def load(path: Path) -> list[Record]:
    """The records of a flow log file and its rotated predecessor, oldest first (lines
    that do not parse, e.g. a torn last line, are skipped)."""
    out: list[Record] = []
    for p in (path.with_name(path.name + ".1"), path):
        try:
            text = p.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                r = json.loads(line)
                if isinstance(r, dict):
                    out.append(r)
    return out


def proto_name(proto: Any) -> str:
    return PROTO_NAMES.get(proto, str(proto)) if isinstance(proto, int) else "-"


def rule_label(rec: Mapping[str, Any]) -> str:
    """``<rule uuid>`` plus where it lives, as the agent knew it."""
    info = rec.get("rule_info") or {}
    rule = str(rec.get("rule") or hex(int(rec.get("mark") or 0)))
    if info.get("kind") == "acl":
        if info.get("policy"):  # named by `tungsten flows` from the config API
            return f"{rule} ({info['policy']}, acl of {info.get('network')})"
        return f"{rule} (acl of {info.get('network')})"
    if info.get("kind") == "firewall":
        where = "/".join(str(x) for x in (info.get("policy_set"), info.get("policy"))
                         if x)
        return f"{rule} ({where})" if where else rule
    return rule
