"""``tungsten agent``: run a vRouter agent, and look into a running one through its socket
(``ports``, ``routes``, ``acls``; ``tungsten trace``), in the spirit of TF's vif/rt/nh/flow."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from tungsten.agent.localclient import UnixHTTPConnection
from tungsten.cli.common import env_names, fail, setup_logging, stop_on_signals
from tungsten.datapath.base import Datapath, DatapathState


def default_state_dir() -> Path:
    from tungsten.cli.controller import state_dir

    return state_dir() / "agent"


def default_socket() -> Path:
    return default_state_dir() / "agent.sock"


SOCKET_OPTION = click.option(
    "--socket", "socket_path", type=click.Path(path_type=Path), default=None,
    envvar=env_names("AGENT_SOCKET"),
    help="The agent's local API socket [default: <state dir>/agent/agent.sock].")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group()
def agent() -> None:
    """The vRouter agent: run it, or inspect a running one."""


@agent.command()
@click.option("--node", required=True, envvar=env_names("NODE"), help="This node's name.")
@click.option("--underlay-ip", required=True, envvar=env_names("UNDERLAY_IP"),
              help="This node's underlay (VTEP) address.")
@click.option("--control", "controls", multiple=True, required=True,
              envvar=env_names("CONTROL"),
              help="A control node's base URL, e.g. http://127.0.0.1:8082 (repeat for two).")
@click.option("--api", "api_url", default=None, envvar=env_names("API"),
              help="Config API base URL [default: the first --control].")
@SOCKET_OPTION
@click.option("--state-dir", type=click.Path(path_type=Path), default=None,
              envvar=env_names("AGENT_STATE_DIR"),
              help="Where the agent keeps its port registry [default: <state dir>/agent].")
@click.option("--datapath", type=click.Choice(["sim", "linux"]), default="sim",
              show_default=True,
              help="Forwarding backend: sim (in memory) or linux (the kernel, via netlink).")
@click.option("--netns", default=None, envvar=env_names("AGENT_NETNS"),
              help="With --datapath linux: the network namespace to program (the agent "
                   "itself stays in its own) [default: the agent's namespace].")
@click.option("--underlay-if", "underlay_if", default=None, envvar=env_names("UNDERLAY_IF"),
              help="With --datapath linux: the underlay interface (VXLAN devices ride on it).")
@click.option("--mtu", type=click.IntRange(1280, 65535), default=1500, show_default=True,
              help="Underlay MTU (ports get it minus the VXLAN overhead).")
@click.option("--stale-time", type=click.FloatRange(0, 3600), default=15.0, show_default=True,
              help="After a headless spell, keep the routes learnt before for this many "
                   "seconds while the control node relearns them (graceful restart).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True, envvar=env_names("LOG_LEVEL"))
def run(node: str, underlay_ip: str, controls: tuple[str, ...], api_url: str | None,
        socket_path: Path | None, state_dir: Path | None, datapath: str,
        netns: str | None, underlay_if: str | None, mtu: int, stale_time: float,
        log_level: str) -> None:
    """Run the agent in the foreground; SIGTERM stops it without flushing the datapath."""
    setup_logging(log_level)
    try:
        ipaddress.ip_address(underlay_ip)
    except ValueError:
        fail(f"--underlay-ip {underlay_ip!r} is not an IP address")
    for url in (*controls, *([api_url] if api_url else [])):
        if not url.startswith(("http://", "https://")):
            fail(f"{url!r} is not a URL: give e.g. http://127.0.0.1:8082")
    if datapath == "linux" and not underlay_if:
        fail("--datapath linux needs --underlay-if IFNAME (the underlay interface)")
    if datapath == "sim" and (netns or underlay_if):
        fail("--netns and --underlay-if go with --datapath linux")
    sdir = state_dir or default_state_dir()
    sock = socket_path or sdir / "agent.sock"
    try:
        sdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create the state directory {sdir}: {e.strerror}")
    asyncio.run(_run(node, underlay_ip, list(controls), api_url, sock, sdir, mtu, stale_time,
                     datapath, netns, underlay_if))


SETTLE = 0.005  # seconds: the agent's coalescing window (a simulated fabric uses more)


class _OwnThread(Datapath):
    """A datapath whose calls run in one worker thread of its own: pyroute2's synchronous
    API runs an event loop of its own and refuses to run inside the agent's.  ``apply``
    blocks the caller, as a direct call would; the agent awaits ``apply_async`` instead, so
    its loop keeps serving while the kernel is programmed (it applies one state at a
    time)."""

    def __init__(self, make: Callable[[], Datapath]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datapath")
        self._inner = self._pool.submit(make).result()
        self.name = self._inner.name
        self.netns: str | None = getattr(self._inner, "netns", None)  # where CNI plugs ports

    def apply(self, state: DatapathState) -> None:
        self._pool.submit(self._inner.apply, state).result()

    async def apply_async(self, state: DatapathState) -> None:
        """``apply`` without blocking the agent's event loop (it serves meanwhile)."""
        await asyncio.wrap_future(self._pool.submit(self._inner.apply, state))

    def current(self) -> DatapathState | None:
        return self._inner.current()

    def close(self) -> None:
        self._pool.submit(self._inner.close).result()
        self._pool.shutdown()


def _datapath(kind: str, netns: str | None, underlay_if: str | None,
              underlay_ip: str) -> Datapath:
    if kind == "linux":
        from tungsten.datapath.linux import LinuxDatapath

        assert underlay_if is not None
        try:
            return _OwnThread(lambda: LinuxDatapath(netns, underlay_if, underlay_ip))
        except Exception as e:  # pyroute2 raises its own errors for a missing netns
            fail(f"cannot open the linux datapath (netns {netns or '-'}): {e}")
    from tungsten.datapath.sim import SimDatapath, SimFabric

    return SimDatapath(SimFabric())


async def _run(node: str, underlay_ip: str, controls: list[str], api_url: str | None,
               sock: Path, sdir: Path, mtu: int, stale_time: float, kind: str = "sim",
               netns: str | None = None, underlay_if: str | None = None) -> None:
    from tungsten.agent.agent import Agent
    from tungsten.agent.localapi import serve_unix

    dp = _datapath(kind, netns, underlay_if, underlay_ip)
    # a short settle window: a pass starts at once after a quiet spell anyway, and while
    # the datapath applies (in its own thread) further changes coalesce by themselves
    ag = Agent(node, underlay_ip, controls, dp, api_url=api_url, state_dir=sdir, mtu=mtu,
               stale_time=stale_time, settle=SETTLE)
    try:
        await ag.start()
    except ValueError as e:
        fail(str(e))
    try:
        runner = await serve_unix(ag, sock)
    except OSError as e:
        await ag.stop()
        fail(f"cannot serve on {sock}: {e.strerror or e}")
    click.echo(f"Tungsten agent {node} ({underlay_ip}) on {sock}, control "
               f"{', '.join(controls)}", err=True)
    stop = stop_on_signals()
    await stop.wait()
    await runner.cleanup()
    await ag.stop()
    sock.unlink(missing_ok=True)


# -- talking to a running agent ----------------------------------------------------------
def call(sock: Path | None, method: str, path: str, body: Any = None) -> Any:
    """One request to the agent's socket; clear errors instead of tracebacks."""
    sock = sock or default_socket()
    conn = UnixHTTPConnection(sock)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    except (FileNotFoundError, ConnectionRefusedError):
        fail(f"no agent answers on {sock}: is `tungsten agent run` running? (--socket PATH)")
    except OSError as e:
        fail(f"cannot talk to the agent on {sock}: {e.strerror or e}")
    finally:
        conn.close()
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        data = raw.decode(errors="replace")
    if resp.status >= 400:
        msg = data.get("error") if isinstance(data, dict) else data
        fail(f"the agent refused: {msg}")
    return data


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str("" if c is None else c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _nh_text(nh: dict[str, Any]) -> str:
    if nh["kind"] == "local":
        return f"local {nh.get('port', '')}"
    return f"{nh.get('node') or '?'} via {nh.get('vtep')} vni {nh.get('vni')}"


@agent.command()
@SOCKET_OPTION
@JSON_OPTION
def ports(socket_path: Path | None, as_json: bool) -> None:
    """Local ports (like TF's vif --list)."""
    data = call(socket_path, "GET", "/ports")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _table(["UUID", "IFNAME", "NETWORK", "MAC", "IPS", "MTU", "PLUGGED"],
           [[p["uuid"], p["ifname"], p.get("network_name") or p.get("network"), p.get("mac"),
             ",".join(p.get("ips", [])), p["mtu"], "yes" if p["plugged"] else "no"]
            for p in data])


@agent.command()
@click.option("--network", default=None, help="Only this network (uuid or fq name).")
@SOCKET_OPTION
@JSON_OPTION
def routes(network: str | None, socket_path: Path | None, as_json: bool) -> None:
    """Installed routes per VRF (like TF's rt --dump and nh --list)."""
    from urllib.parse import quote

    data = call(socket_path, "GET", "/routes" + (f"?network={quote(network)}" if network
                                                 else ""))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _table(["VRF", "PREFIX", "NEXT HOPS"],
           [[r["vrf"], r["prefix"], "; ".join(_nh_text(n) for n in r["nexthops"])]
            for r in data])


@agent.command()
@click.option("--port", default=None, help="Only this port (uuid).")
@SOCKET_OPTION
@JSON_OPTION
def acls(port: str | None, socket_path: Path | None, as_json: bool) -> None:
    """Network ACL rules and security groups per port."""
    from urllib.parse import quote

    data = call(socket_path, "GET", "/acls" + (f"?port={quote(port)}" if port else ""))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows: list[list[Any]] = []
    for p in data:
        for rule in p["acl"]:
            mc = rule.get("match_condition") or {}
            rows.append([p["port"], "acl " + str(p["vrf"]), rule.get("rule_uuid"),
                         mc.get("protocol", "any"), rule.get("direction", ">"),
                         (rule.get("action_list") or {}).get("simple_action")])
        for sg in p["security_groups"]:
            for direction in ("ingress", "egress"):
                for rule in sg.get(direction, []):
                    rows.append([p["port"], f"sg {sg['id']} {direction}",
                                 rule.get("rule_uuid"), rule.get("protocol") or
                                 (rule.get("match_condition") or {}).get("protocol", "any"),
                                 rule.get("direction", ">"), "pass"])
        if not p["acl"] and not p["security_groups"]:
            rows.append([p["port"], "-", "-", "-", "-", "allow (no ACL)"])
    _table(["PORT", "WHERE", "RULE", "PROTO", "DIR", "ACTION"], rows)


@click.command()
@click.option("--port", required=True, help="Source port (uuid) on the agent's node.")
@click.option("--dst", required=True, help="Destination IP.")
@click.option("--src", default=None, help="Source IP [default: the port's first address].")
@click.option("--proto", default="icmp", show_default=True, help="tcp, udp, icmp or a number.")
@click.option("--sport", type=click.IntRange(0, 65535), default=0, show_default=True)
@click.option("--dport", type=click.IntRange(0, 65535), default=0, show_default=True)
@SOCKET_OPTION
@JSON_OPTION
def trace(port: str, dst: str, src: str | None, proto: str, sport: int, dport: int,
          socket_path: Path | None, as_json: bool) -> None:
    """Where does a packet from a local port go? (asks the agent's datapath)."""
    body = {"port": port, "dst": dst, "src": src, "proto": proto, "sport": sport,
            "dport": dport}
    data = call(socket_path, "POST", "/trace", body)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for hop in data.get("hops", []):
        click.echo(f"  {hop}")
    detail = {"delivered": f"to port {data.get('port')}" if data.get("port") else "",
              "dropped": f"by {data.get('rule')}"}.get(data["verdict"], "")
    click.echo(f"{data['verdict']} at {data.get('node')} {detail}".rstrip())
