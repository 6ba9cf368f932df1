"""What the CNI tests share: a controller, an agent process (sim or linux datapath), networks
made through the config API, and ``tungsten-cni`` run as a runtime runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tungsten.agent.localclient import UnixHTTPConnection

PLUGIN = [sys.executable, "-m", "tungsten.cni.plugin"]
IPAM = ["default-domain", "default-project", "default-network-ipam"]


def make_network(api: str, name: str, prefix: str, plen: int = 24) -> str:
    body = {"virtual-network": {
        "fq_name": ["default-domain", "default-project", name], "parent_type": "project",
        "network_ipam_refs": [{"to": IPAM, "attr": {"ipam_subnets": [{"subnet": {
            "ip_prefix": prefix, "ip_prefix_len": plen}}]}}]}}
    r = requests.post(api + "/virtual-networks", json=body, timeout=30)
    r.raise_for_status()
    return str(r.json()["virtual-network"]["uuid"])


def instance_ips(api: str) -> list[str]:
    """Addresses of every instance-ip in the config API."""
    r = requests.get(api + "/instance-ips?detail=True", timeout=30)
    r.raise_for_status()
    return sorted(str(i["instance-ip"].get("instance_ip_address"))
                  for i in r.json()["instance-ips"])


def vmis(api: str) -> list[str]:
    r = requests.get(api + "/virtual-machine-interfaces", timeout=30)
    r.raise_for_status()
    return [str(v["uuid"]) for v in r.json()["virtual-machine-interfaces"]]


@dataclass
class AgentProc:
    """``tungsten agent run`` as a process; ``kill()`` and ``start()`` again keep its state."""

    api: str
    workdir: Path
    datapath_args: list[str] = field(default_factory=list)
    underlay_ip: str = "192.0.2.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "agent.sock"

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.workdir / "agent.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tungsten", "agent", "run", "--node", "n1",
             "--underlay-ip", self.underlay_ip, "--control", self.api,
             "--socket", str(self.socket), "--state-dir", str(self.workdir / "state"),
             "--log-level", "info", *self.datapath_args], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log()
            try:
                if self.call("GET", "/status").get("vrouter"):
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, "the agent did not start: " + self.log()
            time.sleep(0.05)

    def log(self) -> str:
        rc = self.proc.poll() if self.proc else None
        try:
            text = (self.workdir / "agent.log").read_text()[-4000:]
        except OSError:
            text = ""
        return text + ("" if rc is None else f"\n[the agent exited with {rc}]")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        conn = UnixHTTPConnection(self.socket, timeout=60)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body))
            return json.loads(conn.getresponse().read() or b"null")
        finally:
            conn.close()


@dataclass
class Cni:
    """Runs ``tungsten-cni`` with one network config, as a runtime would."""

    agent: AgentProc
    network: str
    name: str = "tnet"
    version: str = "1.1.0"
    extra: dict[str, Any] = field(default_factory=dict)

    def conf(self, **over: Any) -> dict[str, Any]:
        return {"cniVersion": self.version, "name": self.name, "type": "tungsten-cni",
                "network": self.network, "agentSocket": str(self.agent.socket),
                **self.extra, **over}

    def run(self, command: str, cid: str, ifname: str = "eth0", netns: str = "",
            conf: dict[str, Any] | None = None, args: str = "") \
            -> tuple[int, dict[str, Any] | None]:
        env = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command,
               "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_PATH": "/usr/lib/cni"}
        if netns:
            env["CNI_NETNS"] = netns
        if args:
            env["CNI_ARGS"] = args
        p = subprocess.run(PLUGIN, input=json.dumps(conf or self.conf()).encode(), env=env,
                           capture_output=True, timeout=300, check=False)
        out = p.stdout.decode().strip()
        return p.returncode, json.loads(out) if out else None

    def add(self, cid: str, netns: str, ifname: str = "eth0", cni_args: str = "",
            **over: Any) -> dict[str, Any]:
        rc, out = self.run("ADD", cid, ifname, netns, self.conf(**over), cni_args)
        assert rc == 0 and out is not None, (out, self.agent.log())
        return out

    def delete(self, cid: str, netns: str = "", ifname: str = "eth0",
               prev: dict[str, Any] | None = None) -> None:
        conf = self.conf(**({"prevResult": prev} if prev else {}))
        rc, out = self.run("DEL", cid, ifname, netns, conf)
        assert rc == 0 and out is None, (out, self.agent.log())
