"""Carrying a ``LabPlan`` out on this machine, and taking a lab down (the adapter).

Namespaces and links through ``ip`` (its exit status only, never its text) and pyroute2 (via
``plumb``), processes through ``subprocess``/``psutil``, config through the config API and
the agents' local sockets.  ``up`` records each thing in ``lab.json`` before making it;
``down`` removes whatever the record (and the lab directory named in process command lines)
says exists, and tolerates everything already being gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from tungsten.agent.localclient import UnixHTTPConnection
from tungsten.lab import plan as lp
from tungsten.lab.state import LabState, Proc, labs_dir
from tungsten.lab.topology import Topology

NETNS_DIR = Path("/run/netns")
READY_TIMEOUT = 60.0  # upper bound for a process or a port to become ready (not a goal)

Say = Callable[[str], None]


class LabError(RuntimeError):
    """A clear, user-facing reason why a lab operation failed."""


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {r.stderr.strip()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deadline_loop(what: str, check: Callable[[], bool], alive: Callable[[], str | None],
                   timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        problem = alive()
        if problem:
            raise LabError(f"{what}: {problem}")
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not ready after {timeout:g} s")
        time.sleep(0.05)


# -- talking to the controller and the agents ---------------------------------------------
def api_call(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace").strip()
        raise LabError(f"config API {method} {path}: {e.code} {text}") from None
    except OSError as e:
        raise LabError(f"config API {base} unreachable: {e}") from None
    return json.loads(raw) if raw else None


def agent_call(sock: Path, method: str, path: str, body: Any = None) -> Any:
    conn = UnixHTTPConnection(sock, timeout=90)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    except OSError as e:
        raise LabError(f"agent on {sock}: {e.strerror or e}") from None
    finally:
        conn.close()
    data = json.loads(raw or b"null")
    if resp.status >= 400:
        msg = data.get("error") if isinstance(data, dict) else data
        raise LabError(f"agent on {sock} refused {method} {path}: {msg}")
    return data


# -- up -------------------------------------------------------------------------------------
class Up:
    def __init__(self, topo: Topology, say: Say) -> None:
        self.topo = topo
        self.plan = lp.plan(topo)
        self.say = say
        self.labdir = labs_dir() / topo.name
        self.state = LabState(topo.name, str(self.labdir), source=topo.source)

    def check_free(self) -> None:
        """Refuse before making anything when the lab or one of its namespaces exists."""
        if self.labdir.exists():
            raise LabError(f"lab {self.topo.name!r} is up already (state in {self.labdir}); "
                           f"`tungsten lab down {self.topo.name}` first")
        taken = [ns for ns in self.plan.namespaces if netns_exists(ns)]
        if taken:
            raise LabError(f"network namespace {taken[0]} exists already and is not this "
                           "lab's: remove it or rename the lab")

    def run(self) -> LabState:
        self.check_free()
        self.labdir.mkdir(parents=True)
        me = psutil.Process()
        self.state.up_pid, self.state.up_create_time = me.pid, me.create_time()
        self.state.save()
        self._namespaces()
        self._underlay()
        url = self._controller()
        self._agents(url)
        self._config(url)
        self._workloads(url)
        self.state.phase = "up"
        self.state.save()
        return self.state

    # steps
    def _namespaces(self) -> None:
        self.say(f"namespaces: {len(self.plan.namespaces)} ({self.plan.underlay_netns}, "
                 f"{len(self.plan.nodes)} nodes, {len(self.plan.workloads)} workloads)")
        for ns in self.plan.namespaces:
            self.state.namespaces.append(ns)
            self.state.save()  # recorded before it exists
            _ip("netns", "add", ns)
            _ip("link", "set", "lo", "up", netns=ns)

    def _underlay(self) -> None:
        ul = self.plan.underlay_netns
        self.say(f"underlay: bridge {lp.BRIDGE} in {ul}, {lp.UNDERLAY}")
        _ip("link", "add", lp.BRIDGE, "type", "bridge", netns=ul)
        _ip("link", "set", lp.BRIDGE, "up", netns=ul)
        for n in self.plan.nodes:
            _ip("link", "add", n.bridge_port, "type", "veth", "peer", "name", lp.UNDERLAY_IF,
                "netns", n.netns, netns=ul)
            _ip("link", "set", n.bridge_port, "master", lp.BRIDGE, "up", netns=ul)
            _ip("addr", "add", f"{n.underlay_ip}/{lp.UNDERLAY.prefixlen}", "dev",
                lp.UNDERLAY_IF, netns=n.netns)
            _ip("link", "set", lp.UNDERLAY_IF, "up", netns=n.netns)

    def _spawn(self, role: str, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        try:
            ctime = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            ctime = 0.0
        self.state.processes.append(Proc(role, proc.pid, ctime))
        self.state.save()
        return proc

    @staticmethod
    def _exited(proc: subprocess.Popen[bytes], log: Path) -> str | None:
        if proc.poll() is None:
            return None
        tail = ""
        with contextlib.suppress(OSError):
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            errs = [x for x in lines if x.startswith("tungsten: error:")]
            tail = (errs or lines or [""])[-1]
        return f"exited with status {proc.returncode}" + (f": {tail}" if tail else "") + \
            f" (log: {log})"

    def _controller(self) -> str:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        self.say(f"controller: {url} (store {self.labdir / 'config.db'})")
        log = self.labdir / "controller.log"
        proc = self._spawn("controller", [
            sys.executable, "-m", "tungsten", "controller", "--listen", f"127.0.0.1:{port}",
            "--store", f"sqlite:///{self.labdir / 'config.db'}", "--hold-time", "3"], log)
        self.state.controller = url
        self.state.save()

        def ready() -> bool:
            try:
                with urllib.request.urlopen(url + "/", timeout=2):
                    return True
            except OSError:
                return False

        _deadline_loop("the controller", ready, lambda: self._exited(proc, log))
        return url

    def _agents(self, url: str) -> None:
        procs = []
        for n in self.plan.nodes:
            self.say(f"node {n.name}: netns {n.netns}, underlay {n.underlay_ip}, agent on "
                     f"{n.socket(self.labdir)}")
            log = self.labdir / f"agent-{n.name}.log"
            procs.append((n, log, self._spawn(f"agent:{n.name}", [
                sys.executable, "-m", "tungsten", "agent", "run", "--node", n.name,
                "--underlay-ip", n.underlay_ip, "--control", url,
                "--socket", str(n.socket(self.labdir)),
                "--state-dir", str(n.state_dir(self.labdir)),
                "--datapath", "linux", "--netns", n.netns, "--underlay-if", lp.UNDERLAY_IF],
                log)))
            conf = n.cni_conf(self.labdir)
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(lp.cni_conflist(self.topo.name, n, self.labdir))
            self.state.nodes.append({
                "name": n.name, "underlay_ip": n.underlay_ip, "netns": n.netns,
                "agent_socket": str(n.socket(self.labdir)), "cni_conf": str(conf)})
            self.state.save()
        for n, log, proc in procs:
            sock = n.socket(self.labdir)

            def ready(sock: Path = sock) -> bool:
                try:
                    agent_call(sock, "GET", "/status")
                    return True
                except LabError:
                    return False

            _deadline_loop(f"the agent of {n.name}", ready,
                           lambda proc=proc, log=log: self._exited(proc, log))  # type: ignore[misc]

    def _config(self, url: str) -> None:
        topo = self.topo
        for p in topo.projects:
            if p != "default-project":
                self.say(f"project {p}")
                api_call(url, "POST", "/projects", lp.project_body(p))
        policy_uuids: dict[str, str] = {}
        for pol in topo.policies:
            self.say(f"policy {pol.project}/{pol.name}: {len(pol.rules)} rules, on "
                     f"{', '.join(pol.networks)}")
            out = api_call(url, "POST", "/network-policys", lp.policy_body(topo, pol))
            policy_uuids[pol.name] = str(out["network-policy"]["uuid"])
        self.vn_uuids: dict[str, str] = {}
        for net in topo.networks:
            self.say(f"network {net.project}/{net.name} {net.subnet}")
            body = lp.network_body(topo, net.name, [policy_uuids[p] for p in
                                                    lp.policies_of(topo, net.name)])
            out = api_call(url, "POST", "/virtual-networks", body)
            self.vn_uuids[net.name] = str(out["virtual-network"]["uuid"])

    def _gateway(self, url: str, network: str) -> str | None:
        vn = api_call(url, "GET", f"/virtual-network/{self.vn_uuids[network]}")
        for ref in vn["virtual-network"].get("network_ipam_refs") or []:
            for s in (ref.get("attr") or {}).get("ipam_subnets") or []:
                gw = s.get("default_gateway")
                if gw and gw != "0.0.0.0":
                    return str(gw)
        return None

    def _workloads(self, url: str) -> None:
        from tungsten.datapath.linux import plumb

        for w in self.plan.workloads:
            node = self.plan.node(w.node)
            sock = node.socket(self.labdir)
            port = agent_call(sock, "POST", "/ports",
                              {"network": w.network_fq, "name": w.name, "wait": 0})
            uuid = str(port["uuid"])
            self.state.workloads.append({"name": w.name, "node": w.node,
                                         "network": w.network, "netns": w.netns,
                                         "port_uuid": uuid, "ifname": port["ifname"]})
            self.state.save()

            def known(uuid: str = uuid, sock: Path = sock) -> bool:
                ports = agent_call(sock, "GET", "/ports")
                return any(p["uuid"] == uuid and p.get("mac") and p.get("ips") for p in ports)

            _deadline_loop(f"the port of {w.name} on {w.node}", known, lambda: None)
            info = next(p for p in agent_call(sock, "GET", "/ports") if p["uuid"] == uuid)
            gw = self._gateway(url, w.network)
            plumb.plug(node.netns, w.netns, info["ifname"], info["mac"], info["ips"], gw,
                       int(info["mtu"]))
            info = agent_call(sock, "POST", "/ports", {"vmi": uuid, "wait": READY_TIMEOUT})
            if not info.get("plugged"):
                raise LabError(f"the port of {w.name} was not plugged on {w.node} "
                               f"(see {self.labdir / f'agent-{w.node}.log'})")
            prefix_len = info.get("prefix_len") or 32
            ip = f"{info['ips'][0]}/{prefix_len}"
            self.state.workloads[-1].update(ip=ip, mac=info["mac"], ips=info["ips"],
                                            gateway=gw, mtu=info["mtu"])
            self.state.save()
            self.say(f"workload {w.name} on {w.node}: {w.network} {ip} mac {info['mac']}")


# -- down -----------------------------------------------------------------------------------
def _lab_processes(labdir: Path, state: LabState | None) -> list[psutil.Process]:
    """The lab's processes: recorded ones (same start time: never a recycled pid) and any
    process whose command line names the lab directory."""
    found: dict[int, psutil.Process] = {}
    for rec in state.processes if state else []:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(rec.pid)
            if not rec.create_time or abs(p.create_time() - rec.create_time) < 0.01:
                found[p.pid] = p
    needle = str(labdir) + "/"  # not a lab whose name extends this one's
    me = os.getpid()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if p.pid != me and any(needle in part for part in cmd):
            found[p.pid] = p
    return list(found.values())


def _stop(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


def down(labdir: Path, say: Say) -> None:
    """Remove everything of the lab in ``labdir``: its ``up`` if still running, processes,
    namespaces, files.  Safe to repeat; nothing already gone is an error."""
    state = LabState.load(labdir)
    if state and state.up_pid and state.up_pid != os.getpid():
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(state.up_pid)
            if abs(p.create_time() - state.up_create_time) < 0.01:
                say(f"stopping `lab up` (pid {p.pid})")
                p.kill()
                p.wait(10)
        state = LabState.load(labdir) or state  # it may have recorded more meanwhile
    procs = _lab_processes(labdir, state)
    if procs:
        say(f"processes: stopping {len(procs)}")
        _stop(procs)
    names = list(reversed(state.namespaces)) if state else []
    gone = [ns for ns in names if netns_exists(ns)]
    if gone:
        say(f"namespaces: removing {len(gone)}")
    errors = []
    for ns in gone:
        try:
            _ip("netns", "del", ns)
        except LabError as e:
            errors.append(str(e))
    shutil.rmtree(labdir, ignore_errors=True)
    if errors:
        raise LabError("; ".join(errors))


def resolve(name: str | None) -> Path:
    """The lab directory of ``name``, or of the only lab when no name is given."""
    from tungsten.lab.state import lab_names

    labs = lab_names()
    if name is None:
        if not labs:
            raise LabError(f"no lab is up (no lab under {labs_dir()})")
        if len(labs) > 1:
            raise LabError(f"several labs are up ({', '.join(labs)}): name one")
        name = labs[0]
    elif name not in labs:
        raise LabError(f"no lab {name!r} is up" + (f" (labs: {', '.join(labs)})" if labs
                                                    else ""))
    return labs_dir() / name
