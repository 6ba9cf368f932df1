"""The VNC resource schema, loaded once from the declarations in ``data/``.

Every resource type is data: its parents, properties (simple or complex, with enums and
ranges), list and map collections, refs with their link-attribute type, children and back
refs.  Validation, routing, rendering, the homepage and the docs are all driven from here, so
adding a type is adding an entry to ``data/resources.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

SIMPLE_TYPES = frozenset(
    {"string", "integer", "boolean", "dateTime", "time", "unsignedLong", "type"}
)

# Properties every resource type carries besides its own.
COMMON_PROPS: dict[str, dict[str, Any]] = {
    "id_perms": {"type": "IdPermsType"},
    "perms2": {"type": "PermType2"},
    "annotations": {"type": "KeyValuePairs"},
    "display_name": {"type": "string"},
}

CONFIG_ROOT = "config-root"


@dataclass(frozen=True)
class FieldSpec:
    """A property of a resource, or a field of a complex type."""

    name: str
    type: str
    is_list: bool = False
    enum: tuple[str, ...] | None = None
    range: tuple[int, int] | None = None
    default: Any = None
    required: bool = False
    system: bool = False

    @property
    def simple(self) -> bool:
        return self.type in SIMPLE_TYPES


@dataclass(frozen=True)
class Collection:
    """A list or map property: a wrapper object holding one list of elements."""

    field: str  # the property name, e.g. ``annotations``
    kind: str  # "list" or "map"
    wrapper: str  # the wrapper key, e.g. ``key_value_pair``
    element_type: str  # the element type, e.g. ``KeyValuePair``
    key_name: str | None  # for maps: the element field that is the key


@dataclass(frozen=True)
class RefSpec:
    field: str  # e.g. ``network_ipam_refs``
    to: str  # target resource type, e.g. ``network-ipam``
    attr: str | None  # link-attribute complex type, or None
    derived: bool = False


@dataclass(frozen=True)
class ChildSpec:
    field: str  # e.g. ``routing_instances``
    type: str  # child resource type
    derived: bool = False


@dataclass(frozen=True)
class ResourceType:
    name: str  # hyphenated resource type, e.g. ``virtual-network``
    parents: tuple[str, ...]
    props: dict[str, FieldSpec]
    collections: dict[str, Collection]
    refs: dict[str, RefSpec]
    children: dict[str, ChildSpec]
    back_refs: tuple[str, ...]
    refs_by_target: dict[str, RefSpec] = field(default_factory=dict)

    @property
    def obj_type(self) -> str:
        return self.name.replace("-", "_")

    @property
    def plural(self) -> str:
        return self.name + "s"

    @property
    def root_child(self) -> bool:
        return self.parents == (CONFIG_ROOT,)

    def ref_to(self, target_type: str) -> RefSpec | None:
        return self.refs_by_target.get(target_type)


class Schema:
    """All resource and complex types, indexed for the server's hot paths."""

    def __init__(self, resources_data: dict[str, Any], complex_data: dict[str, Any]) -> None:
        self.complex: dict[str, dict[str, FieldSpec]] = {
            name: {f: _field(f, spec) for f, spec in fields.items()}
            for name, fields in complex_data.items()
        }
        self.types: dict[str, ResourceType] = {}
        for name, data in resources_data.items():
            if name == CONFIG_ROOT:
                continue
            self.types[name] = self._resource(name, data)
        self._by_any: dict[str, ResourceType] = {}
        for rt in self.types.values():
            self._by_any[rt.name] = rt
            self._by_any[rt.obj_type] = rt
        root = resources_data.get(CONFIG_ROOT, {})
        self.root_children = {
            f: ChildSpec(f, c["type"], c.get("derived", False))
            for f, c in root.get("children", {}).items()
            if c["type"] in self.types
        }
        # (parent type, child type) -> children field on the parent
        self._child_field: dict[tuple[str, str], ChildSpec] = {}
        for rt in self.types.values():
            for child in rt.children.values():
                self._child_field[(rt.name, child.type)] = child
        for child in self.root_children.values():
            self._child_field[(CONFIG_ROOT, child.type)] = child
        # Back-ref field name on a target, computed from the referrer's ref.
        self.back_ref_field = {rt.name: rt.obj_type + "_back_refs" for rt in self.types.values()}

    def _resource(self, name: str, data: dict[str, Any]) -> ResourceType:
        props = {p: _field(p, s) for p, s in COMMON_PROPS.items()}
        props.update({p: _field(p, s) for p, s in data.get("props", {}).items()})
        collections: dict[str, Collection] = {}
        for kind, key in (("list", "list_props"), ("map", "map_props")):
            for p in data.get(key, []):
                collections[p] = self._collection(p, kind, props[p].type)
        refs = {
            f: RefSpec(f, r["to"], r.get("attr"), r.get("derived", False))
            for f, r in data.get("refs", {}).items()
        }
        children = {
            f: ChildSpec(f, c["type"], c.get("derived", False))
            for f, c in data.get("children", {}).items()
        }
        return ResourceType(
            name=name,
            parents=tuple(data.get("parents", [])),
            props=props,
            collections=collections,
            refs=refs,
            children=children,
            back_refs=tuple(data.get("back_refs", [])),
            refs_by_target={r.to: r for r in refs.values()},
        )

    def _collection(self, prop: str, kind: str, wrapper_type: str) -> Collection:
        fields = self.complex[wrapper_type]
        (wrapper, spec), = fields.items()
        key_name = None
        if kind == "map":
            elem = self.complex.get(spec.type, {})
            key_name = next((k for k in ("key", "name") if k in elem), next(iter(elem), None))
        return Collection(prop, kind, wrapper, spec.type, key_name)

    def resource(self, name: str) -> ResourceType | None:
        """Look a resource type up by its hyphenated or underscored name."""
        return self._by_any.get(name)

    def child_field(self, parent_type: str, child_type: str) -> ChildSpec | None:
        return self._child_field.get((parent_type, child_type))


def _field(name: str, spec: dict[str, Any]) -> FieldSpec:
    return FieldSpec(
        name=name,
        type=spec["type"],
        is_list=bool(spec.get("list", False)),
        enum=tuple(spec["enum"]) if "enum" in spec else None,
        range=(spec["range"][0], spec["range"][1]) if "range" in spec else None,
        default=spec.get("default"),
        required=bool(spec.get("required", False)),
        system=bool(spec.get("system", False)),
    )


@cache
def load_schema() -> Schema:
    """The schema shipped with the package (loaded once per process)."""
    data = resources.files("tungsten.model") / "data"
    res = json.loads((data / "resources.json").read_text())
    cplx = json.loads((data / "complex_types.json").read_text())
    return Schema(res, cplx)
