"""An OpenAPI 3.0 document of the VNC REST API, generated from the schema.

Every complex type and every resource type becomes a component schema; every resource type
gets its collection and item paths, and every action the homepage advertises gets its own
path.  Schemas are written the way the server validates: explicit nulls are accepted
everywhere (TF's client sends unset sub-fields as null) and unknown fields are refused.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

from tungsten import __version__
from tungsten.model.schema import FieldSpec, ResourceType, Schema

Json = dict[str, Any]

_SCHEMAS = "#/components/schemas/"
_RESPONSES = "#/components/responses/"

# The plain-text error statuses the server answers with, and what each means.
ERROR_STATUSES: dict[int, str] = {
    400: "Bad request: malformed JSON, a bad property, reference or parameter",
    401: "Authentication required or failed (token auth only)",
    403: "Forbidden: the change is not allowed",
    404: "Unknown resource type, id or name",
    409: "Conflict: duplicate name or id, or the object is still in use",
}

# Query parameters of GET /<type>s, with TF's wire forms (booleans arrive as "True"/"False").
LIST_PARAMS: list[tuple[str, str]] = [
    ("parent_fq_name_str", "Colon-joined fq_name of the parent; wins over parent_id"),
    ("parent_type", "Restricts parent_fq_name_str to one parent type"),
    ("parent_id", "A parent uuid or a comma-joined list of them"),
    ("back_ref_id", "Only objects that refer to one of these (comma-joined) uuids"),
    ("obj_uuids", "Only these (comma-joined) uuids"),
    ("fq_names", "Only these comma-joined, colon-joined fq_names"),
    ("fields", "Comma-joined extra fields to return for each object"),
    ("detail", "True: return whole objects"),
    ("count", "True: return only the number of objects"),
    ("shared", "True: add objects shared with the caller"),
    ("filters", 'Property filters: name=="json value",other==false'),
    ("exclude_hrefs", "Present: leave the hrefs out"),
    ("page_marker", "Uuid after which the page starts (from the previous page's marker)"),
    ("page_limit", "Page size, a positive integer; the reply then carries marker"),
]

READ_PARAMS: list[tuple[str, str]] = [
    ("fields", "Comma-joined fields to return (id_perms and perms2 always come back)"),
    ("exclude_back_refs", "Present: leave the back refs out"),
    ("exclude_children", "Present: leave the children out"),
    ("exclude_hrefs", "Present: leave the hrefs out"),
]

# Built once per Schema object: the document is large and the schema never changes.
_CACHE: weakref.WeakKeyDictionary[Schema, Json] = weakref.WeakKeyDictionary()


def openapi_document(schema: Schema, server_url: str) -> dict[str, Any]:
    """The document for ``schema`` served at ``server_url``.

    The nested parts are shared with a per-schema cache: treat the result as read-only.
    """
    doc = _CACHE.get(schema)
    if doc is None:
        doc = _build(schema)
        _CACHE[schema] = doc
    return {**doc, "servers": [{"url": server_url}]}


# ----------------------------------------------------------------------------------------------
# small schema helpers
def _ref(name: str) -> Json:
    return {"$ref": _SCHEMAS + name}


def _nullable(s: Json) -> Json:
    return {**s, "nullable": True}


def _str(desc: str | None = None, nullable: bool = False) -> Json:
    s: Json = {"type": "string"}
    if desc:
        s["description"] = desc
    return _nullable(s) if nullable else s


def _strings(nullable: bool = False) -> Json:
    s: Json = {"type": "array", "items": {"type": "string"}}
    return _nullable(s) if nullable else s


def _obj(props: Json, required: list[str] | None = None, extra: bool | Json = True) -> Json:
    s: Json = {"type": "object", "properties": props}
    if required:
        s["required"] = required
    if extra is not True:
        s["additionalProperties"] = extra
    return s


def _json_body(s: Json, required: bool = True) -> Json:
    return {"required": required, "content": {"application/json": {"schema": s}}}


def _ok(desc: str, s: Json | None = None, empty: bool = False) -> Json:
    content: Json = {}
    if s is not None:
        content["application/json"] = {"schema": s}
    if empty:
        content["text/plain"] = {"schema": {"type": "string", "maxLength": 0}}
    out: Json = {"description": desc}
    if content:
        out["content"] = content
    return out


def _responses(ok: Json, *errors: int) -> Json:
    out: Json = {"200": ok}
    for status in errors:
        out[str(status)] = {"$ref": f"{_RESPONSES}E{status}"}
    return out


def _query(name: str, desc: str, required: bool = False) -> Json:
    return {"name": name, "in": "query", "required": required, "description": desc,
            "schema": {"type": "string"}}


_ID_PARAM: Json = {"name": "id", "in": "path", "required": True, "description": "Object uuid",
                   "schema": {"type": "string"}}


# ----------------------------------------------------------------------------------------------
# fields, complex types and resource types
def field_schema(schema: Schema, spec: FieldSpec) -> Json:
    """The schema of one property or complex-type field (null always allowed)."""
    item = _scalar_schema(schema, spec)
    if spec.is_list:
        return {"type": "array", "nullable": True, "items": item}
    return item


def _scalar_schema(schema: Schema, spec: FieldSpec) -> Json:
    t = spec.type
    s: Json
    if t in ("string", "dateTime", "time", "type"):
        s = {"type": "string", "nullable": True}
        if spec.enum is not None:
            # null must be listed too: enum is checked before nullable by JSON Schema tools
            s["enum"] = [*spec.enum, None]
    elif t in ("integer", "unsignedLong"):
        s = {"type": "integer", "nullable": True}
        if spec.range is not None:
            s["minimum"], s["maximum"] = spec.range
    elif t == "boolean":
        s = {"type": "boolean", "nullable": True}
    elif t in schema.complex:
        return _ref(t)  # complex components are nullable themselves
    else:
        # a type the schema does not describe: the server accepts any JSON there
        return {"description": f"{t} (not described: any JSON value)"}
    if spec.default is not None:
        s["default"] = spec.default
    return s


def complex_schema(schema: Schema, name: str) -> Json:
    fields = schema.complex[name]
    return {
        "type": "object",
        "nullable": True,
        "title": name,
        "properties": {f: field_schema(schema, spec) for f, spec in fields.items()},
        "additionalProperties": False,
    }


def ref_component(attr: str | None) -> str:
    """The component name of a ref entry, per link-attribute type."""
    return f"Ref.{attr}" if attr else "Ref"


def _ref_entry(schema: Schema, attr: str | None) -> Json:
    attr_schema: Json
    if attr is None:
        attr_schema = {"description": "No link attribute: ignored, null on read",
                       "nullable": True}
    elif attr in schema.complex:
        attr_schema = _ref(attr)
    else:
        attr_schema = {"description": f"{attr} (any JSON value)"}
    return _obj({
        "to": {**_strings(nullable=True), "description": "fq_name of the target"},
        "uuid": _str("uuid of the target; wins over to", nullable=True),
        "attr": attr_schema,
        "href": _str("Given on read", nullable=True),
    })


def resource_schema(schema: Schema, rt: ResourceType) -> Json:
    props: Json = {
        "uuid": _str("Canonical uuid; allocated by the server when null", nullable=True),
        "fq_name": {**_strings(), "minItems": 1,
                    "description": "The parent's fq_name plus the object's name"},
        "parent_type": _nullable({"type": "string", "enum": [*rt.parents, None]}),
        "parent_uuid": _str("Computed by the server", nullable=True),
        "parent_href": _str("Given on read", nullable=True),
        "href": _str("Given on read", nullable=True),
        "name": _str("fq_name[-1]; given on read", nullable=True),
    }
    for name, spec in rt.props.items():
        s = field_schema(schema, spec)
        if spec.system:
            s = {**s, "description": "Set by the server"} if "$ref" not in s else s
        props[name] = s
    for name, ref in rt.refs.items():
        props[name] = {"type": "array", "nullable": True,
                       "description": f"Refs to {ref.to}; a PUT replaces them all",
                       "items": _ref(ref_component(ref.attr))}
    read_only = {"type": "array", "nullable": True, "readOnly": True,
                 "items": _ref("Link")}
    for name in rt.children:
        props[name] = {**read_only, "description": "Children (read only)"}
    for name in rt.back_refs:
        props[name] = {**read_only, "description": "Back refs (read only)"}
    return {
        "type": "object",
        "title": rt.name,
        "properties": props,
        "additionalProperties": False,
    }


# ----------------------------------------------------------------------------------------------
# paths
def _resource_paths(rt: ResourceType) -> dict[str, Json]:
    key, plural, tag = rt.name, rt.plural, rt.name
    oid = rt.obj_type
    body = _obj({key: _ref(key)}, [key])
    created = _obj({key: _obj({
        "name": _str(), "fq_name": _strings(), "uuid": _str(), "href": _str(),
        "parent_type": _str(), "parent_uuid": _str(), "parent_href": _str(),
    })})
    entry = _obj({"uuid": _str(), "fq_name": _strings(), "href": _str()})
    listed = _obj({
        plural: {"oneOf": [
            {"type": "array", "items": entry},
            {"type": "array", "items": _obj({key: _ref(key)})},
            _obj({"count": {"type": "integer"}}, ["count"]),
        ]},
        "marker": _str("Next page marker (paginated replies only)", nullable=True),
    }, [plural])
    updated = _obj({key: _obj({"uuid": _str(), "href": _str()})})
    collection: Json = {
        "post": {
            "tags": [tag], "operationId": f"create_{oid}", "summary": f"Create a {key}",
            "requestBody": _json_body(body),
            "responses": _responses(_ok("Created", created), 400, 401, 403, 404, 409),
        },
        "get": {
            "tags": [tag], "operationId": f"list_{oid}s", "summary": f"List {plural}",
            "parameters": [_query(n, d) for n, d in LIST_PARAMS],
            "responses": _responses(_ok("The objects", listed), 400, 401, 404),
        },
    }
    item: Json = {
        "parameters": [_ID_PARAM],
        "get": {
            "tags": [tag], "operationId": f"read_{oid}", "summary": f"Read a {key}",
            "parameters": [_query(n, d) for n, d in READ_PARAMS],
            "responses": _responses(_ok("The object", body), 401, 404),
        },
        "put": {
            "tags": [tag], "operationId": f"update_{oid}",
            "summary": f"Update a {key}: fields present replace the stored ones, null deletes",
            "requestBody": _json_body(body, required=False),
            "responses": _responses(_ok("Updated (empty when nothing changed)", updated,
                                        empty=True), 400, 401, 403, 404, 409),
        },
        "delete": {
            "tags": [tag], "operationId": f"delete_{oid}", "summary": f"Delete a {key}",
            "responses": _responses(_ok("Deleted", empty=True), 401, 403, 404, 409),
        },
    }
    return {f"/{plural}": collection, f"/{key}/{{id}}": item}


def _list_bulk_body() -> Json:
    props: Json = {"type": _str("Resource type, hyphenated or underscored")}
    for name, desc in LIST_PARAMS:
        props[name] = {"description": desc, "nullable": True}
    return _obj(props, ["type"])


_ANY: Json = {"description": "Any JSON value", "nullable": True}
_UUID_OUT: Json = _obj({"uuid": _str()})
_ACCESS: Json = {"type": "integer", "minimum": 0, "maximum": 7, "nullable": True}


def _action_specs() -> dict[str, Json]:
    """Per action link name: request body or query, and the 200 reply."""
    return {
        "name-to-id": {
            "body": _obj({"type": _str(), "fq_name": _strings()}, ["type", "fq_name"]),
            "ok": _ok("The uuid", _UUID_OUT), "errors": (400, 404),
        },
        "id-to-name": {
            "body": _obj({"uuid": _str()}, ["uuid"]),
            "ok": _ok("The name and type", _obj({"fq_name": _strings(), "type": _str()})),
            "errors": (400, 404),
        },
        "ref-update": {
            "body": _obj({
                "type": _str(), "uuid": _str(), "ref-type": _str(),
                "ref-uuid": _str(nullable=True), "ref-fq-name": _strings(nullable=True),
                "operation": _str("ADD or DELETE (any case)"), "attr": _ANY,
                "relax_ref_for_delete": {"type": "boolean", "nullable": True},
            }, ["type", "uuid", "ref-type", "operation"]),
            "ok": _ok("Done", _UUID_OUT), "errors": (400, 403, 404, 409),
        },
        "ref-relax-for-delete": {
            "body": _obj({"uuid": _str(), "ref-uuid": _str()}, ["uuid", "ref-uuid"]),
            "ok": _ok("Done", _UUID_OUT), "errors": (400, 404),
        },
        "prop-collection-get": {
            "query": [_query("uuid", "Object uuid", True),
                      _query("fields", "Comma-joined list or map properties", True),
                      _query("position", "Only the element at this position")],
            "ok": _ok("[value, position] pairs per field", {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "array"}}}),
            "errors": (400, 404),
        },
        "prop-collection-update": {
            "body": _obj({"uuid": _str(), "updates": {"type": "array", "items": _obj({
                "field": _str(),
                "operation": {"type": "string", "enum": ["add", "modify", "delete", "set"]},
                "value": _ANY,
                "position": {"description": "List position or map key", "nullable": True},
            }, ["field", "operation"])}}, ["uuid", "updates"]),
            "ok": _ok("Done", empty=True), "errors": (400, 403, 404, 409),
        },
        "useragent-keyvalue": {
            "body": _obj({
                "operation": {"type": "string", "enum": ["STORE", "RETRIEVE", "DELETE"]},
                "key": {"description": "A key, a list of keys, or null (all) to retrieve",
                        "nullable": True},
                "value": _ANY,
            }, ["operation", "key"]),
            "ok": _ok("The value (RETRIEVE) or nothing", _obj({"value": _ANY}), empty=True),
            "errors": (400, 404),
        },
        "list-bulk-collection": {
            "body": _list_bulk_body(),
            "ok": _ok("The objects, as GET /<type>s", {"type": "object"}),
            "errors": (400, 404),
        },
        "chown": {
            "body": _obj({"uuid": _str(), "owner": _str("Project uuid")}, ["uuid", "owner"]),
            "ok": _ok("Done", {"type": "object"}), "errors": (400, 403, 404),
        },
        "chmod": {
            "body": _obj({
                "uuid": _str(), "owner": _str(nullable=True), "owner_access": _ACCESS,
                "global_access": _ACCESS,
                "share": {"type": "array", "nullable": True, "items": _obj(
                    {"tenant": _str(), "tenant_access": _ACCESS}, ["tenant", "tenant_access"])},
            }, ["uuid"]),
            "ok": _ok("Done", {"type": "object"}), "errors": (400, 403, 404),
        },
        "set-tag": {
            "body": _obj({"obj_type": _str(), "obj_uuid": _str()}, ["obj_type", "obj_uuid"],
                         extra=_nullable(_obj({
                             "value": _ANY, "is_global": {"type": "boolean", "nullable": True},
                             "add_values": {"type": "array", "nullable": True, "items": {}},
                             "delete_values": {"type": "array", "nullable": True, "items": {}},
                         }))),
            "ok": _ok("Done", {"type": "object"}), "errors": (400, 404),
        },
        "obj-perms": {
            "query": [_query("uuid", "Object uuid")],
            "ok": _ok("The caller's permissions", _obj({
                "token_info": _ANY, "is_cloud_admin_role": {"type": "boolean"},
                "is_global_read_only_role": {"type": "boolean"}, "permissions": _str()})),
            "errors": (404,),
        },
        "aaa-mode": {
            "body": _obj({"aaa-mode": {"type": "string",
                                       "enum": ["no-auth", "cloud-admin", "rbac"]}},
                         ["aaa-mode"]),
            "ok": _ok("The mode", _obj({"aaa-mode": _str()})), "errors": (400,),
            "also_get": True,
        },
        "virtual-network-ip-alloc": {
            "body": _obj({"count": {"type": "integer", "minimum": 1, "nullable": True},
                          "subnet": _str("Subnet uuid", nullable=True),
                          "family": {"type": "string", "enum": ["v4", "v6", None],
                                     "nullable": True}}),
            "ok": _ok("The addresses", _obj({"ip_addr": _strings()})),
            "errors": (400, 404, 409),
        },
        "virtual-network-ip-free": {
            "body": _obj({"ip_addr": _strings()}, ["ip_addr"]),
            "ok": _ok("Done", empty=True), "errors": (400, 404),
        },
        "virtual-network-subnet-ip-count": {
            "body": _obj({"subnet_list": _strings()}, ["subnet_list"]),
            "ok": _ok("Addresses in use per subnet", _obj(
                {"ip_count_list": {"type": "array", "items": {"type": "integer"}}})),
            "errors": (400, 404),
        },
    }


def action_path(uri: str) -> str:
    """The OpenAPI path of an action URI (``%s`` is the network uuid)."""
    return uri.replace("%s", "{id}")


def _action_paths() -> dict[str, Json]:
    from tungsten.api.server import ACTIONS  # the homepage's list is the source of truth

    specs = _action_specs()
    paths: dict[str, Json] = {}
    for name, uri, method in ACTIONS:
        spec = specs.get(name, {"body": _ANY, "ok": _ok("Done", _ANY), "errors": (400, 404)})
        path = action_path(uri)
        op_id = "action_" + name.replace("-", "_")
        op: Json = {"tags": ["actions"], "operationId": op_id, "summary": f"The {name} action"}
        if "query" in spec:
            op["parameters"] = spec["query"]
        elif method != "GET":
            op["requestBody"] = _json_body(spec["body"])
        op["responses"] = _responses(spec["ok"], *spec["errors"], 401)
        item: Json = paths.setdefault(path, {})
        if "{id}" in path:
            item["parameters"] = [_ID_PARAM]
        item[method.lower()] = op
        if spec.get("also_get"):
            item["get"] = {"tags": ["actions"], "operationId": op_id + "_get",
                           "summary": f"Read the {name} setting",
                           "responses": _responses(spec["ok"], 401)}
    return paths


def _build(schema: Schema) -> Json:
    components: Json = {name: complex_schema(schema, name) for name in sorted(schema.complex)}
    attrs = {r.attr for rt in schema.types.values() for r in rt.refs.values()}
    for attr in sorted(attrs, key=lambda a: a or ""):
        components[ref_component(attr)] = _ref_entry(schema, attr)
    components["Link"] = _obj({"to": _strings(), "uuid": _str(), "attr": _ANY,
                               "href": _str()})
    paths: dict[str, Json] = {
        "/": {"get": {"tags": ["meta"], "operationId": "homepage",
                      "summary": "Links to every collection, resource base and action",
                      "responses": _responses(_ok("The homepage", _obj({
                          "href": _str(), "links": {"type": "array", "items": {}}})))}},
        "/openapi.json": {"get": {"tags": ["meta"], "operationId": "openapi",
                                  "summary": "This document",
                                  "responses": _responses(_ok("OpenAPI 3.0",
                                                              {"type": "object"}))}},
    }
    for rt in sorted(schema.types.values(), key=lambda r: r.name):
        components[rt.name] = resource_schema(schema, rt)
        paths.update(_resource_paths(rt))
    paths.update(_action_paths())
    responses = {
        f"E{status}": {"description": desc, "content": {
            "text/plain": {"schema": {"type": "string", "minLength": 1}}}}
        for status, desc in ERROR_STATUSES.items()
    }
    tags = [{"name": rt.name} for rt in sorted(schema.types.values(), key=lambda r: r.name)]
    doc: Json = {
        "openapi": "3.0.3",
        "info": {
            "title": "Tungsten VNC config API",
            "version": __version__,
            "description": "TF's VNC REST API. Success is always 200; errors are plain text.",
        },
        "tags": [{"name": "meta"}, {"name": "actions"}, *tags],
        "paths": paths,
        "components": {"schemas": components, "responses": responses},
    }
    return copy.deepcopy(doc)  # no shared sub-dicts: safe to dump to YAML or to walk
