"""Isolation by default: networks without a policy never see each other's routes, and two
projects may use the same subnet without ever reaching each other's ports."""

from __future__ import annotations

from typing import Any

from tests.e2e.fabric import (
    PROJECT,
    Api,
    check_delivered,
    connected,
    has_route,
    ip,
    plug,
    run,
    transformed,
)
from tests.waits import until

SUBNET = "198.51.100.0/24"


def test_same_network_reaches_across_nodes_other_networks_do_not(
        controller_factory: Any) -> None:
    ctl = controller_factory(args=["--hold-time", "1"])

    async def main() -> None:
        async with connected(ctl.url) as (api, fab):
            await api.network("red", "198.51.100.0/24")
            await api.network("blue", "203.0.113.0/24")
            n1 = await fab.agent("n1", "198.19.0.1", [ctl.url])
            n2 = await fab.agent("n2", "198.19.0.2", [ctl.url])
            r1 = await plug(n1, "red", "r1")
            r2 = await plug(n2, "red", "r2")
            b1 = await plug(n1, "blue", "b1")
            b2 = await plug(n2, "blue", "b2")
            await until(lambda: has_route(n1, ip(r2)) and has_route(n2, ip(r1))
                        and has_route(n1, ip(b2)) and has_route(n2, ip(b1)),
                        "routes of each network on both nodes")
            check_delivered(n1, r1, r2, "tcp", 80)
            check_delivered(n2, r2, r1)
            check_delivered(n1, b1, b2, "udp", 53)
            # once the transformer has given both networks their targets: still isolated
            rts = [await transformed(api, [*PROJECT, vn]) for vn in ("red", "blue")]
            assert not set(rts[0]) & set(rts[1])
            assert all(not a["acl"] for a in n1.acls())  # no policy: no ACL (TF)
            check_delivered(n1, r1, r2, "tcp", 80)
            # across networks: no route, on the same node and across nodes
            for agent, src, dst in ((n1, r1, b1), (n1, r1, b2), (n2, b2, r1)):
                res = agent.trace(src["uuid"], ip(dst), proto_="tcp", dport=80)
                assert res.verdict == "no_route", res
            # each VRF holds only its own network's routes
            red = {r["prefix"] for r in n1.routes("default-domain:default-project:red")}
            assert red == {f"{ip(r1)}/32", f"{ip(r2)}/32"}

    run(main())


def test_overlapping_subnets_in_two_projects(controller_factory: Any) -> None:
    ctl = controller_factory(args=["--hold-time", "1"])

    async def twin(api: Api, agent: Any, project: list[str], vn: str, name: str,
                   address: str) -> dict[str, Any]:
        """A port in ``project``'s network with exactly ``address`` (the twin of another)."""
        vmi = await api.create("virtual-machine-interface", [*project, name], "project",
                               virtual_network_refs=[{"uuid": vn}])
        await api.create("instance-ip", [f"{name}-ip"], instance_ip_address=address,
                         virtual_network_refs=[{"uuid": vn}],
                         virtual_machine_interface_refs=[{"uuid": vmi}])
        port: dict[str, Any] = await agent.add_port(vmi, wait=30)
        assert port["plugged"] and port["ips"] == [address], port
        return port

    async def main() -> None:
        async with connected(ctl.url) as (api, fab):
            alpha = await api.project("alpha")
            beta = await api.project("beta")
            await api.network("web", SUBNET, alpha)
            vn_b = await api.network("web", SUBNET, beta)
            n1 = await fab.agent("n1", "198.19.0.1", [ctl.url])
            n2 = await fab.agent("n2", "198.19.0.2", [ctl.url])
            a1 = await plug(n1, "default-domain:alpha:web", "a1", alpha)
            a2 = await plug(n2, "default-domain:alpha:web", "a2", alpha)
            b1 = await twin(api, n1, beta, vn_b, "b1", ip(a1))
            b2 = await twin(api, n2, beta, vn_b, "b2", ip(a2))
            assert a1["vni"] != b1["vni"]
            await until(lambda: n1.converged_routes() == 4 == n2.converged_routes(),
                        "two routes per VRF on both nodes")
            # the twin's address is the own network's port, from either side, any proto
            for agent, src, dst in ((n1, a1, a2), (n1, b1, b2), (n2, a2, a1),
                                    (n2, b2, b1)):
                for proto, dport in (("icmp", 0), ("tcp", 443), ("udp", 53)):
                    check_delivered(agent, src, dst, proto, dport)
            # once the transformer has run, still the same
            await transformed(api, [*alpha, "web"])
            await transformed(api, [*beta, "web"])
            for agent, src, dst in ((n1, a1, a2), (n1, b1, b2), (n2, a2, a1),
                                    (n2, b2, b1)):
                check_delivered(agent, src, dst, "tcp", 22)
            # a twin whose own network has nothing at that address: no route, never the
            # other project's port
            await n2.delete_port(b2["uuid"])
            await until(lambda: n1.converged_routes() == 3, "b2's route withdrawn")
            res = n1.trace(b1["uuid"], ip(a2))
            assert res.verdict == "no_route", res
            check_delivered(n1, a1, a2)

    run(main())
