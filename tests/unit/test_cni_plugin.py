"""``tungsten-cni`` as a runtime calls it: a subprocess with crafted environment and stdin.

No root and no agent: an agent that does not answer is a socket path nobody serves, and the
agent's replies come from a small fake HTTP server on a unix socket.
"""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tungsten.cni import spec

PLUGIN = [sys.executable, "-m", "tungsten.cni.plugin"]


def conf(tmp_path: Path, **over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"cniVersion": "1.0.0", "name": "tnet", "type": "tungsten-cni",
                         "network": "default-domain:p1:blue",
                         "agentSocket": str(tmp_path / "agent.sock")}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def env(command: str, **over: str) -> dict[str, str]:
    e = {"PATH": os.environ.get("PATH", ""), "CNI_COMMAND": command,
         "CNI_CONTAINERID": "c0ffee01", "CNI_NETNS": "/run/netns/none-such",
         "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    e.update(over)
    return {k: v for k, v in e.items() if v}


def run(environ: dict[str, str], stdin: bytes | dict[str, Any]) \
        -> tuple[int, dict[str, Any] | None]:
    raw = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    p = subprocess.run(PLUGIN, input=raw, env=environ, capture_output=True, timeout=60,
                       check=False)
    out = p.stdout.decode().strip()
    return p.returncode, json.loads(out) if out else None


def error(out: dict[str, Any] | None) -> tuple[int, str, str]:
    assert out is not None and set(out) == {"cniVersion", "code", "msg", "details"}, out
    return out["code"], out["msg"], out["details"]


# -- VERSION and the environment ------------------------------------------------------------
def test_version_lists_what_we_speak() -> None:
    rc, out = run({"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.4.0"})
    assert rc == 0
    assert out == {"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


@pytest.mark.parametrize(("command", "drop", "names"), [
    ("ADD", ["CNI_CONTAINERID", "CNI_NETNS"], "CNI_CONTAINERID, CNI_NETNS"),
    ("CHECK", ["CNI_IFNAME"], "CNI_IFNAME"),
    ("DEL", ["CNI_CONTAINERID", "CNI_IFNAME"], "CNI_CONTAINERID, CNI_IFNAME"),
])
def test_missing_env_is_4_naming_them(tmp_path: Path, command: str, drop: list[str],
                                      names: str) -> None:
    rc, out = run(env(command, **dict.fromkeys(drop, "")), conf(tmp_path))
    code, msg, details = error(out)
    assert rc != 0 and code == 4
    assert details == names and all(n in msg for n in drop)


@pytest.mark.parametrize(("var", "value"), [
    ("CNI_IFNAME", "much-too-long-name0"), ("CNI_IFNAME", "a/b"), ("CNI_IFNAME", ".."),
    ("CNI_CONTAINERID", "-leading-dash"), ("CNI_NETNS", "relative/path"),
    ("CNI_ARGS", "K8S_POD_NAME"), ("CNI_COMMAND", "FROB"),
])
def test_invalid_env_is_4_naming_it(tmp_path: Path, var: str, value: str) -> None:
    rc, out = run(env("ADD", **{var: value}), conf(tmp_path))
    code, msg, details = error(out)
    assert rc != 0 and code == 4 and var in details and var in msg


def test_bad_env_has_no_side_effect(tmp_path: Path) -> None:
    """DEL with the agent away spools a note, but not when the environment is invalid."""
    rc, out = run(env("DEL", CNI_IFNAME="bad name"), conf(tmp_path))
    assert rc != 0 and error(out)[0] == 4
    assert not (tmp_path / "agent.sock.pending").exists()


# -- the network config ---------------------------------------------------------------------
def test_undecodable_config_is_6() -> None:
    rc, out = run(env("ADD"), b"{not json")
    assert rc != 0 and error(out)[0] == 6


@pytest.mark.parametrize(("over", "key"), [
    ({"network": None}, "network"),
    ({"network": "just-a-name"}, "network"),
    ({"network": "a::c"}, "network"),
    ({"name": None}, "name"),
    ({"name": "bad/name"}, "name"),
    ({"type": None}, "type"),
    ({"agentSocket": "relative.sock"}, "agentSocket"),
    ({"mtu": 70000}, "mtu"),
    ({"mtu": "1400"}, "mtu"),
    ({"timeout": 0}, "timeout"),
    ({"runtimeConfig": {"ips": ["198.51.100.300"]}}, "runtimeConfig.ips[0]"),
    ({"runtimeConfig": {"ips": "198.51.100.3"}}, "runtimeConfig.ips"),
    ({"runtimeConfig": {"mac": "02:00:00:00:00"}}, "runtimeConfig.mac"),
    ({"runtimeConfig": {"deviceID": "0000:99:00.7"}}, "runtimeConfig.deviceID"),
    ({"device": "no/such"}, "device"),
    ({"args": {"cni": {"labels": [{"key": 1}]}}}, "args.cni.labels[0]"),
    ({"prevResult": []}, "prevResult"),
])
def test_invalid_config_is_7_naming_the_key(tmp_path: Path, over: dict[str, Any],
                                            key: str) -> None:
    rc, out = run(env("ADD"), conf(tmp_path, **over))
    code, msg, details = error(out)
    assert rc != 0 and code == 7, out
    assert details == key and key in msg


def test_not_an_object_is_7(tmp_path: Path) -> None:
    rc, out = run(env("ADD"), b"[1, 2]")
    assert rc != 0 and error(out)[0] == 7


def test_unsupported_version_is_1(tmp_path: Path) -> None:
    rc, out = run(env("ADD"), conf(tmp_path, cniVersion="0.3.1"))
    assert rc != 0 and error(out)[0] == 1
    for command in ("GC", "STATUS"):  # 1.1.0 commands need a 1.1.0 config
        rc, out = run(env(command), conf(tmp_path, cniVersion="1.0.0"))
        assert rc != 0 and error(out)[0] == 1, out


def test_check_needs_prev_result_and_gc_the_valid_list(tmp_path: Path) -> None:
    rc, out = run(env("CHECK"), conf(tmp_path))
    assert rc != 0 and error(out)[:1] == (7,) and error(out)[2] == "prevResult"
    rc, out = run(env("GC"), conf(tmp_path, cniVersion="1.1.0"))
    assert rc != 0 and error(out)[0] == 7 and "valid-attachments" in error(out)[2]


# -- agent away -----------------------------------------------------------------------------
def test_add_with_the_agent_away_is_11(tmp_path: Path) -> None:
    rc, out = run(env("ADD"), conf(tmp_path))
    code, _, details = error(out)
    assert rc != 0 and code == 11 and str(tmp_path / "agent.sock") in details


def test_status_with_the_agent_away_is_50(tmp_path: Path) -> None:
    rc, out = run(env("STATUS"), conf(tmp_path, cniVersion="1.1.0"))
    assert rc != 0 and error(out)[0] == 50


def test_del_with_the_agent_away_succeeds_and_spools(tmp_path: Path) -> None:
    for _ in range(2):  # and again: DEL is idempotent
        rc, out = run(env("DEL", CNI_NETNS=""), conf(tmp_path))
        assert rc == 0 and out is None
    notes = list((tmp_path / "agent.sock.pending").glob("*.json"))
    assert [n.name for n in notes] == ["c0ffee01_eth0.json"]
    note = json.loads(notes[0].read_text())
    assert (note["containerID"], note["ifname"], note["name"]) == ("c0ffee01", "eth0", "tnet")
    rc, _ = run(env("DEL"), conf(tmp_path, spoolDir=str(tmp_path / "elsewhere")))
    assert rc == 0 and (tmp_path / "elsewhere" / "c0ffee01_eth0.json").exists()


# -- a fake agent ---------------------------------------------------------------------------
class FakeAgent(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path) -> None:
        self.replies: dict[str, tuple[int, Any]] = {}
        self.requests: list[tuple[str, Any]] = []
        super().__init__(str(path), Handler)


class Handler(BaseHTTPRequestHandler):
    server: FakeAgent

    def _reply(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        self.server.requests.append((self.path, body))
        status, reply = self.server.replies.get(self.path, (404, {"error": "no"}))
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _reply

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[FakeAgent]:
    srv = FakeAgent(tmp_path / "agent.sock")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


RESULT = {"interfaces": [{"name": "tap0123456789a", "mac": "02:00:00:00:00:01"},
                         {"name": "eth0", "mac": "02:00:00:00:00:02", "mtu": 1450,
                          "sandbox": "/run/netns/x"}],
          "ips": [{"address": "198.51.100.3/32", "gateway": "198.51.100.1", "interface": 1}],
          "routes": [{"dst": "0.0.0.0/0", "gw": "198.51.100.1"}],
          "dns": {"nameservers": ["198.51.100.2"]}, "port": "p", "network": "n"}


@pytest.mark.parametrize("version", spec.SUPPORTED_VERSIONS)
def test_add_prints_the_agents_result(tmp_path: Path, agent: FakeAgent, version: str) -> None:
    agent.replies["/cni/add"] = (200, RESULT)
    c = conf(tmp_path, cniVersion=version, mtu=1400,
             runtimeConfig={"ips": ["198.51.100.3/24"], "mac": "02:AA:00:00:00:02"},
             args={"cni": {"labels": [{"key": "app", "value": "web"}]}})
    rc, out = run(env("ADD", CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web-1"), c)
    assert rc == 0, out
    assert out is not None and out["cniVersion"] == version
    assert [i["name"] for i in out["interfaces"]] == ["tap0123456789a", "eth0"]
    assert ("mtu" in out["interfaces"][1]) == (version == "1.1.0")
    assert ("version" in out["ips"][0]) == (version == "0.4.0")
    assert out["routes"] == RESULT["routes"] and out["dns"] == RESULT["dns"]
    path, body = agent.requests[-1]
    assert path == "/cni/add"
    assert body["containerID"] == "c0ffee01" and body["ifname"] == "eth0"
    assert body["ips"] == ["198.51.100.3"] and body["mac"] == "02:aa:00:00:00:02"
    assert body["mtu"] == 1400 and body["network"] == "default-domain:p1:blue"
    assert body["labels"] == {"K8S_POD_NAME": "web-1", "app": "web"}


def test_project_network_gets_the_default_domain(tmp_path: Path, agent: FakeAgent) -> None:
    agent.replies["/cni/add"] = (200, RESULT)
    rc, _ = run(env("ADD"), conf(tmp_path, network="p1:blue"))
    assert rc == 0 and agent.requests[-1][1]["network"] == "default-domain:p1:blue"


def test_agent_errors_pass_through(tmp_path: Path, agent: FakeAgent) -> None:
    agent.replies["/cni/add"] = (409, {"code": 102, "msg": "address in use", "details": "409"})
    rc, out = run(env("ADD"), conf(tmp_path))
    assert rc != 0 and error(out) == (102, "address in use", "409")
    agent.replies["/cni/check"] = (500, {"error": "boom"})  # not a CNI error body
    rc, out = run(env("CHECK"), conf(tmp_path, prevResult=RESULT))
    assert rc != 0 and error(out)[0] == 100 and "boom" in error(out)[1]


def test_del_check_gc_status_talk_to_the_agent(tmp_path: Path, agent: FakeAgent) -> None:
    agent.replies.update({"/cni/del": (200, {"released": True}),
                          "/cni/check": (200, {"ok": True}),
                          "/cni/gc": (200, {"released": []}),
                          "/status": (200, {"headless": False})})
    c = conf(tmp_path, cniVersion="1.1.0")
    assert run(env("DEL"), c) == (0, None)
    assert run(env("CHECK"), {**c, "prevResult": RESULT}) == (0, None)
    gc = {**c, "cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}],
          "cni.dev/valid-attachments": [{"containerID": "b", "ifname": "eth1"}]}
    assert run(env("GC"), gc) == (0, None)
    assert agent.requests[-1] == ("/cni/gc", {"name": "tnet", "validAttachments": [
        {"containerID": "b", "ifname": "eth1"}, {"containerID": "a", "ifname": "eth0"}]})
    assert run(env("STATUS"), c) == (0, None)
    agent.replies["/status"] = (200, {"headless": True, "node": "n1"})
    rc, out = run(env("STATUS"), c)
    assert rc != 0 and error(out)[0] == 51
    assert not (tmp_path / "agent.sock.pending").exists()


def test_del_succeeds_when_the_agent_fails(tmp_path: Path, agent: FakeAgent) -> None:
    agent.replies["/cni/del"] = (500, {"code": 100, "msg": "boom", "details": ""})
    assert run(env("DEL"), conf(tmp_path)) == (0, None)
    assert (tmp_path / "agent.sock.pending" / "c0ffee01_eth0.json").exists()


# -- pure helpers ---------------------------------------------------------------------------
def test_merge_prev_shifts_interface_indices() -> None:
    prev = {"interfaces": [{"name": "x"}], "ips": [{"address": "192.0.2.9/32",
                                                    "interface": 0}]}
    ours = {k: RESULT[k] for k in ("interfaces", "ips", "routes", "dns")}
    merged = spec.merge_prev(prev, ours)
    assert [i["name"] for i in merged["interfaces"]] == ["x", "tap0123456789a", "eth0"]
    assert [ip["interface"] for ip in merged["ips"]] == [0, 2]


def test_checks_without_regexes() -> None:
    assert spec.is_id("c0ffee.1_x-y") and not spec.is_id("_x") and not spec.is_id("")
    assert spec.is_mac("02:aB:00:00:00:ff") and not spec.is_mac("02:ab:00:00:00")
    assert spec.is_pci("0000:03:00.2") and not spec.is_pci("0000:03:00.9")
