"""``tungsten demo``: bring up the bundled lab and print its measured reachability matrix."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import click

from tungsten.cli.common import fail


def _say(text: str) -> None:
    click.echo(f"demo: {text}", err=True)


@click.command()
@click.option("--keep/--down", default=True,
              help="Leave the lab up afterwards [default] or take it down at the end.")
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON.")
@click.option("--name", default="demo", show_default=True, help="The lab's name.")
def demo(keep: bool, as_json: bool, name: str) -> None:
    """Bring up a bundled two-node lab (networks red and blue in project acme, an overlapping
    green in globex, a red-to-blue tcp/5432 policy), measure who reaches whom with real
    traffic, and say why.  Exit 1 when a measurement disagrees with the expectation, 2 on
    error (the lab is then removed)."""
    from tungsten.demo.run import as_json as to_json
    from tungsten.demo.run import measure, start_listeners, stop_listeners, table
    from tungsten.lab.runner import LabError, down
    from tungsten.lab.state import LabState, labs_dir
    from tungsten.lab.topology import TopologyError, parse

    if os.geteuid() != 0:
        fail("the demo needs root (it creates network namespaces)")
    text = resources.files("tungsten.lab").joinpath("topologies/demo.yaml").read_text()
    text = re.sub(r"(?m)^name: .*$", f"name: {name}", text)
    try:
        topo = parse(text, "demo.yaml")
    except TopologyError as e:
        fail(f"bad lab name or topology: {e}")
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "demo.yaml"
        file.write_text(text)
        _say(f"bringing up lab {name} (`tungsten lab up`)")
        r = subprocess.run([sys.executable, "-m", "tungsten", "lab", "up", str(file)],
                           stdout=subprocess.DEVNULL, check=False)
    if r.returncode != 0:
        fail(f"lab {name} not created (see above)")
    labdir = labs_dir() / name
    failed = True
    try:
        state = LabState.load(labdir)
        if state is None:
            raise RuntimeError(f"no readable state in {labdir}")
        _say(f"listeners on tcp/5432 and tcp/80 in {len(state.workloads)} workloads")
        procs = start_listeners(state)
        try:
            _say("probing every ordered pair: ping, tcp/5432, tcp/80")
            cells = measure(topo, state)
        finally:
            stop_listeners(procs)
        failed = False
    except (Exception, KeyboardInterrupt) as e:
        reason = f"{type(e).__name__}: {e}"
    finally:
        if failed or not keep:
            _say(f"taking lab {name} down")
            try:
                down(labdir, _say)
            except LabError as e2:
                _say(f"clean-up incomplete: {e2}")
    if failed:
        fail(f"demo failed: {reason}; lab {name} removed")
    assert state is not None
    bad = [c for c in cells if not c.agrees]
    if as_json:
        click.echo(json.dumps({"lab": name, "kept": keep, "agrees": not bad,
                               "matrix": to_json(cells)}, indent=2))
    else:
        click.echo(table(cells))
        click.echo("\nyes: the destination answered; ->X: X answered at that address "
                   "(overlapping subnets); !!: measurement disagrees with the expectation")
        if bad:
            click.echo(f"{len(bad)} cell(s) disagree with the expectation")
        w = state.workloads
        if keep:
            click.echo(f"\nexplore: tungsten lab status {name}\n"
                       f"         tungsten lab exec --lab {name} {w[0]['name']} -- ping -c 3 "
                       f"{str(w[1]['ip']).split('/')[0]}\n"
                       f"         tungsten trace --help\n"
                       f"tear down: tungsten lab down {name}")
        else:
            click.echo(f"\nlab {name} is down")
    sys.exit(1 if bad else 0)
