"""The transformer service in process: sync on real (SQLite) stores, the lease, the loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.unit.test_transformer_derive import (
    CTX,
    PROJECT,
    create,
    network,
    policy,
    ri_of,
    rule,
    vn_addr,
)
from tests.waits import until
from tungsten.api.core import ConfigApi
from tungsten.api.fsck import check_store
from tungsten.store import open_store
from tungsten.transformer import lease
from tungsten.transformer.service import RT_CLAIM, Transformer


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'config.db'}"


@pytest.fixture
def api(store_url: str) -> ConfigApi:
    return ConfigApi(open_store(store_url))


def rt_claims(api: ConfigApi) -> dict[int, str]:
    return {int(k[len(RT_CLAIM):]): v for k, v in api.db.claims.items()
            if k.startswith(RT_CLAIM)}


def targets_of(api: ConfigApi, ri: str) -> list[str]:
    return [api.db.objs[r["uuid"]].fq_name[0]
            for r in api.db.objs[ri].refs.get("route_target_refs", [])]


def route_targets(api: ConfigApi) -> list[str]:
    return sorted(o.fq_name[0] for o in api.db.by_type.get("route-target", {}).values())


def test_sync_allocates_from_8000000_and_is_idempotent(api: ConfigApi) -> None:
    t = Transformer(api, "t1")
    assert t.sync() > 0
    base = rt_claims(api)
    assert min(base) == 8_000_000 and sorted(base) == list(range(8_000_000, 8_000_000 + len(base)))
    red = network(api, "red")
    assert t.sync() > 0
    ri = ri_of(api, [*PROJECT, "red"])
    mine = [n for n, owner in rt_claims(api).items() if owner == ri]
    assert mine == [8_000_000 + len(base)]
    assert targets_of(api, ri) == [f"target:64512:{mine[0]}"]
    # no policy attached: no network ACL (TF), routing alone isolates
    assert api.db.lookup("access-control-list", [*PROJECT, "red", "red"]) is None
    assert t.sync() == 0  # nothing changed: nothing written
    revision = api.db.store.revision
    assert t.sync() == 0 and api.db.store.revision == revision
    assert check_store(api.db.store) == []
    assert red in api.db.objs


def test_restart_recomputes_exactly_what_is_stored(api: ConfigApi, store_url: str) -> None:
    p = policy(api, "p", rule(vn_addr("local"), vn_addr("any")))
    for name in ("red", "blue", "green"):
        network(api, name, p)
    create(api, "security-group", [*PROJECT, "sg"], security_group_entries={"policy_rule": [
        {"direction": ">", "protocol": "tcp", "src_addresses": [{"security_group": "local"}],
         "dst_addresses": [{"subnet": {"ip_prefix": "0.0.0.0", "ip_prefix_len": 0}}]}]})
    assert Transformer(api, "t1").sync() > 0
    before = (rt_claims(api), route_targets(api))
    again = ConfigApi(open_store(store_url))
    revision = again.db.store.revision
    assert Transformer(again, "t2").sync() == 0
    assert again.db.store.revision == revision
    assert (rt_claims(again), route_targets(again)) == before


def test_deleting_networks_and_policies_removes_derived_state(api: ConfigApi) -> None:
    t = Transformer(api, "t1")
    p = policy(api, "p", rule(vn_addr("red"), vn_addr("blue")))
    red = network(api, "red", p)
    blue = network(api, "blue", p)
    t.sync()
    red_ri, blue_ri = ri_of(api, [*PROJECT, "red"]), ri_of(api, [*PROJECT, "blue"])
    assert [r["uuid"] for r in api.db.objs[red_ri].refs["routing_instance_refs"]] == [blue_ri]
    blue_rt = targets_of(api, blue_ri)[0]
    # detach and delete the policy: the connection and its ACL rules go
    for vn in (red, blue):
        api.update("virtual-network", vn, {"virtual-network": {"network_policy_refs": []}}, CTX)
    api.delete("network-policy", p, CTX)
    assert t.sync() > 0
    assert "routing_instance_refs" not in api.db.objs[red_ri].refs
    # no policy left: the network's ACL goes too (TF: no policy, no ACL)
    assert api.db.lookup("access-control-list", [*PROJECT, "red", "red"]) is None
    # delete a network: its number is free at once, its route-target object goes at sync
    api.delete("virtual-network", blue, CTX)
    assert blue_ri not in rt_claims(api).values()
    assert check_store(api.db.store) == []
    assert t.sync() > 0
    assert blue_rt not in route_targets(api)
    assert t.sync() == 0
    assert check_store(api.db.store) == []


def test_four_byte_asn_reallocates_in_its_range(api: ConfigApi) -> None:
    t = Transformer(api, "t1")
    network(api, "red")
    t.sync()
    gsc = api.db.lookup("global-system-config", ["default-global-system-config"])
    assert gsc is not None
    api.update("global-system-config", gsc, {"global-system-config": {
        "autonomous_system": 4_200_000_000, "enable_4byte_as": True}}, CTX)
    assert t.sync() > 0
    assert all(8_000 <= n < 8_000 + 2**15 for n in rt_claims(api))
    ri = ri_of(api, [*PROJECT, "red"])
    assert targets_of(api, ri)[0].startswith("target:4200000000:")
    assert all(name.startswith("target:4200000000:") for name in route_targets(api))
    assert t.sync() == 0
    assert check_store(api.db.store) == []


def test_numbers_used_by_a_users_route_target_are_skipped(api: ConfigApi) -> None:
    create(api, "route-target", ["target:64512:8000000"])
    t = Transformer(api, "t1")
    t.sync()
    assert 8_000_000 not in rt_claims(api)
    assert "target:64512:8000000" in route_targets(api)  # the user's object stays


def test_two_transformers_never_hand_out_a_number_twice(store_url: str) -> None:
    a, b = ConfigApi(open_store(store_url)), ConfigApi(open_store(store_url))
    ta, tb = Transformer(a, "a"), Transformer(b, "b")
    for i in range(4):
        network(a, f"a{i}")
        network(b, f"b{i}")
        ta.sync()
        tb.sync()
    b.db.catch_up()
    owners = rt_claims(b)
    assert len(set(owners.values())) == len(owners)
    assert tb.sync() == 0 and ta.sync() == 0
    assert check_store(b.db.store) == []


def test_ports_do_not_wake_the_transformer(api: ConfigApi) -> None:
    t = Transformer(api, "t1")
    api.db.listeners.append(t._on_change)
    red = network(api, "red")
    t._dirty = False
    for i in range(5):
        create(api, "virtual-machine-interface", [*PROJECT, f"port{i}"],
               virtual_network_refs=[{"uuid": red}])
    assert not t._dirty
    network(api, "blue")
    assert t._dirty


def test_lease_pure(api: ConfigApi) -> None:
    store = api.db.store
    assert lease.acquire(store, "a", 5.0, now=100.0) == (True, lease.Lease("a", 105.0))
    held, current = lease.acquire(store, "b", 5.0, now=104.0)
    assert not held and current == lease.Lease("a", 105.0)
    assert lease.acquire(store, "a", 5.0, now=104.0)[0]  # renewal
    assert lease.acquire(store, "b", 5.0, now=109.5) == (True, lease.Lease("b", 114.5))
    lease.release(store, "a")  # not the holder: no effect
    assert lease.read_lease(store) == lease.Lease("b", 114.5)
    lease.release(store, "b")
    assert lease.read_lease(store) is None


def test_run_one_leader_and_handover(store_url: str) -> None:
    async def scenario() -> None:
        apis = [ConfigApi(open_store(store_url)) for _ in range(2)]
        ts = [Transformer(a, f"t{i}", lease_s=1.0) for i, a in enumerate(apis)]
        stops = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.ensure_future(t.run(s)) for t, s in zip(ts, stops, strict=True)]
        try:
            await until(lambda: any(t.leader for t in ts), "a leader")
            leader = next(i for i, t in enumerate(ts) if t.leader)
            other = 1 - leader
            assert not ts[other].leader
            assert lease.read_lease(apis[0].db.store).holder == f"t{leader}"  # type: ignore
            # the leader follows writes made through its own API at once
            network(apis[leader], "red")
            ri = ri_of(apis[leader], [*PROJECT, "red"])
            await until(lambda: bool(targets_of(apis[leader], ri)), "red's route target")
            # a clean stop hands the lease over; the new leader follows the store
            stops[leader].set()
            await tasks[leader]
            await until(lambda: ts[other].leader, "takeover")
            network(apis[leader], "blue")  # written by another process's API
            await until(lambda: bool(apis[other].db.lookup(
                "routing-instance", [*PROJECT, "blue", "blue"])), "blue seen")
            blue = ri_of(apis[other], [*PROJECT, "blue"])
            await until(lambda: bool(targets_of(apis[other], blue)), "blue's route target")
        finally:
            for s in stops:
                s.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert lease.read_lease(apis[0].db.store) is None

    asyncio.run(scenario())
