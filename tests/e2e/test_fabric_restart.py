"""The controller restarts under running agents: headless forwarding during the outage, the
same routes after it (none twice), and a restarted transformer that duplicates nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import ClientSession

from tests.e2e.fabric import (
    PROJECT,
    Api,
    Fabric,
    assert_no_duplicates,
    check_delivered,
    connected,
    eventually,
    holds_lease,
    ip,
    plug,
    policy_refs,
    route_table,
    routes_removed,
    run,
    transformed,
)
from tests.waits import until
from tungsten.api.fsck import check_store
from tungsten.store import open_store


def test_control_node_restart_keeps_forwarding_and_resyncs(controller_factory: Any) -> None:
    ctl = controller_factory(args=["--hold-time", "1"])

    async def main() -> None:
        async with ClientSession() as http:
            api = Api(http, ctl.url)
            await api.network("red", "198.51.100.0/24")
            await api.network("blue", "203.0.113.0/24")
            fab = Fabric(http)
            try:
                nodes = [await fab.agent(f"n{i}", f"198.19.0.{i}", [ctl.url])
                         for i in (1, 2, 3)]
                red = [await plug(n, "red", f"r{i}") for i, n in enumerate(nodes, 1)]
                blue = [await plug(n, "blue", f"b{i}") for i, n in enumerate(nodes[:2], 1)]
                await until(lambda: all(n.converged_routes() == c for n, c in
                                        zip(nodes, (5, 5, 3), strict=True)),
                            "every route on every node")
                await transformed(api, [*PROJECT, "red"])
                tables = [route_table(n) for n in nodes]
                removed = [routes_removed(n) for n in nodes]

                # the controller goes away: every agent is headless and keeps forwarding
                await asyncio.to_thread(ctl.stop)
                await until(lambda: all(n.headless for n in nodes), "agents headless")
                assert [route_table(n) for n in nodes] == tables
                check_delivered(nodes[0], red[0], red[2], "tcp", 80)
                check_delivered(nodes[2], red[2], red[1])
                check_delivered(nodes[1], blue[1], blue[0], "udp", 53)
                res = nodes[0].trace(red[0]["uuid"], ip(blue[1]))
                assert res.verdict == "no_route", res  # still isolated

                # it comes back on the same store: the agents resync to the same routes
                await asyncio.to_thread(ctl.start)
                await until(lambda: not any(n.headless for n in nodes), "sessions back")
                await until(lambda: [route_table(n) for n in nodes] == tables,
                            "the same routes as before the restart")
                for n in nodes:
                    assert_no_duplicates(n)
                # and nothing flapped on the way: while the control node relearnt the routes
                # other agents re-announce, every agent kept the stale ones
                assert [routes_removed(n) for n in nodes] == removed
                check_delivered(nodes[0], red[0], red[2], "tcp", 80)
                check_delivered(nodes[1], blue[1], blue[0], "udp", 53)
                # the control node holds each route once
                async with http.get(ctl.url + "/control/v1/status") as r:
                    status = await r.json()
                assert status["routes"] == 5 and status["agents"] == 3, status
                # and it serves changes again: a new port converges everywhere
                late = await plug(nodes[2], "red", "r3b")
                await until(lambda: all(f"{ip(late)}/32" in {x["prefix"] for x in n.routes()}
                                        for n in nodes), "the new port's route everywhere")
                check_delivered(nodes[0], red[0], late)
            finally:
                await fab.close()

    run(main())


WANT_ACLS = {":".join([*PROJECT, *rest]) for rest in (
    ("app", "app"), ("db", "db"), ("ssh", "ingress-access-control-list"),
    ("ssh", "egress-access-control-list"))}


def test_transformer_restart_duplicates_nothing(controller_factory: Any) -> None:
    ctl = controller_factory(args=["--hold-time", "1"])

    async def derived(api: Api) -> dict[str, Any]:
        """Everything the transformer owns, by fq_name (with uuids and contents)."""
        rts = await api.objects("route-target")
        acls = await api.objects("access-control-list")
        ris = [await api.read("routing-instance", await api.fq_to_id(
            "routing-instance", [*PROJECT, vn, vn])) for vn in ("app", "db", "lone")]
        lr = await api.read("logical-router", await api.fq_to_id(
            "logical-router", [*PROJECT, "lr"]))
        return {
            "route-targets": sorted((":".join(x["fq_name"]), x["uuid"]) for x in rts),
            "acls": sorted((":".join(x["fq_name"]), x["uuid"],
                            repr(x.get("access_control_list_entries"))) for x in acls),
            "ri-refs": [(ri["uuid"], sorted(":".join(r["to"]) for r in
                                            ri.get("route_target_refs") or []),
                         sorted(r["uuid"] for r in ri.get("routing_instance_refs") or []))
                        for ri in ris],
            "lr-refs": sorted(":".join(r["to"]) for r in lr.get("route_target_refs") or []),
        }

    async def main() -> None:
        async with connected(ctl.url) as (api, fab):
            pol = await api.create("network-policy", [*PROJECT, "app-db"], "project",
                                   network_policy_entries={"policy_rule": [{
                                       "direction": ">", "protocol": "tcp",
                                       "src_addresses": [{"virtual_network": "app"}],
                                       "dst_addresses": [{"virtual_network": "db"}],
                                       "dst_ports": [{"start_port": 5432,
                                                      "end_port": 5432}],
                                       "action_list": {"simple_action": "pass"}}]})
            await api.network("app", "198.51.100.0/24", policies=[pol])
            db = await api.network("db", "203.0.113.0/24")
            await api.update("virtual-network", db, network_policy_refs=policy_refs([pol]))
            lone = await api.network("lone", "192.0.2.0/24")
            await api.create("security-group", [*PROJECT, "ssh"], "project",
                             security_group_entries={"policy_rule": [{
                                 "direction": ">", "protocol": "tcp", "ethertype": "IPv4",
                                 "src_addresses": [{"subnet": {"ip_prefix": "198.18.0.0",
                                                               "ip_prefix_len": 15}}],
                                 "dst_addresses": [{"security_group": "local"}],
                                 "dst_ports": [{"start_port": 22, "end_port": 22}]}]})
            lr_port = await api.create("virtual-machine-interface", [*PROJECT, "lr-lone"],
                                       "project", virtual_network_refs=[{"uuid": lone}])
            await api.create("logical-router", [*PROJECT, "lr"], "project",
                             virtual_machine_interface_refs=[{"uuid": lr_port}])
            n1 = await fab.agent("n1", "198.19.0.1", [ctl.url])
            n2 = await fab.agent("n2", "198.19.0.2", [ctl.url])
            a1 = await plug(n1, "app", "a1")
            d1 = await plug(n2, "db", "d1")

            async def settled() -> dict[str, Any] | None:
                """The derived state once complete (and unchanged over one look)."""
                first = await derived(api)
                acls = {n for n, _, _ in first["acls"]}
                complete = (acls >= WANT_ACLS and first["lr-refs"]
                            and all(rts for _, rts, _ in first["ri-refs"])
                            and all(peers for _, _, peers in first["ri-refs"][:2]))
                if not complete:
                    return None
                await asyncio.sleep(0.5)
                second = await derived(api)
                return first if second == first else None

            before = await eventually(settled, "the derived config")
            await until(lambda: f"{ip(d1)}/32" in {r["prefix"] for r in n1.routes()},
                        "db leaked into app")
            check_delivered(n1, a1, d1, "tcp", 5432)
            res = n1.trace(a1["uuid"], ip(d1), proto_="tcp", dport=22)
            assert res.verdict == "dropped", res

            # restart the controller (and its transformer) twice
            for _ in range(2):
                await asyncio.to_thread(ctl.restart)
                await until(lambda: not (n1.headless or n2.headless), "sessions back")
                # the new transformer has the lease (and syncs at once), then compare
                await until(lambda: holds_lease(ctl), "the new transformer's lease")
                after = await eventually(settled, "the derived config after a restart")
                assert after == before
                names = [n for n, _ in after["route-targets"]]
                assert len(names) == len(set(names))
                used = {t for _, rts, _ in after["ri-refs"] for t in rts}
                assert used | set(after["lr-refs"]) <= set(names)
                assert len(used) == 4  # one per network, plus the router's on lone
                numbers = [n.rsplit(":", 1)[1] for n in names]
                assert len(numbers) == len(set(numbers))
                acl_names = [n for n, _, _ in after["acls"]]
                assert len(acl_names) == len(set(acl_names))
            await until(lambda: f"{ip(d1)}/32" in {r["prefix"] for r in n1.routes()},
                        "db still leaked into app")
            check_delivered(n1, a1, d1, "tcp", 5432)
            res = n2.trace(d1["uuid"], ip(a1), proto_="tcp", dport=5432)
            assert res.verdict == "dropped", res  # the rule is one way
        await asyncio.to_thread(ctl.stop)
        store = open_store(ctl.store_url)
        try:
            assert check_store(store) == []
        finally:
            store.close()

    run(main())
