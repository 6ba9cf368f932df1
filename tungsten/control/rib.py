"""The routing information base: routes per routing instance, route-target import/export.

Pure: no I/O, no clock.  Agents publish routes into their network's routing instance (the
*source* RI); an RI sees its own routes plus those of every RI whose export targets intersect
its import targets.  A connection (an RI's ``routing_instance_refs`` to a peer) imports the
peer's export targets, as TF's control node does.  Every RI also exports an implicit target
naming itself, standing in for the system route target the transformer allocates, so a
connection leaks routes even before the transformer has run.

For fan-out at scale the RIB materialises the visible routes of *watched* RIs only (the primary
RIs of networks some agent has a port in) and records, per watched RI, which visible routes
changed since the last ``take_changes()``: the control node turns one RI's changes into one
encoded fragment shared by every agent that has that RI.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from tungsten.control.protocol import Route, route_key

Changes = dict[str, dict[str, Route | None]]  # ri -> visible key -> route (None: withdrawn)


@dataclass(frozen=True)
class RiTargets:
    """Route-target config of one routing instance (from its refs)."""

    imports: frozenset[str] = frozenset()
    exports: frozenset[str] = frozenset()
    connections: frozenset[str] = frozenset()  # peer RIs whose export targets we import


SELF = "ri:"  # prefix of the implicit target every RI exports


def self_target(ri: str) -> str:
    return SELF + ri


class Rib:
    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Route]] = {}  # source ri -> key -> route
        self._src_of: dict[str, str] = {}  # source key -> source ri
        self._config: dict[str, RiTargets] = {}
        self._exports: dict[str, frozenset[str]] = {}  # ri -> export targets (+ implicit)
        self._imports: dict[str, frozenset[str]] = {}  # ri -> effective import targets
        self._exporters: dict[str, set[str]] = {}  # target -> ris exporting it
        self._importers: dict[str, set[str]] = {}  # target -> ris importing it
        self._watch: dict[str, int] = {}  # watched ri -> reference count
        self._sources: dict[str, frozenset[str]] = {}  # watched ri -> ris it sees
        self._visible: dict[str, dict[str, Route]] = {}  # watched ri -> key -> route
        self._changes: Changes = {}
        self._encoded: dict[str, bytes] = {}  # watched ri -> its visible routes, encoded

    # -- config ----------------------------------------------------------------------------
    def set_config(self, config: dict[str, RiTargets]) -> None:
        """Replace the route-target config of every RI; watched RIs whose set of sources
        changes get the difference recorded."""
        if config == self._config:
            return
        self._config = dict(config)
        self._exports = {ri: t.exports | {self_target(ri)} for ri, t in config.items()}
        self._imports = {}
        for ri, t in config.items():
            imports = set(t.imports)
            for peer in t.connections:
                imports |= self._exports.get(peer, {self_target(peer)})
            self._imports[ri] = frozenset(imports)
        self._exporters = _invert(self._exports)
        self._importers = _invert(self._imports)
        for ri in list(self._watch):
            self._resync(ri)

    def sources(self, ri: str) -> frozenset[str]:
        """The RIs whose routes are visible in ``ri`` (always including itself)."""
        out = {ri}
        for target in self._imports.get(ri, ()):
            out |= self._exporters.get(target, set())
            if target.startswith(SELF):  # also an RI without config of its own
                out.add(target[len(SELF):])
        return frozenset(out)

    def importers(self, src: str) -> set[str]:
        """The RIs that see routes of ``src`` (always including itself)."""
        out = {src}
        for target in self._exports.get(src, (self_target(src),)):
            out |= self._importers.get(target, set())
        return out

    # -- routes ------------------------------------------------------------------------------
    def add(self, route: Route) -> bool:
        """Add or replace a route; False when the RIB already had it unchanged."""
        key = route_key(route)
        src = route["ri"]
        table = self._routes.setdefault(src, {})
        if table.get(key) == route:
            return False
        table[key] = route
        self._src_of[key] = src
        for ri in self.importers(src):
            if ri in self._watch:
                self._show(ri, route)
        return True

    def remove(self, key: str) -> Route | None:
        """Withdraw the route with this (source) key; returns it, None if unknown."""
        src = self._src_of.pop(key, None)
        if src is None:
            return None
        table = self._routes[src]
        route = table.pop(key)
        if not table:
            del self._routes[src]
        for ri in self.importers(src):
            if ri in self._watch:
                self._hide(ri, route)
        return route

    def get(self, key: str) -> Route | None:
        src = self._src_of.get(key)
        return None if src is None else self._routes[src].get(key)

    def routes_in(self, src: str) -> dict[str, Route]:
        """Routes published into ``src`` itself, by key."""
        return self._routes.get(src, {})

    def routes_visible_in(self, ri: str) -> dict[str, Route]:
        """Every route ``ri`` sees, copied into ``ri``, by key (materialised when watched)."""
        if ri in self._visible:
            return self._visible[ri]
        out: dict[str, Route] = {}
        for src in self.sources(ri):
            for route in self._routes.get(src, {}).values():
                seen = _into(route, ri)
                out[route_key(seen)] = seen
        return out

    def encoded_members(self, ri: str) -> bytes:
        """The visible routes of a watched RI as JSON object members (``"key":{...},...``),
        memoised until they change: one encoding serves every snapshot that includes ri."""
        out = self._encoded.get(ri)
        if out is None:
            out = orjson.dumps(self.routes_visible_in(ri))[1:-1]
            if ri in self._watch:
                self._encoded[ri] = out
        return out

    def pending(self, ri: str) -> dict[str, Route | None]:
        """Changes recorded for ``ri`` and not yet taken."""
        return self._changes.get(ri, {})

    def counts(self) -> dict[str, int]:
        """Number of routes published into each RI."""
        return {ri: len(t) for ri, t in self._routes.items()}

    # -- watched RIs -------------------------------------------------------------------------
    def watch(self, ri: str) -> None:
        n = self._watch.get(ri, 0)
        self._watch[ri] = n + 1
        if n == 0:
            self._sources[ri] = frozenset()
            self._visible[ri] = {}
            self._resync(ri, record=False)

    def unwatch(self, ri: str) -> None:
        n = self._watch.get(ri, 0) - 1
        if n > 0:
            self._watch[ri] = n
            return
        self._watch.pop(ri, None)
        self._sources.pop(ri, None)
        self._visible.pop(ri, None)
        self._changes.pop(ri, None)
        self._encoded.pop(ri, None)

    def watched(self) -> set[str]:
        return set(self._watch)

    def take_changes(self) -> Changes:
        """What changed in watched RIs since the last call (the latest state per key)."""
        out, self._changes = self._changes, {}
        return out

    # -- internals ---------------------------------------------------------------------------
    def _resync(self, ri: str, record: bool = True) -> None:
        before, after = self._sources[ri], self.sources(ri)
        if before == after:
            return
        self._sources[ri] = after
        for src in before - after:
            for route in self._routes.get(src, {}).values():
                self._hide(ri, route, record)
        for src in after - before:
            for route in self._routes.get(src, {}).values():
                self._show(ri, route, record)

    def _show(self, ri: str, route: Route, record: bool = True) -> None:
        seen = _into(route, ri)
        key = route_key(seen)
        self._visible[ri][key] = seen
        self._encoded.pop(ri, None)
        if record:
            self._changes.setdefault(ri, {})[key] = seen

    def _hide(self, ri: str, route: Route, record: bool = True) -> None:
        key = route_key(_into(route, ri))
        if self._visible[ri].pop(key, None) is None:
            return
        self._encoded.pop(ri, None)
        if record:
            self._changes.setdefault(ri, {})[key] = None


def _into(route: Route, ri: str) -> Route:
    """The route as seen from ``ri`` (the same object when it is its own RI)."""
    if route["ri"] == ri:
        return route
    seen = route.copy()
    seen["ri"] = ri
    return seen


def _invert(table: dict[str, frozenset[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ri, targets in table.items():
        for t in targets:
            out.setdefault(t, set()).add(ri)
    return out
