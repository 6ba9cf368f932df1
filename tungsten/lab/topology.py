"""The lab topology file: parsing and validation (pure: text in, ``Topology`` or errors out).

YAML is read with PyYAML, checked against ``SCHEMA`` (JSON Schema, documented in
``docs/lab.md``) with jsonschema, then for what a schema cannot say: references between
sections, subnets, overlaps.  Every error carries the file position (``line:col``, 1-based)
of the offending key or value.
"""

from __future__ import annotations

import ipaddress
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
            "properties": {"name": NAME, "project": NAME, "subnet": {"type": "string"}}}},
        "workloads": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "node", "network"],
            "properties": {"name": NAME, "node": NAME, "network": NAME}}},
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
                        "protocol": {"oneOf": [
                            {"enum": ["any", "tcp", "udp", "icmp"]},
                            {"type": "integer", "minimum": 0, "maximum": 255},
                            {"type": "string", "pattern": "^[0-9]{1,3}$"}]},
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

    @property
    def fq_name(self) -> list[str]:
        return [DOMAIN, self.project, self.name]


@dataclass(frozen=True)
class Workload:
    name: str
    node: str
    network: str


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
class Topology:
    name: str
    nodes: tuple[str, ...]
    projects: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()
    workloads: tuple[Workload, ...] = ()
    policies: tuple[Policy, ...] = ()
    source: str = field(default="", compare=False)

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
                lo, hi = _ports(r.get(end, "any"))
                if lo > hi or hi > 65535:
                    yield (marks.at(("policies", i, "rules", j, end)),
                           f"policy {p['name']!r} rule {j + 1}: bad port range {r[end]!r}")


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
                               str(ipaddress.ip_network(n["subnet"])))
                       for n in data.get("networks", [])),
        workloads=tuple(Workload(w["name"], w["node"], w["network"])
                        for w in data.get("workloads", [])),
        policies=tuple(Policy(
            p["name"], p.get("project", DEFAULT_PROJECT), tuple(p["networks"]),
            tuple(Rule(r["action"], str(r.get("protocol", "any")), r["src"], r["dst"],
                       _ports(r.get("src_ports", "any")), _ports(r.get("dst_ports", "any")),
                       r.get("direction", ">")) for r in p["rules"]))
            for p in data.get("policies", [])),
        source=source)
