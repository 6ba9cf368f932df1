"""Collection listing: anchors (parent, back ref, uuids, fq_names), filters, fields, detail,
count and pagination, for ``GET /<type>s`` and ``POST /list-bulk-collection`` alike."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from tungsten.api.context import RequestCtx
from tungsten.api.errors import bad_request
from tungsten.api.objdb import Obj
from tungsten.model.schema import ResourceType

if TYPE_CHECKING:
    from tungsten.api.core import ConfigApi

_FILTER_SPLIT = re.compile(r",(?=[A-Za-z_][\w-]*==)")


@dataclass
class ListQuery:
    parent_ids: list[str] | None = None
    parent_fq_name: list[str] | None = None
    parent_type: str | None = None
    back_ref_ids: list[str] | None = None
    obj_uuids: list[str] | None = None
    fq_names: list[list[str]] | None = None
    fields: list[str] = field(default_factory=list)
    detail: bool = False
    count: bool = False
    shared: bool = False
    filters: dict[str, list[Any]] = field(default_factory=dict)
    page_marker: str | None = None
    page_limit: int | None = None


def truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return value is not None and "true" in str(value).lower()


def _csv(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return [str(v) for v in value if str(v)]
    return [v for v in str(value).split(",") if v]


def parse_filters(text: Any) -> dict[str, list[Any]]:
    if not text:
        return {}
    if isinstance(text, dict):
        return {k: v if isinstance(v, list) else [v] for k, v in text.items()}
    out: dict[str, list[Any]] = {}
    for part in _FILTER_SPLIT.split(str(text)):
        if "==" not in part:
            raise bad_request(f"Invalid filter {part!r}: expected name==value")
        key, _, raw = part.partition("==")
        key = key.strip()
        if not key:
            raise bad_request(f"Invalid filter {part!r}: expected name==value")
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        out.setdefault(key, []).append(value)
    return out


def parse_query(params: dict[str, Any]) -> ListQuery:
    q = ListQuery()
    q.parent_ids = _csv(params.get("parent_id"))
    pfq = params.get("parent_fq_name_str")
    if pfq:
        q.parent_fq_name = str(pfq).split(":")
    # list-bulk-collection bodies carry any JSON here: only a string can name a type
    ptype = params.get("parent_type")
    q.parent_type = str(ptype).replace("_", "-") if ptype else None
    q.back_ref_ids = _csv(params.get("back_ref_id"))
    q.obj_uuids = _csv(params.get("obj_uuids"))
    fqns = _csv(params.get("fq_names"))
    if fqns is not None:
        q.fq_names = [f.split(":") for f in fqns]
    q.fields = _csv(params.get("fields")) or []
    q.detail = truthy(params.get("detail"))
    q.count = truthy(params.get("count"))
    q.shared = truthy(params.get("shared"))
    q.filters = parse_filters(params.get("filters"))
    marker = params.get("page_marker")
    q.page_marker = None if marker in (None, "", "None") else str(marker)
    limit = params.get("page_limit")
    if limit not in (None, ""):
        try:
            q.page_limit = int(str(limit))
        except ValueError as e:
            raise bad_request(f"Invalid page_limit {limit!r}: expected a positive integer") from e
        if q.page_limit <= 0:
            raise bad_request(f"Invalid page_limit {limit}: it must be > 0")
    return q


def _matches(rt: ResourceType, obj: Obj, filters: dict[str, list[Any]]) -> bool:
    for key, wanted in filters.items():
        coll = rt.collections.get(key)
        have = {coll.wrapper: [e for _, e in obj.colls.get(key, [])]} if coll else obj.props.get(
            key)
        if have is None:
            return False
        if not any(_equal(have, w) for w in wanted):
            return False
    return True


def _equal(have: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict) and isinstance(have, dict):
        return all(k in have and _equal(have[k], v) for k, v in wanted.items())
    if isinstance(wanted, str) and not isinstance(have, str):
        if isinstance(have, bool):
            return str(have).lower() == wanted.lower()
        return str(have) == wanted
    return bool(have == wanted)


def select(api: ConfigApi, rt: ResourceType, q: ListQuery) -> list[Obj] | None:
    """The objects the anchors pick, or None when no anchor is given (all objects)."""
    db = api.db
    chosen: dict[str, Obj] | None = None

    def narrow(candidates: Iterable[str]) -> None:
        nonlocal chosen
        found = {}
        for u in candidates:
            o = db.objs.get(u)
            if o is not None and o.type == rt.name:
                found[u] = o
        chosen = found if chosen is None else {u: o for u, o in chosen.items() if u in found}

    if q.parent_fq_name is not None:
        ptypes = [q.parent_type] if q.parent_type else list(rt.parents)
        pids = [p for t in ptypes if (p := db.lookup(t, q.parent_fq_name)) is not None]
        narrow(u for p in pids for u in db.children.get(p, {}))
    elif q.parent_ids is not None:
        narrow(u for p in q.parent_ids for u in db.children.get(p, {}))
    if q.back_ref_ids is not None:
        narrow(u for t in q.back_ref_ids for u in db.back.get(t, {}))
    if q.obj_uuids is not None:
        narrow(q.obj_uuids)
    if q.fq_names is not None:
        narrow(u for f in q.fq_names if (u := db.lookup(rt.name, f)) is not None)
    if chosen is None:
        return None
    return sorted(chosen.values(), key=lambda o: o.seq)


def list_collection(api: ConfigApi, type_name: str, params: dict[str, Any],
                    ctx: RequestCtx) -> dict[str, Any]:
    rt = api.rtype(type_name)
    q = parse_query(params)
    anchored = select(api, rt, q)
    objs: Iterable[Obj] = anchored if anchored is not None else api.db.by_type.get(
        rt.name, {}).values()
    if q.filters:
        prop_keys = {k: v for k, v in q.filters.items() if k in rt.props}
        if prop_keys:
            objs = [o for o in objs if _matches(rt, o, q.filters)]
    if q.count and q.page_limit is None:
        n = len(objs) if isinstance(objs, list) else sum(1 for _ in objs)
        return {rt.plural: {"count": n}}
    marker_out: str | None = None
    paged = q.page_limit is not None
    if paged:
        ordered = sorted(objs, key=lambda o: o.uuid)
        start = q.page_marker.split(":", 1)[-1] if q.page_marker else None
        if start is not None:
            ordered = [o for o in ordered if o.uuid > start]
        assert q.page_limit is not None
        page = ordered[: q.page_limit]
        if len(ordered) > q.page_limit and page:
            marker_out = page[-1].uuid
        objs = page
    if q.count:
        result: dict[str, Any] = {rt.plural: {"count": len(list(objs))}}
    elif q.detail:
        extra = set(q.fields)
        entries = []
        for o in objs:
            body = api.render(rt, o, ctx, None, exclude_back_refs=True, exclude_children=True)
            if extra:
                api._render_back_refs(o, ctx, body, extra)
                api._render_children(o, ctx, body, extra)
            entries.append({rt.name: body})
        result = {rt.plural: entries}
    elif q.fields:
        entries = []
        for o in objs:
            body = api.render(rt, o, ctx, q.fields)
            body.pop("name", None)
            entries.append(body)
        result = {rt.plural: entries}
    else:
        hrefs = not ctx.exclude_hrefs
        base = f"{ctx.base_url}/{rt.name}/"
        if hrefs:
            result = {rt.plural: [{"href": base + o.uuid, "fq_name": o.fq_name, "uuid": o.uuid}
                                  for o in objs]}
        else:
            result = {rt.plural: [{"fq_name": o.fq_name, "uuid": o.uuid} for o in objs]}
    if paged:
        result["marker"] = marker_out
    return result
