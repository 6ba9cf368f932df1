"""Security groups: the rules of their ingress and egress ACLs (pure; reference §2.3).

A rule whose destination is ``local`` (this group) is an ingress rule: its source is the
remote end.  One whose source is ``local`` is an egress rule: its destination is the remote
end.  In the ACL the remote end is an address (a subnet, ``any``, or another group given by
its numeric ``security_group_id``, which is what the agents match against the ids carried by
routes); the local end is ``any``, because an SG ACL applies to the traffic of its own ports.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import product
from typing import Any

from tungsten.api.objdb import Obj
from tungsten.transformer import rules as R
from tungsten.transformer.policy import qualify


def _is_local(addr: Any) -> bool:
    return isinstance(addr, dict) and addr.get("security_group") == "local"


def _remote(addr: Any, sg: Obj, sg_by_name: Mapping[str, Obj]) -> dict[str, Any] | None:
    """The ACL address of a rule's remote end; None when it names a group that is gone."""
    if not isinstance(addr, dict):
        return dict(R.ANY_ADDR)
    group = addr.get("security_group")
    if group:
        target = sg if group == "local" else sg_by_name.get(qualify(str(group), sg))
        if target is None or target.props.get("security_group_id") is None:
            return None
        return {"security_group": str(target.props["security_group_id"])}
    kept = {k: addr[k] for k in ("subnet", "subnet_list") if addr.get(k)}
    if kept:
        return kept
    vn = addr.get("virtual_network")
    return {"virtual_network": str(vn)} if vn else dict(R.ANY_ADDR)


def sg_rules(sg: Obj, sg_by_name: Mapping[str, Obj]) -> tuple[list[R.Rule], list[R.Rule]]:
    """(ingress rules, egress rules) of a security group, in the order of its rules."""
    ingress: list[R.Rule] = []
    egress: list[R.Rule] = []
    for rule in (sg.props.get("security_group_entries") or {}).get("policy_rule") or []:
        if not isinstance(rule, dict):
            continue
        ethertype = rule.get("ethertype") or "IPv4"
        proto = R.protocol(rule.get("protocol"), ethertype)
        rid = str(rule.get("rule_uuid") or "")
        sports, dports = R.ports(rule.get("src_ports")), R.ports(rule.get("dst_ports"))
        for sa, da in product(rule.get("src_addresses") or [{}],
                              rule.get("dst_addresses") or [{}]):
            if _is_local(da):
                out, remote = ingress, _remote(sa, sg, sg_by_name)
            elif _is_local(sa):
                out, remote = egress, _remote(da, sg, sg_by_name)
            else:
                continue
            if remote is None:
                continue
            for sp, dp in product(sports, dports):
                src, dst = (remote, dict(R.ANY_ADDR)) if out is ingress else (
                    dict(R.ANY_ADDR), remote)
                out.append(R.acl_rule(src, sp, dst, dp, proto, ethertype,
                                      {"simple_action": "pass"}, rid))
    return ingress, egress
