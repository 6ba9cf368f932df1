"""The flow log on a real kernel (root): a router namespace with an nft table holding a logged
deny rule and a logged pass rule (the statements ``flowlog.log_statements`` makes), two
hosts sending through it, and the recorder (``FlowRecorder``, then a whole ``Agent`` with its
local API and ``tungsten flows``) listening to nflog group 7 and conntrack events there."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netnskit import sh, teardown
from tungsten.agent.flowrecorder import FlowRecorder, Record
from tungsten.agent.localclient import UnixHTTPConnection
from tungsten.datapath.linux.flowlog import log_statements, rule_mark

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

DENY = "fl-deny-" + secrets.token_hex(2)
PASS = "fl-pass-" + secrets.token_hex(2)
A_IP, B_IP = "198.51.100.2", "198.51.100.18"

SERVER = r"""
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=lambda c=c: (c.recv(100), c.sendall(b"ok"), c.close()),
                     daemon=True).start()
"""


@dataclass
class Net:
    tag: str = field(default_factory=lambda: "tgfl-" + secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def router(self) -> str:
        return f"{self.tag}-r"

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def run(self, host: str, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns(host), sys.executable, "-c",
                               code], capture_output=True, text=True, timeout=60, check=False)

    def close(self) -> None:
        teardown(self.procs, self.namespaces)


def _table(name: str) -> dict[str, Any]:
    """The nft table: zone 77 for everything, established first, then a logged deny of
    tcp/22 and udp/9999 and a logged pass of tcp/80 (the rest is accepted unlogged)."""
    def rule(chain: str, matches: list[dict[str, Any]], stmts: list[dict[str, Any]]
             ) -> dict[str, Any]:
        return {"add": {"rule": {"family": "inet", "table": name, "chain": chain,
                                 "expr": matches + stmts}}}

    def dport(proto: str, port: int) -> dict[str, Any]:
        return {"match": {"op": "==", "left": {"payload": {"protocol": proto,
                                                             "field": "dport"}},
                          "right": port}}

    return {"nftables": [
        {"add": {"table": {"family": "inet", "name": name}}},
        {"add": {"chain": {"family": "inet", "table": name, "name": "zone", "type": "filter",
                           "hook": "prerouting", "prio": -300, "policy": "accept"}}},
        {"add": {"chain": {"family": "inet", "table": name, "name": "gate", "type": "filter",
                           "hook": "forward", "prio": 0, "policy": "accept"}}},
        rule("zone", [], [{"mangle": {"key": {"ct": {"key": "zone"}}, "value": 77}}]),
        rule("gate", [{"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                 "right": ["established", "related"]}}], [{"accept": None}]),
        rule("gate", [dport("tcp", 22)], [*log_statements(DENY, "deny"), {"drop": None}]),
        rule("gate", [dport("udp", 9999)], [*log_statements(DENY, "deny"), {"drop": None}]),
        rule("gate", [dport("tcp", 80)], [*log_statements(PASS, "pass"), {"accept": None}]),
    ]}


@pytest.fixture
def net() -> Iterator[Net]:
    n = Net()
    try:
        for name in ("r", "a", "b"):
            sh("ip", "netns", "add", n.ns(name))
            n.namespaces.append(n.ns(name))
            sh("ip", "-n", n.ns(name), "link", "set", "lo", "up")
        r = n.router
        for host, rip, hip in (("a", "198.51.100.1", A_IP), ("b", "198.51.100.17", B_IP)):
            sh("ip", "-n", r, "link", "add", f"v{host}", "type", "veth", "peer", "e0",
               "netns", n.ns(host))
            sh("ip", "-n", r, "addr", "add", f"{rip}/28", "dev", f"v{host}")
            sh("ip", "-n", r, "link", "set", f"v{host}", "up")
            sh("ip", "-n", n.ns(host), "addr", "add", f"{hip}/28", "dev", "e0")
            sh("ip", "-n", n.ns(host), "link", "set", "e0", "up")
            sh("ip", "-n", n.ns(host), "route", "add", "default", "via", rip)
        sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        subprocess.run(["ip", "netns", "exec", r, "nft", "-j", "-f", "-"],
                       input=json.dumps(_table(n.tag)), text=True, check=True, timeout=30,
                       capture_output=True)
        p = subprocess.Popen(["ip", "netns", "exec", n.ns("b"), sys.executable, "-c", SERVER],
                             stdout=subprocess.PIPE, text=True)
        n.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield n
    finally:
        n.close()


def _traffic(net: Net) -> None:
    """A denied TCP attempt (with its retransmission), 40 denied UDP datagrams from one
    socket, and one admitted TCP exchange."""
    out = net.run("a", f"""
import socket
s = socket.socket(); s.settimeout(1.5)
try:
    s.connect(("{B_IP}", 22)); print("22 connected")
except OSError:
    pass
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(40):
    u.sendto(b"x", ("{B_IP}", 9999))
s = socket.create_connection(("{B_IP}", 80), timeout=10)
s.sendall(b"hello"); print(s.recv(10).decode()); s.close()
""")
    assert out.returncode == 0 and "ok" in out.stdout and "22 connected" not in out.stdout, \
        out.stderr


def _wait(what: str, get: Callable[[], list[Record]], ok: Callable[[list[Record]], bool],
          timeout: float = 20.0) -> list[Record]:
    end = time.monotonic() + timeout
    while True:
        got = get()
        if ok(got):
            return got
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not recorded in {timeout} s; have {got}")
        time.sleep(0.2)


def _check(net: Net, get: Callable[[], list[Record]]) -> None:
    """Denied attempts (TCP, UDP folded), the admitted decision, its start, and its end
    (the entry deleted) with the rule, counters and duration."""
    def deny_tcp(rs: list[Record]) -> list[Record]:
        return [r for r in rs if r["event"] == "decision" and r["dport"] == 22]

    def udp(rs: list[Record]) -> list[Record]:
        return [r for r in rs if r["event"] == "decision" and r["dport"] == 9999]

    def start(rs: list[Record]) -> list[Record]:
        return [r for r in rs if r["event"] == "start" and r["dport"] == 80]

    rs = _wait("the decisions and the start", get,
               lambda rs: bool(deny_tcp(rs) and start(rs)) and
               sum(r["count"] for r in udp(rs)) == 40)
    d = deny_tcp(rs)[0]
    assert (d["rule"], d["action"], d["proto"], d["src"], d["dst"]) == (DENY, "deny", 6, A_IP,
                                                                        B_IP)
    assert (d["in"], d["out"]) == ("va", "vb")
    # 40 datagrams of one 5-tuple: folded into a record per second, not 40 records
    assert len(udp(rs)) < 40 and all(r["rule"] == DENY for r in udp(rs))
    admitted = [r for r in rs if r["event"] == "decision" and r["dport"] == 80]
    assert admitted and admitted[0]["rule"] == PASS and admitted[0]["action"] == "pass"
    s = start(rs)[0]
    assert (s["rule"], s["mark"], s["zone"], s["src"]) == (PASS, rule_mark(PASS), 77, A_IP)
    assert not [r for r in rs if r["event"] == "start" and r["dport"] in (22, 9999)]
    # the flow ends: its entry is deleted (as an expiry or a re-evaluation would)
    sh("ip", "netns", "exec", net.router, "conntrack", "-D", "-p", "tcp", "--dport", "80",
       "-w", "77")
    rs = _wait("the end", get, lambda rs: any(r["event"] == "end" and r["dport"] == 80
                                               for r in rs))
    e = next(r for r in rs if r["event"] == "end" and r["dport"] == 80)
    assert (e["rule"], e["sport"]) == (PASS, s["sport"])
    assert e["packets"] >= 6 and e["bytes"] > 0 and e["duration"] >= 0  # accounting on


def test_recorder_records_denied_attempts_and_admitted_flows(net: Net, tmp_path: Path
                                                             ) -> None:
    path = tmp_path / "flows.jsonl"
    rec = FlowRecorder(net.router, path)
    rec.start()
    try:
        assert rec.status()["listening"] == ["nflog", "conntrack"], rec.status()
        _traffic(net)
        _check(net, rec.records)
        # a second listener on the same group and namespace is refused, and says so
        other = FlowRecorder(net.router, None)
        other.start()
        other.stop()
        assert "nflog" in other.status()["errors"]
    finally:
        rec.stop()
    # the file holds the same records (a restarted agent reloads them)
    again = FlowRecorder(net.router, path)
    again._load()
    assert [r["event"] for r in again.records(rule=DENY, action="deny")][:1] == ["decision"]


def test_a_flood_of_denied_packets_is_bounded(net: Net) -> None:
    """30 denied attempts from distinct ports beyond a rate of 10 records a second, then
    20,000 denied datagrams with a budget of 100 messages a second: the records stay few,
    the excess is counted (suppressed), and what the recorder leaves unread is dropped by
    the kernel (lost), not queued in the agent."""
    rec = FlowRecorder(net.router, None, rate=10, budget=100)
    rec.start()
    try:
        out = net.run("a", f"""
import socket
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(30)]
for u in socks:
    u.sendto(b"x", ("{B_IP}", 9999))
u = socks[0]
for _ in range(20000):
    u.sendto(b"x", ("{B_IP}", 9999))
""")
        assert out.returncode == 0, out.stderr
        rs = _wait("the flood's records", rec.records,
                   lambda rs: rec.status()["lost"]["nflog"] >= 1 and
                   any(r["event"] == "suppressed" for r in rs))
        decided = sum(r.get("count", 0) for r in rs if r["event"] in ("decision",
                                                                      "suppressed"))
        assert decided < 20030
        assert len([r for r in rs if r["event"] == "decision"]) <= 10 * 30  # rate x seconds
    finally:
        rec.stop()


def test_agent_serves_the_flow_log_to_tungsten_flows(net: Net, tmp_path: Path) -> None:
    """A whole agent on the linux datapath starts the recorder; ``tungsten flows --socket``
    shows its records with the rule counters, filtered."""
    from tungsten.agent.agent import Agent
    from tungsten.agent.localapi import serve_unix
    from tungsten.datapath.linux import LinuxDatapath

    sock = tmp_path / "agent.sock"
    dp = LinuxDatapath(net.router, "va", "198.51.100.1", prefix="tgfl")

    async def main() -> None:
        ag = Agent("r", "198.51.100.1", ["http://127.0.0.1:9"], dp, state_dir=tmp_path,
                   register=False)
        await ag.start()
        runner = await serve_unix(ag, sock)
        try:
            await asyncio.to_thread(_drive, net, sock)
        finally:
            await runner.cleanup()
            await ag.stop()

    try:
        asyncio.run(main())
    finally:
        dp.close()
    assert (tmp_path / "flows.jsonl").stat().st_size > 0


def _drive(net: Net, sock: Path) -> None:
    def flows(*args: str) -> Any:
        out = subprocess.run([sys.executable, "-m", "tungsten", "flows", "--socket",
                              str(sock), "--table", net.tag, *args], capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if "--json" in args else out.stdout

    _traffic(net)

    def records() -> list[Record]:  # the agent's endpoint (polled: cheaper than the CLI)
        conn = UnixHTTPConnection(sock)
        try:
            conn.request("GET", "/flows")
            data = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        assert data["netns"] == net.router and data["listening"] == ["nflog", "conntrack"]
        return list(data["records"])

    _check(net, records)
    data = flows("--json", "--last", "0")
    assert data["recorder"]["listening"] == ["nflog", "conntrack"] and data["netns"] == \
        net.router
    assert len(data["records"]) == len(records())
    data = flows("--json", "--action", "deny", "--since", "10m")
    assert data["records"] and {r["action"] for r in data["records"]} == {"deny"}
    assert {r["uuid"]: r["action"] for r in data["rules"]} == {DENY: "deny", PASS: "pass"}
    assert len(flows("--json", "--last", "2")["records"]) == 2
    text = flows("--event", "decision")
    assert DENY in text and PASS in text and f"{A_IP}:" in text and "va > vb" in text
