"""``tungsten flows``: the flows a node's logged rules decided (see docs/security.md)."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from tungsten.cli.common import fail


def _netns(netns: str | None, lab: str | None, node: str | None) -> str | None:
    if lab is not None or node is not None:
        if lab is None or node is None:
            fail("give both --lab and --node (or --netns)")
        from tungsten.lab.plan import netns_name

        netns = netns_name(lab, node)
    if netns is not None and not os.path.exists(f"/run/netns/{netns}"):
        fail(f"no network namespace {netns!r}")
    return netns


@click.command()
@click.option("--netns", help="The node's network namespace (default: this one).")
@click.option("--lab", help="A lab's name (with --node).")
@click.option("--node", help="A node of the lab.")
@click.option("--table", default="tungsten", show_default=True, help="The nftables table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def flows(netns: str | None, lab: str | None, node: str | None, table: str,
          as_json: bool) -> None:
    """Flows decided by rules with the log action: admitted flows with the rule that admitted
    them (conntrack entries carrying the rule's mark), and every logged rule with the packets
    it decided (denied flows show up in the counters)."""
    from tungsten.datapath.linux.flowlog import read

    where = _netns(netns, lab, node)
    if os.geteuid() != 0:
        fail("reading conntrack and nftables needs root")
    try:
        data: dict[str, Any] = read(where, table)
    except (OSError, ValueError) as e:
        fail(f"cannot read the node's flows: {e}")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if not data["rules"]:
        click.echo("no logged rule on this node")
        return
    click.echo("logged rules:")
    for r in data["rules"]:
        chains = ", ".join(r["chains"])
        click.echo(f"  {r['uuid']}  {r['action']:4}  {r['packets']:>8} packets  ({chains})")
    click.echo("admitted flows:" if data["flows"] else "no admitted logged flow now")
    for f in data["flows"]:
        click.echo(f"  proto {f['proto']:<3} {f['src']}:{f['sport']} -> {f['dst']}:{f['dport']}"
                   f"  zone {f['zone']}  by {f['rule'] or hex(f['mark'])}")
