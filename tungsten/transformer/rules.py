"""Building blocks of ACL rules (TF's AclRuleType shape), shared by policies and SGs (pure).

An ACL rule is ``{"match_condition": MatchConditionType, "action_list": ActionListType,
"rule_uuid": str, "direction": ">"}``.  Rules are always one-way (``>``): a ``<>`` policy rule
is expanded into its forward and its reversed rule, as TF's transformer does.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

ANY = "any"
ANY_ADDR: dict[str, Any] = {"virtual_network": ANY}
ANY_PORT: dict[str, Any] = {"start_port": -1, "end_port": -1}
ETHERTYPES = ("IPv4", "IPv6")
# IANA protocol numbers of the names TF accepts in rules; ACLs carry numbers, as in TF
PROTOCOL_IDS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "icmp6": 58, "sctp": 132}
# uuid5 namespace of the rules the transformer adds itself (implicit allow/deny)
IMPLICIT_NS = uuidlib.UUID("5e1f9a52-3d2b-4f7e-9c61-0b7e2a8d4c10")

Rule = dict[str, Any]


def protocol(value: Any, ethertype: str) -> str:
    """A rule's protocol as the ACL carries it: ``any`` or a decimal protocol number."""
    text = str(value if value is not None else ANY).strip().lower()
    if text in ("", ANY):
        return ANY
    if text.isdigit():
        return text
    if text == "icmp" and ethertype == "IPv6":
        return str(PROTOCOL_IDS["icmp6"])
    n = PROTOCOL_IDS.get(text)
    return str(n) if n is not None else text


def ports(values: Any) -> list[dict[str, Any]]:
    """A rule's port ranges; none given means any port."""
    out = [
        {"start_port": p.get("start_port", -1), "end_port": p.get("end_port", -1)}
        for p in (values or []) if isinstance(p, dict)
    ]
    return out or [dict(ANY_PORT)]


def acl_rule(src: dict[str, Any], sport: dict[str, Any], dst: dict[str, Any],
             dport: dict[str, Any], proto: str, ethertype: str, action: dict[str, Any],
             rule_uuid: str) -> Rule:
    return {
        "match_condition": {
            "protocol": proto,
            "src_address": src,
            "src_port": sport,
            "dst_address": dst,
            "dst_port": dport,
            "ethertype": ethertype,
        },
        "action_list": action,
        "rule_uuid": rule_uuid,
        "direction": ">",
    }


def implicit_uuid(owner: str, what: str) -> str:
    """A stable uuid for a rule the transformer adds (same owner and kind: same uuid)."""
    return str(uuidlib.uuid5(IMPLICIT_NS, f"{owner}/{what}"))


def entries(rules: list[Rule]) -> dict[str, Any]:
    """The AclEntriesType value of an ACL holding ``rules``."""
    return {"dynamic": False, "acl_rule": rules}
