"""The ``log`` action on the kernel: flows decided by a logged rule are recorded.

A rule whose ``action_list.log`` is set (a network-policy ACL rule or a firewall rule) gets,
before its verdict:

- ``counter``: how many packets the rule decided (a denied flow is visible here);
- ``log group 7 prefix "tgflow <rule uuid> <pass|deny> "``: the packet goes to nflog group 7,
  where a listener can record denied attempts too (without a listener it costs nothing);
- for ``pass``: ``ct mark set <mark of the rule>``, so the flow's conntrack entry carries the
  rule: conntrack events and listings (``conntrack -E`` / ``-L``) record the admitted flow
  with the rule that decided it.

The mark of a rule is ``0x40000000 | crc32(uuid) & 0x3fffffff`` (bit 30 says "logged by
tungsten").  ``tungsten flows`` lists the node's logged flows: the decisions and flow ends the
agent's recorder took from nflog group 7 and conntrack events (``tungsten.agent.flowrecorder``),
the conntrack entries with such a mark now, and every logged rule with its counter, the rule
uuid read back from the table's own log prefixes.  ``rules``/``flows``/``parse_prefix``/
``catalog`` are pure; ``read`` lists the table (libnftables, ``acl.Nft``) and the conntrack
entries (``ctnetlink``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tungsten.datapath.base import DatapathState
from tungsten.datapath.linux.ctnetlink import Flow
from tungsten.datapath.linux.reeval import Conntrack

LOG_GROUP = 7
LOG_PREFIX = "tgflow"
MARK_BIT = 0x40000000
Json = dict[str, Any]


def rule_mark(uuid: str) -> int:
    return MARK_BIT | (zlib.crc32(uuid.encode()) & (MARK_BIT - 1))


def log_statements(rule_uuid: str, action: str) -> list[Json]:
    """What a logged rule does before its verdict."""
    out: list[Json] = [{"counter": None},
                       {"log": {"prefix": f"{LOG_PREFIX} {rule_uuid} {action} "[:127],
                                "group": LOG_GROUP}}]
    if action != "deny":
        out.append({"mangle": {"key": {"ct": {"key": "mark"}}, "value": rule_mark(rule_uuid)}})
    return out


@dataclass(frozen=True)
class LoggedRule:
    uuid: str
    action: str  # "pass" | "deny"
    mark: int
    packets: int  # over every nft rule it became (families, directions, ports)
    chains: tuple[str, ...]


@dataclass(frozen=True)
class LoggedFlow:
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    zone: int
    mark: int
    rule: str | None  # the rule uuid that admitted it (None: a mark of no current rule)


def rules(listing: Iterable[Mapping[str, Any]]) -> list[LoggedRule]:
    """Logged rules from ``nft -j list table`` objects (our log prefix names the rule), one
    per rule uuid and action."""
    found: dict[tuple[str, str], tuple[int, list[str]]] = {}
    for obj in listing:
        r = obj.get("rule")
        if not isinstance(r, dict):
            continue
        prefix, packets = None, 0
        for e in r.get("expr") or ():
            if "log" in e and str(e["log"].get("prefix", "")).startswith(LOG_PREFIX + " "):
                prefix = str(e["log"]["prefix"])
            if "counter" in e and isinstance(e["counter"], dict):
                packets = int(e["counter"].get("packets", 0))
        parsed = parse_prefix(prefix) if prefix is not None else None
        if parsed is None:
            continue
        total, chains = found.get(parsed, (0, []))
        chain = str(r.get("chain"))
        found[parsed] = (total + packets, chains if chain in chains else [*chains, chain])
    return [LoggedRule(u, a, rule_mark(u), n, tuple(c)) for (u, a), (n, c) in found.items()]


def flows(entries: Iterable[Flow], logged: Iterable[LoggedRule]) -> list[LoggedFlow]:
    """The conntrack entries admitted by a logged rule, with that rule."""
    by_mark = {r.mark: r.uuid for r in logged}
    return [LoggedFlow(f.proto, f.src, f.dst, f.sport, f.dport, f.zone, f.mark,
                       by_mark.get(f.mark))
            for f in entries if f.mark & MARK_BIT]


def parse_prefix(prefix: str) -> tuple[str, str] | None:
    """(rule uuid, action) from a log prefix we wrote (None: not ours)."""
    parts = prefix.split()
    if len(parts) < 3 or parts[0] != LOG_PREFIX or parts[2] not in ("pass", "deny"):
        return None
    return parts[1], parts[2]


def catalog(state: DatapathState | None) -> dict[str, Json]:
    """The logged rules of a state, by the uuid their log prefix carries: where each lives
    (a network's ACL, or a firewall policy of a policy set) and its name."""
    out: dict[str, Json] = {}
    if state is None:
        return out
    for vrf in state.vrfs.values():
        for rule in vrf.acl:
            al = rule.get("action_list") or {}
            uid = str(rule.get("rule_uuid") or "")
            if al.get("log") and uid:
                out.setdefault(uid, {"kind": "acl", "network": vrf.name,
                                     "action": str(al.get("simple_action") or "pass")})
    for aps in state.firewall.values():
        for pol in aps.get("policies") or ():
            for rule in pol.get("rules") or ():
                al = rule.get("action_list") or {}
                uid = str(rule.get("uuid") or rule.get("name") or "")
                if al.get("log") and uid:
                    out.setdefault(uid, {"kind": "firewall", "policy_set": aps.get("name"),
                                         "policy": pol.get("name"), "name": rule.get("name"),
                                         "action": str(al.get("simple_action") or "pass")})
    return out


def policy_names(listing: Mapping[str, Any]) -> dict[str, str]:
    """Rule uuid -> the network policy holding it (its fq_name joined by ``:``), from the
    config API's ``GET /network-policys?detail=true``.  The ACL an agent receives carries
    only rule uuids (the transformer keeps the policy rule's own), so a reader of the flow
    log asks the API which policy a logged ACL rule came from."""
    out: dict[str, str] = {}
    for entry in listing.get("network-policys") or ():
        pol = entry.get("network-policy") if isinstance(entry, Mapping) else None
        if not isinstance(pol, Mapping):
            continue
        name = ":".join(str(x) for x in pol.get("fq_name") or ())
        for rule in (pol.get("network_policy_entries") or {}).get("policy_rule") or ():
            if isinstance(rule, Mapping) and rule.get("rule_uuid"):
                out.setdefault(str(rule["rule_uuid"]), name)
    return out


def read(netns: str | None, table: str = "tungsten") -> dict[str, Any]:
    """The logged rules and flows of a node (its network namespace; None: this one)."""
    from tungsten.datapath.linux.acl import Nft  # acl imports this module

    nft = Nft(netns, table)
    try:
        listing = nft.listing()
    finally:
        nft.close()
    logged = rules(listing)
    return {"rules": [asdict(x) for x in logged],
            "flows": [asdict(x) for x in flows(Conntrack(netns).flows(), logged)]}
