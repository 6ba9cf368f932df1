"""The HTTP adapter: TF's VNC REST API on aiohttp, over a ``ConfigApi`` core.

Success is always 200 with a JSON body (or an empty body where TF sends one); errors are the
plain-text message with TF's status.  Bodies and query strings are decoded here, the core does
the rest synchronously.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tungsten import __version__
from tungsten.api import actions, addressing, listing
from tungsten.api.context import RequestCtx
from tungsten.api.core import ConfigApi
from tungsten.api.errors import ApiError

log = logging.getLogger("tungsten.api")

# (link name, uri, method) advertised on the homepage as rel "action"
ACTIONS: list[tuple[str, str, str]] = [
    ("name-to-id", "/fqname-to-id", "POST"),
    ("id-to-name", "/id-to-fqname", "POST"),
    ("ref-update", "/ref-update", "POST"),
    ("ref-relax-for-delete", "/ref-relax-for-delete", "POST"),
    ("prop-collection-get", "/prop-collection-get", "GET"),
    ("prop-collection-update", "/prop-collection-update", "POST"),
    ("useragent-keyvalue", "/useragent-kv", "POST"),
    ("list-bulk-collection", "/list-bulk-collection", "POST"),
    ("chown", "/chown", "POST"),
    ("chmod", "/chmod", "POST"),
    ("set-tag", "/set-tag", "POST"),
    ("obj-perms", "/obj-perms", "GET"),
    ("aaa-mode", "/aaa-mode", "PUT"),
    ("virtual-network-ip-alloc", "/virtual-network/%s/ip-alloc", "POST"),
    ("virtual-network-ip-free", "/virtual-network/%s/ip-free", "POST"),
    ("virtual-network-subnet-ip-count", "/virtual-network/%s/subnet-ip-count", "POST"),
]

USERAGENT_HEADERS = ("X-Tungsten-Useragent", "X-Contrail-Useragent")
TOKEN_HEADERS = ("X-Auth-Token", "X-Tungsten-Token")


@dataclass(frozen=True)
class AuthConfig:
    mode: str = "none"  # "none" or "token"
    tokens: frozenset[str] = frozenset()


def json_response(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def empty_response() -> web.Response:
    return web.Response(body=b"", content_type="text/plain")


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"Bad Request: the body is not valid JSON ({e})") from e


def request_ctx(request: web.Request) -> RequestCtx:
    ua = next((request.headers[h] for h in USERAGENT_HEADERS if h in request.headers), "")
    return RequestCtx(
        base_url=f"{request.scheme}://{request.host}",
        exclude_hrefs="exclude_hrefs" in request.query,
        is_admin=True,
        project_id=request.headers.get("X-Project-Id"),
        user_agent=ua,
    )


def request_token(request: web.Request) -> str | None:
    return next((request.headers[h] for h in TOKEN_HEADERS if h in request.headers), None)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(api: ConfigApi, auth: AuthConfig | None = None) -> web.Application:
    auth = auth or AuthConfig()

    @web.middleware
    async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if auth.mode == "token":
                token = request_token(request)
                if token is None:
                    raise ApiError(401, "Authentication required: send a token in X-Auth-Token")
                if token not in auth.tokens:
                    raise ApiError(401, "Authentication failed: the token is not valid")
            # another controller on the same store may have written: serve a current view
            api.db.catch_up()
            return await handler(request)
        except ApiError as e:
            if e.status >= 500:
                log.warning("request failed", extra={"path": request.path, "error": e.message})
            return web.Response(status=e.status, text=e.message)
        except web.HTTPException:
            raise
        except Exception as e:  # a bug: report it as TF does, never crash the server
            log.exception("internal error on %s %s", request.method, request.path)
            return web.Response(status=500, text=f"Internal Server Error: {type(e).__name__}")

    app = web.Application(middlewares=[errors_and_auth], client_max_size=64 * 1024 * 1024)
    schema = api.schema

    async def homepage(request: web.Request) -> web.Response:
        root = f"{request.scheme}://{request.host}"
        links: list[dict[str, Any]] = [
            {"link": {"rel": "root", "href": f"{root}/config-root", "name": "config-root",
                      "method": "GET"}},
            {"link": {"rel": "documentation", "href": f"{root}/openapi.json",
                      "name": "documentation", "method": "GET"}},
        ]
        for rt in schema.types.values():
            links.append({"link": {"rel": "collection", "href": f"{root}/{rt.plural}",
                                   "name": rt.name, "method": "GET"}})
            links.append({"link": {"rel": "resource-base", "href": f"{root}/{rt.name}",
                                   "name": rt.name, "method": "GET"}})
        for name, uri, method in ACTIONS:
            links.append({"link": {"rel": "action", "href": f"{root}{uri}", "name": name,
                                   "method": method}})
        return json_response({"href": root, "links": links, "version": __version__})

    async def collection(request: web.Request) -> web.Response:
        coll = request.match_info["collection"]
        rt = schema.resource(coll[:-1]) if coll.endswith("s") else None
        if rt is None or rt.plural != coll:
            raise ApiError(404, f"Unknown collection {coll}")
        ctx = request_ctx(request)
        if request.method == "POST":
            return json_response(api.create(rt.name, await read_json(request), ctx))
        return json_response(listing.list_collection(api, rt.name, dict(request.query), ctx))

    async def resource(request: web.Request) -> web.Response:
        rtype, uuid = request.match_info["rtype"], request.match_info["uuid"]
        rt = schema.resource(rtype)
        if rt is None or rt.name != rtype:
            raise ApiError(404, f"Unknown resource type {rtype}")
        ctx = request_ctx(request)
        if request.method == "GET":
            q = request.query
            fields = [f for f in q.get("fields", "").split(",") if f] or None
            body = api.read(rt.name, uuid, ctx, fields, "exclude_back_refs" in q,
                            "exclude_children" in q)
            resp = json_response(body)
            resp.headers["ETag"] = '"{}"'.format(
                body[rt.name].get("id_perms", {}).get("last_modified", ""))
            return resp
        if request.method == "PUT":
            out = api.update(rt.name, uuid, await read_json(request), ctx)
            return json_response(out) if out else empty_response()
        api.delete(rt.name, uuid, ctx)
        return empty_response()

    async def fqname_to_id(request: web.Request) -> web.Response:
        return json_response(api.fq_name_to_id(await read_json(request)))

    async def id_to_fqname(request: web.Request) -> web.Response:
        return json_response(api.id_to_fq_name(await read_json(request)))

    async def ref_update(request: web.Request) -> web.Response:
        return json_response(api.ref_update(await read_json(request), request_ctx(request)))

    async def ref_relax(request: web.Request) -> web.Response:
        return json_response(api.ref_relax(await read_json(request)))

    async def prop_get(request: web.Request) -> web.Response:
        return json_response(actions.prop_collection_get(api, dict(request.query)))

    async def prop_update(request: web.Request) -> web.Response:
        actions.prop_collection_update(api, await read_json(request))
        return empty_response()

    async def useragent_kv(request: web.Request) -> web.Response:
        out = actions.useragent_kv(api, await read_json(request))
        return json_response(out) if out is not None else empty_response()

    async def list_bulk(request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict) or not body.get("type"):
            raise ApiError(400, "Bad Request: list-bulk-collection needs a type")
        rt = api.rtype(str(body["type"]))
        params = {k: v for k, v in body.items() if k != "type"}
        ctx = request_ctx(request)
        if listing.truthy(body.get("exclude_hrefs")):
            ctx = RequestCtx(ctx.base_url, True, ctx.is_admin, ctx.project_id, ctx.user_agent)
        return json_response(listing.list_collection(api, rt.name, params, ctx))

    async def chown(request: web.Request) -> web.Response:
        return json_response(actions.chown(api, await read_json(request)))

    async def chmod(request: web.Request) -> web.Response:
        return json_response(actions.chmod(api, await read_json(request)))

    async def set_tag(request: web.Request) -> web.Response:
        return json_response(actions.set_tag(api, await read_json(request), request_ctx(request)))

    async def obj_perms(request: web.Request) -> web.Response:
        return json_response(actions.obj_perms(api, dict(request.query), request_token(request)))

    async def aaa_mode(request: web.Request) -> web.Response:
        if request.method == "PUT":
            return json_response(actions.aaa_mode_put(api, await read_json(request)))
        return json_response(actions.aaa_mode_get(api))

    async def vn_action(request: web.Request) -> web.Response:
        vn, action = request.match_info["uuid"], request.match_info["action"]
        body = await read_json(request)
        if action == "ip-alloc":
            return json_response(addressing.ip_alloc(api, vn, body))
        if action == "ip-free":
            addressing.ip_free(api, vn, body)
            return empty_response()
        if action == "subnet-ip-count":
            return json_response(addressing.subnet_ip_count(api, vn, body))
        raise ApiError(404, f"Unknown virtual-network action {action}")

    async def openapi(request: web.Request) -> web.Response:
        from tungsten.api.openapi import openapi_document

        return json_response(openapi_document(schema, f"{request.scheme}://{request.host}"))

    r = app.router
    r.add_get("/", homepage)
    r.add_get("/openapi.json", openapi)
    r.add_post("/fqname-to-id", fqname_to_id)
    r.add_post("/id-to-fqname", id_to_fqname)
    r.add_post("/ref-update", ref_update)
    r.add_post("/ref-relax-for-delete", ref_relax)
    r.add_get("/prop-collection-get", prop_get)
    r.add_post("/prop-collection-update", prop_update)
    r.add_post("/useragent-kv", useragent_kv)
    r.add_post("/list-bulk-collection", list_bulk)
    r.add_post("/chown", chown)
    r.add_post("/chmod", chmod)
    r.add_post("/set-tag", set_tag)
    r.add_get("/obj-perms", obj_perms)
    r.add_get("/aaa-mode", aaa_mode)
    r.add_put("/aaa-mode", aaa_mode)
    r.add_post("/virtual-network/{uuid}/{action}", vn_action)
    r.add_route("GET", "/{collection}", collection)
    r.add_route("POST", "/{collection}", collection)
    r.add_route("GET", "/{rtype}/{uuid}", resource)
    r.add_route("PUT", "/{rtype}/{uuid}", resource)
    r.add_route("DELETE", "/{rtype}/{uuid}", resource)
    return app
