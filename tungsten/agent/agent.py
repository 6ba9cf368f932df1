"""The vRouter agent: control sessions in, datapath state out.

An ``Agent`` is a plain object (no globals, no signal handlers), so one process can run
hundreds of them (``tungsten sim``).  Every change (a control message, a port added or
deleted) marks the agent dirty; one reconcile task coalesces a burst into a single pass:

    merged view (config from the primary session, routes from all)
      -> desired_state (pure) -> Datapath.apply
      -> originated_routes from what is installed -> routes/subscribe/ack to each session

Headless (TF's headless mode): when every control session is gone the last view and the
datapath stay as they are and forwarding continues; a returning session's snapshot replaces
the view in one step, so routes that are still valid are never withdrawn and re-added.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from tungsten.agent.config import ConfigApiError, ConfigClient
from tungsten.agent.ports import PortRecord, PortRegistry
from tungsten.agent.session import ControlSession
from tungsten.agent.state import (
    RouteMemo,
    desired_state,
    ifname_for,
    merge_views,
    originated_routes,
    port_gateway,
    port_mtu,
    route_diff,
)
from tungsten.control import protocol as proto
from tungsten.control.protocol import Route, View
from tungsten.datapath.base import Datapath, DatapathState, NextHop, Packet, TraceResult

log = logging.getLogger("tungsten.agent")

REGISTER_RETRY_MAX = 10.0


class Agent:
    def __init__(self, node: str, underlay_ip: str, controls: list[str], datapath: Datapath,
                 api_url: str | None = None, state_dir: Path | None = None, mtu: int = 1500,
                 *, settle: float = 0.02, http: aiohttp.ClientSession | None = None,
                 register: bool = True, stale_time: float = 15.0,
                 flow_log: bool = True) -> None:
        if not controls and api_url is None:
            raise ValueError("an agent needs at least one control URL")
        self.node = node
        self.underlay_ip = underlay_ip
        self.controls = list(controls)
        self.datapath = datapath
        self.api_url = api_url or self.controls[0]
        self.state_dir = state_dir
        self.mtu = mtu
        self._settle = settle  # coalescing window for bursts of changes
        self._register = register
        self._own_http = http is None
        self._http = http
        self._registry = PortRegistry()
        self._sessions: list[ControlSession] = []
        self._primary: ControlSession | None = None
        self._view: View | None = None
        self._route_memo = RouteMemo()  # routes unchanged between passes are not rebuilt
        self._originated: dict[str, Route] = {}
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._plug_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._reconcile_waiters: list[asyncio.Future[None]] = []
        self._config_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._config: ConfigClient | None = None
        self.vrouter_uuid: str | None = None
        # Graceful restart, agent side: after a headless spell, the routes learnt before are
        # kept as stale for ``stale_time`` seconds while the control node relearns what the
        # other agents re-announce, so a restarted control node flaps nothing.
        self.stale_time = stale_time
        self._headless_since: float | None = None
        self._stale_routes: dict[str, Any] = {}
        self._stale_until = 0.0
        # the linux datapath's flow log (nflog + conntrack events; see flowrecorder.py)
        self._flow_log = flow_log
        self.flow_recorder: Any = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Adopt the persisted ports, register, connect to every control node."""
        self._registry = PortRegistry.load(self.state_dir)
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._config = ConfigClient(self._http, self.api_url)
        self._sessions = [ControlSession(u, self._http, self._hello, self._session_event)
                          for u in self.controls]
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="agent reconcile"))
        if self._register or self._registry.pending_deletes:
            self._tasks.append(asyncio.create_task(self._config_loop(), name="agent config"))
        for s in self._sessions:
            s.start()
        if self._flow_log and self.datapath.name == "linux" and self.flow_recorder is None:
            from tungsten.agent.flowrecorder import FILE_NAME, FlowRecorder

            rec = FlowRecorder(getattr(self.datapath, "netns", None),
                               self.state_dir / FILE_NAME if self.state_dir else None,
                               state=self.datapath.current)
            await asyncio.to_thread(rec.start)
            self.flow_recorder = rec

    async def stop(self) -> None:
        """Disconnect; the datapath keeps forwarding (an agent stop never flushes it)."""
        for s in self._sessions:
            await s.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        for waiters in self._plug_waiters.values():
            for f in waiters:
                f.cancel()
        self._plug_waiters.clear()
        for f in self._reconcile_waiters:
            f.cancel()
        self._reconcile_waiters.clear()
        for waiters in self._config_waiters.values():
            for f in waiters:
                f.cancel()
        self._config_waiters.clear()
        await self._registry.flush()
        if self.flow_recorder is not None:
            await asyncio.to_thread(self.flow_recorder.stop)
            self.flow_recorder = None
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None

    # -- ports -------------------------------------------------------------------------------
    async def add_port(self, vmi: str | None = None, *, network: str | None = None,
                       name: str | None = None, project: str | None = None,
                       wait: float = 10.0, ip: str | None = None,
                       mac: str | None = None, persist: bool = True,
                       new_uuid: str | None = None) -> dict[str, Any]:
        """Register a port on this node (creating the VMI + instance-ip when given a network,
        with ``new_uuid`` as its uuid when given) and wait up to ``wait`` seconds until it
        is plugged (its config arrived and it is in the datapath).  Returns the port as
        ``port_info`` shows it.  ``persist=False``: the registry is committed soon, not
        before returning (the caller commits)."""
        created = False
        if vmi is None:
            if not network:
                raise ValueError("give a port uuid (vmi) or a network")
            assert self._config is not None, "start() the agent first"
            vmi = await self._config.create_port(network, name or "", project, self.node,
                                                 ip=ip, mac=mac, uuid=new_uuid) \
                if name else await self._create_unnamed(network, project)
            created = True
        old = self._registry.ports.get(vmi)
        rec = PortRecord(vmi, name or (old.name if old else ""),
                         created or bool(old and old.created))
        if rec != old or vmi in self._registry.pending_deletes:
            self._registry.ports[vmi] = rec
            if vmi in self._registry.pending_deletes:
                self._registry.pending_deletes.remove(vmi)
            if persist:
                await self._registry.commit()
            else:
                self._registry.commit_soon()
        await self._subscribe_now(vmi)
        self._kick()
        if wait > 0 and not self._installed(vmi):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._plug_waiters.setdefault(vmi, []).append(fut)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(fut, wait)
        return self.port_info(vmi)

    async def _subscribe_now(self, vmi: str) -> None:
        """Ask for a new port's config at once, not after the next reconcile pass: its
        config is what an ADD waits for (the pass re-subscribes it; that is harmless)."""
        for s in self._sessions:
            if s.established and not s.resync and vmi not in s.subscribed \
                    and await s.send({"type": proto.SUBSCRIBE, "ports": [vmi]}):
                s.subscribed.add(vmi)

    async def _create_unnamed(self, network: str, project: str | None) -> str:
        import uuid as uuidlib

        assert self._config is not None
        return await self._config.create_port(network, f"{self.node}-{uuidlib.uuid4().hex[:12]}",
                                              project, self.node)

    async def delete_port(self, uuid: str) -> bool:
        """Forget a port (idempotent: an unknown port is already deleted).  A VMI the agent
        created is deleted through the config API, later if the API is unreachable now."""
        rec = self._registry.ports.pop(uuid, None)
        if rec is None:
            return False
        if rec.created:
            self._registry.pending_deletes.append(uuid)
        await self._registry.commit()  # the owed deletion survives a crash from here on
        self._kick()
        if rec.created:
            await self._flush_deletes()
        return True

    def _installed(self, uuid: str, installed: DatapathState | None = None) -> bool:
        """Plugged, and with its addresses when the agent created the port (and so its
        instance-ip): a control node that has not yet seen the instance-ip (another
        controller wrote it) sends the port without addresses first."""
        cur = installed or self.datapath.current()
        lp = cur.ports.get(uuid) if cur is not None else None
        if lp is None:
            return False
        rec = self._registry.ports.get(uuid)
        return bool(lp.ips) or not (rec and rec.created)

    async def port_by_name(self, fq_name: list[str]) -> str | None:
        """The uuid of the VMI named ``fq_name`` (None: none, or the config API is away)."""
        if self._config is None:
            return None
        try:
            return await self._config.fq_name_to_id("virtual-machine-interface", fq_name)
        except ConfigApiError:
            return None

    @property
    def registry(self) -> PortRegistry:
        """The persisted port registry (CNI attachments live there too)."""
        return self._registry

    def port_info(self, uuid: str) -> dict[str, Any]:
        cur = self.datapath.current()
        lp = cur.ports.get(uuid) if cur else None
        rec = self._registry.ports.get(uuid)
        view = self._view or {}
        info: dict[str, Any] = {"uuid": uuid, "name": rec.name if rec else "",
                                "ifname": ifname_for(uuid),
                                "mtu": port_mtu(self.mtu, self.underlay_ip),
                                "plugged": lp is not None, "created": bool(rec and rec.created)}
        pc = view.get("ports", {}).get(uuid)
        if pc is not None:
            info["name"] = pc.get("name") or info["name"]
            info["network"] = pc["network"]
            info["mac"] = pc["mac"]
            info["ips"] = [ip["address"] for ip in pc.get("ips", ())]
        if lp is not None:
            net = view.get("networks", {}).get(lp.network, {})
            info.update(network=lp.network, network_name=net.get("name"), mac=lp.mac,
                        ips=list(lp.ips), vni=lp.vni, sgs=list(lp.sgs),
                        gateway=port_gateway(view, lp),
                        prefix_len=_prefix_len(pc, lp.ips[0] if lp.ips else None))
        return info

    def live_config(self) -> View:
        """The config part of the view as the primary (or another live) session holds it
        now: a delta is in it as soon as it arrives, before the reconcile pass it starts
        (``view`` is the merged view that pass computes from).  Read-only."""
        live = [s for s in self._sessions if s.established and s.view is not None]
        s = self._primary if self._primary in live else (live[0] if live else None)
        return (s.view if s is not None else None) or self.view

    def port_config(self, uuid: str) -> dict[str, Any] | None:
        """The port's config (MAC, addresses, network) from ``live_config``; None until
        the control node sent all of it (a port without addresses yet is not complete)."""
        view = self.live_config()
        pc = view.get("ports", {}).get(uuid)
        if pc is None or not pc.get("mac") or not pc.get("ips") \
                or pc.get("network") not in view.get("networks", {}):
            return None
        return {"uuid": uuid, "ifname": ifname_for(uuid), "network": pc["network"],
                "mac": pc["mac"], "ips": [ip["address"] for ip in pc["ips"]],
                "mtu": port_mtu(self.mtu, self.underlay_ip)}

    async def wait_port_config(self, uuid: str, timeout: float) -> dict[str, Any] | None:
        """``port_config`` once it is complete, waiting up to ``timeout`` seconds for the
        control node's deltas (woken by the delta itself, not by a reconcile pass)."""
        info = self.port_config(uuid)
        if info is not None or timeout <= 0:
            return info
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._config_waiters.setdefault(uuid, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            waiters = self._config_waiters.get(uuid)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._config_waiters[uuid]
        return self.port_config(uuid)

    def _wake_config_waiters(self) -> None:
        for uuid in [u for u in self._config_waiters if self.port_config(u) is not None]:
            for f in self._config_waiters.pop(uuid):
                if not f.done():
                    f.set_result(None)

    def ports(self) -> list[dict[str, Any]]:
        return [self.port_info(u) for u in sorted(self._registry.ports)]

    # -- introspection -----------------------------------------------------------------------
    @property
    def view(self) -> View:
        """The merged view the datapath was last computed from (empty before any)."""
        return self._view or {c: {} for c in proto.COLLECTIONS}

    @property
    def headless(self) -> bool:
        return not any(s.established for s in self._sessions)

    def routes(self, network: str | None = None) -> list[dict[str, Any]]:
        """Installed routes, per VRF (``network``: a VN uuid or fq name to filter)."""
        cur = self.datapath.current()
        out: list[dict[str, Any]] = []
        for vrf in (cur.vrfs.values() if cur else ()):
            if network and network not in (vrf.network, vrf.name):
                continue
            for prefix, nhs in vrf.routes.items():
                out.append({"network": vrf.network, "vrf": vrf.name, "vni": vrf.vni,
                            "prefix": prefix, "nexthops": [_nh_dict(n) for n in nhs]})
        return out

    def converged_routes(self) -> int:
        """Routes installed in the datapath, over all VRFs."""
        cur = self.datapath.current()
        return 0 if cur is None else sum(len(v.routes) for v in cur.vrfs.values())

    def acls(self, port: str | None = None) -> list[dict[str, Any]]:
        """The network ACL and security groups that apply to each (or one) local port."""
        cur = self.datapath.current()
        out: list[dict[str, Any]] = []
        for p in (cur.ports.values() if cur else ()):
            if port and p.uuid != port:
                continue
            vrf = cur.vrfs[p.network] if cur else None
            out.append({"port": p.uuid, "ifname": p.ifname, "network": p.network,
                        "vrf": vrf.name if vrf else None,
                        "acl": list(vrf.acl) if vrf else [],
                        "security_groups": [{"id": i, **(cur.security_groups.get(i) or {})}
                                            for i in p.sgs] if cur else []})
        return out

    def trace(self, port: str, dst: str, *, src: str | None = None, proto_: str = "icmp",
              sport: int = 0, dport: int = 0) -> TraceResult:
        """Where a packet from local ``port`` to ``dst`` goes (needs a tracing datapath)."""
        tracer = getattr(self.datapath, "trace", None)
        if tracer is None:
            raise NotImplementedError(f"the {self.datapath.name} datapath cannot trace")
        cur = self.datapath.current()
        lp = cur.ports.get(port) if cur else None
        if src is None:
            src = lp.ips[0] if lp and lp.ips else "0.0.0.0"
        result: TraceResult = tracer(port, Packet(src=src, dst=dst, proto=proto_, sport=sport,
                                                  dport=dport))
        return result

    def status(self) -> dict[str, Any]:
        return {"node": self.node, "underlay_ip": self.underlay_ip, "headless": self.headless,
                "vrouter": self.vrouter_uuid, "datapath": self.datapath.name,
                "ports": len(self._registry.ports), "routes": self.converged_routes(),
                "sessions": [{"url": s.url, "established": s.established,
                              "session": s.session_id, "revision": s.revision,
                              "primary": s is self._primary, "error": s.last_error}
                             for s in self._sessions]}

    # -- control sessions --------------------------------------------------------------------
    def _hello(self) -> dict[str, Any]:
        return {"node": self.node, "underlay_ip": self.underlay_ip,
                "ports": sorted(self._registry.ports)}

    def _session_event(self, s: ControlSession, kind: str) -> None:
        if kind == "lost" and not s.established and self._primary is s:
            self._primary = None  # another live session (if any) takes over the config
        self._kick()
        if self._config_waiters:
            self._wake_config_waiters()

    def _merged_view(self) -> View | None:
        live = [s for s in self._sessions if s.established and s.view is not None]
        loop = asyncio.get_running_loop()
        if not live:
            # Headless: keep what we had; sessions that are down still hold their last view.
            if self._view is not None and self._headless_since is None:
                self._headless_since = loop.time()
            return self._view
        if self._headless_since is not None:
            self._headless_since = None
            if self._view is not None and self.stale_time > 0:
                self._stale_routes = dict(self._view.get("routes", {}))
                self._stale_until = loop.time() + self.stale_time
                loop.call_later(self.stale_time, self._kick)
        if self._primary not in live:
            self._primary = live[0]
        assert self._primary is not None and self._primary.view is not None
        merged = merge_views(self._primary.view, [s.view for s in live
                                                  if s is not self._primary and s.view])
        if self._stale_routes:
            if loop.time() >= self._stale_until:
                self._stale_routes = {}  # what was not re-announced by now is really gone
            else:
                merged["routes"] = {**self._stale_routes, **merged["routes"]}
        return merged

    def _kick(self) -> None:
        self._dirty.set()

    async def _reconcile_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = -self._settle
        while True:
            await self._dirty.wait()
            # leading edge: a change after a quiet spell is taken at once; within a burst,
            # passes start at most once per settle window (a pass in progress coalesces
            # what arrives meanwhile too)
            wait = last + self._settle - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            last = loop.time()
            try:
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("agent %s: reconcile failed", self.node)

    async def _reconcile(self) -> None:
        view = self._merged_view()
        if view is not None:
            self._view = view
            want = desired_state(self.node, self.underlay_ip, view, self._registry.ports,
                                 self.mtu, self._route_memo)
            if want != self.datapath.current():
                # a datapath that applies in a thread of its own (linux) leaves the loop
                # serving meanwhile; changes arriving then are taken by the next pass
                apply_async = getattr(self.datapath, "apply_async", None)
                if apply_async is not None:
                    await apply_async(want)
                else:
                    self.datapath.apply(want)
        installed = self.datapath.current()
        if view is not None:
            self._originated = originated_routes(self.node, self.underlay_ip, view, installed)
        self._wake_waiters(installed)
        waiters, self._reconcile_waiters = self._reconcile_waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)
        ports = set(self._registry.ports)
        for s in self._sessions:
            if s.established:
                await self._sync(s, ports, self._originated)

    async def reconciled(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for the end of the next reconcile pass: the view
        and the datapath may have changed then."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reconcile_waiters.append(fut)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(fut, timeout)

    def _wake_waiters(self, installed: DatapathState | None) -> None:
        for uuid in [u for u in self._plug_waiters if self._installed(u, installed)]:
            for f in self._plug_waiters.pop(uuid):
                if not f.done():
                    f.set_result(None)

    async def _sync(self, s: ControlSession, ports: set[str],
                    routes: Mapping[str, Route]) -> None:
        """Bring one control node up to date with our ports and routes, then ack."""
        if s.resync:  # freshly (re)established: tell it everything once
            add, gone = list(routes.values()), [k for k in s.advertised if k not in routes]
            sub, unsub = sorted(ports), sorted(s.subscribed - ports)
            s.resync = False
        else:
            add, gone = route_diff(s.advertised, routes)
            sub, unsub = sorted(ports - s.subscribed), sorted(s.subscribed - ports)
        ok = True
        if sub:
            ok = await s.send({"type": proto.SUBSCRIBE, "ports": sub}) and ok
        if unsub:
            ok = await s.send({"type": proto.UNSUBSCRIBE, "ports": unsub}) and ok
        if add or gone:
            ok = await s.send({"type": proto.ROUTES, "add": add, "del": gone}) and ok
        if not ok:
            s.resync = True  # the reader reconnects; everything is sent again then
            return
        s.subscribed = set(ports)
        s.advertised = dict(routes)
        if s.revision is not None and s.acked != s.revision \
                and await s.send({"type": proto.ACK, "revision": s.revision}):
            s.acked = s.revision

    # -- config API --------------------------------------------------------------------------
    async def _config_loop(self) -> None:
        """Register the virtual-router and settle owed deletions, retrying until done."""
        delay = 0.2
        while (self._register and self.vrouter_uuid is None) or self._registry.pending_deletes:
            try:
                if self._register and self.vrouter_uuid is None:
                    assert self._config is not None
                    self.vrouter_uuid = await self._config.register_vrouter(self.node,
                                                                            self.underlay_ip)
                await self._flush_deletes(raise_errors=True)
                delay = 0.2
            except ConfigApiError as e:
                log.info("agent %s: config API: %s (retrying)", self.node, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, REGISTER_RETRY_MAX)

    async def _flush_deletes(self, raise_errors: bool = False) -> None:
        assert self._config is not None
        for uuid in list(self._registry.pending_deletes):
            try:
                await self._config.delete_port(uuid)
            except ConfigApiError as e:
                if raise_errors:
                    raise
                log.info("agent %s: deleting port %s later: %s", self.node, uuid, e)
                if not any(t.get_name() == "agent config" and not t.done()
                           for t in self._tasks):
                    self._tasks.append(asyncio.create_task(self._config_loop(),
                                                           name="agent config"))
                return
            if uuid in self._registry.pending_deletes:
                self._registry.pending_deletes.remove(uuid)
                # lazily: a crash before the write only deletes a deleted port again
                self._registry.commit_soon()


def _nh_dict(nh: NextHop) -> dict[str, Any]:
    return {k: v for k, v in (("kind", nh.kind), ("port", nh.port), ("vtep", nh.vtep),
                              ("vni", nh.vni), ("mac", nh.mac), ("node", nh.node))
            if v is not None}


def _prefix_len(pc: Mapping[str, Any] | None, address: str | None) -> int | None:
    for ip in (pc or {}).get("ips", ()):
        if ip.get("address") == address and ip.get("prefix_len") is not None:
            return int(ip["prefix_len"])
    return None
