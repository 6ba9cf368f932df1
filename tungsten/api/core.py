"""The config API core: create, read, update, delete and list of VNC objects.

No HTTP here: the server turns requests into calls on ``ConfigApi`` and ``ApiError`` into
statuses.  Every write runs synchronously from validation to commit (no awaits), so writes are
serialised and allocation can never hand out a duplicate; each write is one store transaction.
"""

from __future__ import annotations

import datetime
import re
import uuid as uuidlib
from collections.abc import Callable
from typing import Any

from tungsten.api import hooks
from tungsten.api.context import RequestCtx
from tungsten.api.errors import ApiError, bad_request, conflict, not_found
from tungsten.api.ipam import SubnetAllocator
from tungsten.api.objdb import Obj, ObjectDB, WriteSet, fqn_claim
from tungsten.model.schema import CONFIG_ROOT, ResourceType, Schema, load_schema
from tungsten.model.validate import ValidationError, check_complex, check_field
from tungsten.store import ConfigStore, Conflict

META_KEYS = frozenset(
    {"uuid", "fq_name", "parent_type", "parent_uuid", "parent_href", "href", "name"}
)
WRITE_RETRIES = 20
_BAD_NAME = re.compile(r"[\x00-\x1f<>&\"]")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None).isoformat()


def uuid_longs(u: str) -> dict[str, int]:
    n = uuidlib.UUID(u).int
    return {"uuid_mslong": n >> 64, "uuid_lslong": n & ((1 << 64) - 1)}


class ConfigApi:
    def __init__(self, store: ConfigStore, schema: Schema | None = None) -> None:
        self.schema = schema or load_schema()
        self.db = ObjectDB(store)
        # (vn uuid, subnet uuid) -> allocator; rebuilt when the VN's subnets change
        self.allocators: dict[tuple[str, str], SubnetAllocator] = {}
        self.db.listeners.append(self._on_change)
        hooks.ensure_defaults(self)

    def _on_change(self, old: Obj | None, new: Obj | None) -> None:
        # a network's subnets may have changed (here or in another writer): rebuild allocators
        changed = new or old
        if changed is not None and changed.type == "virtual-network":
            for key in [k for k in self.allocators if k[0] == changed.uuid]:
                del self.allocators[key]

    # ------------------------------------------------------------------------------------------
    # helpers
    def rtype(self, name: str) -> ResourceType:
        rt = self.schema.resource(name)
        if rt is None:
            raise not_found(f"Unknown resource type {name}")
        return rt

    def obj_of(self, rt: ResourceType, uuid: str, ws: WriteSet | None = None) -> Obj:
        obj = ws.get(uuid) if ws is not None else self.db.get(uuid)
        if obj is None or obj.type != rt.name:
            raise not_found(f"No {rt.name} object found for id {uuid}")
        return obj

    def write(self, fn: Callable[[WriteSet], Any]) -> Any:
        """Run ``fn`` on a fresh write set and commit it; nothing is applied on error.  When
        another writer got there first, catch up and run ``fn`` again on the fresh index."""
        for _ in range(WRITE_RETRIES):
            self.db.catch_up()
            ws = self.db.begin()
            result = fn(ws)
            try:
                ws.commit()
            except Conflict:
                continue
            return result
        raise ApiError(503, "the config store is too busy (concurrent writers); retry")

    def resolve_ref(self, ws: WriteSet, target_type: str, ref: Any, verb: str) -> str:
        """The uuid a ref entry points at (by uuid when given, else by ``to``)."""
        if not isinstance(ref, dict):
            raise bad_request(f"Bad reference in {verb}: a ref must be an object, got {ref!r}")
        u = ref.get("uuid")
        if u:
            target = ws.get(u) if isinstance(u, str) else None
            if target is None or target.type != target_type:
                raise bad_request(f"Unknown reference in resource {verb}: {target_type} {u}")
            return target.uuid
        to = ref.get("to")
        if not isinstance(to, list) or not to:
            raise bad_request(f"Bad reference in {verb}: {target_type} ref has neither uuid nor to")
        found = ws.lookup(target_type, [str(x) for x in to])
        if found is None:
            raise bad_request(f"Unknown reference in resource {verb}: {target_type} {to}")
        return found

    def set_refs(
        self, ws: WriteSet, rt: ResourceType, obj: Obj, body: dict[str, Any], verb: str
    ) -> None:
        for field_name, spec in rt.refs.items():
            if field_name not in body:
                continue
            value = body[field_name]
            if value is None:
                value = []
            if not isinstance(value, list):
                raise bad_request(f"Bad reference in {verb}: {field_name} must be a list")
            refs: dict[str, dict[str, Any]] = {}
            for ref in value:
                target = self.resolve_ref(ws, spec.to, ref, verb)
                attr = ref.get("attr")
                try:
                    if spec.attr is not None:
                        check_complex(self.schema, spec.attr, attr, f"{field_name}.attr")
                except ValidationError as e:
                    raise bad_request(f"Bad reference in {verb}: {e}") from e
                refs[target] = {"uuid": target, "attr": attr if spec.attr else None}
            if refs:
                obj.refs[field_name] = list(refs.values())
            else:
                obj.refs.pop(field_name, None)

    def check_fields(self, rt: ResourceType, body: dict[str, Any], verb: str) -> None:
        for key in body:
            if key in META_KEYS or key in rt.props or key in rt.refs:
                continue
            if key in rt.children or key in rt.back_refs or key.endswith("_back_refs"):
                continue  # read-only fields a client may echo back: ignored
            raise bad_request(f"Unknown field in {verb}: {key} is not a field of {rt.name}")

    def set_props(self, rt: ResourceType, obj: Obj, body: dict[str, Any], verb: str) -> None:
        for name, spec in rt.props.items():
            if name not in body or name in ("id_perms", "perms2"):
                continue
            value = body[name]
            try:
                check_field(self.schema, spec, value, name)
            except ValidationError as e:
                raise bad_request(f"Bad property in {verb}: {e}") from e
            coll = rt.collections.get(name)
            if coll is not None:
                obj.props.pop(name, None)
                if value is None:
                    obj.colls.pop(name, None)
                    continue
                elems = value.get(coll.wrapper) or []
                if coll.kind == "map":
                    by_key = {str(e.get(coll.key_name)): e for e in elems if isinstance(e, dict)}
                    obj.colls[name] = sorted([[k, e] for k, e in by_key.items()])
                else:
                    # null elements hold nothing (prop-collection-update refuses them too)
                    kept = [e for e in elems if e is not None]
                    obj.colls[name] = [[str(i), e] for i, e in enumerate(kept)]
                if not obj.colls[name]:
                    del obj.colls[name]
                continue
            if value is None:
                obj.props.pop(name, None)
            else:
                obj.props[name] = value

    # ------------------------------------------------------------------------------------------
    # create
    def create(self, type_name: str, body: Any, ctx: RequestCtx) -> dict[str, Any]:
        rt = self.rtype(type_name)
        data = unwrap(rt, body, "POST")
        obj = self.write(lambda ws: self._create(ws, rt, data, ctx))
        out = {
            "name": obj.fq_name[-1],
            "fq_name": obj.fq_name,
            "uuid": obj.uuid,
        }
        if not ctx.exclude_hrefs:
            out["href"] = ctx.href(rt.name, obj.uuid)
        if obj.parent_type:
            out["parent_type"] = obj.parent_type
            out["parent_uuid"] = obj.parent_uuid
            if not ctx.exclude_hrefs and obj.parent_uuid:
                out["parent_href"] = ctx.href(obj.parent_type, obj.parent_uuid)
        return {rt.name: out}

    def _create(
        self, ws: WriteSet, rt: ResourceType, data: dict[str, Any], ctx: RequestCtx,
        *, derived: bool = False,
    ) -> Obj:
        self.check_fields(rt, data, "create")
        fq_name = data.get("fq_name")
        if not fq_name or not isinstance(fq_name, list) or not all(
            isinstance(x, str) and x for x in fq_name
        ):
            raise bad_request("Bad Request, no fq_name in POST body")
        fq_name = list(fq_name)
        hooks.pre_alloc(self, ws, rt, data, fq_name)
        name = fq_name[-1]
        if ":" in name and rt.name != "route-target":
            raise bad_request(f"Invalid name {name!r}: ':' is not allowed in a name")
        if _BAD_NAME.search(name):
            raise bad_request(f"Invalid name {name!r}: it contains characters illegal in XML")
        id_perms = data.get("id_perms") or {}
        if not isinstance(id_perms, dict):
            raise bad_request("Bad property in create: id_perms: expected an object")
        if id_perms.get("user_visible") is False and not ctx.is_admin:
            raise bad_request("Only the admin may create objects with user_visible false")
        try:
            check_field(self.schema, rt.props["id_perms"], data.get("id_perms"), "id_perms")
            check_field(self.schema, rt.props["perms2"], data.get("perms2"), "perms2")
        except ValidationError as e:
            raise bad_request(f"Bad property in create: {e}") from e
        # duplicate check first, as TF does
        existing = ws.lookup(rt.name, fq_name)
        if existing is not None:
            raise conflict(f"{fq_name} already exists with uuid: {existing}")
        parent_type, parent_uuid = self._parent(ws, rt, data, fq_name)
        uuid = data.get("uuid")
        if uuid is not None:
            if not isinstance(uuid, str):
                raise bad_request(f"Invalid UUID format: {uuid!r}")
            try:
                canonical = str(uuidlib.UUID(uuid))
            except ValueError:
                canonical = None  # never equal to a string, not even to ""
            if canonical != uuid:
                raise bad_request(f"Invalid UUID format: {uuid}")
            if ws.get(uuid) is not None:
                raise conflict(f"uuid {uuid} already exists")
        else:
            uuid = str(uuidlib.uuid4())
        obj = Obj(rt.name, uuid, fq_name, parent_type, parent_uuid, seq=self.db.next_seq(),
                  derived=derived)
        self.set_props(rt, obj, data, "create")
        self.set_refs(ws, rt, obj, data, "create")
        self._init_perms(ws, rt, obj, data, ctx)
        obj.props.setdefault("display_name", name)
        hooks.pre_create(self, ws, rt, obj, data, ctx)
        if not ws.claim(fqn_claim(rt.name, fq_name), uuid):
            raise conflict(f"{fq_name} already exists")
        ws.put(obj)
        hooks.post_create(self, ws, rt, obj, ctx)
        return obj

    def create_child(
        self, ws: WriteSet, type_name: str, fq_name: list[str], parent_type: str | None,
        ctx: RequestCtx, derived: bool = False, **fields: Any,
    ) -> Obj:
        """Create a system object inside another write (defaults, derived children)."""
        data: dict[str, Any] = {"fq_name": fq_name, **fields}
        if parent_type:
            data["parent_type"] = parent_type
        return self._create(ws, self.rtype(type_name), data, ctx, derived=derived)

    def _parent(
        self, ws: WriteSet, rt: ResourceType, data: dict[str, Any], fq_name: list[str]
    ) -> tuple[str | None, str | None]:
        parents = rt.parents
        ptype = data.get("parent_type")
        if ptype is not None:
            if not isinstance(ptype, str):
                raise bad_request("Invalid parent type")
            ptype = ptype.replace("_", "-")
            if ptype not in parents:
                raise bad_request(
                    f"Invalid parent type: {ptype} (a {rt.name} may live under: "
                    f"{', '.join(parents)})"
                )
        elif CONFIG_ROOT in parents and len(fq_name) == 1:
            ptype = CONFIG_ROOT
        elif len(parents) == 1:
            ptype = parents[0]
        else:
            raise bad_request(
                f"Missing parent type: a {rt.name} may live under {', '.join(parents)}"
            )
        if ptype == CONFIG_ROOT:
            if len(fq_name) != 1:
                raise bad_request(
                    f"Invalid fq_name {fq_name}: a config-root child has a one-element fq_name"
                )
            return None, None
        if len(fq_name) < 2:
            raise bad_request(f"Invalid fq_name {fq_name}: a {rt.name} needs its parent's name")
        parent_uuid = ws.lookup(ptype, fq_name[:-1])
        if parent_uuid is None:
            if ptype == "domain":
                raise bad_request(f"Parent {fq_name[:-1]} type {ptype} does not exist")
            raise not_found(f"Name {fq_name[:-1]} not found")
        return ptype, parent_uuid

    def _init_perms(
        self, ws: WriteSet, rt: ResourceType, obj: Obj, data: dict[str, Any], ctx: RequestCtx
    ) -> None:
        given = data.get("id_perms") or {}
        ts = now_iso()
        id_perms: dict[str, Any] = {
            "permissions": {
                "owner": "cloud-admin", "owner_access": 7, "group": "cloud-admin-group",
                "group_access": 7, "other_access": 7,
            },
            "uuid": uuid_longs(obj.uuid),
            "enable": True,
            "created": ts,
            "last_modified": ts,
            "description": None,
            "user_visible": True,
            "creator": None,
        }
        for key in ("enable", "description", "user_visible", "creator"):
            if given.get(key) is not None:
                id_perms[key] = given[key]
        if isinstance(given.get("permissions"), dict):
            id_perms["permissions"].update(
                {k: v for k, v in given["permissions"].items() if v is not None}
            )
        obj.props["id_perms"] = id_perms
        p2 = data.get("perms2") or {}
        owner = p2.get("owner")
        if not owner:
            if rt.name == "project":
                owner = obj.uuid.replace("-", "")
            elif obj.parent_type in (None, "domain"):
                owner = ctx.project_id or "cloud-admin"
            else:
                parent = ws.get(obj.parent_uuid or "")
                owner = (parent.props.get("perms2") or {}).get("owner") if parent else None
                owner = owner or "cloud-admin"
        obj.props["perms2"] = {
            "owner": owner,
            "owner_access": p2.get("owner_access") if p2.get("owner_access") is not None else 7,
            "global_access": p2.get("global_access") or 0,
            "share": p2.get("share") or [],
        }

    # ------------------------------------------------------------------------------------------
    # read
    def read(
        self, type_name: str, uuid: str, ctx: RequestCtx, fields: list[str] | None = None,
        exclude_back_refs: bool = False, exclude_children: bool = False,
    ) -> dict[str, Any]:
        rt = self.rtype(type_name)
        obj = self.obj_of(rt, uuid)
        hooks.on_read(self, rt, obj, ctx)
        obj = self.obj_of(rt, uuid)
        return {rt.name: self.render(rt, obj, ctx, fields, exclude_back_refs, exclude_children)}

    def render(
        self, rt: ResourceType, obj: Obj, ctx: RequestCtx, fields: list[str] | None = None,
        exclude_back_refs: bool = False, exclude_children: bool = False,
    ) -> dict[str, Any]:
        want: set[str] | None = None
        if fields:
            want = set(fields) | {"id_perms", "perms2"}
        hrefs = not ctx.exclude_hrefs
        out: dict[str, Any] = {"uuid": obj.uuid, "name": obj.fq_name[-1], "fq_name": obj.fq_name}
        if obj.parent_type:
            out["parent_type"] = obj.parent_type
            out["parent_uuid"] = obj.parent_uuid
            if hrefs:
                out["parent_href"] = ctx.href(obj.parent_type, obj.parent_uuid or "")
        if hrefs:
            out["href"] = ctx.href(rt.name, obj.uuid)
        for k, v in obj.props.items():
            if want is None or k in want:
                out[k] = v
        for k, items in obj.colls.items():
            if want is None or k in want:
                coll = rt.collections[k]
                out[k] = {coll.wrapper: [e for _, e in items]}
        db = self.db
        for f, refs in obj.refs.items():
            if want is not None and f not in want:
                continue
            spec = rt.refs.get(f)
            rendered = []
            for r in refs:
                target = db.objs.get(r["uuid"])
                if target is None:
                    continue
                entry: dict[str, Any] = {"to": target.fq_name, "uuid": target.uuid,
                                         "attr": r.get("attr")}
                if hrefs:
                    entry["href"] = ctx.href(target.type, target.uuid)
                rendered.append(entry)
            if rendered and spec is not None:
                out[f] = rendered
        if not exclude_back_refs or (want is not None):
            self._render_back_refs(obj, ctx, out, want)
        if not exclude_children or (want is not None):
            self._render_children(obj, ctx, out, want)
        return out

    def _render_back_refs(
        self, obj: Obj, ctx: RequestCtx, out: dict[str, Any], want: set[str] | None
    ) -> None:
        referrers = self.db.back.get(obj.uuid)
        if not referrers:
            return
        groups: dict[str, list[dict[str, Any]]] = {}
        for ru in referrers:
            r = self.db.objs.get(ru)
            if r is None:
                continue
            key = r.type.replace("-", "_") + "_back_refs"
            if want is not None and key not in want:
                continue
            for refs in r.refs.values():
                for ref in refs:
                    if ref["uuid"] == obj.uuid:
                        entry: dict[str, Any] = {"to": r.fq_name, "uuid": r.uuid,
                                                 "attr": ref.get("attr")}
                        if not ctx.exclude_hrefs:
                            entry["href"] = ctx.href(r.type, r.uuid)
                        groups.setdefault(key, []).append(entry)
        out.update(groups)

    def _render_children(
        self, obj: Obj, ctx: RequestCtx, out: dict[str, Any], want: set[str] | None
    ) -> None:
        kids = self.db.children.get(obj.uuid)
        if not kids:
            return
        groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for cu in kids:
            c = self.db.objs.get(cu)
            if c is None:
                continue
            key = c.type.replace("-", "_") + "s"
            if want is not None and key not in want:
                continue
            entry: dict[str, Any] = {"to": c.fq_name, "uuid": c.uuid}
            if not ctx.exclude_hrefs:
                entry["href"] = ctx.href(c.type, c.uuid)
            groups.setdefault(key, []).append((c.seq, entry))
        for key, entries in groups.items():
            entries.sort(key=lambda x: x[0])
            out[key] = [e for _, e in entries]

    # ------------------------------------------------------------------------------------------
    # update
    def update(self, type_name: str, uuid: str, body: Any, ctx: RequestCtx) -> dict[str, Any]:
        rt = self.rtype(type_name)
        self.obj_of(rt, uuid)
        if body is None or body == {} or body == {rt.name: {}} or body == {rt.obj_type: {}}:
            return {}
        data = unwrap(rt, body, "PUT")
        self.write(lambda ws: self._update(ws, rt, uuid, data, ctx))
        out: dict[str, Any] = {"uuid": uuid}
        if not ctx.exclude_hrefs:
            out["href"] = ctx.href(rt.name, uuid)
        return {rt.name: out}

    def _update(
        self, ws: WriteSet, rt: ResourceType, uuid: str, data: dict[str, Any], ctx: RequestCtx
    ) -> Obj:
        old = self.obj_of(rt, uuid, ws)
        self.check_fields(rt, data, "update")
        if "uuid" in data and data["uuid"] not in (None, uuid):
            raise bad_request(f"uuid cannot be changed (body has {data['uuid']}, url {uuid})")
        if data.get("fq_name") not in (None, old.fq_name):
            raise bad_request(f"fq_name cannot be changed: {old.fq_name} -> {data['fq_name']}")
        new = old.copy()
        self.set_props(rt, new, data, "http_put")
        self.set_refs(ws, rt, new, data, "update")
        if "id_perms" in data and data["id_perms"] is not None:
            ip = data["id_perms"]
            try:
                check_field(self.schema, rt.props["id_perms"], ip, "id_perms")
            except ValidationError as e:
                raise bad_request(f"Bad property in http_put: {e}") from e
            for key in ("enable", "description"):
                if key in ip and ip[key] is not None:
                    new.props["id_perms"][key] = ip[key]
        if "perms2" in data and data["perms2"] is not None:
            p2 = data["perms2"]
            try:
                check_field(self.schema, rt.props["perms2"], p2, "perms2")
            except ValidationError as e:
                raise bad_request(f"Bad property in http_put: {e}") from e
            if not p2.get("owner"):
                raise bad_request("Bad Request, perms2 in a PUT body must contain owner")
            new.props["perms2"] = {**new.props["perms2"],
                                   **{k: v for k, v in p2.items() if v is not None}}
        hooks.pre_update(self, ws, rt, old, new, data, ctx)
        self.touch(new)
        ws.put(new)
        hooks.post_update(self, ws, rt, old, new, ctx)
        return new

    def touch(self, obj: Obj) -> None:
        obj.props["id_perms"] = {**obj.props.get("id_perms", {}), "last_modified": now_iso()}

    # ------------------------------------------------------------------------------------------
    # delete
    def delete(self, type_name: str, uuid: str, ctx: RequestCtx) -> None:
        rt = self.rtype(type_name)
        obj = self.db.get(uuid)
        if obj is None or obj.type != rt.name:
            raise not_found(f"ID {uuid} does not exist")
        self.write(lambda ws: self._delete(ws, rt, obj, ctx))

    def _delete(self, ws: WriteSet, rt: ResourceType, obj: Obj, ctx: RequestCtx,
                cascade: bool = False) -> None:
        """Delete ``obj`` with its derived and default children, in one write set.  Refs from
        outside that subtree block the delete, unless relaxed or derived (those are dropped)."""
        if not cascade:
            hooks.pre_delete(self, ws, rt, obj, ctx)
        subtree = self._subtree(ws, rt, obj, ctx)
        dying = {o.uuid for o in subtree}
        blocking_refs: list[Obj] = []
        relaxed: dict[str, set[str]] = {}  # holder uuid -> targets to drop
        for target in subtree:
            for r in ws.referrers_of(target.uuid):
                if r.uuid in dying:
                    continue
                rrt = self.schema.resource(r.type)
                fields = [f for f, t in r.ref_uuids() if t == target.uuid]
                derived_ref = rrt is not None and all(
                    rrt.refs[f].derived for f in fields if f in rrt.refs
                )
                if target.uuid in r.relaxed or derived_ref or r.derived:
                    relaxed.setdefault(r.uuid, set()).add(target.uuid)
                elif r not in blocking_refs:
                    blocking_refs.append(r)
        if blocking_refs:
            hrefs = [ctx.href(r.type, r.uuid) for r in blocking_refs]
            raise conflict(f"Delete when resource still referred: {hrefs}")
        for holder_uuid, targets in relaxed.items():
            holder = ws.get(holder_uuid)
            if holder is None:
                continue
            holder = holder.copy()
            for f in list(holder.refs):
                holder.refs[f] = [x for x in holder.refs[f] if x["uuid"] not in targets]
                if not holder.refs[f]:
                    del holder.refs[f]
            holder.relaxed = [x for x in holder.relaxed if x not in targets]
            ws.put(holder)
        for o in reversed(subtree):  # children before parents
            ws.delete(o)
            hooks.post_delete(self, ws, self.rtype(o.type), o, ctx)

    def _subtree(self, ws: WriteSet, rt: ResourceType, obj: Obj, ctx: RequestCtx) -> list[Obj]:
        """``obj`` and its derived/default descendants (parents first); 409 when a child that
        the user created is still there."""
        out = [obj]
        blocking = []
        for c in ws.children_of(obj.uuid):
            spec = rt.children.get(c.type.replace("-", "_") + "s")
            if c.derived or (spec is not None and spec.derived) or \
                    c.fq_name[-1] in (f"default-{c.type}", "draft-policy-management"):
                out.extend(self._subtree(ws, self.rtype(c.type), c, ctx))
            else:
                blocking.append(c)
        if blocking:
            hrefs = [ctx.href(c.type, c.uuid) for c in blocking]
            raise conflict(f"Delete when children still present: {hrefs}")
        return out

    # ------------------------------------------------------------------------------------------
    # refs
    def ref_update(self, body: Any, ctx: RequestCtx) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("Bad Request: body must be a JSON object")
        for key in ("type", "uuid", "ref-type", "operation"):
            if not body.get(key):
                raise bad_request(f"Bad Request: {key} missing in ref-update body")
        op = str(body["operation"]).upper()
        if op not in ("ADD", "DELETE"):
            raise bad_request(f"Bad Request: operation {body['operation']} must be ADD or DELETE")
        rt = self.rtype(str(body["type"]))
        target_rt = self.schema.resource(str(body["ref-type"]))
        if target_rt is None:
            raise bad_request(f"Bad Request: unknown ref-type {body['ref-type']}")
        spec = rt.ref_to(target_rt.name)
        if spec is None:
            raise bad_request(f"Bad Request: a {rt.name} has no ref to {target_rt.name}")
        ref_uuid = body.get("ref-uuid")
        ref_fq = body.get("ref-fq-name")
        if not ref_uuid and not ref_fq:
            raise bad_request("Bad Request: ref-uuid or ref-fq-name is needed")
        if ref_fq and not isinstance(ref_fq, list):
            raise bad_request(f"Bad Request: ref-fq-name must be a list, got {ref_fq!r}")
        if ref_uuid and not isinstance(ref_uuid, str):
            raise bad_request(f"Bad Request: ref-uuid must be a string, got {ref_uuid!r}")
        uuid = str(body["uuid"])
        self.obj_of(rt, uuid)

        def apply(ws: WriteSet) -> None:
            obj = self.obj_of(rt, uuid, ws)
            target_uuid = ref_uuid
            if ref_fq:
                target_uuid = ws.lookup(target_rt.name, [str(x) for x in ref_fq])
                if target_uuid is None:
                    raise not_found(f"Name {ref_fq} not found")
            target = ws.get(str(target_uuid))
            if op == "ADD" and (target is None or target.type != target_rt.name):
                raise not_found(f"No {target_rt.name} object found for id {target_uuid}")
            attr = body.get("attr")
            if op == "ADD" and spec.attr is not None:
                try:
                    check_complex(self.schema, spec.attr, attr, f"{spec.field}.attr")
                except ValidationError as e:
                    raise bad_request(f"Bad reference in ref-update: {e}") from e
            new = obj.copy()
            refs = [r for r in new.refs.get(spec.field, []) if r["uuid"] != target_uuid]
            if op == "ADD":
                refs.append({"uuid": target_uuid, "attr": attr if spec.attr else None})
                if body.get("relax_ref_for_delete") and target_uuid not in new.relaxed:
                    new.relaxed.append(str(target_uuid))
            if refs:
                new.refs[spec.field] = refs
            else:
                new.refs.pop(spec.field, None)
            hooks.pre_update(self, ws, rt, obj, new, {spec.field: None}, ctx)
            self.touch(new)
            ws.put(new)
            hooks.post_update(self, ws, rt, obj, new, ctx)

        self.write(apply)
        return {"uuid": uuid}

    def ref_relax(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not body.get("uuid") or not body.get("ref-uuid"):
            raise bad_request("Bad Request: uuid and ref-uuid are needed")
        uuid, target = str(body["uuid"]), str(body["ref-uuid"])
        obj = self.db.get(uuid)
        if obj is None:
            raise not_found(f"ID {uuid} does not exist")
        if self.db.get(target) is None:
            raise not_found(f"ID {target} does not exist")

        def apply(ws: WriteSet) -> None:
            new = obj.copy()
            if target not in new.relaxed:
                new.relaxed.append(target)
            ws.put(new)

        self.write(apply)
        return {"uuid": uuid}

    # ------------------------------------------------------------------------------------------
    # names
    def fq_name_to_id(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not body.get("type") or not isinstance(
            body.get("fq_name"), list
        ):
            raise bad_request("Bad Request: type and fq_name are needed")
        rt = self.schema.resource(str(body["type"]))
        if rt is None:
            raise not_found(f"Name {body['fq_name']} not found (unknown type {body['type']})")
        found = self.db.lookup(rt.name, [str(x) for x in body["fq_name"]])
        if found is None:
            raise not_found(f"Name {body['fq_name']} not found")
        return {"uuid": found}

    def id_to_fq_name(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not body.get("uuid"):
            raise bad_request("Bad Request: uuid is needed")
        obj = self.db.get(str(body["uuid"]))
        if obj is None:
            raise not_found(f"UUID {body['uuid']} not found")
        return {"fq_name": obj.fq_name, "type": obj.type}


def unwrap(rt: ResourceType, body: Any, verb: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad_request(f"Bad Request: the {verb} body must be a JSON object")
    data = body.get(rt.name, body.get(rt.obj_type))
    if data is None:
        raise bad_request(f"Bad Request: the {verb} body must be {{\"{rt.name}\": {{...}}}}")
    if not isinstance(data, dict):
        raise bad_request(f"Bad Request: {rt.name} must be a JSON object")
    return data


__all__ = ["ApiError", "ConfigApi", "RequestCtx"]
