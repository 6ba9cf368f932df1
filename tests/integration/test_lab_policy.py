"""A network policy in a real lab (root): ``red → blue tcp/5432``, direction ``>``.

The allowed port passes, another port and ICMP drop, and the reverse direction of the ``>``
rule drops.  Servers run in the workloads' namespaces through ``lab exec`` and are killed in
``finally``; the lab is taken down and anything left of it removed.  Documentation ranges
only; every probe has a bounded timeout and nothing is timed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.integration.labkit import Lab as BaseLab
from tests.integration.labkit import our_namespaces, our_processes

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

TOPOLOGY = """\
name: {name}
nodes: [compute1, compute2]
projects: [acme]
networks:
  - {{name: red,  project: acme, subnet: 198.51.100.0/24}}
  - {{name: blue, project: acme, subnet: 203.0.113.0/24}}
workloads:
  - {{name: web1, node: compute1, network: red}}
  - {{name: db1,  node: compute2, network: blue}}
  # red only on compute1, blue only on compute2: the leaked route goes out through a send-only
  # VXLAN device of the other network, and the ACL names a network with no port on the node
policies:
  - name: red-to-blue
    project: acme
    networks: [red, blue]
    rules:
      - {{action: pass, protocol: tcp, src: red, dst: blue, dst_ports: "5432", direction: ">"}}
"""

# Listens on the given ports of all addresses; answers each connection with b"hi" and closes.
# argv[1] names the lab directory so that `lab down` recognises (and stops) it as well.
SERVER = """\
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in sys.argv[2:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(16)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        c, _ = key.fileobj.accept()
        with c:
            c.sendall(b"hi")
"""

CLIENT = """\
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.settimeout(3)
        sys.exit(0 if s.recv(2) == b"hi" else 1)
except OSError:
    sys.exit(1)
"""


class Lab(BaseLab):
    def tcp(self, src: str, dst_ip: str, port: int) -> bool:
        return self.exec(src, sys.executable, "-c", CLIENT, dst_ip, str(port)).returncode == 0

    def server(self, workload: str, *ports: int) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            self.cmd("exec", "--lab", self.name, workload, "--", sys.executable, "-c", SERVER,
                     str(self.labdir / "server"), *map(str, ports)),
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None
        line = p.stdout.readline()  # bounded: the server prints or dies
        if line.strip() != "ready":
            p.kill()
            _, err = p.communicate(timeout=30)
            raise AssertionError(f"server in {workload} did not start: {err}")
        return p


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    name = "p" + secrets.token_hex(3)
    file = tmp_path / "lab.yaml"
    file.write_text(TOPOLOGY.format(name=name))
    lab = Lab(name, tmp_path / "state", file)
    try:
        yield lab
    finally:
        if lab.labdir.exists():
            lab.run("down", name)
        for p in our_processes(lab.labdir):
            with contextlib.suppress(psutil.Error):
                p.kill()
        for ns in our_namespaces(name):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_policy_exactness(lab: Lab) -> None:
    r = lab.run("up", str(lab.file))
    assert r.returncode == 0, r.stderr
    ip = lab.ips()
    servers = []
    try:
        servers.append(lab.server("db1", 5432, 5433))
        servers.append(lab.server("web1", 5432))
        # the allowed port passes (and its replies come back: the connection completes)
        assert lab.tcp("web1", ip["db1"], 5432)
        # another port of the same workload drops
        assert not lab.tcp("web1", ip["db1"], 5433)
        # ICMP is not in the rule: dropped
        assert not lab.ping("web1", ip["db1"])
        # the reverse direction of a `>` rule drops
        assert not lab.tcp("db1", ip["web1"], 5432)
        assert not lab.ping("db1", ip["web1"])
        # and the allowed one still passes afterwards
        assert lab.tcp("web1", ip["db1"], 5432)
    finally:
        for p in servers:
            p.kill()
            p.communicate(timeout=30)
        for proc in psutil.process_iter(["cmdline"]):  # `ip netns exec` execs it; in case
            if str(lab.labdir / "server") in (proc.info.get("cmdline") or []):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
    r = lab.run("down", lab.name)
    assert r.returncode == 0, r.stderr
    assert our_namespaces(lab.name) == []
    assert our_processes(lab.labdir) == []
    assert not lab.labdir.exists()
