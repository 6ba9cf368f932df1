"""The agent's side of CNI: attachments ``(containerID, ifname)`` -> ports.

``tungsten-cni`` is a thin client; this service does the work of each command:

- **ADD** records the attachment (before anything exists, so a crash half-way is found
  later; the port's uuid, and so its device's name, is chosen first), creates the port
  (VMI + instance-ip through the config API) while a thread makes its veth pair, waits for
  its config from the control node (woken by the delta), addresses the container's end (or
  host-device mode), waits until the datapath has installed it (the pass that config
  started usually finds the device there), and answers with the CNI result.  Any failure
  undoes what this ADD made before the error goes back.
- **DEL** releases what the record names (device, port, address), idempotently; an unknown
  attachment is already deleted.
- **CHECK** compares the container's interface, addresses and routes with the result.
- **GC** releases every attachment of the network config that is not in the valid list.
- **sweep** (at start, then periodically) releases attachments a spooled DEL names (the
  plugin writes one when the agent does not answer), whose netns is gone, or whose ADD never
  finished (the agent died during it).

Errors carry the CNI error code the plugin prints.  Plumbing (pyroute2, synchronous) runs
in worker threads of its own; with the ``sim`` datapath there is none.  The registry is
committed (group commits, ``ports.py``) where a crash must find the attachment: before the
port is created, before the device exists, and before ADD answers.  Each command's phases
are timed (``Phases``; ``GET /cni/phases``, and the debug log).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import logging
import os
import signal
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tungsten.agent.agent import Agent
from tungsten.agent.config import ConfigApiError
from tungsten.agent.ports import Attachment, PortRecord, attachment_key
from tungsten.agent.state import ifname_for, port_mtu

log = logging.getLogger("tungsten.agent.cni")

T = TypeVar("T")

# CNI error codes (the plugin's tungsten.cni.spec has the same numbers)
E_CONTAINER, E_ENV, E_CONFIG, E_TRY_AGAIN = 3, 4, 7, 11
E_AGENT, E_IF_EXISTS, E_API, E_NOT_READY, E_CHECK = 100, 101, 102, 103, 104
SWEEP_INTERVAL = 10.0
PHASES_KEPT = 1000  # per-command phase breakdowns kept for ``GET /cni/phases``


class Phases:
    """Wall time of the phases of one command, in milliseconds, in order (``mark(name)``
    closes the phase that began at the previous mark)."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.t0 = self._last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = round(self.ms.get(name, 0.0) + (now - self._last) * 1000, 3)
        self._last = now

    def record(self) -> dict[str, Any]:
        # start: CLOCK_MONOTONIC seconds, comparable with the plugin's and a benchmark's
        return {"command": self.command, "start": round(self.t0, 6), "total_ms":
                round((time.perf_counter() - self.t0) * 1000, 3), "phases": dict(self.ms)}


class CniFailure(Exception):
    def __init__(self, code: int, msg: str, details: str = "", status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.details, self.status = code, msg, details, status

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg, "details": self.details}


def _quiet_child() -> None:
    """In a forked child (pyroute2's ``IPRoute(netns=...)`` forks one, and SIGTERMs it on
    close; plumbing no longer uses it, the datapath still does once at start, and helpers
    such as ``conntrack`` are forked too): drop the agent's signal wiring, or the child's
    SIGTERM is written to the event loop's wakeup fd it shares with the agent, and the
    agent stops."""
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, signal.SIG_DFL)


_fork_guard = False


PLUMB_THREADS = 4  # parallel ADDs/DELs plumb in parallel (the kernel waits, not Python)


class Plumber:
    """Runs ``plumb`` calls in worker threads (pyroute2 refuses the agent's loop).  Each
    call opens its own netlink sockets, switching only its own thread into namespaces."""

    def __init__(self, node_netns: str | None) -> None:
        global _fork_guard
        if not _fork_guard:
            os.register_at_fork(after_in_child=_quiet_child)
            _fork_guard = True
        self.node_netns = node_netns
        self._pool = ThreadPoolExecutor(max_workers=PLUMB_THREADS,
                                        thread_name_prefix="cni-plumb")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Start ``fn`` now; await it with ``asyncio.wrap_future`` (a thread cannot be
        stopped: whoever undoes its work waits for it first)."""
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _str(data: dict[str, Any], key: str, required: bool = True) -> str:
    v = data.get(key, "")
    if v is None:
        v = ""
    if not isinstance(v, str) or (required and not v):
        raise CniFailure(E_CONFIG if key not in ("containerID", "ifname", "netns") else E_ENV,
                         f"{key} must be a non-empty string" if required
                         else f"{key} must be a string", key)
    return v


def _real(addr: Any) -> bool:
    """An address that is set (TF spells "none" 0.0.0.0)."""
    return bool(addr) and addr not in ("0.0.0.0", "::")


def _subnet_of(view: dict[str, Any], network: str, ip: str) -> dict[str, Any]:
    addr = ipaddress.ip_address(ip)
    for s in view.get("networks", {}).get(network, {}).get("subnets", ()):
        with contextlib.suppress(KeyError, ValueError):
            if addr in ipaddress.ip_network(s["prefix"], strict=False):
                return dict(s)
    return {}


class CniService:
    def __init__(self, agent: Agent, plumber: Plumber | None,
                 spool_dirs: Iterable[Path] = (), sweep_interval: float = SWEEP_INTERVAL) \
            -> None:
        self.agent = agent
        self.plumber = plumber
        self.spool_dirs = [Path(p) for p in spool_dirs]
        self.sweep_interval = sweep_interval
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        # recent commands' phase breakdowns (GET /cni/phases; bench/cni --phases)
        self.phases: deque[dict[str, Any]] = deque(maxlen=PHASES_KEPT)

    @property
    def attachments(self) -> dict[str, Attachment]:
        return self.agent.registry.attachments

    async def _commit(self) -> None:
        await self.agent.registry.commit()

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Settle what happened while the agent was away, then keep sweeping."""
        await self.sweep(first=True)
        if self.sweep_interval > 0:
            self._task = asyncio.create_task(self._sweep_loop(), name="cni sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.plumber is not None:
            self.plumber.close()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("CNI sweep failed")

    # -- ADD ---------------------------------------------------------------------------------
    async def add(self, data: dict[str, Any]) -> dict[str, Any]:
        cid, ifname = _str(data, "containerID"), _str(data, "ifname")
        netns, network = _str(data, "netns"), _str(data, "network")
        key = attachment_key(cid, ifname)
        ph = Phases("ADD")
        async with self._lock(key):
            ph.mark("queued")
            old = self.attachments.get(key)
            if old is not None:
                if self.plumber is not None and await self.plumber.run(_has_link, netns, ifname):
                    raise CniFailure(E_IF_EXISTS, f"container {cid} already has {ifname} "
                                     "attached: DEL it first", key)
                await self._release(old)  # a half-done or stale attachment: start afresh
            self._drop_spool_note(key, str(data.get("spoolDir") or ""))
            if not os.path.exists(netns):
                raise CniFailure(E_CONTAINER, f"the network namespace {netns} does not exist",
                                 netns)
            if self.plumber is not None and await self.plumber.run(_has_link, netns, ifname):
                raise CniFailure(E_IF_EXISTS, f"the container already has an interface "
                                 f"{ifname}", ifname)
            labels = data.get("labels") or {}
            # the port's uuid is chosen here, so its node-side device is named before
            # anything exists: the record below names both, and the veth is made while the
            # config API creates the port
            port = str(uuidlib.uuid4())
            att = Attachment(cid, ifname, netns, network, _str(data, "name"),
                             port=port, host_ifname=ifname_for(port),
                             device=_str(data, "device", required=False),
                             spool_dir=str(data.get("spoolDir") or ""),
                             labels={str(k): str(v) for k, v in labels.items()}
                             if isinstance(labels, dict) else {})
            self.attachments[key] = att
            ph.mark("checks")
            await self._commit()  # recorded before anything exists: a crash finds it
            ph.mark("record")
            try:
                att.result = await self._add(att, data, ph)
            except BaseException as e:
                with contextlib.suppress(Exception):
                    await self._release(att)
                if isinstance(e, CniFailure | asyncio.CancelledError):
                    raise
                if isinstance(e, ConfigApiError):
                    raise _api_failure(e, "network") from None
                log.exception("CNI ADD %s failed", key)
                raise CniFailure(E_AGENT, f"ADD failed: {e}", type(e).__name__, 500) from None
            att.state = "ready"
            await self._commit()
            ph.mark("commit")
            self._keep(ph, key)
            return att.result

    def _keep(self, ph: Phases, key: str) -> None:
        rec = ph.record()
        self.phases.append(rec)
        log.debug("CNI %s %s: %.1f ms %s", ph.command, key, rec["total_ms"], rec["phases"])

    async def _add(self, att: Attachment, data: dict[str, Any], ph: Phases) \
            -> dict[str, Any]:
        """ADD after the record: create the port and make its veth at once, then (its
        config in) address the container side and wait for the datapath.  On failure the
        veth is settled (made or not) before ``_release`` undoes it."""
        veths: list[concurrent.futures.Future[str]] = []
        try:
            return await self._add_steps(att, data, ph, veths)
        except BaseException:
            for veth in veths:
                with contextlib.suppress(BaseException):
                    await asyncio.wrap_future(veth)
            raise

    async def _add_steps(self, att: Attachment, data: dict[str, Any], ph: Phases,
                         veths: list[concurrent.futures.Future[str]]) -> dict[str, Any]:
        try:
            timeout = float(data.get("timeout") or 60.0)
            want_mtu = int(data.get("mtu") or 0)
            ips = [str(ipaddress.ip_address(i)) for i in data.get("ips") or []]
        except (TypeError, ValueError) as e:
            raise CniFailure(E_CONFIG, f"invalid request: {e}", "timeout, mtu or ips") \
                from None
        if len(ips) > 1:
            raise CniFailure(E_CONFIG, "one requested address per attachment is supported",
                             "runtimeConfig.ips")
        mac = str(data.get("mac") or "") or _mac_for(att.port)
        mtu = port_mtu(self.agent.mtu, self.agent.underlay_ip)
        if want_mtu:
            if want_mtu > mtu:
                raise CniFailure(E_CONFIG, f"mtu {want_mtu} exceeds the overlay MTU {mtu} of "
                                 "this node (underlay MTU minus the VXLAN overhead)", "mtu")
            mtu = want_mtu
        p = self.plumber
        veth: concurrent.futures.Future[str] | None = None
        if p is not None and not att.device:
            # made while the port is created and its config comes: the reconcile pass that
            # config starts finds the device and installs the port at once
            veth = p.submit(_make_veth, p.node_netns, att.netns, att.host_ifname, mac, mtu,
                            att.ifname)
            veths.append(veth)
        info = await self.agent.add_port(network=att.network,
                                         name=_port_name(self.agent.node, att), wait=0,
                                         ip=ips[0] if ips else None, mac=mac, persist=False,
                                         new_uuid=att.port)
        if str(info["uuid"]) != att.port:  # a port of that name existed: adopted
            if veth is not None:
                await self._drop_veth(veth, att.host_ifname)
                veth = None
            att.port, att.host_ifname = str(info["uuid"]), str(info["ifname"])
            await self._commit()  # on record before its device exists
        ph.mark("create")
        info = await self._wait_config(att.port, timeout)
        ph.mark("config")
        if ips and ipaddress.ip_address(ips[0]) not in {ipaddress.ip_address(i)
                                                        for i in info["ips"]}:
            raise CniFailure(E_API, f"the port got {info['ips']}, not the requested {ips[0]}",
                             "runtimeConfig.ips", 409)
        if veth is not None and str(info["mac"]).lower() != mac.lower():
            await self._drop_veth(veth, att.host_ifname)  # the API chose another MAC
            veth = None
        view = self.agent.live_config()
        subnets = [_subnet_of(view, info["network"], ip) for ip in info["ips"]]
        if ips and not subnets[0]:
            raise CniFailure(E_CONFIG, f"invalid network config: runtimeConfig.ips: {ips[0]} "
                             f"is in no subnet of {att.network}", "runtimeConfig.ips")
        gateways = [str(s["gateway"]) for s in subnets if _real(s.get("gateway"))]
        host_mac = ""
        gw = gateways[0] if gateways else None
        routes: list[tuple[str, str]] = []
        if gw:
            # the container's first interface takes the default route; a further one (a
            # second network, as Multus adds it) routes its own subnet through its gateway
            v = ipaddress.ip_address(gw).version
            first = self.plumber is None or not await self.plumber.run(
                _has_default_route, att.netns, v)
            routes = [("0.0.0.0/0" if v == 4 else "::/0", gw)] if first else \
                [(str(s["prefix"]), gw) for s in subnets[:1] if s.get("prefix")]
        if p is not None:
            if att.device:
                try:
                    att.device_peer = await p.run(_adopt, p.node_netns, att.device, att.netns,
                                                  att.host_ifname, info["mac"], info["ips"],
                                                  gw, mtu, att.ifname, routes)
                except LookupError as e:
                    raise CniFailure(E_CONFIG, str(e), "device") from None
                await self._commit()
                host = await p.run(_inspect, p.node_netns, att.host_ifname)
                host_mac = host["mac"] if host else ""
            elif veth is not None:
                host_mac = await asyncio.wrap_future(veth)
                await p.run(_configure, att.netns, att.ifname, info["ips"], gw, routes)
            else:
                host_mac = await p.run(_plug, p.node_netns, att.netns, att.host_ifname,
                                       info["mac"], info["ips"], gw, mtu, att.ifname, routes)
        ph.mark("plug")
        plugged = await self.agent.add_port(att.port, wait=timeout)
        ph.mark("install")
        if not plugged.get("plugged"):
            raise CniFailure(E_NOT_READY, f"the datapath did not install port {att.port} "
                             f"within {timeout:g} s", att.port, 503)
        host_if: dict[str, Any] = {"name": att.host_ifname}
        if host_mac:
            host_if["mac"] = host_mac
        dns = sorted({str(s["dns"]) for s in subnets if _real(s.get("dns"))})
        return {
            "interfaces": [host_if, {"name": att.ifname, "mac": info["mac"], "mtu": mtu,
                                     "sandbox": att.netns}],
            "ips": [{"address": f"{ip}/{ipaddress.ip_address(ip).max_prefixlen}",
                     **({"gateway": str(sn["gateway"])} if _real(sn.get("gateway")) else {}),
                     "interface": 1}
                    for ip, sn in zip(info["ips"], subnets, strict=True)],
            "routes": [{"dst": str(ipaddress.ip_network(d, strict=False)), "gw": g}
                       for d, g in routes],
            "dns": {"nameservers": dns} if dns else {},
            "port": att.port, "network": info.get("network_name") or att.network,
        }

    async def _drop_veth(self, veth: concurrent.futures.Future[str], ifname: str) -> None:
        """Undo a veth made ahead (once its making is over, whatever its outcome)."""
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(veth)
        assert self.plumber is not None
        await self.plumber.run(_unplug, self.plumber.node_netns, ifname)

    async def _wait_config(self, port: str, timeout: float) -> dict[str, Any]:
        """The port's config (MAC, addresses, network) once the control node sent it: the
        delta wakes the ADD, which plugs while the reconcile pass that delta started
        applies (the datapath leaves a port without its device out until it exists)."""
        info = await self.agent.wait_port_config(port, timeout)
        if info is None:
            raise CniFailure(E_NOT_READY, f"port {port} got no config from the control "
                             f"node within {timeout:g} s", port, 503)
        return info

    # -- DEL, GC, sweep ----------------------------------------------------------------------
    async def delete(self, data: dict[str, Any]) -> dict[str, Any]:
        key = attachment_key(_str(data, "containerID"), _str(data, "ifname"))
        ph = Phases("DEL")
        async with self._lock(key):
            ph.mark("queued")
            self._drop_spool_note(key, str(data.get("spoolDir") or ""))
            att = self.attachments.get(key)
            if att is None:
                return {"released": False}
            await self._release(att, ph)
            self._keep(ph, key)
            return {"released": True, "port": att.port}

    async def gc(self, data: dict[str, Any]) -> dict[str, Any]:
        name = _str(data, "name")
        items = data.get("validAttachments")
        if not isinstance(items, list):
            raise CniFailure(E_CONFIG, "validAttachments must be a list", "validAttachments")
        valid = {attachment_key(str(a.get("containerID")), str(a.get("ifname")))
                 for a in items if isinstance(a, dict)}
        released, errors = [], []
        for key, att in list(self.attachments.items()):
            if att.config_name != name or key in valid:
                continue
            async with self._lock(key):
                if self.attachments.get(key) is not att:
                    continue
                try:
                    await self._release(att)
                    released.append(key)
                except Exception as e:  # GC continues past errors and reports them
                    errors.append(f"{key}: {e}")
        if errors:
            raise CniFailure(E_AGENT, f"GC released {len(released)}, failed on "
                             f"{len(errors)}", "; ".join(errors), 500)
        return {"released": released}

    async def sweep(self, first: bool = False) -> list[str]:
        """Release what spooled deletes name, attachments whose netns is gone, and (``first``,
        at start) attachments whose ADD never finished."""
        notes: dict[str, Path] = {}
        dirs = {*self.spool_dirs, *(Path(a.spool_dir) for a in self.attachments.values()
                                    if a.spool_dir)}
        for d in dirs:
            with contextlib.suppress(OSError):
                for f in d.glob("*.json"):
                    try:
                        note = json.loads(f.read_text())
                        notes[attachment_key(str(note["containerID"]),
                                             str(note["ifname"]))] = f
                    except (OSError, ValueError, KeyError, TypeError):
                        log.warning("CNI: ignoring unreadable spool note %s", f)
        released = []
        for key, att in list(self.attachments.items()):
            lock = self._lock(key)
            if lock.locked():
                continue  # an ADD or DEL is at it
            why = "spooled DEL" if key in notes else \
                "netns gone" if att.netns and not os.path.exists(att.netns) else \
                "unfinished ADD" if first and att.state != "ready" else None
            if why is None:
                continue
            async with lock:
                if self.attachments.get(key) is not att:
                    continue
                log.info("CNI: releasing %s (%s)", key, why)
                try:
                    await self._release(att)
                    released.append(key)
                except Exception:
                    log.exception("CNI: releasing %s failed (retried later)", key)
                    continue
        for key, f in notes.items():
            if key not in self.attachments:
                with contextlib.suppress(OSError):
                    f.unlink()
        return released

    def _drop_spool_note(self, key: str, spool_dir: str) -> None:
        cid, ifname = key.split("/", 1)
        for d in {*self.spool_dirs, *([Path(spool_dir)] if spool_dir else [])}:
            with contextlib.suppress(OSError):
                (d / f"{cid}_{ifname}.json").unlink()

    async def _release(self, att: Attachment, ph: Phases | None = None) -> None:
        """Undo an attachment as far as it got: device, port (VMI + address), record."""
        ph = ph or Phases("release")
        p = self.plumber
        if p is not None and att.host_ifname:
            try:
                if att.device:
                    await p.run(_release_device, p.node_netns, att.netns, att.ifname,
                                att.device, att.host_ifname, att.device_peer)
                else:
                    await p.run(_unplug, p.node_netns, att.host_ifname)
            except Exception:  # the port and its address still go: never leak an address
                log.exception("CNI: unplugging %s failed", att.key)
        ph.mark("unplug")
        port = att.port
        if att.state != "ready":  # a retried create may have adopted a port of that name
            by_name = await self._port_by_name(att)
            if by_name and by_name != port:
                if port:
                    await self._forget_port(port)
                port = by_name
        # the record goes in the same write that records the port's deletion as owed
        self.attachments.pop(att.key, None)
        if port:
            reg = self.agent.registry
            if port not in reg.ports:  # created, not registered yet: still ours to delete
                reg.ports[port] = PortRecord(port, created=True)
            if not await self.agent.delete_port(port):
                await self._commit()
        else:
            await self._commit()
        ph.mark("delete")

    async def _forget_port(self, port: str) -> None:
        reg = self.agent.registry
        if port not in reg.ports:  # created, not registered yet: still ours to delete
            reg.ports[port] = PortRecord(port, created=True)
        await self.agent.delete_port(port)

    async def _port_by_name(self, att: Attachment) -> str:
        """The VMI of the attachment's name: one an ADD adopted (a retried create) before
        recording its uuid, or one recorded by an older agent only once created."""
        fq = [*att.network.split(":")[:-1], _port_name(self.agent.node, att)]
        return await self.agent.port_by_name(fq) or ""

    # -- CHECK -------------------------------------------------------------------------------
    async def check(self, data: dict[str, Any]) -> dict[str, Any]:
        key = attachment_key(_str(data, "containerID"), _str(data, "ifname"))
        att = self.attachments.get(key)
        if att is None or att.state != "ready":
            raise CniFailure(E_CHECK, f"no attachment {key} on this node", key, 404)
        info = self.agent.port_info(att.port)
        if not info.get("plugged"):
            raise CniFailure(E_CHECK, f"port {att.port} is not installed in the datapath",
                             att.port, 409)
        prev = data.get("prevResult") or {}
        want_ips = {ip["address"] for ip in att.result.get("ips", ())}
        prev_ips = {ip.get("address") for ip in prev.get("ips", ()) if isinstance(ip, dict)}
        missing = want_ips - prev_ips
        if missing:
            raise CniFailure(E_CHECK, f"prevResult lacks {sorted(missing)}", "prevResult", 409)
        if self.plumber is None:
            return {"ok": True}
        p = self.plumber
        got = await p.run(_inspect, att.netns, att.ifname)
        if got is None:
            raise CniFailure(E_CHECK, f"the container has no interface {att.ifname}",
                             att.ifname, 409)
        ours = att.result["interfaces"][1]
        # plugins chained after ours (tuning) may change the MAC or lower the MTU: the final
        # result in prevResult says what to expect; above the overlay MTU is always wrong
        final = next((i for i in prev.get("interfaces", ()) if isinstance(i, dict)
                      and i.get("name") == att.ifname and i.get("sandbox")), ours)
        mac = str(final.get("mac") or ours["mac"]).lower()
        problems = []
        if got["mac"].lower() != mac:
            problems.append(f"mac {got['mac']} (want {mac})")
        if got["mtu"] > ours["mtu"]:
            problems.append(f"mtu {got['mtu']} exceeds {ours['mtu']}")
        if not got["up"]:
            problems.append("the interface is down")
        for a in sorted(want_ips - set(got["addresses"])):
            problems.append(f"address {a} missing")
        have_routes = {(d, g) for d, g in got["routes"]}
        for r in att.result.get("routes", ()):
            if (r["dst"], r.get("gw")) not in have_routes:
                problems.append(f"route {r['dst']} via {r.get('gw')} missing")
        if not await p.run(_has_link, p.node_netns, att.host_ifname):
            problems.append(f"the node side {att.host_ifname} is missing")
        if problems:
            raise CniFailure(E_CHECK, f"{key}: " + "; ".join(problems), att.ifname, 409)
        return {"ok": True}

    def list(self) -> list[dict[str, Any]]:
        return [{"containerID": a.container_id, "ifname": a.ifname, "netns": a.netns,
                 "network": a.network, "name": a.config_name, "port": a.port,
                 "host_ifname": a.host_ifname, "device": a.device, "state": a.state,
                 "labels": a.labels} for a in self.attachments.values()]


def _mac_for(port: str) -> str:
    """The MAC of a port the agent creates (the config API's own scheme: 02 and the
    uuid's first bytes), given by the agent so the veth can be made before the config
    comes back."""
    h = port.replace("-", "")
    return "02:" + ":".join(h[i:i + 2] for i in range(0, 10, 2))


def _port_name(node: str, att: Attachment) -> str:
    """The VMI's name: a retried ADD finds (and adopts) the port it made before."""
    return f"cni-{node}-{att.container_id}-{att.ifname}"


def _api_failure(e: ConfigApiError, key: str) -> CniFailure:
    if e.status >= 500:
        return CniFailure(E_TRY_AGAIN, f"the config API is not available: {e}", "", 503)
    if e.status == 404:
        return CniFailure(E_CONFIG, f"invalid network config: {e}", key)
    return CniFailure(E_API, f"the config API refused the port: {e}", str(e.status), 409)


# Plumbing, imported lazily: pyroute2 is loaded only by an agent that plumbs.
def _plug(*args: Any) -> str:
    from tungsten.datapath.linux import plumb

    return plumb.plug(*args)


def _make_veth(*args: Any) -> str:
    from tungsten.datapath.linux import plumb

    return plumb.make_veth(*args)


def _configure(*args: Any) -> None:
    from tungsten.datapath.linux import plumb

    plumb.configure(*args)


def _unplug(node_netns: str | None, ifname: str) -> None:
    from tungsten.datapath.linux import plumb

    plumb.unplug(node_netns, ifname)


def _adopt(*args: Any) -> str:
    from tungsten.datapath.linux import plumb

    return plumb.adopt_device(*args)


def _release_device(*args: Any) -> None:
    from tungsten.datapath.linux import plumb

    plumb.release_device(*args)


def _has_default_route(netns: str, version: int) -> bool:
    from tungsten.datapath.linux import plumb

    return plumb.has_default_route(netns, version)


def _has_link(netns: str | None, name: str) -> bool:
    from tungsten.datapath.linux import plumb

    if netns and not os.path.exists(plumb.netns_path(netns)):
        return False
    return plumb.has_link(netns, name)


def _inspect(netns: str | None, name: str) -> dict[str, Any] | None:
    from tungsten.datapath.linux import plumb

    if netns and not os.path.exists(plumb.netns_path(netns)):
        return None
    return plumb.inspect(netns, name)
