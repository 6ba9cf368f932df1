"""Property-based fuzzing of the live VNC API, with strategies built from the OpenAPI document.

Bodies are valid-shaped most of the time (so the server's hooks really run) and wrong in
places: values of the wrong type, unknown fields, nulls, huge strings, deep nesting, wrong
wrappers and bytes that are not JSON.  The oracle is the protocol's error contract: never a
5xx, every error a 4xx with a plain-text message, every success a 200.  Afterwards the store
must pass fsck and a restarted controller must serve it.
"""

from __future__ import annotations

import json
import os
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Controller, free_port
from tungsten.model.schema import ResourceType, load_schema

SCHEMA = load_schema()
TYPES = sorted(SCHEMA.types)
# Types with server-side hooks get drawn more often: that is where the bugs live; the core
# ones (addresses, ids, rules) most often.
CORE = ["virtual-network", "instance-ip", "virtual-machine-interface", "floating-ip",
        "network-ipam", "security-group", "firewall-rule", "tag"]
HOOKED = ["virtual-network", "virtual-machine-interface", "instance-ip", "floating-ip",
          "alias-ip", "security-group", "network-policy", "tag", "tag-type", "firewall-rule",
          "global-system-config", "bgp-router", "network-ipam", "service-template",
          "logical-router", "routing-instance", "project", "floating-ip-pool",
          "alias-ip-pool", "firewall-policy", "application-policy-set"]

# FUZZ_SCALE=10 runs ten times the examples (a deeper local or nightly run); CI uses 1.
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much, HealthCheck.large_base_example],
)

INTERESTING_STRINGS = [
    "", " ", "192.0.2.0", "192.0.2.1", "192.0.2.255", "198.51.100.7", "203.0.113.0/24",
    "198.18.0.0", "2001:db8::1", "2001:db8::", "0.0.0.0", "255.255.255.255", "::", "::ffff",
    "not-an-ip", "192.0.2.0/33", "300.1.1.1", "tenant", "infra", "0x0001", "0xffff", "0xzz",
    "02:00:5e:00:53:01", "zz:zz", "default-domain", "default-project", "ingress", "egress",
    "both", "any", "tcp", "udp", "icmp", "6", "17", "pass", "deny", "label=a", "label",
    "application=web", "site", "*", "-1", "0", "65536", "99999999999999999999", "true",
    "None", "null", "<>", ">", "<", "a:b", "a" * 300, "\u00e9\u4e2d\U0001f600", "\x00\x01",
    "target:64512:8000001", "target:1:1", "flat-subnet", "user-defined-subnet",
    "dhcp", "static", "v4", "v6", "ADD", "DELETE", "local", "global",
]
DOC_ADDRESSES = ["192.0.2.", "198.51.100.", "203.0.113."]


# ----------------------------------------------------------------------------------------------
# the live controller and what it holds
@dataclass
class Live:
    ctl: Controller
    http: requests.Session
    doc: dict[str, Any]
    # type -> uuid -> fq_name of objects known to exist (stale entries only cost a 404)
    pool: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    # (method, first path segment, status): shows how deep the fuzzing got (print with -s)
    outcomes: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # error messages, cut short

    def call(self, method: str, path: str, *, body: Any = None, raw: bytes | None = None,
             params: dict[str, str] | None = None) -> requests.Response:
        data = raw
        if raw is None and body is not None:
            data = json.dumps(body).encode()
        resp = self.http.request(method, self.ctl.url + path, data=data, params=params,
                                 headers={"Content-Type": 'application/json; charset="UTF-8"'},
                                 timeout=30)
        self.statuses[resp.status_code] += 1
        self.outcomes[(method, path.split("/")[1][:40], resp.status_code)] += 1
        what = f"{method} {path} params={params!r} body={(data or b'')[:800]!r}"
        assert resp.status_code < 500, f"{what} -> {resp.status_code}: {resp.text[:2000]}"
        if resp.status_code == 200:
            if resp.content and resp.headers.get("Content-Type", "").startswith(
                    "application/json"):
                resp.json()
        else:
            assert 400 <= resp.status_code < 500, f"{what} -> {resp.status_code}"
            ctype = resp.headers.get("Content-Type", "")
            assert ctype.startswith("text/plain"), f"{what} -> {resp.status_code} {ctype}"
            assert resp.text.strip(), f"{what} -> {resp.status_code} with an empty body"
            self.errors[f"{method} {path.split('/')[1][:30]} {resp.status_code} "
                        f"{resp.text[:60]}"] += 1
        return resp

    def refresh(self) -> None:
        self.pool = {}
        for rt in SCHEMA.types.values():
            listed = self.call("GET", f"/{rt.plural}").json()[rt.plural]
            self.pool[rt.name] = {e["uuid"]: e["fq_name"] for e in listed}

    def remember(self, rtype: str, resp: requests.Response) -> None:
        if resp.status_code == 200:
            obj = resp.json()[rtype]
            self.pool.setdefault(rtype, {})[obj["uuid"]] = obj["fq_name"]

    def create(self, rtype: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.call("POST", f"/{rtype}s", body={rtype: body})
        assert resp.status_code == 200, resp.text
        self.remember(rtype, resp)
        return dict(resp.json()[rtype])


def seed(live: Live) -> None:
    """A small world for refs and hooks to bite on (documentation addresses only)."""
    dp = ["default-domain", "default-project"]
    proj = live.create("project", {"fq_name": ["default-domain", "fuzz"],
                                   "parent_type": "domain"})
    pf = proj["fq_name"]
    ipam = ["default-domain", "default-project", "default-network-ipam"]
    subnets = {"ipam_subnets": [
        {"subnet": {"ip_prefix": "192.0.2.0", "ip_prefix_len": 24}},
        {"subnet": {"ip_prefix": "2001:db8::", "ip_prefix_len": 64}}]}
    vn = live.create("virtual-network", {
        "fq_name": [*pf, "vn1"], "parent_type": "project",
        "network_ipam_refs": [{"to": ipam, "attr": subnets}]})
    live.create("virtual-network", {
        "fq_name": [*dp, "vn2"], "parent_type": "project",
        "network_ipam_refs": [{"to": ipam, "attr": {"ipam_subnets": [
            {"subnet": {"ip_prefix": "198.51.100.0", "ip_prefix_len": 28}}]}}]})
    vmi = live.create("virtual-machine-interface", {
        "fq_name": [*pf, "port1"], "parent_type": "project",
        "virtual_network_refs": [{"uuid": vn["uuid"]}]})
    live.create("instance-ip", {
        "fq_name": ["iip1"], "virtual_network_refs": [{"uuid": vn["uuid"]}],
        "virtual_machine_interface_refs": [{"uuid": vmi["uuid"]}]})
    pool = live.create("floating-ip-pool", {"fq_name": [*vn["fq_name"], "fip-pool"],
                                            "parent_type": "virtual-network"})
    live.create("floating-ip", {"fq_name": [*pool["fq_name"], "fip1"],
                                "parent_type": "floating-ip-pool",
                                "project_refs": [{"uuid": proj["uuid"]}]})
    live.create("alias-ip-pool", {"fq_name": [*vn["fq_name"], "aip-pool"],
                                  "parent_type": "virtual-network"})
    for tag in ({"fq_name": ["label=blue"], "tag_type_name": "label", "tag_value": "blue"},
                {"fq_name": [*pf, "application=web"], "parent_type": "project",
                 "tag_type_name": "application", "tag_value": "web"}):
        live.create("tag", tag)
    live.create("security-group", {"fq_name": [*pf, "sg1"], "parent_type": "project"})
    live.create("network-policy", {"fq_name": [*pf, "np1"], "parent_type": "project"})
    live.create("firewall-policy", {"fq_name": [*pf, "fwp1"], "parent_type": "project"})
    live.create("logical-router", {"fq_name": [*pf, "lr1"], "parent_type": "project"})
    live.call("POST", "/useragent-kv", body={"operation": "STORE", "key": "k1", "value": "v"})
    live.refresh()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    ctl = Controller(f"sqlite:///{tmp / 'config.db'}", free_port(),
                     log_path=tmp / "controller.log")
    ctl.start()
    http = requests.Session()
    try:
        doc = http.get(ctl.url + "/openapi.json", timeout=30).json()
        lv = Live(ctl, http, doc)
        lv.refresh()
        seed(lv)
        yield lv
    finally:
        http.close()
        ctl.stop()


# ----------------------------------------------------------------------------------------------
# strategies built from the OpenAPI document
def any_json(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=12), st.sampled_from(INTERESTING_STRINGS))
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.text(max_size=8), inner, max_size=3),
        max_leaves=max_leaves)


def text_values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=16),
        st.sampled_from(INTERESTING_STRINGS),
        st.builds(lambda p, n: f"{p}{n}", st.sampled_from(DOC_ADDRESSES),
                  st.integers(0, 255)),
        st.uuids().map(str),
    )


def deep(depth: int, leaf: Any = 1) -> Any:
    out: Any = leaf
    for i in range(depth):
        out = [out] if i % 2 else {"x": out}
    return out


WEIRD_VALUES: st.SearchStrategy[Any] = st.one_of(
    any_json(),
    st.sampled_from([None, [], {}, "", 0, -1, True, 1.5, 2**63, -(2**63) - 1, 2**64 + 1,
                     [None], {"": None}, "x" * 70_000]),
    st.integers(1, 400).map(deep),
)


class Builder:
    """Strategies for values of the document's component schemas."""

    MAX_DEPTH = 4

    def __init__(self, doc: dict[str, Any], wrong: int) -> None:
        self.components: dict[str, Any] = doc["components"]["schemas"]
        self.wrong = wrong  # in 100: how often a value is replaced by a weird one
        self._cache: dict[tuple[str, int], st.SearchStrategy[Any]] = {}

    def resolve(self, s: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        name = None
        while "$ref" in s:
            name = s["$ref"].rsplit("/", 1)[-1]
            s = self.components[name]
        return name, s

    def maybe_wrong(self, strat: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        if not self.wrong:
            return strat
        w = self.wrong
        return st.integers(0, 99).flatmap(lambda n: WEIRD_VALUES if n < w else strat)

    def value(self, s: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
        name, s = self.resolve(s)
        if name is not None:
            key = (name, depth)
            if key not in self._cache:
                self._cache[key] = st.deferred(lambda: self._value(s, depth))
            return self._cache[key]
        return self._value(s, depth)

    def _value(self, s: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        options: list[st.SearchStrategy[Any]] = []
        t = s.get("type")
        if "enum" in s:
            options.append(st.sampled_from(s["enum"]))
        elif t == "string":
            options.append(text_values())
        elif t == "integer":
            lo, hi = s.get("minimum", -(2**40)), s.get("maximum", 2**40)
            options.append(st.integers(lo, hi))
            options.append(st.sampled_from(sorted({lo, hi, 0, 1})).filter(lambda v: lo <= v <= hi))
        elif t == "boolean":
            options.append(st.booleans())
        elif t == "array":
            if depth >= self.MAX_DEPTH:
                options.append(st.just([]))
            else:
                options.append(st.lists(self.value(s["items"], depth + 1), max_size=3))
        elif t == "object":
            if depth >= self.MAX_DEPTH:
                options.append(st.just({}))
            else:
                props = s.get("properties", {})
                optional = {k: self.maybe_wrong(self.value(v, depth + 1))
                            for k, v in props.items() if not v.get("readOnly")}
                options.append(st.fixed_dictionaries({}, optional=optional))
        else:
            options.append(any_json(3))
        if s.get("nullable"):
            options.append(st.none())
        return st.one_of(options)


def addr4() -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda p, n: f"{p}{n}", st.sampled_from(DOC_ADDRESSES), st.integers(0, 255)),
        st.builds(lambda a, b: f"198.{a}.{b}.1", st.integers(18, 19), st.integers(0, 255)))


def addr6() -> st.SearchStrategy[str]:
    return st.integers(0, 2**16 - 1).map(lambda n: f"2001:db8::{n:x}")


def prefixes() -> st.SearchStrategy[dict[str, Any]]:
    """Subnets in documentation ranges, some misaligned or too small or too large."""
    return st.one_of(
        st.tuples(st.sampled_from(["192.0.2.0", "198.51.100.0", "203.0.113.0"]),
                  st.integers(22, 32)),
        st.tuples(st.sampled_from(["198.18.0.0", "198.19.0.0"]), st.integers(15, 30)),
        st.tuples(st.sampled_from(["2001:db8::", "2001:db8:0:1::"]), st.integers(56, 128)),
        st.tuples(addr4(), st.integers(-1, 33)),
    ).map(lambda t: {"ip_prefix": t[0], "ip_prefix_len": t[1]})


def ipam_subnet() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"subnet": prefixes()}, optional={
        "default_gateway": st.one_of(addr4(), addr6(), st.sampled_from(["0.0.0.0", "x"])),
        "dns_server_address": st.one_of(addr4(), addr6()),
        "allocation_pools": st.lists(st.fixed_dictionaries(
            {"start": st.one_of(addr4(), addr6()), "end": st.one_of(addr4(), addr6())}),
            max_size=2),
        "addr_from_start": st.booleans(),
        "enable_dhcp": st.booleans(),
        "alloc_unit": st.sampled_from([1, 2, 4, 3, 0]),
        "subnet_uuid": st.one_of(st.none(), st.uuids().map(str)),
        "subnet_name": st.text(max_size=5),
    })


def ports() -> st.SearchStrategy[dict[str, int]]:
    return st.fixed_dictionaries({"start_port": st.integers(-1, 65536),
                                  "end_port": st.integers(-1, 65536)})


class Fuzz:
    """Request strategies over a live controller's pool of objects."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.valid = Builder(live.doc, wrong=0)
        self.noisy = Builder(live.doc, wrong=6)

    # -- picking objects that exist
    # The pool changes as the run goes on, so each pick draws the same choices whatever it
    # holds (an index, a coin, a fallback); otherwise Hypothesis sees data generation that
    # behaves differently between runs of one example and gives up.
    def uuid_of(self, rtype: str | None = None) -> st.SearchStrategy[str]:
        @st.composite
        def pick(draw: st.DrawFn) -> str:
            t = rtype or draw(st.sampled_from(TYPES))
            index, coin, fallback = draw(st.tuples(st.integers(0, 2**16), st.integers(0, 19),
                                                   st.uuids()))
            # ordered by name, not uuid: uuids are random, names repeat from run to run
            pool = self.live.pool.get(t, {})
            uuids = [u for u, _ in sorted(pool.items(), key=lambda kv: kv[1])]
            if not uuids or coin == 0:
                return str(fallback)
            return uuids[index % len(uuids)]
        return pick()

    def fq_of(self, rtype: str) -> st.SearchStrategy[list[str]]:
        @st.composite
        def pick(draw: st.DrawFn) -> list[str]:
            index, coin, fallback = draw(st.tuples(
                st.integers(0, 2**16), st.integers(0, 9),
                st.lists(text_values(), min_size=1, max_size=3)))
            fqs = sorted(self.live.pool.get(rtype, {}).values())
            if not fqs or coin == 0:
                return fallback
            return list(fqs[index % len(fqs)])
        return pick()

    def any_type(self) -> st.SearchStrategy[str]:
        return st.integers(0, 9).flatmap(
            lambda n: st.sampled_from(CORE if n < 4 else HOOKED if n < 7 else TYPES))

    # -- resource bodies
    def name(self) -> st.SearchStrategy[str]:
        safe = st.text(string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=10)
        weird = st.one_of(
            st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8),
            st.sampled_from(["a:b", "x<y", "default-domain", "label=blue", "", "q\"", "\n",
                             "n" * 5000]),
        )
        return st.integers(0, 9).flatmap(lambda n: weird if n == 0 else safe)

    def refs(self, rt: ResourceType, noisy: bool) -> st.SearchStrategy[dict[str, Any]]:
        b = self.noisy if noisy else self.valid

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            out: dict[str, Any] = {}
            fields = sorted(rt.refs)
            if not fields:
                return out
            for f in draw(st.lists(st.sampled_from(fields), max_size=3, unique=True)):
                spec = rt.refs[f]
                entries = []
                for _ in range(draw(st.integers(0, 2))):
                    e: dict[str, Any] = {}
                    how = draw(st.integers(0, 3))
                    if how in (0, 2):
                        e["uuid"] = draw(self.uuid_of(spec.to))
                    if how in (1, 2):
                        e["to"] = draw(self.fq_of(spec.to))
                    if how == 3:
                        e = draw(st.fixed_dictionaries({}, optional={
                            "uuid": WEIRD_VALUES, "to": WEIRD_VALUES}))
                    if spec.attr is not None or draw(st.booleans()):
                        attr_schema = {"$ref": f"#/components/schemas/{spec.attr}"} \
                            if spec.attr else {}
                        e["attr"] = draw(b.value(attr_schema, 1))
                    entries.append(e)
                out[f] = entries if not noisy or draw(st.integers(0, 9)) else draw(WEIRD_VALUES)
            return out
        return build()

    def resource_body(self, rt: ResourceType, noisy: bool,
                      for_update: bool = False) -> st.SearchStrategy[dict[str, Any]]:
        b = self.noisy if noisy else self.valid
        comp = self.live.doc["components"]["schemas"][rt.name]["properties"]
        skip = {"uuid", "fq_name", "parent_type", "parent_uuid", "parent_href", "href", "name"}
        prop_names = sorted(p for p in rt.props)

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            body: dict[str, Any] = {}
            if not for_update:
                ptype = draw(st.sampled_from(rt.parents))
                name = draw(self.name())
                if ptype == "config-root":
                    body["fq_name"] = [name]
                else:
                    body["fq_name"] = [*draw(self.fq_of(ptype)), name]
                    body["parent_type"] = ptype
                if draw(st.integers(0, 9)) == 0:
                    body["uuid"] = draw(st.one_of(st.uuids().map(str), self.uuid_of(),
                                                  text_values()))
                else:
                    body["uuid"] = None
            chosen = draw(st.lists(st.sampled_from(prop_names), max_size=5, unique=True))
            for p in chosen:
                if p in skip:
                    continue
                body[p] = draw(b.maybe_wrong(b.value(comp[p])))
            body.update(draw(self.refs(rt, noisy)))
            if noisy and draw(st.integers(0, 9)) == 0:
                body[draw(st.text(min_size=1, max_size=10))] = draw(WEIRD_VALUES)
            if noisy and draw(st.integers(0, 14)) == 0:
                body[draw(st.sampled_from(["fq_name", "parent_type", "uuid", "display_name",
                                           "id_perms", "perms2"]))] = draw(WEIRD_VALUES)
            return body
        return build()

    def recipe(self, rtype: str) -> st.SearchStrategy[dict[str, Any]]:
        """Fields that get a hooked type past its first checks, so its deeper code runs."""
        vn_ref = self.uuid_of("virtual-network").map(lambda u: [{"uuid": u}])
        vmi_ref = self.uuid_of("virtual-machine-interface").map(lambda u: [{"uuid": u}])
        proj_ref = self.uuid_of("project").map(lambda u: [{"uuid": u}])
        fixed = st.fixed_dictionaries
        # the seeded networks that have subnets, so addresses really get allocated
        subnetted = st.sampled_from([["default-domain", "fuzz", "vn1"],
                                     ["default-domain", "default-project", "vn2"]]).map(
            lambda fq: [{"to": fq}])
        recipes: dict[str, st.SearchStrategy[dict[str, Any]]] = {
            "virtual-network": fixed({}, optional={
                "network_ipam_refs": st.lists(fixed({
                    "to": self.fq_of("network-ipam"),
                    "attr": fixed({"ipam_subnets": st.lists(ipam_subnet(), max_size=3)}),
                }), max_size=2),
                "virtual_network_properties": fixed({}, optional={
                    "vxlan_network_identifier": st.integers(0, 2**24 + 1),
                    "forwarding_mode": st.sampled_from(["l2_l3", "l2", "l3", None]),
                    "network_id": st.integers(0, 2**32)}),
                "virtual_network_network_id": st.integers(-1, 2**32),
                "is_shared": st.booleans(),
                "perms2": fixed({"owner": st.uuids().map(lambda u: u.hex)}, optional={
                    "global_access": st.integers(0, 7)}),
            }),
            "network-ipam": fixed({}, optional={
                "ipam_subnet_method": st.sampled_from(["user-defined-subnet", "flat-subnet",
                                                       "auto-subnet"]),
                "ipam_subnets": fixed({"subnets": st.lists(ipam_subnet(), max_size=3)}),
            }),
            "instance-ip": fixed({"virtual_network_refs": st.one_of(vn_ref, subnetted)},
                                 optional={
                "instance_ip_address": st.one_of(addr4(), addr6(), text_values()),
                "instance_ip_family": st.sampled_from(["v4", "v6", None]),
                "virtual_machine_interface_refs": vmi_ref,
                "subnet_uuid": st.uuids().map(str),
                "instance_ip_secondary": st.booleans(),
            }),
            "virtual-machine-interface": fixed({"virtual_network_refs": vn_ref}, optional={
                "virtual_machine_interface_mac_addresses": fixed({"mac_address": st.lists(
                    st.one_of(st.sampled_from(["02:00:5e:00:53:01", "zz", ""]),
                              st.integers(0, 255).map(lambda n: f"02:00:00:00:00:{n:02x}")),
                    max_size=2)}),
                "virtual_machine_interface_properties": fixed({}, optional={
                    "sub_interface_vlan_tag": st.integers(-1, 4096)}),
                "security_group_refs": self.uuid_of("security-group").map(
                    lambda u: [{"uuid": u}]),
            }),
            "floating-ip": fixed({"project_refs": proj_ref}, optional={
                "floating_ip_address": st.one_of(addr4(), addr6(), text_values()),
                "virtual_machine_interface_refs": vmi_ref,
            }),
            "alias-ip": fixed({"project_refs": proj_ref}, optional={
                "alias_ip_address": st.one_of(addr4(), addr6(), text_values()),
            }),
            "tag": fixed({
                "tag_type_name": st.sampled_from(["label", "application", "site", "tier",
                                                  "deployment", "neutron_tag", "custom", ""]),
                "tag_value": st.text(string.ascii_lowercase, max_size=5),
            }),
            "firewall-rule": fixed({}, optional={
                "service": fixed({}, optional={
                    "protocol": st.sampled_from(["tcp", "udp", "icmp", "any", "6", "x", "300"]),
                    "dst_ports": ports(), "src_ports": ports()}),
                "service_group_refs": self.uuid_of("service-group").map(
                    lambda u: [{"uuid": u}]),
                "endpoint_1": fixed({}, optional={
                    "tags": st.lists(st.sampled_from(["label=blue", "application=web",
                                                      "global:label=blue", "x=y", "bad"]),
                                     max_size=2),
                    "any": st.booleans(), "subnet": prefixes(),
                    "virtual_network": st.sampled_from(["default-domain:fuzz:vn1", "x"]),
                    "address_group": st.sampled_from(["default-domain:fuzz:ag", "x"])}),
                "endpoint_2": fixed({"any": st.booleans()}),
                "action_list": fixed({"simple_action": st.sampled_from(["pass", "deny", "x"])}),
                "direction": st.sampled_from(["<>", ">", "<", "x"]),
                "match_tags": fixed({"tag_list": st.lists(st.sampled_from(
                    ["application", "tier", "bogus"]), max_size=2)}),
            }),
            "bgp-router": fixed({"bgp_router_parameters": fixed({}, optional={
                "address": st.one_of(addr4(), text_values()),
                "autonomous_system": st.integers(-1, 2**32),
                "router_type": st.sampled_from(["control-node", "router", "x"]),
                "identifier": addr4()})}),
            "security-group": fixed({}, optional={
                "security_group_entries": fixed({"policy_rule": st.lists(
                    self.valid.value({"$ref": "#/components/schemas/PolicyRuleType"}, 2),
                    max_size=2)}),
                "configured_security_group_id": st.integers(-1, 2**32),
            }),
            "logical-router": fixed({"virtual_network_refs": st.lists(fixed({
                "uuid": self.uuid_of("virtual-network"),
                "attr": fixed({"logical_router_virtual_network_type": st.sampled_from(
                    ["ExternalGateway", "InternalVirtualNetwork", None])})}), max_size=2)}),
            "global-system-config": fixed({"autonomous_system": st.integers(0, 2**32)}),
        }
        return recipes.get(rtype, st.just({}))

    def wrapped(self, rt: ResourceType, body: st.SearchStrategy[dict[str, Any]]
                ) -> st.SearchStrategy[Any]:
        """The body under its wrapper, or under a wrong one now and then."""
        return st.tuples(st.integers(0, 19), body, self.any_type()).map(
            lambda t: {rt.name: t[1]} if t[0] < 15 else
            {rt.obj_type: t[1]} if t[0] < 17 else
            {t[2]: t[1]} if t[0] == 17 else
            t[1] if t[0] == 18 else [t[1]])

    # -- list queries
    def list_params(self, rt: ResourceType) -> st.SearchStrategy[dict[str, str]]:
        names = sorted([*rt.props, *rt.refs, *rt.children, *rt.back_refs, "bogus"])
        comp = self.live.doc["components"]["schemas"][rt.name]["properties"]

        @st.composite
        def filters(draw: st.DrawFn) -> str:
            parts = []
            for _ in range(draw(st.integers(1, 3))):
                key = draw(st.sampled_from([*sorted(rt.props), "bogus", ""]))
                if key in comp and draw(st.booleans()):
                    v = draw(self.valid.value(comp[key]))
                else:
                    v = draw(WEIRD_VALUES.filter(lambda x: not isinstance(x, str) or
                                                 len(x) < 1000))
                raw = json.dumps(v) if draw(st.integers(0, 4)) else str(v)
                parts.append(f"{key}=={raw}")
            if draw(st.integers(0, 9)) == 0:
                parts.append(draw(st.text(max_size=10)))
            return ",".join(parts)

        def csv(s: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
            return st.lists(s, max_size=3).map(",".join)

        bools = st.sampled_from(["True", "False", "true", "", "yes", "TRUE"])
        return st.fixed_dictionaries({}, optional={
            "parent_fq_name_str": st.one_of(*[self.fq_of(p).map(":".join)
                                              for p in rt.parents]),
            "parent_type": st.one_of(st.sampled_from(rt.parents), st.text(max_size=8)),
            "parent_id": csv(self.uuid_of()),
            "back_ref_id": csv(self.uuid_of()),
            "obj_uuids": csv(self.uuid_of(rt.name)),
            "fq_names": csv(self.fq_of(rt.name).map(":".join)),
            "fields": csv(st.one_of(st.sampled_from(names), st.text(max_size=6))),
            "detail": bools, "count": bools, "shared": bools, "exclude_hrefs": bools,
            "filters": filters(),
            "page_marker": st.one_of(self.uuid_of(rt.name), st.just("None"),
                                     st.text(max_size=8),
                                     self.uuid_of(rt.name).map(lambda u: "shared:" + u)),
            "page_limit": st.one_of(st.integers(-3, 50).map(str), st.text(max_size=5),
                                    st.just(str(2**70))),
        })


# ----------------------------------------------------------------------------------------------
# action bodies
def action_requests(fz: Fuzz) -> st.SearchStrategy[tuple[str, str, Any, dict[str, str] | None]]:
    """(method, path, json body, query) for one action call."""
    W = WEIRD_VALUES

    def anyof(*xs: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        """Mostly the given values, a weird one now and then."""
        return st.integers(0, 4).flatmap(lambda n: W if n == 0 else st.one_of(*xs))

    rtype = fz.any_type()
    obj = fz.uuid_of()

    @st.composite
    def ref_update(draw: st.DrawFn) -> tuple[str, str, Any, None]:
        t = draw(rtype)
        rt = SCHEMA.types[t]
        refs = sorted(rt.refs.values(), key=lambda r: r.field)
        target = draw(st.sampled_from(refs)).to if refs else draw(rtype)
        attr_schema = {}
        ref = rt.ref_to(target)
        if ref is not None and ref.attr:
            attr_schema = {"$ref": f"#/components/schemas/{ref.attr}"}
        body = draw(st.fixed_dictionaries({
            "type": st.one_of(st.just(t), st.just(t.replace("-", "_")), rtype),
            "uuid": anyof(fz.uuid_of(t)),
            "ref-type": st.one_of(st.just(target), rtype),
            "operation": st.sampled_from(["ADD", "DELETE", "add", "Delete", "MODIFY", ""]),
        }, optional={
            "ref-uuid": anyof(fz.uuid_of(target)),
            "ref-fq-name": anyof(fz.fq_of(target)),
            "attr": anyof(fz.noisy.value(attr_schema, 1)),
            "relax_ref_for_delete": anyof(st.booleans()),
        }))
        return "POST", "/ref-update", body, None

    @st.composite
    def prop_update(draw: st.DrawFn) -> tuple[str, str, Any, None]:
        withc = sorted(n for n, rt in SCHEMA.types.items() if rt.collections)
        t = draw(st.sampled_from(withc))
        rt = SCHEMA.types[t]
        colls = sorted(rt.collections.values(), key=lambda c: c.field)
        updates = []
        for _ in range(draw(st.integers(0, 3))):
            c = draw(st.sampled_from(colls))
            elem = {"$ref": f"#/components/schemas/{c.element_type}"} \
                if c.element_type in fz.live.doc["components"]["schemas"] else {}
            up = draw(st.fixed_dictionaries({
                "field": st.one_of(st.just(c.field), st.text(max_size=6)),
                "operation": st.sampled_from(["add", "modify", "delete", "set", "ADD", "x"]),
            }, optional={
                "value": fz.noisy.value(elem, 1),
                "position": anyof(st.integers(0, 5), st.text(max_size=4)),
            }))
            updates.append(up if draw(st.integers(0, 14)) else draw(W))
        body = draw(st.fixed_dictionaries({"uuid": anyof(fz.uuid_of(t))}, optional={
            "updates": st.one_of(st.just(updates), W)}))
        return "POST", "/prop-collection-update", body, None

    @st.composite
    def prop_get(draw: st.DrawFn) -> tuple[str, str, Any, dict[str, str]]:
        withc = sorted(n for n, rt in SCHEMA.types.items() if rt.collections)
        t = draw(st.sampled_from(withc))
        fields = sorted(SCHEMA.types[t].collections)
        q = draw(st.fixed_dictionaries({}, optional={
            "uuid": fz.uuid_of(t),
            "fields": st.lists(st.one_of(st.sampled_from(fields), st.text(max_size=5)),
                               max_size=3).map(",".join),
            "position": st.one_of(st.integers(0, 3).map(str), st.text(max_size=4)),
        }))
        return "GET", "/prop-collection-get", None, q

    @st.composite
    def set_tag(draw: st.DrawFn) -> tuple[str, str, Any, None]:
        t = draw(rtype)
        body: dict[str, Any] = {"obj_type": draw(st.one_of(st.just(t.replace("-", "_")),
                                                           st.just(t), W)),
                                "obj_uuid": draw(anyof(fz.uuid_of(t)))}
        values = st.sampled_from(["blue", "web", "red", "", "a=b"])
        spec = st.one_of(
            st.none(),
            st.fixed_dictionaries({"value": anyof(values)},
                                  optional={"is_global": anyof(st.booleans())}),
            st.fixed_dictionaries({}, optional={
                "add_values": anyof(st.lists(values, max_size=2)),
                "delete_values": anyof(st.lists(values, max_size=2)),
                "is_global": st.booleans()}),
            W,
        )
        for k in draw(st.lists(st.sampled_from(["label", "application", "site", "tier",
                                                "deployment", "neutron_tag", "LABEL", "bogus"]),
                               max_size=3, unique=True)):
            body[k] = draw(spec)
        return "POST", "/set-tag", body, None

    kv = st.fixed_dictionaries({}, optional={
        "operation": st.sampled_from(["STORE", "RETRIEVE", "DELETE", "store", "X"]),
        "key": st.one_of(st.sampled_from(["k1", "k2", ""]), st.none(),
                         st.lists(st.sampled_from(["k1", "k2", "k3"]), max_size=3), W),
        "value": W,
    }).map(lambda b: ("POST", "/useragent-kv", b, None))
    chmod = st.fixed_dictionaries({"uuid": anyof(obj)}, optional={
        "owner": anyof(st.uuids().map(str)),
        "owner_access": anyof(st.integers(-1, 8)),
        "global_access": anyof(st.integers(-1, 8)),
        "share": anyof(st.lists(st.fixed_dictionaries({}, optional={
            "tenant": anyof(st.uuids().map(lambda u: f"tenant:{u}")),
            "tenant_access": anyof(st.integers(-1, 8))}), max_size=2)),
    }).map(lambda b: ("POST", "/chmod", b, None))
    chown = st.fixed_dictionaries({}, optional={
        "uuid": anyof(obj), "owner": anyof(st.uuids().map(str)),
    }).map(lambda b: ("POST", "/chown", b, None))
    vn = fz.uuid_of("virtual-network")
    subnet_ids = st.one_of(st.none(), st.uuids().map(str), text_values())
    addrs = st.lists(st.integers(0, 9).flatmap(
        lambda n: addr4() if n < 7 else addr6() if n < 9 else st.one_of(text_values(), W)),
        max_size=3)
    ip_alloc = st.tuples(vn, st.fixed_dictionaries({}, optional={
        "count": anyof(st.integers(-1, 20)), "subnet": subnet_ids,
        "family": anyof(st.sampled_from(["v4", "v6", "v5"])),
    })).map(lambda t: ("POST", f"/virtual-network/{t[0]}/ip-alloc", t[1], None))
    ip_free = st.tuples(vn, st.fixed_dictionaries({}, optional={"ip_addr": anyof(addrs)})).map(
        lambda t: ("POST", f"/virtual-network/{t[0]}/ip-free", t[1], None))
    ip_count = st.tuples(vn, st.fixed_dictionaries({}, optional={
        "subnet_list": anyof(st.lists(st.one_of(st.sampled_from(
            ["192.0.2.0/24", "198.51.100.0/28", "2001:db8::/64", "203.0.113.0/33", "x"]),
            W), max_size=3))})).map(
        lambda t: ("POST", f"/virtual-network/{t[0]}/subnet-ip-count", t[1], None))
    names = st.fixed_dictionaries({}, optional={
        "type": anyof(rtype), "fq_name": anyof(rtype.flatmap(fz.fq_of))}).map(
        lambda b: ("POST", "/fqname-to-id", b, None))
    ids = st.fixed_dictionaries({}, optional={"uuid": anyof(obj)}).map(
        lambda b: ("POST", "/id-to-fqname", b, None))
    relax = st.fixed_dictionaries({}, optional={"uuid": anyof(obj), "ref-uuid": anyof(obj)}).map(
        lambda b: ("POST", "/ref-relax-for-delete", b, None))

    @st.composite
    def bulk(draw: st.DrawFn) -> tuple[str, str, Any, None]:
        t = draw(rtype)
        params: dict[str, Any] = dict(draw(fz.list_params(SCHEMA.types[t])))
        for k in list(params):
            if draw(st.integers(0, 4)) == 0:
                params[k] = draw(W)
        if draw(st.integers(0, 9)):
            params["type"] = t
        return "POST", "/list-bulk-collection", params, None

    aaa = st.fixed_dictionaries({}, optional={
        "aaa-mode": st.sampled_from(["no-auth", "cloud-admin", "rbac", "x"])}).map(
        lambda b: ("PUT", "/aaa-mode", b, None))
    perms = st.fixed_dictionaries({}, optional={"uuid": obj}).map(
        lambda q: ("GET", "/obj-perms", None, q))
    return st.one_of(ref_update(), prop_update(), prop_get(), set_tag(), kv, chmod, chown,
                     ip_alloc, ip_free, ip_count, names, ids, relax, bulk(), aaa, perms)


# ----------------------------------------------------------------------------------------------
# the properties
def _fuzz(live: Live) -> Fuzz:
    return Fuzz(live)


@pytest.mark.slow
def test_fuzz_create(live: Live) -> None:
    fz = _fuzz(live)
    live.refresh()

    @settings(FUZZ, max_examples=int(600 * SCALE))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        t = data.draw(fz.any_type(), label="type")
        rt = SCHEMA.types[t]
        noisy = data.draw(st.integers(0, 2), label="noisy") == 0
        body = data.draw(fz.resource_body(rt, noisy), label="body")
        if data.draw(st.booleans(), label="recipe"):
            body.update(data.draw(fz.recipe(t), label="recipe fields"))
        payload = data.draw(fz.wrapped(rt, st.just(body))) if noisy else {rt.name: body}
        resp = live.call("POST", f"/{rt.plural}", body=payload)
        if resp.status_code == 200 and isinstance(payload, dict) and rt.name in payload:
            live.remember(rt.name, resp)

    run()


@pytest.mark.slow
def test_fuzz_update_read_delete(live: Live) -> None:
    fz = _fuzz(live)
    live.refresh()

    @settings(FUZZ, max_examples=int(500 * SCALE))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        t = data.draw(fz.any_type(), label="type")
        rt = SCHEMA.types[t]
        uuid = data.draw(fz.uuid_of(t), label="uuid")
        op = data.draw(st.sampled_from(["put"] * 6 + ["get", "get", "delete"]), label="op")
        if op == "put":
            noisy = data.draw(st.integers(0, 2)) == 0
            body = data.draw(fz.resource_body(rt, noisy, for_update=True), label="body")
            if data.draw(st.booleans(), label="recipe"):
                body.update(data.draw(fz.recipe(t), label="recipe fields"))
            if data.draw(st.integers(0, 9)) == 0:
                body["uuid"] = uuid
            payload = data.draw(fz.wrapped(rt, st.just(body))) if noisy else {rt.name: body}
            live.call("PUT", f"/{rt.name}/{uuid}", body=payload)
        elif op == "get":
            names = sorted([*rt.props, *rt.refs, *rt.children, *rt.back_refs, "bogus"])
            q = data.draw(st.fixed_dictionaries({}, optional={
                "fields": st.lists(st.sampled_from(names), max_size=4).map(",".join),
                "exclude_back_refs": st.sampled_from(["True", ""]),
                "exclude_children": st.sampled_from(["True", "False"]),
                "exclude_hrefs": st.just("True"),
            }), label="query")
            live.call("GET", f"/{rt.name}/{uuid}", params=q)
        else:
            if live.call("DELETE", f"/{rt.name}/{uuid}").status_code == 200:
                live.pool.get(t, {}).pop(uuid, None)

    run()


@pytest.mark.slow
def test_fuzz_list(live: Live) -> None:
    fz = _fuzz(live)
    live.refresh()

    @settings(FUZZ, max_examples=int(300 * SCALE))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        rt = SCHEMA.types[data.draw(fz.any_type(), label="type")]
        q = data.draw(fz.list_params(rt), label="query")
        resp = live.call("GET", f"/{rt.plural}", params=q)
        if resp.status_code == 200:
            assert rt.plural in resp.json()

    run()


@pytest.mark.slow
def test_fuzz_actions(live: Live) -> None:
    fz = _fuzz(live)
    live.refresh()
    actions = action_requests(fz)

    @settings(FUZZ, max_examples=int(600 * SCALE))
    @given(actions)
    def run(req: tuple[str, str, Any, dict[str, str] | None]) -> None:
        method, path, body, query = req
        live.call(method, path, body=body, params=query)

    run()
    live.call("PUT", "/aaa-mode", body={"aaa-mode": "no-auth"})


RAW_BODIES: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"   ", b"null", b"[]", b"{}", b"\"x\"", b"1", b"{", b"NaN",
                     b"{\"a\": NaN}", b"\xff\xfe", b"{\"virtual-network\": \"\\ud800\"}",
                     b"[" * 5000 + b"]" * 5000, b"{\"a\":" * 2000 + b"1" + b"}" * 2000,
                     b"{\"x\": 1e999}", b"{\"x\": 123456789012345678901234567890}"]),
    st.text(max_size=40).map(str.encode),
    WEIRD_VALUES.map(lambda v: json.dumps(v).encode()),
)


@pytest.mark.slow
def test_fuzz_raw_bodies(live: Live) -> None:
    fz = _fuzz(live)
    live.refresh()
    post_paths = ["/fqname-to-id", "/id-to-fqname", "/ref-update", "/ref-relax-for-delete",
                  "/prop-collection-update", "/useragent-kv", "/list-bulk-collection",
                  "/chown", "/chmod", "/set-tag"]
    vn_actions = ["ip-alloc", "ip-free", "subnet-ip-count", "bogus"]

    @st.composite
    def target(draw: st.DrawFn) -> tuple[str, str]:
        kind = draw(st.integers(0, 4))
        t = draw(fz.any_type())
        if kind == 0:
            return "POST", f"/{t}s"
        if kind == 1:
            return "PUT", f"/{t}/{draw(fz.uuid_of(t))}"
        if kind == 2:
            return "POST", draw(st.sampled_from(post_paths))
        if kind == 3:
            vn = draw(fz.uuid_of("virtual-network"))
            return "POST", f"/virtual-network/{vn}/{draw(st.sampled_from(vn_actions))}"
        return draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])), "/" + draw(
            st.text(string.ascii_letters + "-_/%.", max_size=20))

    @settings(FUZZ, max_examples=int(300 * SCALE))
    @given(target(), RAW_BODIES)
    def run(tgt: tuple[str, str], raw: bytes) -> None:
        live.call(tgt[0], tgt[1], raw=raw)

    run()


def test_store_consistent_and_restart(live: Live) -> None:
    """After all that, the store is consistent and a restarted controller serves it."""
    import importlib

    from tungsten.store import open_store

    fsck: Callable[..., list[str]] = importlib.import_module("tungsten.api.fsck").check_store
    before = {t: set(p) for t, p in live.pool.items()}
    live.refresh()
    held = {t: set(p) for t, p in live.pool.items()}
    live.ctl.stop()
    store = open_store(live.ctl.store_url)
    try:
        problems = fsck(store)
    finally:
        store.close()
    assert problems == [], "\n".join(problems[:50])
    start = time.monotonic()
    live.ctl.start()
    assert time.monotonic() - start < 20
    live.refresh()
    # everything is still there (a start may recreate boot defaults the fuzzing deleted)
    for t, uuids in held.items():
        assert uuids <= set(live.pool[t]), t
    for t in ("project", "virtual-network", "instance-ip", "tag"):
        for uuid in sorted(live.pool[t])[:5]:
            body = live.call("GET", f"/{t}/{uuid}").json()[t]
            assert body["uuid"] == uuid
    for key, n in sorted(live.outcomes.items()):
        print(*key, n)
    for text, n in live.errors.most_common(400):
        print(n, text)
    assert before  # the fuzzing ran against a populated store
    assert sum(c for s, c in live.statuses.items() if s == 200) > 100
    assert sum(c for s, c in live.statuses.items() if 400 <= s < 500) > 100
