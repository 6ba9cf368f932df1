"""The transformer service: allocate route-target numbers, write the derived state, and run as
the one active transformer of a store.

``sync()`` is one store transaction: it reads the index (caught up with other writers),
allocates the missing route-target numbers, computes ``derive()`` and writes only the
difference, so a sync with nothing to do writes nothing.  Route-target numbers are claims
(``claim/id/route-target/<n>`` owned by the routing instance or logical router they were
allocated for): unique across processes and restarts, and freed with their owner.

``run()`` holds the lease (``lease.py``) and syncs when the config changed.  It learns about
changes from the index's listeners: writes through this process's API at once, other
processes' writes when it catches up (every ``poll_s``).  Ports and addresses never change
derived state, so their changes are ignored; a burst of other changes costs one sync, and
syncs are paced by how long the last one took, so the transformer cannot starve the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from tungsten.api.context import RequestCtx
from tungsten.api.errors import ApiError
from tungsten.api.hooks import release_ids
from tungsten.api.objdb import CLAIM, Obj, WriteSet
from tungsten.store import StoreError
from tungsten.transformer import lease
from tungsten.transformer.derive import Derived, RtSpace, derive, rt_owners, rt_space

if TYPE_CHECKING:
    from tungsten.api.core import ConfigApi

log = logging.getLogger("tungsten.transformer")

RT_SPACE = "route-target"
RT_CLAIM = f"{CLAIM}id/{RT_SPACE}/"
CTX = RequestCtx()
# changes of these types may change derived state; everything else is ignored
WATCHED = frozenset({
    "virtual-network", "network-policy", "security-group", "logical-router",
    "routing-instance", "route-target", "access-control-list", "global-system-config",
})


class LeaseLost(RuntimeError):
    """This transformer no longer holds the lease: it must not write."""


class Transformer:
    def __init__(self, api: ConfigApi, holder: str, lease_s: float = 6.0, *,
                 debounce_s: float = 0.005, poll_s: float = 0.2) -> None:
        self.api = api
        self.holder = holder
        self.lease_s = lease_s
        self.debounce_s = debounce_s
        self.poll_s = poll_s
        self.leader = False
        self.syncs = 0  # syncs that ran (stats, tests)
        self._dirty = True
        self._writing = False
        self._wake: asyncio.Event | None = None
        self._lease_until = 0.0  # wall-clock end of the lease as we last took it

    # -- one pass --------------------------------------------------------------------------------
    def sync(self) -> int:
        """Bring the derived state in line with the config; returns how many objects were
        created, updated or deleted plus route-target numbers allocated or released (0: the
        store was already right and nothing was written)."""
        return self._sync(fenced=False)

    def _sync(self, fenced: bool) -> int:
        self._writing = True  # our own commits must not mark us dirty again
        try:
            n = self.api.write(lambda ws: self._plan(ws, fenced))
        finally:
            self._writing = False
        self.syncs += 1
        return int(n)

    def _plan(self, ws: WriteSet, fenced: bool) -> int:
        # Checked on the index this attempt commits against: if another candidate takes the
        # lease after this read, the store revision moves and the commit fails.
        store = self.api.db.store
        if fenced and not lease.holds(store, self.holder, time.time()):
            raise LeaseLost(self.holder)
        db = self.api.db
        space = rt_space(db)
        numbers = self._allocate(ws, rt_owners(db), space)
        changed = self._apply(ws, derive(db, numbers))
        return changed + sum(1 for k in ws.claims if k.startswith(RT_CLAIM))

    # -- route-target numbers ----------------------------------------------------------------
    def _allocate(self, ws: WriteSet, owners: list[str], space: RtSpace) -> dict[str, int]:
        held: dict[str, list[int]] = {}
        for key, owner in ws.db.claims.items():
            if key.startswith(RT_CLAIM):
                held.setdefault(owner, []).append(int(key[len(RT_CLAIM):]))
        wanted = set(owners)
        numbers: dict[str, int] = {}
        for owner, ns in held.items():
            ns.sort()
            keep = next((n for n in ns if space.lo <= n <= space.hi), None)
            if owner in wanted and keep is not None:
                numbers[owner] = keep
            # gone owners, duplicates, and numbers of the other ASN width are freed
            release_ids(ws, RT_SPACE, owner, *[n for n in ns if n != numbers.get(owner)])
        for owner in owners:
            if owner not in numbers:
                numbers[owner] = self._alloc(ws, owner, space)
        return numbers

    def _alloc(self, ws: WriteSet, owner: str, space: RtSpace) -> int:
        """The lowest free number, skipping any that a user's route-target object uses."""
        hints = ws.db.id_hints
        start = max(space.lo, hints.get(RT_SPACE, space.lo))
        for first in dict.fromkeys((start, space.lo)):
            for n in range(first, space.hi + 1):
                key = f"{RT_CLAIM}{n}"
                if ws.claim_owner(key) is not None:
                    continue
                existing = ws.lookup("route-target", [space.name(n)])
                obj = ws.get(existing) if existing else None
                if obj is not None and not obj.derived:
                    continue
                ws.claim(key, owner)
                hints[RT_SPACE] = n + 1
                return n
        raise ApiError(409, f"no free route-target number left in [{space.lo}, {space.hi}]")

    # -- writing the difference ----------------------------------------------------------------
    def _apply(self, ws: WriteSet, want: Derived) -> int:
        api, db = self.api, self.api.db
        for name in want.route_targets:
            if ws.lookup("route-target", [name]) is None:
                api.create_child(ws, "route-target", [name], None, CTX, derived=True)
        acl_type = api.rtype("access-control-list")
        for fq, acl in want.acls.items():
            u = ws.lookup("access-control-list", fq)
            current = ws.get(u) if u else None
            if current is None:
                api.create_child(ws, "access-control-list", list(fq), acl.parent_type, CTX,
                                 derived=True, access_control_list_entries=acl.entries)
            elif current.props.get("access_control_list_entries") != acl.entries:
                api._update(ws, acl_type, current.uuid,
                            {"access_control_list_entries": acl.entries}, CTX)
        for uuid, fields in want.refs.items():
            holder = ws.get(uuid)
            if holder is not None:
                self._set_refs(ws, holder, fields)
        # what is no longer wanted: after the refs to it are gone
        for old in list(db.by_type.get("access-control-list", {}).values()):
            if old.derived and tuple(old.fq_name) not in want.acls:
                self._drop(ws, old)
        keep = set(want.route_targets)
        for old in list(db.by_type.get("route-target", {}).values()):
            if old.derived and old.fq_name[-1] not in keep:
                self._drop(ws, old)
        return len(ws.objs)

    def _set_refs(self, ws: WriteSet, holder: Obj, fields: dict[str, Any]) -> None:
        data: dict[str, Any] = {}
        for field_name, refs in fields.items():
            wanted = []
            for (ttype, tfq), attr in refs:
                target = ws.lookup(ttype, tfq)
                if target is not None:
                    wanted.append({"uuid": target, "attr": attr})
            current = [{"uuid": r["uuid"], "attr": r.get("attr")}
                       for r in holder.refs.get(field_name, [])]
            if current != wanted:
                data[field_name] = wanted
        if data:
            self.api._update(ws, self.api.rtype(holder.type), holder.uuid, data, CTX)

    def _drop(self, ws: WriteSet, obj: Obj) -> None:
        current = ws.get(obj.uuid)
        if current is None:
            return
        try:
            self.api._delete(ws, self.api.rtype(obj.type), current, CTX, cascade=True)
        except ApiError as e:  # a user's object still refers to it: keep it for now
            log.warning("cannot remove %s %s yet: %s", obj.type, ":".join(obj.fq_name), e)

    # -- the loop ------------------------------------------------------------------------------
    def _on_change(self, old: Obj | None, new: Obj | None) -> None:
        obj = new if new is not None else old
        if self._writing or obj is None:
            return
        if obj.type in WATCHED or (obj.type == "virtual-machine-interface"
                                   and self._router_port(obj)):
            self._dirty = True
            if self._wake is not None:
                self._wake.set()

    def _router_port(self, port: Obj) -> bool:
        objs = self.api.db.objs
        for u in self.api.db.back.get(port.uuid, {}):
            o = objs.get(u)
            if o is not None and o.type == "logical-router":
                return True
        return False

    def _renew(self) -> bool:
        """Take or keep the lease; a store hiccup keeps the leader until its lease runs out."""
        now = time.time()
        try:
            held, current = lease.acquire(self.api.db.store, self.holder, self.lease_s, now)
        except StoreError as e:
            log.warning("lease: store unavailable: %s", e)
            return self.leader and time.time() < self._lease_until
        if held:
            self._lease_until = now + self.lease_s
        if held != self.leader:
            who = self.holder if held else (current.holder if current else "nobody")
            log.info("transformer %s: %s (lease held by %s)", self.holder,
                     "active" if held else "standby", who)
        return held

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set: hold the lease (or wait for it) and keep the derived
        state in line with the config.  The lease is released on the way out."""
        loop = asyncio.get_running_loop()
        db = self.api.db
        self._wake = asyncio.Event()
        db.listeners.append(self._on_change)
        stopping = asyncio.ensure_future(stop.wait())
        next_lease = 0.0
        not_before = 0.0
        try:
            while not stop.is_set():
                now = loop.time()
                if now >= next_lease:
                    was = self.leader
                    self.leader = self._renew()
                    if self.leader and not was:
                        self._dirty = True  # a new holder converges everything once
                    renew = self.lease_s / 3 if self.leader else min(0.5, self.lease_s / 4)
                    next_lease = now + renew
                try:
                    db.catch_up()  # other processes' writes reach _on_change here
                except StoreError as e:
                    log.warning("catch-up failed: %s", e)
                if self.leader and self._dirty and now >= not_before:
                    await asyncio.sleep(self.debounce_s)  # let a burst of changes land
                    self._dirty = False
                    started = loop.time()
                    try:
                        n = self._sync(fenced=True)
                        if n:
                            log.info("transformer sync wrote %d changes", n)
                    except LeaseLost:
                        self.leader = False
                        next_lease = 0.0
                    except (ApiError, StoreError) as e:
                        log.warning("transformer sync failed, retrying: %s", e)
                        self._dirty = True
                    # pace syncs: at most about a third of the time goes to syncing
                    not_before = loop.time() + 2 * (loop.time() - started)
                    continue
                self._wake.clear()
                timeout = max(0.0, min(self.poll_s, next_lease - loop.time()))
                if self._dirty and self.leader:
                    timeout = max(0.0, min(timeout, not_before - loop.time()))
                waker = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({waker, stopping}, timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
        finally:
            stopping.cancel()
            with contextlib.suppress(ValueError):
                db.listeners.remove(self._on_change)
            self._wake = None
            if self.leader:
                self.leader = False
                try:
                    lease.release(db.store, self.holder)
                except StoreError as e:
                    log.warning("could not release the lease: %s", e)
