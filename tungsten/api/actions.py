"""The action endpoints besides CRUD: collections, user-agent key/values, ownership and
permissions, tags and the aaa-mode setting."""

from __future__ import annotations

import re
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

import orjson

from tungsten.api.context import RequestCtx
from tungsten.api.errors import bad_request, not_found
from tungsten.api.hooks import MULTI_VALUE_TAG_TYPES
from tungsten.api.objdb import KV, META, Obj, WriteSet
from tungsten.model.validate import ValidationError, check_complex

if TYPE_CHECKING:
    from tungsten.api.core import ConfigApi

AAA_MODES = ("no-auth", "cloud-admin", "rbac")
_UUID4 = re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I)


def _obj(api: ConfigApi, uuid: Any) -> Obj:
    if not isinstance(uuid, str) or not uuid:
        raise bad_request("Bad Request: uuid is needed")
    obj = api.db.get(uuid)
    if obj is None:
        raise not_found(f"ID {uuid} does not exist")
    return obj


# ----------------------------------------------------------------------------------------------
# list and map properties
def prop_collection_get(api: ConfigApi, params: dict[str, Any]) -> dict[str, Any]:
    uuid, fields = params.get("uuid"), params.get("fields")
    if not uuid or not fields:
        raise bad_request("Bad Request: uuid and fields are needed")
    obj = _obj(api, uuid)
    rt = api.rtype(obj.type)
    position = params.get("position")
    out: dict[str, Any] = {}
    for f in str(fields).split(","):
        if f not in rt.collections:
            raise bad_request(f"Bad Request: {f} is not a list or map property of {rt.name}")
        items = obj.colls.get(f, [])
        if position is not None:
            items = [i for i in items if i[0] == str(position)]
        out[f] = [[e, p] for p, e in items]
    return out


def prop_collection_update(api: ConfigApi, body: Any) -> None:
    if not isinstance(body, dict) or not body.get("uuid"):
        raise bad_request("Bad Request: uuid is needed")
    updates = body.get("updates")
    if not isinstance(updates, list):
        raise bad_request("Bad Request: updates must be a list")
    obj = _obj(api, body["uuid"])
    rt = api.rtype(obj.type)

    def run(ws: WriteSet) -> None:
        new = obj.copy()
        for up in updates:
            if not isinstance(up, dict):
                raise bad_request("Bad Request: each update must be an object")
            f, op = up.get("field"), str(up.get("operation", "")).lower()
            coll = rt.collections.get(str(f))
            if coll is None:
                raise bad_request(f"Bad Request: {f} is not a list or map property of {rt.name}")
            items = {p: e for p, e in new.colls.get(coll.field, [])}
            value, pos = up.get("value"), up.get("position")
            if op in ("add", "modify", "set"):
                try:
                    check_complex(api.schema, coll.element_type, value, f"{f}")
                except ValidationError as e:
                    raise bad_request(f"Bad property in prop-collection-update: {e}") from e
                if value is None:
                    raise bad_request(f"Bad Request: {op} on {f} needs a value")
            if coll.kind == "list" and op == "add":
                items[str(pos) if pos is not None else str(uuidlib.uuid4())] = value
            elif coll.kind == "list" and op == "modify":
                if pos is None or str(pos) not in items:
                    raise bad_request(f"Bad Request: modify on {f} needs an existing position")
                items[str(pos)] = value
            elif coll.kind == "map" and op == "set":
                key = value.get(coll.key_name) if isinstance(value, dict) else None
                if key is None:
                    raise bad_request(f"Bad Request: set on {f} needs a value with {coll.key_name}")
                items[str(key)] = value
            elif op == "delete":
                if pos is None:
                    raise bad_request(f"Bad Request: delete on {f} needs a position")
                if str(pos) not in items:
                    raise bad_request(f"Bad Request: {f} has no element at position {pos}")
                del items[str(pos)]
            else:
                raise bad_request(f"Bad Request: operation {op!r} is not valid for {coll.kind} "
                                  f"property {f}")
            if items:
                new.colls[coll.field] = sorted([[p, e] for p, e in items.items()],
                                               key=lambda x: x[0])
            else:
                new.colls.pop(coll.field, None)
        api.touch(new)
        ws.put(new)

    api.write(run)


# ----------------------------------------------------------------------------------------------
# user-agent key/values
def useragent_kv(api: ConfigApi, body: Any) -> dict[str, Any] | None:
    if not isinstance(body, dict) or "operation" not in body or "key" not in body:
        raise bad_request("Bad Request: operation and key are needed")
    op, key = body["operation"], body["key"]
    kv = api.db.kv
    if op == "STORE":
        if not isinstance(key, str):
            raise bad_request("Bad Request: key must be a string")
        try:
            orjson.dumps(body.get("value"))  # its parser takes deeper nesting than it writes
        except orjson.JSONEncodeError as e:
            raise bad_request(f"Bad Request: the value cannot be stored ({e})") from e
        api.write(lambda ws: ws.put_key(KV + key, body.get("value")))
        return None
    if op == "RETRIEVE":
        if key is None:
            return {"value": [{"key": k, "value": v} for k, v in kv.items()]}
        if isinstance(key, list):
            return {"value": [kv[k] for k in key if isinstance(k, str) and k in kv]}
        if not isinstance(key, str):
            raise bad_request("Bad Request: key must be a string, a list of strings or null")
        if key not in kv:
            raise not_found("Unknown User-Agent key")
        return {"value": kv[key]}
    if op == "DELETE":
        if isinstance(key, str):
            api.write(lambda ws: ws.delete_key(KV + key))
        return None
    raise not_found(f"Invalid Operation {op}")


# ----------------------------------------------------------------------------------------------
# ownership and permissions
def chown(api: ConfigApi, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("Bad Request: body must be an object")
    uuid, owner = body.get("uuid"), body.get("owner")
    if not isinstance(uuid, str) or not _UUID4.match(uuid):
        raise bad_request(f"Bad Request: invalid object uuid {uuid!r}")
    if not isinstance(owner, str) or not _UUID4.match(owner):
        raise bad_request(f"Bad Request: invalid owner {owner!r}: expected a project uuid")
    obj = _obj(api, uuid)
    _set_perms2(api, obj, {"owner": owner.replace("-", "")})
    return {}


def chmod(api: ConfigApi, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("Bad Request: body must be an object")
    obj = _obj(api, body.get("uuid"))
    changes: dict[str, Any] = {}
    for key in ("owner_access", "global_access"):
        if body.get(key) is not None:
            v = body[key]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 7:
                raise bad_request(f"Bad Request: {key} must be an integer in [0, 7]")
            changes[key] = v
    if body.get("owner") is not None:
        if not isinstance(body["owner"], str) or not _UUID4.match(body["owner"]):
            raise bad_request(f"Bad Request: invalid owner {body['owner']!r}")
        changes["owner"] = body["owner"].replace("-", "")
    if body.get("share") is not None:
        share = body["share"]
        if not isinstance(share, list):
            raise bad_request("Bad Request: share must be a list")
        for s in share:
            access = s.get("tenant_access") if isinstance(s, dict) else None
            if not isinstance(s, dict) or not isinstance(s.get("tenant"), str) or not (
                    isinstance(access, int) and 0 <= access <= 7):
                raise bad_request("Bad Request: share entries are {tenant, tenant_access 0-7}")
        changes["share"] = share
    _set_perms2(api, obj, changes)
    return {}


def _set_perms2(api: ConfigApi, obj: Obj, changes: dict[str, Any]) -> None:
    def run(ws: WriteSet) -> None:
        new = obj.copy()
        new.props["perms2"] = {**new.props.get("perms2", {}), **changes}
        if "global_access" in changes and new.type == "virtual-network":
            new.props["is_shared"] = changes["global_access"] != 0
        api.touch(new)
        ws.put(new)

    api.write(run)


def obj_perms(api: ConfigApi, params: dict[str, Any], token: str | None) -> dict[str, Any]:
    uuid = params.get("uuid")
    if uuid:
        _obj(api, uuid)
    return {
        "token_info": {"token": {"id": token}} if token else None,
        "is_cloud_admin_role": token is not None,
        "is_global_read_only_role": False,
        "permissions": "RWX",
    }


def aaa_mode_get(api: ConfigApi) -> dict[str, Any]:
    return {"aaa-mode": api.db.meta.get("aaa-mode", "no-auth")}


def aaa_mode_put(api: ConfigApi, body: Any) -> dict[str, Any]:
    mode = body.get("aaa-mode") if isinstance(body, dict) else None
    if mode not in AAA_MODES:
        raise bad_request(f"Bad Request: aaa-mode must be one of {', '.join(AAA_MODES)}")
    api.write(lambda ws: ws.put_key(META + "aaa-mode", mode))
    return {"aaa-mode": mode}


# ----------------------------------------------------------------------------------------------
# set-tag
def set_tag(api: ConfigApi, body: Any, ctx: RequestCtx) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("Bad Request: body must be an object")
    obj_type, obj_uuid = body.get("obj_type"), body.get("obj_uuid")
    if not obj_type or not obj_uuid:
        raise bad_request("Bad Request: obj_type and obj_uuid are needed")
    rt = api.rtype(str(obj_type))
    obj = api.obj_of(rt, str(obj_uuid))
    if "tag_refs" not in rt.refs:
        raise bad_request(f"Bad Request: a {rt.name} cannot be tagged")
    project = obj.fq_name if obj.type == "project" else obj.fq_name[:2]

    def find(ws: WriteSet, ttype: str, value: Any, is_global: bool) -> str:
        name = f"{ttype}={value}"
        fq = [name] if is_global or obj.type in ("config-root",) else [*project, name]
        u = ws.lookup("tag", fq)
        if u is None and not is_global:
            u = ws.lookup("tag", [name])
        if u is None:
            raise not_found(f"Tag {':'.join(fq)} not found: create it first")
        return u

    def run(ws: WriteSet) -> None:
        new = obj.copy()
        refs = {r["uuid"]: r for r in new.refs.get("tag_refs", [])}

        def type_of(u: str) -> str:
            t = ws.get(u)
            return str(t.props.get("tag_type_name")) if t else ""

        for ttype, spec in body.items():
            if ttype in ("obj_type", "obj_uuid"):
                continue
            ttype = ttype.lower()
            if spec is None:
                refs = {u: r for u, r in refs.items() if type_of(u) != ttype}
                continue
            if not isinstance(spec, dict):
                raise bad_request(f"Bad Request: the {ttype} tag spec must be an object or null")
            is_global = bool(spec.get("is_global"))
            if ttype in MULTI_VALUE_TAG_TYPES:
                for v in spec.get("add_values") or []:
                    u = find(ws, ttype, v, is_global)
                    refs[u] = {"uuid": u, "attr": None}
                for v in spec.get("delete_values") or []:
                    u = find(ws, ttype, v, is_global)
                    refs.pop(u, None)
                if "value" in spec and spec["value"] is not None:
                    u = find(ws, ttype, spec["value"], is_global)
                    refs[u] = {"uuid": u, "attr": None}
            else:
                if spec.get("value") is None:
                    raise bad_request(f"Bad Request: the {ttype} tag spec needs a value")
                u = find(ws, ttype, spec["value"], is_global)
                refs = {k: r for k, r in refs.items() if type_of(k) != ttype}
                refs[u] = {"uuid": u, "attr": None}
        if refs:
            new.refs["tag_refs"] = list(refs.values())
        else:
            new.refs.pop("tag_refs", None)
        api.touch(new)
        ws.put(new)

    api.write(run)
    return {}
