"""The lab topology file: parsing and validation (pure: text in, ``Topology`` or errors out).

YAML is read with PyYAML, checked against ``SCHEMA`` (JSON Schema, documented in
``docs/lab.md``) with jsonschema, then for what a schema cannot say: references between
sections, subnets, overlaps.  Every error carries the file position (``line:col``, 1-based)
of the offending key or value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import yaml

DEFAULT_PROJECT = "default-project"
DOMAIN = "default-domain"
MAX_NODES = 250  # underlay addresses 192.0.2.1 .. 192.0.2.250

NAME = {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,31}$"}
LAB_NAME = {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,11}$"}
PORTS = {"oneOf": [{"type": "string", "pattern": r"^(any|[0-9]{1,5}(-[0-9]{1,5})?)$"},
                   {"type": "integer", "minimum": 0, "maximum": 65535}]}

PROTOCOL = {"oneOf": [{"enum": ["any", "tcp", "udp", "icmp"]},
                     {"type": "integer", "minimum": 0, "maximum": 255},
                     {"type": "string", "pattern": "^[0-9]{1,3}$"}]}
TAG_TYPES = ("application", "tier", "deployment", "site", "label")
# "type=value"; only label may appear more than once on one object
TAG = {"type": "string", "pattern": f"^({'|'.join(TAG_TYPES)})=[A-Za-z0-9_.-]{{1,64}}$"}
TAGS = {"type": "array", "items": TAG}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Tungsten lab topology",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "nodes"],
    "properties": {
        "name": LAB_NAME,
        "nodes": {"type": "array", "items": NAME, "minItems": 1, "maxItems": MAX_NODES},
        "projects": {"type": "array", "items": NAME},
        "networks": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "subnet"],
            "properties": {"name": NAME, "project": NAME, "subnet": {"type": "string"},
                           "tags": TAGS}}},
        "workloads": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "node", "network"],
            "properties": {"name": NAME, "node": NAME, "network": NAME,
                           "security_groups": {"type": "array", "items": NAME},
                           "tags": TAGS}}},
        "project_tags": {"type": "object", "additionalProperties": TAGS},
        "address_groups": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "prefixes"],
            "properties": {"name": NAME, "project": NAME,
                           "prefixes": {"type": "array", "items": {"type": "string"},
                                        "minItems": 1}}}},
        "security_groups": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "rules"],
            "properties": {"name": NAME, "project": NAME, "rules": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["direction"],
                "properties": {"direction": {"enum": ["ingress", "egress"]},
                               "protocol": PROTOCOL, "ports": PORTS,
                               "remote": {"type": "string"},
                               "ethertype": {"enum": ["IPv4", "IPv6"]}}}}}}},
        "firewall_policies": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "rules"],
            "properties": {"name": NAME, "project": NAME, "rules": {"type": "array", "items": {
                "type": "object", "additionalProperties": False,
                "required": ["action", "from", "to"],
                "properties": {"action": {"enum": ["pass", "deny"]},
                               "protocol": PROTOCOL, "ports": PORTS,
                               "from": {"type": "string"}, "to": {"type": "string"},
                               "direction": {"enum": [">", "<", "<>"]},
                               "match_tags": {"type": "array", "items": {"enum": [
                                   "application", "tier", "deployment", "site"]}}}}}}}},
        "application_policy_sets": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "policies"],
            "properties": {"name": NAME, "project": NAME,
                           "application": {"type": "string"},
                           "policies": {"type": "array", "items": NAME}}}},
        "policies": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "networks", "rules"],
            "properties": {
                "name": NAME, "project": NAME,
                "networks": {"type": "array", "items": NAME},
                "rules": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["action", "src", "dst"],
                    "properties": {
                        "action": {"enum": ["pass", "deny"]},
                        "protocol": PROTOCOL,
                        "src": {"type": "string"}, "dst": {"type": "string"},
                        "src_ports": PORTS, "dst_ports": PORTS,
                        "direction": {"enum": [">", "<>"]}}}}}}},
    },
}


class TopologyError(ValueError):
    """Everything wrong with a file, each as ``FILE:LINE:COL: message``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Network:
    name: str
    project: str
    subnet: str  # normalised, e.g. 198.51.100.0/24
    tags: tuple[str, ...] = ()

    @property
    def fq_name(self) -> list[str]:
        return [DOMAIN, self.project, self.name]


@dataclass(frozen=True)
class Workload:
    name: str
    node: str
    network: str
    security_groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # "type=value"


@dataclass(frozen=True)
class Rule:
    action: str
    protocol: str
    src: str  # a network name of the file or a CIDR
    dst: str
    src_ports: tuple[int, int]  # (-1, -1) is any
    dst_ports: tuple[int, int]
    direction: str


@dataclass(frozen=True)
class Policy:
    name: str
    project: str
    networks: tuple[str, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class AddressGroup:
    name: str
    project: str
    prefixes: tuple[str, ...]


@dataclass(frozen=True)
class SgRule:
    direction: str  # "ingress" | "egress"
    protocol: str
    ports: tuple[int, int]  # destination ports; (-1, -1) is any
    remote: str  # "any", a CIDR, or a security group of the file
    ethertype: str


@dataclass(frozen=True)
class SecurityGroup:
    name: str
    project: str
    rules: tuple[SgRule, ...]


@dataclass(frozen=True)
class FwRule:
    action: str
    protocol: str
    ports: tuple[int, int]  # destination ports; (-1, -1) is any
    src: str  # "any", tags "type=value & ...", a network or address group of the file, a CIDR
    dst: str
    direction: str
    match_tags: tuple[str, ...]


@dataclass(frozen=True)
class FirewallPolicy:
    name: str
    project: str
    rules: tuple[FwRule, ...]


@dataclass(frozen=True)
class PolicySet:
    name: str
    project: str
    application: str | None  # the application tag's value; None: the project's default set
    policies: tuple[str, ...]


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[str, ...]
    projects: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()
    workloads: tuple[Workload, ...] = ()
    policies: tuple[Policy, ...] = ()
    source: str = field(default="", compare=False)
    project_tags: tuple[tuple[str, tuple[str, ...]], ...] = ()
    address_groups: tuple[AddressGroup, ...] = ()
    security_groups: tuple[SecurityGroup, ...] = ()
    firewall_policies: tuple[FirewallPolicy, ...] = ()
    policy_sets: tuple[PolicySet, ...] = ()

    def tags(self) -> list[tuple[str, str]]:
        """Every (project, "type=value") tag the file uses, in first-use order."""
        out: dict[tuple[str, str], None] = {}
        for proj, tags in self.project_tags:
            out.update(dict.fromkeys((proj, t) for t in tags))
        for n in self.networks:
            out.update(dict.fromkeys((n.project, t) for t in n.tags))
        for w in self.workloads:
            proj = self.network(w.network).project
            out.update(dict.fromkeys((proj, t) for t in w.tags))
        for p in self.firewall_policies:
            for r in p.rules:
                for end in (r.src, r.dst):
                    out.update(dict.fromkeys((p.project, t) for t in tag_expression(end)))
        for a in self.policy_sets:
            if a.application is not None:
                out[(a.project, f"application={a.application}")] = None
        return list(out)

    def network(self, name: str) -> Network:
        return next(n for n in self.networks if n.name == name)


# -- positions ----------------------------------------------------------------------------
Path_ = tuple[str | int, ...]


@dataclass
class _Marks:
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[Path_, tuple[int, int]]] = field(default_factory=list)

    def at(self, path: Path_, key: bool = False) -> tuple[int, int]:
        """The position of ``path`` (its key when ``key``), else of its nearest ancestor."""
        p = path
        while True:
            table = self.keys if key else self.values
            if p in table:
                return table[p]
            if p in self.values:
                return self.values[p]
            if not p:
                return (1, 1)
            p = p[:-1]


def _pos(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _walk(node: yaml.Node, path: Path_, marks: _Marks) -> None:
    marks.values[path] = _pos(node)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = str(k.value)
            if key in seen:
                marks.duplicates.append(((*path, key), _pos(k)))
            seen.add(key)
            marks.keys[(*path, key)] = _pos(k)
            _walk(v, (*path, key), marks)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, (*path, i), marks)


# -- parsing ------------------------------------------------------------------------------
def parse(text: str, source: str = "<topology>") -> Topology:
    """A validated ``Topology`` from YAML text; ``TopologyError`` lists every problem."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        raise TopologyError([f"{source}:{where}: not valid YAML: {e.problem or e}"]) from None
    except yaml.YAMLError as e:
        raise TopologyError([f"{source}:1:1: not valid YAML: {e}"]) from None
    marks = _Marks()
    if root is not None:
        _walk(root, (), marks)
    errors = [f"{source}:{line}:{col}: duplicate key {path[-1]!r}"
              for path, (line, col) in marks.duplicates]
    if not isinstance(data, dict):
        errors.append(f"{source}:1:1: the file must be a mapping with name, nodes, ...")
        raise TopologyError(errors)
    errors += [f"{source}:{line}:{col}: {msg}"
               for (line, col), msg in sorted(_schema_errors(data, marks))]
    if errors:
        raise TopologyError(errors)
    errors = [f"{source}:{line}:{col}: {msg}" for (line, col), msg in _semantic_errors(
        data, marks)]
    if errors:
        raise TopologyError(errors)
    return _build(data, source)


def _schema_errors(data: Any, marks: _Marks) -> Iterator[tuple[tuple[int, int], str]]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for err in validator.iter_errors(data):
        path: Path_ = tuple(err.absolute_path)
        where = "/".join(str(p) for p in path) or "the file"
        if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
            known = set(err.schema.get("properties", {}))
            for key in sorted(str(k) for k in err.instance if k not in known):
                allowed = ", ".join(sorted(known))
                yield (marks.at((*path, key), key=True),
                       f"unknown key {key!r} in {where} (allowed: {allowed})")
        elif err.validator == "required":
            yield marks.at(path), f"{where}: {err.message}"
        elif err.validator in ("pattern", "oneOf", "enum", "type") and path:
            yield marks.at(path), f"{where}: bad value {err.instance!r}: {_hint(err)}"
        else:
            yield marks.at(path), f"{where}: {err.message}"


def _hint(err: jsonschema.ValidationError) -> str:
    field_ = str(err.absolute_path[-1]) if err.absolute_path else ""
    if field_ in ("name", "node", "network", "project") or (
            len(err.absolute_path) >= 2 and err.absolute_path[-2] in ("nodes", "projects",
                                                                      "networks")):
        return "expected a name: lowercase letters, digits and '-', starting with a letter"
    if field_ in ("src_ports", "dst_ports"):
        return 'expected "any", a port such as "80" or a range such as "8000-8100"'
    if field_ == "protocol":
        return "expected any, tcp, udp, icmp or a protocol number"
    if field_ == "action":
        return "expected pass or deny"
    if field_ == "direction":
        return 'expected ">" or "<>"'
    return str(err.message)


def _semantic_errors(data: dict[str, Any],
                     marks: _Marks) -> Iterator[tuple[tuple[int, int], str]]:
    if len(data["name"]) and data["name"].endswith("-"):
        yield marks.at(("name",)), "the lab name must not end with '-'"
    projects = set(data.get("projects", [])) | {DEFAULT_PROJECT}
    nodes = data["nodes"]
    names: dict[str, Path_] = {}

    def unique(name: str, path: Path_, what: str) -> Iterator[tuple[tuple[int, int], str]]:
        if name == "ul":
            yield marks.at(path), f"{what} {name!r}: the name 'ul' is the lab's underlay"
        elif name in names:
            yield marks.at(path), (f"{what} {name!r}: the name is taken already (nodes and "
                                   "workloads share one namespace)")
        names[name] = path

    for i, n in enumerate(nodes):
        yield from unique(n, ("nodes", i), "node")
    for i, w in enumerate(data.get("workloads", [])):
        yield from unique(w["name"], ("workloads", i, "name"), "workload")
    seen_projects: set[str] = set()
    for i, p in enumerate(data.get("projects", [])):
        if p in seen_projects:
            yield marks.at(("projects", i)), f"project {p!r} is listed twice"
        seen_projects.add(p)
    networks: dict[str, tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network | None]] = {}
    for i, n in enumerate(data.get("networks", [])):
        proj = n.get("project", DEFAULT_PROJECT)
        if proj not in projects:
            yield (marks.at(("networks", i, "project")),
                   f"network {n['name']!r}: unknown project {proj!r} (list it in projects)")
        if n["name"] in networks:
            yield (marks.at(("networks", i, "name")),
                   f"network {n['name']!r} is defined twice (network names are unique in a "
                   "lab, across projects)")
            continue
        networks[n["name"]] = (proj, None)  # known, even when its subnet is bad
        try:
            net = ipaddress.ip_network(n["subnet"], strict=True)
        except ValueError as e:
            yield (marks.at(("networks", i, "subnet")),
                   f"network {n['name']!r}: bad subnet {n['subnet']!r}: {e}")
            continue
        if net.num_addresses < 4:
            yield (marks.at(("networks", i, "subnet")),
                   f"network {n['name']!r}: subnet {net} is too small (at least a /30)")
            continue
        for other, (oproj, onet) in networks.items():
            if onet is not None and oproj == proj and net.version == onet.version \
                    and net.overlaps(onet):
                yield (marks.at(("networks", i, "subnet")),
                       f"network {n['name']!r}: subnet {net} overlaps {other!r} ({onet}) in "
                       f"project {proj!r} (overlaps are fine across projects)")
        networks[n["name"]] = (proj, net)
    for i, w in enumerate(data.get("workloads", [])):
        if w["node"] not in nodes:
            yield (marks.at(("workloads", i, "node")),
                   f"workload {w['name']!r}: unknown node {w['node']!r} "
                   f"(nodes: {', '.join(nodes)})")
        if w["network"] not in networks:
            yield (marks.at(("workloads", i, "network")),
                   f"workload {w['name']!r}: unknown network {w['network']!r}")
    for i, p in enumerate(data.get("policies", [])):
        proj = p.get("project", DEFAULT_PROJECT)
        if proj not in projects:
            yield (marks.at(("policies", i, "project")),
                   f"policy {p['name']!r}: unknown project {proj!r} (list it in projects)")
        for j, n in enumerate(p["networks"]):
            if n not in networks:
                yield (marks.at(("policies", i, "networks", j)),
                       f"policy {p['name']!r}: unknown network {n!r}")
        for j, r in enumerate(p["rules"]):
            for end in ("src", "dst"):
                if r[end] in networks:
                    continue
                try:
                    ipaddress.ip_network(r[end], strict=True)
                except ValueError:
                    yield (marks.at(("policies", i, "rules", j, end)),
                           f"policy {p['name']!r} rule {j + 1}: {end} {r[end]!r} is neither a "
                           "network of the lab nor a CIDR")
            for end in ("src_ports", "dst_ports"):
                yield from _port_range_errors(r, end, ("policies", i, "rules", j), marks,
                                              f"policy {p['name']!r} rule {j + 1}")
    yield from _security_errors(data, marks, set(networks), projects)


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError:
        return False
    return True


def _port_range_errors(rule: Mapping[str, Any], key: str, path: Path_, marks: _Marks,
                       where: str) -> Iterator[tuple[tuple[int, int], str]]:
    """A rule's port range ``key`` (the schema checked its form) must not run backwards or
    past 65535."""
    lo, hi = _ports(rule.get(key, "any"))
    if lo > hi or hi > 65535:
        yield marks.at((*path, key)), f"{where}: bad port range {rule.get(key)!r}"


def _security_errors(data: dict[str, Any], marks: _Marks, networks: set[str],
                     projects: set[str]) -> Iterator[tuple[tuple[int, int], str]]:
    """Security groups, tags, address groups, firewall policies and policy sets."""
    def tag_list(tags: list[str], path: Path_, what: str
                 ) -> Iterator[tuple[tuple[int, int], str]]:
        seen: set[str] = set()
        for k, t in enumerate(tags):
            kind = t.partition("=")[0]
            if kind != "label" and kind in seen:
                yield (marks.at((*path, k)),
                       f"{what}: a second {kind!r} tag (only label may repeat)")
            seen.add(kind)

    for proj, tags in data.get("project_tags", {}).items():
        if proj not in projects:
            yield (marks.at(("project_tags", proj), key=True),
                   f"project_tags: unknown project {proj!r} (list it in projects)")
        yield from tag_list(tags, ("project_tags", proj), f"project {proj!r}")
    for i, n in enumerate(data.get("networks", [])):
        yield from tag_list(n.get("tags", []), ("networks", i, "tags"),
                            f"network {n['name']!r}")

    def unique(section: str) -> dict[str, int]:
        return {e["name"]: i for i, e in enumerate(data.get(section, []))}

    groups, addr_groups = unique("security_groups"), unique("address_groups")
    fw_policies = unique("firewall_policies")
    for section in ("security_groups", "address_groups", "firewall_policies",
                    "application_policy_sets"):
        seen: set[str] = set()
        for i, e in enumerate(data.get(section, [])):
            if e["name"] in seen:
                yield (marks.at((section, i, "name")),
                       f"{section}: {e['name']!r} is defined twice")
            seen.add(e["name"])
            proj = e.get("project", DEFAULT_PROJECT)
            if proj not in projects:
                yield (marks.at((section, i, "project")),
                       f"{section}: {e['name']!r}: unknown project {proj!r}")
    for i, w in enumerate(data.get("workloads", [])):
        for k, g in enumerate(w.get("security_groups", [])):
            if g not in groups:
                yield (marks.at(("workloads", i, "security_groups", k)),
                       f"workload {w['name']!r}: unknown security group {g!r}")
        yield from tag_list(w.get("tags", []), ("workloads", i, "tags"),
                            f"workload {w['name']!r}")
    for i, a in enumerate(data.get("address_groups", [])):
        for k, x in enumerate(a["prefixes"]):
            if not _is_cidr(x):
                yield (marks.at(("address_groups", i, "prefixes", k)),
                       f"address group {a['name']!r}: bad prefix {x!r}")
    for i, g in enumerate(data.get("security_groups", [])):
        for j, r in enumerate(g["rules"]):
            where = f"security group {g['name']!r} rule {j + 1}"
            remote = r.get("remote", "any")
            if remote != "any" and remote not in groups and not _is_cidr(remote):
                yield (marks.at(("security_groups", i, "rules", j, "remote")),
                       f"{where}: remote {remote!r} is neither any, a CIDR nor a security "
                       "group of the lab")
            yield from _port_range_errors(r, "ports", ("security_groups", i, "rules", j),
                                          marks, where)
    tag_re = re.compile(str(TAG["pattern"]))
    for i, p in enumerate(data.get("firewall_policies", [])):
        for j, r in enumerate(p["rules"]):
            where = f"firewall policy {p['name']!r} rule {j + 1}"
            for end in ("from", "to"):
                text = r[end]
                tags = tag_expression(text)
                if tags:
                    bad = [t for t in tags if not tag_re.match(t)]
                    if bad:
                        yield (marks.at(("firewall_policies", i, "rules", j, end)),
                               f"{where}: {end} {bad[0]!r} is not a tag type=value "
                               f"(types: {', '.join(TAG_TYPES)})")
                elif text != "any" and text not in networks and text not in addr_groups \
                        and not _is_cidr(text):
                    yield (marks.at(("firewall_policies", i, "rules", j, end)),
                           f"{where}: {end} {text!r} is neither any, tags, a network, an "
                           "address group of the lab nor a CIDR")
            yield from _port_range_errors(r, "ports", ("firewall_policies", i, "rules", j),
                                          marks, where)
    for i, a in enumerate(data.get("application_policy_sets", [])):
        for k, name in enumerate(a["policies"]):
            if name not in fw_policies:
                yield (marks.at(("application_policy_sets", i, "policies", k)),
                       f"application policy set {a['name']!r}: unknown firewall policy "
                       f"{name!r}")
        app = a.get("application")
        if app is not None and not tag_re.match(f"application={app}"):
            yield (marks.at(("application_policy_sets", i, "application")),
                   f"application policy set {a['name']!r}: bad application {app!r}")


def tag_expression(text: str) -> list[str]:
    """The tags of an endpoint written ``type=value & type=value`` ([] if it is not one)."""
    if "=" not in text:
        return []
    return [t.strip() for t in text.split("&")]


def _ports(value: str | int) -> tuple[int, int]:
    text = str(value)
    if text == "any":
        return (-1, -1)
    lo, _, hi = text.partition("-")
    return (int(lo), int(hi or lo))


def _build(data: dict[str, Any], source: str) -> Topology:
    return Topology(
        name=data["name"], nodes=tuple(data["nodes"]),
        projects=tuple(data.get("projects", [])),
        networks=tuple(Network(n["name"], n.get("project", DEFAULT_PROJECT),
                               str(ipaddress.ip_network(n["subnet"])),
                               tuple(n.get("tags", ())))
                       for n in data.get("networks", [])),
        workloads=tuple(Workload(w["name"], w["node"], w["network"],
                                 tuple(w.get("security_groups", ())), tuple(w.get("tags", ())))
                        for w in data.get("workloads", [])),
        project_tags=tuple((p, tuple(t)) for p, t in data.get("project_tags", {}).items()),
        address_groups=tuple(AddressGroup(a["name"], a.get("project", DEFAULT_PROJECT),
                                          tuple(str(ipaddress.ip_network(x))
                                                for x in a["prefixes"]))
                             for a in data.get("address_groups", [])),
        security_groups=tuple(SecurityGroup(
            g["name"], g.get("project", DEFAULT_PROJECT),
            tuple(SgRule(r["direction"], str(r.get("protocol", "any")),
                         _ports(r.get("ports", "any")), r.get("remote", "any"),
                         r.get("ethertype", "IPv4")) for r in g["rules"]))
            for g in data.get("security_groups", [])),
        firewall_policies=tuple(FirewallPolicy(
            p["name"], p.get("project", DEFAULT_PROJECT),
            tuple(FwRule(r["action"], str(r.get("protocol", "any")),
                         _ports(r.get("ports", "any")), r["from"], r["to"],
                         r.get("direction", ">"), tuple(r.get("match_tags", ())))
                  for r in p["rules"]))
            for p in data.get("firewall_policies", [])),
        policy_sets=tuple(PolicySet(a["name"], a.get("project", DEFAULT_PROJECT),
                                    a.get("application"), tuple(a["policies"]))
                          for a in data.get("application_policy_sets", [])),
        policies=tuple(Policy(
            p["name"], p.get("project", DEFAULT_PROJECT), tuple(p["networks"]),
            tuple(Rule(r["action"], str(r.get("protocol", "any")), r["src"], r["dst"],
                       _ports(r.get("src_ports", "any")), _ports(r.get("dst_ports", "any")),
                       r.get("direction", ">")) for r in p["rules"]))
            for p in data.get("policies", [])),
        source=source)
