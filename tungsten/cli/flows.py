"""``tungsten flows``: the flow log of a node's logged rules (see docs/security.md)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click

from tungsten.cli.common import env_names, fail

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> float:
    m = DURATION.match(value)
    if m is None:
        fail(f"--since {value!r}: give a duration such as 90s, 10m, 2h or 1d")
    return float(m.group(1)) * UNITS[m.group(2)]


class _Where:
    """The node asked about: its namespace, its agent's socket, where its log file is."""

    def __init__(self, netns: str | None, sock: Path | None, log_file: Path | None,
                 explicit_socket: bool, api: str | None = None) -> None:
        self.netns, self.sock, self.log_file = netns, sock, log_file
        self.explicit_socket = explicit_socket
        self.api = api  # the config API, to name the policies of logged ACL rules


def _where(netns: str | None, lab: str | None, node: str | None,
           socket_path: Path | None) -> _Where:
    from tungsten.agent.flowrecorder import FILE_NAME

    if lab is not None or node is not None:
        if lab is None or node is None:
            fail("give both --lab and --node (or --netns)")
        from tungsten.lab.plan import netns_name
        from tungsten.lab.state import LabState, labs_dir

        state = LabState.load(labs_dir() / lab)
        entry = next((n for n in (state.nodes if state else ()) if n.get("name") == node),
                     None)
        if state is None:
            netns = netns_name(lab, node)  # a lab without its state: the namespace only
            if not os.path.exists(f"/run/netns/{netns}"):
                fail(f"no lab {lab!r}: `tungsten lab list` shows the labs, "
                     f"`tungsten lab up` starts one")
        elif entry is None:
            names = ", ".join(str(n.get("name")) for n in state.nodes) or "none"
            fail(f"lab {lab!r} has no node {node!r} (its nodes: {names})")
        else:
            netns = str(entry.get("netns") or netns_name(lab, node))
            sock = Path(entry["agent_socket"]) if entry.get("agent_socket") else None
            return _Where(netns, socket_path or sock,
                          Path(state.labdir) / node / FILE_NAME, socket_path is not None,
                          state.controller or None)
        return _Where(netns, socket_path, None, socket_path is not None)
    if netns is not None and not os.path.exists(f"/run/netns/{netns}"):
        fail(f"no network namespace {netns!r}")
    if socket_path is not None:
        return _Where(netns, socket_path, socket_path.parent / FILE_NAME, True)
    from tungsten.cli.agent import default_state_dir

    sdir = default_state_dir()
    return _Where(netns, sdir / "agent.sock", sdir / FILE_NAME, False)


def _ask_agent(sock: Path, query: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The agent's flow log (None and why not)."""
    from tungsten.agent.localclient import UnixHTTPConnection

    conn = UnixHTTPConnection(sock, timeout=30)
    try:
        conn.request("GET", "/flows?" + urlencode({k: v for k, v in query.items()
                                                     if v is not None}))
        resp = conn.getresponse()
        raw = resp.read()
    except (FileNotFoundError, ConnectionRefusedError):
        return None, f"no agent answers on {sock}"
    except OSError as e:
        return None, f"cannot talk to the agent on {sock}: {e.strerror or e}"
    finally:
        conn.close()
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        return None, f"the agent on {sock} answered something else than JSON"
    if resp.status >= 400 or not isinstance(data, dict):
        msg = data.get("error") if isinstance(data, dict) else data
        return None, f"the agent on {sock}: {msg}"
    return data, ""


@click.command()
@click.option("--netns", help="The node's network namespace (default: this one, or the "
                              "agent's).")
@click.option("--lab", help="A lab's name (with --node).")
@click.option("--node", help="A node of the lab.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), default=None,
              envvar=env_names("AGENT_SOCKET"),
              help="The node agent's local API socket [default: the lab node's agent, else "
                   "<state dir>/agent/agent.sock].")
@click.option("--table", default="tungsten", show_default=True, help="The nftables table.")
@click.option("--action", type=click.Choice(["pass", "deny"]), default=None,
              help="Only the records of this action.")
@click.option("--rule", default=None, help="Only the records of this rule (uuid).")
@click.option("--event", type=click.Choice(["decision", "start", "end"]), default=None,
              help="Only decisions (a logged packet), flow starts or flow ends.")
@click.option("--since", default=None, help="Only records of the last DURATION (90s, 10m, "
                                            "2h, 1d).")
@click.option("--last", type=click.IntRange(0), default=50, show_default=True,
              help="Only the newest N records (0: all kept).")
@click.option("--api", metavar="URL",
              help="The config API, to name the network policy of each logged ACL rule "
                   "[default: a lab's controller].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def flows(netns: str | None, lab: str | None, node: str | None, socket_path: Path | None,
          table: str, action: str | None, rule: str | None, event: str | None,
          since: str | None, last: int, api: str | None, as_json: bool) -> None:
    """The flow log of rules with the log action: each decision (denied attempts too) and
    each admitted flow's start and end, with the rule that decided, as the node's agent
    recorded them; then the flows admitted by a logged rule now (conntrack entries carrying
    the rule's mark) and every logged rule with the packets it decided."""
    from tungsten.agent.flowrecorder import load, select

    where = _where(netns, lab, node, socket_path)
    cutoff = time.time() - _duration(since) if since is not None else None
    filters: dict[str, Any] = {"since": cutoff, "last": last or None, "action": action,
                               "rule": rule, "event": event}
    notes: list[str] = []
    records: list[dict[str, Any]] | None = None
    recorder: dict[str, Any] | None = None
    agent, why = _ask_agent(where.sock, filters) if where.sock is not None else (None, "")
    if agent is not None:
        if where.netns is not None and agent.get("netns") not in (None, where.netns) \
                and not where.explicit_socket:
            notes.append(f"the agent on {where.sock} runs in {agent.get('netns')}, not "
                         f"{where.netns}: its flow log is not shown (--socket to choose)")
        else:
            records = list(agent.pop("records", []))
            recorder = agent
            where.netns = where.netns or agent.get("netns")
            for part, err in (agent.get("errors") or {}).items():
                notes.append(f"the recorder cannot use {part}: {err}")
    elif where.log_file is not None and where.log_file.exists():
        records = select(load(where.log_file), **filters)
        notes.append(f"{why}: the records below are from {where.log_file} (the agent is not "
                     f"running; start it to record new ones)")
    elif where.explicit_socket or lab is not None:
        notes.append(f"{why}: no flow log shown (start the agent: `tungsten agent run`, or "
                     f"`tungsten lab up` for a lab)")
    else:
        notes.append("no flow log shown: it is kept by the node's agent (give --lab and "
                     "--node, or the agent's --socket)")
    api = api or where.api
    if records and api:
        _name_policies(records, api, notes)
    data: dict[str, Any] = {"netns": where.netns, "recorder": recorder, "records": records}
    if os.geteuid() == 0:
        from tungsten.datapath.linux.flowlog import read

        try:
            data.update(read(where.netns, table))
        except (OSError, ValueError) as e:
            fail(f"cannot read the node's rules and flows: {e}")
    elif records is None:
        fail("reading conntrack and nftables needs root, and no agent answered: run as root "
             "or give the agent's --socket")
    else:
        notes.append("the counters and conntrack entries need root (not shown)")
    data["notes"] = notes
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for n in notes:
        click.echo(f"note: {n}", err=True)
    if records is not None:
        _show_records(records, recorder)
    if "rules" not in data:
        return
    if not data["rules"]:
        click.echo("no logged rule on this node")
        return
    click.echo("logged rules:")
    for r in data["rules"]:
        chains = ", ".join(r["chains"])
        click.echo(f"  {r['uuid']}  {r['action']:4}  {r['packets']:>8} packets  ({chains})")
    click.echo("admitted flows now:" if data["flows"] else "no admitted logged flow now")
    for f in data["flows"]:
        click.echo(f"  proto {f['proto']:<3} {f['src']}:{f['sport']} -> {f['dst']}:{f['dport']}"
                   f"  zone {f['zone']}  by {f['rule'] or hex(f['mark'])}")


def _name_policies(records: list[dict[str, Any]], api: str, notes: list[str]) -> None:
    """Add the network policy of each logged ACL rule (``rule_info.policy``), from the
    config API; without an answer the records stay as the agent wrote them, with a note."""
    import urllib.error
    import urllib.request

    from tungsten.datapath.linux.flowlog import policy_names

    if not any((r.get("rule_info") or {}).get("kind") == "acl" for r in records):
        return
    try:
        with urllib.request.urlopen(f"{api.rstrip('/')}/network-policys?detail=true",
                                    timeout=10) as resp:
            names = policy_names(json.loads(resp.read() or b"{}"))
    except (OSError, ValueError, urllib.error.URLError) as e:
        notes.append(f"policy names not shown: the config API {api} did not answer ({e}); "
                     "give --api URL")
        return
    for r in records:
        info = r.get("rule_info")
        if isinstance(info, dict) and info.get("kind") == "acl" and r.get("rule") in names:
            info["policy"] = names[str(r["rule"])]


def _show_records(records: list[dict[str, Any]], recorder: dict[str, Any] | None) -> None:
    from tungsten.agent.flowrecorder import proto_name, rule_label
    from tungsten.cli.agent import _table

    lost = sum((recorder or {}).get("lost", {}).values())
    click.echo(f"flow log ({len(records)} records, newest last"
               f"{f'; {lost} batches lost to overload' if lost else ''}):"
               if records else "flow log: no record (matching the filters)")
    if not records:
        return
    rows: list[list[Any]] = []
    for r in records:
        t = time.strftime("%H:%M:%S", time.localtime(float(r.get("time") or 0)))
        if r.get("event") in ("suppressed", "lost"):
            rows.append([t, r["event"], "", "", "", "",
                         f"{r.get('count', '')} {r.get('source', 'decisions')}".strip(), ""])
            continue
        flow = (f"{r.get('src')}:{r.get('sport')} -> {r.get('dst')}:{r.get('dport')}"
                if r.get("sport") or r.get("dport") else f"{r.get('src')} -> {r.get('dst')}")
        place = (f"zone {r['zone']}" if r.get("zone") is not None
                 else f"{r.get('in') or '-'} > {r.get('out') or '-'}")
        extra = [f"x{r['count']}"] if r.get("count", 1) > 1 else []
        if "packets" in r:
            extra.append(f"{r['packets']} pkts {r['bytes']} B")
        if "duration" in r:
            extra.append(f"{r['duration']} s")
        rows.append([t, r.get("event"), r.get("action"), rule_label(r),
                     proto_name(r.get("proto")), flow, place, " ".join(extra)])
    _table(["TIME", "EVENT", "ACTION", "RULE", "PROTO", "FLOW", "WHERE", ""], rows)
