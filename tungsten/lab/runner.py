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
AGENT_STALE_TIME = 60.0  # the controller's --agent-stale-time in a lab

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
        self._port_security(url)
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
            "--store", f"sqlite:///{self.labdir / 'config.db'}", "--hold-time", "3",
            # a crashed agent's node keeps forwarding (headless): keep its routes a minute
            "--agent-stale-time", str(AGENT_STALE_TIME)], log)
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
            conf.write_text(lp.cni_conflist(self.topo.name, n, self.labdir,
                                            lp.node_network(self.topo, n.name)))
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
        self._security_config(url)
        self.vn_uuids: dict[str, str] = {}
        for net in topo.networks:
            self.say(f"network {net.project}/{net.name} {net.subnet}")
            body = lp.network_body(topo, net.name, [policy_uuids[p] for p in
                                                    lp.policies_of(topo, net.name)],
                                   [self.tag_uuids[(net.project, t)] for t in net.tags])
            out = api_call(url, "POST", "/virtual-networks", body)
            self.vn_uuids[net.name] = str(out["virtual-network"]["uuid"])

    def _security_config(self, url: str) -> None:
        """Tags, address groups, security groups, firewall policies and policy sets
        (docs/security.md); project tags.  Ports get theirs in ``_port_security``."""
        topo = self.topo
        self.tag_uuids: dict[tuple[str, str], str] = {}
        for proj, tag in topo.tags():
            out = api_call(url, "POST", "/tags", lp.tag_body(proj, tag))
            self.tag_uuids[(proj, tag)] = str(out["tag"]["uuid"])
        for proj, tags in topo.project_tags:
            self.say(f"project {proj}: tags {', '.join(tags)}")
            pid = api_call(url, "POST", "/fqname-to-id",
                           {"type": "project", "fq_name": ["default-domain", proj]})["uuid"]
            api_call(url, "PUT", f"/project/{pid}", lp.tag_refs_body(
                "project", [self.tag_uuids[(proj, t)] for t in tags]))
        for ag in topo.address_groups:
            self.say(f"address group {ag.project}/{ag.name}: {len(ag.prefixes)} prefixes")
            api_call(url, "POST", "/address-groups", lp.address_group_body(ag))
        self.sg_uuids: dict[str, str] = {}
        for sg in topo.security_groups:
            self.say(f"security group {sg.project}/{sg.name}: {len(sg.rules)} rules")
            out = api_call(url, "POST", "/security-groups", lp.security_group_body(topo, sg))
            self.sg_uuids[sg.name] = str(out["security-group"]["uuid"])
        fw_uuids: dict[str, str] = {}
        for pol in topo.firewall_policies:
            self.say(f"firewall policy {pol.project}/{pol.name}: {len(pol.rules)} rules")
            rules = [str(api_call(url, "POST", "/firewall-rules",
                                  lp.firewall_rule_body(topo, pol, i, r))["firewall-rule"]
                         ["uuid"]) for i, r in enumerate(pol.rules)]
            out = api_call(url, "POST", "/firewall-policys", lp.firewall_policy_body(pol, rules))
            fw_uuids[pol.name] = str(out["firewall-policy"]["uuid"])
        for aps in topo.policy_sets:
            pols = [fw_uuids[p] for p in aps.policies]
            if aps.application is None:
                self.say(f"default policy set of {aps.project}: {', '.join(aps.policies)}")
                uid = api_call(url, "POST", "/fqname-to-id", {
                    "type": "application-policy-set",
                    "fq_name": ["default-domain", aps.project,
                                "default-application-policy-set"]})["uuid"]
                api_call(url, "PUT", f"/application-policy-set/{uid}",
                         lp.policy_set_body(aps.project, aps.name, None, pols))
                continue
            self.say(f"policy set {aps.project}/{aps.name} for application={aps.application}:"
                     f" {', '.join(aps.policies)}")
            tag = self.tag_uuids[(aps.project, f"application={aps.application}")]
            api_call(url, "POST", "/application-policy-sets",
                     lp.policy_set_body(aps.project, aps.name, tag, pols))

    def _port_security(self, url: str) -> None:
        """The workloads' security groups and tags, on their ports (made by CNI ADD)."""
        for w in self.topo.workloads:
            if not w.security_groups and not w.tags:
                continue
            rec = next(r for r in self.state.workloads if r["name"] == w.name)
            proj = self.topo.network(w.network).project
            api_call(url, "PUT", f"/virtual-machine-interface/{rec['port_uuid']}",
                     lp.port_security_body([self.sg_uuids[g] for g in w.security_groups],
                                           [self.tag_uuids[(proj, t)] for t in w.tags]))
            self.say(f"workload {w.name}: security groups {list(w.security_groups)}, "
                     f"tags {list(w.tags)}")

    def _workloads(self, url: str) -> None:
        """Attach each workload as a container runtime would: ``tungsten-cni`` ADD with its
        node's CNI config (and the workload's network), netns and ``eth0``."""
        for w in self.plan.workloads:
            node = self.plan.node(w.node)
            sock = node.socket(self.labdir)
            self.state.workloads.append({"name": w.name, "node": w.node,
                                         "network": w.network, "netns": w.netns,
                                         "container_id": w.netns})
            self.state.save()  # recorded before the ADD: `down` DELs it
            result = cni_call("ADD", node.cni_conf(self.labdir), w.network_fq, w.netns,
                              labels={"lab": self.topo.name, "workload": w.name},
                              timeout=READY_TIMEOUT)
            att = next((a for a in agent_call(sock, "GET", "/cni/attachments")
                        if a["containerID"] == w.netns), None)
            info = next((p for p in agent_call(sock, "GET", "/ports")
                         if att and p["uuid"] == att["port"]), None)
            if result is None or info is None:
                raise LabError(f"the port of {w.name} is not on {w.node} after CNI ADD "
                               f"(see {self.labdir / f'agent-{w.node}.log'})")
            prefix_len = info.get("prefix_len") or 32
            ip = f"{info['ips'][0]}/{prefix_len}"
            gw = next((r["gw"] for r in result.get("routes", ()) if r.get("gw")), None)
            self.state.workloads[-1].update(port_uuid=info["uuid"], ifname=info["ifname"],
                                            ip=ip, mac=info["mac"], ips=info["ips"],
                                            gateway=gw, mtu=info["mtu"])
            self.state.save()
            self.say(f"workload {w.name} on {w.node}: {w.network} {ip} mac {info['mac']}")


def cni_command() -> list[str]:
    """``tungsten-cni`` next to this interpreter (the installed script), else the module."""
    script = Path(sys.executable).parent / "tungsten-cni"
    return [str(script)] if script.exists() else [sys.executable, "-m", "tungsten.cni.plugin"]


def cni_call(command: str, conflist: Path, network_fq: str | None, netns: str,
             labels: dict[str, str] | None = None, timeout: float = 10.0) \
        -> dict[str, Any] | None:
    """Run the first plugin of ``conflist`` for workload namespace ``netns`` (its container
    id too) on ``eth0``, as a runtime does; its result, or a LabError with the CNI error."""
    try:
        data = json.loads(conflist.read_text())
    except (OSError, ValueError) as e:
        raise LabError(f"cannot read the CNI config {conflist}: {e}") from None
    conf = {**data["plugins"][0], "cniVersion": data["cniVersion"], "name": data["name"],
            "timeout": timeout}
    if network_fq:
        conf["network"] = network_fq
    if labels:
        conf["args"] = {"cni": {"labels": [{"key": k, "value": v} for k, v in labels.items()]}}
    cmd = cni_command()
    env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": netns,
           "CNI_NETNS": str(NETNS_DIR / netns), "CNI_IFNAME": "eth0",
           "CNI_PATH": str(Path(cmd[0]).parent)}
    try:
        r = subprocess.run(cmd, input=json.dumps(conf), env=env, capture_output=True,
                           text=True, timeout=timeout + 60, check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"tungsten-cni {command} for {netns} did not finish") from None
    out = json.loads(r.stdout) if r.stdout.strip() else None
    if r.returncode != 0:
        msg = out.get("msg") if isinstance(out, dict) else r.stderr.strip()
        code = out.get("code") if isinstance(out, dict) else r.returncode
        raise LabError(f"tungsten-cni {command} for {netns} failed (code {code}): {msg}")
    return out if isinstance(out, dict) else None


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


def _detach_workloads(state: LabState | None, say: Say) -> None:
    """CNI DEL for every workload, best effort (its agent may be gone already): the ports
    and their addresses go the way a runtime would remove them."""
    confs = {n["name"]: Path(n["cni_conf"]) for n in (state.nodes if state else ())
             if n.get("cni_conf")}
    wls = [w for w in (state.workloads if state else ()) if w.get("node") in confs]
    if wls:
        say(f"workloads: CNI DEL for {len(wls)}")
    for w in wls:
        try:
            cni_call("DEL", confs[w["node"]], None, str(w.get("container_id") or w["netns"]))
        except LabError as e:
            say(f"  {w['name']}: {e}")


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
    _detach_workloads(state, say)
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
