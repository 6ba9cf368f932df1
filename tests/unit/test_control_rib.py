"""The RIB: own routes, route-target import/export, connection-based leaking, removal, and the
per-RI change records the control node fans out."""

from __future__ import annotations

from tungsten.control.protocol import Route, route_key
from tungsten.control.rib import Rib, RiTargets

A, B, C = "d:p:a:a", "d:p:b:b", "d:p:c:c"


def route(ri: str, last: int, node: str = "n1") -> Route:
    return Route(ri=ri, prefix=f"198.51.100.{last}/32", mac="02:00:00:00:00:01",
                 nexthop="192.0.2.1", vni=5, encap="vxlan", port=f"port-{last}", node=node,
                 sgs=[], tags=[])


def prefixes(routes: dict[str, Route]) -> set[tuple[str, str]]:
    return {(r["ri"], r["prefix"]) for r in routes.values()}


def test_an_instance_sees_its_own_routes_only_by_default() -> None:
    rib = Rib()
    rib.add(route(A, 1))
    rib.add(route(B, 2))
    assert prefixes(rib.routes_visible_in(A)) == {(A, "198.51.100.1/32")}
    assert prefixes(rib.routes_visible_in(B)) == {(B, "198.51.100.2/32")}
    assert rib.routes_visible_in(C) == {}


def test_route_target_import_copies_routes_into_the_importer() -> None:
    rib = Rib()
    rib.set_config({
        A: RiTargets(exports=frozenset({"target:64512:1"})),
        B: RiTargets(imports=frozenset({"target:64512:1"})),
    })
    rib.add(route(A, 1))
    rib.add(route(B, 2))
    seen = rib.routes_visible_in(B)
    assert prefixes(seen) == {(B, "198.51.100.1/32"), (B, "198.51.100.2/32")}
    for key, r in seen.items():  # keys are the rewritten routes' keys
        assert key == route_key(r)
    # export only: A does not import what B exports
    assert prefixes(rib.routes_visible_in(A)) == {(A, "198.51.100.1/32")}


def test_a_connection_imports_the_peers_export_targets() -> None:
    rib = Rib()
    rib.set_config({
        A: RiTargets(imports=frozenset({"t:a"}), exports=frozenset({"t:a"})),
        B: RiTargets(connections=frozenset({A})),
        C: RiTargets(exports=frozenset({"t:a"})),  # exports A's target: B sees it too
    })
    for i, ri in enumerate((A, B, C), start=1):
        rib.add(route(ri, i))
    assert prefixes(rib.routes_visible_in(B)) == {
        (B, "198.51.100.1/32"), (B, "198.51.100.2/32"), (B, "198.51.100.3/32")}
    # unidirectional: A has no connection to B
    assert prefixes(rib.routes_visible_in(A)) == {(A, "198.51.100.1/32"), (A, "198.51.100.3/32")}


def test_a_connection_leaks_before_any_route_target_exists() -> None:
    rib = Rib()
    rib.set_config({A: RiTargets(connections=frozenset({B})),
                    B: RiTargets(connections=frozenset({A}))})
    rib.add(route(A, 1))
    rib.add(route(B, 2))
    assert prefixes(rib.routes_visible_in(A)) == {(A, "198.51.100.1/32"), (A, "198.51.100.2/32")}
    assert prefixes(rib.routes_visible_in(B)) == {(B, "198.51.100.1/32"), (B, "198.51.100.2/32")}


def test_removal_withdraws_everywhere_and_is_recorded() -> None:
    rib = Rib()
    rib.set_config({A: RiTargets(exports=frozenset({"t"})), B: RiTargets(imports=frozenset({"t"}))})
    rib.watch(A)
    rib.watch(B)
    r = route(A, 1)
    assert rib.add(r)
    assert not rib.add(dict(r))  # type: ignore[arg-type]  # unchanged: nothing to do
    changes = rib.take_changes()
    assert set(changes) == {A, B}
    assert rib.remove(route_key(r)) == r
    assert rib.remove(route_key(r)) is None
    changes = rib.take_changes()
    assert [list(c.values()) for c in changes.values()] == [[None], [None]]
    assert rib.routes_visible_in(A) == {} and rib.routes_visible_in(B) == {}
    assert rib.counts() == {}


def test_changes_keep_the_latest_state_per_key() -> None:
    rib = Rib()
    rib.watch(A)
    r = route(A, 1)
    rib.add(r)
    rib.remove(route_key(r))
    rib.add(r)
    assert rib.take_changes() == {A: {route_key(r): r}}
    assert rib.take_changes() == {}


def test_config_change_records_the_difference_for_watched_instances() -> None:
    rib = Rib()
    rib.add(route(A, 1))
    rib.add(route(B, 2))
    rib.watch(B)
    assert rib.take_changes() == {}  # watching starts from the current state, unrecorded
    rib.set_config({B: RiTargets(connections=frozenset({A}))})
    ch = rib.take_changes()
    assert [(r["ri"], r["prefix"]) for r in ch[B].values() if r] == [(B, "198.51.100.1/32")]
    rib.set_config({})
    ch = rib.take_changes()
    assert list(ch[B].values()) == [None]
    assert prefixes(rib.routes_visible_in(B)) == {(B, "198.51.100.2/32")}


def test_unwatched_instances_record_nothing_and_encoding_follows_changes() -> None:
    rib = Rib()
    rib.add(route(A, 1))
    assert rib.take_changes() == {}
    rib.watch(A)
    first = rib.encoded_members(A)
    assert b"198.51.100.1/32" in first and rib.encoded_members(A) is first
    rib.add(route(A, 2))
    assert b"198.51.100.2/32" in rib.encoded_members(A)
    rib.unwatch(A)
    assert rib.watched() == set()
