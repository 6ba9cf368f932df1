"""A sim agent host (``host.py``) that also answers whether its agents hold a security rule.

Used by ``tungsten sim`` runs that time security changes (``SimPlan.security_change``): one
more command on top of ``host.py``'s,

    {"op": "security", "rule": UUID, "contains": TEXT | null}
        -> {"held": {node: bool}}  (for the agents whose state has any SG or firewall rule)

A rule is held when the agent's datapath state has a security-group rule (``rule_uuid``) or
a firewall rule (``uuid``) with that uuid, whose JSON contains ``TEXT`` if given (a changed
field of a rule that keeps its uuid).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from tungsten.agent.agent import Agent
from tungsten.sim.host import Host
from tungsten.sim.host import main as host_main


def _security_rules(state: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for group in (state.security_groups or {}).values():
        for direction in ("ingress", "egress"):
            for r in group.get(direction) or ():
                yield str(r.get("rule_uuid")), r
    for aps in (state.firewall or {}).values():
        for pol in aps.get("policies") or ():
            for r in pol.get("rules") or ():
                yield str(r.get("uuid")), r


def holds(agent: Agent, rule: str, contains: str | None) -> bool | None:
    """Whether the agent holds the rule (None: it has no security rule at all)."""
    cur = agent.datapath.current()
    if cur is None:
        return None
    rules = list(_security_rules(cur))
    if not rules:
        return None
    return any(u == rule and (contains is None or contains in json.dumps(r, default=str))
               for u, r in rules)


class SecurityHost(Host):
    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd.get("op") != "security":
            return await super().handle(cmd)
        rule, contains = str(cmd["rule"]), cmd.get("contains")
        held = {n: holds(a, rule, contains) for n, a in self.agents.items()}
        return {"held": {n: h for n, h in held.items() if h is not None}}


def main() -> None:
    host_main(SecurityHost, __doc__)


if __name__ == "__main__":
    main()
