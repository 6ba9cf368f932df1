"""``tungsten sim``: a simulated fabric at scale on this machine."""

from __future__ import annotations

import asyncio
import json
import time

import click

from tungsten.cli.common import fail


@click.command()
@click.option("--agents", type=click.IntRange(1, 5000), default=10, show_default=True,
              help="Simulated compute nodes (each a full agent with the sim datapath).")
@click.option("--ports-per-agent", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Ports created through the config API and plugged into each agent.")
@click.option("--networks", type=click.IntRange(1, 1000), default=2, show_default=True,
              help="Virtual networks the ports are spread over.")
@click.option("--networks-per-agent", type=click.IntRange(1, 1000), default=1,
              show_default=True,
              help="How many networks one agent's ports span (1: a node hosts one network's "
                   "workloads; more: every agent must learn more routes).")
@click.option("--procs", type=click.IntRange(0, 256), default=0,
              help="Agent host processes [default: twice the cores].")
@click.option("--policy-change", is_flag=True,
              help="Also time a policy update until every agent holds the new ACL rule.")
@click.option("--hold-time", type=click.FloatRange(0.1, 600), default=5.0, show_default=True,
              help="Control-node hold time for disconnected agents (seconds).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 3600), default=300.0,
              show_default=True, help="Give up when not converged after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def sim(agents: int, ports_per_agent: int, networks: int, networks_per_agent: int, procs: int,
        policy_change: bool, hold_time: float, timeout_s: float, as_json: bool) -> None:
    """Run a controller and many simulated agents, create ports through the config API and
    measure how fast every agent holds every route it should.

    Progress goes to stderr; the result to stdout (a table, or one JSON object with --json).
    """
    from tungsten.sim.run import SimError, SimPlan, run_sim

    plan = SimPlan(agents, ports_per_agent, networks, networks_per_agent, procs, policy_change,
                   hold_time, timeout_s)

    def progress(msg: str) -> None:
        click.echo(f"[sim {time.strftime('%H:%M:%S')}] {msg}", err=True)

    try:
        result = asyncio.run(run_sim(plan, progress))
    except SimError as e:
        fail(f"{e} (logs of the run were in its temporary directory)")
    except KeyboardInterrupt:
        fail("interrupted; everything the run started was stopped", code=130)
    if as_json:
        click.echo(json.dumps(result))
        return
    rss = result["agent_rss_mb"]
    rows = [
        ("agents", result["agents"]),
        ("ports", result["ports"]),
        ("networks (per agent)", f"{result['networks']} ({result['networks_per_agent']})"),
        ("routes expected / installed",
         f"{result['routes_expected']} / {result['routes_installed']}"),
        ("create (s)", result["create_s"]),
        ("converge after last create (s)", result["converge_s"]),
        ("routes/s", result["routes_per_s"]),
        ("controller RSS (MB)", result["controller_rss_mb"]),
        ("agent RSS (MB, amortised per agent)", f"{min(rss)} .. {max(rss)}"),
    ]
    if "policy_change_s" in result:
        rows.append(("policy change to every agent (s)", result["policy_change_s"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
