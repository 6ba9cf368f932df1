"""The agent's local port API, served on a unix socket (what CNI and the CLI talk to).

    POST   /ports           {"vmi": UUID} or {"network": VN, "name"?: NAME, "project"?: P}
    DELETE /ports/{uuid}    idempotent: deleting an unknown port succeeds
    GET    /ports           local ports
    GET    /routes          installed routes   (?network=VN uuid or fq name)
    GET    /acls            ACL and SGs per port (?port=UUID)
    POST   /trace           {"port": UUID, "dst": IP, "src"?, "proto"?, "sport"?, "dport"?}
    GET    /status          sessions, headless, counts
    POST   /cni/add         CNI ADD   {"containerID", "ifname", "netns", "network", "name", ...}
    POST   /cni/del         CNI DEL   {"containerID", "ifname"}   idempotent
    POST   /cni/check       CNI CHECK {"containerID", "ifname", "prevResult"}
    POST   /cni/gc          CNI GC    {"name", "validAttachments": [{"containerID", "ifname"}]}
    GET    /cni/attachments the CNI attachments of this node
    GET    /cni/phases      where recent ADDs/DELs spent their time (?clear=1 empties it)
    GET    /flows           the flow log (?since=EPOCH&last=N&action=pass|deny&rule=UUID
                            &event=decision|start|end)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from tungsten.agent.agent import Agent
from tungsten.agent.cniservice import CniFailure, CniService, Plumber
from tungsten.agent.config import ConfigApiError

log = logging.getLogger("tungsten.agent")

AGENT_KEY = web.AppKey("agent", Agent)
CNI_KEY = web.AppKey("cni", CniService)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as e:
        raise web.HTTPBadRequest(text=f"the body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return data


def cni_service(agent: Agent, spool_dirs: list[Path] | None = None) -> CniService:
    """The CNI service for ``agent``: plumbing into the datapath's namespace with the linux
    datapath, none with sim (its ports need no devices)."""
    plumber = None
    if agent.datapath.name == "linux":
        plumber = Plumber(getattr(agent.datapath, "netns", None))
    return CniService(agent, plumber, spool_dirs or [])


def build_local_app(agent: Agent, cni: CniService | None = None) -> web.Application:
    app = web.Application()
    app[AGENT_KEY] = agent
    cni = cni or cni_service(agent)
    app[CNI_KEY] = cni

    def cni_handler(op: Any) -> Any:
        async def handle(request: web.Request) -> web.Response:
            try:
                data = await _body(request)
            except web.HTTPBadRequest as e:
                return _json({"code": 6, "msg": e.text or "bad body", "details": ""}, 400)
            try:
                return _json(await op(data))
            except CniFailure as e:
                return _json(e.body(), e.status)
            except Exception as e:  # a bug: still a CNI error object, and in the log
                log.exception("CNI %s failed", request.path)
                return _json({"code": 100, "msg": f"the agent failed: {e}",
                              "details": type(e).__name__}, 500)
        return handle

    async def add_port(request: web.Request) -> web.Response:
        data = await _body(request)
        vmi, network = data.get("vmi"), data.get("network")
        if not (isinstance(vmi, str) and vmi) and not (isinstance(network, str) and network):
            return _error(400, 'give {"vmi": UUID} or {"network": VN, "name": NAME}')
        try:
            wait = float(data.get("wait", 10.0))
            port = await agent.add_port(vmi or None, network=network or None,
                                        name=data.get("name") or None,
                                        project=data.get("project") or None, wait=wait)
        except ConfigApiError as e:
            return _error(e.status if 400 <= e.status < 500 else 502, str(e))
        except (TypeError, ValueError) as e:
            return _error(400, str(e))
        return _json(port)

    async def delete_port(request: web.Request) -> web.Response:
        uuid = request.match_info["uuid"]
        existed = await agent.delete_port(uuid)
        return _json({"uuid": uuid, "deleted": existed})

    async def list_ports(request: web.Request) -> web.Response:
        return _json(agent.ports())

    async def routes(request: web.Request) -> web.Response:
        return _json(agent.routes(request.query.get("network") or None))

    async def acls(request: web.Request) -> web.Response:
        port = request.query.get("port") or None
        out = agent.acls(port)
        if port and not out:
            return _error(404, f"no plugged port {port} on this node")
        return _json(out)

    async def trace(request: web.Request) -> web.Response:
        data = await _body(request)
        if not isinstance(data.get("port"), str) or not isinstance(data.get("dst"), str):
            return _error(400, 'give {"port": UUID, "dst": IP}')
        try:
            result = agent.trace(data["port"], data["dst"], src=data.get("src"),
                                 proto_=str(data.get("proto", "icmp")),
                                 sport=int(data.get("sport", 0)),
                                 dport=int(data.get("dport", 0)))
        except NotImplementedError as e:
            return _error(501, str(e))
        except (TypeError, ValueError) as e:
            return _error(400, str(e))
        return _json(dataclasses.asdict(result))

    async def status(request: web.Request) -> web.Response:
        return _json(agent.status())

    app.router.add_post("/ports", add_port)
    app.router.add_delete("/ports/{uuid}", delete_port)
    app.router.add_get("/ports", list_ports)
    app.router.add_get("/routes", routes)
    app.router.add_get("/acls", acls)
    app.router.add_post("/trace", trace)
    async def cni_list(request: web.Request) -> web.Response:
        return _json(cni.list())

    app.router.add_get("/status", status)
    app.router.add_post("/cni/add", cni_handler(cni.add))
    app.router.add_post("/cni/del", cni_handler(cni.delete))
    app.router.add_post("/cni/check", cni_handler(cni.check))
    app.router.add_post("/cni/gc", cni_handler(cni.gc))
    app.router.add_get("/cni/attachments", cni_list)

    async def cni_phases(request: web.Request) -> web.Response:
        out = list(cni.phases)
        if request.query.get("clear"):
            cni.phases.clear()
        return _json(out)

    app.router.add_get("/cni/phases", cni_phases)

    async def flows(request: web.Request) -> web.Response:
        rec = agent.flow_recorder
        if rec is None:
            return _error(404, f"the agent of {agent.node} keeps no flow log (it runs the "
                               f"{agent.datapath.name} datapath; the log needs linux)")
        q = request.query
        try:
            since = float(q["since"]) if q.get("since") else None
            last = int(q["last"]) if q.get("last") else None
        except ValueError:
            return _error(400, "since is a time (seconds since the epoch), last a count")
        return _json({"node": agent.node, **rec.status(),
                      "records": rec.records(since=since, last=last,
                                             action=q.get("action") or None,
                                             rule=q.get("rule") or None,
                                             event=q.get("event") or None)})

    app.router.add_get("/flows", flows)
    return app


def spool_dir_for(socket_path: Path) -> Path:
    """Where ``tungsten-cni`` leaves deletes while the agent is down (its default)."""
    return Path(str(socket_path) + ".pending")


async def serve_unix(agent: Agent, path: Path) -> web.AppRunner:
    """Serve the local API on ``path`` (a stale socket file from a dead agent is replaced)."""
    if path.exists() or path.is_symlink():
        if not path.is_socket():
            raise OSError(f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # nobody answers: left over by an agent that died
            else:
                raise OSError(f"another agent is serving on {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    cni = cni_service(agent, [spool_dir_for(path)])
    await cni.start()  # deletes spooled while the agent was away go first
    runner = web.AppRunner(build_local_app(agent, cni), access_log=None, handle_signals=False)

    async def stop_cni(app: web.Application) -> None:
        await cni.stop()

    runner.app.on_cleanup.append(stop_cni)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(path)).start()
        os.chmod(path, 0o660)
    except BaseException:
        await runner.cleanup()
        raise
    return runner
