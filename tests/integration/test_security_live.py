"""Policy changes reach established TCP connections on the ``linux`` datapath: when the
rule that admitted a connection goes, or a deny is added, its next packets are dropped;
connections still allowed are not disturbed; restoring the rule lets the connection
recover (its retransmissions are admitted as a flow again)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.seckit import Config, SecLab
from tests.unit.test_security_verdict import sg_rule

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]
pytest.importorskip("tungsten.datapath.linux.nftlib")

SG_CLIENT, SG_SERVER = 8300001, 8300002
ECHO_PORT = 9000
ECHO = """
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000)); s.listen(16)
def echo(c):
    while True:
        data = c.recv(64)
        if not data:
            return
        c.sendall(data)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"""
# one long-lived connection; each stdin line is sent and echoed back within a second (or not)
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 9000), timeout=3)
print("connected", flush=True)
n = 0
for line in sys.stdin:
    n += 1
    mark = bytes([65 + n % 26])  # echoes of earlier, lost sends may still arrive: skip them
    c.settimeout(float(line))
    try:
        c.sendall(mark)
        while True:
            got = c.recv(1)
            if got in (mark, b""):
                break
        print("ok" if got == mark else "closed", flush=True)
    except OSError:
        print("timeout", flush=True)
"""
ALL_V4 = {"subnet": {"ip_prefix": "0.0.0.0", "ip_prefix_len": 0}}


def config(allow: bool, extra: bool = False) -> Config:
    ingress = [sg_rule("echo-in", {"security_group": str(SG_CLIENT)}, proto="6",
                       ports=(ECHO_PORT, ECHO_PORT))] if allow else []
    if extra:
        ingress.append(sg_rule("telnet", ALL_V4, proto="6", ports=(23, 23)))
    return Config(groups={
        SG_CLIENT: {"id": SG_CLIENT, "ingress": [],
                    "egress": [sg_rule("out", ALL_V4, ingress=False)]},
        SG_SERVER: {"id": SG_SERVER, "egress": [], "ingress": [
            *ingress, sg_rule("ssh-in", ALL_V4, proto="6", ports=(22, 22))]}})


class Client:
    def __init__(self, lab: SecLab, src: str, dst: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.workloads[src].ns, sys.executable, "-c", CLIENT,
             lab.workloads[dst].ip], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "connected"

    def echo(self, timeout: float = 1.0) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{timeout}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@pytest.fixture
def lab() -> Iterator[SecLab]:
    lab = SecLab()
    procs: list[Any] = []
    try:
        lab.build([("c1", "n1", 4301, "198.51.100.1"), ("s2", "n2", 4301, "198.51.100.2"),
                   ("c3", "n2", 4301, "198.51.100.3")])
        lab.workloads["c1"].sgs = lab.workloads["c3"].sgs = (SG_CLIENT,)
        lab.workloads["s2"].sgs = (SG_SERVER,)
        server = subprocess.Popen(["ip", "netns", "exec", lab.workloads["s2"].ns,
                                   sys.executable, "-c", ECHO], stdout=subprocess.PIPE,
                                  text=True)
        procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield lab
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
            if p.stdout is not None:
                p.stdout.close()
        lab.close()


def test_removed_rule_and_added_deny_cut_established_connections(lab: SecLab) -> None:
    lab.apply(config(allow=True))
    across, local = Client(lab, "c1", "s2"), Client(lab, "c3", "s2")
    try:
        assert across.echo() == "ok" and local.echo() == "ok"
        # a change that keeps the connections allowed deletes nothing
        lab.apply(config(allow=True, extra=True))
        assert lab.dps["n2"].last_nft  # the server's node changed its rules
        assert all(not dp._nft.last_reevaluated for dp in lab.dps.values())
        assert across.echo() == "ok"

        # the rule that admitted both connections is removed: their next packets drop
        lab.apply(config(allow=False))
        assert lab.dps["n2"]._nft.last_reevaluated, "the server's node deletes the flows"
        assert across.echo() == "timeout"
        assert local.echo() == "timeout"

        # the rule comes back: the retransmitted data is admitted, the connection recovers
        lab.apply(config(allow=True))
        assert across.echo(timeout=8) == "ok"

        # a firewall deny added on the client's side cuts it again (re-evaluated on n1)
        deny = {"uuid": "deny", "name": "deny", "direction": ">",
                "action_list": {"simple_action": "deny"},
                "endpoint_1": {"any": True}, "endpoint_2": {"any": True},
                "match_tag_types": [],
                "service": {"protocol_id": 6,
                            "src_ports": {"start_port": 0, "end_port": 65535},
                            "dst_ports": {"start_port": ECHO_PORT, "end_port": ECHO_PORT}}}
        cfg = config(allow=True)
        cfg.firewall = {"d": {"uuid": "d", "name": "d:p:default-application-policy-set",
                              "application_tag": None, "all_applications": True,
                              "policies": [{"uuid": "p", "name": "p", "sequence": "1",
                                            "rules": [deny]}]}}
        lab.apply(cfg)
        assert lab.dps["n1"]._nft.last_reevaluated
        assert across.echo() == "timeout"
    finally:
        across.close()
        local.close()
