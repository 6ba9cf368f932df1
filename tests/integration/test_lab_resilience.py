"""Datapath resilience in a real lab (root): path MTU, an agent killed and restarted, an agent
dead past the hold time, the controller killed for 30 s.

Each test brings up its own small lab (two nodes, one workload per node).  Servers and clients
(iperf3 among them) run in the workloads' namespaces through ``lab exec`` and are killed in
``finally``; the lab is taken down and anything left of it removed.  Documentation ranges
only; every wait is bounded and nothing is timed.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from tests.integration.labkit import (
    NEEDS_ROOT,
    RED_BLUE_POLICY,
    lab_session,
    started,
    stop,
)
from tests.integration.labkit import Lab as BaseLab
from tests.waits import wait_for
from tungsten.agent.localclient import UnixHTTPConnection
from tungsten.lab.runner import api_call

pytestmark = NEEDS_ROOT

TOPOLOGY = """\
name: {name}
nodes: [compute1, compute2]
projects: [acme]
networks:
  - {{name: red, project: acme, subnet: 198.51.100.0/24}}
workloads:
  - {{name: web1, node: compute1, network: red}}
  - {{name: web2, node: compute2, network: red}}
"""

HOLD_TIME = 3.0  # the lab controller's --hold-time (tungsten/lab/runner.py)
PORT = 7000  # the "known port" of the long-lived and the new connections
OTHER_PORT = 7001  # not allowed by the policy until the test allows it
IPERF_PORT = 5201

# Echoes lines back on every connection, on the given ports of all addresses.
# argv[1] names the lab directory so that `lab down` recognises (and stops) it as well.
ECHO_SERVER = """\
import socket, sys, threading
def serve(c):
    with c, c.makefile("rwb", buffering=0) as f:
        for line in f:
            f.write(line)
def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    return s
def accept(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
socks = [listen(int(p)) for p in sys.argv[2:]]
print("ready", flush=True)
for s in socks[1:]:
    threading.Thread(target=accept, args=(s,), daemon=True).start()
accept(socks[0])
"""

# One connection; sends a line every 0.2 s for argv[3] seconds, each echo must come back
# within 3 s.  Prints "connected" once established and "ok <n>" at the end; any error exits 1.
# argv[4] names the lab directory (see ECHO_SERVER).
PAIR_CLIENT = """\
import socket, sys, time
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.settimeout(3)
        f = s.makefile("rwb", buffering=0)
        print("connected", flush=True)
        end = time.monotonic() + float(sys.argv[3])
        n = 0
        while time.monotonic() < end:
            msg = b"line %d\\n" % n
            f.write(msg)
            if f.readline() != msg:
                print("bad echo", flush=True)
                sys.exit(1)
            n += 1
            time.sleep(0.2)
        print("ok", n, flush=True)
except OSError as e:
    print("error", e, flush=True)
    sys.exit(1)
"""


RTPROT_KERNEL = 2
IFA_F_TENTATIVE = 0x40
NUD_KEPT = 0x40 | 0x80  # NUD_NOARP | NUD_PERMANENT: entries someone installed, not learnt
COUNTER = re.compile(r"counter packets \d+ bytes \d+")


def kernel_state(netns: str) -> dict[str, Any]:
    """A node's forwarding state: links (with their ifindex: a recreated device shows),
    addresses, routes of every table (but the kernel's), rules, installed neighbours and FDB
    entries, and the nft ruleset with rule handles (a refilled chain shows), no counters."""
    def attrs(msg: Any, *names: str) -> tuple[Any, ...]:
        return tuple(msg.get_attr(n) for n in names)

    with IPRoute(netns=netns) as ipr:
        state: dict[str, Any] = {
            "links": sorted((m["index"], *attrs(m, "IFLA_IFNAME", "IFLA_MTU", "IFLA_ADDRESS",
                                                "IFLA_MASTER"))
                            for m in ipr.get_links()),
            "addrs": sorted((m["index"], m["prefixlen"], m.get_attr("IFA_ADDRESS"))
                            for m in ipr.get_addr()),
            "routes": sorted(
                (m["family"], m["dst_len"], m["proto"], m["type"], m["scope"],
                 *(str(x) for x in attrs(m, "RTA_TABLE", "RTA_DST", "RTA_OIF", "RTA_GATEWAY",
                                         "RTA_PRIORITY", "RTA_PREFSRC")))
                for fam in (socket.AF_INET, socket.AF_INET6)
                # every table; not the kernel's own (proto kernel: they follow the addresses,
                # e.g. IPv6 link-local ones once duplicate address detection is done)
                for m in ipr.route("dump", family=fam) if m["proto"] != RTPROT_KERNEL),
            "rules": sorted((m["family"], m["src_len"], m["dst_len"], m["table"],
                             *(str(x) for x in attrs(m, "FRA_PRIORITY", "FRA_TABLE", "FRA_SRC",
                                                     "FRA_DST", "FRA_IIFNAME", "FRA_FWMARK")))
                            for fam in (socket.AF_INET, socket.AF_INET6)
                            for m in ipr.get_rules(family=fam)),
            "neighbours": sorted(
                (m["family"], m["ifindex"], m["state"],
                 *(str(x) for x in attrs(m, "NDA_DST", "NDA_LLADDR")))
                for fam in (socket.AF_INET, socket.AF_BRIDGE)
                for m in ipr.get_neighbours(family=fam) if m["state"] & NUD_KEPT),
        }
    r = subprocess.run(["ip", "netns", "exec", netns, "nft", "-a", "list", "ruleset"],
                       capture_output=True, text=True, timeout=30, check=True)
    state["nft"] = COUNTER.sub("counter", r.stdout).splitlines()
    return state


class Lab(BaseLab):
    def echo_server(self, workload: str, *ports: int) -> subprocess.Popen[str]:
        p = self.popen(workload, sys.executable, "-c", ECHO_SERVER, str(self.labdir / "server"),
                       *map(str, ports))
        return started(p, "ready", f"echo server in {workload} did not start")

    def pair_client(self, workload: str, dst_ip: str, port: int,
                    seconds: float) -> subprocess.Popen[str]:
        p = self.popen(workload, sys.executable, "-c", PAIR_CLIENT, dst_ip, str(port),
                       str(seconds), str(self.labdir / "client"))
        # bounded: connects within 3 s or exits
        return started(p, "connected", f"client in {workload} did not connect")

    def connects(self, workload: str, dst_ip: str, port: int) -> bool:
        """A new connection echoes a line (bounded: 3 s to connect, 3 s for the echo)."""
        p = self.popen(workload, sys.executable, "-c", PAIR_CLIENT, dst_ip, str(port), "0.1",
                       str(self.labdir / "client"))
        out, _ = p.communicate(timeout=60)
        return p.returncode == 0 and "ok" in out

    def iperf_server(self, workload: str) -> subprocess.Popen[str]:
        """``iperf3 -s -1`` (one test, then it exits), once it listens."""
        p = self.popen(workload, "iperf3", "-s", "-1", "-p", str(IPERF_PORT), "--forceflush")
        assert p.stdout is not None
        line = p.stdout.readline()  # bounded: iperf3 listens or exits
        while line and "listening" not in line.lower() and "---" in line:
            line = p.stdout.readline()
        if "listening" not in line.lower():
            stop(p)
            raise AssertionError(f"iperf3 server in {workload} did not start: {line!r}")
        return p

    def agent(self, node: str, method: str, path: str) -> Any:
        conn = UnixHTTPConnection(self.labdir / f"{node}.sock", timeout=30)
        try:
            conn.request(method, path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def agent_synced(self, node: str) -> bool:
        """The agent answers and has an established control session."""
        try:
            status = self.agent(node, "GET", "/status")
        except OSError:
            return False
        return any(s["established"] for s in status["sessions"])

    def netns(self, node: str) -> str:
        return next(str(n["netns"]) for n in self.status()["nodes"] if n["name"] == node)

    def control(self) -> dict[str, Any]:
        """The control node's status page."""
        out: dict[str, Any] = api_call(self.status()["controller"], "GET",
                                       "/control/v1/status")
        return out

    def session_of(self, node: str) -> dict[str, Any] | None:
        return next((s for s in self.control()["sessions"].values() if s["node"] == node),
                    None)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with lab_session(tmp_path, TOPOLOGY, "r", Lab, up=True) as lab:
        yield lab


@pytest.fixture
def policy_lab(tmp_path: Path) -> Iterator[Lab]:
    """Two networks joined by a policy (tcp/PORT from web1 to db1), so that a policy change
    can be seen to take effect."""
    with lab_session(tmp_path, RED_BLUE_POLICY, "r", Lab, up=True, port=PORT) as lab:
        yield lab


def test_df_pings_at_path_mtu(lab: Lab) -> None:
    status = lab.status()
    wl = {w["name"]: w for w in status["workloads"]}
    ip = lab.ips()
    mtu = int(wl["web1"]["mtu"])
    # by construction: the 1500-byte underlay minus the VXLAN overhead (50)
    assert mtu == 1500 - 50
    for name in ("web1", "web2"):
        r = lab.exec(name, "cat", "/sys/class/net/eth0/mtu")
        assert r.returncode == 0, r.stderr
        assert int(r.stdout) == mtu
    for src, dst in (("web1", "web2"), ("web2", "web1")):
        # the largest unfragmentable packet crosses the nodes (and its echo comes back)
        r = lab.exec(src, "ping", "-n", "-q", "-M", "do", "-s", str(mtu - 28), "-c", "3",
                     "-i", "0.2", "-W", "2", ip[dst])
        assert r.returncode == 0, r.stdout + r.stderr
        # one byte more does not fit the interface: refused locally (the error comes through
        # the socket's error queue, reported per packet; not with -q)
        r = lab.exec(src, "ping", "-n", "-M", "do", "-s", str(mtu - 27), "-c", "3",
                     "-i", "0.2", "-W", "1", ip[dst])
        assert r.returncode != 0
        assert " 0 received" in r.stdout, r.stdout
        assert "message too long" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr




def udp_rcvbuf_errors(netns: str) -> int:
    """Datagrams the namespace dropped because a receiving socket's buffer was full (the
    receiver was not scheduled in time: the host's load, not the network)."""
    r = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"],
                       capture_output=True, text=True, timeout=30, check=True)
    names, values = (x.split()[1:] for x in r.stdout.splitlines() if x.startswith("Udp:"))
    return int(dict(zip(names, values, strict=True))["RcvbufErrors"])


def iperf_result(p: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, out + err  # a reset connection is an iperf3 error
    result: dict[str, Any] = json.loads(out)
    assert "error" not in result, result["error"]
    return result


def addresses_settled(netns: str) -> bool:
    """No address is still in duplicate address detection (its end adds kernel routes)."""
    with IPRoute(netns=netns) as ipr:
        return not any((m.get_attr("IFA_FLAGS") or m["flags"]) & IFA_F_TENTATIVE
                       for m in ipr.get_addr())


# Neighbour states the kernel moves learnt entries through on its own (traffic does it).
LEARNT = re.compile(r"\b(REACHABLE|STALE|DELAY|PROBE|INCOMPLETE|FAILED)\b")


@contextlib.contextmanager
def kernel_changes(netns: str) -> Iterator[list[str]]:
    """What is changed in ``netns`` meanwhile: the netlink notifications (``ip monitor``, less
    the kernel's own neighbour learning) and nft's (``nft monitor``), one line each."""
    monitors = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
                for cmd in (["ip", "-n", netns, "monitor", "link", "address", "route", "rule",
                             "neigh"],
                            ["ip", "netns", "exec", netns, "nft", "monitor"])]
    changes: list[str] = []
    try:
        time.sleep(0.5)  # subscribed
        yield changes
        time.sleep(0.5)  # delivered
    finally:
        for m in monitors:
            m.terminate()
            out, _ = m.communicate(timeout=30)
            changes += [x for x in out.splitlines() if x.strip() and not LEARNT.search(x)]


def agent_restart_during(lab: Lab, node: str, client: subprocess.Popen[str]) -> None:
    """While ``client`` runs: kill -9 the agent of ``node``, restart it with the same command
    line after 1 s (within the hold time) and check that it adopted the kernel state: changed
    nothing at all."""
    netns = lab.netns(node)
    wait_for(f"the addresses of {node}", lambda: addresses_settled(netns))
    before = kernel_state(netns)
    time.sleep(1.5)
    with kernel_changes(netns) as changes:
        lab.restart(f"agent:{node}", down_for=1.0)
        wait_for(f"the restarted agent of {node}", lambda: lab.agent_synced(node))
        assert client.poll() is None, "the run ended before the agent was back: make it longer"
        time.sleep(1)  # the agent applies what the snapshot says (nothing, if it adopted)
    assert changes == []
    after = kernel_state(netns)
    assert after == before, {k: (sorted(set(before[k]) - set(after[k])),
                                 sorted(set(after[k]) - set(before[k])))
                             for k in before if before[k] != after[k]}


def test_agent_kill9_restart_tcp_no_reset(lab: Lab) -> None:
    ip = lab.ips()
    server = lab.iperf_server("web2")
    try:
        client = lab.popen("web1", "iperf3", "-c", ip["web2"], "-p", str(IPERF_PORT), "-t", "10",
                           "-J")
        # the receiving node: its agent set up the path the data and the ACKs take
        agent_restart_during(lab, "compute2", client)
        result = iperf_result(client)
        sent = result["end"]["sum_sent"]
        print(f"TCP through an agent restart: {sent['bytes']} bytes, "
              f"{sent.get('retransmits')} retransmits")
        assert result["end"]["sum_received"]["bytes"] > 0
    finally:
        stop(server)


def test_agent_kill9_restart_udp_no_loss(lab: Lab) -> None:
    ip = lab.ips()
    receiver = next(w["netns"] for w in lab.status()["workloads"] if w["name"] == "web2")
    server = lab.iperf_server("web2")
    try:
        overflows = udp_rcvbuf_errors(receiver)
        # 1400-byte datagrams fit the overlay MTU (1450): no fragments; 2 MB socket buffers
        # ride out a receiver that is not scheduled for a while on a busy host
        client = lab.popen("web1", "iperf3", "-c", ip["web2"], "-p", str(IPERF_PORT), "-u",
                           "-b", "20M", "-l", "1400", "-w", "2M", "-t", "10", "-J")
        # the sending node this time
        agent_restart_during(lab, "compute1", client)
        result = iperf_result(client)
        total = result["end"]["sum"]
        overflows = udp_rcvbuf_errors(receiver) - overflows
        print(f"UDP through an agent restart: {total['packets']} datagrams, "
              f"{total['lost_packets']} lost, of which {overflows} in the receiver's full "
              "socket buffer")
        assert total["packets"] > 1000
        # whatever was lost, the receiving socket dropped it, not the network
        assert total["lost_packets"] - overflows == 0, total
    finally:
        stop(server)


def test_agent_dead_past_hold_time(lab: Lab) -> None:
    """An agent killed stays dead past the hold time: its routes stay (agent stale time), so
    its node, whose kernel datapath forwards on, stays reachable.  A clean stop (SIGTERM)
    withdraws them after the hold time; the restarted agent announces them again."""
    ip = lab.ips()
    assert lab.ping("web1", ip["web2"])
    routes = lab.control()["routes"]
    cmdline = lab.kill9("agent:compute2")
    try:
        time.sleep(HOLD_TIME + 2)
        held = lab.session_of("compute2")
        assert held is not None and not held["connected"], held
        assert held["routes"] > 0 and lab.control()["routes"] == routes
        assert lab.ping("web1", ip["web2"])
        assert lab.ping("web2", ip["web1"])
    finally:
        lab.respawn("agent:compute2", cmdline)
    wait_for("the restarted agent", lambda: lab.agent_synced("compute2"))
    wait_for("one session of compute2",
             lambda: sum(s["node"] == "compute2" for s in lab.control()["sessions"].values())
             == 1 and lab.control()["routes"] == routes)
    # a clean stop: the routes go after the hold time, and web2 is cut off from web1
    agent = lab.process("agent:compute2")
    cmdline = agent.cmdline()
    agent.send_signal(signal.SIGTERM)
    agent.wait(30)
    try:
        wait_for("the withdrawal", lambda: lab.session_of("compute2") is None, HOLD_TIME + 30)
        assert lab.control()["routes"] < routes
        wait_for("web2 unreachable", lambda: not lab.ping("web1", ip["web2"]))
    finally:
        lab.respawn("agent:compute2", cmdline)
    wait_for("web2 reachable again", lambda: lab.ping("web1", ip["web2"]))
    assert lab.control()["routes"] == routes


def set_policy_ports(lab: Lab, policy: str, ports: list[int]) -> None:
    """One pass rule per port (tcp red > blue) in the lab's policy, through the config API."""
    url = lab.status()["controller"]
    uuid = api_call(url, "POST", "/fqname-to-id", {
        "type": "network-policy", "fq_name": ["default-domain", "acme", policy]})["uuid"]
    body = api_call(url, "GET", f"/network-policy/{uuid}")["network-policy"]
    template = body["network_policy_entries"]["policy_rule"][0]
    rules = []
    for port in ports:
        rule = json.loads(json.dumps(template))
        rule["rule_uuid"] = f"{template['rule_uuid'][:-4]}{port:04d}"
        rule["dst_ports"] = [{"start_port": port, "end_port": port}]
        rules.append(rule)
    api_call(url, "PUT", f"/network-policy/{uuid}",
             {"network-policy": {"network_policy_entries": {"policy_rule": rules}}})


def test_controller_killed_30s_flows_keep_working(policy_lab: Lab) -> None:
    lab = policy_lab
    ip = lab.ips()
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(lab.echo_server("db1", PORT, OTHER_PORT))
        assert lab.connects("web1", ip["db1"], PORT)
        assert not lab.connects("web1", ip["db1"], OTHER_PORT)  # not allowed (yet)
        # lasts well beyond the outage below
        client = lab.pair_client("web1", ip["db1"], PORT, seconds=36)
        procs.append(client)
        cmdline = lab.kill9("controller")
        down_since = time.monotonic()
        try:
            # NEW connections between the known ports work while the controller is down, and
            # the policy is still enforced
            assert lab.connects("web1", ip["db1"], PORT)
            assert not lab.connects("web1", ip["db1"], OTHER_PORT)
            time.sleep(max(0.0, down_since + 28 - time.monotonic()))
            assert lab.connects("web1", ip["db1"], PORT)
            time.sleep(max(0.0, down_since + 30 - time.monotonic()))
        finally:
            lab.respawn("controller", cmdline)  # same store, same port
        # the established connection kept exchanging lines without error all along
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, out + err
        assert out.split()[-2] == "ok", out
        assert int(out.split()[-1]) >= 100, out  # ~36 s of 0.2 s exchanges, not cut short
        wait_for("the agents back", lambda: all(lab.agent_synced(n)
                                                for n in ("compute1", "compute2")))
        # everything converges: a policy change made now takes effect
        set_policy_ports(lab, "red-to-blue", [PORT, OTHER_PORT])
        wait_for("the new rule", lambda: lab.connects("web1", ip["db1"], OTHER_PORT))
        assert lab.connects("web1", ip["db1"], PORT)
    finally:
        for p in procs:
            stop(p)
