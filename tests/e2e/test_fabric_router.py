"""A logical router joins networks through its route target: once the transformer has run,
each network's routes are in the other's VRF and packets cross; removing the router isolates
them again."""

from __future__ import annotations

from typing import Any

from tests.e2e.fabric import (
    PROJECT,
    check_delivered,
    connected,
    eventually,
    has_route,
    ip,
    plug,
    run,
    transformed,
)
from tests.waits import until

RED = "default-domain:default-project:red"
BLUE = "default-domain:default-project:blue"


def test_logical_router_joins_two_networks(controller_factory: Any) -> None:
    ctl = controller_factory(args=["--hold-time", "1"])

    async def main() -> None:
        async with connected(ctl.url) as (api, fab):
            red = await api.network("red", "198.51.100.0/24")
            blue = await api.network("blue", "203.0.113.0/24")
            n1 = await fab.agent("n1", "198.19.0.1", [ctl.url])
            n2 = await fab.agent("n2", "198.19.0.2", [ctl.url])
            r1 = await plug(n1, "red", "r1")
            b1 = await plug(n2, "blue", "b1")
            b2 = await plug(n1, "blue", "b2")
            await until(lambda: has_route(n1, ip(b1)), "blue's routes on n1")
            res = n1.trace(r1["uuid"], ip(b1))
            assert res.verdict == "no_route", res

            # the router's interfaces: a port in each network (not plugged anywhere)
            ifs = [await api.create("virtual-machine-interface", [*PROJECT, f"lr-{n}"],
                                    "project", virtual_network_refs=[{"uuid": vn}])
                   for n, vn in (("red", red), ("blue", blue))]
            lr = await api.create("logical-router", [*PROJECT, "lr"], "project",
                                  virtual_machine_interface_refs=[{"uuid": u}
                                                                  for u in ifs])
            # the transformer gave the router a target, on both networks' instances
            async def lr_target() -> str | None:
                refs = (await api.read("logical-router", lr)).get("route_target_refs")
                return ":".join(refs[0]["to"]) if refs else None

            target = await eventually(lr_target, "the router's route target")
            for vn in ("red", "blue"):
                assert target in await transformed(api, [*PROJECT, vn])
            # routes of each network are visible in the other, on every node
            await until(lambda: {f"{ip(b1)}/32", f"{ip(b2)}/32"}
                        <= {r["prefix"] for r in n1.routes(RED)}, "blue in red on n1")
            await until(lambda: f"{ip(r1)}/32" in {r["prefix"] for r in n2.routes(BLUE)},
                        "red in blue on n2")
            check_delivered(n1, r1, b1, "tcp", 80)  # across nodes
            check_delivered(n1, r1, b2, "tcp", 80)  # on the same node
            check_delivered(n2, b1, r1)
            check_delivered(n1, b2, r1, "udp", 53)

            # the router goes: the networks are isolated again
            await api.delete("logical-router", lr)
            await until(lambda: {r["prefix"] for r in n1.routes(RED)} == {f"{ip(r1)}/32"},
                        "blue withdrawn from red")
            await until(lambda: f"{ip(r1)}/32" not in {r["prefix"]
                                                       for r in n2.routes(BLUE)},
                        "red withdrawn from blue")
            res = n1.trace(r1["uuid"], ip(b1))
            assert res.verdict == "no_route", res
            check_delivered(n1, b2, b1)

    run(main())
