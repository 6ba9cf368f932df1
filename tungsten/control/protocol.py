"""The agent <-> control-node protocol: message shapes shared by both sides.

One long-lived WebSocket per agent per control node, at ``GET /control/v1/stream`` on the
controller's HTTP listener.  Every message is one JSON text frame with a ``type``.

Agent -> control node
    hello       {"type": "hello", "node": NAME, "underlay_ip": IP,
                 "session": SESSION | null, "revision": N | null, "ports": [VMI uuid, ...]}
                first frame; ``session`` + ``revision`` ask to resume after a reconnect
    subscribe   {"type": "subscribe", "ports": [VMI uuid, ...]}    ports the node now has
    unsubscribe {"type": "unsubscribe", "ports": [VMI uuid, ...]}  ports it no longer has
    routes      {"type": "routes", "add": [Route, ...], "del": [route key, ...]}
                routes of ports that are really plugged (the agent originates only those)
    ack         {"type": "ack", "revision": N}                     lets the node trim its buffer

Control node -> agent
    snapshot    {"type": "snapshot", "session": SESSION, "revision": N, "view": View}
    delta       {"type": "delta", "revision": N, "upsert": {COLL: {ID: value}},
                 "remove": {COLL: [ID, ...]}}
    resumed     {"type": "resumed", "session": SESSION, "revision": N}
                the node kept the session: the deltas after the agent's revision follow
    error       {"type": "error", "message": TEXT}                 then the node closes

A View is a dict of collections, each a dict ID -> value; deltas upsert and remove entries by
ID, so applying a delta is the same operation for every collection.  Revisions count per
session, from 1, with no gaps: an agent that sees a gap asks for a snapshot (reconnects
without ``session``).  Collections (values are plain JSON, see the TypedDicts below):

    ports            VMI uuid     -> PortConfig      the node's subscribed ports
    networks         VN uuid      -> NetworkConfig   networks of those ports
    routes           route key    -> Route           every route those networks import
    security_groups  SG id (str)  -> SecurityGroupConfig   SGs of the node's ports
    firewall         APS uuid     -> PolicySetConfig  application-policy-sets that apply to
                                  the node's ports (by application tag, plus the defaults);
                                  left out while empty, ignored by agents that don't know it
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import orjson

STREAM_PATH = "/control/v1/stream"
COLLECTIONS = ("ports", "networks", "routes", "security_groups", "firewall")

HELLO = "hello"
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
ROUTES = "routes"
ACK = "ack"
SNAPSHOT = "snapshot"
DELTA = "delta"
RESUMED = "resumed"
ERROR = "error"

View = dict[str, dict[str, Any]]


class Route(TypedDict):
    ri: str  # routing instance (fq_name joined by ':') this route is in
    prefix: str  # "198.51.100.5/32" or "2001:db8::5/128"
    mac: str
    nexthop: str  # underlay IP of the node that hosts the port (the VXLAN VTEP)
    vni: int  # VNI to send with: the port's network id
    encap: str  # "vxlan"
    port: str  # VMI uuid
    node: str  # the originating node's name
    sgs: list[int]  # security group ids of the port
    tags: list[int]  # tag ids of the port
    # the source network's name (fq_name joined by ':'); unlike ``ri`` it stays the same when
    # the route is imported into another instance, so a node can name a leaked network
    network: NotRequired[str]


class PortConfig(TypedDict):
    uuid: str
    name: str  # fq_name joined by ':'
    network: str  # VN uuid
    mac: str
    ips: list[dict[str, Any]]  # {"address", "prefix_len", "family": "v4"|"v6"}
    sgs: list[int]  # security group ids
    tags: list[int]
    enabled: bool


class NetworkConfig(TypedDict):
    uuid: str
    name: str  # fq_name joined by ':'
    vni: int  # virtual_network_network_id
    ri: str  # primary routing instance, fq_name joined by ':'
    subnets: list[dict[str, Any]]  # {"prefix": "a.b.c.d/n", "gateway", "dns", "subnet_uuid"}
    acl: list[dict[str, Any]]  # ACL rules (the transformer's entries for this network)


class SecurityGroupConfig(TypedDict):
    uuid: str
    id: int
    ingress: list[dict[str, Any]]
    egress: list[dict[str, Any]]


class FirewallPolicyConfig(TypedDict):
    uuid: str
    name: str  # fq_name joined by ':'
    sequence: str  # from the set -> policy ref
    # firewall rules in sequence order: {"uuid", "name", "sequence", "action_list",
    # "direction", "service" | "service_groups", "endpoint_1", "endpoint_2", "match_tag_types"}
    rules: list[dict[str, Any]]


class PolicySetConfig(TypedDict):
    """An application-policy-set with its firewall policies and rules resolved."""

    uuid: str
    name: str  # fq_name joined by ':'
    application_tag: int | None  # tag id of the application it applies to
    all_applications: bool  # a default set: applies to every port, after the others
    policies: list[FirewallPolicyConfig]  # in sequence order


def route_key(route: Route) -> str:
    """Identity of a route: one per (instance, prefix, origin node, port)."""
    return f"{route['ri']}|{route['prefix']}|{route['nexthop']}|{route['port']}"


def encode(msg: dict[str, Any]) -> str:
    return orjson.dumps(msg).decode()


def decode(text: str | bytes) -> dict[str, Any]:
    msg = orjson.loads(text)
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ValueError("a protocol message is a JSON object with a string 'type'")
    return msg


def apply_delta(view: View, delta: dict[str, Any]) -> None:
    """Apply a delta message to a view in place."""
    for coll, entries in (delta.get("upsert") or {}).items():
        view.setdefault(coll, {}).update(entries)
    for coll, ids in (delta.get("remove") or {}).items():
        target = view.get(coll)
        if target is not None:
            for i in ids:
                target.pop(i, None)


def diff_views(old: View, new: View) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """(upsert, remove) that turn ``old`` into ``new``."""
    upsert: dict[str, dict[str, Any]] = {}
    remove: dict[str, list[str]] = {}
    for coll in set(old) | set(new):
        before, after = old.get(coll, {}), new.get(coll, {})
        changed = {k: v for k, v in after.items() if before.get(k) != v}
        gone = [k for k in before if k not in after]
        if changed:
            upsert[coll] = changed
        if gone:
            remove[coll] = gone
    return upsert, remove
